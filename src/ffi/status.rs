//! `cluster_status`, its descriptions, the calling thread's last error, and
//! the library version.

use crate::{Error, ErrorKind};
use std::cell::RefCell;
use std::ffi::{c_char, CString};

/// Major version of this header and library.
pub const CLUSTER_VERSION_MAJOR: u32 = 0;
/// Minor version: additions only.
pub const CLUSTER_VERSION_MINOR: u32 = 1;
/// Patch version: fixes only.
pub const CLUSTER_VERSION_PATCH: u32 = 0;
/// `CLUSTER_VERSION_MAJOR << 16 | CLUSTER_VERSION_MINOR << 8 | CLUSTER_VERSION_PATCH`;
/// compare with `cluster_version()` to detect a header/library mismatch.
pub const CLUSTER_VERSION: u32 = (CLUSTER_VERSION_MAJOR << 16) | (CLUSTER_VERSION_MINOR << 8) | CLUSTER_VERSION_PATCH;

/// Outcome of every call. Values are fixed and never renumbered.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum cluster_status {
    CLUSTER_OK = 0,
    /// A NULL, out-of-range or malformed argument.
    CLUSTER_ERR_INVALID_ARGUMENT = 1,
    /// A NULL, freed, stale or wrong-kind handle.
    CLUSTER_ERR_BAD_HANDLE = 2,
    /// Only process 1 (the head) may add and remove workers.
    CLUSTER_ERR_NOT_HEAD = 3,
    /// No process with that id is, or was, in the cluster.
    CLUSTER_ERR_NO_SUCH_PROCESS = 4,
    /// The remote function failed or is not registered there; see
    /// `cluster_future_error` / `cluster_last_error_pid` for the process.
    CLUSTER_ERR_REMOTE = 5,
    /// The process exited or died before answering.
    CLUSTER_ERR_PROCESS_EXITED = 6,
    /// The call was cancelled by `cluster_interrupt`.
    CLUSTER_ERR_INTERRUPTED = 7,
    CLUSTER_ERR_TIMEOUT = 8,
    /// Not allowed by the topology (worker-to-worker under master_worker).
    CLUSTER_ERR_TOPOLOGY = 9,
    /// A worker could not be started or did not become ready.
    CLUSTER_ERR_LAUNCH = 10,
    /// The peer could not prove the cluster cookie, or none was given.
    CLUSTER_ERR_AUTH = 11,
    CLUSTER_ERR_IO = 12,
    CLUSTER_ERR_PROTOCOL = 13,
    /// A message exceeds the configured maximum size.
    CLUSTER_ERR_TOO_LARGE = 14,
    /// The cluster was shut down.
    CLUSTER_ERR_SHUTDOWN = 15,
    /// A bug in libcluster was caught at the API boundary.
    CLUSTER_ERR_PANIC = 16,
    /// The result is not available yet.
    CLUSTER_ERR_NOT_READY = 17,
    /// Several processes failed (`cluster_everywhere`); the message lists each.
    CLUSTER_ERR_COMPOSITE = 18,
    /// Not available in this dispatch mode.
    CLUSTER_ERR_WRONG_MODE = 19,
    /// An output buffer is too small; the needed size was reported.
    CLUSTER_ERR_BUFFER_TOO_SMALL = 20,
}

impl cluster_status {
    pub(crate) fn from_kind(k: ErrorKind) -> cluster_status {
        use cluster_status::*;
        match k {
            ErrorKind::InvalidArgument => CLUSTER_ERR_INVALID_ARGUMENT,
            ErrorKind::BadHandle => CLUSTER_ERR_BAD_HANDLE,
            ErrorKind::NotHead => CLUSTER_ERR_NOT_HEAD,
            ErrorKind::NoSuchProcess => CLUSTER_ERR_NO_SUCH_PROCESS,
            ErrorKind::Remote => CLUSTER_ERR_REMOTE,
            ErrorKind::ProcessExited => CLUSTER_ERR_PROCESS_EXITED,
            ErrorKind::Interrupted => CLUSTER_ERR_INTERRUPTED,
            ErrorKind::Timeout => CLUSTER_ERR_TIMEOUT,
            ErrorKind::Topology => CLUSTER_ERR_TOPOLOGY,
            ErrorKind::Launch => CLUSTER_ERR_LAUNCH,
            ErrorKind::Auth => CLUSTER_ERR_AUTH,
            ErrorKind::Io => CLUSTER_ERR_IO,
            ErrorKind::Protocol => CLUSTER_ERR_PROTOCOL,
            ErrorKind::TooLarge => CLUSTER_ERR_TOO_LARGE,
            ErrorKind::Shutdown => CLUSTER_ERR_SHUTDOWN,
            ErrorKind::Panic => CLUSTER_ERR_PANIC,
            ErrorKind::NotReady => CLUSTER_ERR_NOT_READY,
            ErrorKind::Composite => CLUSTER_ERR_COMPOSITE,
            ErrorKind::WrongMode => CLUSTER_ERR_WRONG_MODE,
            ErrorKind::BufferTooSmall => CLUSTER_ERR_BUFFER_TOO_SMALL,
        }
    }
}

thread_local! {
    static LAST_ERROR: RefCell<(CString, i32)> = RefCell::new((CString::default(), 0));
}

pub(crate) fn set_last_error(e: &Error) {
    let text = e.to_string().replace('\0', " ");
    LAST_ERROR.with(|l| *l.borrow_mut() = (CString::new(text).unwrap_or_default(), e.pid as i32));
}

/// The library's version as `CLUSTER_VERSION` encodes it. Never fails.
///
/// Ownership: returns a value.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub extern "C" fn cluster_version() -> u32 {
    ffi!(CLUSTER_VERSION)
}

/// The library's version as "major.minor.patch". Never NULL.
///
/// Ownership: static storage, never freed.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub extern "C" fn cluster_version_string() -> *const c_char {
    ffi!(concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char)
}

/// A NUL-terminated description of `status`, for any value (unknown ones
/// give "unknown status"). Never NULL.
///
/// Ownership: static storage, never freed.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub extern "C" fn cluster_status_str(status: i32) -> *const c_char {
    ffi!({
        let s: &'static str = match status {
            0 => "ok\0",
            1 => "invalid argument\0",
            2 => "invalid, freed or wrong-kind handle\0",
            3 => "only process 1 can add and remove workers\0",
            4 => "no such process\0",
            5 => "remote error\0",
            6 => "process exited\0",
            7 => "interrupted\0",
            8 => "timed out\0",
            9 => "not allowed by the cluster topology\0",
            10 => "worker launch failed\0",
            11 => "authentication failed\0",
            12 => "I/O error\0",
            13 => "protocol error\0",
            14 => "message too large\0",
            15 => "cluster is shut down\0",
            16 => "internal panic\0",
            17 => "not ready\0",
            18 => "several processes failed\0",
            19 => "not available in this dispatch mode\0",
            20 => "buffer too small\0",
            _ => "unknown status\0",
        };
        s.as_ptr() as *const c_char
    })
}

/// The message of the last failed call on this thread ("" if none).
///
/// Ownership: thread-local storage, valid until the next failing call on
/// this thread; copy it to keep it.
/// Blocking: no.
/// Threads: any; each thread has its own last error.
#[no_mangle]
pub extern "C" fn cluster_last_error() -> *const c_char {
    ffi!(LAST_ERROR.with(|l| l.borrow().0.as_ptr()))
}

/// The process the last error on this thread concerns (e.g. the worker a
/// remote error came from), or 0.
///
/// Ownership: returns a value.
/// Blocking: no.
/// Threads: any; each thread has its own last error.
#[no_mangle]
pub extern "C" fn cluster_last_error_pid() -> i32 {
    ffi!(LAST_ERROR.with(|l| l.borrow().1))
}
