//! The fuzz targets' bodies (fuzz/src/targets.rs) run over the committed seed corpus and the
//! inputs fuzzing found crashes with, on every test run: the targets keep building and none
//! of those inputs panics. (Fuzzing itself: `fuzz/run`.)

#[path = "../../../../fuzz/src/targets.rs"]
#[allow(dead_code, unused_macros)]
mod targets;

fn replay(target: &str, run: fn(&[u8])) {
    let fuzz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let n = targets::replay(&fuzz, target, run);
    assert!(n > 0, "the {target} corpus is empty");
}

#[test]
fn dataset_reader_corpus() {
    replay("dataset_reader", targets::dataset_reader);
}

#[test]
fn gguf_reader_corpus() {
    replay("gguf_reader", targets::gguf_reader);
}

#[test]
fn adapter_import_corpus() {
    replay("adapter_import", targets::adapter_import);
}

#[test]
fn run_config_corpus() {
    replay("run_config", targets::run_config);
}
