//! Feeds arbitrary bytes to the frame reader and the message decoders:
//! whatever a peer sends must give frames or errors, never a panic or hang.
//!
//! Run with `cargo +nightly fuzz run frames` from `skprocess/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    skprocess::__private::fuzz_frames(data);
});
