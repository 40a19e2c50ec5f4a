//! Target (c) the reference service's ops and their ref ids (u64 metas).
//! The body is `cluster::fuzzing::refs`, shared with the stable driver in tests/fuzz.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cluster::fuzzing::refs(data);
});
