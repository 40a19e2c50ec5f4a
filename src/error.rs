//! Errors of the core. Each kind has a fixed code, shared with the C
//! status enum (`cluster_status`) and the wire, and never renumbered.

use std::fmt;

/// The one table of error kinds: code, name and description. The C
/// status enum (`cluster_status` in `src/ffi/status.rs`), its strings and
/// the Julia constants are checked against it by tests.
macro_rules! error_kinds {
    ($($kind:ident = $code:literal => $text:literal,)*) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum ErrorKind {
            $($kind = $code,)*
        }

        impl ErrorKind {
            /// Every kind, in the order of the table.
            pub const ALL: &'static [ErrorKind] = &[$(ErrorKind::$kind,)*];

            pub fn from_code(code: u8) -> Option<ErrorKind> {
                match code {
                    $($code => Some(ErrorKind::$kind),)*
                    _ => None,
                }
            }

            pub fn describe(self) -> &'static str {
                match self {
                    $(ErrorKind::$kind => $text,)*
                }
            }

            /// The variant's name, e.g. "InvalidArgument".
            pub fn name(self) -> &'static str {
                match self {
                    $(ErrorKind::$kind => stringify!($kind),)*
                }
            }
        }
    };
}

error_kinds! {
    InvalidArgument = 1 => "invalid argument",
    BadHandle = 2 => "invalid, freed or wrong-kind handle",
    NotHead = 3 => "only process 1 can add and remove workers",
    NoSuchProcess = 4 => "no such process",
    Remote = 5 => "remote error",
    ProcessExited = 6 => "process exited",
    Interrupted = 7 => "interrupted",
    Timeout = 8 => "timed out",
    Topology = 9 => "not allowed by the cluster topology",
    Launch = 10 => "worker launch failed",
    Auth = 11 => "authentication failed",
    Io = 12 => "I/O error",
    Protocol = 13 => "protocol error",
    TooLarge = 14 => "message too large",
    Shutdown = 15 => "cluster is shut down",
    Panic = 16 => "internal panic",
    NotReady = 17 => "not ready",
    Composite = 18 => "several processes failed",
    WrongMode = 19 => "not available in this dispatch mode",
    BufferTooSmall = 20 => "buffer too small",
    HeadLost = 21 => "the head went away",
    ChannelClosed = 22 => "the channel is closed",
    NotFound = 23 => "no such key",
    Corrupt = 24 => "damaged, truncated or foreign data",
}

/// An error with its kind, a message, and the process it concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    /// The process the error came from or concerns (0 when none).
    pub pid: u32,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error { kind, message: message.into(), pid: 0 }
    }
    pub fn at(kind: ErrorKind, pid: u32, message: impl Into<String>) -> Error {
        Error { kind, message: message.into(), pid }
    }
    pub fn exited(pid: u32) -> Error {
        Error::at(ErrorKind::ProcessExited, pid, format!("worker {pid} exited"))
    }
    pub fn io(context: &str, e: std::io::Error) -> Error {
        Error::new(ErrorKind::Io, format!("{context}: {e}"))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ErrorKind::Remote if self.pid != 0 => {
                write!(f, "remote error on process {}: {}", self.pid, self.message)
            }
            _ => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;
