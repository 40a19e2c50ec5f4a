//! Child processes made with `fork` (no `exec`): forking a child that runs
//! one function and `_exit`s, pipes, waiting for children, signals and
//! their names. Each wrapper is safe to call; the `unsafe` blocks pass
//! owned descriptors and live buffers to libc.
//!
//! **Why `fork_child` is safe.** Only the forking thread exists in the
//! child, so a lock another thread held at the fork stays held there
//! forever: a child touching it deadlocks (glibc's `fork` takes and
//! resets malloc's and stdio's own locks, so allocating and printing work
//! in the child). That is a hang, never memory unsafety: no data guarded
//! by such a lock can be reached. What would be unsound is the child
//! returning into the parent's stack frames (running their destructors,
//! which join threads that do not exist and close shared descriptors):
//! `fork_child` never lets it. The child runs the given function under a
//! panic boundary and ends with `_exit` (no atexit handlers, no
//! destructors), whatever the function does.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Exit status of a child whose function panicked across `fork_child`'s
/// boundary (the function should catch its own panics; this is the net).
pub const PANIC_EXIT: i32 = 101;
/// Exit status of a child that found its parent gone before running.
pub const ORPHAN_EXIT: i32 = 102;

/// Forks. The child runs `child` and `_exit`s with the status it returns;
/// this call returns only in the parent, with the child's pid. With
/// `die_with_parent` the child gets SIGKILL when the forking thread ends
/// (`PR_SET_PDEATHSIG`), and `_exit`s at once if the parent died before
/// that was set (the check the man page advises: the parent's pid is
/// compared with `getppid` after setting it).
///
/// The closure is only run in the child; in the parent it is dropped
/// unrun, so it should capture by reference what the parent still owns.
pub fn fork_child(die_with_parent: bool, child: impl FnOnce() -> i32) -> io::Result<u32> {
    // SAFETY: plain syscall.
    let parent = unsafe { libc::getpid() };
    // SAFETY: fork has no memory-safety preconditions; what the child may
    // do afterwards is restricted below (it never returns from here).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid > 0 {
        return Ok(pid as u32);
    }
    // The child.
    if die_with_parent {
        // SAFETY: prctl with integer arguments; getppid cannot fail.
        let set = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) };
        if set != 0 || unsafe { libc::getppid() } != parent {
            exit_now(ORPHAN_EXIT);
        }
    }
    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child)).unwrap_or(PANIC_EXIT);
    exit_now(code)
}

/// Ends this process at once with `code`: no atexit handlers, no
/// destructors, no flushing of stdio buffers (`_exit`).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Flushes every C stdio stream (`fflush(NULL)`): before a fork, so the
/// children do not inherit (and write again) what the parent buffered;
/// in a child before `_exit`, so what it printed is not lost.
pub fn flush_c_stdio() {
    // SAFETY: fflush(NULL) flushes all open output streams.
    unsafe { libc::fflush(std::ptr::null_mut()) };
}

/// A pipe `(read end, write end)`, both close-on-exec (a program some
/// thread `exec`s meanwhile does not inherit them).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the live array.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both are new descriptors nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Makes reads and writes on `fd` return at once instead of waiting.
pub fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller owns.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) }).map(drop)
}

/// Writes every byte of `parts`, in order, to a blocking descriptor (a
/// pipe), with as few `writev` calls as it takes.
pub fn write_all(fd: RawFd, parts: &[&[u8]]) -> io::Result<()> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut done = 0;
    while done < total {
        let mut iov: [libc::iovec; 4] = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; 4];
        let (mut n, mut skip) = (0, done);
        for p in parts {
            if skip >= p.len() {
                skip -= p.len();
                continue;
            }
            if n == iov.len() {
                break;
            }
            iov[n] = libc::iovec { iov_base: p[skip..].as_ptr() as *mut libc::c_void, iov_len: p.len() - skip };
            skip = 0;
            n += 1;
        }
        // SAFETY: every iovec points into a live slice borrowed for this call.
        let rc = unsafe { libc::writev(fd, iov.as_ptr(), n as libc::c_int) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += rc as usize;
    }
    Ok(())
}

/// Reads what `fd` (non-blocking) has now onto the end of `buf`. Returns
/// true at end of file (every writer closed its end).
pub fn read_available(fd: &OwnedFd, buf: &mut Vec<u8>) -> io::Result<bool> {
    loop {
        if buf.capacity() == buf.len() {
            buf.reserve((buf.len() / 2).clamp(4 << 10, 16 << 20));
        }
        match super::read_into_spare(fd.as_raw_fd(), buf, usize::MAX)? {
            None => return Ok(false),
            Some(0) => return Ok(true),
            Some(_) => {}
        }
    }
}

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// It called `exit`/`_exit` (or returned from `main`) with this status.
    Exited(i32),
    /// A signal ended it.
    Signaled { signal: i32, core_dumped: bool },
}

/// Reaps child `pid` if it has ended (`block`: waits until it does).
/// `Ok(None)`: it still runs (only without `block`). ECHILD (someone
/// else reaped it, or SIGCHLD is ignored) is an error.
pub fn wait_child(pid: u32, block: bool) -> io::Result<Option<ExitStatus>> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: waitpid writes the status into a live integer.
        let rc = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, if block { 0 } else { libc::WNOHANG }) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if rc == 0 {
            return Ok(None);
        }
        return Ok(Some(if libc::WIFSIGNALED(status) {
            ExitStatus::Signaled { signal: libc::WTERMSIG(status), core_dumped: libc::WCOREDUMP(status) }
        } else {
            ExitStatus::Exited(libc::WEXITSTATUS(status))
        }));
    }
}

/// Sends `sig` to this process itself (as the C `raise`, for the calling thread).
pub fn raise(sig: libc::c_int) {
    // SAFETY: plain call with an integer argument.
    unsafe { libc::raise(sig) };
}

/// Restores the default action of `sig` (e.g. before raising it, when a
/// runtime's handler would catch it).
pub fn default_signal_action(sig: libc::c_int) {
    // SAFETY: SIG_DFL is a valid disposition for any catchable signal.
    unsafe { libc::signal(sig, libc::SIG_DFL) };
}

/// The name of signal `sig` ("SIGSEGV"), or "signal N" for one it does not know.
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSTKFLT => "SIGSTKFLT",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGCONT => "SIGCONT",
        libc::SIGSTOP => "SIGSTOP",
        libc::SIGTSTP => "SIGTSTP",
        libc::SIGTTIN => "SIGTTIN",
        libc::SIGTTOU => "SIGTTOU",
        libc::SIGURG => "SIGURG",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGVTALRM => "SIGVTALRM",
        libc::SIGPROF => "SIGPROF",
        libc::SIGWINCH => "SIGWINCH",
        libc::SIGIO => "SIGIO",
        libc::SIGPWR => "SIGPWR",
        libc::SIGSYS => "SIGSYS",
        s if (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&s) => return format!("SIGRTMIN+{}", s - libc::SIGRTMIN()),
        s => return format!("signal {s}"),
    };
    name.to_string()
}

/// Process `pid`'s state letter and parent, from /proc (None once it is
/// gone): 'Z' is a zombie, ended but not reaped.
pub fn state_and_parent(pid: u32) -> Option<(char, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may hold spaces and parentheses: fields follow the last ')'.
    let mut it = s[s.rfind(')')? + 1..].split_whitespace();
    let state = it.next()?.chars().next()?;
    Some((state, it.next()?.parse().ok()?))
}

/// The children of process `parent` in state `state` (e.g. 'Z'), from /proc.
pub fn children_in_state(parent: u32, state: char) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut v: Vec<u32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| state_and_parent(p).is_some_and(|(s, pp)| s == state && pp == parent))
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_forked_child_runs_its_function_and_exits_with_its_status() {
        let (r, w) = pipe().unwrap();
        let wfd = w.as_raw_fd();
        let pid = fork_child(true, || match write_all(wfd, &[b"he", b"", b"llo"]) {
            Ok(()) => 7,
            Err(_) => 1,
        })
        .unwrap();
        drop(w);
        assert_eq!(wait_child(pid, true).unwrap(), Some(ExitStatus::Exited(7)));
        set_nonblocking(&r).unwrap();
        let mut got = Vec::new();
        assert!(read_available(&r, &mut got).unwrap(), "every writer is gone: end of file");
        assert_eq!(got, b"hello");
        assert!(wait_child(pid, false).is_err(), "reaped once");
    }

    #[test]
    fn signals_are_reported_and_named() {
        let pid = fork_child(true, || {
            std::thread::sleep(Duration::from_secs(30));
            0
        })
        .unwrap();
        assert_eq!(wait_child(pid, false).unwrap(), None, "still running");
        assert!(super::super::kill(pid, libc::SIGKILL));
        assert_eq!(wait_child(pid, true).unwrap(), Some(ExitStatus::Signaled { signal: libc::SIGKILL, core_dumped: false }));
        let panicked = fork_child(false, || panic!("on purpose, in a child")).unwrap();
        assert_eq!(wait_child(panicked, true).unwrap(), Some(ExitStatus::Exited(PANIC_EXIT)));
        assert_eq!(signal_name(libc::SIGSEGV), "SIGSEGV");
        assert_eq!(signal_name(libc::SIGRTMIN() + 2), "SIGRTMIN+2");
        assert_eq!(signal_name(200), "signal 200");
        assert_eq!(state_and_parent(std::process::id()).map(|(_, p)| p), Some(super::super::parent_pid()));
    }
}
