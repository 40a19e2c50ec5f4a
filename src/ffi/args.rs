//! Checked conversions of C arguments. Every pointer is checked before it
//! is read or written; a bad argument is CLUSTER_ERR_INVALID_ARGUMENT.

use crate::{Error, ErrorKind};
use std::ffi::{c_char, CStr};
use std::time::Duration;

pub(crate) type FfiResult = Result<(), Error>;

pub(crate) fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidArgument, message)
}

pub(crate) fn null_arg(name: &str) -> Error {
    invalid(format!("{name} must not be NULL"))
}

/// Borrows a required NUL-terminated UTF-8 string.
pub(crate) unsafe fn cstr<'a>(p: *const c_char, name: &str) -> Result<&'a str, Error> {
    if p.is_null() {
        return Err(null_arg(name));
    }
    CStr::from_ptr(p).to_str().map_err(|_| invalid(format!("{name} is not valid UTF-8")))
}

/// Borrows an optional string (NULL gives `None`).
pub(crate) unsafe fn opt_cstr<'a>(p: *const c_char, name: &str) -> Result<Option<&'a str>, Error> {
    if p.is_null() {
        Ok(None)
    } else {
        cstr(p, name).map(Some)
    }
}

/// Borrows a required NUL-terminated file path (any bytes but NUL, as
/// the kernel takes them: not necessarily UTF-8).
pub(crate) unsafe fn path_arg<'a>(p: *const c_char, name: &str) -> Result<&'a std::path::Path, Error> {
    use std::os::unix::ffi::OsStrExt;
    if p.is_null() {
        return Err(null_arg(name));
    }
    Ok(std::path::Path::new(std::ffi::OsStr::from_bytes(CStr::from_ptr(p).to_bytes())))
}

/// Reads a NULL-terminated list of strings (NULL gives `None`).
pub(crate) unsafe fn str_list(p: *const *const c_char, name: &str) -> Result<Option<Vec<String>>, Error> {
    if p.is_null() {
        return Ok(None);
    }
    let mut v = Vec::new();
    let mut i = 0;
    loop {
        let s = *p.add(i);
        if s.is_null() {
            return Ok(Some(v));
        }
        v.push(cstr(s, name)?.to_string());
        i += 1;
        if i > 100_000 {
            return Err(invalid(format!("{name} is not NULL-terminated")));
        }
    }
}

/// Reads a NULL-terminated list of "NAME=value" entries (NULL: none).
pub(crate) unsafe fn env_list(p: *const *const c_char, name: &str) -> Result<Vec<(String, String)>, Error> {
    str_list(p, name)?
        .unwrap_or_default()
        .into_iter()
        .map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| invalid(format!("{name} entry {kv:?} is not NAME=value"))))
        .collect()
}

/// Borrows `len` bytes at `p`; NULL is allowed only when `len` is 0.
pub(crate) unsafe fn bytes<'a>(p: *const u8, len: usize, name: &str) -> Result<&'a [u8], Error> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(null_arg(name));
    }
    Ok(std::slice::from_raw_parts(p, len))
}

/// Writes through an out pointer after checking it.
pub(crate) unsafe fn put<T>(out: *mut T, name: &str, value: T) -> FfiResult {
    check_out(out, name)?;
    out.write(value);
    Ok(())
}

/// Checks an out pointer before the work that fills it.
pub(crate) fn check_out<T>(out: *mut T, name: &str) -> FfiResult {
    if out.is_null() {
        Err(null_arg(name))
    } else {
        Ok(())
    }
}

/// Copies `s` with a NUL into `buf[0..cap)`; `*len` gets strlen(s), also
/// when it does not fit (CLUSTER_ERR_BUFFER_TOO_SMALL).
pub(crate) unsafe fn put_str(s: &str, buf: *mut c_char, cap: usize, len: *mut usize) -> FfiResult {
    put(len, "len", s.len())?;
    if s.len() + 1 > cap {
        return Err(Error::new(ErrorKind::BufferTooSmall, format!("{} bytes do not fit in {cap}", s.len() + 1)));
    }
    check_out(buf, "buf")?;
    std::ptr::copy_nonoverlapping(s.as_ptr(), buf as *mut u8, s.len());
    *buf.add(s.len()) = 0;
    Ok(())
}

pub(crate) fn pid_arg(pid: i32) -> Result<u32, Error> {
    u32::try_from(pid).map_err(|_| invalid(format!("process id {pid} is negative")))
}

/// Reads `ids[0..n)` as process ids.
pub(crate) unsafe fn pid_list(ids: *const i32, n: usize) -> Result<Vec<u32>, Error> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if ids.is_null() {
        return Err(null_arg("ids"));
    }
    std::slice::from_raw_parts(ids, n).iter().map(|&p| pid_arg(p)).collect()
}

/// Copies `ids` to `out[0..cap)`; `*count` gets the full number, also when
/// they do not fit (CLUSTER_ERR_BUFFER_TOO_SMALL).
pub(crate) unsafe fn put_ids(ids: Vec<u32>, out: *mut i32, cap: usize, count: *mut usize) -> FfiResult {
    put(count, "count", ids.len())?;
    if ids.len() > cap {
        return Err(Error::new(ErrorKind::BufferTooSmall, format!("{} ids do not fit in {cap}", ids.len())));
    }
    if !ids.is_empty() {
        check_out(out, "out")?;
        for (i, id) in ids.iter().enumerate() {
            out.add(i).write(*id as i32);
        }
    }
    Ok(())
}

/// A timeout in milliseconds; negative (CLUSTER_FOREVER) is no limit.
pub(crate) fn timeout_arg(ms: i64) -> Option<Duration> {
    u64::try_from(ms).ok().map(Duration::from_millis)
}
