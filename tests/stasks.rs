//! Server tasks between real processes (workers are
//! src/bin/cluster-test-worker.rs, whose "stask_*" functions keep a count
//! in their task's state): one task per worker (or the head alone), state
//! kept across pmap_stasks calls, mismatched argument counts refused, a
//! failing call reported with the task serving on, a dead worker's task
//! failing with ProcessExited, stop dropping every task.

use cluster::prelude::*;
use cluster::wire::decode_payload;
use cluster::{Cluster, Config, ErrorKind, LaunchOptions};
use std::time::Duration;

const WORKER: &str = env!("CARGO_BIN_EXE_cluster-test-worker");

fn count(v: &[u8]) -> (u32, u32, Vec<u8>) {
    decode_payload(v).unwrap()
}

#[test]
fn tasks_keep_their_state_across_calls_and_fail_alone() {
    let c = Cluster::init(Config::default()).unwrap();
    let ids = c.addprocs(2, &LaunchOptions { program: Some(WORKER.into()), args: Some(vec![]), ..Default::default() }).unwrap();
    let h = c.start_stasks(None).unwrap();
    assert_eq!((h.count(), h.pids()), (2, &ids[..]), "one task per worker");
    for round in 1..=3u32 {
        let r = h.pmap("stask_count", &[b"a", b"b"]).unwrap();
        let got: Vec<_> = r.iter().map(|v| count(v.as_ref().unwrap())).collect();
        assert_eq!(got, vec![(0, round, b"a".to_vec()), (1, round, b"b".to_vec())], "state kept by each task");
    }
    let e = h.pmap("stask_count", &[b"only one"]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    assert!(e.message.contains("1 argument(s) for 2 server task(s)"), "{e}");
    // One task's call fails; the other's succeeds; both serve on.
    let r = h.pmap("stask_fail", &[b"", b""]).unwrap();
    assert!(r[0].is_ok());
    let e = r[1].as_ref().unwrap_err();
    assert_eq!((e.kind, e.pid), (ErrorKind::Remote, ids[1]), "{e}");
    assert!(e.message.contains("task 1 fails on purpose"), "{e}");
    assert_eq!(count(h.pmap("stask_count", &[b"", b""]).unwrap()[1].as_ref().unwrap()).1, 4);
    // A plain call is no server task.
    let e = c.remotecall_fetch(ids[0], "stask_count", b"x").unwrap_err();
    assert!(e.message.contains("not a server task"), "{e}");
    // Two sets are independent.
    let h2 = c.start_stasks(Some(&[ids[1]])).unwrap();
    assert_eq!(count(h2.pmap("stask_count", &[b""]).unwrap()[0].as_ref().unwrap()).1, 1);
    h2.stop(None).unwrap();
    // A dead worker's task fails with ProcessExited naming it.
    let os = c.remotecall_fetch(ids[0], "getpid", &[]).unwrap();
    cluster::sys::kill(u32::from_le_bytes(os[..4].try_into().unwrap()), cluster::sys::SIGKILL);
    let r = h.pmap("stask_count", &[b"", b""]).unwrap();
    let e = r[0].as_ref().unwrap_err();
    assert_eq!((e.kind, e.pid), (ErrorKind::ProcessExited, ids[0]), "{e}");
    assert_eq!(count(r[1].as_ref().unwrap()).1, 5, "the survivor's task serves on");
    // Stop runs the freeing function on the survivors, then drops the tasks.
    h.stop(Some("stask_free")).unwrap();
    let r = h.pmap("stask_count", &[b"", b""]).unwrap();
    assert!(r[1].as_ref().unwrap_err().message.contains("not a server task"));
    c.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn a_lone_head_runs_its_one_task_itself() {
    let c = Cluster::init(Config::default()).unwrap();
    c.register_fn("count_here", |call| {
        let t = cluster::task_of(call).ok_or("not a server task")?;
        let mut st = t.task.state.lock();
        let n = st.get_or_insert_with(|| Box::new(0u32)).downcast_mut::<u32>().unwrap();
        *n += 1;
        Ok(n.to_le_bytes().to_vec())
    })
    .unwrap();
    let h = c.start_stasks(None).unwrap();
    assert_eq!(h.pids(), &[1]);
    for i in 1..=2u32 {
        assert_eq!(h.pmap("count_here", &[b""]).unwrap()[0].as_ref().unwrap(), &i.to_le_bytes());
    }
    h.stop(None).unwrap();
    assert!(h.pmap("count_here", &[b""]).unwrap()[0].is_err());
    c.shutdown(Duration::from_secs(10)).unwrap();
}
