//! Cluster dictionaries between real processes (workers are
//! src/bin/cluster-test-worker.rs): ClusterDicts' own matrix (member sets
//! all / workers / [2, 3] / default x given or generated name, for both
//! kinds), a non-member using a received handle, release leaving nothing
//! on any member, concurrent writers and get! from several processes
//! leaving identical replicas, a member SIGKILLed under concurrent writers
//! (replication 2: no acknowledged write lost, replication restored; 1:
//! its keys reported lost), and the histories of concurrent clients across
//! such a kill checked linearizable per key.

use cluster::prelude::*;
use cluster::service::dict::DictConfig;
use cluster::wire::{decode_payload, encode_payload};
use cluster::{Cluster, Config, Dict, DictKind, ErrorKind, LaunchOptions, Members, Spec};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WORKER: &str = env!("CARGO_BIN_EXE_cluster-test-worker");

fn head() -> Cluster {
    let c = Cluster::init(Config::default()).expect("init head");
    c.register_value_fn("myid", |node, _| Ok(node.myid().to_le_bytes().to_vec())).unwrap();
    c
}

fn opts() -> LaunchOptions {
    LaunchOptions { program: Some(WORKER.into()), args: Some(vec![]), ..Default::default() }
}

/// A worker's `outcome` bytes: Ok(value) or (kind code, pid, message).
fn outcome(v: &[u8]) -> Result<Vec<u8>, (u8, u32, String)> {
    match v[0] {
        0 => Ok(v[5..].to_vec()),
        k => Err((k, u32::from_le_bytes(v[1..5].try_into().unwrap()), String::from_utf8_lossy(&v[5..]).into_owned())),
    }
}

/// Operation `op` on `d` from process `pid` (the head: here), as the
/// worker's `dict_op` does it.
fn op_on(c: &Cluster, pid: u32, d: &Dict, op: &str, key: &[u8], val: &[u8]) -> Result<Vec<u8>, (u8, u32, String)> {
    if pid != c.myid() {
        let args = encode_payload(&(op, d.to_bytes(), key, val));
        return outcome(&c.remotecall_fetch(pid, "dict_op", &args).expect("dict_op"));
    }
    let r = match op {
        "set" => d.set(key, val).map(|_| Vec::new()),
        "index" => d.index(key),
        "get!" => d.get_or_insert(key, val),
        "pop" => d.pop(key).map(|v| encode_payload(&v)),
        "delete" => d.delete(key).map(|_| Vec::new()),
        "length" => d.length().map(|n| (n as u64).to_le_bytes().to_vec()),
        "localpart" => Ok(encode_payload(&d.localpart())),
        o => panic!("no local {o}"),
    };
    r.map_err(|e| (e.kind as u8, e.pid, e.message))
}

fn localpart_on(c: &Cluster, pid: u32, d: &Dict) -> Vec<(Vec<u8>, Vec<u8>)> {
    if pid == c.myid() {
        return d.localpart();
    }
    decode_payload(&op_on(c, pid, d, "localpart", b"", b"").unwrap()).unwrap()
}

fn local_dicts_on(c: &Cluster, pid: u32) -> Vec<String> {
    if pid == c.myid() {
        return c.local_dicts();
    }
    decode_payload(&c.remotecall_fetch(pid, "dict_local", &[]).unwrap()).unwrap()
}

fn k(i: usize) -> Vec<u8> {
    format!("key{i}").into_bytes()
}

/// One cell of the matrix: a dict of `kind` over `members`, named or not,
/// created here; every operation of the original's tests on it, from here
/// and from the other processes.
fn cell(c: &Cluster, all: &[u32], kind: DictKind, members: Members, named: Option<&str>) {
    let what = format!("{kind:?} over {members:?}, name {named:?}");
    let mut spec = Spec::new(kind, members.clone());
    if let Some(n) = named {
        spec = spec.named(n);
    }
    let d = c.dict(&spec).unwrap_or_else(|e| panic!("{what}: {e}"));
    let expect: Vec<u32> = match &members {
        Members::All => all.to_vec(),
        Members::Workers => all[1..].to_vec(),
        Members::Pids(p) => p.clone(),
    };
    assert_eq!(d.members(), expect, "{what}");
    match named {
        Some(n) => assert_eq!(d.name(), n),
        None => assert!(!d.name().is_empty()),
    }
    let non_members: Vec<u32> = all.iter().copied().filter(|p| !expect.contains(p)).collect();
    // A new dict is empty, everywhere.
    assert!(d.is_empty().unwrap(), "{what}");
    assert_eq!(d.length().unwrap(), 0);
    for &p in all {
        assert_eq!(op_on(c, p, &d, "length", b"", b"").unwrap(), 0u64.to_le_bytes(), "{what}: from {p}");
    }
    // set / get / length; a missing key; get with a default; get! inserts; overwrite.
    d.set(b"a", b"1").unwrap();
    assert_eq!(d.index(b"a").unwrap(), b"1");
    assert_eq!(d.length().unwrap(), 1);
    let e = d.index(b"missing").unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{what}: {e}");
    assert_eq!(d.get(b"missing").unwrap(), None);
    assert_eq!(d.get_or(b"missing", b"dflt").unwrap(), b"dflt");
    assert!(!d.haskey(b"missing").unwrap(), "get with a default stores nothing");
    assert_eq!(d.get_or_insert(b"b", b"2").unwrap(), b"2");
    assert_eq!(d.get_or_insert(b"b", b"3").unwrap(), b"2");
    assert_eq!(d.index(b"b").unwrap(), b"2");
    d.set(b"a", b"11").unwrap();
    assert_eq!(d.index(b"a").unwrap(), b"11", "overwritten");
    assert_eq!(d.length().unwrap(), 2);
    for &p in all {
        let (kind_code, _, msg) = op_on(c, p, &d, "index", b"missing", b"").unwrap_err();
        assert_eq!(kind_code, ErrorKind::NotFound as u8, "{what}: from {p}: {msg}");
        assert_eq!(op_on(c, p, &d, "index", b"a", b"").unwrap(), b"11", "{what}: from {p}");
    }
    match kind {
        DictKind::Global => {
            // Every member holds the new value; ValueF(myid) is each member's id.
            for &p in &expect {
                let lp: BTreeMap<Vec<u8>, Vec<u8>> = localpart_on(c, p, &d).into_iter().collect();
                assert_eq!(lp.get(&b"a"[..]).map(|v| &v[..]), Some(&b"11"[..]), "{what}: on member {p}");
                assert_eq!(lp.len(), 2, "{what}: on member {p}");
            }
            d.set_with(b"id", "myid", b"").unwrap();
            for &p in &expect {
                assert_eq!(op_on(c, p, &d, "index", b"id", b"").unwrap(), p.to_le_bytes(), "{what}: ValueF on member {p}");
            }
            for &p in &non_members {
                assert!(localpart_on(c, p, &d).is_empty(), "{what}: non-member {p} stores nothing");
            }
        }
        DictKind::Distributed => {
            for i in 0..100 {
                d.set(&k(i), &(i as u32).to_le_bytes()).unwrap();
            }
            assert_eq!(d.length().unwrap(), 102, "{what}");
            let r = d.config().replication as usize;
            assert_eq!(r, expect.len().min(2));
            let mut stored = 0;
            for &p in &expect {
                let lp = localpart_on(c, p, &d);
                assert!(lp.len() > 10, "{what}: member {p} owns only {}", lp.len());
                stored += lp.len();
            }
            assert_eq!(stored, 102 * r, "{what}: every key on {r} members");
            for i in (0..100).step_by(7) {
                assert_eq!(d.index(&k(i)).unwrap(), (i as u32).to_le_bytes());
            }
            assert_eq!(d.keys().unwrap().len(), 102);
            // ValueF on the owner: its id.
            d.set_with(b"id", "myid", b"").unwrap();
            let owner = d.config().primary(cluster::service::dict::partition(b"id"));
            assert_eq!(d.index(b"id").unwrap(), owner.to_le_bytes());
            for i in 0..100 {
                d.delete(&k(i)).unwrap();
            }
        }
    }
    // A non-member reads and writes through the handle it received.
    for &p in &non_members {
        op_on(c, p, &d, "set", b"from", &p.to_le_bytes()).unwrap();
        assert_eq!(d.index(b"from").unwrap(), p.to_le_bytes(), "{what}: written by non-member {p}");
        assert_eq!(op_on(c, p, &d, "index", b"a", b"").unwrap(), b"11");
        assert_eq!(op_on(c, p, &d, "get!", b"a", b"x").unwrap(), b"11");
        let popped: Option<Vec<u8>> = decode_payload(&op_on(c, p, &d, "pop", b"from", b"").unwrap()).unwrap();
        assert_eq!(popped, Some(p.to_le_bytes().to_vec()));
    }
    // pop! and delete! from a member.
    let m = expect[expect.len() - 1];
    let popped: Option<Vec<u8>> = decode_payload(&op_on(c, m, &d, "pop", b"b", b"").unwrap()).unwrap();
    assert_eq!(popped, Some(b"2".to_vec()));
    op_on(c, m, &d, "delete", b"a", b"").unwrap();
    assert!(!d.haskey(b"a").unwrap() && !d.haskey(b"b").unwrap());
    // Opening by name with the same spec, from a worker: the same dict;
    // another spec is an error.
    let name = d.name().to_string();
    let again = outcome(&c.remotecall_fetch(all[all.len() - 1], "dict_create", &encode_payload(&spec.clone().named(&name))).unwrap()).unwrap();
    assert_eq!(decode_payload::<DictConfig>(&again).unwrap(), *d.config());
    let other = Spec::new(if kind == DictKind::Global { DictKind::Distributed } else { DictKind::Global }, members).named(&name);
    let (code, _, msg) = outcome(&c.remotecall_fetch(all[1], "dict_create", &encode_payload(&other)).unwrap()).unwrap_err();
    assert_eq!(code, ErrorKind::InvalidArgument as u8, "{msg}");
    assert!(msg.contains("another specification"), "{msg}");
    // Release: no member holds anything, the name is free.
    d.release().unwrap();
    for &p in all {
        assert!(local_dicts_on(c, p).is_empty(), "{what}: process {p} still holds {:?}", local_dicts_on(c, p));
    }
    let fresh = c.dict(&Spec::new(DictKind::Global, Members::Pids(vec![all[1]])).named(&name)).unwrap();
    assert!(fresh.is_empty().unwrap(), "the name is free for a new dict");
    fresh.release().unwrap();
}

#[test]
fn the_cluster_dicts_matrix() {
    let c = head();
    c.addprocs(3, &opts()).unwrap();
    let all = c.procs();
    assert_eq!(all, vec![1, 2, 3, 4]);
    let t = Instant::now();
    for kind in [DictKind::Global, DictKind::Distributed] {
        for (i, members) in [Members::All, Members::Workers, Members::Pids(vec![2, 3])].into_iter().enumerate() {
            cell(&c, &all, kind, members.clone(), Some(&format!("{kind:?}-{i}")));
            cell(&c, &all, kind, members, None);
        }
        // The default: workers.
        let d = c.dict(&Spec::new(kind, Members::Workers)).unwrap();
        assert_eq!(d.members(), vec![2, 3, 4]);
        d.release().unwrap();
    }
    eprintln!("matrix: {:?}", t.elapsed());
    // A worker creates one; a handle it passes on works everywhere.
    let h = outcome(&c.remotecall_fetch(3, "dict_create", &encode_payload(&Spec::new(DictKind::Distributed, Members::Pids(vec![2, 4])))).unwrap()).unwrap();
    let d = c.open_dict(&h).unwrap();
    assert!(d.name().starts_with("dict-3-"), "{}", d.name());
    op_on(&c, 3, &d, "set", b"x", b"y").unwrap();
    assert_eq!(d.index(b"x").unwrap(), b"y");
    assert_eq!(op_on(&c, 2, &d, "index", b"x", b"").unwrap(), b"y");
    op_on(&c, 3, &d, "release", b"", b"").unwrap();
    for p in 1..=4 {
        assert!(local_dicts_on(&c, p).is_empty());
    }
    assert_eq!(d.index(b"x").unwrap_err().kind, ErrorKind::InvalidArgument, "released");
    c.shutdown(Duration::from_secs(10)).unwrap();
}

/// Every process writes the same keys at once, many rounds.
fn write_everywhere(c: &Cluster, d: &Dict, keys: &[Vec<u8>], rounds: u32) {
    let args = encode_payload(&(d.to_bytes(), keys.to_vec(), rounds));
    let fs: Vec<_> = c.workers().iter().map(|&p| c.remotecall(p, "dict_write_many", &args).unwrap()).collect();
    for i in 0..rounds {
        let v = format!("1:{i}").into_bytes();
        let mine: Vec<_> = keys.iter().map(|k| d.set_async(k, &v).unwrap()).collect();
        for f in mine {
            if let Err(e) = f.wait(Some(Duration::from_secs(10))) {
                let before = parked(c);
                for p in c.workers() {
                    for q in c.workers() {
                        if p != q {
                            let _ = c.remotecall_fetch(p, "call_peer", &q.to_le_bytes());
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(500));
                panic!("{e}; parked:\n{before}\nafter pokes:\n{}", parked(c));
            }
        }
    }
    for f in fs {
        outcome(f.fetch(Some(Duration::from_secs(30))).unwrap()).unwrap();
    }
}

/// What is parked on every process (printed when a test fails).
fn parked(c: &Cluster) -> String {
    let mut s = format!("1: {:?}\n", c.service::<cluster::service::dict::Dicts>().unwrap().parked());
    for p in c.workers() {
        s += &format!("{p}: {}\n", String::from_utf8_lossy(&c.remotecall_fetch(p, "dict_parked", &[]).unwrap()));
    }
    s
}

#[test]
fn concurrent_writers_leave_identical_replicas_and_concurrent_get_inserts_agree() {
    let c = head();
    c.addprocs(3, &opts()).unwrap();
    let keys: Vec<Vec<u8>> = (0..16).map(k).collect();
    // Global over everyone: once writers stop, every member holds the same.
    let g = c.dict(&Spec::new(DictKind::Global, Members::All).named("g")).unwrap();
    write_everywhere(&c, &g, &keys, 30);
    let first: BTreeMap<Vec<u8>, Vec<u8>> = localpart_on(&c, 1, &g).into_iter().collect();
    assert_eq!(first.len(), keys.len());
    for p in 2..=4 {
        let lp: BTreeMap<Vec<u8>, Vec<u8>> = localpart_on(&c, p, &g).into_iter().collect();
        assert_eq!(lp, first, "member {p} differs from member 1");
    }
    // Every value is some writer's last round.
    for v in first.values() {
        assert!(String::from_utf8_lossy(v).ends_with(":29"), "{:?}", String::from_utf8_lossy(v));
    }
    // Distributed, replication 2: both replicas of each key agree.
    let d = c.dict(&Spec::new(DictKind::Distributed, Members::Workers).named("d")).unwrap();
    write_everywhere(&c, &d, &keys, 30);
    let mut copies: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
    for p in 2..=4 {
        for (key, v) in localpart_on(&c, p, &d) {
            copies.entry(key).or_default().push(v);
        }
    }
    assert_eq!(copies.len(), keys.len());
    for (key, vs) in &copies {
        assert_eq!(vs.len(), 2, "{key:?} on {} members", vs.len());
        assert_eq!(vs[0], vs[1], "the replicas of {key:?} differ");
    }
    // Concurrent get!: every process gets the one value that was inserted.
    for dict in [&g, &d] {
        let fresh: Vec<Vec<u8>> = (0..40).map(|i| format!("new{i}").into_bytes()).collect();
        let args = encode_payload(&(dict.to_bytes(), fresh.clone()));
        let fs: Vec<_> = c.workers().iter().map(|&p| c.remotecall(p, "dict_get_insert_many", &args).unwrap()).collect();
        let here: Vec<_> = fresh.iter().map(|k| dict.get_or_insert_async(k, &1u32.to_le_bytes()).unwrap()).collect();
        let mut got: Vec<Vec<Vec<u8>>> = vec![here.iter().map(|f| f.fetch(Some(Duration::from_secs(30))).unwrap().to_vec()).collect()];
        got.extend(fs.iter().map(|f| decode_payload::<Vec<Vec<u8>>>(&outcome(f.fetch(Some(Duration::from_secs(30))).unwrap()).unwrap()).unwrap()));
        assert_eq!(got.len(), 4);
        let mut winners = BTreeSet::new();
        for (i, key) in fresh.iter().enumerate() {
            let v = &got[0][i];
            for g in &got {
                assert_eq!(&g[i], v, "get! of {key:?} disagrees");
            }
            assert_eq!(&dict.index(key).unwrap(), v);
            winners.insert(v.clone());
        }
        eprintln!("get! winners: {}", winners.len());
        if dict.kind() == DictKind::Global {
            for p in 1..=4 {
                let lp: BTreeMap<Vec<u8>, Vec<u8>> = localpart_on(&c, p, dict).into_iter().collect();
                for (i, key) in fresh.iter().enumerate() {
                    assert_eq!(lp.get(key), Some(&got[0][i]), "member {p}'s copy of {key:?}");
                }
            }
        }
    }
    g.release().unwrap();
    d.release().unwrap();
    for p in 1..=4 {
        assert!(local_dicts_on(&c, p).is_empty());
    }
    c.shutdown(Duration::from_secs(10)).unwrap();
}

/// Writes process `pid` answered as a backup for their primary.
fn answered_on(c: &Cluster, pid: u32) -> u64 {
    u64::from_le_bytes(c.remotecall_fetch(pid, "dict_answered", &[]).unwrap()[..8].try_into().unwrap())
}

#[test]
fn a_non_members_set_is_answered_by_the_backup_and_a_read_after_it_sees_it() {
    let c = head();
    c.addprocs(3, &opts()).unwrap();
    let d = c.dict(&Spec::new(DictKind::Distributed, Members::Pids(vec![2, 3])).named("answered")).unwrap();
    let backup_of = |key: &[u8]| if d.owner(key) == 2 { 3 } else { 2 };
    // Sets from here (a non-member), each read back at once (at the
    // primary, which may not have heard from the backup yet). Waited for
    // with a timeout: an answer lost must fail the test, not hang it.
    let ten = Some(Duration::from_secs(10));
    for i in 0..200 {
        d.set_async(&k(i), &(i as u32).to_le_bytes()).unwrap().wait(ten).unwrap();
        assert_eq!(d.get_async(&k(i)).unwrap().fetch(ten).unwrap(), (i as u32).to_le_bytes(), "read after the answer of {i}");
    }
    let by_backup = |c: &Cluster| (answered_on(c, 2), answered_on(c, 3));
    let (two, three) = by_backup(&c);
    assert_eq!(two + three, 200, "every set answered by its backup");
    let expect_two = (0..200).filter(|&i| backup_of(&k(i)) == 2).count() as u64;
    assert_eq!((two, three), (expect_two, 200 - expect_two));
    // Pipelined (others in flight): answered by their primaries, whose
    // answers travel corked together; every future completes.
    let fs: Vec<_> = (0..200).map(|i| d.set_async(&k(i), b"again").unwrap()).collect();
    for f in fs {
        f.wait(ten).unwrap();
    }
    assert!((0..200).all(|i| d.index(&k(i)).unwrap() == b"again"));
    let (two, three) = by_backup(&c);
    assert!(two + three < 300, "{} of 200 pipelined sets answered by their backup", two + three - 200);
    // A member's own write (here the backup's) goes the primary's way;
    // every key's copies agree.
    let key = (0..).map(k).find(|key| d.owner(key) == 3).unwrap();
    assert_eq!(op_on(&c, 2, &d, "set", &key, b"from the backup"), Ok(Vec::new()));
    assert_eq!(by_backup(&c), (two, three), "answered by its primary");
    assert_eq!(d.index(&key).unwrap(), b"from the backup");
    let held = copies_on(&c, &d, &[2, 3]);
    assert!(held.values().all(|vs| vs.len() == 2 && vs[0] == vs[1]), "the replicas agree");
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    f()
}

fn kill_worker(c: &Cluster, id: u32) {
    let v = c.remotecall_fetch(id, "getpid", &[]).unwrap();
    cluster::sys::kill(u32::from_le_bytes(v[..4].try_into().unwrap()), cluster::sys::SIGKILL);
}

/// Every key `prefix`i (i in `acked`) reads back as i, and is stored on
/// `copies` of the `survivors` with one value.
fn check_acked(c: &Cluster, d: &Dict, prefix: &str, acked: &[u32], survivors: &[u32], copies: usize) {
    for &i in acked {
        let k = format!("{prefix}{i}").into_bytes();
        assert_eq!(d.index(&k).unwrap_or_else(|e| panic!("{prefix}{i}: {e}")), i.to_le_bytes(), "acknowledged {prefix}{i}");
    }
    // A partition's state may still be on its way to its new backup:
    // replication is restored within a bounded time, not at once.
    let short = |held: &BTreeMap<Vec<u8>, Vec<Vec<u8>>>| acked.iter().any(|i| held.get(format!("{prefix}{i}").as_bytes()).map_or(0, Vec::len) != copies);
    let mut held = BTreeMap::new();
    for _ in 0..50 {
        held = copies_on(c, d, survivors);
        if !short(&held) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for &i in acked {
        let k = format!("{prefix}{i}").into_bytes();
        let vs = held.get(&k).unwrap_or_else(|| panic!("{prefix}{i} on no survivor"));
        assert_eq!(vs.len(), copies, "{prefix}{i} on {} survivors, not {copies}: replication not restored", vs.len());
        assert!(vs.iter().all(|v| v == &i.to_le_bytes()), "{prefix}{i}: replicas differ");
    }
}

/// Every key of `d` with its values on the `survivors` that store it.
fn copies_on(c: &Cluster, d: &Dict, survivors: &[u32]) -> BTreeMap<Vec<u8>, Vec<Vec<u8>>> {
    let mut held: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
    for &p in survivors {
        for (k, v) in localpart_on(c, p, d) {
            held.entry(k).or_default().push(v);
        }
    }
    held
}

#[test]
fn a_member_killed_under_replication_2_loses_no_acknowledged_write() {
    let c = Arc::new(head());
    c.addprocs(4, &opts()).unwrap();
    let d = c.dict(&Spec::new(DictKind::Distributed, Members::Workers).named("d2")).unwrap();
    assert_eq!(d.config().replication, 2);
    let g = c.dict(&Spec::new(DictKind::Global, Members::Workers).named("g")).unwrap();
    let r1 = c.dict(&Spec::new(DictKind::Distributed, Members::Workers).named("r1").replication(1)).unwrap();
    for i in 0..64 {
        r1.set(&k(i), b"x").unwrap();
    }
    // Writers on 2, 3 and here, to both dicts, while 5 is killed.
    let n = 2000u32;
    let mut fs = Vec::new();
    for (p, dict) in [(2, &d), (3, &d), (4, &g)] {
        let args = encode_payload(&(dict.to_bytes(), format!("w{p}-"), n));
        fs.push((p, dict.clone(), c.remotecall(p, "dict_write_seq", &args).unwrap()));
    }
    let here = {
        let d = d.clone();
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            let mut errors = Vec::new();
            for i in 0..n {
                match d.set(format!("w1-{i}").as_bytes(), &i.to_le_bytes()) {
                    Ok(()) => acked.push(i),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            (acked, errors)
        })
    };
    // And pipelined _async writes from here, 32 in flight.
    let pipelined = {
        let d = d.clone();
        std::thread::spawn(move || {
            let mut errors = Vec::new();
            let mut window = std::collections::VecDeque::new();
            for i in 0..n {
                window.push_back(d.set_async(format!("a1-{i}").as_bytes(), &i.to_le_bytes()).expect("set_async"));
                if window.len() == 32 {
                    if let Err(e) = window.pop_front().unwrap().wait(Some(Duration::from_secs(30))) {
                        errors.push(e.to_string());
                    }
                }
            }
            for f in window {
                if let Err(e) = f.wait(Some(Duration::from_secs(30))) {
                    errors.push(e.to_string());
                }
            }
            errors
        })
    };
    // And batches of 50 sets (one request per primary) from here.
    let batched = {
        let d = d.clone();
        std::thread::spawn(move || {
            let mut errors = Vec::new();
            for b in 0..n / 50 {
                let keys: Vec<Vec<u8>> = (b * 50..(b + 1) * 50).map(|i| format!("b1-{i}").into_bytes()).collect();
                let vals: Vec<[u8; 4]> = (b * 50..(b + 1) * 50).map(u32::to_le_bytes).collect();
                let pairs: Vec<(&[u8], &[u8])> = keys.iter().zip(&vals).map(|(k, v)| (&k[..], &v[..])).collect();
                let r = if b % 2 == 0 { d.set_many(&pairs) } else { d.set_many_async(&pairs).and_then(|f| f.wait(Some(Duration::from_secs(30)))) };
                if let Err(e) = r {
                    errors.push(e.to_string());
                }
            }
            errors
        })
    };
    // Kill 5 once the writers are well under way, not done.
    assert!(wait_until(Duration::from_secs(10), || d.length().unwrap() >= 400));
    let t = Instant::now();
    kill_worker(&c, 5);
    assert!(fs.iter().all(|(_, _, f)| !f.is_ready()), "a writer was done before the kill: nothing tested");
    let mut results = Vec::new();
    for (p, dict, f) in fs {
        let (acked, errors): (Vec<u32>, Vec<String>) = decode_payload(f.fetch(Some(Duration::from_secs(40))).unwrap()).unwrap();
        results.push((format!("w{p}-"), dict, acked, errors));
    }
    let (acked, errors) = here.join().unwrap();
    results.push(("w1-".to_string(), d.clone(), acked, errors));
    // The _async forms retry as the blocking ones do.
    results.push(("a1-".to_string(), d.clone(), (0..n).collect(), pipelined.join().unwrap()));
    results.push(("b1-".to_string(), d.clone(), (0..n).collect(), batched.join().unwrap()));
    eprintln!("writers done {:?} after the kill", t.elapsed());
    let survivors = [2, 3, 4];
    for (prefix, dict, acked, errors) in &results {
        // The blocking forms retry on the new configuration: every write is acknowledged.
        assert!(errors.is_empty(), "{prefix}: {errors:?}");
        assert_eq!(acked.len(), n as usize, "{prefix}");
        let copies = if dict.kind() == DictKind::Global { 3 } else { 2 };
        check_acked(&c, dict, prefix, acked, &survivors, copies);
    }
    assert_eq!(d.length().unwrap(), 5 * n as usize);
    assert_eq!(d.members(), vec![2, 3, 4], "the handle follows the new epoch");
    assert_eq!(g.members(), vec![2, 3, 4], "the head, a non-member, knows the new epoch without an operation on g");
    // The backups answered this process's sets (a non-member) through the kill.
    assert!([2, 3, 4].iter().map(|&p| answered_on(&c, p)).sum::<u64>() > 0);
    assert!(d.config().epoch >= 2);
    // Replication 1: the keys that lived on 5 are reported lost, naming it.
    let mut lost = 0;
    for i in 0..64 {
        match r1.index(&k(i)) {
            Ok(v) => assert_eq!(v, b"x"),
            Err(e) => {
                assert_eq!((e.kind, e.pid), (ErrorKind::ProcessExited, 5), "{e}");
                assert!(e.message.contains("lost with process 5"), "{e}");
                lost += 1;
            }
        }
    }
    assert!(lost > 0 && lost < 64, "{lost} of 64 keys lost");
    let missing = d.get_async(b"no such key").unwrap().wait(Some(Duration::from_secs(10))).unwrap_err();
    assert_eq!(missing.kind, ErrorKind::NotFound, "{missing}");
    assert_eq!(d.pop_async(b"a1-7").unwrap().fetch(Some(Duration::from_secs(10))).unwrap(), 7u32.to_le_bytes());
    assert_eq!(d.get_async(b"a1-8").unwrap().fetch(Some(Duration::from_secs(10))).unwrap(), 8u32.to_le_bytes());
    for dict in [&d, &g, &r1] {
        dict.release().unwrap();
    }
    for p in [1, 2, 3, 4] {
        assert!(local_dicts_on(&c, p).is_empty());
    }
    c.shutdown(Duration::from_secs(10)).unwrap();
}

/// One operation of a history: key index, value (0: absent), invoked and
/// answered (ns, the machine's monotonic clock), whether it succeeded.
type Op = (u32, u32, u64, u64, bool);

/// Each key has one writer setting 1, 2, 3 ... in turn. Such registers are
/// linearizable exactly when every successful read returns at least the
/// last write acknowledged before it was invoked and at most the last write
/// invoked before it was answered, and a read answered before another was
/// invoked never returns a later value. Returns the reads checked.
fn check_history(writes: &[Op], reads: &[Op], nkeys: u32) -> usize {
    let mut checked = 0;
    for key in 0..nkeys {
        let w: Vec<&Op> = writes.iter().filter(|o| o.0 == key).collect();
        let mut r: Vec<&Op> = reads.iter().filter(|o| o.0 == key && o.4).collect();
        for rd in &r {
            let lower = w.iter().filter(|o| o.4 && o.3 < rd.2).map(|o| o.1).max().unwrap_or(0);
            let upper = w.iter().filter(|o| o.2 < rd.3).map(|o| o.1).max().unwrap_or(0);
            assert!(
                lower <= rd.1 && rd.1 <= upper,
                "key {key}: a read in [{}, {}] returned {}, outside [{lower}, {upper}] (acknowledged before it / invoked before its answer)",
                rd.2,
                rd.3,
                rd.1
            );
        }
        // No new-old inversion between reads that do not overlap.
        r.sort_by_key(|o| o.2);
        let mut by_end: Vec<&Op> = r.clone();
        by_end.sort_by_key(|o| o.3);
        let (mut i, mut seen) = (0, 0u32);
        for rd in &r {
            while i < by_end.len() && by_end[i].3 < rd.2 {
                seen = seen.max(by_end[i].1);
                i += 1;
            }
            assert!(rd.1 >= seen, "key {key}: a read invoked at {} returned {} after an earlier read had returned {seen}", rd.2, rd.1);
            checked += 1;
        }
    }
    checked
}

#[test]
fn histories_of_concurrent_clients_stay_linearizable_through_a_members_death() {
    let c = Arc::new(head());
    c.addprocs(4, &opts()).unwrap();
    let d = c.dict(&Spec::new(DictKind::Distributed, Members::Workers).named("h")).unwrap();
    let keys: Vec<Vec<u8>> = (0..16).map(|i| format!("h{i}").into_bytes()).collect();
    // Enough that the writers are still at it when a member is killed.
    let rounds = 4000u32;
    let w2 = c.remotecall(2, "dict_history_write", &encode_payload(&(d.to_bytes(), keys[..8].to_vec(), rounds))).unwrap();
    let w3 = c.remotecall(3, "dict_history_write", &encode_payload(&(d.to_bytes(), keys[8..].to_vec(), rounds))).unwrap();
    let r4 = c.remotecall(4, "dict_history_read", &encode_payload(&(d.to_bytes(), keys.clone(), 2500u32))).unwrap();
    let here = {
        let (d, keys) = (d.clone(), keys.clone());
        std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_millis(2500);
            let mut ops: Vec<Op> = Vec::new();
            let mut j = 0usize;
            while Instant::now() < end {
                let t0 = cluster::sys::monotonic_ns();
                let r = d.get(&keys[j % keys.len()]);
                let t1 = cluster::sys::monotonic_ns();
                let v = r.as_ref().ok().and_then(|v| v.as_ref()).map(|v| u32::from_le_bytes(v[..4].try_into().unwrap())).unwrap_or(0);
                ops.push(((j % keys.len()) as u32, v, t0, t1, r.is_ok()));
                j += 1;
            }
            ops
        })
    };
    let round_of = |v: Vec<u8>| u32::from_le_bytes(v[..4].try_into().unwrap());
    assert!(wait_until(Duration::from_secs(10), || d.get(&keys[0]).ok().flatten().is_some_and(|v| round_of(v) >= 60)));
    kill_worker(&c, 5);
    assert!(!w2.is_ready() && !w3.is_ready(), "the writers were done before the kill: nothing tested");
    let mut writes: Vec<Op> = decode_payload(w2.fetch(Some(Duration::from_secs(40))).unwrap()).unwrap();
    let more: Vec<Op> = decode_payload(w3.fetch(Some(Duration::from_secs(40))).unwrap()).unwrap();
    writes.extend(more.into_iter().map(|o| (o.0 + 8, o.1, o.2, o.3, o.4)));
    let mut reads: Vec<Op> = decode_payload(r4.fetch(Some(Duration::from_secs(40))).unwrap()).unwrap();
    reads.extend(here.join().unwrap());
    let failed_writes = writes.iter().filter(|o| !o.4).count();
    let failed_reads = reads.iter().filter(|o| !o.4).count();
    let checked = check_history(&writes, &reads, 16);
    eprintln!("history: {} writes ({failed_writes} failed), {} reads ({failed_reads} failed), {checked} checked", writes.len(), reads.len());
    assert_eq!(failed_writes, 0, "the blocking forms retry on the new epoch");
    assert!(checked > 1000, "only {checked} reads");
    // Every acknowledged last value is there.
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(d.index(k).unwrap(), rounds.to_le_bytes(), "key {i}");
    }
    d.release().unwrap();
    c.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn the_history_check_catches_stale_reads_and_inversions() {
    let w: Vec<Op> = vec![(0, 1, 10, 20, true), (0, 2, 30, 40, true)];
    let ok: Vec<Op> = vec![(0, 0, 5, 15, true), (0, 1, 21, 29, true), (0, 2, 35, 50, true), (0, 2, 41, 45, true)];
    assert_eq!(check_history(&w, &ok, 1), 4);
    let bad = [
        // Write 1 was acknowledged at 20: a read from 21 must see it.
        vec![(0, 0, 21, 25, true)],
        // Write 2 was invoked at 30: a read answered at 29 cannot see it.
        vec![(0, 2, 21, 29, true)],
        // 2, then 1 from a later read.
        vec![(0, 2, 31, 33, true), (0, 1, 34, 36, true)],
    ];
    for r in bad {
        assert!(std::panic::catch_unwind(|| check_history(&w, &r, 1)).is_err(), "{r:?} passed");
    }
}
