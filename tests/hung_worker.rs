//! A hung worker (SIGSTOP) must not stall the head: no lock is held
//! across a write that can wait, writes to one peer never delay another,
//! and heartbeats declare the hung worker dead so its calls fail.

use cluster::prelude::*;
use cluster::{Cluster, Config, ErrorKind, LaunchOptions};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const WORKER: &str = env!("CARGO_BIN_EXE_cluster-test-worker");
const HEARTBEAT_MS: u64 = 1000;

fn opts() -> LaunchOptions {
    LaunchOptions {
        program: Some(WORKER.into()),
        args: Some(vec![]),
        env: vec![("LIBCLUSTER_HEARTBEAT_MS".into(), HEARTBEAT_MS.to_string())],
        ..Default::default()
    }
}

fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| !s.contains(") Z ")).unwrap_or(false)
}

#[test]
fn a_stopped_worker_is_declared_dead_and_stalls_nobody() {
    let cfg = Config { heartbeat_timeout: Duration::from_millis(HEARTBEAT_MS), ..Config::default() };
    let c = Cluster::init(cfg).unwrap();
    let ids = c.addprocs(2, &opts()).unwrap();
    let (hung, live) = (ids[0], ids[1]);
    let os_pid = u32::from_le_bytes(c.remotecall_fetch(hung, "getpid", &[]).unwrap()[..4].try_into().unwrap());
    assert!(cluster::sys::kill(os_pid, libc::SIGSTOP));

    // A 64 MiB argument fills the socket and its sender waits for room...
    let (tx, rx) = mpsc::channel();
    let node = c.node().clone();
    let sender = std::thread::spawn(move || {
        let big = vec![7u8; 64 << 20];
        let t = Instant::now();
        let r = node.remotecall(hung, "len", &big).and_then(|f| f.wait(Some(Duration::from_secs(30))));
        tx.send((r, t.elapsed())).unwrap();
    });
    std::thread::sleep(Duration::from_millis(200));

    // ...holding no lock: other work goes on meanwhile.
    let t = Instant::now();
    let small = c.remote_do(hung, "noop", &[]);
    assert!(small.is_ok() || small.as_ref().unwrap_err().kind == ErrorKind::ProcessExited, "{small:?}");
    assert!(t.elapsed() < Duration::from_millis(500), "remote_do to the stopped worker took {:?}", t.elapsed());
    let t = Instant::now();
    assert_eq!(&*c.remotecall_fetch(live, "echo", b"alive").unwrap(), b"alive");
    assert!(t.elapsed() < Duration::from_millis(500), "a call to a live worker took {:?}", t.elapsed());
    let t = Instant::now();
    let added = c.addprocs(1, &opts()).unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "addprocs took {:?}", t.elapsed());

    // The stopped worker is declared dead within a few heartbeats; its
    // calls fail naming it, and it is killed so it cannot come back.
    let (r, took) = rx.recv_timeout(Duration::from_secs(15)).expect("the big call never ended");
    sender.join().unwrap();
    let e = r.unwrap_err();
    assert_eq!(e.kind, ErrorKind::ProcessExited, "{e}");
    assert_eq!(e.pid, hung);
    assert!(took < Duration::from_millis(HEARTBEAT_MS * 6), "declared dead after {took:?}");
    assert!(!c.procs().contains(&hung));
    let deadline = Instant::now() + Duration::from_secs(5);
    while pid_alive(os_pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!pid_alive(os_pid), "the hung worker was not killed");
    let e = c.remotecall_fetch(hung, "echo", &[]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::ProcessExited);

    // rmprocs of a stopped worker reaches its SIGKILL phase on schedule.
    let os2 = u32::from_le_bytes(c.remotecall_fetch(live, "getpid", &[]).unwrap()[..4].try_into().unwrap());
    assert!(cluster::sys::kill(os2, libc::SIGSTOP));
    let t = Instant::now();
    // (A loaded machine may take a while to reap the killed process: the
    // timeout leaves it 500 ms after the SIGKILL at three quarters.)
    c.rmprocs(&[live], Duration::from_millis(2000)).unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "rmprocs took {:?}", t.elapsed());
    assert!(!pid_alive(os2));
    assert_eq!(&*c.remotecall_fetch(added[0], "echo", b"x").unwrap(), b"x");
    c.shutdown(Duration::from_secs(10)).unwrap();
}
