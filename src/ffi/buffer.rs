//! `cluster_buffer`: bytes the library hands to the caller (a fetched
//! result), kept alive by a handle until `cluster_buffer_free`.

use super::args::FfiResult;
use super::handles::{self, Kind};
use super::status::cluster_status;
use crate::Value;

/// Bytes owned by the library, e.g. a `cluster_remotecall_fetch` result.
/// Read `data[0..len)`; release with `cluster_buffer_free`.
#[repr(C)]
pub struct cluster_buffer {
    pub data: *const u8,
    pub len: usize,
    /// Opaque; 0 once freed.
    pub handle: u64,
}

/// A buffer viewing `v`, which its new handle keeps alive (the value's
/// own shared slot: no allocation, no copy).
pub(crate) fn buffer_from(v: Value) -> Result<cluster_buffer, crate::Error> {
    let (data, len) = (v.as_ptr(), v.len());
    let handle = handles::insert(Kind::Buffer, v.into_shared())?;
    Ok(cluster_buffer { data, len, handle })
}

/// A buffer owning `v` (bytes made for the caller, e.g. a dict's value).
pub(crate) fn buffer_from_vec(v: Vec<u8>) -> Result<cluster_buffer, crate::Error> {
    let v = std::sync::Arc::new(v);
    let (data, len) = (v.as_ptr(), v.len());
    let handle = handles::insert(Kind::Buffer, v)?;
    Ok(cluster_buffer { data, len, handle })
}

/// Releases a buffer and zeroes `*buf`. NULL, and an already zeroed
/// buffer, are accepted; a copy of a freed buffer is CLUSTER_ERR_BAD_HANDLE.
///
/// Ownership: the bytes `buf->data` pointed to are gone after the call.
/// Blocking: no.
/// Threads: any, once per buffer.
#[no_mangle]
pub unsafe extern "C" fn cluster_buffer_free(buf: *mut cluster_buffer) -> cluster_status {
    ffi!({
        if buf.is_null() || (*buf).handle == 0 {
            return Ok(());
        }
        let b = &mut *buf;
        let r: FfiResult = handles::remove(Kind::Buffer, b.handle).map(drop);
        b.data = std::ptr::null();
        b.len = 0;
        b.handle = 0;
        r
    })
}

/// Walks the parts layout (one byte string per process: its id as
/// uint32_t little-endian, the length as uint64_t little-endian, the
/// bytes), as `cluster_vars_get`, `cluster_allgather` and `cluster_hosts`
/// give it: the part at `*offset` (start at 0) into `*pid`, `*part` (a
/// pointer into `data`) and `*part_len`, and `*offset` moved past it.
/// CLUSTER_ERR_NOT_FOUND at the end; CLUSTER_ERR_CORRUPT when `data` is
/// not in the layout.
///
/// Ownership: `*part` points into `data`; nothing is allocated.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_parts_next(
    data: *const u8,
    len: usize,
    offset: *mut usize,
    pid: *mut i32,
    part: *mut *const u8,
    part_len: *mut usize,
) -> cluster_status {
    ffi!({
        use super::args::*;
        let d = bytes(data, len, "data")?;
        check_out(offset, "offset")?;
        check_out(pid, "pid")?;
        check_out(part, "part")?;
        check_out(part_len, "part_len")?;
        let mut at = *offset;
        match crate::wire::parts::next_part(d, &mut at)? {
            None => Err(crate::Error::new(crate::ErrorKind::NotFound, "no more parts")),
            Some((p, b)) => {
                *offset = at;
                *pid = p as i32;
                *part = b.as_ptr();
                *part_len = b.len();
                Ok(())
            }
        }
    })
}
