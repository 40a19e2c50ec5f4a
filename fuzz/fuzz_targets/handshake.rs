//! Target (b) auth::handshake, server and client side, against a peer sending the input.
//! The body is `cluster::fuzzing::handshake`, shared with the stable driver in tests/fuzz.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cluster::fuzzing::handshake(data);
});
