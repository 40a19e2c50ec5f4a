//! Connections between processes: the authentication handshake and the
//! connection itself (reader role, caller-driven reads, corking).

pub mod auth;
pub mod conn;

pub use conn::{Conn, Dispatch, Flusher, Job, Rescuer};
