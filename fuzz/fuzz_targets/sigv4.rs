#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| thaw_fuzz_targets::sigv4(data));
