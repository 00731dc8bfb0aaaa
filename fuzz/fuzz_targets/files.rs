//! libFuzzer entry point of the `files` target; the logic and its checks are
//! `pod_fuzz::files`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pod_fuzz::files(data));
