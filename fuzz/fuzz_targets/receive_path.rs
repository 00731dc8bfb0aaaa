//! libFuzzer entry point of the `receive_path` target; the logic and its
//! checks are `pod_fuzz::receive_path` (input format:
//! `pod_fuzz::ReceiveInput::from_bytes`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    pod_fuzz::receive_path_bytes(data);
});
