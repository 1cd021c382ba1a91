//! Fuzz target: see `podagent_fuzz::state_file` for the entry point and the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| podagent_fuzz::state_file(data));
