//! What every export shares, in one place: the panic boundary, the lookup
//! of its handle arguments, and turning the outcome into a return value
//! (a `cluster_status` plus the thread's last error).
//!
//! An export is written as an ordinary `#[no_mangle] extern "C" fn` (so
//! cbindgen sees it) whose body is one `ffi!` invocation:
//!
//! ```ignore
//! pub unsafe extern "C" fn cluster_myid(ctx: *mut cluster_ctx, out: *mut i32) -> cluster_status {
//!     ffi!([ctx => c] put(out, "out", c.myid() as i32))
//! }
//! ```
//!
//! `[ctx => c]` looks the handle `ctx` up (a bad one fails the call with
//! CLUSTER_ERR_BAD_HANDLE) and binds its object to `c`; the rest is the
//! body, which returns `Result<(), Error>` for functions returning a status
//! and the plain value for the few that return one (version, strings).

use super::handles::{self, Kind};
use super::status::{cluster_status, set_last_error};
use crate::{Error, ErrorKind};
use std::ffi::c_char;
use std::sync::Arc;

/// Runs an export's body behind the panic boundary, after looking up the
/// handles named in brackets.
macro_rules! ffi {
    ([$($handle:ident => $obj:ident),* $(,)?] $($body:tt)*) => {
        $crate::ffi::boundary::run(|| {
            $(let $obj = $crate::ffi::boundary::Handle::object($handle)?;)*
            $($body)*
        })
    };
    ($($body:tt)*) => {
        $crate::ffi::boundary::run(|| { $($body)* })
    };
}

/// What an export returns, built from its body's outcome or from a panic.
pub(crate) trait Boundary: Sized {
    /// What the body evaluates to.
    type Body;
    fn finish(body: Self::Body) -> Self;
    /// The value returned when the body panicked (the last error says why).
    fn panicked() -> Self;
}

impl Boundary for cluster_status {
    type Body = Result<(), Error>;
    fn finish(body: Result<(), Error>) -> cluster_status {
        match body {
            Ok(()) => cluster_status::CLUSTER_OK,
            Err(e) => {
                set_last_error(&e);
                cluster_status::from_kind(e.kind)
            }
        }
    }
    fn panicked() -> cluster_status {
        cluster_status::CLUSTER_ERR_PANIC
    }
}

macro_rules! plain_value {
    ($($t:ty = $on_panic:expr;)*) => {$(
        impl Boundary for $t {
            type Body = $t;
            fn finish(body: $t) -> $t {
                body
            }
            fn panicked() -> $t {
                $on_panic
            }
        }
    )*};
}

plain_value! {
    u32 = 0;
    i32 = 0;
    *const c_char = c"".as_ptr();
}

/// The runner behind `ffi!`.
pub(crate) fn run<R: Boundary>(body: impl FnOnce() -> R::Body) -> R {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(b) => R::finish(b),
        Err(p) => {
            let what =
                p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_else(|| "unknown panic".into());
            set_last_error(&Error::new(ErrorKind::Panic, format!("internal panic: {what}")));
            R::panicked()
        }
    }
}

/// A C handle type: the kind it is checked against and the object behind it.
pub(crate) trait Handle: Copy {
    type Object: Send + Sync + 'static;
    const KIND: Kind;
    fn raw(self) -> u64;

    /// The live object, or CLUSTER_ERR_BAD_HANDLE.
    fn object(self) -> Result<Arc<Self::Object>, Error> {
        handles::get::<Self::Object>(Self::KIND, self.raw())
    }

    /// Takes the handle out of the table; the object is dropped by the caller.
    fn remove(self) -> Result<(), Error> {
        handles::remove(Self::KIND, self.raw()).map(drop)
    }
}

/// Implements `Handle` for `*mut $c` (an opaque C struct) with `$obj` behind it.
macro_rules! c_handle {
    ($c:ty, $kind:expr, $obj:ty) => {
        impl $crate::ffi::boundary::Handle for *mut $c {
            type Object = $obj;
            const KIND: $crate::ffi::handles::Kind = $kind;
            fn raw(self) -> u64 {
                self as u64
            }
        }
    };
}
