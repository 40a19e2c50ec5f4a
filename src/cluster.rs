//! The cluster: a node with the standard services installed. This is the
//! composition root; the services reach each other only through the node.

use crate::error::{Error, Result};
use crate::launch;
use crate::node::{Config, Node};
use crate::service::channel::Channels;
use crate::service::control::{Control, Role};
use crate::service::dict::Dicts;
use crate::service::shm::Shm;
use crate::service::stasks::Stasks;
use crate::service::vars::Vars;
use crate::service::collective::Collectives;
use crate::service::pool::Pools;
use crate::service::refs::Refs;
use crate::service::rpc::Rpc;
use std::sync::Arc;
use std::time::Duration;

/// The owner of a node: dropping it closes the node. Derefs to the node,
/// on which the services' extension traits (`cluster::prelude`) give the
/// operations.
pub struct Cluster(Arc<Node>);

impl std::ops::Deref for Cluster {
    type Target = Arc<Node>;
    fn deref(&self) -> &Arc<Node> {
        &self.0
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.0.close();
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

impl Cluster {
    /// Starts this process's node: a worker when `cfg.join` is set or the
    /// process was launched as one (`LIBCLUSTER_HEAD`), else the head. A
    /// launched worker that cannot join exits the process (status 3) when
    /// `cfg.exit_on_head_loss` is set: this runs on the caller's thread.
    pub fn init(mut cfg: Config) -> Result<Cluster> {
        if let Some(ms) = env_u64(launch::ENV_STARTUP_TIMEOUT_MS) {
            cfg.startup_timeout = Duration::from_millis(ms);
        }
        let role = Role::from_env(&cfg);
        let exit_on_fail = cfg.exit_on_head_loss && role.as_ref().map(|r| r.launched()).unwrap_or(std::env::var(launch::ENV_ID).is_ok() && cfg.join.is_none());
        let r = Cluster::start(cfg, role);
        if let (Err(e), true) = (&r, exit_on_fail) {
            eprintln!("libcluster worker {}: {e}; exiting", std::env::var(launch::ENV_ID).unwrap_or_default());
            std::process::exit(3);
        }
        r
    }

    fn start(cfg: Config, role: Result<Role>) -> Result<Cluster> {
        let role = role?;
        let host_mode = cfg.dispatch == crate::node::DispatchMode::Host;
        let handler_threads = cfg.handler_threads;
        let node = Node::new(cfg, role.is_head(), role.cookie().to_string())?;
        let rpc = Rpc::new(handler_threads, host_mode);
        node.set_lender(rpc.lender());
        node.install(Control::new(role))?;
        node.install(rpc)?;
        node.install(Refs::new())?;
        node.install(Channels::new())?;
        node.install(Pools::new())?;
        node.install(Dicts::new())?;
        node.install(Shm::new())?;
        node.install(Stasks::new())?;
        node.install(Vars::new())?;
        node.install(Collectives::new())?;
        let c = Cluster(node);
        c.0.start()?;
        Ok(c)
    }

    /// The node, shared (it stays open while the `Cluster` lives).
    pub fn node(&self) -> &Arc<Node> {
        &self.0
    }
}

#[allow(dead_code)]
fn _assert_send_sync(c: Cluster) -> Result<()> {
    fn ok<T: Send + Sync>(_: &T) {}
    ok(&c);
    Err(Error::new(crate::error::ErrorKind::Panic, "never called"))
}
