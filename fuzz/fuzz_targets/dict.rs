//! Target (e) the dict service: every op's meta and the payloads it reads as values.
//! The body is `cluster::fuzzing::dict`, shared with the stable driver in tests/fuzz.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cluster::fuzzing::dict(data);
});
