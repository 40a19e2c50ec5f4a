//! The few operating-system calls std does not offer: poll, writev on a
//! non-blocking socket, eventfd, signals and random bytes. Each wrapper is
//! safe to call; the `unsafe` blocks only pass valid, owned buffers to libc.
//! `shm`: POSIX shared-memory segments and their mappings; `process`:
//! forked children (fork, pipes, waitpid, PR_SET_PDEATHSIG, signals);
//! `file`: files replaced atomically (O_TMPFILE, linkat, the *at calls).

pub mod file;
pub mod process;
pub mod shm;

use std::io;
use std::os::unix::io::RawFd;
use std::time::{Duration, Instant};

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Waits until `fd` is readable (or has hung up) or `timeout` passes.
/// Returns whether it is ready.
pub fn poll_in(fd: RawFd, timeout: Option<Duration>) -> io::Result<bool> {
    poll_one(fd, libc::POLLIN, timeout)
}

/// Sets a socket's send and receive buffer sizes (tests that need a
/// socket to fill quickly).
pub fn set_socket_buffers(fd: RawFd, bytes: usize) -> io::Result<()> {
    let v = bytes.min(i32::MAX as usize) as libc::c_int;
    for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        // SAFETY: `v` is a live c_int for the call; the kernel copies it.
        let rc = unsafe {
            libc::setsockopt(fd, libc::SOL_SOCKET, opt, &v as *const libc::c_int as *const libc::c_void, std::mem::size_of::<libc::c_int>() as libc::socklen_t)
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Waits until `fd` accepts writes or `timeout` passes.
pub fn poll_out(fd: RawFd, timeout: Option<Duration>) -> io::Result<bool> {
    poll_one(fd, libc::POLLOUT, timeout)
}

fn poll_one(fd: RawFd, events: libc::c_short, timeout: Option<Duration>) -> io::Result<bool> {
    let ms = match timeout {
        None => -1,
        Some(t) => t.as_millis().min(i32::MAX as u128) as libc::c_int,
    };
    let mut p = libc::pollfd { fd, events, revents: 0 };
    loop {
        // SAFETY: `p` is a valid pollfd for the duration of the call.
        match cvt(unsafe { libc::poll(&mut p, 1, ms) }) {
            Ok(n) => return Ok(n > 0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Writes every byte of `parts`, in order, to a non-blocking socket,
/// waiting for room when the socket buffer is full. One syscall in the
/// common case, and no copy of the parts.
pub fn write_all_vectored(fd: RawFd, parts: &[&[u8]]) -> io::Result<()> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut done = 0;
    while done < total {
        match write_some_vectored(fd, parts, done)? {
            0 => {
                poll_out(fd, Some(Duration::from_millis(200)))?;
            }
            n => done += n,
        }
    }
    Ok(())
}

/// One non-blocking `read(2)` of up to `len` bytes at `ptr`, retried on
/// EINTR. `Ok(None)` means no data now; `Ok(Some(0))` means the peer closed.
///
/// # Safety
/// `ptr` must be valid for writes of `len` bytes.
unsafe fn read_raw(fd: RawFd, ptr: *mut u8, len: usize) -> io::Result<Option<usize>> {
    loop {
        let rc = libc::read(fd, ptr as *mut libc::c_void, len);
        if rc >= 0 {
            return Ok(Some(rc as usize));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// Reads into `buf` without blocking; results as `read_raw`.
pub fn read_nonblocking(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: `buf` is a valid, writable slice.
    unsafe { read_raw(fd, buf.as_mut_ptr(), buf.len()) }
}

/// Reads without blocking into the spare capacity of `v` (at most `max`
/// bytes, and at least one must fit), growing its length by what was read:
/// no zero-filling pass over a large buffer. Results as `read_raw`.
pub fn read_into_spare(fd: RawFd, v: &mut Vec<u8>, max: usize) -> io::Result<Option<usize>> {
    let room = (v.capacity() - v.len()).min(max);
    assert!(room > 0, "read_into_spare needs room");
    // SAFETY: the kernel writes at most `room` bytes into the spare
    // capacity, and only the bytes it reports are added to the length.
    let r = unsafe { read_raw(fd, v.as_mut_ptr().add(v.len()), room) }?;
    if let Some(n) = r {
        unsafe { v.set_len(v.len() + n) };
    }
    Ok(r)
}

/// An eventfd used to tell a host event loop that work is waiting.
pub struct EventFd(RawFd);

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: plain syscall; the fd is owned by the returned value.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
        Ok(EventFd(fd))
    }
    pub fn fd(&self) -> RawFd {
        self.0
    }
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64. A full counter only means
        // the host has not drained yet, which is fine.
        unsafe { libc::write(self.0, &one as *const u64 as *const libc::c_void, 8) };
    }
    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64.
        unsafe { libc::read(self.0, &mut v as *mut u64 as *mut libc::c_void, 8) };
    }
}

impl Drop for EventFd {
    fn drop(&mut self) {
        // SAFETY: the fd is owned by this value and closed once.
        unsafe { libc::close(self.0) };
    }
}

/// Sends `sig` to process `pid`; false when it no longer exists.
pub fn kill(pid: u32, sig: libc::c_int) -> bool {
    // SAFETY: plain syscall with integer arguments.
    unsafe { libc::kill(pid as libc::pid_t, sig) == 0 }
}

/// The system's monotonic clock in nanoseconds: one clock for every
/// process of the machine (tests order operations of several processes by it).
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// The monotonic clock as the kernel last ticked it (a few milliseconds
/// behind at most), in nanoseconds: a quarter of `monotonic_ns`'s cost, for
/// marks read on every message and compared in seconds (liveness).
pub fn coarse_monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC_COARSE)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the timespec it is given.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub const SIGTERM: libc::c_int = libc::SIGTERM;
pub const SIGKILL: libc::c_int = libc::SIGKILL;

/// Fills `buf` with bytes from the kernel's random source.
pub fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: writes into the unfilled tail of a live slice.
        let rc = unsafe { libc::getrandom(buf[filled..].as_mut_ptr() as *mut libc::c_void, buf.len() - filled, 0) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += rc as usize;
    }
    Ok(())
}

/// Resident set size of process `pid`, in bytes, from /proc.
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Spin rounds between yields while others want this CPU, and at most
/// while none do.
const YIELD_EVERY_MIN: u32 = 8;
const YIELD_EVERY_MAX: u32 = 256;
/// A yield that took this long let another thread run.
const YIELD_RAN_OTHERS: Duration = Duration::from_micros(4);

/// Yields in a row that let another thread run before a spinner looks for
/// an idle CPU to move to (a few more for some threads than others, so
/// that of two spinners sharing a CPU one moves first).
const SHARED_YIELDS_BEFORE_MOVE: u32 = 16;
/// A thread moves at most this often.
const MOVE_EVERY: Duration = Duration::from_millis(20);

thread_local! {
    static YIELD_EVERY: std::cell::Cell<u32> = const { std::cell::Cell::new(YIELD_EVERY_MIN) };
    /// Yields in a row that let another thread run, and when this thread last moved.
    static SHARED: std::cell::Cell<(u32, Option<Instant>)> = const { std::cell::Cell::new((0, None)) };
    /// This thread's count of such yields before it moves (its kernel id
    /// picks one of four, once).
    static MOVE_AFTER: u32 = {
        // SAFETY: gettid has no arguments and cannot fail.
        let tid = unsafe { libc::gettid() } as u32;
        SHARED_YIELDS_BEFORE_MOVE + (tid % 4) * 4
    };
    /// A handler asked this thread to yield once what it reads is read out.
    static YIELD_ASKED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Called once per round of a spin (`round` counts from 1): now and then
/// gives the CPU to a thread waiting for it, which with more spinning
/// threads than cores may be the one this thread waits for. Each yield is
/// a syscall the spinner pays in delay when its bytes arrive meanwhile, so
/// yields that let nobody run space out (per thread), to every 256th
/// round; one that did brings them back to every 8th.
pub fn spin_yield(round: u32) {
    YIELD_EVERY.with(|every| {
        let n = every.get();
        if round & (n - 1) != 0 {
            return;
        }
        let t = Instant::now();
        std::thread::yield_now();
        let ran_others = t.elapsed() >= YIELD_RAN_OTHERS;
        every.set(if ran_others { YIELD_EVERY_MIN } else { (n * 2).min(YIELD_EVERY_MAX) });
        note_shared_cpu(ran_others);
    });
}

/// Two spinners the scheduler placed on one CPU take turns on it by their
/// yields (a round trip's caller and the reactor of the process it calls,
/// woken beside it) while another CPU idles: each step then waits for the
/// other's yield. After yields in a row that let another thread run, a
/// spinner moves to another CPU, but only when one is idle (no more
/// runnable threads than CPUs): with more spinners than CPUs (three
/// processes of a replicated write on two) moving helps nobody.
fn note_shared_cpu(ran_others: bool) {
    SHARED.with(|shared| {
        let (n, moved) = shared.get();
        if !ran_others {
            shared.set((0, moved));
            return;
        }
        if n + 1 < MOVE_AFTER.with(|m| *m) {
            shared.set((n + 1, moved));
            return;
        }
        if moved.is_some_and(|m| m.elapsed() < MOVE_EVERY) {
            shared.set((0, moved));
            return;
        }
        let now = Instant::now();
        shared.set((0, Some(now)));
        if let (Some(cpus), Some(running)) = (allowed_cpus(), runnable_threads()) {
            if cpus.len() >= 2 && running <= cpus.len() {
                move_off_this_cpu(&cpus);
            }
        }
    });
}

/// Asks this thread to yield its CPU once, when it has read every frame
/// waiting on its connection (`yield_if_asked`): a step of a protocol
/// whose next step is another process's, which may be waiting for a CPU.
/// Within a burst of frames (pipelined requests) it reads on first.
pub fn yield_when_read_out() {
    YIELD_ASKED.with(|y| y.set(true));
}

/// Yields if a handler asked (`yield_when_read_out`); a connection's
/// reader calls it when nothing more is buffered.
pub fn yield_if_asked() {
    if YIELD_ASKED.with(|y| y.replace(false)) {
        std::thread::yield_now();
    }
}

/// The CPUs this thread may run on.
fn allowed_cpus() -> Option<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity
    // writes at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return None;
    }
    // SAFETY: CPU_ISSET reads the set within its bounds.
    Some((0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect())
}

/// Threads runnable now, on the whole machine (this one included): the
/// fourth field of /proc/loadavg, `running/total`.
fn runnable_threads() -> Option<usize> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    s.split_whitespace().nth(3)?.split('/').next()?.parse().ok()
}

/// Moves this thread off its CPU now: allowed every CPU of `cpus` but
/// this one (the kernel migrates it at once), then all of them again (it
/// stays where it went).
fn move_off_this_cpu(cpus: &[usize]) {
    // SAFETY: sched_getcpu has no arguments.
    let here = unsafe { libc::sched_getcpu() };
    if here < 0 {
        return;
    }
    let set_of = |skip: Option<usize>| {
        // SAFETY: as in allowed_cpus; CPU_SET writes within the set for c < CPU_SETSIZE.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for &c in cpus.iter().filter(|&&c| Some(c) != skip) {
            unsafe { libc::CPU_SET(c, &mut set) };
        }
        set
    };
    let away = set_of(Some(here as usize));
    let all = set_of(None);
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: both sets are valid cpu_set_t values of `size` bytes.
    unsafe {
        if libc::sched_setaffinity(0, size, &away) == 0 {
            libc::sched_setaffinity(0, size, &all);
        }
    }
}

/// Spins until `done()` or `budget` elapses; true when `done()` held.
/// Used before parking, since a wake-up here costs tens of microseconds.
pub fn spin_until(budget: Duration, mut done: impl FnMut() -> bool) -> bool {
    if done() {
        return true;
    }
    if budget.is_zero() {
        return false;
    }
    let start = Instant::now();
    let mut i = 0u32;
    loop {
        for _ in 0..32 {
            std::hint::spin_loop();
        }
        if done() {
            return true;
        }
        i += 1;
        if i.is_multiple_of(16) && start.elapsed() >= budget {
            return false;
        }
        // The thread that completes it may be waiting for this CPU.
        spin_yield(i);
    }
}

/// Unblocks a thread sitting in `accept` on `fd` (Linux returns EINVAL).
pub fn shutdown_socket(fd: RawFd) {
    // SAFETY: plain syscall on an fd owned by the caller.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}

/// The parent process's id.
pub fn parent_pid() -> u32 {
    // SAFETY: plain syscall, cannot fail.
    unsafe { libc::getppid() as u32 }
}

/// A file descriptor that becomes readable when process `pid` exits.
pub struct PidFd(RawFd);

impl PidFd {
    pub fn open(pid: u32) -> io::Result<PidFd> {
        // SAFETY: plain syscall; the fd is owned by the returned value.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PidFd(fd as RawFd))
    }
    pub fn fd(&self) -> RawFd {
        self.0
    }
}

impl Drop for PidFd {
    fn drop(&mut self) {
        // SAFETY: the fd is owned by this value and closed once.
        unsafe { libc::close(self.0) };
    }
}

/// Waits until one of `fds` is readable or `timeout` passes; returns the
/// indexes of the readable ones.
pub fn poll_many(fds: &[RawFd], timeout: Option<Duration>) -> io::Result<Vec<usize>> {
    let mut p: Vec<libc::pollfd> = fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    let ms = match timeout {
        None => -1,
        Some(t) => t.as_millis().min(i32::MAX as u128) as libc::c_int,
    };
    loop {
        // SAFETY: `p` is a live array of pollfds of the given length.
        match cvt(unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, ms) }) {
            Ok(_) => return Ok(p.iter().enumerate().filter(|(_, x)| x.revents != 0).map(|(i, _)| i).collect()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// One non-blocking `sendmsg` of `parts` from byte `skip` on (counted
/// across the parts). Returns the bytes written, 0 when the socket is full.
pub fn write_some_vectored(fd: RawFd, parts: &[&[u8]], mut skip: usize) -> io::Result<usize> {
    let mut iov: [libc::iovec; 8] = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; 8];
    let mut n = 0;
    for p in parts {
        if skip >= p.len() {
            skip -= p.len();
            continue;
        }
        if n == iov.len() {
            break;
        }
        let s = &p[skip..];
        skip = 0;
        iov[n] = libc::iovec { iov_base: s.as_ptr() as *mut libc::c_void, iov_len: s.len() };
        n += 1;
    }
    if n == 0 {
        return Ok(0);
    }
    let msg = libc::msghdr {
        msg_name: std::ptr::null_mut(),
        msg_namelen: 0,
        msg_iov: iov.as_mut_ptr(),
        msg_iovlen: n,
        msg_control: std::ptr::null_mut(),
        msg_controllen: 0,
        msg_flags: 0,
    };
    loop {
        // SAFETY: every iovec points into a live slice borrowed for this call.
        // MSG_NOSIGNAL: a closed peer must give EPIPE, not kill the process.
        let rc = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
        if rc >= 0 {
            return Ok(rc as usize);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(0),
            _ => return Err(e),
        }
    }
}

/// An epoll instance: idle connections are watched here.
pub struct Epoll(RawFd);

pub const EPOLLIN: u32 = libc::EPOLLIN as u32;
pub const EPOLLOUT: u32 = libc::EPOLLOUT as u32;
pub const EPOLLONESHOT: u32 = libc::EPOLLONESHOT as u32;
pub const EPOLLRDHUP: u32 = libc::EPOLLRDHUP as u32;

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: plain syscall; the fd is owned by the returned value.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        Ok(Epoll(fd))
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a live epoll_event for the duration of the call.
        cvt(unsafe { libc::epoll_ctl(self.0, op, fd, &mut ev) }).map(drop)
    }
    pub fn add(&self, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, events)
    }
    pub fn modify(&self, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, events)
    }
    pub fn delete(&self, fd: RawFd) {
        let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0);
    }

    /// Waits for events into `buf`; returns how many. `None` waits without limit.
    pub fn wait(&self, buf: &mut EpollEvents, timeout: Option<Duration>) -> io::Result<usize> {
        let ms = match timeout {
            None => -1,
            Some(t) => t.as_millis().min(i32::MAX as u128) as libc::c_int,
        };
        loop {
            // SAFETY: `buf.0` is a live array of epoll_events of its length.
            let rc = unsafe { libc::epoll_wait(self.0, buf.0.as_mut_ptr(), buf.0.len() as libc::c_int, ms) };
            if rc >= 0 {
                return Ok(rc as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// Room for the events of one `Epoll::wait`.
pub struct EpollEvents(Vec<libc::epoll_event>);

impl EpollEvents {
    pub fn new(max: usize) -> EpollEvents {
        EpollEvents(vec![libc::epoll_event { events: 0, u64: 0 }; max.max(1)])
    }
    /// Event `i` as (token, event bits).
    pub fn get(&self, i: usize) -> (u64, u32) {
        let e = self.0[i];
        (e.u64, e.events)
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: the fd is owned by this value and closed once.
        unsafe { libc::close(self.0) };
    }
}

/// The number of threads of this process, from /proc.
pub fn thread_count() -> Option<usize> {
    std::fs::read_dir("/proc/self/task").ok().map(|d| d.count())
}

/// The number of open file descriptors of this process, from /proc.
pub fn open_fds() -> Option<usize> {
    std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count())
}

/// Waits until `fds[..first_out]` are readable or `fds[first_out..]`
/// writable, or `timeout` passes.
pub fn poll_many_out(fds: &[RawFd], first_out: usize, timeout: Option<Duration>) -> io::Result<usize> {
    let mut p: Vec<libc::pollfd> =
        fds.iter().enumerate().map(|(i, &fd)| libc::pollfd { fd, events: if i < first_out { libc::POLLIN } else { libc::POLLOUT }, revents: 0 }).collect();
    let ms = match timeout {
        None => -1,
        Some(t) => t.as_millis().min(i32::MAX as u128) as libc::c_int,
    };
    loop {
        // SAFETY: `p` is a live array of pollfds of the given length.
        match cvt(unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, ms) }) {
            Ok(n) => return Ok(n as usize),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// CPU time (user + system) this process has used, in seconds.
pub fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into a live, zeroed struct.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// This machine's host name ("" if it cannot be read).
/// A tag of this machine (its kernel's boot id, hashed): processes in
/// network or UTS namespaces of one machine share it; another machine's
/// differs. 0 when the boot id cannot be read.
pub fn machine_tag() -> u32 {
    static TAG: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *TAG.get_or_init(|| {
        let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let mut h: u32 = 0x811c_9dc5;
        for b in id.trim().bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        if id.trim().is_empty() {
            0
        } else {
            h
        }
    })
}

/// The host name this process gives the cluster: `LIBCLUSTER_HOSTNAME`
/// when set and not empty (a launcher's override), else gethostname().
pub fn host_name() -> String {
    match std::env::var("LIBCLUSTER_HOSTNAME") {
        Ok(h) if !h.is_empty() => h,
        _ => hostname(),
    }
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is writable for its length; gethostname NUL-terminates
    // within it when the name fits (we pass one byte less to be sure).
    let r = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len() - 1) };
    if r != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_move_off_this_cpu_changes_the_cpu_and_keeps_the_affinity() {
        let cpus = allowed_cpus().expect("sched_getaffinity");
        // SAFETY: sched_getcpu has no arguments.
        let here = unsafe { libc::sched_getcpu() } as usize;
        assert!(cpus.contains(&here), "{here} not in {cpus:?}");
        assert!(runnable_threads().is_some_and(|n| n >= 1), "this thread runs");
        if cpus.len() < 2 {
            return;
        }
        move_off_this_cpu(&cpus);
        // SAFETY: as above.
        let now = unsafe { libc::sched_getcpu() } as usize;
        assert_ne!(now, here, "moved at once");
        assert_eq!(allowed_cpus().unwrap(), cpus, "every CPU allowed again");
    }
}
