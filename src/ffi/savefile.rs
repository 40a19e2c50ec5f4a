//! `cluster_save` / `cluster_load`: the save/load container (ClusterUtils'
//! `save` / `load` over bytes; the format and the atomic write are
//! `crate::savefile`'s). No cluster is needed.

use super::args::*;
use super::buffer::{buffer_from_vec, cluster_buffer};
use super::handles::{self, Kind};
use super::status::cluster_status;
use crate::savefile;
use std::ffi::c_char;

/// A buffer holding `s` followed by a NUL that `len` does not count, so
/// `data` may be used as a C string.
fn text_buffer(s: String) -> Result<cluster_buffer, crate::Error> {
    let mut v = s.into_bytes();
    let len = v.len();
    v.push(0);
    let v = std::sync::Arc::new(v);
    let data = v.as_ptr();
    let handle = handles::insert(Kind::Buffer, v)?;
    Ok(cluster_buffer { data, len, handle })
}

/// Saves `data[0..len)` to the file `path` in the libcluster container
/// format (README "Save and load": magic, version, content type, length,
/// payload, SHA-256), tagged with `content_type` (UTF-8, at most 255
/// bytes; "" is allowed; Julia's save uses "julia.serialization").
/// Written atomically: the bytes go to a new file in the same directory
/// (unnamed, O_TMPFILE, where the file system has it), which is fsynced and
/// renamed over `path`, then the directory is fsynced; a crash or kill
/// mid-save leaves the old file as it was. A new file gets 0644 minus the
/// umask, an existing one keeps its mode. CLUSTER_ERR_INVALID_ARGUMENT for
/// a NULL or over-long argument or a path naming no file (a trailing '/');
/// CLUSTER_ERR_IO naming the path and the step that failed (no directory,
/// no permission, a full disk, a directory at `path`), leaving no
/// temporary file.
///
/// Ownership: `path`, `content_type` and `data` are read during the call
/// only; `data` may be NULL when `len` is 0.
/// Blocking: yes, writes and fsyncs the file and its directory.
/// Threads: any; concurrent saves to one path leave one of them whole.
#[no_mangle]
pub unsafe extern "C" fn cluster_save(path: *const c_char, content_type: *const c_char, data: *const u8, len: usize) -> cluster_status {
    ffi!({
        let path = path_arg(path, "path")?;
        let content_type = cstr(content_type, "content_type")?;
        savefile::save(path, content_type, bytes(data, len, "data")?)
    })
}

/// Loads the file `path` written by `cluster_save`, checking all of it:
/// `*data` receives the payload, `*content_type` (may be NULL) its content
/// type, NUL-terminated (the NUL is not counted in its `len`). Errors,
/// with a message saying which: CLUSTER_ERR_IO for a missing or unreadable
/// file (naming the path); CLUSTER_ERR_CORRUPT for a file that is not of
/// this format (bad magic, e.g. a text file or line endings converted), of
/// a newer format version (naming the one this library reads), truncated
/// or with trailing bytes (expected and found lengths), or damaged
/// (checksum mismatch); CLUSTER_ERR_INVALID_ARGUMENT for NULL `path` or
/// `data`. On an error the out buffers are left untouched.
///
/// Ownership: `*data` and `*content_type` are the caller's until
/// `cluster_buffer_free`.
/// Blocking: yes, reads the whole file.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_load(path: *const c_char, data: *mut cluster_buffer, content_type: *mut cluster_buffer) -> cluster_status {
    ffi!({
        let path = path_arg(path, "path")?;
        check_out(data, "data")?;
        let loaded = savefile::load(path)?;
        let payload = buffer_from_vec(loaded.data)?;
        if !content_type.is_null() {
            match text_buffer(loaded.content_type) {
                Ok(b) => content_type.write(b),
                Err(e) => {
                    let _ = handles::remove(Kind::Buffer, payload.handle);
                    return Err(e);
                }
            }
        }
        put(data, "data", payload)
    })
}
