//! Target (d) the channel service: every op's meta (the channel and its argument).
//! The body is `cluster::fuzzing::channel`, shared with the stable driver in tests/fuzz.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cluster::fuzzing::channel(data);
});
