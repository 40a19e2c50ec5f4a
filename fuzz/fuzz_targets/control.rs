//! Target (c) the control service's messages: PEER_JOINED, PEER_LEFT, the signals, and the welcome a joining worker reads.
//! The body is `cluster::fuzzing::control`, shared with the stable driver in tests/fuzz.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cluster::fuzzing::control(data);
});
