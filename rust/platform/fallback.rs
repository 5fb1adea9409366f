//! Systems other than Linux: the portable half of each call. Not built or tested on the
//! project's machines (the engine targets Linux); kept so the callers' portable paths are
//! explicit.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::unix::io::RawFd;
use std::sync::atomic::AtomicU32;

/// Mutex internals are unknown here: stale locks are never taken over by CAS.
pub const RAW_MUTEX_WORD: bool = false;

pub fn futex_wake_all(_word: &AtomicU32) {}

pub fn gettid() -> u32 {
    0
}

pub fn ofd_lock(_fd: RawFd, _start: u64, _kind: i16, _wait: bool) -> io::Result<bool> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// Without OFD locks nobody can be shown dead: every owner counts as alive.
pub fn ofd_locked_elsewhere(_fd: RawFd, _start: u64) -> bool {
    true
}

pub fn open_tmpfile(_dir: &CStr, _mode: u32) -> io::Result<Option<File>> {
    Ok(None)
}

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

pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}
