//! pfork (PTools' fork-based parallelism) from a multi-threaded test
//! process: results in index order (large ones read concurrently), a
//! child that returns an error, panics, calls exit, is SIGKILLed,
//! segfaults or aborts gets its own error; no zombie remains; a hung
//! child is killed at the timeout and reaped; children die with their
//! parent; pfork beside a running cluster (head and worker, which keep
//! working) and on a worker; children writing into a shared segment the
//! parent reads.

use cluster::prelude::*;
use cluster::sys::process::{self as os, children_in_state, state_and_parent};
use cluster::wire::decode_payload;
use cluster::{pfork, pfork_with, Cluster, Config, ErrorKind, ForkChild, ForkOptions, ForkOutcome, LaunchOptions, ShmSpec};
use std::time::{Duration, Instant};

const WORKER: &str = env!("CARGO_BIN_EXE_cluster-test-worker");

/// None of `kids` is still a child of this process (reaped, not a zombie),
/// and no zombie child of this process is left (other tests' workers are
/// reaped by their clusters within a moment, so that check is retried).
fn assert_reaped(kids: &[ForkChild]) {
    let me = std::process::id();
    for k in kids.iter().filter(|k| k.os_pid != 0) {
        let st = state_and_parent(k.os_pid);
        assert!(st.is_none_or(|(_, parent)| parent != me), "child {} (pid {}) is still ours: {st:?}", k.index, k.os_pid);
    }
    let until = Instant::now() + Duration::from_secs(5);
    while !children_in_state(me, 'Z').is_empty() {
        assert!(Instant::now() < until, "zombie children left: {:?}", children_in_state(me, 'Z'));
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pattern(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 31 + j * 7) as u8).collect()
}

#[test]
fn results_come_in_index_order_and_large_ones_do_not_block() {
    // Sizes from empty to 9 MiB: several children fill their pipes at
    // once, so the parent must read all of them while they run.
    let size = |i: usize| match i % 4 {
        0 => 0,
        1 => 8,
        2 => 3 << 20,
        _ => (9 << 20) + i,
    };
    let kids = pfork_with(8, &ForkOptions { timeout: Some(Duration::from_secs(60)) }, |i| Ok(pattern(i, size(i))));
    assert_eq!(kids.len(), 8);
    for (i, k) in kids.iter().enumerate() {
        assert_eq!(k.index, i);
        assert!(k.os_pid != 0 && k.os_pid != std::process::id());
        let v = k.result().unwrap_or_else(|e| panic!("child {i}: {e}"));
        assert_eq!(v.len(), size(i), "child {i}");
        assert!(v == pattern(i, size(i)).as_slice(), "child {i}'s bytes differ");
    }
    assert_reaped(&kids);
    // Many small ones, and none at all.
    let got = pfork(64, |i| Ok((i as u32).to_le_bytes().to_vec()));
    let ids: Vec<u32> = got.into_iter().map(|r| u32::from_le_bytes(r.unwrap()[..].try_into().unwrap())).collect();
    assert_eq!(ids, (0..64).collect::<Vec<u32>>());
    assert!(pfork(0, |_| Ok(Vec::new())).is_empty());
    assert_reaped(&[]);
}

#[test]
fn each_failing_child_gets_its_own_error() {
    let kids = pfork_with(10, &ForkOptions { timeout: Some(Duration::from_secs(60)) }, |i| match i {
        1 => Err("bad input 1".into()),
        2 => std::process::exit(3),
        3 => {
            cluster::sys::kill(std::process::id(), libc::SIGKILL);
            std::thread::sleep(Duration::from_secs(10));
            Ok(Vec::new())
        }
        4 => {
            // A real invalid write: the fault kills the child (Rust's own
            // SIGSEGV handler only handles stack overflows, and lets it).
            unsafe { std::ptr::write_volatile(16usize as *mut u8, 1) };
            Ok(Vec::new())
        }
        5 => {
            os::default_signal_action(libc::SIGSEGV);
            os::raise(libc::SIGSEGV);
            Ok(Vec::new())
        }
        6 => std::process::abort(),
        7 => panic!("panicking in child 7"),
        8 => os::exit_now(0),
        _ => Ok(format!("fine {i}").into_bytes()),
    });
    let err = |i: usize| -> cluster::Error { kids[i].error().unwrap_or_else(|| panic!("child {i} succeeded")) };
    let has = |i: usize, kind: ErrorKind, parts: &[&str]| {
        let e = err(i);
        assert_eq!(e.kind, kind, "child {i}: {e}");
        let who = format!("child {i} (pid {})", kids[i].os_pid);
        for p in parts.iter().chain([&who.as_str()]) {
            assert!(e.message.contains(p), "child {i}: {:?} lacks {p:?}", e.message);
        }
    };
    assert_eq!(kids[0].result().unwrap(), b"fine 0");
    assert_eq!(kids[9].result().unwrap(), b"fine 9");
    has(1, ErrorKind::Remote, &["failed: bad input 1"]);
    has(2, ErrorKind::ProcessExited, &["exited with status 3"]);
    assert_eq!(kids[2].outcome, ForkOutcome::Exited(3));
    has(3, ErrorKind::ProcessExited, &["killed by signal 9 (SIGKILL)"]);
    has(4, ErrorKind::ProcessExited, &["killed by signal 11 (SIGSEGV)"]);
    has(5, ErrorKind::ProcessExited, &["killed by signal 11 (SIGSEGV)"]);
    has(6, ErrorKind::ProcessExited, &["killed by signal 6 (SIGABRT)"]);
    has(7, ErrorKind::Remote, &["panicked: panicking in child 7"]);
    has(8, ErrorKind::ProcessExited, &["exited with status 0 without a complete result: it wrote nothing"]);
    assert_reaped(&kids);
}

#[test]
fn a_hung_child_is_killed_at_the_timeout_and_reaped() {
    let t = Instant::now();
    let kids = pfork_with(3, &ForkOptions { timeout: Some(Duration::from_millis(300)) }, |i| {
        if i == 1 {
            std::thread::sleep(Duration::from_secs(60));
        }
        Ok(vec![i as u8])
    });
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(kids[0].result().unwrap(), &[0]);
    assert_eq!(kids[2].result().unwrap(), &[2]);
    let e = kids[1].error().unwrap();
    assert_eq!(e.kind, ErrorKind::Timeout);
    assert!(e.message.contains("child 1") && e.message.contains("300 ms") && e.message.contains("SIGKILL"), "{e}");
    assert_reaped(&kids);
}

#[test]
fn concurrent_pforks_from_two_threads_keep_their_own_children() {
    let run = |tag: u8| {
        std::thread::spawn(move || {
            let kids = pfork_with(8, &ForkOptions::default(), |i| {
                std::thread::sleep(Duration::from_millis((i as u64 % 3) * 20));
                Ok(vec![tag, i as u8])
            });
            for (i, k) in kids.iter().enumerate() {
                assert_eq!(k.result().unwrap(), &[tag, i as u8]);
            }
            kids
        })
    };
    let (a, b) = (run(1), run(2));
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    assert_reaped(&a);
    assert_reaped(&b);
}

/// Run by `children_die_with_their_parent` as a separate process (this
/// test binary with FORK_TEST_PIDS set): children that report their pids,
/// then wait to be killed; does nothing in a normal run.
#[test]
fn parent_role_for_the_death_test() {
    let Ok(path) = std::env::var("FORK_TEST_PIDS") else { return };
    let _ = pfork(3, |_| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).map_err(|e| e.to_string())?;
        // One write (O_APPEND): three children's lines never interleave.
        f.write_all(format!("{}\n", std::process::id()).as_bytes()).map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_secs(60));
        Ok(Vec::new())
    });
}

#[test]
fn children_die_with_their_parent() {
    let path = std::env::temp_dir().join(format!("fork-test-pids-{}", std::process::id()));
    std::fs::write(&path, "").unwrap();
    let mut parent = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "parent_role_for_the_death_test", "--nocapture", "--test-threads=1"])
        .env("FORK_TEST_PIDS", &path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    let pids: Vec<u32> = loop {
        let text = std::fs::read_to_string(&path).unwrap();
        let pids: Vec<u32> = text.lines().filter_map(|l| l.parse().ok()).collect();
        if pids.len() == 3 {
            break pids;
        }
        assert!(Instant::now() < until, "the children did not start: {text:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    for &p in &pids {
        assert_eq!(state_and_parent(p).map(|(_, pp)| pp), Some(parent.id()), "child {p} runs under its parent");
    }
    parent.kill().unwrap();
    parent.wait().unwrap();
    // SIGKILLed by the kernel with their parent: gone (or a zombie of
    // whoever adopted them, if it does not reap), within moments.
    let until = Instant::now() + Duration::from_secs(5);
    for &p in &pids {
        while state_and_parent(p).is_some_and(|(s, _)| s != 'Z') {
            assert!(Instant::now() < until, "child {p} outlived its parent: {:?}", state_and_parent(p));
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let _ = std::fs::remove_file(&path);
}

#[test]
fn pfork_works_beside_a_running_cluster_and_on_a_worker() {
    let c = Cluster::init(Config::default()).unwrap();
    let ids = c.addprocs(1, &LaunchOptions { program: Some(WORKER.into()), args: Some(vec![]), ..Default::default() }).unwrap();
    let w = ids[0];
    assert_eq!(&c.remotecall_fetch(w, "echo", b"before").unwrap()[..], b"before");
    let threads = cluster::sys::thread_count().unwrap();
    assert!(threads > 3, "the cluster's threads run: {threads}");
    // The children inherit the cluster's sockets and never touch them;
    // they outlive a few heartbeats' worth of traffic.
    let kids = pfork_with(4, &ForkOptions { timeout: Some(Duration::from_secs(30)) }, |i| {
        std::thread::sleep(Duration::from_millis(100));
        Ok((i as u64 * 10).to_le_bytes().to_vec())
    });
    for (i, k) in kids.iter().enumerate() {
        assert_eq!(k.result().unwrap(), (i as u64 * 10).to_le_bytes());
    }
    assert_reaped(&kids);
    // The cluster still works.
    assert_eq!(&c.remotecall_fetch(w, "echo", b"after").unwrap()[..], b"after");
    // On the worker, inside a handler: results in order, a crashing child
    // named, no zombie left there.
    let args = [5u32.to_le_bytes(), 2u32.to_le_bytes()].concat();
    let (got, zombies): (Vec<Result<u64, String>>, u32) = decode_payload(&c.remotecall_fetch(w, "pfork_squares", &args).unwrap()).unwrap();
    assert_eq!(zombies, 0);
    for (i, r) in got.iter().enumerate() {
        if i == 2 {
            let e = r.as_ref().unwrap_err();
            assert!(e.contains("child 2") && e.contains("SIGABRT"), "{e}");
        } else {
            assert_eq!(r.as_ref().unwrap(), &((i * i) as u64));
        }
    }
    assert_eq!(&c.remotecall_fetch(w, "echo", b"still").unwrap()[..], b"still");
    c.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn children_write_into_a_shared_segment_the_parent_reads() {
    let c = Cluster::init(Config::default()).unwrap();
    let pfx = format!("t{}fork", std::process::id());
    const N: usize = 6;
    const PER: usize = 1024;
    let seg = c.shm_create(&ShmSpec::new("pfork_out", 1, 8, &[(N * PER) as u64]).prefixed(&pfx), None).unwrap();
    // Ordinary memory is copy-on-write: a child's writes stay its own.
    let mut private = vec![0u64; N];
    let got = pfork(N, |i| {
        let vals: Vec<u8> = (0..PER).flat_map(|j| ((i * 1_000_000 + j) as u64).to_le_bytes()).collect();
        seg.write_at(i * PER * 8, &vals).map_err(|e| e.to_string())?;
        private[i] = 1;
        Ok(Vec::new())
    });
    assert!(got.iter().all(|r| r.is_ok()), "{got:?}");
    assert_eq!(private, vec![0u64; N], "the parent's own memory is unchanged");
    let mut all = vec![0u8; N * PER * 8];
    seg.read_at(0, &mut all).unwrap();
    for i in 0..N {
        for j in [0, 1, PER - 1] {
            let at = (i * PER + j) * 8;
            assert_eq!(u64::from_le_bytes(all[at..at + 8].try_into().unwrap()), (i * 1_000_000 + j) as u64, "child {i} element {j}");
        }
    }
    let os_name = seg.os_name().to_string();
    c.shm_unlink("pfork_out", &pfx).unwrap();
    drop(seg);
    assert!(!cluster::sys::shm::list().unwrap().contains(&os_name));
    c.shutdown(Duration::from_secs(10)).unwrap();
}
