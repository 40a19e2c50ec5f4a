//! Threads are bounded by the machine, not by the number of peers: a
//! head with many workers, and a worker connected to all the others,
//! each run a small fixed number of threads. (Its own test binary: the
//! count is per process.)

use cluster::prelude::*;
use cluster::{Cluster, Config, LaunchOptions};
use std::time::Duration;

const WORKER: &str = env!("CARGO_BIN_EXE_cluster-test-worker");
const MAX_THREADS: usize = 16;

fn u32_of(v: &[u8]) -> u32 {
    u32::from_le_bytes(v[..4].try_into().unwrap())
}

#[test]
fn threads_do_not_grow_with_peers() {
    let n: usize = std::env::var("LIBCLUSTER_TEST_WORKERS").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    // Liveness is not what this checks: 256 processes starting on two
    // cores may be silent for seconds.
    let c = Cluster::init(Config { heartbeat_timeout: Duration::from_secs(60), ..Config::default() }).unwrap();
    let base = cluster::sys::thread_count().unwrap();
    let opts =
        LaunchOptions { program: Some(WORKER.into()), args: Some(vec![]), env: vec![("LIBCLUSTER_HEARTBEAT_MS".into(), "60000".into())], ..Default::default() };
    let ids = c.addprocs(n, &opts).unwrap();
    // Worker 2 calls every other worker: it holds a connection to each.
    let called = u32_of(&c.remotecall_fetch(ids[0], "call_all", &[]).unwrap());
    assert_eq!(called as usize, n - 1);
    // Everyone answers the head.
    c.everywhere(Some(&ids), "noop", &[], Some(Duration::from_secs(60))).unwrap();
    let head_threads = cluster::sys::thread_count().unwrap();
    let worker_threads = u32_of(&c.remotecall_fetch(ids[0], "threads", &[]).unwrap()) as usize;
    let worker_fds = u32_of(&c.remotecall_fetch(ids[0], "fds", &[]).unwrap()) as usize;
    assert!(worker_fds > n, "worker 2 is not connected to every peer ({worker_fds} fds)");
    eprintln!("head: {} threads, worker 2: {worker_threads} threads, {worker_fds} fds, {n} workers", head_threads - base + 1);
    assert!(head_threads - base < MAX_THREADS, "the head runs {} threads with {n} workers", head_threads - base + 1);
    assert!(worker_threads <= MAX_THREADS, "a worker with {} peers runs {worker_threads} threads", n - 1);
    c.shutdown(Duration::from_secs(60)).unwrap();
}
