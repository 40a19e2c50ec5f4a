//! Connections between processes: the authentication handshake, the
//! connection itself (caller-driven reads, corking, write queue) and the
//! reactor that watches idle connections.

pub mod auth;
pub mod conn;
pub mod reactor;
pub mod tls;

pub use conn::{Conn, Dispatch, Flusher, Job};
pub use reactor::{Reactor, ReactorParts};
