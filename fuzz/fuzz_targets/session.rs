//! Target (c) the session's messages (HELLO, PING, PONG) and a connection's first frame as admission reads it on a head and on a worker.
//! The body is `cluster::fuzzing::session`, shared with the stable driver in tests/fuzz.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cluster::fuzzing::session(data);
});
