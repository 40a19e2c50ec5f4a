//! What a node is started with.

use crate::log::Level;
pub use crate::net::tls::TlsMode;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Topology {
    /// Workers call each other over connections made on first use.
    AllToAll = 0,
    /// Workers talk only to the head.
    MasterWorker = 1,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DispatchMode {
    /// Handlers run on library threads.
    Threads,
    /// Handlers run only inside `poll`, on the host's thread.
    Host,
}

/// Where a process reads its TLS setting (and launchers pass the head's).
pub const ENV_TLS: &str = "LIBCLUSTER_TLS";

#[derive(Clone)]
pub struct Config {
    /// Address to listen on; loopback unless told otherwise.
    pub listen_host: String,
    /// The cluster secret; random on a head when `None`. A worker takes it
    /// from its launcher (stdin) or `LIBCLUSTER_COOKIE`, else from here.
    pub cookie: Option<String>,
    pub topology: Topology,
    pub dispatch: DispatchMode,
    /// How many calls run at once in `Threads` mode.
    pub handler_threads: usize,
    pub startup_timeout: Duration,
    pub max_message_bytes: u64,
    /// How long a thread spins for a reply or the next frame before it parks.
    pub spin: Duration,
    /// `None`: from `LIBCLUSTER_LOG`, else quiet.
    pub log_level: Option<Level>,
    /// A launched worker that cannot reach its head at start exits the
    /// process from `init` (the caller's thread). Head loss later never
    /// exits: it is an event, and `serve` returns `HeadLost`.
    pub exit_on_head_loss: bool,
    /// Join this head as an elastic worker (overrides `LIBCLUSTER_HEAD`).
    pub join: Option<String>,
    /// A peer that sends nothing for this long (its process, not a long
    /// handler: heartbeats are answered by the library) is declared dead.
    pub heartbeat_timeout: Duration,
    /// A new connection must authenticate and send its first message
    /// within this long in total, or it is closed (`LIBCLUSTER_HANDSHAKE_MS`).
    pub handshake_timeout: Duration,
    /// Which connections this process asks to run under TLS (either end
    /// asking is enough). Default from `LIBCLUSTER_TLS` (`off`, `on`:
    /// connections not on loopback, `always`), else off. Launchers pass
    /// the head's setting to its workers.
    pub tls: TlsMode,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            // A launcher tells a remote worker where to listen
            // (`LIBCLUSTER_LISTEN`: a host, or host:first-last for a port range).
            listen_host: std::env::var("LIBCLUSTER_LISTEN").ok().filter(|v| !v.is_empty()).unwrap_or_else(|| "127.0.0.1".into()),
            cookie: None,
            topology: Topology::AllToAll,
            dispatch: DispatchMode::Threads,
            handler_threads: 1,
            startup_timeout: Duration::from_secs(60),
            max_message_bytes: 1 << 30,
            spin: Duration::from_micros(std::env::var("LIBCLUSTER_SPIN_US").ok().and_then(|v| v.parse().ok()).unwrap_or(100)),
            log_level: None,
            exit_on_head_loss: true,
            join: None,
            heartbeat_timeout: Duration::from_millis(std::env::var("LIBCLUSTER_HEARTBEAT_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(5000)),
            handshake_timeout: Duration::from_millis(
                std::env::var("LIBCLUSTER_HANDSHAKE_MS").ok().and_then(|v| v.parse().ok()).filter(|&v| v > 0).unwrap_or(5000),
            ),
            tls: std::env::var(ENV_TLS).ok().and_then(|v| TlsMode::parse(&v)).unwrap_or_default(),
        }
    }
}
