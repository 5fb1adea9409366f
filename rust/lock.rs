//! Page locks: one robust, process-shared, error-checking pthread mutex per page, stored in
//! the lock table of the shared file.
//!
//! Why a mutex and not fcntl: an uncontended lock/unlock pair is two userspace atomics instead
//! of two system calls, and when a process dies holding the lock the kernel marks it
//! owner-dead, so the next locker gets it at once (`EOWNERDEAD`) and can check the page,
//! instead of everybody hanging.

use crate::error::{strerror, Error, Result};
use std::mem::size_of;
use std::time::Duration;

/// Bytes per page in the lock table: one cache line, so neighbouring pages' locks never share
/// a line.
pub const LOCK_STRIDE: usize = 64;
/// Offset of the mutex inside a lock table entry.
const MUTEX_OFF: usize = 0;
/// Offset of the page's "being mutated" marker inside a lock table entry (see `cache.rs`).
pub const DIRTY_OFF: usize = 56;
/// Offset of the page's change counter (a sequence lock for lock-free readers: odd while
/// a change is under way, bumped to the next even value when it is done).
pub const VERSION_OFF: usize = 60;

// The mutex must fit before the dirty marker on every target we build for.
const _: () = assert!(size_of::<libc::pthread_mutex_t>() <= DIRTY_OFF);

/// The change counter of a lock table entry.
///
/// # Safety
/// `entry` points at a lock table entry (64-byte aligned) inside a mapping that outlives
/// the returned reference.
pub unsafe fn version<'a>(entry: *mut u8) -> &'a std::sync::atomic::AtomicU32 {
    &*(entry.add(VERSION_OFF) as *const std::sync::atomic::AtomicU32)
}

/// Size of the platform's mutex; recorded in the file header so that a file made by a build
/// with another layout is replaced instead of misused.
pub const MUTEX_SIZE: u32 = size_of::<libc::pthread_mutex_t>() as u32;

/// Non-blocking attempts before a waiter sleeps on the lock.
const SPIN_ATTEMPTS: u32 = 30;
/// The pause between attempts doubles up to 2^SPIN_MAX_SHIFT spin-loop hints.
const SPIN_MAX_SHIFT: u32 = 4;

/// How a lock attempt ended when it succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// The lock was free or released normally: the page is as its last owner left it.
    Clean,
    /// The previous owner died holding it: the page may be half-modified. The caller must
    /// check the page and then call [`make_consistent`].
    OwnerDied,
}

/// The mutex of a lock table entry. `entry` must point at a LOCK_STRIDE-byte entry inside a
/// live shared mapping.
#[inline]
fn mutex(entry: *mut u8) -> *mut libc::pthread_mutex_t {
    entry.wrapping_add(MUTEX_OFF) as *mut libc::pthread_mutex_t
}

/// Initialises (or re-initialises) the mutex of a lock table entry.
///
/// # Safety
/// `entry` points at a LOCK_STRIDE-byte lock table entry in a live mapping, suitably aligned
/// for `pthread_mutex_t`, and no process is using this mutex (a new file, or the caller holds
/// the file's exclusive liveness lock).
pub unsafe fn init(entry: *mut u8) -> Result<()> {
    let m = mutex(entry);
    std::ptr::write_bytes(m as *mut u8, 0, size_of::<libc::pthread_mutex_t>());
    let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
    let check = |rc: i32, what: &str| -> Result<()> {
        if rc == 0 {
            Ok(())
        } else {
            Err(Error::new(format!("{what} failed: {}", strerror(rc))))
        }
    };
    check(
        libc::pthread_mutexattr_init(&mut attr),
        "pthread_mutexattr_init",
    )?;
    let r = (|| {
        check(
            libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED),
            "pthread_mutexattr_setpshared",
        )?;
        check(
            libc::pthread_mutexattr_setrobust(&mut attr, libc::PTHREAD_MUTEX_ROBUST),
            "pthread_mutexattr_setrobust",
        )?;
        // Error-checking: a second lock from the same thread (two cache objects on one file
        // in one process) returns EDEADLK instead of hanging forever.
        check(
            libc::pthread_mutexattr_settype(&mut attr, libc::PTHREAD_MUTEX_ERRORCHECK),
            "pthread_mutexattr_settype",
        )?;
        check(libc::pthread_mutex_init(m, &attr), "pthread_mutex_init")
    })();
    libc::pthread_mutexattr_destroy(&mut attr);
    r
}

/// Locks the mutex of a lock table entry, blocking (or up to `timeout`).
///
/// # Safety
/// `entry` points at an initialised lock table entry in a live mapping.
pub unsafe fn lock(entry: *mut u8, page: u32, timeout: Option<Duration>) -> Result<Acquired> {
    let m = mutex(entry);
    // Page locks are held for well under a microsecond on the common paths, while sleeping
    // on the futex costs two system calls and a context switch: a waiter first retries for
    // a few microseconds (the holder is running on another core), with growing pauses.
    for attempt in 0..SPIN_ATTEMPTS {
        match libc::pthread_mutex_trylock(m) {
            0 => return Ok(Acquired::Clean),
            libc::EOWNERDEAD => return Ok(Acquired::OwnerDied),
            libc::EBUSY => {
                for _ in 0..(1u32 << attempt.min(SPIN_MAX_SHIFT)) {
                    std::hint::spin_loop();
                }
            }
            // Anything else (EDEADLK, ENOTRECOVERABLE...) is reported by the blocking call.
            _ => break,
        }
    }
    let rc = match timeout {
        None => libc::pthread_mutex_lock(m),
        Some(t) => {
            let mut deadline: libc::timespec = std::mem::zeroed();
            libc::clock_gettime(libc::CLOCK_REALTIME, &mut deadline);
            deadline.tv_sec += t.as_secs() as libc::time_t;
            deadline.tv_nsec += t.subsec_nanos() as libc::c_long;
            if deadline.tv_nsec >= 1_000_000_000 {
                deadline.tv_sec += 1;
                deadline.tv_nsec -= 1_000_000_000;
            }
            libc::pthread_mutex_timedlock(m, &deadline)
        }
    };
    match rc {
        0 => Ok(Acquired::Clean),
        libc::EOWNERDEAD => Ok(Acquired::OwnerDied),
        libc::EDEADLK => Err(Error::new(format!(
            "page {page} is already locked by another Cache::FastMmap object in this process"
        ))),
        libc::ETIMEDOUT => Err(Error::new(format!(
            "Lock failed: timed out after {} seconds waiting for page {page} (catch_deadlocks)",
            timeout.map_or(0, |t| t.as_secs())
        ))),
        libc::ENOTRECOVERABLE => Err(Error::new(format!(
            "Lock failed: the lock of page {page} is unrecoverable; recreate the cache (init_file)"
        ))),
        e => Err(Error::new(format!("Lock failed: {}", strerror(e)))),
    }
}

/// Marks an owner-dead mutex usable again, after the page was checked.
///
/// # Safety
/// The caller holds the mutex, acquired with [`Acquired::OwnerDied`].
pub unsafe fn make_consistent(entry: *mut u8) {
    libc::pthread_mutex_consistent(mutex(entry));
}

/// Unlocks. Errors (not the owner, e.g. a child that inherited a "locked" state over fork)
/// are ignored, as upstream ignores unlock errors.
///
/// # Safety
/// `entry` points at an initialised lock table entry in a live mapping.
pub unsafe fn unlock(entry: *mut u8) {
    libc::pthread_mutex_unlock(mutex(entry));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C, align(64))]
    struct Entry([u8; LOCK_STRIDE]);

    #[test]
    fn lock_unlock_and_relock_reports_deadlock() {
        let mut e = Entry([0; LOCK_STRIDE]);
        let p = e.0.as_mut_ptr();
        unsafe {
            init(p).unwrap();
            assert_eq!(lock(p, 3, None).unwrap(), Acquired::Clean);
            let err = lock(p, 3, None).unwrap_err();
            assert!(err.message().contains("already locked"), "{err}");
            unlock(p);
            assert_eq!(
                lock(p, 3, Some(Duration::from_millis(10))).unwrap(),
                Acquired::Clean
            );
            unlock(p);
        }
    }

    #[test]
    fn owner_death_is_reported_to_the_next_locker() {
        let mut e = Entry([0; LOCK_STRIDE]);
        let p = e.0.as_mut_ptr() as usize;
        unsafe { init(p as *mut u8).unwrap() };
        // A thread that exits holding the lock is "dead" for a robust mutex.
        std::thread::spawn(move || unsafe {
            lock(p as *mut u8, 0, None).unwrap();
        })
        .join()
        .unwrap();
        unsafe {
            assert_eq!(lock(p as *mut u8, 0, None).unwrap(), Acquired::OwnerDied);
            make_consistent(p as *mut u8);
            unlock(p as *mut u8);
            assert_eq!(lock(p as *mut u8, 0, None).unwrap(), Acquired::Clean);
            unlock(p as *mut u8);
        }
    }
}
