//! Shared memory between real processes (workers are
//! src/bin/cluster-test-worker.rs): a segment created by the head or a
//! worker is mapped by every local process, writes are seen across them,
//! unlink removes it everywhere; a SIGKILLed cluster leaves an orphan the
//! cleaner finds and removes while a live cluster's segments stay; a
//! segment larger than /dev/shm fails at creation, leaving nothing.

use cluster::prelude::*;
use cluster::service::shm::{self, SegmentName};
use cluster::sys::shm as os;
use cluster::wire::encode_payload;
use cluster::{Cluster, Config, ErrorKind, LaunchOptions, ShmSpec};
use std::io::BufRead;
use std::time::{Duration, Instant};

const WORKER: &str = env!("CARGO_BIN_EXE_cluster-test-worker");
const CLEANER: &str = env!("CARGO_BIN_EXE_cluster-shm-orphans");

fn opts() -> LaunchOptions {
    LaunchOptions { program: Some(WORKER.into()), args: Some(vec![]), ..Default::default() }
}

fn prefix(tag: &str) -> String {
    format!("t{}{tag}", std::process::id())
}

fn in_dev_shm(os_name: &str) -> bool {
    os::list().unwrap().iter().any(|n| n == os_name)
}

fn read_on(c: &Cluster, pid: u32, name: &str, pfx: &str, offset: u64, n: u64) -> Result<Vec<u8>, cluster::Error> {
    c.remotecall_fetch(pid, "shm_read", &encode_payload(&(name, pfx, offset, n))).map(|v| v.to_vec())
}

fn count_on(c: &Cluster, pid: u32) -> u32 {
    u32::from_le_bytes(c.remotecall_fetch(pid, "shm_count", &[]).unwrap()[..4].try_into().unwrap())
}

#[test]
fn segments_are_mapped_by_every_local_process_and_unlinked_everywhere() {
    let c = Cluster::init(Config::default()).unwrap();
    let ids = c.addprocs(2, &opts()).unwrap();
    let pfx = prefix("a");
    // Created here: both workers map it; writes go both ways.
    let spec = ShmSpec::new("svar1", 7, 4, &[1024]).prefixed(&pfx);
    let seg = c.shm_create(&spec, None).unwrap();
    assert_eq!(seg.len(), 4096);
    assert!(in_dev_shm(seg.os_name()));
    let parsed = SegmentName::parse(seg.os_name()).unwrap();
    assert_eq!((parsed.prefix.as_str(), parsed.name.as_str(), parsed.creator_pid), (pfx.as_str(), "svar1", std::process::id()));
    seg.write_at(100, b"from the head").unwrap();
    for &w in &ids {
        assert_eq!(read_on(&c, w, "svar1", &pfx, 100, 13).unwrap(), b"from the head");
    }
    c.remotecall_fetch(ids[1], "shm_write", &encode_payload(&("svar1", &pfx, 4000u64, b"from 3".to_vec()))).unwrap();
    let mut got = [0u8; 6];
    seg.read_at(4000, &mut got).unwrap();
    assert_eq!(&got, b"from 3");
    assert_eq!(read_on(&c, ids[0], "svar1", &pfx, 4000, 6).unwrap(), b"from 3");
    // The same name again is refused; a second segment is independent.
    assert_eq!(c.shm_create(&spec, None).unwrap_err().kind, ErrorKind::InvalidArgument);
    // Created by a worker: the head and the other worker map it.
    let os_name = c.remotecall_fetch(ids[0], "shm_create", &encode_payload(&("byw", &pfx, 64u64))).unwrap();
    let os_name = String::from_utf8(os_name.to_vec()).unwrap();
    let theirs = c.shm_segment("byw", &pfx).expect("mapped here too");
    assert_eq!(theirs.os_name(), os_name);
    c.remotecall_fetch(ids[1], "shm_write", &encode_payload(&("byw", &pfx, 0u64, vec![9u8; 64]))).unwrap();
    let mut all = [0u8; 64];
    theirs.read_at(0, &mut all).unwrap();
    assert_eq!(all, [9u8; 64]);
    assert_eq!(count_on(&c, ids[1]), 2);
    // Unlink: gone from /dev/shm and from every process's table; the
    // mapping held here stays valid until dropped.
    c.shm_unlink("svar1", &pfx).unwrap();
    c.shm_unlink("byw", &pfx).unwrap();
    assert!(!in_dev_shm(seg.os_name()) && !in_dev_shm(&os_name));
    for &w in &ids {
        assert_eq!(count_on(&c, w), 0);
        assert!(read_on(&c, w, "svar1", &pfx, 0, 1).is_err());
    }
    assert!(c.shm_segment("svar1", &pfx).is_none());
    seg.read_at(100, &mut got).unwrap();
    assert_eq!(c.shm_unlink("svar1", &pfx).unwrap_err().kind, ErrorKind::NotFound);
    // An explicit set: only the listed process maps it.
    let only = c.shm_create(&ShmSpec::new("only", 0, 1, &[10]).prefixed(&pfx), Some(&[ids[1]])).unwrap();
    assert_eq!((count_on(&c, ids[0]), count_on(&c, ids[1])), (0, 1));
    let only_name = only.os_name().to_string();
    // A clean shutdown of the head removes its cluster's segments.
    c.shutdown(Duration::from_secs(10)).unwrap();
    drop(c);
    assert!(!in_dev_shm(&only_name), "the head's close unlinks its cluster's segments");
}

#[test]
fn a_killed_clusters_segment_is_an_orphan_and_a_live_ones_is_not() {
    let pfx = prefix("o");
    let c = Cluster::init(Config::default()).unwrap();
    let mine = c.shm_create(&ShmSpec::new("live", 0, 1, &[128]).prefixed(&pfx), None).unwrap();
    // Another cluster whose worker made a segment; then its head and worker are SIGKILLed.
    let mut head =
        std::process::Command::new(WORKER).env("TEST_SHM_HEAD", &pfx).env("LIBCLUSTER_LOG", "off").stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(head.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let theirs = line.trim().to_string();
    assert!(theirs.starts_with("lcshm.") && in_dev_shm(&theirs), "{theirs:?}");
    assert!(shm::orphans(Some(&pfx)).unwrap().is_empty(), "both clusters are alive");
    let head_pid = head.id();
    // The worker is the head's child: kill the whole group of processes.
    let children: Vec<u32> = std::fs::read_to_string(format!("/proc/{head_pid}/task/{head_pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    cluster::sys::kill(head_pid, cluster::sys::SIGKILL);
    let _ = head.wait();
    for p in children {
        cluster::sys::kill(p, cluster::sys::SIGKILL);
    }
    assert!(in_dev_shm(&theirs), "a SIGKILL leaves the segment");
    let found: Vec<String> = shm::orphans(Some(&pfx)).unwrap().into_iter().map(|s| s.os_name).collect();
    assert_eq!(found, vec![theirs.clone()], "only the dead cluster's segment");
    // The command line lists it (and only it, under this prefix).
    let out = std::process::Command::new(CLEANER).args(["--prefix", &pfx]).output().unwrap();
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success() && listed.lines().count() == 1 && listed.starts_with(&theirs), "{listed}");
    assert!(shm::orphans(Some("another-prefix")).unwrap().iter().all(|s| s.os_name != theirs));
    let out = std::process::Command::new(CLEANER).args(["--prefix", &pfx, "--remove"]).output().unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stderr).contains("removed 1 segment"), "{out:?}");
    assert!(shm::remove_orphans(Some(&pfx)).unwrap().is_empty(), "nothing left to remove");
    assert!(!in_dev_shm(&theirs) && in_dev_shm(mine.os_name()));
    c.shm_unlink("live", &pfx).unwrap();
    c.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn a_segment_larger_than_dev_shm_fails_at_creation_and_leaves_nothing() {
    let c = Cluster::init(Config::default()).unwrap();
    let pfx = prefix("f");
    // More than the whole of /dev/shm: refused up front, no page touched.
    let total = {
        let out = std::process::Command::new("df").args(["-B1", "--output=size", os::SHM_DIR]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().nth(1).unwrap().trim().parse::<u64>().unwrap()
    };
    let spec = ShmSpec::new("huge", 0, 1, &[total + (64 << 20)]).prefixed(&pfx);
    let t = Instant::now();
    let e = c.shm_create(&spec, None).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Io, "{e}");
    assert!(e.message.contains("no room in /dev/shm"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(os::list().unwrap().iter().all(|n| !n.contains(&pfx)), "nothing left behind");
    assert!(c.shm_segment("huge", &pfx).is_none());
    c.shutdown(Duration::from_secs(10)).unwrap();
}
