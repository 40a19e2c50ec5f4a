//! RemoteChannels between real processes (workers are
//! src/bin/cluster-test-worker.rs): elements in order across processes,
//! a full channel making its producer wait, a killed producer closing its
//! bound channel, a dead owner failing its waiters, references forwarded
//! and freed, parked readers of a dead process never served.

use cluster::prelude::*;
use cluster::{ChannelRef, Cluster, Config, ErrorKind, LaunchOptions};
use std::time::{Duration, Instant};

const WORKER: &str = env!("CARGO_BIN_EXE_cluster-test-worker");

fn head() -> Cluster {
    Cluster::init(Config::default()).expect("init head")
}

fn opts() -> LaunchOptions {
    LaunchOptions { program: Some(WORKER.into()), args: Some(vec![]), ..Default::default() }
}

fn u32_of(v: &[u8]) -> u32 {
    u32::from_le_bytes(v[..4].try_into().unwrap())
}

fn with_u32(r: ChannelRef, x: u32) -> Vec<u8> {
    [&r.to_bytes()[..], &x.to_le_bytes()].concat()
}

/// A worker's `outcome` bytes: Ok(value) or (kind code, pid, message).
fn outcome(v: &[u8]) -> Result<Vec<u8>, (u8, u32, String)> {
    match v[0] {
        0 => Ok(v[5..].to_vec()),
        k => Err((k, u32_of(&v[1..5]), String::from_utf8_lossy(&v[5..]).into_owned())),
    }
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

/// Worker `pid`'s take of channel `r` with no timeout, given time to park
/// on the channel's owner (if it comes later, it finds what was put).
fn parked_take(c: &Cluster, pid: u32, r: ChannelRef) -> cluster::Future {
    let f = c.remotecall(pid, "chan_take", &with_u32(r, u32::MAX)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    f
}

fn kill_worker(c: &Cluster, id: u32) {
    let os_pid = u32_of(&c.remotecall_fetch(id, "getpid", &[]).unwrap());
    cluster::sys::kill(os_pid, cluster::sys::SIGKILL);
}

#[test]
fn elements_go_between_processes_in_order_and_a_full_channel_makes_its_producer_wait() {
    let c = head();
    c.addprocs(2, &opts()).unwrap();
    // Kept by worker 2 (no round trip to make it), filled by worker 3, taken here.
    let ch = c.channel(2, 2).unwrap();
    assert_eq!(ch.owner(), 2);
    let r = ch.export().unwrap();
    let producer = c.remotecall(3, "chan_produce", &with_u32(r, 20)).unwrap();
    // Room for 2: the producer waits on its third put until we take.
    assert!(wait_until(Duration::from_secs(5), || ch.state().unwrap().n_avail == 2));
    std::thread::sleep(Duration::from_millis(100));
    assert!(!producer.is_ready(), "the producer went on with a full channel");
    assert_eq!(ch.state().unwrap().n_avail, 2);
    assert!(ch.is_ready().unwrap() && !ch.is_empty().unwrap() && ch.is_open().unwrap());
    assert_eq!(u32_of(&ch.fetch().unwrap()), 0, "fetch leaves the element");
    for i in 0..20 {
        assert_eq!(u32_of(&ch.take().unwrap()), i, "FIFO");
    }
    assert!(outcome(producer.fetch(Some(Duration::from_secs(5))).unwrap()).is_ok());
    assert!(ch.is_empty().unwrap());
    // Closing: a waiting take fails, puts fail, what is buffered is still taken.
    ch.put(b"left").unwrap();
    ch.close().unwrap();
    assert_eq!(ch.put(b"more").unwrap_err().kind, ErrorKind::ChannelClosed);
    assert_eq!(&*ch.take().unwrap(), b"left");
    let e = ch.take().unwrap_err();
    assert_eq!(e.kind, ErrorKind::ChannelClosed);
    assert!(!ch.is_open().unwrap());
    drop(ch);
    assert!(wait_until(Duration::from_secs(3), || u32_of(&c.remotecall_fetch(2, "chan_owned", &[]).unwrap()) == 0));
    c.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn a_consumer_of_a_killed_producer_sees_its_bound_channel_close() {
    let c = head();
    c.addprocs(1, &opts()).unwrap();
    let ch = c.channel(0, 4).unwrap();
    ch.bind(2).unwrap();
    let r = ch.export().unwrap();
    let _producer = c.remotecall(2, "chan_produce_forever", &with_u32(r, 5)).unwrap();
    for i in 0..5 {
        assert_eq!(u32_of(&ch.take_timeout(Some(Duration::from_secs(5))).unwrap()), i);
    }
    kill_worker(&c, 2);
    let t = Instant::now();
    // Whatever was put before it died is taken, then the channel is closed.
    let mut last = 4;
    let e = loop {
        match ch.take_timeout(Some(Duration::from_secs(5))) {
            Ok(v) => {
                assert_eq!(u32_of(&v), last + 1);
                last += 1;
            }
            Err(e) => break e,
        }
    };
    assert_eq!(e.kind, ErrorKind::ChannelClosed, "{e}");
    assert_eq!(e.pid, 2);
    assert!(e.message.contains("process 2"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(2), "took {:?}", t.elapsed());
    assert!(!ch.is_open().unwrap());
    drop(ch);
    assert_eq!(c.owned_channels(), 0, "the dead producer's reference went with it");
    c.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn waiters_on_a_dead_owner_fail_naming_it() {
    let c = head();
    c.addprocs(2, &opts()).unwrap();
    let r = ChannelRef::from_bytes(&c.remotecall_fetch(2, "chan_new", &1u32.to_le_bytes()).unwrap()).unwrap();
    assert_eq!(r.owner, 2);
    let ch = c.import_channel(r).unwrap();
    let here = ch.take_async().unwrap();
    // Worker 3 waits on it too, worker to worker.
    let r3 = ch.export().unwrap();
    let there = c.remotecall(3, "chan_take", &with_u32(r3, u32::MAX)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(!here.is_ready());
    kill_worker(&c, 2);
    let t = Instant::now();
    let e = here.wait(Some(Duration::from_secs(3))).unwrap_err();
    assert_eq!(e.kind, ErrorKind::ProcessExited);
    assert_eq!(e.pid, 2);
    assert!(t.elapsed() < Duration::from_secs(1), "took {:?}", t.elapsed());
    let (kind, pid, msg) = outcome(there.fetch(Some(Duration::from_secs(5))).unwrap()).unwrap_err();
    assert_eq!(kind, ErrorKind::ProcessExited as u8, "{msg}");
    assert_eq!(pid, 2);
    // Later operations fail the same way.
    assert_eq!(ch.put(b"x").unwrap_err().kind, ErrorKind::ProcessExited);
    c.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn a_reference_forwarded_to_a_third_process_is_freed() {
    let c = head();
    c.addprocs(3, &opts()).unwrap();
    let ch = c.channel(0, 1).unwrap();
    assert_eq!(c.owned_channels(), 1);
    // Head -> 2 -> 3: worker 2 exports its import again (a round trip to
    // the head), worker 3 holds that; worker 2 drops its own.
    let r = ch.export().unwrap();
    c.remotecall_fetch(2, "chan_forward", &with_u32(r, 3)).unwrap();
    drop(ch);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(c.owned_channels(), 1, "worker 3 holds it");
    c.remotecall_fetch(3, "chan_release", &[]).unwrap();
    assert!(wait_until(Duration::from_secs(3), || c.owned_channels() == 0), "the owner still keeps {}", c.owned_channels());
    // A holder that dies releases what it held.
    let ch = c.channel(0, 1).unwrap();
    let r = ch.export().unwrap();
    c.remotecall_fetch(4, "chan_hold", &r.to_bytes()).unwrap();
    drop(ch);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(c.owned_channels(), 1);
    kill_worker(&c, 4);
    assert!(wait_until(Duration::from_secs(3), || c.owned_channels() == 0), "a dead holder kept its reference");
    // Kept by worker 2, forwarded by worker 3 back to the head: freed on 2.
    let held = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let h = held.clone();
    c.register_fn("chan_hold", move |call| {
        let r = ChannelRef::from_bytes(&call.args()[..12]).ok_or("no reference")?;
        h.lock().push(call.node().import_channel(r).map_err(|e| e.to_string())?);
        Ok(Vec::new())
    })
    .unwrap();
    let ch = c.channel(2, 1).unwrap();
    let r = ch.export().unwrap();
    c.remotecall_fetch(3, "chan_forward", &with_u32(r, 1)).unwrap();
    drop(ch);
    let owned_by_2 = || u32_of(&c.remotecall_fetch(2, "chan_owned", &[]).unwrap());
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(owned_by_2(), 1, "the head holds the forwarded reference");
    held.lock().clear();
    assert!(wait_until(Duration::from_secs(3), || owned_by_2() == 0));
    c.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn a_dead_reader_parked_on_a_channel_never_takes_an_element() {
    let c = head();
    c.addprocs(1, &opts()).unwrap();
    let ch = c.channel(0, 1).unwrap();
    let r = ch.export().unwrap();
    let _parked = parked_take(&c, 2, r);
    kill_worker(&c, 2);
    assert!(wait_until(Duration::from_secs(3), || c.procs() == vec![1]));
    ch.put(b"kept").unwrap();
    assert_eq!(&*ch.take_timeout(Some(Duration::from_secs(2))).unwrap(), b"kept");
    c.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn a_timed_out_take_loses_nothing_and_an_echo_needs_no_thread() {
    let c = head();
    c.addprocs(1, &opts()).unwrap();
    // Worker 2 times out on an empty channel kept here; then gets an element.
    let ch = c.channel(0, 1).unwrap();
    let r = ch.export().unwrap();
    let (kind, _, _) = outcome(&c.remotecall_fetch(2, "chan_take", &with_u32(r, 50)).unwrap()).unwrap_err();
    assert_eq!(kind, ErrorKind::Timeout as u8);
    ch.put(b"one").unwrap();
    let r = ch.export().unwrap();
    assert_eq!(outcome(&c.remotecall_fetch(2, "chan_take", &with_u32(r, 2000)).unwrap()).unwrap(), b"one");
    // Ping-pong: a on worker 2, b here; worker 2 echoes a into b.
    let a = c.channel(2, 1).unwrap();
    let b = c.channel(0, 1).unwrap();
    let args = [a.export().unwrap().to_bytes(), b.export().unwrap().to_bytes()].concat();
    c.remotecall_fetch(2, "chan_echo", &args).unwrap();
    for i in 0..1000u32 {
        a.put(&i.to_le_bytes()).unwrap();
        assert_eq!(u32_of(&b.take().unwrap()), i);
    }
    // Closing a ends the echo, which releases its references.
    a.close().unwrap();
    drop(a);
    drop(b);
    drop(ch);
    assert!(wait_until(Duration::from_secs(3), || c.owned_channels() == 0 && u32_of(&c.remotecall_fetch(2, "chan_owned", &[]).unwrap()) == 0));
    c.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn a_channel_kept_by_a_worker_closes_when_the_worker_it_is_bound_to_dies() {
    let c = head();
    c.addprocs(2, &opts()).unwrap();
    // Kept by 2, bound to 3: 2 learns of 3's death from the head.
    let ch = c.channel(2, 1).unwrap();
    ch.bind(3).unwrap();
    let waiting = ch.take_async().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    kill_worker(&c, 3);
    let t = Instant::now();
    let e = waiting.wait(Some(Duration::from_secs(5))).unwrap_err();
    assert_eq!(e.kind, ErrorKind::ChannelClosed, "{e}");
    assert_eq!(e.pid, 3);
    assert!(t.elapsed() < Duration::from_secs(2), "took {:?}", t.elapsed());
    assert!(!ch.is_open().unwrap());
    c.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn in_host_mode_channel_futures_complete_without_poll_and_are_events() {
    use cluster::node::events;
    let c = Cluster::init(Config { dispatch: cluster::DispatchMode::Host, ..Config::default() }).unwrap();
    c.addprocs(1, &opts()).unwrap();
    let ch = c.channel(0, 1).unwrap();
    let f = ch.take_async().unwrap();
    let r = ch.export().unwrap();
    // The worker puts into the head's channel: served by the library's
    // threads, not by poll (no handler of the head runs).
    let p = c.remotecall(2, "chan_produce", &with_u32(r, 1)).unwrap();
    assert_eq!(u32_of(f.fetch(Some(Duration::from_secs(5))).unwrap()), 0);
    assert!(outcome(p.fetch(Some(Duration::from_secs(5))).unwrap()).is_ok());
    let mut ready = false;
    for _ in 0..100 {
        ready |= c.poll(64).unwrap().iter().any(|e| e.is(events::core::SERVICE, events::core::FUTURE_READY) && e.id == f.id());
        if ready {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(ready, "no FUTURE_READY event for the take");
    c.shutdown(Duration::from_secs(10)).unwrap();
}

/// A put here that answers a worker's waiting take lingers for this
/// thread's next write to that worker (the echo's request carries it): with
/// none, and no wait either, the element still reaches the worker.
#[test]
fn an_async_put_that_answers_a_remote_take_reaches_it_with_nothing_following() {
    let c = head();
    c.addprocs(1, &opts()).unwrap();
    let ch = c.channel(0, 1).unwrap();
    let r = ch.export().unwrap();
    let taker = parked_take(&c, 2, r);
    let put = ch.put_async(&7u32.to_le_bytes()).unwrap();
    assert!(put.is_ready(), "a put into a channel with a waiting taker is done at once");
    // No wait, no other message: the flusher writes the answer.
    assert!(wait_until(Duration::from_secs(5), || taker.is_ready()), "the worker's take was never answered");
    assert_eq!(outcome(taker.fetch(None).unwrap()).map(|v| u32_of(&v)), Ok(7));
    // A blocking put answers at once (it flushes before it returns).
    let taker = parked_take(&c, 2, r);
    ch.put(&8u32.to_le_bytes()).unwrap();
    assert_eq!(outcome(taker.fetch(Some(Duration::from_secs(5))).unwrap()).map(|v| u32_of(&v)), Ok(8));
    drop(put);
    c.shutdown(Duration::from_secs(10)).unwrap();
}
