//! Target (c) the control service's messages: Join, Welcome, PeerInfo and the signals.
//! The body is `cluster::fuzzing::control`, shared with the stable driver in tests/fuzz.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cluster::fuzzing::control(data);
});
