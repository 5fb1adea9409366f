//! Linux: futex wake-ups, thread ids, OFD byte-range locks, anonymous temporary files,
//! block reservation and wipe-on-fork pages.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::AtomicU32;

/// True where a robust mutex keeps its owner's thread id in its first 32-bit word (glibc),
/// so that a stale lock can be taken over by a compare-and-swap of that word.
pub const RAW_MUTEX_WORD: bool = cfg!(target_env = "gnu");

/// Wakes every thread (of any process) sleeping on the shared futex `word`.
pub fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE only reads the address, which is a live u32.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// The calling thread's id as the kernel writes it into robust futex words (the id in the
/// caller's own PID namespace).
pub fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

/// Sets (or with `F_UNLCK` drops) an open-file-description lock on byte `start`.
/// Returns false when it would block and `wait` is false. OFD locks belong to the open
/// file, not to a process id, so they mean the same in every PID namespace.
pub fn byte_lock(fd: RawFd, start: u64, kind: i16, wait: bool) -> io::Result<bool> {
    let cmd = if wait {
        libc::F_OFD_SETLKW
    } else {
        libc::F_OFD_SETLK
    };
    super::set_byte_lock(fd, cmd, kind, start, wait)
}

/// Is byte `start` locked through another open file description (any process, any
/// namespace)? Errors count as "locked", the cautious answer.
pub fn byte_locked_elsewhere(fd: RawFd, start: u64) -> bool {
    let mut fl = super::flock_for(super::LOCK_WRITE, start);
    // SAFETY: fd is open; fl is a valid flock the kernel fills in.
    let rc = unsafe { libc::fcntl(fd, libc::F_OFD_GETLK, &mut fl) };
    rc != 0 || fl.l_type != super::LOCK_UNLOCK
}

/// Reserves the blocks of `fd`'s first `size` bytes (and sizes the file), so that a full
/// disk is an error now rather than a SIGBUS later.
pub fn reserve_space(fd: RawFd, size: u64) -> io::Result<()> {
    // SAFETY: fd is open for writing.
    let rc = unsafe { libc::posix_fallocate(fd, 0, size as libc::off_t) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Asks that the private anonymous mapping `[page, page + len)` read as zeros in every
/// forked child (`MADV_WIPEONFORK`, Linux 4.14). False when the kernel cannot.
///
/// # Safety
/// `page` is the start of a private anonymous mapping of `len` bytes owned by the caller.
pub unsafe fn wipe_on_fork(page: *mut libc::c_void, len: usize) -> bool {
    libc::madvise(page, len, libc::MADV_WIPEONFORK) == 0
}

/// Opens an unnamed regular file in directory `dir` (O_TMPFILE): it has no name until
/// [`link_fd`] gives it one, so a creator killed half-way leaves nothing behind.
/// `Ok(None)`: the filesystem or kernel cannot do this; use a named temporary instead.
pub fn open_tmpfile(dir: &CStr, mode: u32) -> io::Result<Option<File>> {
    // SAFETY: dir is a valid NUL-terminated path; the fd is owned by the File below.
    let fd = unsafe {
        libc::open(
            dir.as_ptr(),
            libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    if fd >= 0 {
        // SAFETY: a fresh descriptor nobody else owns.
        return Ok(Some(unsafe { File::from_raw_fd(fd) }));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        // Kernels before 3.11 read O_TMPFILE as O_DIRECTORY (EISDIR); filesystems
        // without it say EOPNOTSUPP.
        Some(libc::EOPNOTSUPP) | Some(libc::EISDIR) | Some(libc::EINVAL) => Ok(None),
        _ => Err(e),
    }
}

/// Gives the unnamed file `file` (from [`open_tmpfile`]) the name `target`; fails with
/// EEXIST when the name is taken (never replaces).
pub fn link_fd(file: &File, target: &CStr) -> io::Result<()> {
    let empty = CStr::from_bytes_with_nul(b"\0").expect("a NUL-terminated literal");
    // SAFETY: valid fd and NUL-terminated paths. AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH;
    // without it the /proc/self/fd path below does the same for the file's owner.
    let rc = unsafe {
        libc::linkat(
            file.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if !matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::ENOENT)) {
        return Err(e);
    }
    let proc_path = std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .expect("no NUL in a number");
    // SAFETY: valid NUL-terminated paths.
    let rc = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            proc_path.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Renames `from` to `to` only if `to` does not exist (EEXIST otherwise).
pub fn rename_noreplace(from: &CStr, to: &CStr) -> io::Result<()> {
    // SAFETY: both are valid NUL-terminated paths.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// 64 random bits from the kernel (for temporary names and slot search starts).
pub fn random_u64() -> u64 {
    let mut v = 0u64;
    // SAFETY: writes at most 8 bytes into v.
    let n = unsafe { libc::getrandom((&mut v as *mut u64).cast(), 8, libc::GRND_NONBLOCK) };
    if n == 8 {
        v
    } else {
        super_fallback_random()
    }
}

fn super_fallback_random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}
