//! ClusterUtils' core between real processes (workers are
//! src/bin/cluster-test-worker.rs): hosts travel with membership (workers
//! in their own UTS namespace under another host name), remote variables
//! set, read and transformed where they live, and the all-gather over 2
//! to 8 processes with every algorithm, a participant killed mid-exchange
//! failing it on the others, naming it.

use cluster::prelude::*;
use cluster::wire::{decode_payload, encode_payload, parts};
use cluster::{Cluster, Config, ErrorKind, LaunchOptions};
use std::time::{Duration, Instant};

const WORKER: &str = env!("CARGO_BIN_EXE_cluster-test-worker");

fn opts() -> LaunchOptions {
    LaunchOptions { program: Some(WORKER.into()), args: Some(vec![]), ..Default::default() }
}

/// A worker under host name `host`: in its own UTS namespace when this
/// process may make one, else told by LIBCLUSTER_HOSTNAME.
fn opts_on_host(host: &str) -> (LaunchOptions, &'static str) {
    let uts = std::process::Command::new("unshare").args(["--uts", "true"]).status().is_ok_and(|s| s.success());
    if uts {
        let script = format!("hostname {host} && exec {WORKER}");
        (
            LaunchOptions { program: Some("unshare".into()), args: Some(vec!["--uts".into(), "sh".into(), "-c".into(), script]), ..Default::default() },
            "a UTS namespace",
        )
    } else {
        (LaunchOptions { env: vec![("LIBCLUSTER_HOSTNAME".into(), host.into())], ..opts() }, "LIBCLUSTER_HOSTNAME")
    }
}

/// Every worker of `ids` runs ag_run with these arguments at once; each
/// one's outcome: Ok(parts) or Err((kind, pid, message)).
/// One worker's outcome: the parts, or (kind, pid, message).
type Gathered = Result<Vec<(u32, Vec<u8>)>, (u8, u32, String)>;

fn allgather_on(c: &Cluster, ids: &[u32], set: &[u32], tag: u64, data: impl Fn(u32) -> Vec<u8>, timeout_ms: i64, delay: impl Fn(u32) -> u32) -> Vec<Gathered> {
    let calls: Vec<_> =
        ids.iter().map(|&p| c.remotecall(p, "ag_run", &encode_payload(&(set.to_vec(), tag, data(p), timeout_ms, 1u32, delay(p)))).unwrap()).collect();
    calls
        .iter()
        .map(|f| {
            let (out, _ns): (Vec<u8>, u64) = decode_payload(f.fetch(Some(Duration::from_secs(30))).expect("ag_run answers")).unwrap();
            if out[0] == 0 {
                Ok(parts::decode_parts(&out[5..]).unwrap().into_iter().map(|(p, b)| (p, b.to_vec())).collect())
            } else {
                Err((out[0], u32::from_le_bytes(out[1..5].try_into().unwrap()), String::from_utf8_lossy(&out[5..]).into_owned()))
            }
        })
        .collect()
}

#[test]
fn hosts_travel_with_membership_and_tell_hosts_apart() {
    let c = Cluster::init(Config::default()).unwrap();
    let here = c.node().hostname().to_string();
    let local = c.addprocs(2, &opts()).unwrap();
    let (other, how) = opts_on_host("lc-otherhost");
    let far = c.addprocs(1, &other).unwrap();
    eprintln!("other host made with {how}");
    assert_eq!(c.node().host_of(1).unwrap(), here);
    assert_eq!(c.node().host_of(far[0]).unwrap(), "lc-otherhost");
    for &p in &local {
        assert_eq!(c.node().host_of(p).unwrap(), here);
        // Every worker knows every host, the head's and the far worker's too.
        assert_eq!(c.remotecall_fetch(p, "host_of", &far[0].to_le_bytes()).unwrap().as_ref(), b"lc-otherhost");
        assert_eq!(c.remotecall_fetch(p, "host_of", &1u32.to_le_bytes()).unwrap().as_ref(), here.as_bytes());
    }
    assert_eq!(c.remotecall_fetch(far[0], "hostname", &[]).unwrap().as_ref(), b"lc-otherhost", "the worker itself says so");
    assert_eq!(c.remotecall_fetch(far[0], "host_of", &local[0].to_le_bytes()).unwrap().as_ref(), here.as_bytes());
    let hosts = c.node().hosts();
    assert_eq!(hosts.iter().map(|(p, _)| *p).collect::<Vec<_>>(), vec![1, local[0], local[1], far[0]]);
    assert_eq!(hosts.iter().filter(|(_, h)| *h == here).count(), 3);
    assert_eq!(c.node().host_of(99).unwrap_err().kind, ErrorKind::NoSuchProcess);
    c.rmprocs(&[local[1]], Duration::from_secs(10)).unwrap();
    assert_eq!(c.node().host_of(local[1]).unwrap_err().kind, ErrorKind::ProcessExited);
    c.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn remote_variables_are_set_read_and_transformed_where_they_live() {
    let c = Cluster::init(Config::default()).unwrap();
    let ids = c.addprocs(3, &opts()).unwrap();
    let n = c.node();
    let mut all = ids.clone();
    all.insert(0, 1);
    n.set_var(&all, "x", b"ab").unwrap();
    let got = n.get_var(&[ids[2], 1, ids[0]], "x").unwrap();
    assert_eq!(got, vec![(ids[2], b"ab".to_vec()), (1, b"ab".to_vec()), (ids[0], b"ab".to_vec())], "the caller's order");
    // Each process its own value.
    for &p in &ids {
        n.set_var(&[p], "mine", &p.to_le_bytes()).unwrap();
    }
    let got = n.get_var(&ids, "mine").unwrap();
    assert!(got.iter().all(|(p, v)| v == &p.to_le_bytes()));
    // Missing on one: NotFound naming it.
    let e = n.get_var(&all, "mine").unwrap_err();
    assert_eq!((e.kind, e.pid), (ErrorKind::NotFound, 1), "{e}");
    // Apply returns the results, or keeps them there.
    let r = n.apply_var(&ids, "x", "var_twice", None).unwrap();
    assert!(r.iter().all(|(_, v)| v == b"abab"));
    let r = n.apply_var(&ids, "x", "var_twice", Some("y")).unwrap();
    assert!(r.iter().all(|(_, v)| v.is_empty()), "kept, not returned");
    assert!(n.get_var(&ids, "y").unwrap().iter().all(|(_, v)| v == b"abab"));
    let e = n.apply_var(&ids, "x", "no_such_function", None).unwrap_err();
    assert!(ids.contains(&e.pid) && e.message.contains("not registered"), "{e}");
    let e = n.apply_var(&ids, "x", "fail", None).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Remote, "{e}");
    n.delete_var(&ids, "y").unwrap();
    assert_eq!(n.get_var(&ids[..1], "y").unwrap_err().kind, ErrorKind::NotFound);
    // The head's share without a message; a large value.
    let big = vec![7u8; 3 << 20];
    n.set_var(&all, "big", &big).unwrap();
    assert_eq!(&*n.local_var("big").unwrap(), &big[..]);
    assert!(n.get_var(&ids, "big").unwrap().iter().all(|(_, v)| v == &big));
    // A dead process fails the operation, naming it.
    let os = c.remotecall_fetch(ids[1], "getpid", &[]).unwrap();
    cluster::sys::kill(u32::from_le_bytes(os[..4].try_into().unwrap()), cluster::sys::SIGKILL);
    let end = Instant::now() + Duration::from_secs(10);
    let e = loop {
        match n.get_var(&all, "x") {
            Err(e) => break e,
            Ok(_) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
            Ok(_) => panic!("the dead worker answered"),
        }
    };
    assert_eq!((e.kind, e.pid), (ErrorKind::ProcessExited, ids[1]), "{e}");
    c.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn allgather_over_2_to_8_processes_with_every_algorithm() {
    let c = Cluster::init(Config::default()).unwrap();
    let ids = c.addprocs(8, &opts()).unwrap();
    let mut tag = 100;
    for n in 2..=8usize {
        // 8 bytes (recursive doubling or Bruck), 70 KiB (the ring when n > 2),
        // and blocks of different sizes from each.
        for size in [8usize, 70 << 10, 0] {
            tag += 1;
            let set: Vec<u32> = ids[..n].iter().rev().copied().collect();
            let block = |p: u32| if size == 0 { vec![p as u8; p as usize * 3] } else { vec![p as u8; size] };
            let out = allgather_on(&c, &ids[..n], &set, tag, block, 20_000, |_| 0);
            for (i, r) in out.iter().enumerate() {
                let got = r.as_ref().unwrap_or_else(|e| panic!("n={n} size={size} worker {}: {e:?}", ids[i]));
                assert_eq!(got.iter().map(|(p, _)| *p).collect::<Vec<_>>(), set, "the caller's order");
                for (p, b) in got {
                    assert_eq!(b, &block(*p), "n={n} size={size}");
                }
            }
        }
    }
    // The head takes part too; the same tag twice in a row matches in order.
    let mut set = ids[..3].to_vec();
    set.push(1);
    for round in 0..2u8 {
        let fs: Vec<_> = ids[..3]
            .iter()
            .map(|&p| c.remotecall(p, "ag_run", &encode_payload(&(set.clone(), 7u64, vec![round, p as u8], -1i64, 1u32, 0u32))).unwrap())
            .collect();
        let mine = c.node().allgather(&set, 7, &[round, 1], Some(Duration::from_secs(20))).unwrap();
        assert_eq!(mine.iter().map(|(p, b)| (*p, b[0], b[1])).collect::<Vec<_>>(), set.iter().map(|&p| (p, round, p as u8)).collect::<Vec<_>>());
        for f in fs {
            f.wait(Some(Duration::from_secs(20))).unwrap();
        }
    }
    // Misuse: not in the set, a process twice, a process that does not exist.
    assert_eq!(c.node().allgather(&ids[..2], 1, b"", None).unwrap_err().kind, ErrorKind::InvalidArgument);
    assert_eq!(c.node().allgather(&[1, 1], 1, b"", None).unwrap_err().kind, ErrorKind::InvalidArgument);
    assert_eq!(c.node().allgather(&[1, 77], 1, b"", None).unwrap_err().kind, ErrorKind::NoSuchProcess);
    c.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn a_participant_killed_mid_exchange_fails_it_on_the_others_naming_it() {
    let c = Cluster::init(Config::default()).unwrap();
    let ids = c.addprocs(5, &opts()).unwrap();
    let victim = ids[2];
    let os = c.remotecall_fetch(victim, "getpid", &[]).unwrap();
    let os = u32::from_le_bytes(os[..4].try_into().unwrap());
    // The victim joins late; it is killed while the others wait on it.
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        cluster::sys::kill(os, cluster::sys::SIGKILL);
    });
    let t0 = Instant::now();
    let survivors: Vec<u32> = ids.iter().copied().filter(|&p| p != victim).collect();
    let out = allgather_on(&c, &survivors, &ids, 9, |p| vec![p as u8; 8], -1, |_| 0);
    killer.join().unwrap();
    for r in out {
        let (kind, pid, msg) = r.unwrap_err();
        assert_eq!((kind, pid), (ErrorKind::ProcessExited as u8, victim), "{msg}");
        assert!(msg.contains(&format!("process {victim}")), "{msg}");
    }
    assert!(t0.elapsed() < Duration::from_secs(10), "failed promptly");
    // A timeout names a process not heard from; the others still gather.
    let out = allgather_on(&c, &survivors[..2], &survivors, 10, |p| vec![p as u8], 300, |_| 0);
    for r in out {
        let (kind, pid, msg) = r.unwrap_err();
        assert_eq!(kind, ErrorKind::Timeout as u8, "{msg}");
        assert!(survivors[2..].contains(&pid), "{msg}");
    }
    let out = allgather_on(&c, &survivors, &survivors, 11, |p| vec![p as u8], 20_000, |_| 0);
    assert!(out.iter().all(|r| r.as_ref().is_ok_and(|v| v.len() == 4)));
    // Blocks straddling the ring threshold: run again round the ring.
    let block = |p: u32| if p == survivors[0] { vec![0; 80 << 10] } else { vec![p as u8; 8] };
    let out = allgather_on(&c, &survivors, &survivors, 12, block, 20_000, |_| 0);
    for r in out {
        assert!(r.unwrap().iter().all(|(p, b)| *b == block(*p)));
    }
    c.shutdown(Duration::from_secs(10)).unwrap();
}

/// Blocks straddling the ring threshold with a participant that calls
/// late: before it calls, two messages for its round 0 reach it, in either
/// order (the ring's from its left neighbour, Bruck's from its right one).
/// That closed the connection (a round twice), which could lose the abort
/// then in flight on it: the participant it was for waited for ever. Every
/// one must now gather, promptly, and the tag's next call too.
#[test]
fn straddling_blocks_with_a_late_participant_gather_everywhere() {
    let c = Cluster::init(Config::default()).unwrap();
    let ids = c.addprocs(5, &opts()).unwrap();
    let (big, late) = (ids[1], ids[2]);
    let block = |p: u32| if p == big { vec![p as u8; 80 << 10] } else { vec![p as u8; 8] };
    for (tag, ring_first) in [(20u64, true), (21, false)] {
        // The late one calls last; of its neighbours, the one to come
        // second calls 150 ms after the other.
        let delay = |p: u32| -> u32 {
            match p {
                p if p == late => 600,
                p if p == if ring_first { ids[3] } else { big } => 150,
                _ => 0,
            }
        };
        let at_once = |_: u32| 0;
        for (call, delay) in [(0, &delay as &dyn Fn(u32) -> u32), (1, &at_once)] {
            let t0 = Instant::now();
            let out = allgather_on(&c, &ids, &ids, tag, block, 5_000, delay);
            for (i, r) in out.iter().enumerate() {
                let got = r.as_ref().unwrap_or_else(|e| panic!("worker {} (ring first {ring_first}, call {call}): {e:?}", ids[i]));
                assert_eq!(got.iter().map(|(p, _)| *p).collect::<Vec<_>>(), ids);
                assert!(got.iter().all(|(p, b)| *b == block(*p)));
            }
            assert!(t0.elapsed() < Duration::from_secs(3), "promptly: {:?}", t0.elapsed());
        }
    }
    c.shutdown(Duration::from_secs(10)).unwrap();
}
