//! Target (a) wire::Header::decode and wire::FrameReader, fed through a socketpair or a pipe in input-chosen chunks, each frame routed as a node routes it.
//! The body is `cluster::fuzzing::frame`, shared with the stable driver in tests/fuzz.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cluster::fuzzing::frame(data);
});
