#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| thaw_fuzz_targets::page_requests(data));
