//! Target (c) the rpc service: CALL (function name as UTF-8 meta plus payload), INTERRUPT, and responses.
//! The body is `cluster::fuzzing::rpc`, shared with the stable driver in tests/fuzz.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cluster::fuzzing::rpc(data);
});
