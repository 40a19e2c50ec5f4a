//! Connections. Each authenticated TCP connection is read by one thread
//! at a time:
//!
//! - while idle, by the node's reactor (`reactor.rs`), which watches every
//!   idle connection with one epoll and runs a short incoming call itself
//!   rather than waking another thread;
//! - a caller waiting for a reply on this connection, which reads the
//!   socket itself instead of parking, so a round trip needs no wake-up.
//!
//! Frames are dispatched in arrival order by whoever reads. Writers never
//! hold a lock while a write waits: a sender finding the socket full
//! either queues the rest of its frame behind what is queued (responses,
//! library messages: they never wait) or, for a caller's own request,
//! marks itself the writer and waits for room with the lock released
//! (its payload is never copied); others queue behind it meanwhile.

use super::tls;
use crate::error::{Error, ErrorKind, Result};
use crate::sys;
use crate::wire::{self, FrameReader, Header, ReadOutcome};
use parking_lot::{Condvar, Mutex};
use std::net::{Shutdown, TcpStream};
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

/// What the owner of connections does with frames and lost connections.
pub trait Dispatch: Send + Sync + 'static {
    /// Handles one frame; runs while reading, so it must be quick.
    /// May return a job to run once the frame is out of the way.
    fn on_frame(self: &Arc<Self>, conn: &Arc<Conn>, frame: wire::Frame) -> Option<Job>;
    fn on_closed(self: &Arc<Self>, conn: &Arc<Conn>, why: Option<Error>);
    fn spin(&self) -> Duration;
    fn is_shutting_down(&self) -> bool;
}

/// Work released by a reader, run on the same thread.
pub type Job = Box<dyn FnOnce() + Send>;

/// Who watches a connection while nobody reads it.
pub(crate) trait Watcher: Send + Sync {
    /// Watch `conn` again (it was read to empty, or needs a look now).
    fn rearm(&self, conn: &Arc<Conn>);
    /// `conn` has bytes queued for the socket: wake when it takes them.
    fn want_write(&self, conn: &Arc<Conn>);
    fn forget(&self, conn: &Conn);
}

/// Bytes waiting for the socket, in order: corked frames and the rest of
/// frames the socket did not take.
struct Out {
    buf: Vec<u8>,
    /// A sender owns the socket and waits for room (lock released).
    writer: bool,
    /// Bytes of `buf` the socket did not take: wait for writability.
    backlog: bool,
}

pub struct Conn {
    stream: TcpStream,
    fd: RawFd,
    /// The process at the other end; 0 until it is known.
    pub peer: AtomicU32,
    /// The largest message the other end accepts (told at connection setup).
    pub peer_max: AtomicU64,
    out: Mutex<Out>,
    out_cv: Condvar,
    has_corked: AtomicBool,
    /// The deadline of this connection on the flusher's queue (ns since
    /// the flusher's epoch; `u64::MAX`: not queued): a sender corking
    /// batch after batch adds an entry only for an earlier deadline.
    flush_at: AtomicU64,
    /// A reader is pumping this connection and will flush corked
    /// requests within microseconds: senders may cork small ones.
    reader_active: AtomicBool,
    read: Mutex<FrameReader>,
    pub(crate) drivers: AtomicU32,
    /// When a driver last stopped (ns since `epoch`).
    pub(crate) last_drive: AtomicU64,
    closed: AtomicBool,
    failed: AtomicBool,
    epoch: Instant,
    /// When bytes last arrived (`liveness_ns`).
    last_recv: AtomicU64,
    /// When a large frame or a backlog last went out in part: the peer
    /// is reading, though it cannot answer a ping queued behind it.
    last_out: AtomicU64,
    /// When a request was last sent (ns since `epoch`): back-to-back
    /// requests are corked and written together.
    last_send: AtomicU64,
    corked_frames: AtomicU32,
    flusher: Arc<Flusher>,
    pub(crate) watcher: OnceLock<Weak<dyn Watcher>>,
    pub(crate) token: AtomicU64,
    /// The reactor left it unwatched because a driver was reading it.
    pub(crate) deferred: AtomicBool,
    /// Whether the reactor's epoll holds the socket (serialises its adds
    /// and deletes). Out of epoll while read directly (hot, or left to a
    /// driver): a socket on an epoll's wait queue costs every arriving
    /// segment a wake-up call, disarmed or not (0.5 us a round trip here).
    pub(crate) in_epoll: Mutex<bool>,
    /// This process opened it (rather than accepted it).
    pub(crate) dialed: AtomicBool,
    /// TLS under the frames, when the handshake agreed on it.
    tls: Option<Box<tls::Session>>,
}

/// How a sender treats a full socket.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Wait for room, lock released, writing straight from the caller's buffers.
    Wait,
    /// Never wait: queue what the socket does not take.
    Queue,
    /// As `Queue`, and never corked: written at once (a protocol step the
    /// next step waits for).
    Now,
}

/// Frames up to this size queue behind a waiting writer instead of waiting.
const QUEUE_MAX: usize = 1 << 20;
/// A waiting sender of a large frame holds back while this much is queued.
const BACKLOG_MAX: usize = 64 << 20;

impl Conn {
    pub fn new(stream: TcpStream, max_payload: u64, flusher: Arc<Flusher>) -> Result<Arc<Conn>> {
        Conn::with_tls(stream, max_payload, flusher, None)
    }

    /// A connection whose frames travel inside `tls` (when given).
    pub fn with_tls(stream: TcpStream, max_payload: u64, flusher: Arc<Flusher>, tls: Option<tls::Session>) -> Result<Arc<Conn>> {
        stream.set_nonblocking(true).map_err(|e| Error::io("set_nonblocking", e))?;
        let _ = stream.set_nodelay(true);
        let fd = stream.as_raw_fd();
        let epoch = Instant::now();
        Ok(Arc::new(Conn {
            stream,
            fd,
            peer: AtomicU32::new(0),
            peer_max: AtomicU64::new(max_payload),
            out: Mutex::new(Out { buf: Vec::new(), writer: false, backlog: false }),
            out_cv: Condvar::new(),
            has_corked: AtomicBool::new(false),
            flush_at: AtomicU64::new(u64::MAX),
            reader_active: AtomicBool::new(false),
            read: Mutex::new(FrameReader::new(max_payload)),
            drivers: AtomicU32::new(0),
            last_drive: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            epoch,
            last_recv: AtomicU64::new(liveness_ns()),
            last_out: AtomicU64::new(0),
            last_send: AtomicU64::new(0),
            corked_frames: AtomicU32::new(0),
            flusher,
            watcher: OnceLock::new(),
            token: AtomicU64::new(0),
            deferred: AtomicBool::new(false),
            in_epoll: Mutex::new(false),
            dialed: AtomicBool::new(false),
            tls: tls.map(Box::new),
        }))
    }

    /// Its frames travel encrypted (TLS).
    pub fn is_encrypted(&self) -> bool {
        self.tls.is_some()
    }

    /// One non-blocking write of `parts` from byte `skip` on: the bytes
    /// taken, 0 when the socket is full.
    fn write_out(&self, parts: &[&[u8]], skip: usize) -> std::io::Result<usize> {
        match &self.tls {
            None => sys::write_some_vectored(self.fd, parts, skip),
            Some(t) => t.write(self.fd, parts, skip),
        }
    }

    /// TLS records taken from earlier writes still wait for the socket.
    pub(crate) fn cipher_waiting(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.pending_out())
    }

    fn read_from(&self, reader: &mut FrameReader) -> Result<ReadOutcome> {
        match &self.tls {
            None => reader.read_frame(self.fd),
            Some(t) => reader.read_frame_from(&mut tls::Plain { session: t, fd: self.fd }),
        }
    }

    pub fn fd(&self) -> RawFd {
        self.fd
    }

    pub fn peer(&self) -> u32 {
        self.peer.load(Ordering::Acquire)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64 + 1
    }

    /// Whether a driver stopped reading it less than `ns` ago.
    pub(crate) fn driven_lately(&self, ns: u64) -> bool {
        let last = self.last_drive.load(Ordering::Relaxed);
        last != 0 && self.now_ns().saturating_sub(last) < ns
    }

    /// How long the peer has shown no sign of life: nothing received,
    /// and no large write to it making progress.
    pub fn silent_for(&self) -> Duration {
        let last = self.last_recv.load(Ordering::Relaxed).max(self.last_out.load(Ordering::Relaxed));
        Duration::from_nanos(liveness_ns().saturating_sub(last))
    }

    /// True while part of a frame has arrived and the rest has not.
    pub fn mid_frame(&self) -> bool {
        self.read.try_lock().map(|r| r.mid_frame()).unwrap_or(false) || self.tls.as_ref().is_some_and(|t| t.staged())
    }

    /// Bytes queued for the socket.
    pub fn queued_bytes(&self) -> usize {
        self.out.lock().buf.len()
    }

    fn watcher(&self) -> Option<Arc<dyn Watcher>> {
        self.watcher.get().and_then(|w| w.upgrade())
    }

    /// Sends one frame. A request or one-way message waits (without
    /// holding any lock) while the socket is full; a response never waits.
    pub fn send(self: &Arc<Self>, header: Header, meta: &[u8], payload: &[u8]) -> Result<()> {
        let mode = if header.kind == wire::Kind::Response { Mode::Queue } else { Mode::Wait };
        self.send_mode(header, meta, payload, mode)
    }

    /// Sends one frame without ever waiting: what the socket does not take
    /// now is queued and written when it has room.
    pub fn send_nowait(self: &Arc<Self>, header: Header, meta: &[u8], payload: &[u8]) -> Result<()> {
        self.send_mode(header, meta, payload, Mode::Queue)
    }

    /// `send_nowait`, written out at once: never corked behind other
    /// frames (nor a flusher woken for it).
    pub fn send_now(self: &Arc<Self>, header: Header, meta: &[u8], payload: &[u8]) -> Result<()> {
        self.send_mode(header, meta, payload, Mode::Now)
    }

    fn check_size(&self, size: u64) -> Result<()> {
        let max = self.peer_max.load(Ordering::Relaxed);
        if size > max {
            return Err(Error::at(
                ErrorKind::TooLarge,
                self.peer(),
                format!("a message of {size} bytes exceeds the maximum of {max} bytes of process {}", self.peer()),
            ));
        }
        Ok(())
    }

    fn exited(&self, e: impl std::fmt::Display) -> Error {
        Error::at(ErrorKind::ProcessExited, self.peer(), format!("worker {} exited ({e})", self.peer()))
    }

    fn send_mode(self: &Arc<Self>, header: Header, meta: &[u8], payload: &[u8], mode: Mode) -> Result<()> {
        if self.is_closed() {
            return Err(Error::exited(self.peer()));
        }
        // Never a frame with a truncated meta length: refused before anything is written.
        let h = wire::frame_header(header, meta, payload).map_err(|e| Error::at(e.kind, self.peer(), e.message))?;
        let size = (meta.len() + payload.len()) as u64;
        self.check_size(size)?;
        let hb = h.encode();
        let frame_len = hb.len() + meta.len() + payload.len();
        let mut out = self.out.lock();
        // Cork responses to a batch being served, and requests while a
        // reader is pumping here (it writes them out on its next turn):
        // many small messages then cost one write, not one each.
        let mut schedule = false;
        let mut delay = FLUSH_DELAY;
        let cork = match header.kind {
            _ if mode == Mode::Now => false,
            wire::Kind::Response if LINGER.with(|l| l.get()) => {
                // Held for this thread's next write here or its next wait.
                schedule = out.buf.is_empty();
                delay = HOST_FLUSH_DELAY;
                if schedule {
                    note_lingering(self);
                }
                true
            }
            wire::Kind::Response if CORKED.with(|c| c.get()) == Arc::as_ptr(self) as usize => {
                // A host thread's cork ends when it says so, or at the
                // latest when the flusher comes by.
                schedule = out.buf.is_empty() && host_corking(self);
                delay = HOST_FLUSH_DELAY;
                true
            }
            wire::Kind::Response => false,
            _ if self.reader_active.load(Ordering::SeqCst) => true,
            _ => {
                // Back-to-back requests: cork them, and have the flusher
                // write them out shortly unless a wait or a full batch does.
                let now = self.now_ns();
                let last = self.last_send.swap(now, Ordering::Relaxed);
                let back_to_back = last != 0 && now.saturating_sub(last) < BACK_TO_BACK_NS;
                schedule = back_to_back && out.buf.is_empty();
                back_to_back && self.corked_frames.load(Ordering::Relaxed) < CORK_FRAMES
            }
        };
        if cork && size <= CORK_FRAME_MAX && out.buf.len() < CORK_MAX && !out.backlog && !out.writer {
            self.has_corked.store(true, Ordering::Release);
            self.corked_frames.fetch_add(1, Ordering::Relaxed);
            if schedule {
                self.flusher.schedule(self, delay);
            }
            push_frame(&mut out.buf, &hb, meta, payload);
            return Ok(());
        }
        if out.writer || out.backlog {
            // Someone waits for room, or bytes wait for writability:
            // queue behind them, or (a large request) wait for them.
            if mode != Mode::Wait || frame_len <= QUEUE_MAX {
                push_frame(&mut out.buf, &hb, meta, payload);
                return Ok(());
            }
            while (out.writer || out.buf.len() > BACKLOG_MAX) && !self.is_closed() {
                self.out_cv.wait_for(&mut out, Duration::from_millis(100));
            }
            if self.is_closed() {
                return Err(Error::exited(self.peer()));
            }
        }
        // Nobody writes now: what is queued goes first, then this frame.
        out.backlog = false;
        let corked = std::mem::take(&mut out.buf);
        self.has_corked.store(false, Ordering::Release);
        self.corked_frames.store(0, Ordering::Relaxed);
        let parts: [&[u8]; 4] = [&corked, &hb, meta, payload];
        let total = corked.len() + frame_len;
        let wrote = match self.write_out(&parts, 0) {
            Ok(n) => n,
            Err(e) => {
                drop(out);
                self.close();
                return Err(self.exited(e));
            }
        };
        if wrote == total && !self.cipher_waiting() {
            out.buf = recycle_buf(corked);
            return Ok(());
        }
        if mode != Mode::Wait || total - wrote <= QUEUE_MAX {
            out.buf = rest_of(&parts, wrote);
            out.backlog = true;
            drop(out);
            self.want_write();
            return Ok(());
        }
        // A large request: wait for room ourselves, with the lock released.
        out.writer = true;
        drop(out);
        let r = self.write_rest(&parts, wrote);
        let mut out = self.out.lock();
        out.writer = false;
        self.out_cv.notify_all();
        let queued = !out.buf.is_empty();
        drop(out);
        if queued {
            // Frames queued behind this writer set neither `has_corked`
            // nor `backlog`, so `flush()` would not see them.
            self.flush_locked();
        }
        r
    }

    /// Writes `parts` from byte `skip` on, waiting for room; gives up
    /// when the connection is closed (e.g. its peer was declared dead).
    fn write_rest(self: &Arc<Self>, parts: &[&[u8]], mut skip: usize) -> Result<()> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        while skip < total || self.cipher_waiting() {
            if self.is_closed() {
                return Err(Error::exited(self.peer()));
            }
            match self.write_out(parts, skip) {
                Ok(0) => {
                    let _ = sys::poll_out(self.fd, Some(Duration::from_millis(100)));
                }
                Ok(n) => {
                    skip += n;
                    self.last_out.store(liveness_ns(), Ordering::Relaxed);
                }
                Err(e) => {
                    self.close();
                    return Err(self.exited(e));
                }
            }
        }
        Ok(())
    }

    fn want_write(self: &Arc<Self>) {
        match self.watcher() {
            Some(w) => w.want_write(self),
            // Not watched (being set up): the flusher retries.
            None => self.flusher.schedule(self, FLUSH_DELAY),
        }
    }

    /// Its caller waits for an answer (on this connection or another):
    /// what it sent goes out now, and, not pipelining, its next request
    /// goes out at once too.
    pub(crate) fn waited_on(self: &Arc<Self>) {
        self.flush();
        self.last_send.store(0, Ordering::Relaxed);
    }

    /// Writes queued bytes that the socket takes now; never waits. The
    /// unlocked check is only for threads that corked themselves.
    pub fn flush(self: &Arc<Self>) {
        if !self.has_corked.load(Ordering::Acquire) && !self.out.try_lock().is_some_and(|o| o.backlog) {
            return;
        }
        self.flush_locked();
    }

    /// Writes queued bytes after taking the lock, so a sender that decided
    /// to cork (under that lock) before `reader_active` was cleared has
    /// its message written too.
    fn flush_locked(self: &Arc<Self>) {
        let mut out = self.out.lock();
        self.has_corked.store(false, Ordering::Release);
        self.corked_frames.store(0, Ordering::Relaxed);
        if out.writer || (out.buf.is_empty() && !self.cipher_waiting()) {
            return;
        }
        match self.write_out(&[&out.buf], 0) {
            Ok(n) if n == out.buf.len() && !self.cipher_waiting() => {
                out.buf.clear();
                out.backlog = false;
                self.out_cv.notify_all();
            }
            Ok(n) => {
                if n > 0 && out.backlog {
                    self.last_out.store(liveness_ns(), Ordering::Relaxed);
                }
                out.buf.drain(..n);
                out.backlog = true;
                drop(out);
                self.want_write();
            }
            Err(_) => {
                out.buf.clear();
                out.backlog = false;
                drop(out);
                self.close();
            }
        }
    }

    /// Reads one frame, blocking until `deadline`: for connection setup,
    /// before anyone else reads.
    /// Frames read after this may carry up to `max` payload bytes (a
    /// connection being admitted reads its first frame under a small
    /// limit, then gets the node's).
    pub fn set_max_payload(&self, max: u64) {
        self.read.lock().set_max_payload(max);
    }

    pub fn read_frame_blocking(&self, deadline: Instant) -> Result<wire::Frame> {
        let mut reader = self.read.lock();
        loop {
            // A TLS server's handshake answers (written in the reads) may
            // not all have fit: nobody else writes yet.
            if let Some(t) = &self.tls {
                t.flush(self.fd).map_err(|e| Error::io("write", e))?;
            }
            match self.read_from(&mut reader)? {
                ReadOutcome::Frame(f) => return Ok(f),
                ReadOutcome::Closed => return Err(Error::new(ErrorKind::Io, "connection closed during setup")),
                ReadOutcome::WouldBlock => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(Error::new(ErrorKind::Timeout, "no first message in time"));
                    }
                    let left = if self.cipher_waiting() { left.min(Duration::from_millis(10)) } else { left };
                    sys::poll_in(self.fd, Some(left)).map_err(|e| Error::io("poll", e))?;
                }
            }
        }
    }

    /// Hands a large received payload back for reuse by the next one.
    pub fn recycle(&self, v: Vec<u8>) {
        if v.capacity() >= 1 << 20 {
            if let Some(mut r) = self.read.try_lock() {
                r.recycle(v);
            }
        }
    }

    /// Gives back the large-payload buffer kept for reuse (when idle).
    pub(crate) fn release_spare(&self) {
        if let Some(mut r) = self.read.try_lock() {
            r.release_spare();
        }
    }

    /// Closes the socket; its reader notices and reports the loss once.
    pub fn close(self: &Arc<Self>) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            let _ = self.stream.shutdown(Shutdown::Both);
            self.out_cv.notify_all();
            if let Some(w) = self.watcher() {
                w.rearm(self);
            }
        }
    }

    /// Reports the connection lost to its owner, once.
    pub(crate) fn fail<D: Dispatch>(self: &Arc<Self>, owner: &Arc<D>, why: Option<Error>) {
        self.close();
        if self.failed.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(w) = self.watcher() {
            w.forget(self);
        }
        owner.on_closed(self, why);
    }

    pub(crate) fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Reads and dispatches frames until the socket is empty; jobs run on
    /// this thread, `run_job` around each. False when the connection ended.
    pub(crate) fn pump<D: Dispatch>(self: &Arc<Self>, owner: &Arc<D>, frames: &mut usize, run_job: &mut dyn FnMut(&Arc<Conn>, Job) -> bool) -> PumpEnd {
        self.reader_active.store(true, Ordering::SeqCst);
        let end = loop {
            // What the frames read together send goes out once they are
            // handled (a map's next calls as its replies come), in one write.
            if !self.read.try_lock().is_some_and(|r| r.has_buffered()) {
                self.flush();
            }
            match self.read_one(owner) {
                Step::Dispatched => *frames += 1,
                Step::Job(job) => {
                    *frames += 1;
                    // More requests already read: cork the responses and
                    // write them together once the batch is served.
                    let batch = self.read.try_lock().map(|r| r.may_have_frames()).unwrap_or(false);
                    if batch {
                        CORKED.with(|c| c.set(Arc::as_ptr(self) as usize));
                    }
                    self.reader_active.store(false, Ordering::SeqCst);
                    self.flush_locked();
                    let keep_going = run_job(self, job);
                    CORKED.with(|c| c.set(0));
                    if !keep_going {
                        break PumpEnd::Replaced;
                    }
                    self.reader_active.store(true, Ordering::SeqCst);
                }
                Step::Empty => break PumpEnd::Empty,
                Step::Busy => break PumpEnd::Busy,
                Step::Closed(why) => {
                    self.reader_active.store(false, Ordering::SeqCst);
                    self.fail(owner, why);
                    return PumpEnd::Closed;
                }
            }
        };
        // Stop corking before the last flush: a sender that saw the flag
        // set corked under the write lock, which the flush then takes.
        self.reader_active.store(false, Ordering::SeqCst);
        self.flush_locked();
        if matches!(end, PumpEnd::Empty) {
            sys::yield_if_asked();
        }
        end
    }

    fn read_one<D: Dispatch>(self: &Arc<Self>, owner: &Arc<D>) -> Step {
        self.read_one_corking(owner, None)
    }

    /// `read_one` for a driver: when more bytes wait behind the frame read
    /// (replies that came together), what handling it sends here is corked
    /// (`*corking`) until the driver ends the burst (`end_burst`), so that
    /// a map's next calls, sent as its replies come, go out in one write.
    fn read_one_corking<D: Dispatch>(self: &Arc<Self>, owner: &Arc<D>, corking: Option<&mut bool>) -> Step {
        let Some(mut reader) = self.read.try_lock() else {
            return Step::Busy;
        };
        if self.is_closed() {
            return Step::Closed(None);
        }
        let before = reader.bytes_read();
        let r = self.read_from(&mut reader);
        if reader.bytes_read() != before {
            self.last_recv.store(liveness_ns(), Ordering::Relaxed);
        }
        let step = match r {
            // Dispatched under the reader's lock (on_frame is quick): frames of
            // one connection are dispatched in arrival order, whoever reads.
            Ok(ReadOutcome::Frame(f)) => {
                if f.header.kind == wire::Kind::Response {
                    // A reply came back: the next request follows an answer,
                    // so it is not pipelined and must not wait in a cork.
                    self.last_send.store(0, Ordering::Relaxed);
                }
                if let Some(corking) = corking {
                    if !*corking && reader.has_buffered() {
                        *corking = true;
                        self.reader_active.store(true, Ordering::SeqCst);
                    }
                }
                let step = match owner.on_frame(self, f) {
                    Some(job) => Step::Job(job),
                    None => Step::Dispatched,
                };
                drop(reader);
                step
            }
            Ok(ReadOutcome::WouldBlock) => Step::Empty,
            Ok(ReadOutcome::Closed) => Step::Closed(None),
            Err(e) => Step::Closed(Some(e)),
        };
        if self.cipher_waiting() {
            // TLS records written by the read (a key update's answer)
            // that the socket did not take.
            self.flush_locked();
        }
        step
    }

    /// Waits for `done()` by reading this connection on the caller's
    /// thread for up to `spin`; false when it is still not done.
    pub fn drive<D: Dispatch>(self: &Arc<Self>, owner: &Arc<D>, spin: Duration, done: &dyn Fn() -> bool) -> bool {
        self.drive_inner(owner, spin, done, false).0
    }

    /// `drive` for a host's event loop, also saying whether it served any
    /// frame (traffic handled on this thread, e.g. requests of a service
    /// answered inline).
    pub fn drive_served<D: Dispatch>(self: &Arc<Self>, owner: &Arc<D>, spin: Duration, done: &dyn Fn() -> bool) -> (bool, bool) {
        self.drive_inner(owner, spin, done, true)
    }

    /// `host`: the driver is a host's loop, whose wait ends when work is
    /// queued for it, not when a reply of its own came.
    fn drive_inner<D: Dispatch>(self: &Arc<Self>, owner: &Arc<D>, spin: Duration, done: &dyn Fn() -> bool, host: bool) -> (bool, bool) {
        flush_lingering();
        self.waited_on();
        if spin.is_zero() || self.is_closed() {
            return (done(), false);
        }
        self.drivers.fetch_add(1, Ordering::AcqRel);
        let start = Instant::now();
        let mut finished = false;
        let mut served = false;
        let mut n = 0u32;
        let mut corking = false;
        loop {
            if done() {
                finished = true;
                break;
            }
            let step = self.read_one_corking(owner, Some(&mut corking));
            if corking && !(matches!(step, Step::Dispatched) && self.read.try_lock().is_some_and(|r| r.has_buffered())) {
                self.end_burst(&mut corking);
            }
            match step {
                Step::Job(job) => {
                    // Let the reactor serve this connection while this thread runs it.
                    self.drivers.fetch_sub(1, Ordering::AcqRel);
                    self.watch_while_busy();
                    job();
                    self.drivers.fetch_add(1, Ordering::AcqRel);
                    served = true;
                }
                Step::Dispatched => served = true,
                Step::Closed(why) => {
                    self.drivers.fetch_sub(1, Ordering::AcqRel);
                    self.fail(owner, why);
                    return (done(), served);
                }
                Step::Empty => {
                    sys::yield_if_asked();
                    std::hint::spin_loop()
                }
                Step::Busy => std::hint::spin_loop(),
            }
            n += 1;
            if n.is_multiple_of(8) && start.elapsed() >= spin {
                break;
            }
            // Let a thread waiting for this CPU run: with more spinning
            // threads than cores (three processes of a replicated write on
            // two, or any other load) the one this thread waits for may be it.
            sys::spin_yield(n);
        }
        if corking {
            self.end_burst(&mut corking);
        }
        // A driver whose wait is over is likely back soon (its next call);
        // one that gives up to park is not.
        self.last_drive.store(if finished { self.now_ns() } else { 0 }, Ordering::Relaxed);
        self.drivers.fetch_sub(1, Ordering::AcqRel);
        // Frames read along with the last one may sit in the buffer (or,
        // under TLS, in the session), where epoll cannot see them: dispatch
        // them now, and read on while frames come. Except when a wait is
        // over (its reply came): then only what is buffered, since what
        // waits in the socket is read by whoever reads next, and a read to
        // find it empty would cost every round trip a system call. A host's
        // loop, or a wait that ran out of time, reads on: the replies and
        // requests of a burst then go on together (a Julia pmap: 7-10%
        // fewer elements a second otherwise).
        let read_on = !finished || host || self.tls.is_some();
        loop {
            match self.read.try_lock().map(|r| r.has_buffered() || (read_on && r.may_have_frames())) {
                Some(true) => {}
                Some(false) => break,
                None => {
                    // Whoever holds the reader may not read on (`recycle`,
                    // `release_spare`, `mid_frame`): the reactor looks.
                    self.hand_to_reactor();
                    break;
                }
            }
            match self.read_one(owner) {
                Step::Job(job) => {
                    self.watch_while_busy();
                    job();
                }
                Step::Dispatched => {}
                Step::Closed(why) => {
                    self.fail(owner, why);
                    break;
                }
                Step::Busy => {
                    self.hand_to_reactor();
                    break;
                }
                Step::Empty => break,
            }
        }
        if !finished {
            // The caller parks: the reactor must watch this connection now.
            self.watch_now();
        }
        (finished, served)
    }

    /// Ends a driver's burst (`read_one_corking`): what it corked goes out.
    fn end_burst(self: &Arc<Self>, corking: &mut bool) {
        *corking = false;
        // Cleared before the flush: a sender that saw it set corked under
        // the write lock, which the flush then takes.
        self.reader_active.store(false, Ordering::SeqCst);
        self.flush_locked();
    }

    /// Asks the reactor to look at this connection now if it left it
    /// unwatched for a driver.
    fn watch_now(self: &Arc<Self>) {
        if self.deferred.load(Ordering::Acquire) {
            self.hand_to_reactor();
        }
    }

    /// Before a driver runs a job: frames buffered behind it are invisible
    /// to epoll, so the reactor must read them while the job runs (it may
    /// be long, or wait for one of them).
    fn watch_while_busy(self: &Arc<Self>) {
        let buffered = self.read.try_lock().map(|r| r.has_buffered()).unwrap_or(true) || self.tls.as_ref().is_some_and(|t| t.buffered());
        if buffered || self.deferred.load(Ordering::Acquire) {
            self.hand_to_reactor();
        }
    }

    /// Puts this connection on the reactor's list to look at now.
    fn hand_to_reactor(self: &Arc<Self>) {
        if let Some(w) = self.watcher() {
            w.rearm(self);
        }
    }
}

/// The clock of the liveness marks, read on every read with data: coarse
/// (milliseconds), as the heartbeat timeouts it serves are seconds.
fn liveness_ns() -> u64 {
    sys::coarse_monotonic_ns()
}

fn push_frame(buf: &mut Vec<u8>, h: &[u8], meta: &[u8], payload: &[u8]) {
    buf.reserve(h.len() + meta.len() + payload.len());
    buf.extend_from_slice(h);
    buf.extend_from_slice(meta);
    buf.extend_from_slice(payload);
}

/// The bytes of `parts` from `skip` on, in one buffer.
fn rest_of(parts: &[&[u8]], mut skip: usize) -> Vec<u8> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut v = Vec::with_capacity(total.saturating_sub(skip));
    for p in parts {
        if skip >= p.len() {
            skip -= p.len();
            continue;
        }
        v.extend_from_slice(&p[skip..]);
        skip = 0;
    }
    v
}

/// Keeps a small cork buffer's allocation for next time.
fn recycle_buf(mut v: Vec<u8>) -> Vec<u8> {
    if v.capacity() > CORK_MAX * 2 {
        return Vec::new();
    }
    v.clear();
    v
}

/// Runs `f` with the responses this thread sends held until its next
/// write to their connection or its next wait (`flush_lingering`), at the
/// latest `HOST_FLUSH_DELAY`: a local operation that answers another
/// process's parked request (a put into a channel kept here that a remote
/// take waits on), which the caller's next request to that process then
/// carries in the same write.
pub(crate) fn lingering<T>(f: impl FnOnce() -> T) -> T {
    let prev = LINGER.with(|l| l.replace(true));
    let r = f();
    LINGER.with(|l| l.set(prev));
    r
}

/// Lists `conn` for this thread's next `flush_lingering`, once: a thread
/// that never waits must not grow its list put after put.
fn note_lingering(conn: &Arc<Conn>) {
    let me = Arc::downgrade(conn);
    LINGERING.with(|l| {
        let mut l = l.borrow_mut();
        if !l.iter().any(|w| w.ptr_eq(&me)) {
            l.push(me);
        }
    });
}

/// Writes what this thread's lingering answers left corked (`lingering`):
/// before it waits for anything, or its host polls.
pub(crate) fn flush_lingering() {
    let conns = LINGERING.with(|l| {
        let mut l = l.borrow_mut();
        (!l.is_empty()).then(|| std::mem::take(&mut *l))
    });
    for c in conns.into_iter().flatten().filter_map(|w| w.upgrade()) {
        c.flush();
    }
}

thread_local! {
    /// Responses this thread sends now linger (`lingering`).
    static LINGER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Connections this thread left lingering answers on.
    static LINGERING: std::cell::RefCell<Vec<Weak<Conn>>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The connection whose responses this thread corks, while it serves
    /// a batch of requests read together.
    static CORKED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// The connection a host thread corks its responses on (`host_cork`),
    /// kept alive and flushed when the cork ends.
    static HOST_CORKED: std::cell::RefCell<Option<Arc<Conn>>> = const { std::cell::RefCell::new(None) };
}

/// A host thread corks the responses it sends on `conn` (`None`: it stops,
/// and what it held is written). Held responses are also written by the
/// flusher thread within `HOST_FLUSH_DELAY`, so a host that is slow to end
/// the cork delays them by no more than that.
pub(crate) fn host_cork(conn: Option<&Arc<Conn>>) {
    let prev = HOST_CORKED.with(|h| h.replace(conn.cloned()));
    CORKED.with(|c| c.set(conn.map(|c| Arc::as_ptr(c) as usize).unwrap_or(0)));
    if let Some(p) = prev {
        p.flush();
    }
}

fn host_corking(conn: &Conn) -> bool {
    HOST_CORKED.with(|h| h.borrow().as_ref().is_some_and(|c| std::ptr::eq(Arc::as_ptr(c), conn)))
}

const CORK_FRAME_MAX: u64 = 4096;
const CORK_MAX: usize = 256 * 1024;
const CORK_FRAMES: u32 = 64;
const BACK_TO_BACK_NS: u64 = 20_000;
/// Corked requests of a sender that went on with other work.
const FLUSH_DELAY: Duration = Duration::from_micros(30);
/// A host's corked replies: the host ends the cork itself once it has
/// served its batch, so this is rarely reached, and a longer delay saves
/// the flusher's wake-ups while a host serves batch after batch.
const HOST_FLUSH_DELAY: Duration = Duration::from_millis(1);
/// The flusher keeps waking on its own this long after its last batch.
const TICKING_FOR: Duration = Duration::from_millis(10);

/// Writes out what senders corked and did not write themselves, each
/// connection by its deadline. Its thread sleeps until one is due (and
/// while nothing is queued), so the wake-up is paid once per batch, not
/// per message, and a host's corks, which the host ends itself almost
/// always, cost a wake-up only now and then.
pub struct Flusher {
    queue: Mutex<Vec<(Weak<Conn>, Instant)>>,
    /// When the thread wakes next (ns since `epoch`; `u64::MAX`: parked
    /// with nothing queued): an earlier deadline must wake it.
    wakes_at: AtomicU64,
    epoch: Instant,
    thread: Mutex<Option<std::thread::Thread>>,
    stop: AtomicBool,
}

impl Flusher {
    pub fn start() -> Arc<Flusher> {
        let f = Arc::new(Flusher {
            queue: Mutex::new(Vec::new()),
            wakes_at: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
            thread: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&f);
        let t = std::thread::Builder::new()
            .name("cluster-flush".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                let mut wait = Duration::from_millis(500);
                let mut last_busy = Instant::now();
                loop {
                    std::thread::park_timeout(wait);
                    let Some(f) = weak.upgrade() else { return };
                    if f.stop.load(Ordering::Acquire) {
                        return;
                    }
                    wait = f.flush_due(&mut last_busy);
                }
            })
            .expect("spawn flusher thread");
        *f.thread.lock() = Some(t.thread().clone());
        f
    }

    /// Flushes the connections that are due; how long to sleep. While
    /// batches keep coming (within `TICKING_FOR` of the last), it wakes every
    /// `HOST_FLUSH_DELAY` on its own, so that a sender with a deadline no
    /// earlier than that never needs to wake it.
    fn flush_due(&self, last_busy: &mut Instant) -> Duration {
        let now = Instant::now();
        let mut due = Vec::new();
        let wait = {
            let mut q = self.queue.lock();
            q.retain(|(c, at)| {
                if *at <= now {
                    due.push(c.clone());
                }
                *at > now
            });
            if !q.is_empty() || !due.is_empty() {
                *last_busy = now;
            }
            let wait = match q.iter().map(|(_, at)| *at).min() {
                Some(t) => Some(t.saturating_duration_since(now).min(HOST_FLUSH_DELAY)),
                None if now.duration_since(*last_busy) < TICKING_FOR => Some(HOST_FLUSH_DELAY),
                None => None,
            };
            let at = wait.map_or(u64::MAX, |w| (now + w).duration_since(self.epoch).as_nanos() as u64);
            self.wakes_at.store(at, Ordering::Release);
            wait
        };
        for c in due.iter().filter_map(|w| w.upgrade()) {
            c.flush_at.store(u64::MAX, Ordering::Release);
            c.flush();
        }
        wait.unwrap_or(Duration::from_millis(500))
    }

    /// Has `conn` flushed within `delay` (unless its sender does first).
    fn schedule(&self, conn: &Arc<Conn>, delay: Duration) {
        let at = Instant::now() + delay;
        let at_ns = at.duration_since(self.epoch).as_nanos() as u64;
        if conn.flush_at.fetch_min(at_ns, Ordering::AcqRel) <= at_ns {
            return;
        }
        let wake = {
            let mut q = self.queue.lock();
            q.push((Arc::downgrade(conn), at));
            self.wakes_at.fetch_min(at_ns, Ordering::AcqRel) > at_ns
        };
        if wake {
            if let Some(t) = self.thread.lock().as_ref() {
                t.unpark();
            }
        }
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.lock().as_ref() {
            t.unpark();
        }
    }
}

enum Step {
    Job(Job),
    Dispatched,
    Busy,
    Empty,
    Closed(Option<Error>),
}

/// How a pump of one connection ended.
pub(crate) enum PumpEnd {
    /// Read to empty: watch it again.
    Empty,
    /// Someone else is reading it.
    Busy,
    /// This thread lost the reactor role while running a job.
    Replaced,
    Closed,
}

#[cfg(test)]
mod tests {
    //! Regressions for the races the model tests (`tests/model_conn.rs`)
    //! found, each forced here on real sockets.
    use super::*;
    use crate::wire::{Kind, HEADER_LEN};
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;

    fn pair() -> (Arc<Conn>, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (Conn::new(a, 1 << 30, Flusher::start()).unwrap(), b)
    }

    fn frame(kind: Kind, id: u64, payload: &[u8]) -> Vec<u8> {
        let mut h = Header::new(kind, 1, 1, id);
        h.payload_len = payload.len() as u64;
        let mut v = h.encode().to_vec();
        v.extend_from_slice(payload);
        v
    }

    /// Counts the reactor's "look now" requests.
    #[derive(Default)]
    struct Looks(AtomicU32);

    impl Watcher for Looks {
        fn rearm(&self, _conn: &Arc<Conn>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn want_write(&self, _conn: &Arc<Conn>) {}
        fn forget(&self, _conn: &Conn) {}
    }

    fn watched(c: &Arc<Conn>) -> Arc<Looks> {
        let w = Arc::new(Looks::default());
        let weak: Weak<dyn Watcher> = Arc::downgrade(&w) as Weak<dyn Watcher>;
        let _ = c.watcher.set(weak);
        w
    }

    /// Requests become jobs that note how many looks the reactor was
    /// asked for by the time they run; a response runs `on_response`.
    type OnResponse = Box<dyn Fn(&Arc<Conn>) + Send + Sync>;

    struct Owner {
        looks: Arc<Looks>,
        seen_in_job: AtomicU32,
        jobs: AtomicU32,
        responses: AtomicU32,
        on_response: OnResponse,
    }

    impl Dispatch for Owner {
        fn on_frame(self: &Arc<Self>, conn: &Arc<Conn>, frame: wire::Frame) -> Option<Job> {
            match frame.header.kind {
                Kind::Request => {
                    let me = self.clone();
                    Some(Box::new(move || {
                        me.seen_in_job.store(me.looks.0.load(Ordering::SeqCst), Ordering::SeqCst);
                        me.jobs.fetch_add(1, Ordering::SeqCst);
                    }))
                }
                Kind::Response => {
                    (self.on_response)(conn);
                    self.responses.fetch_add(1, Ordering::SeqCst);
                    None
                }
                _ => None,
            }
        }
        fn on_closed(self: &Arc<Self>, _conn: &Arc<Conn>, _why: Option<Error>) {}
        fn spin(&self) -> Duration {
            Duration::from_millis(50)
        }
        fn is_shutting_down(&self) -> bool {
            false
        }
    }

    fn owner(looks: &Arc<Looks>, on_response: impl Fn(&Arc<Conn>) + Send + Sync + 'static) -> Arc<Owner> {
        Arc::new(Owner {
            looks: looks.clone(),
            seen_in_job: AtomicU32::new(0),
            jobs: AtomicU32::new(0),
            responses: AtomicU32::new(0),
            on_response: Box::new(on_response),
        })
    }

    /// Model: `finds_pre_fix_writer_end_flush`. A response queued behind a
    /// large request that waits for room was left queued when the request
    /// finished: `flush()` saw neither `has_corked` nor `backlog`.
    #[test]
    fn frames_queued_behind_a_large_writer_go_out_when_it_finishes() {
        let (c, mut peer) = pair();
        let big = vec![7u8; 32 << 20];
        let c2 = c.clone();
        let writer = std::thread::spawn(move || c2.send(Header::new(Kind::Request, 1, 1, 1), &[], &big));
        let t = Instant::now();
        while !c.out.lock().writer {
            assert!(t.elapsed() < Duration::from_secs(10), "the large request never waited for room");
            std::thread::sleep(Duration::from_millis(1));
        }
        c.send(Header::new(Kind::Response, 1, 1, 2), &[], b"reply").unwrap();
        assert!(c.queued_bytes() > 0, "the response should queue behind the writer");
        let mut got = vec![0u8; HEADER_LEN + (32 << 20)];
        peer.read_exact(&mut got).unwrap();
        writer.join().unwrap().unwrap();
        assert_eq!(c.queued_bytes(), 0, "the response queued behind the writer was not written");
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut reply = vec![0u8; HEADER_LEN + 5];
        peer.read_exact(&mut reply).unwrap();
        assert_eq!(&reply[HEADER_LEN..], b"reply");
    }

    /// Model: `finds_pre_fix_inline_job_hiding_the_buffer`. A driver that
    /// runs a call inline must hand the frames read behind it to the
    /// reactor: epoll cannot see them, and the job may wait for one.
    #[test]
    fn a_driver_running_a_job_hands_the_frames_behind_it_to_the_reactor() {
        let (c, mut peer) = pair();
        let looks = watched(&c);
        let d = owner(&looks, |_| {});
        peer.write_all(&[frame(Kind::Request, 1, b"call"), frame(Kind::Oneway, 2, b"later")].concat()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        c.drive(&d, Duration::from_secs(5), &|| d.jobs.load(Ordering::SeqCst) > 0);
        assert_eq!(d.jobs.load(Ordering::SeqCst), 1);
        assert!(d.seen_in_job.load(Ordering::SeqCst) >= 1, "the job ran with a frame buffered behind it and the reactor not told");
    }

    /// A connection whose owner sends a request for each response it
    /// reads, noting how many bytes were held in the cork at that moment.
    #[allow(clippy::type_complexity)]
    fn answering_pair() -> (Arc<Conn>, TcpStream, Arc<Owner>, Arc<Mutex<Vec<usize>>>) {
        let (c, peer) = pair();
        let looks = watched(&c);
        let held = Arc::new(Mutex::new(Vec::new()));
        let h = held.clone();
        let d = owner(&looks, move |conn| {
            h.lock().push(conn.queued_bytes());
            conn.send(Header::new(Kind::Request, 1, 1, 9), &[], b"next").unwrap();
        });
        (c, peer, d, held)
    }

    /// Replies read together (a map's, from one worker): the requests their
    /// completions send go out in one write once the last is handled, not
    /// one write each.
    #[test]
    fn a_driver_corks_what_replies_read_together_send_until_the_last_is_handled() {
        let (c, mut peer, d, held) = answering_pair();
        peer.write_all(&[frame(Kind::Response, 1, b"a"), frame(Kind::Response, 2, b"b")].concat()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(c.drive(&d, Duration::from_secs(5), &|| d.responses.load(Ordering::SeqCst) == 2));
        assert_eq!(*held.lock(), vec![0, HEADER_LEN + 4], "the first reply's request should wait for the second reply");
        assert_eq!(c.queued_bytes(), 0, "the burst's requests were not written at its end");
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = vec![0u8; 2 * (HEADER_LEN + 4)];
        peer.read_exact(&mut got).unwrap();
        assert_eq!((&got[HEADER_LEN..HEADER_LEN + 4], &got[2 * HEADER_LEN + 4..]), (&b"next"[..], &b"next"[..]));
        // A lone reply's request is not held.
        held.lock().clear();
        peer.write_all(&frame(Kind::Response, 3, b"c")).unwrap();
        assert!(c.drive(&d, Duration::from_secs(5), &|| d.responses.load(Ordering::SeqCst) == 3));
        assert_eq!(*held.lock(), vec![0]);
        assert_eq!(c.queued_bytes(), 0, "a lone reply's request should go out at once");
    }

    /// A wait whose reply was read leaves the socket alone: with nothing
    /// buffered behind the reply, one more read would only find it empty,
    /// a system call on every round trip. A host's loop reads on: more of
    /// a burst may wait there, and the host then gets it in one turn (a
    /// Julia pmap lost 7-10% when it did not).
    #[test]
    fn a_wait_makes_one_read_for_its_reply_and_a_host_drive_reads_on() {
        let (c, mut peer, d, _held) = answering_pair();
        let mut reads_for_reply = |id: u64, host: bool| {
            peer.write_all(&frame(Kind::Response, id, b"a")).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            let before = c.read.lock().reads();
            let done = || d.responses.load(Ordering::SeqCst) == id as u32;
            let finished = if host { c.drive_served(&d, Duration::from_secs(5), &done).0 } else { c.drive(&d, Duration::from_secs(5), &done) };
            assert!(finished);
            c.read.lock().reads() - before
        };
        assert_eq!(reads_for_reply(1, false), 1, "the wait read the socket again after its reply");
        assert_eq!(reads_for_reply(2, true), 2, "a host's drive should read the socket on");
    }

    /// Review finding: frames a driver dispatches after its wait ended
    /// (read along with its reply) must not leave the connection corking
    /// requests for a reader that is gone (nobody would write them).
    #[test]
    fn frames_dispatched_after_a_drive_leave_nothing_corked() {
        let (c, mut peer, d, _held) = answering_pair();
        peer.write_all(&[frame(Kind::Response, 1, b"a"), frame(Kind::Response, 2, b"b"), frame(Kind::Response, 3, b"c")].concat()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(c.drive(&d, Duration::from_secs(5), &|| d.responses.load(Ordering::SeqCst) >= 1));
        assert_eq!(d.responses.load(Ordering::SeqCst), 3, "the frames behind the reply were not dispatched");
        assert!(!c.reader_active.load(Ordering::SeqCst), "left corking with no reader to write");
        assert_eq!(c.queued_bytes(), 0);
        c.send(Header::new(Kind::Request, 1, 1, 10), &[], b"late").unwrap();
        // Back to back with the others: corked for the flusher at most.
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = vec![0u8; 4 * (HEADER_LEN + 4)];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got[3 * (HEADER_LEN + 4) + HEADER_LEN..], b"late");
    }

    /// The reactor's form of the one above: a pump writes what frames read
    /// together send once it has handled them all.
    #[test]
    fn a_pump_writes_what_frames_read_together_send_once_it_has_handled_them() {
        let (c, mut peer, d, held) = answering_pair();
        peer.write_all(&[frame(Kind::Response, 1, b"a"), frame(Kind::Response, 2, b"b"), frame(Kind::Response, 3, b"c")].concat()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let mut frames = 0;
        assert!(matches!(
            c.pump(&d, &mut frames, &mut |_, job| {
                job();
                true
            }),
            PumpEnd::Empty
        ));
        assert_eq!(frames, 3);
        assert_eq!(*held.lock(), vec![0, HEADER_LEN + 4, 2 * (HEADER_LEN + 4)], "each reply's request should wait for the last reply");
        assert_eq!(c.queued_bytes(), 0, "the requests were not written at the pump's end");
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = vec![0u8; 3 * (HEADER_LEN + 4)];
        peer.read_exact(&mut got).unwrap();
    }

    /// A lingering answer goes out with this thread's next request to the
    /// same process (one write), or when the thread waits; and the flusher
    /// writes one nobody follows.
    #[test]
    fn a_lingering_answer_rides_with_the_next_request_or_the_next_wait() {
        let (c, mut peer) = pair();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        lingering(|| c.send(Header::new(Kind::Response, 1, 1, 1), &[], b"ans1")).unwrap();
        assert_eq!(c.queued_bytes(), HEADER_LEN + 4, "the answer should linger");
        c.send(Header::new(Kind::Request, 1, 1, 2), &[], b"req1").unwrap();
        assert_eq!(c.queued_bytes(), 0, "the request should carry the lingering answer");
        let mut got = vec![0u8; 2 * (HEADER_LEN + 4)];
        peer.read_exact(&mut got).unwrap();
        assert_eq!((&got[HEADER_LEN..HEADER_LEN + 4], &got[2 * HEADER_LEN + 4..]), (&b"ans1"[..], &b"req1"[..]));
        // A wait of this thread sends it.
        lingering(|| c.send(Header::new(Kind::Response, 1, 1, 3), &[], b"ans2")).unwrap();
        assert_eq!(c.queued_bytes(), HEADER_LEN + 4);
        flush_lingering();
        assert_eq!(c.queued_bytes(), 0, "flush_lingering left it corked");
        let mut got = vec![0u8; HEADER_LEN + 4];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got[HEADER_LEN..], b"ans2");
        // A thread that never waits lists a connection once.
        for _ in 0..3 {
            lingering(|| c.send(Header::new(Kind::Response, 1, 1, 5), &[], b"more")).unwrap();
            flush_now_for_test(&c);
        }
        assert_eq!(LINGERING.with(|l| l.borrow().len()), 1);
        flush_lingering();
        let mut more = vec![0u8; 3 * (HEADER_LEN + 4)];
        peer.read_exact(&mut more).unwrap();
        // Nobody follows (another thread's answer): the flusher writes it.
        let c2 = c.clone();
        std::thread::spawn(move || lingering(|| c2.send(Header::new(Kind::Response, 1, 1, 4), &[], b"ans3")).unwrap()).join().unwrap();
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got[HEADER_LEN..], b"ans3");
    }

    /// Writes what `c` holds, as the flusher would, without touching this
    /// thread's list of lingering connections.
    fn flush_now_for_test(c: &Arc<Conn>) {
        c.flush_locked();
    }

    /// A host that corks its replies and does not end the cork: the
    /// flusher writes them (after `HOST_FLUSH_DELAY`); a connection corking
    /// again meanwhile is on its queue once.
    #[test]
    fn the_flusher_writes_what_a_host_corked_and_queues_a_connection_once() {
        let (c, mut peer) = pair();
        host_cork(Some(&c));
        c.send(Header::new(Kind::Response, 1, 1, 1), &[], b"held").unwrap();
        assert_eq!(c.queued_bytes(), HEADER_LEN + 4, "a host's reply should be held while it corks");
        c.flusher.schedule(&c, HOST_FLUSH_DELAY);
        assert_eq!(c.flusher.queue.lock().len(), 1, "a connection already queued was queued again");
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = vec![0u8; HEADER_LEN + 4];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got[HEADER_LEN..], b"held");
        host_cork(None);
        // Queued again once flushed.
        let t = Instant::now();
        while c.flush_at.load(Ordering::Acquire) != u64::MAX {
            assert!(t.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(1));
        }
        c.flusher.schedule(&c, HOST_FLUSH_DELAY);
        let queued = c.flush_at.load(Ordering::Acquire);
        assert_ne!(queued, u64::MAX);
        // An earlier deadline (a corked request's) is queued too, and kept.
        c.flusher.schedule(&c, FLUSH_DELAY);
        assert!(c.flush_at.load(Ordering::Acquire) < queued, "a corked request would wait for a host's deadline");
    }

    /// Review finding, the TLS form of the one above: the next frame's
    /// ciphertext read from the socket along with a large frame's end
    /// waits in the session (not yet decrypted), where epoll cannot see it.
    #[test]
    fn a_tls_driver_running_a_job_hands_the_ciphertext_behind_it_to_the_reactor() {
        use std::os::unix::io::AsRawFd;
        let (client, a, server, b) = crate::net::tls::tests::pair(b"k", b"k");
        let client = client.unwrap();
        let c = Conn::with_tls(b, 1 << 30, Flusher::start(), Some(server)).unwrap();
        let looks = watched(&c);
        let d = owner(&looks, |_| {});
        // Two writes, as two sends make them: the first frame ends on a
        // record boundary, the second's records follow it.
        for bytes in [frame(Kind::Request, 1, &vec![3u8; 100_000]), frame(Kind::Oneway, 2, &vec![4u8; 8192])] {
            let mut skip = 0;
            while skip < bytes.len() || client.pending_out() {
                let n = client.write(a.as_raw_fd(), &[&bytes], skip).unwrap();
                skip += n;
                if n == 0 {
                    sys::poll_out(a.as_raw_fd(), Some(Duration::from_millis(50))).unwrap();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
        c.drive(&d, Duration::from_secs(5), &|| d.jobs.load(Ordering::SeqCst) > 0);
        assert_eq!(d.jobs.load(Ordering::SeqCst), 1);
        assert!(d.seen_in_job.load(Ordering::SeqCst) >= 1, "the job ran with a frame staged in the session and the reactor not told");
    }

    /// Model: `finds_pre_fix_drain_giving_up`. A driver whose last loop
    /// finds the reader's lock taken by a thread that does not read
    /// (`recycle`, `release_spare`, `mid_frame`) must hand the frames it
    /// buffered to the reactor.
    #[test]
    fn a_driver_that_cannot_dispatch_what_it_buffered_hands_it_to_the_reactor() {
        let (c, mut peer) = pair();
        let looks = watched(&c);
        let d = owner(&looks, |_| {});
        peer.write_all(&[frame(Kind::Response, 1, b"reply"), frame(Kind::Oneway, 2, b"behind")].concat()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        // Once the reply is in, and before the driver's last loop, another
        // thread takes the reader's lock (as `recycle` does; the driver
        // holds no lock while it asks whether it is done) and keeps it
        // until the driver has returned.
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Mutex::new(Some(release_rx));
        let holder = Mutex::new(None);
        let done = || {
            if d.responses.load(Ordering::SeqCst) == 0 {
                return false;
            }
            if let Some(rx) = release_rx.lock().take() {
                let (held_tx, held_rx) = mpsc::channel();
                let conn = c.clone();
                *holder.lock() = Some(std::thread::spawn(move || {
                    let g = conn.read.lock();
                    held_tx.send(()).unwrap();
                    let _ = rx.recv();
                    drop(g);
                }));
                held_rx.recv().unwrap();
            }
            true
        };
        assert!(c.drive(&d, Duration::from_secs(5), &done));
        let looked = looks.0.load(Ordering::SeqCst);
        release_tx.send(()).unwrap();
        holder.lock().take().expect("the reply was dispatched").join().unwrap();
        assert!(c.read.lock().has_buffered(), "nothing was left buffered: nothing tested");
        assert!(looked >= 1, "the driver left a frame buffered without telling the reactor");
    }
}

#[cfg(test)]
mod fuzz_regressions {
    use super::*;
    use std::io::Read;
    use std::os::unix::io::{FromRawFd, IntoRawFd};
    use std::os::unix::net::UnixStream;

    /// Found by fuzzing: the head sent a welcome over 64 KiB with its meta
    /// length truncated to 16 bits. Every sender goes through `send_mode`.
    #[test]
    fn a_meta_over_the_limit_is_refused_before_anything_is_sent() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        // SAFETY: a stream socket, owned from here on by the TcpStream.
        let stream = unsafe { TcpStream::from_raw_fd(ours.into_raw_fd()) };
        let flusher = Flusher::start();
        let conn = Conn::new(stream, 1 << 30, flusher.clone()).unwrap();
        conn.peer.store(4, Ordering::Release);
        let big = vec![b'x'; wire::MAX_META + 1];
        for (kind, nowait) in [(wire::Kind::Request, false), (wire::Kind::Response, false), (wire::Kind::Oneway, true)] {
            let h = Header::new(kind, 1, 1, 9);
            let e = if nowait { conn.send_nowait(h, &big, b"p") } else { conn.send(h, &big, b"p") }.unwrap_err();
            assert_eq!((e.kind, e.pid), (ErrorKind::TooLarge, 4), "{e}");
        }
        assert!(!conn.is_closed(), "a refused message does not cost the connection");
        conn.send(Header::new(wire::Kind::Oneway, 1, 2, 0), b"ok", &[]).unwrap();
        let mut hb = [0u8; wire::HEADER_LEN];
        theirs.read_exact(&mut hb).unwrap();
        let h = Header::decode(&hb, 1 << 20).unwrap();
        assert_eq!((h.op, h.meta_len, h.payload_len), (2, 2, 0), "the first frame on the wire is the one that fits");
        flusher.stop();
    }
}
