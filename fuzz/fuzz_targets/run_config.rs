//! libFuzzer entry point for `targets::run_config` (see fuzz/src/targets.rs).
#![no_main]

#[path = "../src/targets.rs"]
#[allow(dead_code)] // each target uses one of the functions
mod targets;

targets::fuzz_entry!(run_config);
