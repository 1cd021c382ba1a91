//! Fuzz target: see `podagent_fuzz::npwg_annotation` for the entry point and the properties
//! checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| podagent_fuzz::npwg_annotation(data));
