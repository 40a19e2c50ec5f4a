//! Files replaced atomically (the save/load container, `crate::savefile`):
//! a directory held open, an unnamed file in it (`O_TMPFILE`) given a name
//! once complete, exclusive creation of a named temporary file where
//! `O_TMPFILE` is missing, and the `*at` calls relative to the directory,
//! so that every step acts on the same directory even if it is renamed
//! meanwhile. Each wrapper is safe to call; the `unsafe` blocks pass owned
//! descriptors, NUL-terminated names and live structs to libc.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Retries `f` while it fails with EINTR.
fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

fn c_name(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a file name has no NUL byte"))
}

/// Where an unnamed file is reached to be linked: its descriptor's magic
/// link in /proc (linking it this way needs no privilege, unlike
/// `AT_EMPTY_PATH`).
fn proc_fd_path(fd: RawFd) -> CString {
    CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL in a number")
}

/// Whether unnamed files can be given a name here: /proc is mounted.
pub fn can_link_unnamed() -> bool {
    Path::new("/proc/self/fd").is_dir()
}

/// A directory held open; the files below are created and named in it.
pub struct Dir(OwnedFd);

impl Dir {
    /// Opens directory `path` (read-only: enough for `fsync` and the `*at` calls).
    pub fn open(path: &Path) -> io::Result<Dir> {
        let p = c_name(path.as_os_str())?;
        // SAFETY: `p` is NUL-terminated and outlives the call.
        let fd = retry(|| cvt(unsafe { libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) }))?;
        // SAFETY: open returned a new descriptor nothing else owns.
        Ok(Dir(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Flushes the directory's entries (a rename or link into it) to disk.
    pub fn sync(&self) -> io::Result<()> {
        // SAFETY: plain syscall on a descriptor this value owns.
        retry(|| cvt(unsafe { libc::fsync(self.0.as_raw_fd()) })).map(drop)
    }

    /// A new regular file in this directory that has no name yet
    /// (`O_TMPFILE`), open for writing, with permissions `mode` minus the
    /// umask. `Ok(None)` when the kernel or the file system does not
    /// support unnamed files. Closing it before `link_unnamed` leaves
    /// nothing, whatever ends the process.
    pub fn create_unnamed(&self, mode: u32) -> io::Result<Option<File>> {
        let flags = libc::O_TMPFILE | libc::O_WRONLY | libc::O_CLOEXEC;
        // SAFETY: "." is a NUL-terminated literal; the descriptor is valid.
        let r = retry(|| cvt(unsafe { libc::openat(self.0.as_raw_fd(), c".".as_ptr(), flags, mode as libc::c_uint) }));
        match r {
            // SAFETY: openat returned a new descriptor nothing else owns.
            Ok(fd) => Ok(Some(unsafe { File::from_raw_fd(fd) })),
            // EOPNOTSUPP: a file system without it; EISDIR: a kernel older
            // than 3.11 (O_TMPFILE contains O_DIRECTORY); EINVAL: either.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates file `name` here, which must not exist (not even as a
    /// symbolic link), open for writing, with permissions `mode` minus the
    /// umask. `AlreadyExists` when the name is taken.
    pub fn create_new(&self, name: &OsStr, mode: u32) -> io::Result<File> {
        let n = c_name(name)?;
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: `n` is NUL-terminated and outlives the call.
        let fd = retry(|| cvt(unsafe { libc::openat(self.0.as_raw_fd(), n.as_ptr(), flags, mode as libc::c_uint) }))?;
        // SAFETY: openat returned a new descriptor nothing else owns.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    /// Gives `file`, made by `create_unnamed` in this directory, the name
    /// `name` here. `AlreadyExists` when the name is taken (a link never
    /// replaces a file).
    pub fn link_unnamed(&self, file: &File, name: &OsStr) -> io::Result<()> {
        let from = proc_fd_path(file.as_raw_fd());
        let to = c_name(name)?;
        // SAFETY: both names are NUL-terminated and outlive the call.
        retry(|| cvt(unsafe { libc::linkat(libc::AT_FDCWD, from.as_ptr(), self.0.as_raw_fd(), to.as_ptr(), libc::AT_SYMLINK_FOLLOW) })).map(drop)
    }

    /// Renames `from` to `to`, both here, replacing `to` atomically.
    pub fn rename(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
        let (f, t) = (c_name(from)?, c_name(to)?);
        let d = self.0.as_raw_fd();
        // SAFETY: both names are NUL-terminated and outlive the call.
        retry(|| cvt(unsafe { libc::renameat(d, f.as_ptr(), d, t.as_ptr()) })).map(drop)
    }

    /// Removes the file `name` here.
    pub fn remove(&self, name: &OsStr) -> io::Result<()> {
        let n = c_name(name)?;
        // SAFETY: `n` is NUL-terminated and outlives the call.
        retry(|| cvt(unsafe { libc::unlinkat(self.0.as_raw_fd(), n.as_ptr(), 0) })).map(drop)
    }

    /// What `name` here is or points to (symbolic links followed);
    /// `None` when there is no such file.
    pub fn stat(&self, name: &OsStr) -> io::Result<Option<FileStat>> {
        let n = c_name(name)?;
        // SAFETY: fstatat writes into a live, zeroed struct; `n` is NUL-terminated.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        match retry(|| cvt(unsafe { libc::fstatat(self.0.as_raw_fd(), n.as_ptr(), &mut st, 0) })) {
            Ok(_) => Ok(Some(FileStat { mode: st.st_mode & 0o7777, is_dir: st.st_mode & libc::S_IFMT == libc::S_IFDIR })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// What `Dir::stat` tells of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStat {
    /// The permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub is_dir: bool,
}

/// The process's file-mode creation mask (from /proc: `umask(2)` can only
/// read it by changing it, which would race with other threads).
pub fn umask() -> Option<u32> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("Umask:"))?;
    u32::from_str_radix(line.split_whitespace().nth(1)?, 8).ok()
}
