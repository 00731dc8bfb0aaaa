//! libFuzzer entry point of the `frames` target; the logic and its checks are
//! `pod_fuzz::frames`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pod_fuzz::frames(data));
