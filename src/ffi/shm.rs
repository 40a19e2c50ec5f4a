//! `cluster_shm`, a shared-memory segment mapped in this process (PTools'
//! `ShmCfg` and `pmap_shm_create`); `cluster_shm_spec`, what a creator
//! asks for; the orphan cleaner.

use crate::prelude::*;
use super::args::*;
use super::boundary::Handle;
use super::buffer::{buffer_from_vec, cluster_buffer};
use super::ctx::cluster_ctx;
use super::future::{cluster_future, new_future_handle};
use super::handles::{self, Kind};
use super::status::cluster_status;
use crate::service::shm::{self, Segment};
use crate::{Error, ErrorKind, ShmSpec};
use std::ffi::{c_char, c_void};
use std::sync::Arc;

/// A handle to a segment mapped in this process. The mapping stays valid
/// while any handle to it is held, even once the segment is unlinked.
pub struct cluster_shm {
    _private: [u8; 0],
}

/// `cluster_shm_spec.elem_type`: tags the bindings agree on, so that each
/// process views a segment as the same array. CLUSTER_ELEM_OPAQUE is any
/// other element of `elem_size` bytes.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum cluster_elem_type {
    CLUSTER_ELEM_OPAQUE = 0,
    CLUSTER_ELEM_U8 = 1,
    CLUSTER_ELEM_I8 = 2,
    CLUSTER_ELEM_U16 = 3,
    CLUSTER_ELEM_I16 = 4,
    CLUSTER_ELEM_U32 = 5,
    CLUSTER_ELEM_I32 = 6,
    CLUSTER_ELEM_U64 = 7,
    CLUSTER_ELEM_I64 = 8,
    CLUSTER_ELEM_F32 = 9,
    CLUSTER_ELEM_F64 = 10,
    CLUSTER_ELEM_BOOL = 11,
    CLUSTER_ELEM_COMPLEX64 = 12,
    CLUSTER_ELEM_COMPLEX128 = 13,
}

/// A segment as its creator describes it. `name` (letters, digits, '_',
/// '-') and `prefix` (NULL or any text without '/', to keep jobs apart)
/// name it in the cluster; its size is `elem_size` times the product of
/// `dims[0..ndims)` (no dims: one element). The dims are the creator's
/// array shape as its language orders it: Julia's are column-major (the
/// first index varies fastest), C's row-major; the library only keeps them.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct cluster_shm_spec {
    pub name: *const c_char,
    pub prefix: *const c_char,
    /// A `cluster_elem_type`.
    pub elem_type: i32,
    pub elem_size: u32,
    pub dims: *const u64,
    pub ndims: usize,
}

c_handle!(cluster_shm, Kind::Shm, Segment);

fn new_shm_handle(s: Segment) -> Result<*mut cluster_shm, Error> {
    Ok(handles::insert(Kind::Shm, Arc::new(s))? as *mut cluster_shm)
}

unsafe fn spec_arg(s: *const cluster_shm_spec) -> Result<ShmSpec, Error> {
    if s.is_null() {
        return Err(null_arg("spec"));
    }
    let s = &*s;
    let name = cstr(s.name, "spec->name")?;
    let prefix = opt_cstr(s.prefix, "spec->prefix")?.unwrap_or("");
    if !(0..=13).contains(&s.elem_type) {
        return Err(invalid(format!("no element type {}", s.elem_type)));
    }
    let dims = if s.ndims == 0 {
        Vec::new()
    } else if s.dims.is_null() {
        return Err(null_arg("spec->dims"));
    } else {
        std::slice::from_raw_parts(s.dims, s.ndims).to_vec()
    };
    Ok(ShmSpec::new(name, s.elem_type as u32, s.elem_size, &dims).prefixed(prefix))
}

unsafe fn procs_arg(pids: *const i32, npids: usize) -> Result<Option<Vec<u32>>, Error> {
    if pids.is_null() {
        return Ok(None);
    }
    pid_list(pids, npids).map(Some)
}

/// Names, each NUL-terminated, one after another.
fn names_buffer(names: Vec<String>, count: *mut usize) -> Result<cluster_buffer, Error> {
    if !count.is_null() {
        // SAFETY: checked non-null; the caller passed a writable size_t.
        unsafe { put(count, "count", names.len())? };
    }
    let mut b = Vec::new();
    for n in names {
        b.extend_from_slice(n.as_bytes());
        b.push(0);
    }
    buffer_from_vec(b)
}

/// Creates segment `spec` here, every page reserved (a full /dev/shm is
/// CLUSTER_ERR_IO naming the sizes, never a SIGBUS later), and has each of
/// `pids[0..npids)` map it (`pids` NULL: every process of the cluster on
/// this host); returns once all did. On failure nothing is left.
///
/// Ownership: `spec` and `pids` are read during the call; `*out` receives
/// a new handle, released with `cluster_shm_free`.
/// Blocking: yes, a round trip to each process that maps it.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_shm_create(
    ctx: *mut cluster_ctx,
    spec: *const cluster_shm_spec,
    pids: *const i32,
    npids: usize,
    out: *mut *mut cluster_shm,
) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        let procs = procs_arg(pids, npids)?;
        let s = c.shm_create(&spec_arg(spec)?, procs.as_deref())?;
        put(out, "out", new_shm_handle(s)?)
    })
}

/// `cluster_shm_create` as a future, returned once the segment exists
/// here (`cluster_shm_find` gives it); the future completes once every
/// process mapped it, or fails (and the segment is gone).
///
/// Ownership: `spec` and `pids` are read during the call; `*out` receives
/// a new future, released with `cluster_future_free`.
/// Blocking: no (the segment is created and reserved on this thread).
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_shm_create_async(
    ctx: *mut cluster_ctx,
    spec: *const cluster_shm_spec,
    pids: *const i32,
    npids: usize,
    out: *mut *mut cluster_future,
) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        let procs = procs_arg(pids, npids)?;
        put(out, "out", new_future_handle(c.shm_create_async(&spec_arg(spec)?, procs.as_deref())?)?)
    })
}

/// The segment `name` with `prefix` (NULL: none) that this process maps
/// (it created it, or another process's creation mapped it here);
/// CLUSTER_ERR_NOT_FOUND when it maps none.
///
/// Ownership: the strings are read during the call; `*out` receives a new
/// handle, released with `cluster_shm_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_shm_find(ctx: *mut cluster_ctx, name: *const c_char, prefix: *const c_char, out: *mut *mut cluster_shm) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        let name = cstr(name, "name")?;
        let prefix = opt_cstr(prefix, "prefix")?.unwrap_or("");
        let s = c.shm_segment(name, prefix).ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no shared segment {name} (prefix {prefix:?}) is mapped here")))?;
        put(out, "out", new_shm_handle(s)?)
    })
}

/// Frees the handle (the segment stays; see `cluster_shm_unlink`). NULL is
/// accepted; a second free is CLUSTER_ERR_BAD_HANDLE.
///
/// Ownership: the handle is gone after the call; the memory it pointed to
/// stays valid only while another handle or this process's table holds it.
/// Blocking: no.
/// Threads: any, once per handle.
#[no_mangle]
pub extern "C" fn cluster_shm_free(s: *mut cluster_shm) -> cluster_status {
    ffi!({
        if s.is_null() {
            return Ok(());
        }
        s.remove()
    })
}

/// `*data` = the mapping's first byte (NULL for an empty segment), `*len`
/// = its size in bytes. Other processes read and write the same bytes:
/// synchronizing is the caller's.
///
/// Ownership: the memory belongs to the mapping, valid while the handle is held.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_shm_data(s: *mut cluster_shm, data: *mut *mut c_void, len: *mut usize) -> cluster_status {
    ffi!([s => seg] {
        // An empty segment has no bytes to point at.
        let p = if seg.is_empty() { std::ptr::null_mut() } else { seg.as_ptr() as *mut c_void };
        put(data, "data", p)?;
        put(len, "len", seg.len())
    })
}

/// The segment's element type (`*elem_type`, `*elem_size`) and dimensions
/// (copied into `dims[0..cap)`, `*ndims` = how many there are). Any out
/// pointer may be NULL.
///
/// Ownership: `s` stays the caller's; `dims` is written, never kept.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_shm_info(
    s: *mut cluster_shm,
    elem_type: *mut i32,
    elem_size: *mut u32,
    dims: *mut u64,
    cap: usize,
    ndims: *mut usize,
) -> cluster_status {
    ffi!([s => seg] {
        let sp = seg.spec();
        if !elem_type.is_null() {
            put(elem_type, "elem_type", sp.elem_type as i32)?;
        }
        if !elem_size.is_null() {
            put(elem_size, "elem_size", sp.elem_size)?;
        }
        if !ndims.is_null() {
            put(ndims, "ndims", sp.dims.len())?;
        }
        if !dims.is_null() {
            for (i, &d) in sp.dims.iter().take(cap).enumerate() {
                *dims.add(i) = d;
            }
        }
        Ok(())
    })
}

/// Copies the segment's name in /dev/shm, NUL-terminated, into
/// `buf[0..cap)`; `*len` = its length without the NUL
/// (CLUSTER_ERR_BUFFER_TOO_SMALL when `cap` is too small).
///
/// Ownership: `s` stays the caller's; `buf` is written, never kept.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_shm_os_name(s: *mut cluster_shm, buf: *mut c_char, cap: usize, len: *mut usize) -> cluster_status {
    ffi!([s => seg] put_str(seg.os_name(), buf, cap, len))
}

/// `unlink_shm`: removes segment `name` with `prefix` (NULL: none) of
/// this cluster from /dev/shm and has every process drop its mapping
/// (memory still held through handles stays valid until they are freed).
/// CLUSTER_ERR_NOT_FOUND when the cluster has no such segment.
///
/// Ownership: the strings are read during the call.
/// Blocking: yes, a round trip to every process.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_shm_unlink(ctx: *mut cluster_ctx, name: *const c_char, prefix: *const c_char) -> cluster_status {
    ffi!([ctx => c] c.shm_unlink(cstr(name, "name")?, opt_cstr(prefix, "prefix")?.unwrap_or("")))
}

/// `cluster_shm_unlink` as a future, returned once /dev/shm no longer has
/// the segment; it completes once every process dropped its mapping.
///
/// Ownership: the strings are read during the call; `*out` receives a new
/// future, released with `cluster_future_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_shm_unlink_async(
    ctx: *mut cluster_ctx,
    name: *const c_char,
    prefix: *const c_char,
    out: *mut *mut cluster_future,
) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        put(out, "out", new_future_handle(c.shm_unlink_async(cstr(name, "name")?, opt_cstr(prefix, "prefix")?.unwrap_or(""))?)?)
    })
}

/// `shm_orphans(prefix)`: the segments in /dev/shm of clusters whose head
/// process is gone (with `prefix` only, unless NULL), as their /dev/shm
/// names, each NUL-terminated, one after another in `*out`; `*count` (may
/// be NULL) = how many. Needs no cluster.
///
/// Ownership: `*out` is the caller's until `cluster_buffer_free`.
/// Blocking: no (reads /dev/shm and /proc).
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_shm_orphans(prefix: *const c_char, out: *mut cluster_buffer, count: *mut usize) -> cluster_status {
    ffi!({
        check_out(out, "out")?;
        let names = shm::orphans(opt_cstr(prefix, "prefix")?)?.into_iter().map(|s| s.os_name).collect();
        put(out, "out", names_buffer(names, count)?)
    })
}

/// `remove_shm_orphans(prefix)`: unlinks what `cluster_shm_orphans` lists
/// and reports what it removed the same way.
///
/// Ownership: `*out` is the caller's until `cluster_buffer_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_shm_remove_orphans(prefix: *const c_char, out: *mut cluster_buffer, count: *mut usize) -> cluster_status {
    ffi!({
        check_out(out, "out")?;
        let names = shm::remove_orphans(opt_cstr(prefix, "prefix")?)?;
        put(out, "out", names_buffer(names, count)?)
    })
}
