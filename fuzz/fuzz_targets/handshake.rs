//! Target (b) the handshake of net/auth.rs, server and client side, against a peer sending the input (checked against the protocol written out).
//! The body is `cluster::fuzzing::handshake`, shared with the stable driver in tests/fuzz.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cluster::fuzzing::handshake(data);
});
