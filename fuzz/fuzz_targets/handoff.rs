//! libFuzzer entry point of the `handoff` target; the logic and its checks
//! are `pod_fuzz::handoff`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pod_fuzz::handoff(data));
