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

/// The SIGBUS safety net for share-file mappings (POSIX: sigaction and mmap).
pub mod sigbus;
