//! libFuzzer entry point for `targets::gguf_reader` (see fuzz/src/targets.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../src/targets.rs"]
#[allow(dead_code)] // each target uses one of the functions
mod targets;

fuzz_target!(
    init: {
        // Panics the studio contains (third-party readers on malformed files) are not crashes;
        // one that escapes still aborts through libfuzzer-sys.
        std::panic::set_hook(Box::new(|_| {}));
    },
    |data: &[u8]| targets::gguf_reader(data)
);
