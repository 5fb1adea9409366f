//! The portable (POSIX) way to do each platform job. Built for every system but Linux,
//! and on Linux by the `portable` feature, which is how the project's machines test it.

use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::os::unix::io::RawFd;

/// Sets (or with `F_UNLCK` drops) this process's classic fcntl lock on byte `start`.
/// Returns false when it would block and `wait` is false. With `wait`, `EDEADLK` (the
/// kernel sees a cycle of waiting processes) is returned as an error for the caller to
/// judge.
///
/// Classic locks belong to the process, not to the descriptor: locks of one process never
/// conflict with each other, and closing *any* descriptor of the file drops all of them.
/// `lock/fcntl.rs` builds per-handle semantics on top of that.
pub fn byte_lock(fd: RawFd, start: u64, kind: i16, wait: bool) -> io::Result<bool> {
    let cmd = if wait { libc::F_SETLKW } else { libc::F_SETLK };
    super::set_byte_lock(fd, cmd, kind, start, wait)
}

/// Is byte `start` locked by another process? (A classic `F_GETLK` never reports the
/// caller's own locks.) Errors count as "locked", the cautious answer.
pub fn byte_locked_elsewhere(fd: RawFd, start: u64) -> bool {
    let mut fl = super::flock_for(super::LOCK_WRITE, start);
    // SAFETY: fd is open; fl is a valid flock the kernel fills in.
    let rc = unsafe { libc::fcntl(fd, libc::F_GETLK, &mut fl) };
    rc != 0 || fl.l_type != super::LOCK_UNLOCK
}

/// Is process `pid` still there (as seen from our PID namespace)? EPERM: it exists but
/// belongs to someone else.
pub fn process_exists(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Sizes the (empty) file `fd` to `size` bytes and writes zeros over all of them, so that
/// every block is allocated now and a full disk is an error here, not a SIGBUS later
/// (`posix_fallocate` is not on every system, macOS for one).
pub fn reserve_space(fd: RawFd, size: u64) -> io::Result<()> {
    const CHUNK: usize = 1 << 20;
    // SAFETY: fd is open for writing.
    if unsafe { libc::ftruncate(fd, size as libc::off_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // Borrow the descriptor as a File without taking it over (never dropped).
    // SAFETY: fd stays open for this call; ManuallyDrop keeps it from being closed.
    let file = std::mem::ManuallyDrop::new(unsafe {
        <File as std::os::unix::io::FromRawFd>::from_raw_fd(fd)
    });
    let zeros = vec![0u8; CHUNK];
    let mut off = 0u64;
    while off < size {
        let n = (size - off).min(CHUNK as u64) as usize;
        file.write_all_at(&zeros[..n], off)?;
        off += n as u64;
    }
    Ok(())
}

/// No wipe-on-fork pages here: the caller checks the process id instead.
///
/// # Safety
/// None needed (nothing is touched); `unsafe` only to match the Linux signature.
pub unsafe fn wipe_on_fork(_page: *mut libc::c_void, _len: usize) -> bool {
    false
}

/// No unnamed files here: the caller builds under a random temporary name.
pub fn open_tmpfile(_dir: &CStr, _mode: u32) -> io::Result<Option<File>> {
    Ok(None)
}

/// Never called ([`open_tmpfile`] hands out no unnamed files).
pub fn link_fd(_file: &File, _target: &CStr) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// link + unlink: fails with EEXIST when `to` exists, like renameat2(RENAME_NOREPLACE).
pub fn rename_noreplace(from: &CStr, to: &CStr) -> io::Result<()> {
    // SAFETY: valid NUL-terminated paths.
    if unsafe { libc::link(from.as_ptr(), to.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    unsafe { libc::unlink(from.as_ptr()) };
    Ok(())
}

/// 64 random bits (for temporary names and slot search starts): /dev/urandom, or where
/// that cannot be read, std's per-process random hash keys mixed with the time and pid.
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
    {
        return u64::from_ne_bytes(b);
    }
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    h.finish()
}
