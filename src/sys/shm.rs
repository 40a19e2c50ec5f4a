//! POSIX shared memory: named segments in /dev/shm, reserved when
//! created (a full /dev/shm fails here, not with a SIGBUS on first touch)
//! and mapped shared. The `unsafe` blocks pass owned descriptors and the
//! mapping's own address and length to libc.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Where the segments are seen as files (Linux's tmpfs for POSIX shm).
pub const SHM_DIR: &str = "/dev/shm";

fn c_name(name: &str) -> io::Result<CString> {
    if name.is_empty() || name.len() > 250 || name.contains('/') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad shared-memory name {name:?} (1 to 250 bytes, no '/')")));
    }
    CString::new(format!("/{name}")).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a shared-memory name has no NUL byte"))
}

fn open(name: &str, flags: libc::c_int) -> io::Result<OwnedFd> {
    let n = c_name(name)?;
    // SAFETY: `n` is a NUL-terminated string that outlives the call.
    let fd = unsafe { libc::shm_open(n.as_ptr(), flags | libc::O_CLOEXEC, 0o600) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: shm_open returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Creates segment `name` (never an existing one) of `size` bytes, with
/// every page reserved: ENOSPC (io::ErrorKind::StorageFull) when
/// /dev/shm has no room. On failure nothing is left behind.
pub fn create(name: &str, size: usize) -> io::Result<OwnedFd> {
    let fd = open(name, libc::O_CREAT | libc::O_EXCL | libc::O_RDWR)?;
    let reserve = || -> io::Result<()> {
        if size == 0 {
            return Ok(());
        }
        // SAFETY: `fd` is open for writing; posix_fallocate returns an errno.
        match unsafe { libc::posix_fallocate(fd.as_raw_fd(), 0, size as libc::off_t) } {
            0 => Ok(()),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    };
    if let Err(e) = reserve() {
        let _ = unlink(name);
        return Err(e);
    }
    Ok(fd)
}

/// Opens existing segment `name` for reading and writing; its size.
pub fn open_existing(name: &str) -> io::Result<(OwnedFd, usize)> {
    let fd = open(name, libc::O_RDWR)?;
    let meta = std::fs::File::from(fd.try_clone()?).metadata()?;
    Ok((fd, meta.len() as usize))
}

/// Removes segment `name` (mappings stay valid until unmapped).
pub fn unlink(name: &str) -> io::Result<()> {
    let n = c_name(name)?;
    // SAFETY: `n` is a NUL-terminated string that outlives the call.
    if unsafe { libc::shm_unlink(n.as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Bytes free in /dev/shm (for error messages), if known.
pub fn free_bytes() -> Option<u64> {
    let dir = CString::new(SHM_DIR).ok()?;
    // SAFETY: statvfs writes into a live, zeroed struct.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(dir.as_ptr(), &mut s) } < 0 {
        return None;
    }
    Some(s.f_bavail as u64 * s.f_frsize as u64)
}

/// A shared, read-write mapping of a whole segment; unmapped on drop.
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; who writes where is the
// users' business (as for any memory other processes write too).
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` (the descriptor may be closed afterwards).
    pub fn new(fd: &OwnedFd, len: usize) -> io::Result<Mapping> {
        if len == 0 {
            return Ok(Mapping { ptr: std::ptr::NonNull::dangling().as_ptr(), len: 0 });
        }
        // SAFETY: a fresh shared mapping of an open descriptor; the kernel picks the address.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd.as_raw_fd(), 0) };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr: p as *mut u8, len })
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies `out.len()` bytes from `offset` (None when out of range).
    pub fn read_at(&self, offset: usize, out: &mut [u8]) -> Option<()> {
        let end = offset.checked_add(out.len()).filter(|&e| e <= self.len)?;
        let _ = end;
        // SAFETY: the range is inside the mapping; other processes may write it
        // concurrently, which only makes the bytes read arbitrary.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(offset), out.as_mut_ptr(), out.len()) };
        Some(())
    }

    /// Copies `data` to `offset` (None when out of range).
    pub fn write_at(&self, offset: usize, data: &[u8]) -> Option<()> {
        offset.checked_add(data.len()).filter(|&e| e <= self.len)?;
        // SAFETY: the range is inside the mapping, which is writable.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(offset), data.len()) };
        Some(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: the address and length of this mapping, unmapped once.
            unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
        }
    }
}

/// The names (without the leading '/') of the segments in /dev/shm.
pub fn list() -> io::Result<Vec<String>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(SHM_DIR)? {
        let e = e?;
        if let Some(n) = e.file_name().to_str() {
            if e.file_type().map(|t| t.is_file()).unwrap_or(false) {
                v.push(n.to_string());
            }
        }
    }
    v.sort();
    Ok(v)
}

/// Process `pid`'s start time (clock ticks since boot, /proc/pid/stat
/// field 22): with the pid it names one process for the machine's uptime.
pub fn start_time(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may hold spaces and parentheses: fields follow the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(tag: &str) -> String {
        format!("lcsys-test-{}-{tag}", std::process::id())
    }

    #[test]
    fn a_segment_is_reserved_mapped_shared_and_unlinked() {
        let n = name("a");
        let fd = create(&n, 8192).unwrap();
        assert!(create(&n, 10).is_err(), "never an existing one");
        let m = Mapping::new(&fd, 8192).unwrap();
        drop(fd);
        let (fd2, len) = open_existing(&n).unwrap();
        assert_eq!(len, 8192);
        let m2 = Mapping::new(&fd2, len).unwrap();
        m.write_at(4000, b"shared").unwrap();
        let mut got = [0u8; 6];
        m2.read_at(4000, &mut got).unwrap();
        assert_eq!(&got, b"shared");
        assert!(m.write_at(8190, b"abc").is_none() && m.read_at(usize::MAX, &mut got).is_none());
        assert!(list().unwrap().contains(&n));
        unlink(&n).unwrap();
        assert!(!list().unwrap().contains(&n));
        assert!(open_existing(&n).is_err());
        m2.read_at(4000, &mut got).unwrap();
        assert_eq!(&got, b"shared", "a mapping outlives its name");
    }

    #[test]
    fn bad_names_and_the_start_time() {
        assert!(create("a/b", 1).is_err() && create("", 1).is_err());
        assert!(start_time(std::process::id()).is_some());
        assert!(start_time(u32::MAX).is_none());
    }
}
