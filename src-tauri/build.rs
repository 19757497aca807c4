fn main() {
    let attrs =
        tauri_build::Attributes::new().capabilities_path_pattern("src-tauri/capabilities/**/*");
    if let Err(e) = tauri_build::try_build(attrs) {
        println!("cargo::error={e:#}");
    }
}
