//! Any bytes, as any dataset format the studio reads (by extension, picked by the first byte):
//! read, turned into records, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peft_studio_engine::data::load::{read_records, DataConfig};

const EXTENSIONS: [&str; 6] = ["jsonl", "json", "csv", "tsv", "txt", "parquet"];

fuzz_target!(
    init: {
        // Panics the studio contains (third-party readers on malformed files) are not crashes;
        // one that escapes still aborts through libfuzzer-sys.
        std::panic::set_hook(Box::new(|_| {}));
    },
    |data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let path = dir
        .path()
        .join(format!("data.{}", EXTENSIONS[pick as usize % EXTENSIONS.len()]));
    if std::fs::write(&path, body).is_ok() {
        let _ = read_records(&path, &DataConfig::default());
    }
});
