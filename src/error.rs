//! Errors of the core. Each kind has a fixed code, shared with the C
//! status enum (`cluster_status`) and the wire, and never renumbered.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ErrorKind {
    InvalidArgument = 1,
    BadHandle = 2,
    NotHead = 3,
    NoSuchProcess = 4,
    Remote = 5,
    ProcessExited = 6,
    Interrupted = 7,
    Timeout = 8,
    Topology = 9,
    Launch = 10,
    Auth = 11,
    Io = 12,
    Protocol = 13,
    TooLarge = 14,
    Shutdown = 15,
    Panic = 16,
    NotReady = 17,
    Composite = 18,
    WrongMode = 19,
    BufferTooSmall = 20,
    HeadLost = 21,
}

impl ErrorKind {
    pub fn from_code(code: u8) -> Option<ErrorKind> {
        use ErrorKind::*;
        Some(match code {
            1 => InvalidArgument,
            2 => BadHandle,
            3 => NotHead,
            4 => NoSuchProcess,
            5 => Remote,
            6 => ProcessExited,
            7 => Interrupted,
            8 => Timeout,
            9 => Topology,
            10 => Launch,
            11 => Auth,
            12 => Io,
            13 => Protocol,
            14 => TooLarge,
            15 => Shutdown,
            16 => Panic,
            17 => NotReady,
            18 => Composite,
            19 => WrongMode,
            20 => BufferTooSmall,
            21 => HeadLost,
            _ => return None,
        })
    }

    pub fn describe(self) -> &'static str {
        use ErrorKind::*;
        match self {
            InvalidArgument => "invalid argument",
            BadHandle => "invalid, freed or wrong-kind handle",
            NotHead => "only process 1 can add and remove workers",
            NoSuchProcess => "no such process",
            Remote => "remote error",
            ProcessExited => "process exited",
            Interrupted => "interrupted",
            Timeout => "timed out",
            Topology => "not allowed by the cluster topology",
            Launch => "worker launch failed",
            Auth => "authentication failed",
            Io => "I/O error",
            Protocol => "protocol error",
            TooLarge => "message too large",
            Shutdown => "cluster is shut down",
            Panic => "internal panic",
            NotReady => "not ready",
            Composite => "several processes failed",
            WrongMode => "not available in this dispatch mode",
            BufferTooSmall => "buffer too small",
            HeadLost => "the head went away",
        }
    }
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
