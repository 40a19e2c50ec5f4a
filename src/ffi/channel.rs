//! `cluster_channel`, a RemoteChannel: a FIFO queue of byte elements kept
//! by one process and used from any process; `cluster_channel_ref`, its
//! copyable form for other processes; `cluster_channel_state`, a snapshot.

use crate::prelude::*;
use super::args::*;
use super::boundary::Handle;
use super::buffer::{buffer_from, cluster_buffer};
use super::ctx::cluster_ctx;
use super::future::{cluster_future, new_future_handle};
use super::handles::{self, Kind};
use super::status::cluster_status;
use crate::{Channel, ChannelRef, ChannelState, Error, ErrorKind};
use std::sync::Arc;

/// A channel: a handle holding one reference to it, which keeps it alive
/// on its owner until freed.
pub struct cluster_channel {
    _private: [u8; 0],
}

/// The small, copyable form of a channel, to send to another process
/// (e.g. inside call arguments), which imports it with
/// `cluster_channel_import`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct cluster_channel_ref {
    /// The process keeping the channel.
    pub owner: i32,
    pub id: u64,
}

/// A snapshot of a channel, as `cluster_channel_query` reports it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct cluster_channel_state {
    /// Elements a take would get without waiting (for an unbuffered
    /// channel: the puts waiting for a taker).
    pub n_avail: usize,
    /// The capacity it was made with; CLUSTER_CHANNEL_UNBOUNDED if none.
    pub capacity: usize,
    /// False once closed (what is buffered can still be taken).
    pub open: bool,
}

/// `cluster_channel_new` capacity of a channel that never fills: SIZE_MAX.
/// (Written into the header by cbindgen.toml, as `SIZE_MAX`.)
/// cbindgen:ignore
pub const CLUSTER_CHANNEL_UNBOUNDED: usize = usize::MAX;

/// The Julia/Distributed default capacity of a RemoteChannel.
pub const CLUSTER_CHANNEL_DEFAULT_CAPACITY: usize = 1;

const _: () = assert!(CLUSTER_CHANNEL_UNBOUNDED == crate::service::channel::UNBOUNDED);

c_handle!(cluster_channel, Kind::Channel, Channel);

fn new_channel_handle(ch: Channel) -> Result<*mut cluster_channel, Error> {
    Ok(handles::insert(Kind::Channel, Arc::new(ch))? as *mut cluster_channel)
}

fn state_out(s: ChannelState) -> cluster_channel_state {
    cluster_channel_state { n_avail: s.n_avail, capacity: s.capacity, open: s.open }
}

/// A new channel kept by process `pid` (0: this process) with room for
/// `capacity` elements: CLUSTER_CHANNEL_DEFAULT_CAPACITY (1) is
/// Distributed's default, CLUSTER_CHANNEL_UNBOUNDED (SIZE_MAX) never
/// fills, 0 is unbuffered (a put waits for a taker and hands its element
/// over; fetch is refused), as Julia's `Channel(0)`. Returns at once, with
/// no round trip: the owner learns of it on the connection every later
/// request of this process goes on.
///
/// Ownership: `*out` receives a new handle holding one reference,
/// released with `cluster_channel_free`.
/// Blocking: only while the creation message is written (and, on a
/// worker, while it first connects to the owner).
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_channel_new(ctx: *mut cluster_ctx, pid: i32, capacity: usize, out: *mut *mut cluster_channel) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        let ch = c.channel(pid_arg(pid)?, capacity)?;
        put(out, "out", new_channel_handle(ch)?)
    })
}

/// Releases the handle's reference. The owner frees the channel (and
/// what is buffered in it) once no process holds a reference; futures
/// of this channel still pending keep it until they are freed. NULL is
/// accepted; a second free is CLUSTER_ERR_BAD_HANDLE.
///
/// Ownership: the handle is gone after the call.
/// Blocking: no (safe from a garbage-collector finalizer; the owner is
/// told in the background).
/// Threads: any, once per channel.
#[no_mangle]
pub extern "C" fn cluster_channel_free(ch: *mut cluster_channel) -> cluster_status {
    ffi!({
        if ch.is_null() {
            return Ok(());
        }
        ch.remove()
    })
}

/// `*out` = the process keeping the channel.
///
/// Ownership: `ch` stays the caller's.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_channel_pid(ch: *mut cluster_channel, out: *mut i32) -> cluster_status {
    ffi!([ch => c] put(out, "out", c.owner() as i32))
}

/// `*out` = how many channels this process keeps (for references held
/// here or anywhere else): 0 once every reference to its channels is gone.
///
/// Ownership: `ctx` stays the caller's.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_channel_count(ctx: *mut cluster_ctx, out: *mut usize) -> cluster_status {
    ffi!([ctx => c] put(out, "out", c.owned_channels()))
}

// ---- put, take, fetch, wait -------------------------------------------------

/// Puts `data[0..len)`, waiting while the channel is full, up to
/// `timeout_ms` (CLUSTER_FOREVER: no limit). On CLUSTER_ERR_TIMEOUT the
/// element did not go in (the put is withdrawn on the owner). Fails with
/// CLUSTER_ERR_CHANNEL_CLOSED once the channel is closed, and with
/// CLUSTER_ERR_PROCESS_EXITED naming the owner if it dies.
///
/// Ownership: `data` is copied or written to the socket before return,
/// never kept.
/// Blocking: yes, while the channel is full, up to `timeout_ms` plus a
/// round trip to withdraw the put.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_channel_put(ch: *mut cluster_channel, data: *const u8, len: usize, timeout_ms: i64) -> cluster_status {
    ffi!([ch => c] c.put_timeout(bytes(data, len, "data")?, timeout_arg(timeout_ms)))
}

/// `cluster_channel_put` as a future, returned at once; it completes (with
/// no value) once the element is in the channel, or fails as the put does.
/// Freeing the future does not withdraw the put. Into a channel kept by
/// this process, a put that answers another process's waiting take leaves
/// that answer for this thread's next message to that process (a request
/// that follows at once then carries it in the same write), or its next
/// wait or `cluster_poll`, and at the latest about a millisecond later;
/// `cluster_channel_put` sends it before it returns.
///
/// Ownership: `data` is copied or written to the socket before return;
/// `*out` receives a new future, released with `cluster_future_free`.
/// Blocking: no (only while a large element is written).
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_channel_put_async(ch: *mut cluster_channel, data: *const u8, len: usize, out: *mut *mut cluster_future) -> cluster_status {
    ffi!([ch => c] {
        check_out(out, "out")?;
        put(out, "out", new_future_handle(c.put_async(bytes(data, len, "data")?)?)?)
    })
}

/// Puts `data[0..len)` and asks for no answer (as `cluster_remote_do` is
/// to `cluster_remotecall`): never waits, even while the channel is full
/// (the element then waits on the owner, so there is no back-pressure:
/// use `cluster_channel_put` for that). A failure on the owner (a closed
/// channel) is only logged there; failing to reach the owner is returned.
///
/// Ownership: `data` is copied or written to the socket before return,
/// never kept.
/// Blocking: only while a large element is written.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_channel_put_nowait(ch: *mut cluster_channel, data: *const u8, len: usize) -> cluster_status {
    ffi!([ch => c] c.put_nowait(bytes(data, len, "data")?))
}

/// Takes the first element (FIFO), waiting while there is none, up to
/// `timeout_ms`. CLUSTER_ERR_CHANNEL_CLOSED once the channel is closed and
/// empty; on CLUSTER_ERR_TIMEOUT no element was taken (the take is
/// withdrawn on the owner). A waiter on a channel whose owner dies fails
/// with CLUSTER_ERR_PROCESS_EXITED naming the owner.
///
/// Ownership: `*out` receives the element, the caller's until
/// `cluster_buffer_free`.
/// Blocking: yes, while the channel is empty, up to `timeout_ms` plus a
/// round trip to withdraw the take.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_channel_take(ch: *mut cluster_channel, timeout_ms: i64, out: *mut cluster_buffer) -> cluster_status {
    ffi!([ch => c] {
        check_out(out, "out")?;
        let v = c.take_timeout(timeout_arg(timeout_ms))?;
        put(out, "out", buffer_from(v)?)
    })
}

/// `cluster_channel_take` as a future, returned at once: its value
/// (`cluster_future_fetch`) is the element. Freeing the future before it
/// completes withdraws the take, and an element it was given meanwhile
/// goes back to the front of the channel; freeing it after it completed
/// drops the element it holds.
///
/// Ownership: `*out` receives a new future, released with
/// `cluster_future_free`; the element's bytes belong to it.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_channel_take_async(ch: *mut cluster_channel, out: *mut *mut cluster_future) -> cluster_status {
    ffi!([ch => c] {
        check_out(out, "out")?;
        put(out, "out", new_future_handle(c.take_async()?)?)
    })
}

/// A copy of the first element, left in the channel, waiting while there
/// is none, up to `timeout_ms`; as `cluster_channel_take` otherwise. An
/// unbuffered channel refuses it (CLUSTER_ERR_INVALID_ARGUMENT).
///
/// Ownership: `*out` receives the copy, the caller's until
/// `cluster_buffer_free`.
/// Blocking: yes, while the channel is empty, up to `timeout_ms`.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_channel_fetch(ch: *mut cluster_channel, timeout_ms: i64, out: *mut cluster_buffer) -> cluster_status {
    ffi!([ch => c] {
        check_out(out, "out")?;
        let v = c.fetch_timeout(timeout_arg(timeout_ms))?;
        put(out, "out", buffer_from(v)?)
    })
}

/// `cluster_channel_fetch` as a future, returned at once; its value is the
/// copy. Freeing it before it completes withdraws the fetch.
///
/// Ownership: `*out` receives a new future, released with `cluster_future_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_channel_fetch_async(ch: *mut cluster_channel, out: *mut *mut cluster_future) -> cluster_status {
    ffi!([ch => c] {
        check_out(out, "out")?;
        put(out, "out", new_future_handle(c.fetch_async()?)?)
    })
}

/// Waits, up to `timeout_ms`, until an element is there (Julia's
/// `wait(channel)`); takes nothing. CLUSTER_ERR_CHANNEL_CLOSED once closed
/// and empty.
///
/// Ownership: `ch` stays the caller's.
/// Blocking: yes, while the channel is empty, up to `timeout_ms`.
/// Threads: any.
#[no_mangle]
pub extern "C" fn cluster_channel_wait(ch: *mut cluster_channel, timeout_ms: i64) -> cluster_status {
    ffi!([ch => c] c.wait(timeout_arg(timeout_ms)))
}

/// `cluster_channel_wait` as a future, returned at once (no value).
/// Freeing it before it completes withdraws the wait.
///
/// Ownership: `*out` receives a new future, released with `cluster_future_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_channel_wait_async(ch: *mut cluster_channel, out: *mut *mut cluster_future) -> cluster_status {
    ffi!([ch => c] {
        check_out(out, "out")?;
        put(out, "out", new_future_handle(c.wait_async()?)?)
    })
}

// ---- state ------------------------------------------------------------------

/// `*out` = the channel's state now: elements available, capacity, open.
///
/// Ownership: `*out` is a plain value.
/// Blocking: a round trip to the owner (none when this process owns it).
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_channel_query(ch: *mut cluster_channel, out: *mut cluster_channel_state) -> cluster_status {
    ffi!([ch => c] {
        check_out(out, "out")?;
        put(out, "out", state_out(c.state()?))
    })
}

/// `cluster_channel_query` as a future, returned at once: its value is 17
/// bytes, read with `cluster_channel_state_decode`.
///
/// Ownership: `*out` receives a new future, released with `cluster_future_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_channel_query_async(ch: *mut cluster_channel, out: *mut *mut cluster_future) -> cluster_status {
    ffi!([ch => c] {
        check_out(out, "out")?;
        put(out, "out", new_future_handle(c.state_async()?)?)
    })
}

/// Reads the value of a `cluster_channel_query_async` future
/// (`data[0..len)`) into `*out`; CLUSTER_ERR_INVALID_ARGUMENT if it is not one.
///
/// Ownership: `data` is read during the call; `*out` is a plain value.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_channel_state_decode(data: *const u8, len: usize, out: *mut cluster_channel_state) -> cluster_status {
    ffi!({
        check_out(out, "out")?;
        let s = ChannelState::from_bytes(bytes(data, len, "data")?).ok_or_else(|| invalid(format!("{len} bytes are not a channel state")))?;
        put(out, "out", state_out(s))
    })
}

/// `*out` = whether an element is there (a take would not wait): Julia's
/// `isready(channel)`.
///
/// Ownership: `ch` stays the caller's.
/// Blocking: a round trip to the owner (none when this process owns it).
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_channel_isready(ch: *mut cluster_channel, out: *mut bool) -> cluster_status {
    ffi!([ch => c] {
        check_out(out, "out")?;
        put(out, "out", c.is_ready()?)
    })
}

/// `*out` = whether no element is there; never takes one.
///
/// Ownership: `ch` stays the caller's.
/// Blocking: a round trip to the owner (none when this process owns it).
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_channel_isempty(ch: *mut cluster_channel, out: *mut bool) -> cluster_status {
    ffi!([ch => c] {
        check_out(out, "out")?;
        put(out, "out", c.is_empty()?)
    })
}

/// `*out` = whether the channel is still open.
///
/// Ownership: `ch` stays the caller's.
/// Blocking: a round trip to the owner (none when this process owns it).
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_channel_isopen(ch: *mut cluster_channel, out: *mut bool) -> cluster_status {
    ffi!([ch => c] {
        check_out(out, "out")?;
        put(out, "out", c.is_open()?)
    })
}

// ---- close and bind -----------------------------------------------------------

/// Closes the channel: waiting puts fail, waiting takes, fetches and waits
/// fail once it is empty, later puts fail, all with
/// CLUSTER_ERR_CHANNEL_CLOSED; what is buffered can still be taken.
/// Closing a closed channel does nothing.
///
/// Ownership: `ch` stays the caller's (closing releases no reference).
/// Blocking: a round trip to the owner (none when this process owns it).
/// Threads: any.
#[no_mangle]
pub extern "C" fn cluster_channel_close(ch: *mut cluster_channel) -> cluster_status {
    ffi!([ch => c] c.close())
}

/// `cluster_channel_close` as a future, returned at once (no value).
///
/// Ownership: `*out` receives a new future, released with `cluster_future_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_channel_close_async(ch: *mut cluster_channel, out: *mut *mut cluster_future) -> cluster_status {
    ffi!([ch => c] {
        check_out(out, "out")?;
        put(out, "out", new_future_handle(c.close_async()?)?)
    })
}

/// Binds the channel to process `pid` (Julia's `bind(channel, task)`, for
/// a producer process): it closes when `pid` leaves, gracefully or not,
/// so its consumers fail with CLUSTER_ERR_CHANNEL_CLOSED instead of
/// waiting forever (the error's process is `pid`). Bound to a process that
/// has already left, it closes at once. A channel may be bound to several.
///
/// Ownership: `ch` stays the caller's.
/// Blocking: a round trip to the owner (none when this process owns it).
/// Threads: any.
#[no_mangle]
pub extern "C" fn cluster_channel_bind(ch: *mut cluster_channel, pid: i32) -> cluster_status {
    ffi!([ch => c] c.bind(pid_arg(pid)?))
}

/// `cluster_channel_bind` as a future, returned at once (no value).
///
/// Ownership: `*out` receives a new future, released with `cluster_future_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_channel_bind_async(ch: *mut cluster_channel, pid: i32, out: *mut *mut cluster_future) -> cluster_status {
    ffi!([ch => c] {
        check_out(out, "out")?;
        put(out, "out", new_future_handle(c.bind_async(pid_arg(pid)?)?)?)
    })
}

// ---- references -------------------------------------------------------------------

/// Makes a reference to send to another process, which imports it with
/// `cluster_channel_import` (once). The owner keeps the channel until
/// every exported reference has been imported and released; an importer
/// that dies releases what it held.
///
/// Ownership: `*out` is a plain value; it must be imported exactly once.
/// Blocking: a round trip to the owner when this process is not the owner
/// (up to 30 s); otherwise no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_channel_export(ch: *mut cluster_channel, out: *mut cluster_channel_ref) -> cluster_status {
    ffi!([ch => c] {
        check_out(out, "out")?;
        let r = c.export()?;
        put(out, "out", cluster_channel_ref { owner: r.owner as i32, id: r.id })
    })
}

/// `cluster_channel_export` as a future, returned at once: its value is
/// the reference, 12 bytes (owner as a little-endian `int32_t`, then id as
/// a little-endian `uint64_t`), to copy into a `cluster_channel_ref`.
///
/// Ownership: `*out` receives a new future, released with `cluster_future_free`.
/// Blocking: no.
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_channel_export_async(ch: *mut cluster_channel, out: *mut *mut cluster_future) -> cluster_status {
    ffi!([ch => c] {
        check_out(out, "out")?;
        put(out, "out", new_future_handle(c.export_async()?)?)
    })
}

/// Turns a reference from `cluster_channel_export` (made here or in any
/// other process) into a channel handle of this process. Import each
/// exported reference once: freeing the handle releases it.
///
/// Ownership: `*r` is read during the call; `*out` receives a new handle,
/// released with `cluster_channel_free`.
/// Blocking: no (the owner is told in the background).
/// Threads: any.
#[no_mangle]
pub unsafe extern "C" fn cluster_channel_import(ctx: *mut cluster_ctx, r: *const cluster_channel_ref, out: *mut *mut cluster_channel) -> cluster_status {
    ffi!([ctx => c] {
        check_out(out, "out")?;
        if r.is_null() {
            return Err(null_arg("ref"));
        }
        let r = &*r;
        if r.owner <= 0 {
            return Err(Error::new(ErrorKind::InvalidArgument, format!("channel reference with owner {}", r.owner)));
        }
        let ch = c.import_channel(ChannelRef { owner: pid_arg(r.owner)?, id: r.id })?;
        put(out, "out", new_channel_handle(ch)?)
    })
}
