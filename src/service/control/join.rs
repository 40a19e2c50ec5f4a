//! Joining: how a process learns whether it is the head or a worker, how
//! a worker joins its head, and how the head admits it.

use super::{op, Control, Join, Welcome, ID};
use crate::error::{Error, ErrorKind, Result};
use crate::launch;
use crate::net::auth::{self, Transcript};
use crate::net::Conn;
use crate::node::peer_state::{CONNECTED, LAUNCHING, READY};
use crate::node::{resolve, Config, Node, HEAD_ID};
use crate::wire::{self, Frame, Header, Kind};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What this process is in its cluster.
#[derive(Clone, Debug)]
pub enum Role {
    Head {
        cookie: String,
    },
    Worker {
        head_addr: String,
        /// The id the head launched it as; 0 for an elastic worker.
        id: u32,
        cookie: String,
        /// The launching process (the head, or the launcher that started
        /// it): when it is gone before the worker joins, the worker gives up.
        parent: Option<u32>,
        /// What a launched worker proves its id with (from its launcher).
        join_key: Option<[u8; 32]>,
    },
}

impl Role {
    /// A worker when `cfg.join` is set or the process was launched as one
    /// (`LIBCLUSTER_HEAD`), else the head.
    pub fn from_env(cfg: &Config) -> Result<Role> {
        let head_addr = cfg.join.clone().or_else(|| std::env::var(launch::ENV_HEAD).ok());
        let Some(head_addr) = head_addr else {
            let cookie = match &cfg.cookie {
                Some(c) if !c.is_empty() => c.clone(),
                Some(_) => return Err(Error::new(ErrorKind::InvalidArgument, "the cookie must not be empty")),
                None => auth::random_cookie()?,
            };
            return Ok(Role::Head { cookie });
        };
        let launched_id = std::env::var(launch::ENV_ID).ok().and_then(|v| v.parse::<u32>().ok());
        let launched = cfg.join.is_none() && launched_id.is_some();
        let from_stdin = std::env::var(launch::ENV_COOKIE_STDIN).is_ok() && cfg.join.is_none();
        let cookie = if from_stdin {
            launch::read_cookie_from_stdin()?
        } else if let Some(c) = cfg.cookie.clone().or_else(|| std::env::var(launch::ENV_COOKIE).ok()) {
            c
        } else {
            return Err(Error::new(ErrorKind::Auth, "no cookie: set it in the config or LIBCLUSTER_COOKIE"));
        };
        let parent = if launched { std::env::var(launch::ENV_PARENT).ok().and_then(|v| v.parse().ok()) } else { None };
        let join_key =
            if launched && from_stdin && std::env::var(launch::ENV_JOIN_KEY_STDIN).is_ok() { Some(launch::read_join_key_from_stdin()?) } else { None };
        Ok(Role::Worker { head_addr, id: if launched { launched_id.unwrap_or(0) } else { 0 }, cookie, parent, join_key })
    }

    pub fn is_head(&self) -> bool {
        matches!(self, Role::Head { .. })
    }
    pub fn cookie(&self) -> &str {
        match self {
            Role::Head { cookie } | Role::Worker { cookie, .. } => cookie,
        }
    }
    /// Launched by a head (not an elastic worker).
    pub fn launched(&self) -> bool {
        matches!(self, Role::Worker { id, .. } if *id != 0)
    }
}

/// Watches the process that launched this worker while it joins: a
/// worker whose head died must not linger (nor, from the head's view,
/// come back). A direct child sees its parent change when the parent
/// dies; one started through a wrapper checks the launcher's process.
struct ParentWatch {
    pid: Option<u32>,
    direct: bool,
}

impl ParentWatch {
    fn new(pid: Option<u32>) -> ParentWatch {
        ParentWatch { pid, direct: pid.is_some_and(|p| crate::sys::parent_pid() == p) }
    }

    fn gone(&self) -> bool {
        match self.pid {
            None => false,
            Some(p) if self.direct => crate::sys::parent_pid() != p,
            Some(p) => !process_alive(p),
        }
    }

    fn check(&self) -> Result<()> {
        if self.gone() {
            return Err(Error::new(ErrorKind::Launch, format!("the process that launched this worker (pid {}) is gone", self.pid.unwrap_or(0))));
        }
        Ok(())
    }
}

/// Whether process `pid` exists and has not exited (a zombie has).
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(") ").is_none_or(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

/// How long a worker waits between attempts to reach its head.
const RETRY: Duration = Duration::from_millis(50);
/// The label of a JOIN's proof.
const JOIN_LABEL: &[u8] = b"libcluster join";

impl Control {
    pub(super) fn start(&self, node: &Arc<Node>) -> Result<()> {
        let Role::Worker { head_addr, id, parent, join_key, .. } = &self.role else {
            return Ok(());
        };
        let cfg = node.config();
        let addr = resolve(head_addr)?;
        let deadline = Instant::now() + cfg.startup_timeout;
        let watch = ParentWatch::new(*parent);
        let mut check = || watch.check();
        // Short attempts while a parent is watched, so its death is seen
        // within a fraction of a second in every step of joining.
        let connect_timeout = if parent.is_some() { Duration::from_millis(500) } else { Duration::from_secs(1) };
        let mut last: Option<Error> = None;
        let (stream, transcript) = loop {
            check()?;
            if Instant::now() >= deadline {
                let why = last.map(|e| e.message).unwrap_or_else(|| "no attempt completed".into());
                return Err(Error::new(ErrorKind::Launch, format!("could not reach the head at {head_addr} within {:?}: {why}", cfg.startup_timeout)));
            }
            match TcpStream::connect_timeout(&addr, connect_timeout) {
                Err(e) => last = Some(Error::io("connect", e)),
                Ok(mut s) => {
                    let until = (Instant::now() + cfg.handshake_timeout).min(deadline.max(Instant::now() + connect_timeout));
                    match node.dial_handshake(&mut s, until, &mut check) {
                        Ok(t) => break (s, t),
                        // Dropped before the verdict (a busy head sheds
                        // connections still authenticating) or too slow:
                        // try again. A refused cookie or version is final.
                        Err(e) if matches!(e.kind, ErrorKind::Io | ErrorKind::Timeout) => last = Some(e),
                        Err(e) if e.kind == ErrorKind::Launch => return Err(e),
                        Err(e) => return Err(Error::new(e.kind, format!("joining the head at {head_addr}: {}", e.message))),
                    }
                }
            }
            std::thread::sleep(RETRY);
        };
        let max = cfg.max_message_bytes;
        // Listening on every interface: tell the address on the one that
        // reaches the head.
        let reachable = crate::node::reachable_addr(node.address(), &stream);
        let conn = node
            .dialed_conn(stream, &transcript, Instant::now() + cfg.handshake_timeout)
            .map_err(|e| Error::new(e.kind, format!("joining the head at {head_addr}: {}", e.message)))?;
        conn.peer.store(HEAD_ID, Ordering::Release);
        let proof = match join_key {
            Some(k) if *id != 0 => transcript.prove(k, JOIN_LABEL, &[&id.to_le_bytes()]),
            _ => [0; 32],
        };
        let join = Join { id: *id, listen_addr: reachable, os_pid: std::process::id(), max_message: max, host: node.hostname().to_string(), proof };
        conn.send(Header::new(Kind::Request, ID, op::JOIN, 1), &wire::encode_meta(&join), &[])?;
        let reply_by = deadline.max(Instant::now() + cfg.handshake_timeout);
        let reply = loop {
            check()?;
            match conn.read_frame_blocking((Instant::now() + Duration::from_millis(50)).min(reply_by)) {
                Ok(f) => break f,
                Err(e) if e.kind == ErrorKind::Timeout && Instant::now() < reply_by => {}
                Err(e) => return Err(e),
            }
        };
        let welcome = read_welcome(&reply)?;
        conn.peer_max.store(welcome.max_message, Ordering::Relaxed);
        node.set_myid(welcome.id);
        node.store_topology(welcome.topology);
        let head = node.add_peer(HEAD_ID, READY);
        *head.conn.lock() = Some(conn.clone());
        *head.host.lock() = welcome.head_host;
        for p in welcome.peers {
            node.add_announced_peer(p.id, p.addr, p.key, p.host);
        }
        node.adopt(&conn);
        Ok(())
    }

    /// Head: the key worker `id` proves its launch with, given to it on
    /// its standard input.
    pub(crate) fn join_key(&self, id: u32) -> [u8; 32] {
        auth::derive(&self.pair_secret, b"libcluster launch", &[&id.to_le_bytes()])
    }

    /// The head admits a worker by its JOIN. A launched worker's id is
    /// taken only by the process launched as it, which proves it with the
    /// key the head gave it; an elastic worker gets the next id.
    pub(super) fn admit(&self, node: &Arc<Node>, conn: &Arc<Conn>, f: &Frame, transcript: &Transcript) -> Result<()> {
        let join: Join = super::parse_join(&f.meta)?;
        let refuse = |msg: String| {
            let mut h = Header::new(Kind::Response, ID, op::JOIN, f.header.id);
            h.status = ErrorKind::Launch as u8;
            let _ = conn.send(h, &[], msg.as_bytes());
            Err(Error::new(ErrorKind::Auth, msg))
        };
        let peer = if join.id == 0 {
            let id = self.next_id.fetch_add(1, Ordering::AcqRel);
            node.log.info(format!("elastic worker {id} joining from {}", join.listen_addr));
            node.add_peer(id, LAUNCHING)
        } else {
            if !transcript.verify(&self.join_key(join.id), JOIN_LABEL, &[&join.id.to_le_bytes()], &join.proof) {
                return refuse(format!(
                    "a process claimed to be worker {} without proving its launch key (a launcher gives it on stdin, after the cookie)",
                    join.id
                ));
            }
            match node.peer(join.id) {
                Some(p) if p.state() == LAUNCHING && p.conn.lock().is_none() => p,
                _ => return refuse(format!("unknown or already joined worker id {}", join.id)),
            }
        };
        *peer.addr.lock() = join.listen_addr;
        *peer.host.lock() = join.host;
        if peer.os_pid.load(Ordering::Acquire) == 0 {
            peer.os_pid.store(join.os_pid, Ordering::Release);
        }
        conn.peer.store(peer.id, Ordering::Release);
        conn.peer_max.store(join.max_message, Ordering::Relaxed);
        *peer.conn.lock() = Some(conn.clone());
        peer.state.store(CONNECTED, Ordering::Release);
        let peers = node.peers_where(|p| p.is_ready()).iter().map(|p| self.introduce(p, peer.id)).collect();
        let welcome =
            Welcome { id: peer.id, topology: node.topology(), peers, max_message: node.config().max_message_bytes, head_host: node.hostname().to_string() };
        // The welcome lists every ready worker: it goes in the payload,
        // which the worker's maximum message size bounds, not in the meta
        // (64 KiB: about 1,100 workers).
        let h = Header::new(Kind::Response, ID, op::JOIN, f.header.id);
        match conn.send(h, &[], &wire::encode_payload(&welcome)) {
            Err(e) if e.kind == ErrorKind::TooLarge => refuse(format!("the welcome does not fit this worker's maximum message size: {}", e.message)),
            r => r,
        }
    }
}

/// A worker reads the head's answer to its JOIN: a refusal with its
/// reason, or the welcome (in the payload).
pub(crate) fn read_welcome(reply: &Frame) -> Result<Welcome> {
    if reply.header.status != 0 {
        return Err(Error::new(ErrorKind::Launch, format!("the head refused to join: {}", String::from_utf8_lossy(&reply.payload))));
    }
    wire::decode_payload(&reply.payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::auth::Transcript;
    use crate::node::peer_state::READY;
    use crate::wire::{FrameReader, ReadOutcome};
    use std::os::unix::io::{AsRawFd, FromRawFd, IntoRawFd};
    use std::os::unix::net::UnixStream;

    fn read_reply(s: &UnixStream) -> Frame {
        s.set_nonblocking(true).unwrap();
        let mut r = FrameReader::new(1 << 30);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match r.read_frame(s.as_raw_fd()).unwrap() {
                ReadOutcome::Frame(f) => return f,
                ReadOutcome::Closed => panic!("the head hung up"),
                ReadOutcome::WouldBlock => {
                    assert!(Instant::now() < deadline, "no welcome in time");
                    crate::sys::poll_in(s.as_raw_fd(), Some(Duration::from_millis(50))).unwrap();
                }
            }
        }
    }

    /// Found by fuzzing: the welcome, which lists every ready worker, was
    /// the JOIN reply's meta, whose decoder's 64 KiB limit (counting
    /// decoded sizes) it outgrew past about 1,100 ready workers (2,400
    /// before the pair keys): no worker could join any more. It is in the
    /// payload now; the head's `admit` writes it, a worker's `start` reads
    /// it with `read_welcome`.
    #[test]
    fn a_welcome_listing_thousands_of_workers_reaches_the_joiner() {
        const N: u32 = 5000;
        let node = Node::detached(Config::default(), true).unwrap();
        let control = Control::new(Role::Head { cookie: "c".into() });
        for id in 2..2 + N {
            *node.add_peer(id, READY).addr.lock() = format!("127.0.0.1:{}", 10_000 + id);
        }
        control.next_id.store(2 + N, Ordering::Release);
        let (ours, theirs) = UnixStream::pair().unwrap();
        // SAFETY: a stream socket, owned from here on by the TcpStream.
        let conn = node.new_conn(unsafe { TcpStream::from_raw_fd(ours.into_raw_fd()) }).unwrap();
        let transcript = Transcript { client_nonce: [1; 32], server_nonce: [2; 32], tls: false };
        let join = Join { id: 0, listen_addr: "127.0.0.1:9".into(), os_pid: 1, max_message: 1 << 30, host: "h".into(), proof: [0; 32] };
        let f = Frame { header: Header::new(Kind::Request, ID, op::JOIN, 1), meta: wire::encode_meta(&join), payload: Vec::new() };
        control.admit(&node, &conn, &f, &transcript).unwrap();
        let reply = read_reply(&theirs);
        assert_eq!((reply.header.status, reply.header.meta_len), (0, 0));
        assert!(reply.payload.len() > wire::MAX_META, "{} bytes", reply.payload.len());
        let w = read_welcome(&reply).unwrap();
        assert_eq!((w.id, w.peers.len()), (2 + N, N as usize));
        for p in &w.peers {
            assert_eq!(p.key, control.pair_key(p.id, w.id));
            assert_eq!(p.addr, format!("127.0.0.1:{}", 10_000 + p.id));
        }
        // Why the meta would not do: 1,200 members fit a meta on the wire
        // (about 60 KB), but its decoder, whose limit counts decoded sizes,
        // refuses them.
        let some = Welcome { id: 9, topology: node.topology(), peers: w.peers.into_iter().take(1200).collect(), max_message: 1, head_host: String::new() };
        let meta = wire::encode_meta(&some);
        assert!(meta.len() <= wire::MAX_META, "{} bytes", meta.len());
        assert!(wire::decode_meta::<Welcome>(&meta).is_err());
        node.close();
    }

    /// A welcome larger than the joiner's maximum message is a refusal
    /// with the reason, not a dropped connection.
    #[test]
    fn a_welcome_over_the_joiners_maximum_is_a_refusal() {
        let node = Node::detached(Config::default(), true).unwrap();
        let control = Control::new(Role::Head { cookie: "c".into() });
        for id in 2..100 {
            node.add_peer(id, READY);
        }
        control.next_id.store(100, Ordering::Release);
        let (ours, theirs) = UnixStream::pair().unwrap();
        // SAFETY: a stream socket, owned from here on by the TcpStream.
        let conn = node.new_conn(unsafe { TcpStream::from_raw_fd(ours.into_raw_fd()) }).unwrap();
        let transcript = Transcript { client_nonce: [1; 32], server_nonce: [2; 32], tls: false };
        let join = Join { id: 0, listen_addr: "127.0.0.1:9".into(), os_pid: 1, max_message: 1000, host: "h".into(), proof: [0; 32] };
        let f = Frame { header: Header::new(Kind::Request, ID, op::JOIN, 1), meta: wire::encode_meta(&join), payload: Vec::new() };
        assert_eq!(control.admit(&node, &conn, &f, &transcript).unwrap_err().kind, ErrorKind::Auth);
        let reply = read_reply(&theirs);
        let e = read_welcome(&reply).err().expect("a refusal");
        assert_eq!(e.kind, ErrorKind::Launch);
        assert!(e.message.contains("maximum message size"), "{e}");
        node.close();
    }
}
