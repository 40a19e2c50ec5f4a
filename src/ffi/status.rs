//! `cluster_status`, its descriptions, the calling thread's last error, and
//! the library version.
//!
//! The status codes, names and descriptions are those of the core's
//! `ErrorKind` table (`src/error.rs`); the enum below is written out for
//! cbindgen, and the tests at the end of this file (plus the header and
//! Julia checks in `header_checks.rs`) fail on any difference.

use crate::{Error, ErrorKind};
use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::sync::OnceLock;

/// Major version of this header and library.
pub const CLUSTER_VERSION_MAJOR: u32 = 0;
/// Minor version: additions only.
pub const CLUSTER_VERSION_MINOR: u32 = 2;
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
    /// A message exceeds the configured maximum size (or, for handles, no
    /// handle is left to issue).
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
    /// This worker's head went away: `cluster_serve` returns it.
    CLUSTER_ERR_HEAD_LOST = 21,
    /// The channel is closed (and, for a take, empty): `cluster_channel_close`,
    /// or the process it is bound to left.
    CLUSTER_ERR_CHANNEL_CLOSED = 22,
    /// No such key in the dict (Julia's KeyError).
    CLUSTER_ERR_NOT_FOUND = 23,
    /// A file or message is damaged, truncated or not of this format
    /// (`cluster_load`).
    CLUSTER_ERR_CORRUPT = 24,
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
            ErrorKind::HeadLost => CLUSTER_ERR_HEAD_LOST,
            ErrorKind::ChannelClosed => CLUSTER_ERR_CHANNEL_CLOSED,
            ErrorKind::NotFound => CLUSTER_ERR_NOT_FOUND,
            ErrorKind::Corrupt => CLUSTER_ERR_CORRUPT,
        }
    }
}

/// `ErrorKind::describe` of every code, NUL-terminated, indexed by code.
fn descriptions() -> &'static [CString] {
    static TABLE: OnceLock<Vec<CString>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let top = ErrorKind::ALL.iter().map(|&k| k as usize).max().unwrap_or(0);
        (0..=top)
            .map(|code| {
                let text = match code {
                    0 => "ok",
                    c => ErrorKind::from_code(c as u8).map(ErrorKind::describe).unwrap_or("unknown status"),
                };
                CString::new(text).expect("descriptions have no NUL")
            })
            .collect()
    })
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
        static UNKNOWN: &std::ffi::CStr = c"unknown status";
        let table = descriptions();
        usize::try_from(status).ok().and_then(|i| table.get(i)).map_or(UNKNOWN.as_ptr(), |s| s.as_ptr())
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

/// The C name of a kind's status: "InvalidArgument" gives
/// "CLUSTER_ERR_INVALID_ARGUMENT".
#[cfg(test)]
pub(crate) fn c_name(kind: ErrorKind) -> String {
    let mut s = String::from("CLUSTER_ERR_");
    for (i, ch) in kind.name().chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            s.push('_');
        }
        s.push(ch.to_ascii_uppercase());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn status_text(code: i32) -> String {
        // SAFETY: cluster_status_str never returns NULL.
        unsafe { CStr::from_ptr(cluster_status_str(code)) }.to_str().unwrap().to_string()
    }

    #[test]
    fn error_codes_are_one_to_n_without_gaps_and_round_trip() {
        for (i, &k) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(k as usize, i + 1, "{k:?} is out of order or leaves a gap");
            assert_eq!(ErrorKind::from_code(k as u8), Some(k));
        }
        assert_eq!(ErrorKind::from_code(0), None);
        assert_eq!(ErrorKind::from_code(ErrorKind::ALL.len() as u8 + 1), None);
    }

    #[test]
    fn every_kind_has_its_status_with_the_same_code_name_and_text() {
        for &k in ErrorKind::ALL {
            let st = cluster_status::from_kind(k);
            assert_eq!(st as i32, k as i32, "{k:?}");
            assert_eq!(format!("{st:?}"), c_name(k), "{k:?}");
            assert_eq!(status_text(st as i32), k.describe(), "{k:?}");
        }
        assert_eq!(status_text(0), "ok");
    }

    #[test]
    fn unknown_statuses_have_a_text() {
        let n = ErrorKind::ALL.len() as i32;
        for code in [n + 1, n + 100, -1, i32::MIN, i32::MAX] {
            assert_eq!(status_text(code), "unknown status");
        }
    }

    #[test]
    fn a_panic_is_a_status_with_a_message() {
        let st: cluster_status = ffi!({
            if ErrorKind::ALL.len() < 1000 {
                panic!("on purpose");
            }
            Ok(())
        });
        assert_eq!(st, cluster_status::CLUSTER_ERR_PANIC);
        // SAFETY: never NULL.
        let msg = unsafe { CStr::from_ptr(cluster_last_error()) }.to_str().unwrap().to_string();
        assert_eq!(msg, "internal panic: on purpose");
        let v: u32 = ffi!(panic!("again"));
        assert_eq!(v, 0);
    }
}
