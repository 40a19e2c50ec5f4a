//! Work distribution across real worker processes
//! (src/bin/cluster-test-worker.rs): pools, pmap with workers killed
//! mid-map, @distributed's split, PTools' WorkerSet and queued tasks.
//! Expected results are Distributed's (and PTools') documented behaviour.

use cluster::prelude::*;
use cluster::service::pool::{BatchSize, Items, PmapOptions, Target, TaskSpec, WsMode};
use cluster::{Cluster, Config, ErrorKind, LaunchOptions};
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};

const WORKER: &str = env!("CARGO_BIN_EXE_cluster-test-worker");

fn opts() -> LaunchOptions {
    LaunchOptions { program: Some(WORKER.into()), args: Some(vec![]), ..Default::default() }
}

fn head() -> Cluster {
    Cluster::init(Config::default()).expect("init head")
}

fn u32_of(v: &[u8]) -> u32 {
    u32::from_le_bytes(v[..4].try_into().unwrap())
}

fn items(n: u32) -> Items {
    let mut it = Items::new();
    for i in 0..n {
        it.push(&i.to_le_bytes());
    }
    it
}

fn os_pid(c: &Cluster, w: u32) -> u32 {
    u32_of(&c.remotecall_fetch(w, "getpid", &[]).unwrap())
}

const LIMIT: Option<Duration> = Some(Duration::from_secs(30));

#[test]
fn pools_take_put_push_and_return_workers_when_calls_complete() {
    let c = head();
    let ids = c.addprocs(3, &opts()).unwrap();
    let pool = c.worker_pool(&ids[..2]).unwrap();
    assert_eq!(pool.len(), 2);
    let a = pool.take(LIMIT).unwrap();
    let b = pool.take(LIMIT).unwrap();
    assert_eq!((a, b), (ids[0], ids[1]));
    assert!(!pool.is_ready());
    // A take waits: a future, granted by the next put.
    let waiting = pool.take_async().unwrap();
    assert!(!waiting.is_ready());
    pool.put(b);
    assert_eq!(u32_of(waiting.fetch(LIMIT).unwrap()), b);
    pool.put(a);
    pool.put(b);
    pool.push(ids[2]).unwrap();
    assert_eq!(pool.workers(), ids);
    // A call on the pool holds its worker until it completes.
    let slow = pool.remotecall("sleep_myid", &300u32.to_le_bytes()).unwrap();
    let who = slow.pid();
    assert!(ids.contains(&who));
    assert!(!pool.workers().is_empty());
    let t = Instant::now();
    let mut others = Vec::new();
    for _ in 0..2 {
        others.push(pool.take(LIMIT).unwrap());
    }
    assert!(!others.contains(&who), "the busy worker is not handed out");
    let last = pool.take_async().unwrap();
    assert_eq!(u32_of(last.fetch(LIMIT).unwrap()), who, "it comes back when its call completes");
    assert!(t.elapsed() >= Duration::from_millis(250));
    assert_eq!(u32_of(slow.fetch(LIMIT).unwrap()), who);
    for w in others.into_iter().chain([who]) {
        pool.put(w);
    }
    // Every call form, and remote_do.
    assert_eq!(u32_of(&pool.remotecall_fetch("sq", &9u32.to_le_bytes()).unwrap()), 81);
    assert!(pool.remotecall_wait("sq", &3u32.to_le_bytes()).unwrap().is_ready());
    pool.remote_do("sq", &3u32.to_le_bytes()).unwrap();
    // The default pool follows the workers.
    let d = c.default_pool().unwrap();
    assert_eq!(d.workers(), ids);
    c.rmprocs(&[ids[0]], Duration::from_secs(10)).unwrap();
    assert_eq!(d.workers(), ids[1..].to_vec());
    assert_eq!(pool.workers(), ids[1..].to_vec(), "a departed member leaves every pool");
    let more = c.addprocs(1, &opts()).unwrap();
    assert!(d.workers().contains(&more[0]));
    c.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn pmap_gives_results_in_order_in_every_batch_mode() {
    let c = head();
    c.addprocs(2, &opts()).unwrap();
    for (bs, depth) in [(BatchSize::Fixed(1), 1), (BatchSize::Fixed(1), 8), (BatchSize::Fixed(7), 2), (BatchSize::Auto, 1)] {
        let m = c.pmap(None, "sq", items(1000), PmapOptions { batch_size: bs, max_in_flight: depth, ..Default::default() }).unwrap();
        m.wait(LIMIT).unwrap();
        for (i, r) in m.results().into_iter().enumerate() {
            assert_eq!(u32_of(&r.unwrap().unwrap()), (i * i) as u32);
        }
        if bs == BatchSize::Auto {
            assert_eq!(m.batch_size(), 100, "Distributed's :auto for 1000 elements on 2 workers");
        }
    }
    // Per-element errors (the function is unregistered on no worker, but
    // fails on bad arguments).
    let mut bad = items(4);
    bad.push(b"x");
    let m = c.pmap(None, "sq", bad.clone(), PmapOptions { on_error: true, ..Default::default() }).unwrap();
    m.wait(LIMIT).unwrap();
    let r = m.results();
    assert!(r[3].as_ref().unwrap().is_ok());
    let e = r[4].as_ref().unwrap().as_ref().unwrap_err();
    assert_eq!(e.kind, ErrorKind::Remote);
    let e = c.pmap(None, "sq", bad, PmapOptions::default()).unwrap().wait(LIMIT).unwrap_err();
    assert!(e.message.contains("element 5"), "{e}");
    c.shutdown(Duration::from_secs(10)).unwrap();
}

/// Kills `victim` after `after` in the background.
fn kill_later(pid: u32, after: Duration) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        std::thread::sleep(after);
        cluster::sys::kill(pid, libc::SIGKILL);
    })
}

#[test]
fn pmap_retries_only_the_lost_elements_when_a_worker_is_killed() {
    let c = head();
    let ids = c.addprocs(3, &opts()).unwrap();
    let victim = os_pid(&c, ids[1]);
    let killer = kill_later(victim, Duration::from_millis(150));
    let t = Instant::now();
    let o = PmapOptions { retry_delays: vec![Duration::from_millis(10); 3], max_in_flight: 2, ..Default::default() };
    let m = c.pmap(None, "slow_sq", items(300), o).unwrap();
    m.wait(LIMIT).unwrap();
    killer.join().unwrap();
    for (i, r) in m.results().into_iter().enumerate() {
        assert_eq!(u32_of(&r.unwrap().unwrap()), (i * i) as u32, "element {i}");
    }
    assert!(t.elapsed() < Duration::from_secs(20));
    assert_eq!(c.default_pool().unwrap().workers(), vec![ids[0], ids[2]]);
    c.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn pmap_with_on_error_gives_an_error_value_for_each_lost_element() {
    let c = head();
    let ids = c.addprocs(3, &opts()).unwrap();
    let killer = kill_later(os_pid(&c, ids[0]), Duration::from_millis(150));
    let m = c.pmap(None, "slow_sq", items(300), PmapOptions { on_error: true, max_in_flight: 2, ..Default::default() }).unwrap();
    m.wait(LIMIT).unwrap();
    killer.join().unwrap();
    let mut lost = 0;
    for (i, r) in m.results().into_iter().enumerate() {
        match r.unwrap() {
            Ok(v) => assert_eq!(u32_of(&v), (i * i) as u32),
            Err(e) => {
                assert_eq!((e.kind, e.pid), (ErrorKind::ProcessExited, ids[0]), "element {i}: {e}");
                lost += 1;
            }
        }
    }
    assert!((1..=2).contains(&lost), "only the calls in flight on the dead worker fail: {lost}");
    assert_eq!(m.progress().failed, lost);
    c.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn pmap_fails_clearly_when_every_worker_of_its_pool_dies() {
    let c = head();
    let ids = c.addprocs(2, &opts()).unwrap();
    let pool = c.worker_pool(&ids).unwrap();
    let k1 = kill_later(os_pid(&c, ids[0]), Duration::from_millis(100));
    let k2 = kill_later(os_pid(&c, ids[1]), Duration::from_millis(150));
    let t = Instant::now();
    let m = c.pmap(Some(&pool), "slow_sq", items(1000), PmapOptions { retry_delays: vec![Duration::from_millis(5); 2], ..Default::default() }).unwrap();
    let e = m.wait(LIMIT).unwrap_err();
    k1.join().unwrap();
    k2.join().unwrap();
    assert!(e.message.contains("no active worker available"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(10));
    // The same with on_error: every element done, by value or error.
    let m = c.pmap(Some(&pool), "sq", items(10), PmapOptions { on_error: true, ..Default::default() }).unwrap();
    m.wait(LIMIT).unwrap();
    assert!(m.results().iter().all(|r| r.as_ref().unwrap().is_err()));
    // The default pool falls back to the head, as Distributed's does: the
    // head has no "sq", so that fails remotely, naming process 1.
    let e = c.pmap(None, "sq", items(3), PmapOptions::default()).unwrap().wait(LIMIT).unwrap_err();
    assert_eq!(e.pid, 1, "{e}");
    c.shutdown(Duration::from_secs(10)).unwrap();
}

/// Many short calls with a long one now and then: each long one hands the
/// worker's reactor role to a fresh thread while more calls are queued.
/// The map ends (a worker whose reactor lost its last thread stopped reading
/// its head, and died of it after the heartbeat timeout).
#[test]
fn pmap_survives_calls_that_hand_the_reactor_on() {
    let c = head();
    c.addprocs(2, &opts()).unwrap();
    for _ in 0..3 {
        let t = Instant::now();
        let m = c.pmap(None, "sometimes_slow", items(20_000), PmapOptions::default()).unwrap();
        m.wait(LIMIT).unwrap();
        assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
        for (i, r) in m.results().into_iter().enumerate() {
            assert_eq!(u32_of(&r.unwrap().unwrap()), i as u32);
        }
    }
    c.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn distributed_splits_as_splitrange_or_hands_out_chunks() {
    let c = head();
    let ids = c.addprocs(3, &opts()).unwrap();
    let m = c.distributed(None, "range_sum", 1, 11, 0, &[], PmapOptions::default()).unwrap();
    m.wait(LIMIT).unwrap();
    let parts: Vec<i64> = m.results().into_iter().map(|r| i64::from_le_bytes(r.unwrap().unwrap()[..8].try_into().unwrap())).collect();
    // 1:4, 5:8, 9:11
    assert_eq!(parts, vec![10, 26, 30]);
    let m = c.distributed(None, "range_sum", 1, 1000, 64, &2i64.to_le_bytes(), PmapOptions::default()).unwrap();
    m.wait(LIMIT).unwrap();
    assert_eq!(m.len(), 16);
    let total: i64 = m.results().into_iter().map(|r| i64::from_le_bytes(r.unwrap().unwrap()[..8].try_into().unwrap())).sum();
    assert_eq!(total, 2 * 500500);
    let _ = ids;
    c.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn worker_sets_round_robin_and_first_free() {
    let c = head();
    let ids = c.addprocs(7, &opts()).unwrap();
    // PTools' test: RR over w[1:3] answers 2, 3, 4, 2.
    let rr = c.worker_set(&ids[..3], WsMode::RoundRobin).unwrap();
    let got: Vec<u32> = (0..4).map(|_| u32_of(&rr.remotecall_fetch("myid", &[]).unwrap())).collect();
    assert_eq!(got, vec![2, 3, 4, 2]);
    // FF over w[4:7] (5..8): four calls sleeping 200, 210, 220, 230 ms go
    // to 5, 6, 7, 8; four more queue and get them in the order they free.
    let ff = c.worker_set(&ids[3..], WsMode::FirstFree).unwrap();
    let mut fs = Vec::new();
    for round in 0..2 {
        for k in 0..4u32 {
            let _ = round;
            fs.push(ff.remotecall("sleep_myid", &(200 + 10 * k).to_le_bytes()).unwrap());
        }
    }
    let got: Vec<u32> = fs.iter().map(|f| u32_of(f.fetch(LIMIT).unwrap())).collect();
    assert_eq!(got, vec![5, 6, 7, 8, 5, 6, 7, 8]);
    // A failed call gives its worker back.
    assert!(ff.remotecall_fetch("fail", b"x").is_err());
    let fs: Vec<_> = (0..4).map(|_| ff.remotecall("sleep_myid", &50u32.to_le_bytes()).unwrap()).collect();
    let mut got: Vec<u32> = fs.iter().map(|f| u32_of(f.fetch(LIMIT).unwrap())).collect();
    got.sort_unstable();
    assert_eq!(got, vec![5, 6, 7, 8]);
    c.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn queued_tasks_run_by_priority_and_can_be_reprioritised_and_dequeued() {
    let c = head();
    let ids = c.addprocs(2, &opts()).unwrap();
    let q = c.task_queue().unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let spec = |ms: u32, prio: f64, target: Target| {
        let o = order.clone();
        let mut s = TaskSpec::new("sleep_myid", &ms.to_le_bytes(), target);
        s.priority = prio;
        s.callback = Some(Arc::new(move |d: &cluster::service::pool::TaskDone| o.lock().push((d.id, d.pid))));
        s
    };
    // Worker 2 busy first; then tasks for it by priority.
    let (blocker, _) = q.queue(spec(200, 0.0, Target::Pid(ids[0]))).unwrap();
    let (a, fa) = q.queue(spec(1, 5.0, Target::Pid(ids[0]))).unwrap();
    let (b, _) = q.queue(spec(1, 1.0, Target::Pid(ids[0]))).unwrap();
    let (cc, _) = q.queue(spec(1, 5.0, Target::Pid(ids[0]))).unwrap();
    let (d, fd) = q.queue(spec(1, 3.0, Target::Pid(ids[0]))).unwrap();
    let (e, _) = q.queue(spec(1, f64::INFINITY, Target::Pid(ids[0]))).unwrap();
    q.set_priority(e, 0.5).unwrap();
    assert!(q.dequeue(d));
    assert!(!q.dequeue(d));
    assert_eq!(fd.wait(LIMIT).unwrap_err().kind, ErrorKind::Interrupted);
    fa.wait(LIMIT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while order.lock().len() < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let ran: Vec<u64> = order.lock().iter().map(|x| x.0).collect();
    assert_eq!(ran, vec![blocker, e, b, a, cc], "by priority, FIFO among equals");
    // All workers: once on each; a list of targets: once.
    order.lock().clear();
    let all = q.execute(spec(1, 1.0, Target::All)).unwrap();
    all.wait(LIMIT).unwrap();
    let mut on: Vec<u32> = order.lock().iter().map(|x| x.1).collect();
    on.sort_unstable();
    assert_eq!(on, ids);
    order.lock().clear();
    let once = q.execute(spec(1, 1.0, Target::Pids(ids.clone()))).unwrap();
    assert!(ids.contains(&u32_of(once.fetch(LIMIT).unwrap())));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(order.lock().len(), 1);
    // Hosts, after prep_remotes.
    assert!(q.queue(spec(1, 1.0, Target::Host("nowhere".into()))).is_err());
    q.prep_remotes_async(false).unwrap().wait(LIMIT).unwrap();
    assert_eq!(q.num_remotes(), 2);
    let host = q.host_of(ids[1]).unwrap();
    let f = q.execute(spec(1, 1.0, Target::Host(host.hostname.clone()))).unwrap();
    assert!(ids.contains(&u32_of(f.fetch(LIMIT).unwrap())));
    let f = q.execute(spec(1, 1.0, Target::Hosts(vec!["nowhere".into(), host.ip.clone()]))).unwrap();
    assert!(ids.contains(&u32_of(f.fetch(LIMIT).unwrap())));
    // A task whose only target dies fails rather than waits.
    let victim = os_pid(&c, ids[1]);
    let (_, blocked) = q.queue(spec(300, 0.0, Target::Pid(ids[1]))).unwrap();
    let (_, orphan) = q.queue(spec(1, 0.0, Target::Pid(ids[1]))).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    cluster::sys::kill(victim, libc::SIGKILL);
    assert_eq!(blocked.wait(LIMIT).unwrap_err().kind, ErrorKind::ProcessExited);
    assert_eq!(orphan.wait(LIMIT).unwrap_err().kind, ErrorKind::ProcessExited);
    c.shutdown(Duration::from_secs(10)).unwrap();
}
