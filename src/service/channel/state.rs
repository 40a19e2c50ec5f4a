//! One channel as its owner keeps it: the buffered elements, the parked
//! operations (waiting puts with their element, waiting takes, fetches and
//! waits, each with where its answer goes), whether it is open, the
//! processes it is bound to and who holds references to it.
//!
//! Every operation only changes the state and lists the answers it makes;
//! the caller sends them once it has released the channel's lock (an
//! answer may complete a local future whose continuation uses the channel
//! again).
//!
//! Semantics are those of Julia's `Channel`: elements are taken in FIFO
//! order; a put waits while the channel is full and a take, fetch or wait
//! while nothing is there; a capacity of 0 is unbuffered (a put waits for a
//! taker and hands its element over; fetch is refused); `close` fails every
//! waiting put and, once nothing is left to take, every waiting take, while
//! what is buffered can still be taken.

use crate::error::{Error, ErrorKind};
use crate::node::ReplyTo;
use crate::service::holders::Holders;
use std::collections::VecDeque;

/// What a parked reader waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Want {
    /// Remove the first element.
    Take,
    /// A copy of the first element.
    Fetch,
    /// Only that an element is there.
    Wait,
}

/// A parked take, fetch or wait.
pub(crate) struct Reader {
    pub from: u32,
    /// The request's id on its sender (cancel names it).
    pub req: u64,
    pub want: Want,
    pub reply: ReplyTo,
}

/// A parked put, with its element.
pub(crate) struct Writer {
    pub from: u32,
    pub req: u64,
    pub item: Vec<u8>,
    pub reply: ReplyTo,
}

/// An answer to send once the channel's lock is released.
pub(crate) struct Answer(pub ReplyTo, pub Result<Vec<u8>, Error>);

/// The n_avail / capacity / open snapshot a QUERY answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelState {
    /// Elements a take would get without waiting (buffered ones; for an
    /// unbuffered channel, the puts waiting for a taker).
    pub n_avail: usize,
    /// `UNBOUNDED` (usize::MAX) for an unbounded channel.
    pub capacity: usize,
    pub open: bool,
}

impl ChannelState {
    pub const LEN: usize = 17;

    /// 17 bytes: n_avail and capacity as little-endian u64, then open (0/1).
    pub fn to_bytes(&self) -> [u8; 17] {
        let mut b = [0u8; 17];
        b[..8].copy_from_slice(&(self.n_avail as u64).to_le_bytes());
        b[8..16].copy_from_slice(&(self.capacity as u64).to_le_bytes());
        b[16] = self.open as u8;
        b
    }

    pub fn from_bytes(b: &[u8]) -> Option<ChannelState> {
        if b.len() != Self::LEN || b[16] > 1 {
            return None;
        }
        let n = u64::from_le_bytes(b[..8].try_into().ok()?);
        let c = u64::from_le_bytes(b[8..16].try_into().ok()?);
        Some(ChannelState { n_avail: usize::try_from(n).unwrap_or(usize::MAX), capacity: usize::try_from(c).unwrap_or(usize::MAX), open: b[16] == 1 })
    }

    pub fn is_ready(&self) -> bool {
        self.n_avail > 0
    }
    pub fn is_empty(&self) -> bool {
        self.n_avail == 0
    }
}

pub(crate) struct Chan {
    /// The channel's name in messages, e.g. "channel 2:0x10000000001".
    pub name: String,
    /// usize::MAX: unbounded; 0: unbuffered.
    pub capacity: usize,
    items: VecDeque<Vec<u8>>,
    readers: VecDeque<Reader>,
    writers: VecDeque<Writer>,
    /// Why it is closed; None while open.
    closed: Option<Error>,
    /// Processes whose departure closes it.
    pub bound: Vec<u32>,
    pub refs: Holders,
    /// Set when its last reference went: it is about to be forgotten.
    pub freed: bool,
}

impl Chan {
    pub fn new(name: String, capacity: usize, refs: Holders) -> Chan {
        Chan { name, capacity, items: VecDeque::new(), readers: VecDeque::new(), writers: VecDeque::new(), closed: None, bound: Vec::new(), refs, freed: false }
    }

    pub fn is_open(&self) -> bool {
        self.closed.is_none()
    }

    pub fn state(&self) -> ChannelState {
        let n_avail = if self.capacity == 0 { self.writers.len() } else { self.items.len() };
        ChannelState { n_avail, capacity: self.capacity, open: self.is_open() }
    }

    /// Parked operations (a gauge for tests).
    #[cfg(test)]
    pub fn parked(&self) -> (usize, usize) {
        (self.readers.len(), self.writers.len())
    }

    pub fn put(&mut self, w: Writer, out: &mut Vec<Answer>) {
        if let Some(e) = &self.closed {
            return out.push(Answer(w.reply, Err(e.clone())));
        }
        if self.writers.is_empty() && self.items.len() < self.capacity {
            self.items.push_back(w.item);
            out.push(Answer(w.reply, Ok(Vec::new())));
        } else {
            self.writers.push_back(w);
        }
        self.pump(out);
    }

    pub fn get(&mut self, r: Reader, out: &mut Vec<Answer>) {
        if r.want == Want::Fetch && self.capacity == 0 {
            let e = Error::new(ErrorKind::InvalidArgument, format!("fetch is not supported on an unbuffered channel ({})", self.name));
            return out.push(Answer(r.reply, Err(e)));
        }
        self.readers.push_back(r);
        self.pump(out);
    }

    /// Closes with `why` (the first reason stays): waiting puts fail now,
    /// waiting readers once nothing is left for them.
    pub fn close(&mut self, why: Error, out: &mut Vec<Answer>) {
        if self.closed.is_some() {
            return;
        }
        for w in self.writers.drain(..) {
            out.push(Answer(w.reply, Err(why.clone())));
        }
        self.closed = Some(why);
        self.pump(out);
    }

    /// Fails every parked operation (the channel is freed or the node closes).
    pub fn fail_all(&mut self, why: &Error, out: &mut Vec<Answer>) {
        for w in self.writers.drain(..) {
            out.push(Answer(w.reply, Err(why.clone())));
        }
        for r in self.readers.drain(..) {
            out.push(Answer(r.reply, Err(why.clone())));
        }
    }

    /// Withdraws the parked operation `req` of `from`, answered with `why`.
    /// False when it is not parked (already served, or never was).
    pub fn cancel(&mut self, from: u32, req: u64, why: Error, out: &mut Vec<Answer>) -> bool {
        if let Some(i) = self.readers.iter().position(|r| r.from == from && r.req == req) {
            let r = self.readers.remove(i).expect("found");
            out.push(Answer(r.reply, Err(why)));
            return true;
        }
        if let Some(i) = self.writers.iter().position(|w| w.from == from && w.req == req) {
            let w = self.writers.remove(i).expect("found");
            out.push(Answer(w.reply, Err(why)));
            self.pump(out);
            return true;
        }
        false
    }

    /// An element taken by a take whose future was dropped before it
    /// completed comes back, first in line (even past the capacity, or
    /// after close: it was in the channel).
    pub fn untake(&mut self, item: Vec<u8>, out: &mut Vec<Answer>) {
        self.items.push_front(item);
        self.pump(out);
    }

    /// Process `pid` left: its parked operations are dropped (a reader
    /// that is gone must not be handed an element, which would be lost;
    /// a writer's put never completed), and what it held is released.
    /// True when the channel is bound to it (the caller closes it).
    pub fn drop_process(&mut self, pid: u32, out: &mut Vec<Answer>) -> bool {
        self.readers.retain(|r| r.from != pid);
        let before = self.writers.len();
        self.writers.retain(|w| w.from != pid);
        if self.writers.len() != before {
            self.pump(out);
        }
        self.refs.drop_holder(pid);
        self.bound.contains(&pid)
    }

    /// Serves what can be served: parked puts into free room, then readers
    /// in FIFO order while an element is there; once closed, the readers
    /// left (nothing is there for them) fail.
    fn pump(&mut self, out: &mut Vec<Answer>) {
        loop {
            while self.items.len() < self.capacity {
                let Some(w) = self.writers.pop_front() else { break };
                self.items.push_back(w.item);
                out.push(Answer(w.reply, Ok(Vec::new())));
            }
            let Some(front) = self.readers.front() else { break };
            if front.reply.is_gone() {
                // Its process left (the service is told a moment later):
                // an element handed to it would be lost.
                self.readers.pop_front();
                continue;
            }
            match front.want {
                Want::Take => {
                    if let Some(item) = self.items.pop_front() {
                        let r = self.readers.pop_front().expect("front");
                        out.push(Answer(r.reply, Ok(item)));
                    } else if let Some(w) = self.writers.pop_front() {
                        // Unbuffered: the element goes from the put to the take.
                        let r = self.readers.pop_front().expect("front");
                        out.push(Answer(w.reply, Ok(Vec::new())));
                        out.push(Answer(r.reply, Ok(w.item)));
                    } else {
                        break;
                    }
                }
                Want::Fetch => match self.items.front() {
                    Some(item) => {
                        let copy = item.clone();
                        let r = self.readers.pop_front().expect("front");
                        out.push(Answer(r.reply, Ok(copy)));
                    }
                    None => break,
                },
                Want::Wait => {
                    if self.items.is_empty() && self.writers.is_empty() {
                        break;
                    }
                    let r = self.readers.pop_front().expect("front");
                    out.push(Answer(r.reply, Ok(Vec::new())));
                }
            }
        }
        if let Some(e) = &self.closed {
            for r in self.readers.drain(..) {
                out.push(Answer(r.reply, Err(e.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;
    use std::sync::Arc;

    type Out = Arc<Mutex<Vec<Result<Vec<u8>, Error>>>>;

    struct T {
        c: Chan,
        out: Out,
        next: u64,
    }

    impl T {
        fn new(cap: usize) -> T {
            T { c: Chan::new("channel 1:0x1".into(), cap, Holders::held_by(1)), out: Arc::default(), next: 1 }
        }
        /// Runs `f`, sends its answers, returns them.
        fn run(&mut self, f: impl FnOnce(&mut Chan, ReplyTo, u64, &mut Vec<Answer>)) -> Vec<Result<Vec<u8>, Error>> {
            let mut answers = Vec::new();
            let req = self.next;
            self.next += 1;
            f(&mut self.c, ReplyTo::Capture(self.out.clone()), req, &mut answers);
            for Answer(reply, r) in answers {
                match reply {
                    ReplyTo::Capture(v) => v.lock().push(r),
                    _ => unreachable!(),
                };
            }
            std::mem::take(&mut *self.out.lock())
        }
        fn put(&mut self, from: u32, v: &[u8]) -> Vec<Result<Vec<u8>, Error>> {
            let item = v.to_vec();
            self.run(|c, reply, req, out| c.put(Writer { from, req, item, reply }, out))
        }
        fn get(&mut self, from: u32, want: Want) -> Vec<Result<Vec<u8>, Error>> {
            self.run(|c, reply, req, out| c.get(Reader { from, req, want, reply }, out))
        }
    }

    fn oks(v: &[Result<Vec<u8>, Error>]) -> Vec<Vec<u8>> {
        v.iter().map(|r| r.clone().unwrap()).collect()
    }

    #[test]
    fn fifo_with_a_capacity_puts_wait_while_full() {
        let mut t = T::new(2);
        assert_eq!(oks(&t.put(5, b"a")), vec![b"".to_vec()]);
        assert_eq!(oks(&t.put(5, b"b")), vec![b"".to_vec()]);
        assert!(t.put(5, b"c").is_empty(), "full: the third put waits");
        assert_eq!(t.c.state(), ChannelState { n_avail: 2, capacity: 2, open: true });
        assert_eq!(oks(&t.get(6, Want::Fetch)), vec![b"a".to_vec()]);
        // The take frees room: the waiting put goes in and is answered.
        let got = oks(&t.get(6, Want::Take));
        assert_eq!(got.len(), 2);
        assert!(got.contains(&b"a".to_vec()) && got.contains(&b"".to_vec()));
        assert_eq!(oks(&t.get(6, Want::Take)), vec![b"b".to_vec()]);
        assert_eq!(oks(&t.get(6, Want::Take)), vec![b"c".to_vec()]);
        assert!(t.get(6, Want::Take).is_empty(), "empty: the take waits");
        assert!(t.get(7, Want::Wait).is_empty());
        assert_eq!(t.c.parked(), (2, 0));
        // One put serves the waiting take, then the wait sees nothing left.
        assert_eq!(oks(&t.put(5, b"d")), vec![b"".to_vec(), b"d".to_vec()]);
        assert_eq!(t.c.parked(), (1, 0));
        assert_eq!(oks(&t.put(5, b"e")), vec![b"".to_vec(), b"".to_vec()], "the wait is answered, the element stays");
        assert_eq!(t.c.state().n_avail, 1);
    }

    #[test]
    fn close_fails_waiting_puts_and_takes_once_empty() {
        let mut t = T::new(1);
        t.put(5, b"a");
        assert!(t.put(5, b"b").is_empty());
        let why = Error::new(ErrorKind::ChannelClosed, "closed");
        let r = t.run(|c, _, _, out| c.close(why, out));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].as_ref().unwrap_err().kind, ErrorKind::ChannelClosed, "the waiting put fails");
        assert!(!t.c.state().open);
        assert_eq!(t.put(5, b"c")[0].as_ref().unwrap_err().kind, ErrorKind::ChannelClosed, "put after close");
        assert_eq!(oks(&t.get(6, Want::Take)), vec![b"a".to_vec()], "what was buffered is still taken");
        assert_eq!(t.get(6, Want::Take)[0].as_ref().unwrap_err().kind, ErrorKind::ChannelClosed);
        assert_eq!(t.get(6, Want::Wait)[0].as_ref().unwrap_err().kind, ErrorKind::ChannelClosed);
        // A take parked before the close fails with it.
        let mut t = T::new(1);
        assert!(t.get(6, Want::Take).is_empty());
        let r = t.run(|c, _, _, out| c.close(Error::new(ErrorKind::ChannelClosed, "bye"), out));
        assert_eq!(r[0].as_ref().unwrap_err().message, "bye");
    }

    #[test]
    fn unbuffered_hands_over_and_refuses_fetch() {
        let mut t = T::new(0);
        assert!(t.put(5, b"x").is_empty(), "no taker: the put waits");
        assert_eq!(t.c.state().n_avail, 1, "a waiting put is what is available");
        assert_eq!(t.get(6, Want::Fetch)[0].as_ref().unwrap_err().kind, ErrorKind::InvalidArgument);
        assert_eq!(oks(&t.get(6, Want::Wait)), vec![b"".to_vec()]);
        assert_eq!(oks(&t.get(6, Want::Take)), vec![b"".to_vec(), b"x".to_vec()]);
        assert!(t.get(6, Want::Take).is_empty());
        assert_eq!(oks(&t.put(5, b"y")), vec![b"".to_vec(), b"y".to_vec()], "a waiting taker gets it at once");
    }

    #[test]
    fn unbounded_never_waits() {
        let mut t = T::new(usize::MAX);
        for i in 0..1000u32 {
            assert_eq!(t.put(5, &i.to_le_bytes()).len(), 1);
        }
        assert_eq!(t.c.state().n_avail, 1000);
        assert_eq!(oks(&t.get(6, Want::Take)), vec![0u32.to_le_bytes().to_vec()]);
    }

    #[test]
    fn cancel_untake_and_a_departed_process() {
        let mut t = T::new(1);
        t.get(6, Want::Take); // req 1
        t.get(7, Want::Take); // req 2
        let r = t.run(|c, _, _, out| assert!(c.cancel(6, 1, Error::new(ErrorKind::Timeout, "t"), out)));
        assert_eq!(r[0].as_ref().unwrap_err().kind, ErrorKind::Timeout);
        assert!(t.run(|c, _, _, out| assert!(!c.cancel(6, 1, Error::new(ErrorKind::Timeout, "t"), out))).is_empty());
        // 7 dies while parked: the element waits for the next taker.
        let bound = t.run(|c, _, _, out| assert!(!c.drop_process(7, out)));
        assert!(bound.is_empty());
        assert!(t.put(5, b"a").len() == 1);
        assert_eq!(t.c.state().n_avail, 1);
        t.run(|c, _, _, out| c.untake(b"z".to_vec(), out));
        assert_eq!(oks(&t.get(8, Want::Take)), vec![b"z".to_vec()], "an element given back comes first");
        assert_eq!(oks(&t.get(8, Want::Take)), vec![b"a".to_vec()]);
        // A parked put of a process that left never goes in.
        t.put(5, b"b");
        assert!(t.put(9, b"c").is_empty());
        t.c.bound.push(9);
        assert!(t.run(|c, _, _, out| assert!(c.drop_process(9, out))).is_empty());
        assert_eq!(oks(&t.get(8, Want::Take)), vec![b"b".to_vec()]);
        assert!(t.get(8, Want::Take).is_empty());
    }
}
