//! Operating-system calls that have no portable Rust API, one small function each.
//!
//! `linux.rs` has the Linux calls: OFD byte locks, futex wake-ups, thread ids, O_TMPFILE
//! and linkat, renameat2(RENAME_NOREPLACE), getrandom, posix_fallocate and
//! MADV_WIPEONFORK. `fallback.rs` has the POSIX way to do each job (or says "cannot", so
//! that the caller takes its portable path): classic process-owned fcntl locks, named
//! temporary files, link + unlink, /dev/urandom, writing zeros, no wipe-on-fork. Which one
//! is built follows the lock backend (see `lock/mod.rs`): the fallback wherever
//! `cfg(fastmmap_portable)` is set (every system but Linux, and Linux built with the
//! `portable` feature), so that the portable build runs every portable path. Nothing
//! outside this module calls `futex`, `gettid`, `O_TMPFILE`, `linkat`, `renameat2`,
//! `getrandom`, `posix_fallocate` or `madvise`.

#[cfg(not(fastmmap_portable))]
mod linux;
#[cfg(not(fastmmap_portable))]
pub use linux::*;

#[cfg(fastmmap_portable)]
mod fallback;
#[cfg(fastmmap_portable)]
pub use fallback::*;

/// fcntl lock kinds as `flock.l_type` takes them: an `i16` on every system, while libc
/// declares the constants `c_int` on Linux and `c_short` elsewhere.
#[allow(clippy::unnecessary_cast)]
pub const LOCK_READ: i16 = libc::F_RDLCK as i16;
#[allow(clippy::unnecessary_cast)]
pub const LOCK_WRITE: i16 = libc::F_WRLCK as i16;
#[allow(clippy::unnecessary_cast)]
pub const LOCK_UNLOCK: i16 = libc::F_UNLCK as i16;

/// A request for a lock of `kind` (`LOCK_*`) on the one byte at `start`.
fn flock_for(kind: i16, start: u64) -> libc::flock {
    // SAFETY: flock is plain data; all-zero is a valid starting value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as _;
    fl.l_whence = libc::SEEK_SET as _;
    fl.l_start = start as libc::off_t;
    fl.l_len = 1;
    fl
}

/// Runs `cmd`, a set-lock command of either lock family, for a lock of `kind` on byte
/// `start` of `fd`, again after a signal: false when it would block and `wait` is false.
fn set_byte_lock(
    fd: std::os::unix::io::RawFd,
    cmd: libc::c_int,
    kind: i16,
    start: u64,
    wait: bool,
) -> std::io::Result<bool> {
    let fl = flock_for(kind, start);
    loop {
        // SAFETY: fd is open; fl is a valid flock.
        if unsafe { libc::fcntl(fd, cmd, &fl) } == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) | Some(libc::EACCES) if !wait => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// The SIGBUS safety net for share-file mappings (POSIX: sigaction and mmap).
pub mod sigbus;

/// Cache prefetch hints (per CPU architecture, a no-op on others).
mod prefetch;
pub use prefetch::prefetch_write;
