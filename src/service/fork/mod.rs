//! Fork-based parallelism (PTools' `pfork`): `pfork(n, f)` forks n
//! children of the calling process; child i runs `f(i)` on a copy of the
//! parent's memory as it was at the fork and returns bytes (or an error
//! message); the parent gets the n outcomes in index order.
//!
//! It is no wire service: nothing crosses a connection, and it needs no
//! cluster at all (a lone program, a head, a worker inside a handler: all
//! may call it). It sits with the capabilities because it is one (PTools'
//! third, beside shared memory and server tasks) and works with them:
//! segments mapped before the fork (`shm::Segment`) are shared with the
//! children, which is how PTools' `pfork_shm` gives children output arrays
//! the parent reads afterwards; ordinary memory is copy-on-write, so only
//! the returned bytes and shared segments come back.
//!
//! **Failures are per child and never a hang or a garbage value.** Each
//! child writes one frame on its own pipe: magic, a status byte (value or
//! error message) and a length, then the bytes; a frame shorter or longer
//! than its length says, or not a frame at all, is an error, never a
//! value. A value counts only when the child then exited with status 0.
//! A child that returns an error, panics, calls `exit`, crashes
//! (segfault, abort) or is killed gets its own `Error` naming it (index
//! and OS pid) and what happened: its message, its exit status, or the
//! signal by number and name. With `ForkOptions::timeout`, children still
//! running at the deadline are SIGKILLed and reported as timed out.
//!
//! **Every child is reaped.** `pfork` returns only once each child has
//! been waited for; if the waiting itself ends early (a panic, an error
//! of poll), a guard SIGKILLs and reaps those left. Signals arriving
//! meanwhile (EINTR) do not end the wait. Children die with their parent:
//! `PR_SET_PDEATHSIG` SIGKILL, set in the child, followed by a check that
//! the parent had not already died. That signal follows the forking
//! *thread*; since `pfork` holds that thread until every child is reaped,
//! it outlives them.
//!
//! **Results are read from all children at once**: one poll over every
//! child's pipe and pidfd, so a child writing a large result never blocks
//! on a full pipe while the parent waits for another. A child's exit is
//! seen on its pidfd (pipes alone would miss it when a grandchild keeps
//! the write end open); without pidfds (old kernels) children are checked
//! every 10 ms.
//!
//! **Forking a multi-threaded process.** The parent is often
//! multi-threaded: libcluster's own threads (reactor, timer, reaper, ...),
//! a C program's, Julia's. Only the forking thread exists in the child,
//! and every lock another thread held at the fork stays held there.
//! Choices, and why:
//!
//! - *Direct fork, not a zygote.* A fork server started early (Python's
//!   forkserver) is single-threaded, but its children do not see the
//!   caller's state at the call: the function, its captured data, a C
//!   `user_data` pointer, what the parent computed. PTools' `pfork` is
//!   about exactly that state, so the children are forked from the caller.
//! - *The child runs the user's function and nothing of the library.*
//!   After `f(i)` it writes its frame with raw `write` calls on its pipe,
//!   flushes C stdio and `_exit`s: no destructor, no atexit handler, no
//!   lock, no thread, no connection of the library is touched, and it
//!   never returns into the parent's stack frames (`sys::process`).
//!   Holding the library's locks across the fork (`pthread_atfork`) is
//!   therefore not needed: it would stall every library thread at each
//!   fork for a child that never takes those locks.
//! - *What the user's function may do.* glibc's `fork` takes and resets
//!   malloc's and stdio's locks, so allocating and C stdio work in the
//!   child. Other locks held by other threads do not: a child must not
//!   use libcluster objects (a `Cluster`/`Node`, futures, channels, ...),
//!   which may deadlock on a lock held at the fork and would talk on the
//!   parent's connections. From C (and so C++ and Julia) every libcluster
//!   handle is refused in a child (CLUSTER_ERR_WRONG_MODE) before any
//!   lock is taken; from Rust the closure must simply not capture the
//!   cluster (the core keeps no process-wide flag to check). Rust's
//!   `print!` takes std's stdout lock; a line printed by another thread at
//!   the fork could hold it, so prefer `eprintln!`/`println!` sparingly.
//! - *Open cluster connections.* The child inherits every descriptor: the
//!   sockets to peers, the listener, the epoll and event fds. It never
//!   reads or writes them, and its copies close at `_exit` without a
//!   `shutdown`, so the parent's connections are unaffected (a socket ends
//!   only when its last descriptor is closed). They are not closed in the
//!   child, since a user's function may rely on inherited descriptors of
//!   its own. The parent's library threads keep running while `pfork`
//!   waits: heartbeats are answered, calls served.
//! - *stdio.* Before forking, the parent flushes C stdio (`fflush(NULL)`)
//!   and Rust's stdout, so children do not inherit buffered output and
//!   write it again; a child flushes C stdio before `_exit`. Output a
//!   Rust child leaves in std's stdout buffer (a `print!` without a
//!   newline) is lost.
//! - *Signals.* A child keeps the process's signal handlers and the
//!   forking thread's mask. A crash is reported as its signal when the
//!   handler lets it kill the process; a runtime's handler that catches it
//!   and exits (a sanitizer's SEGV report) shows as that exit status.
//! - *Julia* (done by the Julia binding through the C API): its code
//!   generator writes through a `/proc/self/mem` descriptor opened once in
//!   the parent, so a child must open a fresh one and `dup2` it over the
//!   inherited descriptor before running any Julia code.

use crate::error::{Error, ErrorKind};
use crate::sys::{self, process as os, process::ExitStatus, PidFd};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// How `pfork_with` runs its children.
#[derive(Clone, Debug, Default)]
pub struct ForkOptions {
    /// The longest the children may run, counted from the first fork;
    /// those still running then are SIGKILLed, reaped, and reported as
    /// timed out (`ErrorKind::Timeout`). None: no limit.
    pub timeout: Option<Duration>,
}

/// How a child ended, as far as the parent could tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Its function returned these bytes, and it exited cleanly.
    Returned(Vec<u8>),
    /// Its function returned this error (or panicked with it).
    Failed(String),
    /// It exited with this status before returning a result (`exit(3)`).
    Exited(i32),
    /// A signal ended it (a crash, `kill`).
    Signaled { signal: i32, core_dumped: bool },
    /// Still running at the timeout: killed with SIGKILL.
    TimedOut(Duration),
    /// It exited with status 0 but without a complete result frame (it
    /// called `_exit(0)`, or wrote on its result pipe); why.
    NoResult(String),
    /// It was never forked (the fork or its pipe failed); why.
    NotStarted(String),
}

/// One child's report: its index, OS pid (0 when not started) and outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForkChild {
    pub index: usize,
    pub os_pid: u32,
    pub outcome: Outcome,
}

impl ForkChild {
    /// The child's value, or an error naming it and what happened.
    pub fn result(&self) -> Result<&[u8], Error> {
        match &self.outcome {
            Outcome::Returned(v) => Ok(v),
            _ => Err(self.error().expect("every other outcome is an error")),
        }
    }

    /// As `result`, taking the bytes.
    pub fn into_result(self) -> Result<Vec<u8>, Error> {
        match self.outcome {
            Outcome::Returned(v) => Ok(v),
            _ => Err(self.error().expect("every other outcome is an error")),
        }
    }

    /// None when the child returned a value; otherwise its error:
    /// `Remote` (its function failed), `ProcessExited` (it exited, was
    /// killed or crashed, or wrote no complete result), `Timeout`, or
    /// `Io` (not started).
    pub fn error(&self) -> Option<Error> {
        let who = format!("child {} (pid {})", self.index, self.os_pid);
        let (kind, message) = match &self.outcome {
            Outcome::Returned(_) => return None,
            Outcome::Failed(m) => (ErrorKind::Remote, format!("{who} failed: {m}")),
            Outcome::Exited(c) => (ErrorKind::ProcessExited, format!("{who} exited with status {c} before returning a result")),
            Outcome::Signaled { signal, core_dumped } => (
                ErrorKind::ProcessExited,
                format!("{who} was killed by signal {signal} ({}){}", os::signal_name(*signal), if *core_dumped { ", core dumped" } else { "" }),
            ),
            Outcome::TimedOut(t) => (ErrorKind::Timeout, format!("{who} was still running after the timeout of {} ms: killed with SIGKILL", t.as_millis())),
            Outcome::NoResult(why) => (ErrorKind::ProcessExited, format!("{who} exited with status 0 without a complete result: {why}")),
            Outcome::NotStarted(why) => (ErrorKind::Io, format!("child {} was not started: {why}", self.index)),
        };
        Some(Error::new(kind, message))
    }
}

/// PTools' `pfork(n, f)`: child i runs `f(i)`; the n results in index
/// order, each the child's bytes or an error naming the child and what
/// happened (see the module doc). Blocks until every child is reaped.
pub fn pfork<F>(n: usize, f: F) -> Vec<Result<Vec<u8>, Error>>
where
    F: FnMut(usize) -> Result<Vec<u8>, String>,
{
    pfork_with(n, &ForkOptions::default(), f).into_iter().map(ForkChild::into_result).collect()
}

/// `pfork` with options, giving each child's full report.
///
/// `f` is only ever called in the children, each on its own copy of it
/// (so it may mutate what it captured); in the parent it is dropped unrun.
pub fn pfork_with<F>(n: usize, opts: &ForkOptions, mut f: F) -> Vec<ForkChild>
where
    F: FnMut(usize) -> Result<Vec<u8>, String>,
{
    // Children must not inherit output the parent buffered (they would
    // write it again).
    let _ = std::io::stdout().flush();
    os::flush_c_stdio();
    let start = Instant::now();
    let mut brood = Brood { kids: Vec::with_capacity(n) };
    for index in 0..n {
        let kid = match spawn(index, &mut f) {
            Ok(k) => k,
            Err(why) => Kid::not_started(index, why),
        };
        brood.kids.push(kid);
    }
    brood.wait_all(opts.timeout.map(|t| (start + t, t)));
    std::mem::take(&mut brood.kids).into_iter().map(Kid::report).collect()
}

const MAGIC: [u8; 4] = *b"LCFK";
const HEADER: usize = 13;
const STATUS_VALUE: u8 = 0;
const STATUS_ERROR: u8 = 1;

/// A result frame's header: magic, status, payload length (u64 LE).
fn frame_header(status: u8, len: usize) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..4].copy_from_slice(&MAGIC);
    h[4] = status;
    h[5..].copy_from_slice(&(len as u64).to_le_bytes());
    h
}

/// What a header announces: (status, payload length), or what is wrong.
fn parse_header(h: &[u8]) -> Result<(u8, u64), String> {
    if h.len() < HEADER {
        return Err(if h.is_empty() { "it wrote nothing".into() } else { format!("it wrote {} bytes of a {HEADER}-byte frame header", h.len()) });
    }
    if h[..4] != MAGIC || (h[4] != STATUS_VALUE && h[4] != STATUS_ERROR) {
        return Err("what it wrote is not a result frame".into());
    }
    Ok((h[4], u64::from_le_bytes(h[5..HEADER].try_into().expect("8 bytes"))))
}

/// The frame read from a child: its value or error, or what is wrong with it.
fn parse_frame(head: &[u8], payload: Vec<u8>, extra: u64) -> Result<Result<Vec<u8>, String>, String> {
    let (status, len) = parse_header(head)?;
    if (payload.len() as u64) < len {
        return Err(format!("it wrote {} of its result's {len} bytes", payload.len()));
    }
    if extra > 0 || payload.len() as u64 > len {
        return Err(format!("it wrote {} bytes past its result frame", extra + payload.len() as u64 - len));
    }
    Ok(match status {
        STATUS_VALUE => Ok(payload),
        _ => Err(String::from_utf8_lossy(&payload).into_owned()),
    })
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_else(|| "a panic".into())
}

/// Forks child `index` with its result pipe.
fn spawn<F>(index: usize, f: &mut F) -> Result<Kid, String>
where
    F: FnMut(usize) -> Result<Vec<u8>, String>,
{
    let (read, write) = os::pipe().map_err(|e| format!("cannot make its result pipe: {e}"))?;
    os::set_nonblocking(&read).map_err(|e| format!("cannot make its result pipe non-blocking: {e}"))?;
    let wfd = write.as_raw_fd();
    let pid = os::fork_child(true, || child_main(wfd, run_child(f, index)).unwrap_or(1)).map_err(|e| format!("fork failed: {e}"))?;
    drop(write);
    Ok(Kid {
        index,
        pid,
        pidfd: PidFd::open(pid).ok(),
        pipe: Some(read),
        head: Vec::with_capacity(HEADER),
        payload: Vec::new(),
        extra: 0,
        status: None,
        timed_out: None,
        not_started: None,
    })
}

/// The child's end: its frame on the pipe, C stdio flushed; the exit status.
fn child_main(wfd: RawFd, out: Result<Vec<u8>, String>) -> Option<i32> {
    let (status, body) = match &out {
        Ok(v) => (STATUS_VALUE, v.as_slice()),
        Err(m) => (STATUS_ERROR, m.as_bytes()),
    };
    os::flush_c_stdio();
    os::write_all(wfd, &[&frame_header(status, body.len()), body]).ok()?;
    Some(0)
}

/// Runs `f(index)` for a child, a panic becoming its error.
fn run_child<F>(f: &mut F, index: usize) -> Result<Vec<u8>, String>
where
    F: FnMut(usize) -> Result<Vec<u8>, String>,
{
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(index))).unwrap_or_else(|p| Err(format!("panicked: {}", panic_text(&*p))))
}

/// A child as the parent follows it.
struct Kid {
    index: usize,
    pid: u32,
    pidfd: Option<PidFd>,
    /// The read end of its result pipe, until it is reaped.
    pipe: Option<OwnedFd>,
    head: Vec<u8>,
    payload: Vec<u8>,
    /// Bytes past a complete frame (counted, not kept).
    extra: u64,
    /// Once reaped: how it ended, or why that is unknown.
    status: Option<Result<ExitStatus, String>>,
    timed_out: Option<Duration>,
    not_started: Option<String>,
}

impl Kid {
    fn not_started(index: usize, why: String) -> Kid {
        Kid {
            index,
            pid: 0,
            pidfd: None,
            pipe: None,
            head: Vec::new(),
            payload: Vec::new(),
            extra: 0,
            status: Some(Err(String::new())),
            timed_out: None,
            not_started: Some(why),
        }
    }

    fn live(&self) -> bool {
        self.status.is_none()
    }

    /// Reads what its pipe holds now: the header, then the payload
    /// (sized from the header, within reason), then anything past it.
    fn read_pipe(&mut self) {
        let Some(fd) = &self.pipe else { return };
        let raw = fd.as_raw_fd();
        let eof = (|| -> std::io::Result<bool> {
            while self.head.len() < HEADER {
                let mut b = [0u8; HEADER];
                let want = HEADER - self.head.len();
                match sys::read_nonblocking(raw, &mut b[..want])? {
                    None => return Ok(false),
                    Some(0) => return Ok(true),
                    Some(k) => self.head.extend_from_slice(&b[..k]),
                }
            }
            let declared = parse_header(&self.head).map(|(_, l)| l).unwrap_or(0);
            if self.payload.capacity() == 0 && declared > 0 {
                self.payload.reserve(declared.min(256 << 20) as usize);
            }
            let eof = os::read_available(fd, &mut self.payload)?;
            // Past the frame: counted and dropped, so a child writing
            // without end cannot fill the parent's memory.
            if self.payload.len() as u64 > declared {
                self.extra += self.payload.len() as u64 - declared;
                self.payload.truncate(declared as usize);
            }
            Ok(eof)
        })()
        .unwrap_or(true);
        if eof {
            self.pipe = None;
        }
    }

    /// Reaps it if it has ended (`block`: waits); true once reaped.
    fn try_reap(&mut self, block: bool) -> bool {
        match os::wait_child(self.pid, block) {
            Ok(None) => return false,
            Ok(Some(st)) => self.status = Some(Ok(st)),
            Err(e) => self.status = Some(Err(format!("its exit status was taken elsewhere ({e}; is SIGCHLD ignored?)"))),
        }
        // It has ended: what it wrote is all in the pipe.
        self.read_pipe();
        self.pipe = None;
        self.pidfd = None;
        true
    }

    fn report(mut self) -> ForkChild {
        let outcome = if let Some(why) = self.not_started.take() {
            Outcome::NotStarted(why)
        } else if let Some(t) = self.timed_out {
            Outcome::TimedOut(t)
        } else {
            let frame = parse_frame(&self.head, std::mem::take(&mut self.payload), self.extra);
            match self.status.take().expect("reaped") {
                Ok(ExitStatus::Signaled { signal, core_dumped }) => Outcome::Signaled { signal, core_dumped },
                Ok(ExitStatus::Exited(0)) => match frame {
                    Ok(Ok(v)) => Outcome::Returned(v),
                    Ok(Err(m)) => Outcome::Failed(m),
                    Err(why) => Outcome::NoResult(why),
                },
                Ok(ExitStatus::Exited(c)) => Outcome::Exited(c),
                // Status lost: a complete frame still tells what it did.
                Err(lost) => match frame {
                    Ok(Ok(v)) => Outcome::Returned(v),
                    Ok(Err(m)) => Outcome::Failed(m),
                    Err(why) => Outcome::NoResult(format!("{why}; {lost}")),
                },
            }
        };
        ForkChild { index: self.index, os_pid: self.pid, outcome }
    }
}

/// The children of one `pfork`; dropping it kills and reaps any not reaped.
struct Brood {
    kids: Vec<Kid>,
}

impl Brood {
    /// Reads every pipe and reaps every child, until all are reaped or the
    /// deadline passes (then the rest are killed and reaped).
    fn wait_all(&mut self, deadline: Option<(Instant, Duration)>) {
        let mut fds: Vec<RawFd> = Vec::new();
        let mut owners: Vec<(usize, bool)> = Vec::new();
        loop {
            fds.clear();
            owners.clear();
            let mut unwatched = false;
            for (k, kid) in self.kids.iter().enumerate().filter(|(_, k)| k.live()) {
                if let Some(p) = &kid.pipe {
                    fds.push(p.as_raw_fd());
                    owners.push((k, false));
                }
                match &kid.pidfd {
                    Some(pf) => {
                        fds.push(pf.fd());
                        owners.push((k, true));
                    }
                    None => unwatched = true,
                }
            }
            if fds.is_empty() && !unwatched {
                return;
            }
            let now = Instant::now();
            let mut wait = deadline.map(|(d, _)| d.saturating_duration_since(now));
            if let Some((d, limit)) = deadline {
                if now >= d {
                    self.kill_live(Some(limit));
                    return;
                }
            }
            if unwatched {
                wait = Some(wait.map_or(Duration::from_millis(10), |w| w.min(Duration::from_millis(10))));
            }
            let ready = match sys::poll_many(&fds, wait) {
                Ok(r) => r,
                Err(_) => {
                    self.kill_live(None);
                    return;
                }
            };
            let mut check: Vec<usize> = Vec::new();
            for i in ready {
                let (k, is_pidfd) = owners[i];
                if is_pidfd {
                    check.push(k);
                } else {
                    self.kids[k].read_pipe();
                }
            }
            if unwatched {
                check.extend(self.kids.iter().enumerate().filter(|(_, k)| k.live() && k.pidfd.is_none()).map(|(i, _)| i));
            }
            for k in check {
                if self.kids[k].live() {
                    self.kids[k].try_reap(false);
                }
            }
        }
    }

    /// SIGKILLs and reaps every child not reaped yet (marked timed out
    /// when `timed_out` is given).
    fn kill_live(&mut self, timed_out: Option<Duration>) {
        for kid in self.kids.iter_mut().filter(|k| k.live()) {
            sys::kill(kid.pid, sys::SIGKILL);
            kid.timed_out = timed_out;
        }
        for kid in self.kids.iter_mut().filter(|k| k.live()) {
            kid.try_reap(true);
        }
    }
}

impl Drop for Brood {
    fn drop(&mut self) {
        self.kill_live(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(status: u8, body: &[u8]) -> (Vec<u8>, Vec<u8>) {
        (frame_header(status, body.len()).to_vec(), body.to_vec())
    }

    #[test]
    fn frames_are_complete_or_an_error() {
        let (h, p) = frame(STATUS_VALUE, b"value");
        assert_eq!(parse_frame(&h, p.clone(), 0), Ok(Ok(b"value".to_vec())));
        let (he, pe) = frame(STATUS_ERROR, b"bad input");
        assert_eq!(parse_frame(&he, pe, 0), Ok(Err("bad input".into())));
        assert_eq!(parse_frame(&h, b"val".to_vec(), 0), Err("it wrote 3 of its result's 5 bytes".into()));
        assert_eq!(parse_frame(&h, b"value!".to_vec(), 0), Err("it wrote 1 bytes past its result frame".into()));
        assert_eq!(parse_frame(&h, p.clone(), 7), Err("it wrote 7 bytes past its result frame".into()));
        assert_eq!(parse_frame(&h[..5], Vec::new(), 0), Err("it wrote 5 bytes of a 13-byte frame header".into()));
        assert_eq!(parse_frame(&[], Vec::new(), 0), Err("it wrote nothing".into()));
        let mut bad = h.clone();
        bad[0] = b'X';
        assert_eq!(parse_frame(&bad, p.clone(), 0), Err("what it wrote is not a result frame".into()));
        bad = h.clone();
        bad[4] = 9;
        assert!(parse_frame(&bad, p, 0).is_err());
    }

    #[test]
    fn reports_name_the_child_and_what_happened() {
        let r = |outcome| ForkChild { index: 3, os_pid: 4711, outcome };
        assert_eq!(r(Outcome::Returned(vec![1])).result().unwrap(), &[1]);
        let e = r(Outcome::Signaled { signal: libc::SIGSEGV, core_dumped: true }).error().unwrap();
        assert_eq!((e.kind, e.message.as_str()), (ErrorKind::ProcessExited, "child 3 (pid 4711) was killed by signal 11 (SIGSEGV), core dumped"));
        let e = r(Outcome::Exited(3)).into_result().unwrap_err();
        assert_eq!(e.message, "child 3 (pid 4711) exited with status 3 before returning a result");
        assert_eq!(r(Outcome::Failed("no".into())).error().unwrap().kind, ErrorKind::Remote);
        assert_eq!(r(Outcome::TimedOut(Duration::from_millis(250))).error().unwrap().kind, ErrorKind::Timeout);
        assert!(r(Outcome::NotStarted("fork failed: EAGAIN".into())).error().unwrap().message.starts_with("child 3 was not started"));
    }

    /// The guard behind "every child is reaped": a wait that ends early
    /// (a panic unwinding through `pfork_with`) drops the brood, which
    /// kills and reaps the children still running.
    #[test]
    fn dropping_the_brood_kills_and_reaps_its_children() {
        let mut hang = |_| -> Result<Vec<u8>, String> {
            std::thread::sleep(Duration::from_secs(60));
            Ok(Vec::new())
        };
        let kids: Vec<Kid> = (0..2).map(|i| spawn(i, &mut hang).unwrap()).collect();
        let pids: Vec<u32> = kids.iter().map(|k| k.pid).collect();
        let me = std::process::id();
        assert!(pids.iter().all(|&p| os::state_and_parent(p).is_some_and(|(_, pp)| pp == me)));
        let t = Instant::now();
        drop(Brood { kids });
        assert!(t.elapsed() < Duration::from_secs(10));
        for p in pids {
            assert!(os::state_and_parent(p).is_none_or(|(_, pp)| pp != me), "child {p} is left: {:?}", os::state_and_parent(p));
        }
    }

    #[test]
    fn a_panicking_function_is_the_childs_error() {
        let got = pfork(2, |i| if i == 1 { panic!("boom {i}") } else { Ok(vec![i as u8]) });
        assert_eq!(got[0].as_deref().unwrap(), &[0]);
        let e = got[1].as_ref().unwrap_err();
        assert!(e.message.contains("child 1") && e.message.contains("panicked: boom 1"), "{e}");
    }
}
