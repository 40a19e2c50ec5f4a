//! Admission: one thread accepts every incoming connection and takes it
//! through the handshake and its first message, all connections at once
//! on non-blocking sockets, before handing it to the connection layer.
//!
//! A stranger gets nothing it can hold on to:
//!
//! - at most `MAX_ADMITTING` connections are being admitted at a time (a
//!   file descriptor and a few hundred bytes each, no thread); when a new
//!   one arrives with all slots taken, the oldest still unauthenticated is
//!   closed, so a flood cannot starve a peer whose handshake takes
//!   milliseconds, and a joining worker retries a connection closed so;
//! - a connection has `Config::handshake_timeout` in total from its
//!   accept to authenticate and send its first message, however slowly
//!   it drips bytes;
//! - authenticated connections are served by their own machinery, so
//!   none of this delays calls between members.
//!
//! The first message says who the peer is: a JOIN to the head (the control
//! service admits it), or a HELLO from another worker. A HELLO names an id
//! the head announced and proves, with the key the head gave both workers
//! for each other, that it is that worker: HMAC(key, label, both handshake
//! nonces, both ids). An id not announced yet is waited for, briefly: the
//! head's announcement may still be on its way.

use super::{session, Hello, Node, Topology, HEAD_ID};
use crate::error::{Error, ErrorKind};
use crate::net::auth::{Handshake, Progress, Side, Transcript};
use crate::net::Conn;
use crate::sys;
use crate::wire::Frame;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Connections being admitted at once, at most.
pub const MAX_ADMITTING: usize = 64;
/// The largest payload of a connection's first frame (JOIN and HELLO carry
/// none).
const FIRST_FRAME_MAX: u64 = 4096;
/// How long a HELLO naming an id the head has not announced waits for it.
pub(crate) const HELLO_WAIT: Duration = Duration::from_secs(2);
/// The label of a HELLO's proof.
pub(crate) const HELLO_LABEL: &[u8] = b"libcluster hello";

/// What the admission thread did, for tests and diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdmissionStats {
    /// Connections being admitted now.
    pub admitting: usize,
    /// The most that were being admitted at once.
    pub peak: usize,
    /// Closed to make room (or for want of it).
    pub shed: u64,
    /// Closed for not completing in time.
    pub timed_out: u64,
    /// Refused (failed handshake, bad first message, unproven identity).
    pub refused: u64,
    pub admitted: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    admitting: AtomicUsize,
    peak: AtomicUsize,
    shed: AtomicU64,
    timed_out: AtomicU64,
    refused: AtomicU64,
    admitted: AtomicU64,
}

impl Counters {
    pub(crate) fn stats(&self) -> AdmissionStats {
        AdmissionStats {
            admitting: self.admitting.load(Ordering::Acquire),
            peak: self.peak.load(Ordering::Acquire),
            shed: self.shed.load(Ordering::Acquire),
            timed_out: self.timed_out.load(Ordering::Acquire),
            refused: self.refused.load(Ordering::Acquire),
            admitted: self.admitted.load(Ordering::Acquire),
        }
    }
}

struct Entry {
    from: String,
    accepted: Instant,
    deadline: Instant,
    /// Just accepted: advance it once before waiting (it greets first).
    fresh: bool,
    state: State,
}

enum State {
    Handshake {
        stream: TcpStream,
        hs: Box<Handshake>,
    },
    /// Authenticated; `fd` is the connection's socket, polled until its
    /// first message is in.
    First {
        conn: Arc<Conn>,
        fd: RawFd,
        transcript: Transcript,
    },
    /// A HELLO for an id the head has not announced (yet).
    Hello {
        conn: Arc<Conn>,
        frame: Frame,
        transcript: Transcript,
        until: Instant,
    },
    /// Only while a state is moved out.
    Moved,
}

impl Entry {
    fn fd(&self) -> Option<i32> {
        match &self.state {
            State::Handshake { stream, .. } => Some(stream.as_raw_fd()),
            State::First { fd, .. } => Some(*fd),
            State::Hello { .. } | State::Moved => None,
        }
    }
    fn authenticated(&self) -> bool {
        !matches!(self.state, State::Handshake { .. })
    }
}

/// What a first message came to.
pub(crate) enum Verdict {
    Admitted,
    /// Not yet decidable: try again shortly.
    Wait,
    Refused(Error),
}

enum Outcome {
    Keep,
    Admitted(Arc<Conn>),
    Refused(Error),
    TimedOut,
}

pub(super) fn spawn(node: &Arc<Node>, listener: TcpListener) {
    let weak = Arc::downgrade(node);
    std::thread::Builder::new().name("cluster-accept".into()).stack_size(256 * 1024).spawn(move || run(&weak, listener)).expect("spawn accept thread");
}

fn run(weak: &Weak<Node>, listener: TcpListener) {
    if let Err(e) = listener.set_nonblocking(true) {
        if let Some(n) = weak.upgrade() {
            n.log.error(format!("cannot accept connections: {e}"));
        }
        return;
    }
    let mut entries: Vec<Entry> = Vec::new();
    let mut ready: Vec<bool> = Vec::new();
    let mut accept_after: Option<Instant> = None;
    let mut shed_logged = 0u64;
    let mut shed_logged_at: Option<Instant> = None;
    loop {
        let Some(node) = weak.upgrade() else { return };
        if node.is_closing() {
            node.admission.admitting.store(0, Ordering::Release);
            return;
        }
        let now = Instant::now();
        if accept_after.is_none_or(|t| now >= t) {
            accept_after = None;
            loop {
                match listener.accept() {
                    Ok((stream, addr)) => node.take(&mut entries, &mut ready, stream, addr),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        if node.is_closing() {
                            return;
                        }
                        // Out of descriptors, most likely: let some go first.
                        node.log.warn(format!("accept failed: {e}"));
                        accept_after = Some(now + Duration::from_millis(20));
                        break;
                    }
                }
            }
        }
        let mut i = 0;
        while i < entries.len() {
            let waiting = matches!(entries[i].state, State::Hello { .. });
            let go = ready[i] || entries[i].fresh || waiting || wants_write(&entries[i]);
            // A HELLO waiting for the head's word ends by its own bound.
            let outcome = if !waiting && Instant::now() >= entries[i].deadline {
                Outcome::TimedOut
            } else if go {
                entries[i].fresh = false;
                node.advance(&mut entries[i])
            } else {
                Outcome::Keep
            };
            match outcome {
                Outcome::Keep => {
                    i += 1;
                    continue;
                }
                Outcome::Admitted(conn) => {
                    conn.set_max_payload(node.cfg.max_message_bytes);
                    node.admission.admitted.fetch_add(1, Ordering::AcqRel);
                    entries.swap_remove(i);
                    ready.swap_remove(i);
                    node.adopt(&conn);
                    continue;
                }
                Outcome::Refused(err) => {
                    node.admission.refused.fetch_add(1, Ordering::AcqRel);
                    let e = &entries[i];
                    if e.authenticated() {
                        node.log.error(format!("dropping connection from {}: {err}", e.from));
                    } else {
                        node.log.warn(format!("rejected connection from {}: {err}", e.from));
                    }
                }
                Outcome::TimedOut => {
                    node.admission.timed_out.fetch_add(1, Ordering::AcqRel);
                    let e = &entries[i];
                    node.log.warn(format!(
                        "rejected connection from {}: not admitted within {:?} (in {})",
                        e.from,
                        node.cfg.handshake_timeout,
                        if e.authenticated() { "its first message" } else { "the handshake" }
                    ));
                }
            }
            let e = entries.swap_remove(i);
            ready.swap_remove(i);
            close(e);
        }
        let shed = node.admission.shed.load(Ordering::Acquire);
        if shed > shed_logged && shed_logged_at.is_none_or(|t: Instant| t.elapsed() >= Duration::from_secs(5)) {
            // Every few seconds under a flood, not once per connection.
            node.log.warn(format!("more than {MAX_ADMITTING} connections were authenticating at once: closed the oldest ({shed} so far)"));
            shed_logged = shed;
            shed_logged_at = Some(Instant::now());
        }
        node.admission.admitting.store(entries.len(), Ordering::Release);

        // Wait for the listener or a connection being admitted.
        let mut fds = Vec::with_capacity(entries.len() + 1);
        let mut owner = Vec::with_capacity(entries.len() + 1);
        if accept_after.is_none() {
            fds.push(listener.as_raw_fd());
            owner.push(usize::MAX);
        }
        let mut next = Instant::now() + Duration::from_secs(1);
        for (k, e) in entries.iter().enumerate() {
            next = next.min(e.deadline);
            if let State::Hello { .. } = e.state {
                next = next.min(Instant::now() + Duration::from_millis(10));
            }
            if wants_write(e) {
                next = next.min(Instant::now() + Duration::from_millis(10));
            }
            if let Some(fd) = e.fd() {
                fds.push(fd);
                owner.push(k);
            }
        }
        if let Some(t) = accept_after {
            next = next.min(t);
        }
        drop(node);
        let timeout = next.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        ready.iter_mut().for_each(|r| *r = false);
        match sys::poll_many(&fds, Some(timeout)) {
            Ok(hits) => {
                for h in hits {
                    if owner[h] != usize::MAX {
                        ready[owner[h]] = true;
                    }
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn wants_write(e: &Entry) -> bool {
    match &e.state {
        State::Handshake { hs, .. } => hs.wants_write(),
        // TLS handshake records the socket did not take yet.
        State::First { conn, .. } => conn.cipher_waiting(),
        _ => false,
    }
}

fn close(e: Entry) {
    match e.state {
        State::Handshake { .. } | State::Moved => {}
        State::First { conn, .. } | State::Hello { conn, .. } => conn.close(),
    }
}

/// Whether a connection's first message is a HELLO the core admits
/// itself (on a worker); any other first message goes to the service its
/// header names (`Service::on_admit`), and is refused when none admits it.
#[doc(hidden)]
pub fn is_hello(head: bool, first: &crate::wire::Header) -> bool {
    (first.service, first.op) == (session::ID, session::HELLO) && !head
}

impl Node {
    /// A new connection: it takes a slot, the oldest unauthenticated one's
    /// when all are taken.
    fn take(&self, entries: &mut Vec<Entry>, ready: &mut Vec<bool>, stream: TcpStream, addr: SocketAddr) {
        if entries.len() >= MAX_ADMITTING {
            self.admission.shed.fetch_add(1, Ordering::AcqRel);
            let oldest = entries.iter().enumerate().filter(|(_, e)| !e.authenticated()).min_by_key(|(_, e)| e.accepted).map(|(k, _)| k);
            match oldest {
                Some(k) => {
                    close(entries.swap_remove(k));
                    ready.swap_remove(k);
                }
                // Every slot holds an authenticated peer: this one waits its turn by retrying.
                None => return,
            }
        }
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        let hs = match Handshake::with_tls(self.cookie.as_bytes(), Side::Server, self.wants_tls(Some(addr.ip()))) {
            Ok(h) => h,
            Err(e) => return self.log.error(format!("handshake setup: {e}")),
        };
        let now = Instant::now();
        entries.push(Entry {
            from: addr.to_string(),
            accepted: now,
            deadline: now + self.cfg.handshake_timeout,
            fresh: true,
            state: State::Handshake { stream, hs: Box::new(hs) },
        });
        ready.push(false);
        self.admission.admitting.store(entries.len(), Ordering::Release);
        self.admission.peak.fetch_max(entries.len(), Ordering::AcqRel);
    }

    /// Takes one connection as far as it can go without blocking.
    fn advance(self: &Arc<Self>, e: &mut Entry) -> Outcome {
        loop {
            match &mut e.state {
                State::Handshake { stream, hs } => match hs.advance(stream) {
                    Ok(Progress::Pending) => return Outcome::Keep,
                    Ok(Progress::Done(transcript)) => {
                        let State::Handshake { stream, .. } = std::mem::replace(&mut e.state, State::Moved) else { unreachable!() };
                        let fd = stream.as_raw_fd();
                        match self.accepted_conn(stream, &transcript) {
                            Ok(conn) => {
                                // A JOIN or HELLO is small: a peer that holds the
                                // cookie still cannot make admission hold a large
                                // first frame.
                                conn.set_max_payload(FIRST_FRAME_MAX);
                                e.state = State::First { conn, fd, transcript }
                            }
                            Err(err) => return Outcome::Refused(err),
                        }
                    }
                    Err(err) => {
                        hs.flush_refusal(stream);
                        return Outcome::Refused(err);
                    }
                },
                State::First { conn, transcript, .. } => {
                    // A deadline of now: one non-blocking attempt, which keeps
                    // what it read of a partial frame for the next.
                    let frame = match conn.read_frame_blocking(Instant::now()) {
                        Ok(f) => f,
                        Err(err) if err.kind == ErrorKind::Timeout => return Outcome::Keep,
                        Err(err) => return Outcome::Refused(err),
                    };
                    let (conn, transcript) = (conn.clone(), *transcript);
                    return match self.admit_first(&conn, &frame, &transcript) {
                        Verdict::Admitted => Outcome::Admitted(conn),
                        Verdict::Refused(err) => Outcome::Refused(err),
                        Verdict::Wait => {
                            let until = Instant::now() + HELLO_WAIT;
                            e.deadline = e.deadline.max(until);
                            e.state = State::Hello { conn, frame, transcript, until };
                            Outcome::Keep
                        }
                    };
                }
                State::Hello { conn, frame, transcript, until } => {
                    return match self.admit_first(conn, frame, transcript) {
                        Verdict::Admitted => Outcome::Admitted(conn.clone()),
                        Verdict::Refused(err) => Outcome::Refused(err),
                        Verdict::Wait if Instant::now() >= *until => {
                            let id = session::decode_hello(&frame.meta).map(|h| h.id).unwrap_or(0);
                            Outcome::Refused(Error::new(ErrorKind::Auth, format!("a peer claimed to be process {id}, which the head has not announced")))
                        }
                        Verdict::Wait => Outcome::Keep,
                    };
                }
                State::Moved => return Outcome::Refused(Error::new(ErrorKind::Protocol, "connection lost during admission")),
            }
        }
    }

    /// Admits a connection by its first message.
    fn admit_first(self: &Arc<Self>, conn: &Arc<Conn>, f: &Frame, transcript: &Transcript) -> Verdict {
        if is_hello(self.head, &f.header) {
            return self.on_hello(conn, f, transcript);
        }
        let r = self
            .services()
            .by_id(f.header.service)
            .and_then(|s| s.on_admit(self, conn, f, transcript))
            .unwrap_or_else(|| Err(Error::new(ErrorKind::Protocol, "unexpected first message")));
        match r {
            Ok(()) => Verdict::Admitted,
            Err(e) => Verdict::Refused(e),
        }
    }

    /// A worker-to-worker connection: believed only for an id the head
    /// announced, with a proof made with the key the head gave for it.
    pub(crate) fn on_hello(self: &Arc<Self>, conn: &Arc<Conn>, f: &Frame, transcript: &Transcript) -> Verdict {
        if self.topology() == Topology::MasterWorker {
            return Verdict::Refused(Error::new(ErrorKind::Topology, "worker-to-worker connections are disabled (topology master_worker)"));
        }
        let info: Hello = match session::decode_hello(&f.meta) {
            Ok(i) => i,
            Err(e) => return Verdict::Refused(e),
        };
        let me = self.myid();
        if info.id == HEAD_ID || info.id == me || info.id == 0 {
            return Verdict::Refused(Error::new(ErrorKind::Auth, format!("a peer claimed to be process {}", info.id)));
        }
        let Some(peer) = self.peer(info.id) else { return Verdict::Wait };
        if peer.is_gone() {
            return Verdict::Refused(Error::exited(info.id));
        }
        let Some(key) = *peer.key.lock() else { return Verdict::Wait };
        if !transcript.verify(&key, HELLO_LABEL, &[&info.id.to_le_bytes(), &me.to_le_bytes()], &info.proof) {
            return Verdict::Refused(Error::new(
                ErrorKind::Auth,
                format!("a peer claiming to be worker {} failed to prove it with the key the head gave", info.id),
            ));
        }
        conn.peer.store(info.id, Ordering::Release);
        conn.peer_max.store(info.max_message, Ordering::Relaxed);
        let mut primary = peer.conn.lock();
        match primary.clone() {
            None => *primary = Some(conn.clone()),
            // Both connected at once: the connection the lower id opened is
            // the primary on both sides (see `Node::conn_for`).
            Some(ours) if ours.dialed.load(Ordering::Acquire) && info.id < me => {
                peer.extra_conns.lock().push(ours);
                *primary = Some(conn.clone());
            }
            Some(_) => peer.extra_conns.lock().push(conn.clone()),
        }
        Verdict::Admitted
    }

    /// What the admission thread did so far.
    #[doc(hidden)]
    pub fn admission_stats(&self) -> AdmissionStats {
        self.admission.stats()
    }
}
