//! The C ABI. This layer only validates, converts and calls the core:
//! every export catches panics, checks every pointer and handle, and
//! returns a `cluster_status`; `cluster_last_error` gives the detail.
//!
//! Handles are not pointers to memory: they encode (kind, generation,
//! slot) into a table, so a freed, stale or wrong-kind handle is an
//! error, never a dereference.

#![allow(non_camel_case_types)]
#![allow(clippy::missing_safety_doc)]

mod api;
mod handles;
mod types;

pub use api::*;
pub use types::*;

use crate::error::{Error, ErrorKind};
use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};

thread_local! {
    static LAST_ERROR: RefCell<(CString, i32)> = RefCell::new((CString::default(), 0));
}

pub(crate) fn set_last_error(e: &Error) {
    let text = e.to_string().replace('\0', " ");
    LAST_ERROR.with(|l| *l.borrow_mut() = (CString::new(text).unwrap_or_default(), e.pid as i32));
}

pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR.with(|l| l.borrow().0.as_ptr())
}

pub(crate) fn last_error_pid() -> i32 {
    LAST_ERROR.with(|l| l.borrow().1)
}

pub(crate) type FfiResult = Result<(), Error>;

/// Runs `f` behind the panic boundary and turns its outcome into a status.
pub(crate) fn guard(f: impl FnOnce() -> FfiResult) -> cluster_status {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(())) => cluster_status::CLUSTER_OK,
        Ok(Err(e)) => {
            set_last_error(&e);
            cluster_status::from_kind(e.kind)
        }
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&Error::new(ErrorKind::Panic, format!("internal panic: {what}")));
            cluster_status::CLUSTER_ERR_PANIC
        }
    }
}

pub(crate) fn null_arg(name: &str) -> Error {
    Error::new(ErrorKind::InvalidArgument, format!("{name} must not be NULL"))
}

/// Borrows a required NUL-terminated UTF-8 string.
pub(crate) unsafe fn cstr<'a>(p: *const c_char, name: &str) -> Result<&'a str, Error> {
    if p.is_null() {
        return Err(null_arg(name));
    }
    CStr::from_ptr(p)
        .to_str()
        .map_err(|_| Error::new(ErrorKind::InvalidArgument, format!("{name} is not valid UTF-8")))
}

/// Borrows an optional string (NULL gives `None`).
pub(crate) unsafe fn opt_cstr<'a>(p: *const c_char, name: &str) -> Result<Option<&'a str>, Error> {
    if p.is_null() {
        Ok(None)
    } else {
        cstr(p, name).map(Some)
    }
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
    if out.is_null() {
        return Err(null_arg(name));
    }
    out.write(value);
    Ok(())
}

pub(crate) fn check_out<T>(out: *mut T, name: &str) -> FfiResult {
    if out.is_null() {
        Err(null_arg(name))
    } else {
        Ok(())
    }
}

/// A host pointer carried into closures that may run on other threads;
/// the C contract makes the host responsible for its thread-safety.
#[derive(Clone, Copy)]
pub(crate) struct UserData(pub *mut std::ffi::c_void);
unsafe impl Send for UserData {}
unsafe impl Sync for UserData {}
