//! A cluster that adds and removes workers for days stays flat in file
//! descriptors, threads and memory. (Its own test binary: the counts are
//! per process, and other tests would move them.)

use cluster::prelude::*;
use cluster::{Cluster, Config, LaunchOptions};
use std::time::Duration;

const WORKER: &str = env!("CARGO_BIN_EXE_cluster-test-worker");

#[test]
fn a_thousand_add_remove_cycles_leak_nothing() {
    let cycles: usize = std::env::var("LIBCLUSTER_SOAK_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let c = Cluster::init(Config::default()).unwrap();
    let opts = LaunchOptions { program: Some(WORKER.into()), args: Some(vec![]), ..Default::default() };
    let cycle = |i: usize| {
        let ids = c.addprocs(1, &opts).unwrap_or_else(|e| panic!("cycle {i}: {e}"));
        assert_eq!(&*c.remotecall_fetch(ids[0], "echo", b"x").unwrap(), b"x");
        c.rmprocs(&ids, Duration::from_secs(10)).unwrap_or_else(|e| panic!("cycle {i}: {e}"));
    };
    for i in 0..20 {
        cycle(i);
    }
    std::thread::sleep(Duration::from_millis(300));
    let fds0 = cluster::sys::open_fds().unwrap();
    let threads0 = cluster::sys::thread_count().unwrap();
    let rss0 = cluster::sys::resident_bytes(std::process::id()).unwrap();
    for i in 0..cycles {
        cycle(i);
    }
    std::thread::sleep(Duration::from_millis(300));
    let fds1 = cluster::sys::open_fds().unwrap();
    let threads1 = cluster::sys::thread_count().unwrap();
    let rss1 = cluster::sys::resident_bytes(std::process::id()).unwrap();
    assert!(fds1 <= fds0 + 2, "file descriptors grew from {fds0} to {fds1} over {cycles} cycles");
    assert!(threads1 <= threads0 + 2, "threads grew from {threads0} to {threads1} over {cycles} cycles");
    assert!(rss1 <= rss0 + (8 << 20), "resident memory grew from {rss0} to {rss1} bytes over {cycles} cycles");
    assert_eq!(c.procs(), vec![1]);
    c.shutdown(Duration::from_secs(10)).unwrap();
}
