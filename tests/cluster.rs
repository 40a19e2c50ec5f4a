//! Multi-process integration tests of the core: real worker processes
//! (src/bin/cluster-test-worker.rs) on loopback.

use cluster::prelude::*;
use cluster::node::events;
use cluster::{Cluster, Config, DispatchMode, ErrorKind, LaunchOptions, Lifecycle, Topology, ANY_WORKER};
use parking_lot::Mutex;
use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WORKER: &str = env!("CARGO_BIN_EXE_cluster-test-worker");

fn opts() -> LaunchOptions {
    LaunchOptions { program: Some(WORKER.into()), args: Some(vec![]), ..Default::default() }
}

fn head_with(cfg: Config) -> Cluster {
    let c = Cluster::init(cfg).expect("init head");
    assert!(c.is_head());
    c.register_fn("echo", |call| Ok(call.args().to_vec())).unwrap();
    c.register_fn("noop", |_| Ok(Vec::new())).unwrap();
    c
}

fn head() -> Cluster {
    head_with(Config::default())
}

fn u32_of(v: &[u8]) -> u32 {
    u32::from_le_bytes(v[..4].try_into().unwrap())
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists() && !std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.contains(") Z ")).unwrap_or(true)
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    f()
}

#[test]
fn a_lone_head_has_distributed_values() {
    let c = head();
    assert_eq!(c.myid(), 1);
    assert_eq!(c.procs(), vec![1]);
    assert_eq!(c.workers(), vec![1]);
    assert_eq!(c.nprocs(), 1);
    assert_eq!(c.nworkers(), 1);
    assert!(c.other_procs().is_empty());
    assert!(c.other_workers().is_empty());
    // A call on "any" worker runs on the head itself when it is alone.
    assert_eq!(&*c.remotecall_fetch(ANY_WORKER, "echo", b"x").unwrap(), b"x");
}

#[test]
fn a_blocking_call_to_this_process_runs_on_the_callers_thread() {
    let c = head();
    c.register_fn("thread", |_| Ok(std::thread::current().name().unwrap_or("").as_bytes().to_vec())).unwrap();
    let c = Arc::new(c);
    let c2 = c.clone();
    c.register_fn("nested", move |call| {
        let v = c2.remotecall_fetch(1, "echo", call.args()).map_err(|e| e.to_string())?;
        Ok([&v[..], b"!"].concat())
    })
    .unwrap();
    let name = std::thread::Builder::new()
        .name("the-caller".into())
        .spawn({
            let c = c.clone();
            move || c.remotecall_fetch(1, "thread", &[]).unwrap()
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(&*name, b"the-caller");
    // Many threads at once, each call making a call to this process in
    // turn: more calls than handler slots, none lost or stuck.
    let (tx, rx) = std::sync::mpsc::channel();
    for t in 0..8u32 {
        let (c, tx) = (c.clone(), tx.clone());
        std::thread::spawn(move || {
            for i in 0..200u32 {
                let arg = (t * 1000 + i).to_le_bytes();
                let v = c.remotecall_fetch(1, "nested", &arg).unwrap();
                assert_eq!(&*v, &[&arg[..], b"!"].concat()[..]);
            }
            tx.send(t).unwrap();
        });
    }
    for _ in 0..8 {
        rx.recv_timeout(Duration::from_secs(60)).expect("calls to this process stuck");
    }
}

#[test]
fn workers_join_answer_calls_and_leave() {
    let c = head();
    let ids = c.addprocs(2, &opts()).unwrap();
    assert_eq!(ids, vec![2, 3]);
    assert_eq!(c.procs(), vec![1, 2, 3]);
    assert_eq!(c.workers(), vec![2, 3]);
    assert_eq!(c.other_procs(), vec![2, 3]);
    assert_eq!(c.nworkers(), 2);

    for &w in &ids {
        assert_eq!(u32_of(&c.remotecall_fetch(w, "myid", &[]).unwrap()), w);
        assert_eq!(u32_of(&c.remotecall_fetch(w, "caller", &[]).unwrap()), 1);
    }
    // Futures: ready after wait, value cached.
    let f = c.remotecall(2, "echo", b"hello").unwrap();
    assert_eq!(f.fetch(None).unwrap(), b"hello");
    assert!(f.is_ready());
    assert_eq!(f.fetch(Some(Duration::ZERO)).unwrap(), b"hello");
    let f = c.remotecall_wait(3, "sleep_ms", &20u32.to_le_bytes()).unwrap();
    assert!(f.is_ready());
    assert_eq!(f.fetch(None).unwrap(), b"slept");
    // Wait with a timeout that expires.
    let slow = c.remotecall(2, "sleep_ms", &300u32.to_le_bytes()).unwrap();
    assert_eq!(slow.wait(Some(Duration::from_millis(10))).unwrap_err().kind, ErrorKind::Timeout);
    assert!(!slow.is_ready());
    slow.wait(None).unwrap();

    // Round-robin over workers.
    let a = u32_of(&c.remotecall_fetch(ANY_WORKER, "myid", &[]).unwrap());
    let b = u32_of(&c.remotecall_fetch(ANY_WORKER, "myid", &[]).unwrap());
    assert_ne!(a, b);

    // Workers see the whole cluster.
    let procs: Vec<u32> = c.remotecall_fetch(2, "procs", &[]).unwrap().chunks(4).map(u32_of).collect();
    assert_eq!(procs, vec![1, 2, 3]);

    // remote_do runs, in order with later calls.
    for i in 0..500u64 {
        c.remote_do(3, "seq", &i.to_le_bytes()).unwrap();
    }
    let st = c.remotecall_fetch(3, "seq_state", &[]).unwrap();
    assert_eq!(u64::from_le_bytes(st[..8].try_into().unwrap()), 500);
    assert_eq!(st[8], 0, "calls ran out of order");

    c.rmprocs(&[2], Duration::from_secs(10)).unwrap();
    assert_eq!(c.procs(), vec![1, 3]);
    let e = c.remotecall(2, "myid", &[]).err().unwrap();
    assert_eq!(e.kind, ErrorKind::ProcessExited);
    assert_eq!(e.pid, 2);
    // Ids are never reused.
    assert_eq!(c.addprocs(1, &opts()).unwrap(), vec![4]);
    c.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn remote_failures_name_the_worker() {
    let c = head();
    let ids = c.addprocs(2, &opts()).unwrap();
    let e = c.remotecall_fetch(2, "fail", b"because").err().unwrap();
    assert_eq!(e.kind, ErrorKind::Remote);
    assert_eq!(e.pid, 2);
    assert!(e.message.contains("failing on purpose: because"), "{e}");

    let e = c.remotecall_fetch(3, "no_such_function", &[]).err().unwrap();
    assert_eq!(e.kind, ErrorKind::Remote);
    assert_eq!(e.pid, 3);
    assert!(e.message.contains("not registered"), "{e}");

    let e = c.remotecall_fetch(2, "panic", &[]).err().unwrap();
    assert_eq!(e.kind, ErrorKind::Remote);
    assert!(e.message.contains("panicked"), "{e}");

    // The worker keeps serving after all of that.
    assert_eq!(&*c.remotecall_fetch(2, "echo", b"ok").unwrap(), b"ok");

    let e = c.remotecall(99, "echo", &[]).err().unwrap();
    assert_eq!(e.kind, ErrorKind::NoSuchProcess);

    // everywhere: all succeed, then one failure is listed per process.
    c.everywhere(None, "noop", &[], Some(Duration::from_secs(10))).unwrap();
    let e = c.everywhere(None, "myid", &[], Some(Duration::from_secs(10))).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Composite);
    assert!(e.message.contains("process 1:"), "{e}");
    assert!(!e.message.contains("process 2:"), "{e}");
    let e = c.everywhere(Some(&ids), "fail", b"x", Some(Duration::from_secs(10))).unwrap_err();
    assert!(e.message.contains("process 2:") && e.message.contains("process 3:"), "{e}");
    c.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn a_killed_worker_fails_its_pending_calls_promptly() {
    let c = head();
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    c.set_lifecycle_hook(Some(Arc::new(move |pid, e| ev.lock().push((pid, e)))));
    let ids = c.addprocs(2, &opts()).unwrap();
    assert!(events.lock().contains(&(2, Lifecycle::Started)));
    let os_pid = u32_of(&c.remotecall_fetch(2, "getpid", &[]).unwrap());
    let pending = c.remotecall(2, "sleep_ms", &20_000u32.to_le_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    cluster::sys::kill(os_pid, cluster::sys::SIGKILL);
    let e = pending.wait(Some(Duration::from_secs(5))).unwrap_err();
    assert_eq!(e.kind, ErrorKind::ProcessExited);
    assert_eq!(e.pid, 2);
    assert!(t.elapsed() < Duration::from_secs(1), "took {:?}", t.elapsed());
    assert!(wait_until(Duration::from_secs(2), || events.lock().contains(&(2, Lifecycle::Exited { graceful: false }))));
    assert_eq!(c.remotecall(2, "echo", &[]).err().unwrap().kind, ErrorKind::ProcessExited);
    assert_eq!(c.procs(), vec![1, 3]);
    // The other worker is unaffected.
    assert_eq!(u32_of(&c.remotecall_fetch(ids[1], "myid", &[]).unwrap()), 3);
    c.rmprocs(&[3], Duration::from_secs(10)).unwrap();
    assert!(wait_until(Duration::from_secs(2), || events.lock().contains(&(3, Lifecycle::Exited { graceful: true }))));
}

#[test]
fn interrupt_cancels_running_calls_only() {
    let c = head();
    let mut two = opts();
    two.env.push(("TEST_HANDLER_THREADS".into(), "2".into()));
    c.addprocs(1, &two).unwrap();
    c.interrupt(&[2]).unwrap(); // idle: ignored...
                                // ...and not carried over to the next call, which runs to its end.
    assert_eq!(&*c.remotecall_fetch(2, "wait_cancel_ms", &200u32.to_le_bytes()).unwrap(), b"not cancelled");
    let f = c.remotecall(2, "wait_cancel", &[]).unwrap();
    // Interrupt only once the call runs there (the probe itself is the other one).
    assert!(wait_until(Duration::from_secs(10), || u32_of(&c.remotecall_fetch(2, "running", &[]).unwrap()) == 2));
    c.interrupt(&[2]).unwrap();
    let e = f.wait(Some(Duration::from_secs(10))).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Interrupted);
    assert_eq!(e.pid, 2);
    assert_eq!(&*c.remotecall_fetch(2, "echo", b"still here").unwrap(), b"still here");
    c.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn corked_requests_go_out_without_a_wait() {
    let c = head();
    c.addprocs(2, &opts()).unwrap();
    // Back-to-back one-way calls are corked; nothing here waits on the
    // connection to worker 2, so the flusher must write them out.
    for i in 0..100u64 {
        c.remote_do(2, "seq", &i.to_le_bytes()).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let st = c.remotecall_fetch(3, "peer_seq_state", &2u32.to_le_bytes()).unwrap();
    assert_eq!(u64::from_le_bytes(st[..8].try_into().unwrap()), 100);
    assert_eq!(st[8], 0, "calls ran out of order");
    c.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn no_request_stays_corked_when_nobody_spins() {
    // Without spinning, a reader leaves its loop after every frame, racing
    // senders that decided to cork while it was still there.
    let c = head_with(Config { spin: Duration::ZERO, ..Config::default() });
    let mut o = opts();
    o.env.push(("LIBCLUSTER_SPIN_US".into(), "0".into()));
    c.addprocs(1, &o).unwrap();
    for i in 0..3000 {
        let f = c.remotecall(2, "echo", b"x").unwrap();
        let t = Instant::now();
        while !f.is_ready() {
            assert!(t.elapsed() < Duration::from_secs(5), "call {i} stuck");
            std::hint::spin_loop();
        }
    }
    c.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn handler_threads_bound_concurrent_calls() {
    let c = head();
    let mut one = opts();
    one.env.push(("TEST_HANDLER_THREADS".into(), "1".into()));
    let mut two = opts();
    two.env.push(("TEST_HANDLER_THREADS".into(), "2".into()));
    c.addprocs(1, &one).unwrap();
    c.addprocs(1, &two).unwrap();
    // The worker counts how many calls overlap: a count, not a clock.
    let most_at_once = |w: u32| {
        let fs: Vec<_> = (0..4).map(|_| c.remotecall(w, "overlap", &100u32.to_le_bytes()).unwrap()).collect();
        fs.iter().map(|f| u32_of(f.fetch(Some(Duration::from_secs(20))).unwrap())).max().unwrap()
    };
    assert_eq!(most_at_once(2), 1, "one handler thread ran calls at once");
    assert_eq!(most_at_once(3), 2, "two handler threads did not run two calls at once");
    c.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn workers_call_each_other_and_back_into_the_head() {
    let c = head();
    c.addprocs(3, &opts()).unwrap();
    eprintln!("step1");
    assert_eq!(u32_of(&c.remotecall_fetch(2, "call_peer", &3u32.to_le_bytes()).unwrap()), 3);
    eprintln!("step2");
    assert_eq!(u32_of(&c.remotecall_fetch(4, "call_peer", &2u32.to_le_bytes()).unwrap()), 2);
    eprintln!("step3");
    assert_eq!(&*c.remotecall_fetch(3, "call_head_echo", b"round").unwrap(), b"round");
    eprintln!("step4");
    // A worker calling itself while it serves the head must not deadlock.
    assert_eq!(u32_of(&c.remotecall_fetch(3, "call_peer", &3u32.to_le_bytes()).unwrap()), 3);
    c.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn master_worker_topology_refuses_worker_to_worker_calls() {
    let c = head_with(Config { topology: Topology::MasterWorker, ..Config::default() });
    c.addprocs(2, &opts()).unwrap();
    let e = c.remotecall_fetch(2, "call_peer", &3u32.to_le_bytes()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Remote);
    assert!(e.message.contains("master_worker"), "{e}");
    assert_eq!(&*c.remotecall_fetch(2, "call_head_echo", b"ok").unwrap(), b"ok");
    assert_eq!(c.set_topology(Topology::AllToAll).unwrap_err().kind, ErrorKind::Topology);
    c.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn futures_travel_by_reference_and_are_freed() {
    let c = head();
    c.addprocs(2, &opts()).unwrap();
    let f = c.remotecall(2, "big", &1000u32.to_le_bytes()).unwrap();
    let r = f.export().unwrap();
    assert_eq!(r.owner, 1);
    assert_eq!(c.owned_refs(), 1);
    let v = c.remotecall_fetch(3, "fetch_ref", &r.to_bytes()).unwrap();
    assert_eq!(v.len(), 1000);
    assert!(v.iter().all(|&b| b == 0xA5));
    // The importer freed its reference when its future dropped.
    assert!(wait_until(Duration::from_secs(2), || c.owned_refs() == 0));
    // A holder that dies releases what it held.
    let r = f.export().unwrap();
    c.remotecall_fetch(2, "hold_ref", &r.to_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(c.owned_refs(), 1);
    let os_pid = u32_of(&c.remotecall_fetch(2, "getpid", &[]).unwrap());
    cluster::sys::kill(os_pid, cluster::sys::SIGKILL);
    assert!(wait_until(Duration::from_secs(3), || c.owned_refs() == 0), "a dead holder kept its reference");
    // Importing at home gives the same value.
    let r = f.export().unwrap();
    let g = c.import(r).unwrap();
    assert_eq!(g.fetch(None).unwrap().len(), 1000);
    drop(g);
    assert_eq!(c.owned_refs(), 0);
    c.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn large_payloads_round_trip() {
    let c = head();
    c.addprocs(1, &opts()).unwrap();
    let big = vec![7u8; 64 << 20];
    let n = c.remotecall_fetch(2, "len", &big).unwrap();
    assert_eq!(u64::from_le_bytes(n[..8].try_into().unwrap()), big.len() as u64);
    let v = c.remotecall_fetch(2, "echo", &big).unwrap();
    assert!(v.len() == big.len() && *v == big[..]);
    c.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn oversized_messages_are_refused_with_too_large() {
    let c = head_with(Config { max_message_bytes: 1024, ..Config::default() });
    let mut small = opts();
    small.env.push(("TEST_MAX_MESSAGE".into(), "2048".into()));
    c.addprocs(1, &small).unwrap();
    // A result above the head's limit: refused by the worker, which lives on.
    let e = c.remotecall_fetch(2, "big", &4096u32.to_le_bytes()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::TooLarge, "{e}");
    assert_eq!(e.pid, 2);
    // An argument above the worker's limit: refused by the sender.
    let e = c.remotecall(2, "len", &[0u8; 4096]).err().unwrap();
    assert_eq!(e.kind, ErrorKind::TooLarge, "{e}");
    assert_eq!(&*c.remotecall_fetch(2, "echo", b"fine").unwrap(), b"fine");
    c.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn strangers_are_dropped_and_the_head_keeps_serving() {
    let c = head();
    c.addprocs(1, &opts()).unwrap();
    let addr = c.address().to_string();
    // Wrong cookie.
    let mut s = TcpStream::connect(&addr).unwrap();
    let r = cluster::net::auth::handshake(&mut s, b"not the cookie", cluster::net::auth::Side::Client, Duration::from_secs(5));
    assert_eq!(r.unwrap_err().kind, ErrorKind::Auth);
    // Random bytes, then a huge length prefix.
    for junk in [vec![0x5Au8; 4096], [b"LCLUSTR1".to_vec(), vec![0xFF; 64]].concat()] {
        let mut s = TcpStream::connect(&addr).unwrap();
        let _ = s.write_all(&junk);
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut buf = [0u8; 256];
        // The head answers with its greeting at most, then closes.
        let mut total = 0;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n,
                // Unread junk makes the close a reset: closed all the same.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("connection was not closed: {e}"),
            }
        }
        assert!(total <= 40);
    }
    // The right cookie gets through the handshake; a huge length prefix
    // after it closes that connection.
    let mut s = TcpStream::connect(&addr).unwrap();
    cluster::net::auth::handshake(&mut s, c.cookie().as_bytes(), cluster::net::auth::Side::Client, Duration::from_secs(5)).unwrap();
    let mut h = cluster::wire::Header::new(cluster::wire::Kind::Request, 0, 1, 1);
    h.payload_len = 1 << 40;
    s.write_all(&h.encode()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut buf = [0u8; 16];
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)), "the connection stayed open");
    assert_eq!(&*c.remotecall_fetch(2, "echo", b"alive").unwrap(), b"alive");
    c.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn a_worker_without_a_head_exits_within_its_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener); // nothing listens there now
    let t = Instant::now();
    let mut child = Command::new(WORKER)
        .env("LIBCLUSTER_HEAD", addr.to_string())
        .env("LIBCLUSTER_ID", "2")
        .env("LIBCLUSTER_COOKIE_STDIN", "1")
        .env("LIBCLUSTER_STARTUP_TIMEOUT_MS", "500")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"cookie\n").unwrap();
    let st = child.wait().unwrap();
    assert!(!st.success());
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(err.contains("could not reach the head"), "{err}");
}

#[test]
fn failed_launches_name_the_worker_and_leave_no_orphans() {
    let c = head_with(Config { startup_timeout: Duration::from_millis(1500), ..Config::default() });
    let bad = LaunchOptions { program: Some("/nonexistent/worker".into()), args: Some(vec![]), ..Default::default() };
    let e = c.addprocs(1, &bad).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Launch);
    assert!(e.message.contains("worker 2"), "{e}");

    let exits = LaunchOptions { program: Some("/bin/false".into()), args: Some(vec![]), ..Default::default() };
    let e = c.addprocs(1, &exits).unwrap_err();
    assert!(e.message.contains("worker 3") && e.message.contains("status 1"), "{e}");

    // Tagged by an argument the worker ignores, to find its process later
    // among the workers of tests running alongside.
    let tag = format!("orphan-check-{}", std::process::id());
    let mut never_ready = opts();
    never_ready.args = Some(vec![tag.clone()]);
    never_ready.env.push(("TEST_WORKER_NO_READY".into(), "1".into()));
    let e = c.addprocs(1, &never_ready).unwrap_err();
    assert!(e.message.contains("worker 4") && e.message.contains("not ready"), "{e}");
    assert_eq!(c.procs(), vec![1]);
    let orphans = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains(&tag) && pid_alive(*p)
        })
        .count();
    assert_eq!(orphans, 0, "the worker that never became ready is still running");
    assert_eq!(c.addprocs(1, &opts()).unwrap(), vec![5]);
    c.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn elastic_workers_join_with_the_cookie() {
    let c = head();
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    c.set_lifecycle_hook(Some(Arc::new(move |pid, e| ev.lock().push((pid, e)))));
    let mut child = Command::new(WORKER).env("LIBCLUSTER_HEAD", c.address()).env("LIBCLUSTER_COOKIE", c.cookie()).spawn().unwrap();
    assert!(wait_until(Duration::from_secs(10), || c.nprocs() == 2));
    assert!(events.lock().contains(&(2, Lifecycle::Started)));
    assert_eq!(u32_of(&c.remotecall_fetch(2, "myid", &[]).unwrap()), 2);
    // A wrong cookie does not join.
    let mut intruder = Command::new(WORKER).env("LIBCLUSTER_HEAD", c.address()).env("LIBCLUSTER_COOKIE", "wrong").stderr(Stdio::null()).spawn().unwrap();
    let st = intruder.wait().unwrap();
    assert!(!st.success());
    assert_eq!(c.nprocs(), 2);
    c.rmprocs(&[2], Duration::from_secs(10)).unwrap();
    let _ = child.wait();
}

#[test]
fn workers_exit_when_the_head_dies() {
    let dir = std::env::temp_dir().join(format!("libcluster-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut head = Command::new(WORKER).env("TEST_AS_HEAD", "1").env("TEST_SERVE_RESULT_DIR", &dir).stdout(Stdio::piped()).spawn().unwrap();
    let out = std::io::BufReader::new(head.stdout.take().unwrap());
    let mut pids = Vec::new();
    for line in out.lines() {
        let line = line.unwrap();
        if line == "ready" {
            break;
        }
        pids.push(line.parse::<u32>().unwrap());
    }
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|&p| pid_alive(p)));
    head.kill().unwrap();
    head.wait().unwrap();
    assert!(wait_until(Duration::from_secs(5), || pids.iter().all(|&p| !pid_alive(p))), "workers outlived their head");
    // Each left because serve returned HeadLost, not by an exit of the library.
    for p in &pids {
        let why = std::fs::read_to_string(dir.join(p.to_string())).unwrap_or_default();
        assert_eq!(why, "HeadLost", "worker {p}: serve ended with {why:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn host_mode_runs_handlers_only_inside_poll() {
    let c = head_with(Config { dispatch: DispatchMode::Host, ..Config::default() });
    let main_thread = std::thread::current().id();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    c.register_fn("where", move |call| {
        s.lock().push(std::thread::current().id());
        Ok(call.args().to_vec())
    })
    .unwrap();
    let notified = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let n = notified.clone();
    c.set_notify(Some(Arc::new(move || {
        n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    })))
    .unwrap();
    let fd = c.event_fd().unwrap();
    assert!(fd >= 0);
    c.addprocs(1, &opts()).unwrap();
    let mut started = false;
    // The worker calls back into the head, which must poll to answer.
    let f = c.remotecall(2, "call_head_echo", b"via poll").unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    let mut ready_seen = false;
    while Instant::now() < end && !(ready_seen && f.is_ready()) {
        cluster::sys::poll_in(fd, Some(Duration::from_millis(100))).unwrap();
        for e in c.poll(64).unwrap() {
            if e.is(events::core::SERVICE, events::core::FUTURE_READY) && e.id == f.id() {
                ready_seen = true;
            }
            if Lifecycle::of(&e) == Some((2, Lifecycle::Started)) {
                started = true;
            }
        }
    }
    assert!(ready_seen);
    assert!(started);
    assert_eq!(f.fetch(None).unwrap(), b"via poll");
    assert!(notified.load(std::sync::atomic::Ordering::SeqCst) > 0);
    // A handler of the head called by the worker ran on this thread.
    c.remotecall(1, "where", b"local").unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    while seen.lock().is_empty() && Instant::now() < end {
        c.poll(64).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(seen.lock().iter().all(|t| *t == main_thread));
    c.shutdown(Duration::from_secs(10)).unwrap();
}

// ---- admission and identity (issue 6) ------------------------------------

use cluster::net::auth::{self, Side, PROTOCOL_VERSION};
use cluster::wire::{self, Header, Kind};
use std::os::unix::io::AsRawFd;

#[test]
fn a_peer_of_another_protocol_version_is_refused_naming_both() {
    // The head's side: its log names both versions.
    let c = head();
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let s2 = seen.clone();
    c.log.set_level(cluster::log::Level::Warn);
    c.log.set_sink(Some(Arc::new(move |_, m: &str| s2.lock().push(m.to_string()))));
    let mut s = TcpStream::connect(c.address()).unwrap();
    s.write_all(&auth::greeting(9, &[1; 32])).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut theirs = Vec::new();
    let _ = s.read_to_end(&mut theirs);
    assert_eq!(&theirs[..8], format!("LCLUSTR{PROTOCOL_VERSION}").as_bytes(), "the head greets with its version");
    let named = |m: &String| m.contains("protocol version 9") && m.contains(&format!("speaks version {PROTOCOL_VERSION}"));
    assert!(wait_until(Duration::from_secs(5), || seen.lock().iter().any(named)), "{:?}", seen.lock());

    // A worker joining a head of another version exits, saying both.
    let fake_head = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut child = Command::new(WORKER)
        .env("LIBCLUSTER_HEAD", fake_head.local_addr().unwrap().to_string())
        .env("LIBCLUSTER_ID", "2")
        .env("LIBCLUSTER_COOKIE_STDIN", "1")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"cookie\n").unwrap();
    let (mut conn, _) = fake_head.accept().unwrap();
    conn.write_all(&auth::greeting(9, &[2; 32])).unwrap();
    let mut g = [0u8; 40];
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    conn.read_exact(&mut g).unwrap();
    assert_eq!(&g[..8], format!("LCLUSTR{PROTOCOL_VERSION}").as_bytes());
    let exited = wait_until(Duration::from_secs(5), || child.try_wait().unwrap().is_some());
    if !exited {
        let _ = child.kill();
    }
    let st = child.wait().unwrap();
    assert!(exited && !st.success(), "the worker did not give up: {st:?}");
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(err.contains(&format!("speaks libcluster protocol version 9, this process speaks version {PROTOCOL_VERSION}")), "{err}");
}

/// Reads `streams` (non-blocking) until each is closed by the other end,
/// or `deadline`; returns how many are still open then.
fn still_open_at(streams: &mut [TcpStream], deadline: Instant) -> usize {
    let mut open: Vec<bool> = streams.iter().map(|_| true).collect();
    for s in streams.iter() {
        s.set_nonblocking(true).unwrap();
    }
    let mut buf = [0u8; 512];
    loop {
        for (s, o) in streams.iter_mut().zip(open.iter_mut()).filter(|(_, o)| **o) {
            loop {
                match s.read(&mut buf) {
                    Ok(0) => *o = false,
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    // Reset or any other failure: closed all the same.
                    Err(_) => *o = false,
                }
                break;
            }
        }
        let n = open.iter().filter(|o| **o).count();
        if n == 0 || Instant::now() >= deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_flood_of_strangers_is_shed_and_the_head_keeps_working() {
    let deadline = Duration::from_millis(1500);
    let c = head_with(Config { handshake_timeout: deadline, ..Config::default() });
    assert_eq!(c.addprocs(1, &opts()).unwrap(), vec![2]);
    let addr = c.address().to_string();
    // 320 strangers: most say nothing, the first 100 drip a plausible
    // greeting a byte at a time, never letting a single read time out.
    let mut strangers: Vec<TcpStream> = (0..320).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    let opened = Instant::now();
    let drippers: Vec<TcpStream> = strangers[..100].iter().map(|s| s.try_clone().unwrap()).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let drip = std::thread::spawn(move || {
        let g = auth::greeting(PROTOCOL_VERSION, &[9; 32]);
        for (k, b) in g.iter().cycle().enumerate() {
            if stop2.load(std::sync::atomic::Ordering::Acquire) || k > 200 {
                return;
            }
            for mut s in &drippers {
                let _ = s.write(&[*b]);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    // Authenticated work goes on meanwhile: calls, new workers, and calls
    // between workers.
    for i in 0..50u32 {
        assert_eq!(u32_of(&c.remotecall_fetch(2, "echo", &i.to_le_bytes()).unwrap()), i);
    }
    assert_eq!(c.addprocs(2, &opts()).unwrap(), vec![3, 4]);
    assert_eq!(u32_of(&c.remotecall_fetch(3, "myid", &[]).unwrap()), 3);
    assert_eq!(u32_of(&c.remotecall_fetch(2, "call_peer", &4u32.to_le_bytes()).unwrap()), 4);
    let st = c.admission_stats();
    assert!(st.peak <= cluster::node::admit::MAX_ADMITTING, "{st:?}");
    assert!(st.shed >= 320 - cluster::node::admit::MAX_ADMITTING as u64, "{st:?}");
    // Every stranger is closed by the head within its deadline (plus slack
    // for a loaded machine), dripping or not.
    let open = still_open_at(&mut strangers, opened + deadline + Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::Release);
    drip.join().unwrap();
    assert_eq!(open, 0, "strangers still connected after the handshake deadline");
    assert!(wait_until(Duration::from_secs(2), || c.admission_stats().admitting == 0), "{:?}", c.admission_stats());
    let st = c.admission_stats();
    assert!(st.timed_out >= 1, "{st:?}");
    assert_eq!(c.procs(), vec![1, 2, 3, 4]);
    assert_eq!(&*c.remotecall_fetch(4, "echo", b"still").unwrap(), b"still");
    c.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn an_authenticated_peer_that_never_finishes_its_first_frame_is_dropped() {
    let deadline = Duration::from_millis(800);
    let c = head_with(Config { handshake_timeout: deadline, ..Config::default() });
    let mut s = TcpStream::connect(c.address()).unwrap();
    let t = Instant::now();
    auth::handshake(&mut s, c.cookie().as_bytes(), Side::Client, Duration::from_secs(5)).unwrap();
    // Half a header, then a byte now and then.
    let h = Header::new(Kind::Request, 1, 1, 1).encode();
    s.write_all(&h[..10]).unwrap();
    let mut dripper = s.try_clone().unwrap();
    let drip = std::thread::spawn(move || {
        for b in &h[10..] {
            std::thread::sleep(Duration::from_millis(150));
            if dripper.write_all(&[*b]).is_err() {
                return;
            }
        }
    });
    let open = still_open_at(std::slice::from_mut(&mut s), t + deadline + Duration::from_secs(3));
    assert_eq!(open, 0, "a half-sent first frame held its connection");
    drip.join().unwrap();
    assert!(wait_until(Duration::from_secs(2), || c.admission_stats().timed_out >= 1), "{:?}", c.admission_stats());
}

#[test]
fn an_authenticated_peer_cannot_announce_a_large_first_frame() {
    let c = head();
    let mut s = TcpStream::connect(c.address()).unwrap();
    auth::handshake(&mut s, c.cookie().as_bytes(), Side::Client, Duration::from_secs(5)).unwrap();
    // A JOIN header announcing 512 MiB of payload (a JOIN carries none).
    let mut h = Header::new(Kind::Request, cluster::service::control::ID, cluster::service::control::op::JOIN, 1);
    h.payload_len = 512 << 20;
    s.write_all(&h.encode()).unwrap();
    let t = Instant::now();
    let open = still_open_at(std::slice::from_mut(&mut s), t + Duration::from_secs(3));
    assert_eq!(open, 0, "the head kept a connection announcing a 512 MiB first frame");
    assert!(wait_until(Duration::from_secs(2), || c.admission_stats().refused >= 1), "{:?}", c.admission_stats());
    // Workers still join, and take messages up to the node's limit.
    assert_eq!(c.addprocs(1, &opts()).unwrap(), vec![2]);
    let big = vec![5u8; 8 << 20];
    assert_eq!(c.remotecall_fetch(2, "echo", &big).unwrap().len(), big.len());
    c.shutdown(Duration::from_secs(10)).unwrap();
}

/// Connects to `addr` with the cookie and sends a HELLO claiming `id`.
fn claim(addr: &str, cookie: &str, id: u32) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    auth::handshake(&mut s, cookie.as_bytes(), Side::Client, Duration::from_secs(5)).unwrap();
    let hello = cluster::node::Hello { id, addr: "127.0.0.1:9".into(), max_message: 1 << 30, proof: [0x42; 32] };
    let h = Header::new(Kind::Oneway, cluster::node::session::ID, cluster::node::session::HELLO, 0);
    wire::write_frame(s.as_raw_fd(), h, &wire::encode_meta(&hello), &[]).unwrap();
    s
}

#[test]
fn claimed_identities_are_believed_only_on_the_heads_word() {
    let c = head();
    assert_eq!(c.addprocs(2, &opts()).unwrap(), vec![2, 3]);
    let addr2 = String::from_utf8(c.remotecall_fetch(2, "address", &[]).unwrap().to_vec()).unwrap();
    // A process with the cookie claims to be the head, worker 3 (alive, not
    // yet connected to worker 2), worker 2 itself and a worker nobody
    // announced; some hang up at once, the rest stay connected.
    drop(claim(&addr2, c.cookie(), 1));
    drop(claim(&addr2, c.cookie(), 3));
    let t = Instant::now();
    let mut stayed = vec![claim(&addr2, c.cookie(), 3), claim(&addr2, c.cookie(), 2), claim(&addr2, c.cookie(), 1), claim(&addr2, c.cookie(), 99)];
    // Each claim is refused (the unknown id after a bounded wait for the head).
    let open = still_open_at(&mut stayed, t + Duration::from_secs(6));
    assert_eq!(open, 0, "worker 2 kept a connection from an impostor");
    // Worker 2 serves, believes only in the real members, and reaches the
    // real worker 3 (and 3 reaches it).
    assert_eq!(&*c.remotecall_fetch(2, "echo", b"alive").unwrap(), b"alive");
    let procs: Vec<u32> = c.remotecall_fetch(2, "procs", &[]).unwrap().chunks(4).map(u32_of).collect();
    assert_eq!(procs, vec![1, 2, 3]);
    let f = c.remotecall(2, "call_peer", &3u32.to_le_bytes()).unwrap();
    assert_eq!(u32_of(f.fetch(Some(Duration::from_secs(10))).unwrap()), 3);
    assert_eq!(u32_of(&c.remotecall_fetch(3, "call_peer", &2u32.to_le_bytes()).unwrap()), 2);
    assert_eq!(c.procs(), vec![1, 2, 3]);
    c.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn a_launched_workers_id_is_taken_only_by_that_worker() {
    let c = head();
    let mut slow = opts();
    slow.env.push(("TEST_WORKER_DELAY_MS".into(), "1000".into()));
    let f = c.addprocs_async(1, &slow).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // A process with the cookie claims the id being launched before the
    // worker itself connects.
    let mut s = TcpStream::connect(c.address()).unwrap();
    auth::handshake(&mut s, c.cookie().as_bytes(), Side::Client, Duration::from_secs(5)).unwrap();
    let join = cluster::service::control::Join { id: 2, listen_addr: "127.0.0.1:9".into(), os_pid: 1, max_message: 1 << 30, host: "h".into(), proof: [0; 32] };
    let h = Header::new(Kind::Request, cluster::service::control::ID, cluster::service::control::op::JOIN, 1);
    wire::write_frame(s.as_raw_fd(), h, &wire::encode_meta(&join), &[]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut hdr = [0u8; wire::HEADER_LEN];
    s.read_exact(&mut hdr).unwrap();
    let reply = Header::decode(&hdr, 1 << 20).unwrap();
    assert_ne!(reply.status, 0, "the head welcomed an impostor as worker 2");
    let mut msg = vec![0u8; reply.payload_len as usize + reply.meta_len as usize];
    s.read_exact(&mut msg).unwrap();
    assert!(String::from_utf8_lossy(&msg).contains("launch key"), "{}", String::from_utf8_lossy(&msg));
    // The real worker joins as 2.
    let ids: Vec<u32> = f.fetch(Some(Duration::from_secs(20))).unwrap().chunks(4).map(u32_of).collect();
    assert_eq!(ids, vec![2]);
    assert_eq!(u32_of(&c.remotecall_fetch(2, "myid", &[]).unwrap()), 2);
    c.shutdown(Duration::from_secs(10)).unwrap();
}

/// Kills `pids` (cleanup after a failed check).
fn kill_all(pids: &[u32]) {
    for &p in pids {
        cluster::sys::kill(p, cluster::sys::SIGKILL);
    }
}

#[test]
fn workers_exit_when_their_launcher_dies_while_they_join() {
    // Three workers of a head stand-in: one in its handshake with a head
    // that does not answer (stopped or busy when it died, its listening
    // socket still open elsewhere), one waiting for its welcome after the
    // handshake, one between attempts to reach a port nobody listens on.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let addrs = format!("{},{},{}", silent.local_addr().unwrap(), mute.local_addr().unwrap(), closed);
    let mut launcher =
        Command::new(WORKER).env("TEST_AS_LAUNCHER", addrs).env_remove("LIBCLUSTER_HEAD").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let out = std::io::BufReader::new(launcher.stdout.take().unwrap());
    let mut pids = Vec::new();
    for line in out.lines() {
        let line = line.unwrap();
        if line == "ready" {
            break;
        }
        pids.push(line.parse::<u32>().unwrap());
    }
    assert_eq!(pids.len(), 3);
    // Hold them where they are: the first sent its greeting, the second
    // its JOIN.
    let (mut a, _) = silent.accept().unwrap();
    let mut g = [0u8; 40];
    a.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    a.read_exact(&mut g).unwrap();
    let (mut b, _) = mute.accept().unwrap();
    auth::handshake(&mut b, b"launcher-cookie", Side::Server, Duration::from_secs(10)).unwrap();
    let mut h = [0u8; wire::HEADER_LEN];
    b.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    b.read_exact(&mut h).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(pids.iter().all(|&p| pid_alive(p)), "a worker gave up with its launcher alive");
    launcher.kill().unwrap(); // SIGKILL
    launcher.wait().unwrap();
    let gone = wait_until(Duration::from_secs(2), || pids.iter().all(|&p| !pid_alive(p)));
    if !gone {
        kill_all(&pids);
    }
    assert!(gone, "workers outlived their launcher");
    let mut err = String::new();
    launcher.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(err.matches("launched this worker").count(), 3, "{err}");
    drop((a, b));
}

/// The children of process `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            stat.rsplit_once(") ").and_then(|(_, rest)| rest.split(' ').nth(1)?.parse::<u32>().ok()) == Some(parent)
        })
        .collect()
}

#[test]
fn workers_exit_when_the_head_dies_during_addprocs() {
    let mut head = Command::new(WORKER).env("TEST_AS_HEAD", "slow-workers").stdout(Stdio::piped()).spawn().unwrap();
    let mut out = std::io::BufReader::new(head.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "launching");
    let mut pids = Vec::new();
    assert!(wait_until(Duration::from_secs(10), || {
        pids = children_of(head.id());
        pids.len() == 2
    }));
    head.kill().unwrap();
    head.wait().unwrap();
    // They wake after 800 ms, find their head gone and leave.
    let gone = wait_until(Duration::from_secs(3), || pids.iter().all(|&p| !pid_alive(p)));
    if !gone {
        kill_all(&pids);
    }
    assert!(gone, "workers outlived their head");
}
