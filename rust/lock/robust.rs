//! The Linux page-lock backend: one robust, process-shared pthread mutex per page, stored
//! in the lock table of the shared file.
//!
//! Why a mutex and not fcntl: an uncontended lock/unlock pair is two userspace atomics instead
//! of two system calls, and when a process dies holding the lock the kernel marks it
//! owner-dead, so the next locker gets it at once (`EOWNERDEAD`) and can check the page,
//! instead of everybody hanging.
//!
//! # Who holds a lock
//! The mutex word holds its owner's thread id, but only as seen in the owner's PID
//! namespace: PID 1 of one container and PID 1 of another write the same number. So the
//! word is never used to decide "this thread already holds it": that verdict comes from
//! process memory (a per-thread list of the locks this thread holds, [`HELD`]), and the
//! mutex is of the plain robust kind, which simply waits when the word names a thread of
//! the same number elsewhere. A dead owner in any namespace is still recovered by the
//! kernel's robust-futex list (it compares against the dying thread's own id).
//!
//! # Lock words read from the file are not trusted blindly
//! The lock table lives in a file anybody with write access can scribble on, and survives
//! crashes. Rule (documented in README.pod, "Locks"):
//! - An entry whose mutex type bytes differ from those this build writes (a zeroed entry,
//!   0xFF garbage, another build's layout), or whose mutex says "unrecoverable", is
//!   *malformed*: pthread calls are never made on it.
//! - Every holder records its opener slot (`OWNER_OFF`): the number of a byte of the file on
//!   which its open file description keeps an OFD lock while the file is open (see
//!   `file.rs`). OFD locks mean the same in every PID namespace and vanish when the holder's
//!   process dies, so they tell a live holder from a dead or made-up one.
//! - A waiter looks every [`STALE_CHECK`]. When two looks in a row see the same lock word
//!   and recorded owner, the entry is malformed or still held, and the recorded owner's slot
//!   is not locked by anyone, the lock is abandoned: the waiter takes it over with one
//!   compare-and-swap of the word (one winner), rewrites the rest of the entry, and goes on
//!   as if the owner had died (the page is validated). So garbage costs at most about two
//!   checks (2 s), never a hang or an error forever.
//! - A holder whose slot is alive is waited for however long it takes (or until
//!   `catch_deadlocks` gives up), however slow it is.

use super::{owner, Acquired, Locker, LOCK_STRIDE, OWNER_OFF};
use crate::error::{strerror, Error, Result};
use crate::platform;
use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::mem::size_of;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Offset of the mutex inside a lock table entry.
const MUTEX_OFF: usize = 0;
// The mutex must fit before the owner slot on every target we build for.
const _: () = assert!(size_of::<libc::pthread_mutex_t>() <= OWNER_OFF);

/// First byte of the file's opener-slot range (OFD locks beyond the end of a file are
/// allowed and cost nothing).
pub const SLOT_BASE: u64 = 1 << 40;
/// Number of opener slots.
pub const MAX_SLOTS: u32 = 1 << 20;
/// How often a waiter looks at who holds the lock it waits for.
pub const STALE_CHECK: Duration = Duration::from_secs(1);

/// The mutex's futex word (glibc keeps it first: owner thread id, waiters and owner-died
/// bits).
///
/// # Safety
/// As for [`version`].
unsafe fn word<'a>(entry: *mut u8) -> &'a AtomicU32 {
    &*(entry.add(MUTEX_OFF) as *const AtomicU32)
}

/// Size of the platform's mutex; recorded in the file header so that a file made by a build
/// with another layout is replaced instead of misused.
pub const MUTEX_SIZE: u32 = size_of::<libc::pthread_mutex_t>() as u32;

/// The backend's name, as `Cache::FastMmap::_lock_backend` reports it.
pub const NAME: &str = "robust-mutex";
/// [`NAME`] for C.
pub const NAME_C: &std::ffi::CStr = c"robust-mutex";
/// Lock kind recorded in the file header: robust process-shared pthread mutexes of the
/// plain kind, with holders' opener slots recorded (kind 1 was error-checking mutexes;
/// kind 3 is the fcntl backend's).
pub const KIND: u32 = 2;
/// Recorded next to the kind: the size of this platform's mutex, so that a file made by a
/// build with another layout is replaced instead of misused.
pub const KIND_DETAIL: u32 = MUTEX_SIZE;

/// An open share file. Here just the file: every open file description carries its own
/// OFD locks, so descriptors can be opened and closed freely.
pub struct ShareFile(File);

impl std::ops::Deref for ShareFile {
    type Target = File;
    fn deref(&self) -> &File {
        &self.0
    }
}

impl ShareFile {
    /// Opens the file at `path` with `open` (`_writable` says how `open` opens it; only the
    /// fcntl backend needs to know).
    pub fn open_with(
        _path: &Path,
        _writable: bool,
        open: impl FnOnce() -> io::Result<File>,
    ) -> io::Result<ShareFile> {
        open().map(ShareFile)
    }

    /// Takes charge of a file just created.
    pub fn adopt(file: File, _writable: bool) -> io::Result<ShareFile> {
        Ok(ShareFile(file))
    }

    /// A second descriptor on the same open file description (its locks are shared).
    pub fn try_clone(&self) -> io::Result<ShareFile> {
        self.0.try_clone().map(ShareFile)
    }

    /// Sets (or with `F_UNLCK` drops) this description's lock on byte `start`; false when
    /// it would block and `wait` is false.
    pub fn byte_lock(&self, start: u64, kind: i16, wait: bool) -> io::Result<bool> {
        platform::byte_lock(self.0.as_raw_fd(), start, kind, wait)
    }

    /// Is byte `start` locked through any other open file description?
    pub fn byte_locked_elsewhere(&self, start: u64) -> bool {
        platform::byte_locked_elsewhere(self.0.as_raw_fd(), start)
    }
}

/// This opener's identity for the page locks: takes a free opener slot, an exclusive OFD
/// lock on one byte of the slot range kept while the file is open, whose number the opener
/// records in every lock it holds. Searching from a random start keeps the search short
/// with many openers.
pub fn opener(
    file: &ShareFile,
    dev: u64,
    ino: u64,
    lock_table_off: u64,
    lock_stride: u64,
    shown: &str,
) -> Result<Locker> {
    let start = (platform::random_u64() % u64::from(MAX_SLOTS)) as u32;
    for i in 0..MAX_SLOTS {
        let slot = (start + i) % MAX_SLOTS;
        match file.byte_lock(slot_offset(slot), crate::platform::LOCK_WRITE, false) {
            Ok(true) => {
                return Ok(Locker {
                    dev,
                    ino,
                    slot,
                    fd: file.as_raw_fd(),
                    lock_table_off,
                    lock_stride,
                })
            }
            Ok(false) => continue,
            Err(e) => return Err(Error::os(format!("Lock of share file {shown} failed"), &e)),
        }
    }
    Err(Error::new(format!(
        "Lock of share file {shown} failed: {MAX_SLOTS} processes have it open"
    )))
}

/// The identity of a second handle on the same open file description (`dup`): it shares
/// the description's slot, which marks its lock holders as alive.
pub fn duplicate_opener(who: &Locker, file: &ShareFile) -> Locker {
    Locker {
        fd: file.as_raw_fd(),
        ..*who
    }
}

/// Non-blocking attempts before a waiter sleeps on the lock.
const SPIN_ATTEMPTS: u32 = 30;
/// The pause between attempts doubles up to 2^SPIN_MAX_SHIFT spin-loop hints.
const SPIN_MAX_SHIFT: u32 = 4;

/// The file offset of an opener slot's lock byte.
pub fn slot_offset(slot: u32) -> u64 {
    SLOT_BASE + u64::from(slot)
}

/// A lock this thread holds.
struct Held {
    entry: usize,
    dev: u64,
    ino: u64,
    page: u32,
    /// Taken over by CAS (not on glibc's robust list): released by [`raw_unlock`].
    taken_over: bool,
}

thread_local! {
    /// The page locks the current thread holds, through any handle (a handle holds at most
    /// one, so this stays tiny).
    static HELD: RefCell<Vec<Held>> = const { RefCell::new(Vec::new()) };
}

/// A forked child holds none of its parent's locks.
extern "C" fn forget_held_in_child() {
    let _ = HELD.try_with(|h| {
        if let Ok(mut h) = h.try_borrow_mut() {
            h.clear();
        }
    });
}

fn register_fork_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers a handler that only touches this thread's HELD list.
        unsafe { libc::pthread_atfork(None, None, Some(forget_held_in_child)) };
    });
}

/// A freshly initialised mutex of our kind, and its bytes that are not zero (the type
/// bytes, which no lock operation changes): an entry whose bytes there differ is malformed.
struct Template {
    bytes: Vec<u8>,
    signature: Vec<(usize, u8)>,
}

fn template() -> &'static Template {
    static T: OnceLock<Template> = OnceLock::new();
    T.get_or_init(|| {
        #[repr(C, align(64))]
        struct Buf([u8; LOCK_STRIDE]);
        let mut b = Buf([0; LOCK_STRIDE]);
        // SAFETY: b is an aligned, private lock-table-sized buffer.
        let ok = unsafe { init_mutex(b.0.as_mut_ptr()) }.is_ok();
        let bytes = b.0[..MUTEX_SIZE as usize].to_vec();
        let signature = if ok {
            (0..bytes.len())
                .filter(|&i| bytes[i] != 0)
                .map(|i| (i, bytes[i]))
                .collect()
        } else {
            Vec::new()
        };
        Template { bytes, signature }
    })
}

/// Are the entry's mutex type bytes those this build writes?
///
/// # Safety
/// `entry` points at a lock table entry in a live mapping.
unsafe fn well_formed(entry: *mut u8) -> bool {
    template()
        .signature
        .iter()
        .all(|&(off, b)| std::ptr::read_volatile(entry.add(off)) == b)
}

/// What an inspection tool sees in a lock table entry, read without taking the lock:
/// `(well_formed, word, owner_record)` (the futex word, and the holder's opener slot + 1,
/// 0 when none is recorded).
///
/// # Safety
/// `entry` points at a lock table entry in a live (possibly read-only) mapping.
pub unsafe fn entry_state(entry: *const u8) -> (bool, u32, u32) {
    let e = entry as *mut u8; // only read through
    (
        well_formed(e),
        word(e).load(Ordering::Relaxed),
        owner(e).load(Ordering::Relaxed),
    )
}

/// Is the opener that recorded `rec` (slot + 1) still there, seen through `fd` (any open
/// descriptor of the file, which holds no slot of its own)?
pub fn recorded_owner_alive(rec: u32, fd: RawFd) -> bool {
    rec != 0 && rec <= MAX_SLOTS && platform::byte_locked_elsewhere(fd, slot_offset(rec - 1))
}

/// Rewrites everything of the mutex but its word from the template.
///
/// # Safety
/// The caller owns the word (holds the lock), so no other thread writes these bytes.
unsafe fn restore_fields(entry: *mut u8) {
    let t = &template().bytes;
    for (i, &b) in t.iter().enumerate().skip(size_of::<u32>()) {
        std::ptr::write_volatile(entry.add(i), b);
    }
}

/// The mutex of a lock table entry. `entry` must point at a LOCK_STRIDE-byte entry inside a
/// live shared mapping.
#[inline]
fn mutex(entry: *mut u8) -> *mut libc::pthread_mutex_t {
    entry.wrapping_add(MUTEX_OFF) as *mut libc::pthread_mutex_t
}

unsafe fn init_mutex(entry: *mut u8) -> Result<()> {
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
        // The plain kind, not error-checking: an error-checking mutex reports EDEADLK when
        // the word's thread id equals the caller's, which is also true of a different
        // thread with the same id in another PID namespace. Re-entrance is caught from
        // process memory instead (HELD).
        check(
            libc::pthread_mutexattr_settype(&mut attr, libc::PTHREAD_MUTEX_NORMAL),
            "pthread_mutexattr_settype",
        )?;
        check(libc::pthread_mutex_init(m, &attr), "pthread_mutex_init")
    })();
    libc::pthread_mutexattr_destroy(&mut attr);
    r
}

/// Initialises (or re-initialises) a lock table entry's mutex and owner record.
///
/// # Safety
/// `entry` points at a LOCK_STRIDE-byte lock table entry in a live mapping, suitably aligned
/// for `pthread_mutex_t`, and no process is using this mutex (a new file, or the caller holds
/// the file's exclusive liveness lock).
pub unsafe fn init(entry: *mut u8) -> Result<()> {
    init_mutex(entry)?;
    owner(entry).store(0, Ordering::Relaxed);
    Ok(())
}

/// Records a successful acquisition (owner slot in the file, the lock in HELD).
unsafe fn acquired(
    entry: *mut u8,
    page: u32,
    who: &Locker,
    how: Acquired,
    taken_over: bool,
) -> Acquired {
    owner(entry).store(who.slot.wrapping_add(1), Ordering::Relaxed);
    register_fork_handler();
    HELD.with(|h| {
        h.borrow_mut().push(Held {
            entry: entry as usize,
            dev: who.dev,
            ino: who.ino,
            page,
            taken_over,
        })
    });
    how
}

/// Does this thread already hold this lock (through this or another mapping of the file)?
fn held_here(entry: *mut u8, page: u32, who: &Locker) -> bool {
    HELD.with(|h| {
        h.borrow().iter().any(|x| {
            x.entry == entry as usize
                || (who.ino != 0 && x.dev == who.dev && x.ino == who.ino && x.page == page)
        })
    })
}

/// Is the opener that recorded `rec` (slot + 1) still there?
fn owner_alive(rec: u32, who: &Locker) -> bool {
    if rec == 0 || rec > MAX_SLOTS {
        return false;
    }
    let slot = rec - 1;
    // Our own slot: the holder shares our open file (us, or a forked relative), alive.
    slot == who.slot || platform::byte_locked_elsewhere(who.fd, slot_offset(slot))
}

/// Locks the mutex of a lock table entry, blocking (or up to `timeout`).
///
/// # Safety
/// `entry` points at a lock table entry in a live mapping that stays mapped while held.
pub unsafe fn lock(
    entry: *mut u8,
    page: u32,
    timeout: Option<Duration>,
    who: &Locker,
) -> Result<Acquired> {
    let m = mutex(entry);
    // Page locks are held for well under a microsecond on the common paths, while sleeping
    // on the futex costs two system calls and a context switch: a waiter first retries for
    // a few microseconds (the holder is running on another core), with growing pauses.
    if well_formed(entry) {
        for attempt in 0..SPIN_ATTEMPTS {
            match libc::pthread_mutex_trylock(m) {
                0 => return Ok(acquired(entry, page, who, Acquired::Clean, false)),
                libc::EOWNERDEAD => {
                    return Ok(acquired(entry, page, who, Acquired::OwnerDied, false))
                }
                libc::EBUSY => {
                    for _ in 0..(1u32 << attempt.min(SPIN_MAX_SHIFT)) {
                        std::hint::spin_loop();
                    }
                }
                // Anything else (ENOTRECOVERABLE, EINVAL...) is dealt with below.
                _ => break,
            }
        }
    }
    lock_slow(entry, page, timeout, who)
}

/// Waits for the lock, looking every STALE_CHECK at whether its holder still exists.
unsafe fn lock_slow(
    entry: *mut u8,
    page: u32,
    timeout: Option<Duration>,
    who: &Locker,
) -> Result<Acquired> {
    if held_here(entry, page, who) {
        return Err(Error::new(format!(
            "page {page} is already locked by another Cache::FastMmap object in this process"
        )));
    }
    let m = mutex(entry);
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut seen: Option<(u32, u32)> = None;
    loop {
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Err(Error::new(format!(
                "Lock failed: timed out after {} seconds waiting for page {page} (catch_deadlocks)",
                timeout.map_or(0, |t| t.as_secs())
            )));
        }
        let slice = deadline.map_or(STALE_CHECK, |d| (d - now).min(STALE_CHECK));
        if well_formed(entry) {
            match timedlock(m, slice) {
                0 => return Ok(acquired(entry, page, who, Acquired::Clean, false)),
                libc::EOWNERDEAD => {
                    return Ok(acquired(entry, page, who, Acquired::OwnerDied, false))
                }
                libc::ETIMEDOUT => {}
                // Unrecoverable, or fields glibc refuses: malformed, judged below.
                libc::ENOTRECOVERABLE | libc::EINVAL => nap(entry, slice, false),
                e => return Err(Error::new(format!("Lock failed: {}", strerror(e)))),
            }
        } else {
            nap(entry, slice, true);
            if well_formed(entry) {
                // Somebody repaired it meanwhile: queue on it normally.
                seen = None;
                continue;
            }
        }
        let look = (
            word(entry).load(Ordering::Relaxed),
            owner(entry).load(Ordering::Relaxed),
        );
        if look.0 == 0 && well_formed(entry) {
            seen = None;
            continue; // just released
        }
        if seen == Some(look) && !owner_alive(look.1, who) {
            if let Some(how) = take_over(entry, page, who, look.0) {
                return Ok(how);
            }
        }
        seen = Some(look);
    }
}

/// Sleeps for `slice` in short steps; with `until_well_formed`, returns early once the
/// entry is well formed again.
unsafe fn nap(entry: *mut u8, slice: Duration, until_well_formed: bool) {
    let end = Instant::now() + slice;
    loop {
        let now = Instant::now();
        if now >= end || (until_well_formed && well_formed(entry)) {
            return;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(10)));
    }
}

unsafe fn timedlock(m: *mut libc::pthread_mutex_t, t: Duration) -> i32 {
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

/// Takes an abandoned lock: one compare-and-swap of the word from the value seen (so of
/// several waiters that judged it abandoned exactly one wins), then a rewrite of the rest
/// of the entry. The lock is then not on glibc's robust list: it is released by
/// [`raw_unlock`], and if we die holding it the next waiter takes it over the same way.
unsafe fn take_over(entry: *mut u8, page: u32, who: &Locker, seen: u32) -> Option<Acquired> {
    if !platform::RAW_MUTEX_WORD {
        return None;
    }
    let tid = platform::gettid() & 0x3fff_ffff;
    word(entry)
        .compare_exchange(seen, tid, Ordering::Acquire, Ordering::Relaxed)
        .ok()?;
    restore_fields(entry);
    Some(acquired(entry, page, who, Acquired::OwnerDied, true))
}

/// Releases a lock without glibc (taken over, or its type bytes were damaged while held).
unsafe fn raw_unlock(entry: *mut u8) {
    restore_fields(entry);
    let w = word(entry);
    w.store(0, Ordering::Release);
    platform::futex_wake_all(w);
}

/// Removes `entry` from HELD: `Some(taken_over)` if this thread held it.
fn forget(entry: *mut u8) -> Option<bool> {
    HELD.with(|h| {
        let mut h = h.borrow_mut();
        let i = h.iter().rposition(|x| x.entry == entry as usize)?;
        Some(h.swap_remove(i).taken_over)
    })
}

/// Marks an owner-dead mutex usable again, after the page was checked.
///
/// # Safety
/// The caller holds the mutex, acquired with [`Acquired::OwnerDied`].
pub unsafe fn make_consistent(entry: *mut u8) {
    let taken_over = HELD.with(|h| {
        h.borrow()
            .iter()
            .any(|x| x.entry == entry as usize && x.taken_over)
    });
    if !taken_over {
        libc::pthread_mutex_consistent(mutex(entry));
    }
}

/// Unlocks. Errors (not the owner, e.g. a child that inherited a "locked" state over fork)
/// are ignored, as upstream ignores unlock errors.
///
/// # Safety
/// `entry` points at an initialised lock table entry in a live mapping.
pub unsafe fn unlock(entry: *mut u8) {
    match forget(entry) {
        Some(taken_over) => {
            owner(entry).store(0, Ordering::Relaxed);
            if platform::RAW_MUTEX_WORD && (taken_over || !well_formed(entry)) {
                raw_unlock(entry);
            } else {
                libc::pthread_mutex_unlock(mutex(entry));
            }
        }
        // Not ours: leave the owner record alone; glibc refuses (EPERM), as before.
        None => {
            libc::pthread_mutex_unlock(mutex(entry));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C, align(64))]
    struct Entry([u8; LOCK_STRIDE]);

    const NOBODY: Locker = Locker {
        dev: 0,
        ino: 0,
        slot: 7,
        fd: -1,
        lock_table_off: 0,
        lock_stride: 64,
    };

    fn fresh() -> Box<Entry> {
        let mut e = Box::new(Entry([0; LOCK_STRIDE]));
        unsafe { init(e.0.as_mut_ptr()).unwrap() };
        e
    }

    #[test]
    fn lock_unlock_and_relock_reports_reentrance() {
        let mut e = fresh();
        let p = e.0.as_mut_ptr();
        unsafe {
            assert_eq!(lock(p, 3, None, &NOBODY).unwrap(), Acquired::Clean);
            assert_eq!(
                owner(p).load(Ordering::Relaxed),
                8,
                "holder's slot recorded"
            );
            let err = lock(p, 3, None, &NOBODY).unwrap_err();
            assert!(
                err.message()
                    .contains("already locked by another Cache::FastMmap object"),
                "{err}"
            );
            unlock(p);
            assert_eq!(owner(p).load(Ordering::Relaxed), 0, "record cleared");
            assert_eq!(
                lock(p, 3, Some(Duration::from_millis(10)), &NOBODY).unwrap(),
                Acquired::Clean
            );
            unlock(p);
        }
    }

    #[test]
    fn same_file_through_another_mapping_is_reentrance() {
        let (mut a, mut b) = (fresh(), fresh());
        let who = Locker {
            dev: 1,
            ino: 42,
            slot: 0,
            fd: -1,
            lock_table_off: 0,
            lock_stride: 64,
        };
        unsafe {
            lock(a.0.as_mut_ptr(), 5, None, &who).unwrap();
            // b stands for page 5 of the same file mapped a second time: the same lock.
            // Make it look held (as it would be) so the fast path fails.
            word(b.0.as_mut_ptr()).store(platform::gettid(), Ordering::Relaxed);
            let err = lock(b.0.as_mut_ptr(), 5, None, &who).unwrap_err();
            assert!(err.message().contains("already locked"), "{err}");
            unlock(a.0.as_mut_ptr());
        }
    }

    #[test]
    fn type_bytes_survive_every_lock_state() {
        let mut e = fresh();
        let p = e.0.as_mut_ptr() as usize;
        assert!(!template().signature.is_empty());
        unsafe {
            assert!(well_formed(p as *mut u8));
            lock(p as *mut u8, 0, None, &NOBODY).unwrap();
            assert!(well_formed(p as *mut u8));
            unlock(p as *mut u8);
            std::thread::spawn(move || lock(p as *mut u8, 0, None, &NOBODY).map(|_| ()))
                .join()
                .unwrap()
                .unwrap();
            assert_eq!(
                lock(p as *mut u8, 0, None, &NOBODY).unwrap(),
                Acquired::OwnerDied
            );
            assert!(well_formed(p as *mut u8));
            make_consistent(p as *mut u8);
            unlock(p as *mut u8);
            assert!(well_formed(p as *mut u8));
        }
    }

    #[test]
    fn owner_death_is_reported_to_the_next_locker() {
        let e = fresh();
        let p = e.0.as_ptr() as usize;
        // A thread that exits holding the lock is "dead" for a robust mutex.
        std::thread::spawn(move || unsafe {
            lock(p as *mut u8, 0, None, &NOBODY).unwrap();
        })
        .join()
        .unwrap();
        unsafe {
            assert_eq!(
                lock(p as *mut u8, 0, None, &NOBODY).unwrap(),
                Acquired::OwnerDied
            );
            make_consistent(p as *mut u8);
            unlock(p as *mut u8);
            assert_eq!(
                lock(p as *mut u8, 0, None, &NOBODY).unwrap(),
                Acquired::Clean
            );
            unlock(p as *mut u8);
        }
    }

    /// Damages a fresh entry, then locks it: it must be taken over (reported as a dead
    /// owner) within a few checks, and work normally afterwards.
    fn garbage_is_taken_over(damage: impl FnOnce(*mut u8)) {
        let mut e = fresh();
        let p = e.0.as_mut_ptr();
        damage(p);
        let t0 = Instant::now();
        unsafe {
            // catch_deadlocks-style bound: a failure is an error, never a hang.
            let how = lock(p, 1, Some(STALE_CHECK * 6), &NOBODY).unwrap();
            assert_eq!(how, Acquired::OwnerDied);
            assert!(t0.elapsed() >= STALE_CHECK, "took it without waiting");
            make_consistent(p);
            unlock(p);
            assert!(well_formed(p));
            assert_eq!(word(p).load(Ordering::Relaxed), 0);
            assert_eq!(lock(p, 1, None, &NOBODY).unwrap(), Acquired::Clean);
            unlock(p);
        }
    }

    #[test]
    fn a_word_naming_a_missing_thread_is_taken_over() {
        // Thread ids are below 2^22; 0x3fff_fff0 names nobody.
        garbage_is_taken_over(|p| unsafe { word(p).store(0x3fff_fff0, Ordering::Relaxed) });
    }

    #[test]
    fn a_word_with_the_waiters_bit_naming_a_missing_thread_is_taken_over() {
        garbage_is_taken_over(|p| unsafe {
            word(p).store(0x8000_0000 | 0x3fff_fff0, Ordering::Relaxed)
        });
    }

    #[test]
    fn a_zeroed_entry_is_taken_over() {
        garbage_is_taken_over(|p| unsafe { std::ptr::write_bytes(p, 0, LOCK_STRIDE) });
    }

    #[test]
    fn an_ff_entry_is_taken_over() {
        garbage_is_taken_over(|p| unsafe { std::ptr::write_bytes(p, 0xFF, LOCK_STRIDE) });
    }

    #[test]
    fn a_live_recorded_holder_is_waited_for() {
        let path = std::env::temp_dir().join(format!("fmtest-lock-{}", std::process::id()));
        let f1 = std::fs::File::create(&path).unwrap();
        let f2 = std::fs::File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        use std::os::unix::io::AsRawFd;
        // f1 is "another opener" holding slot 3.
        assert!(platform::byte_lock(
            f1.as_raw_fd(),
            slot_offset(3),
            crate::platform::LOCK_WRITE,
            false
        )
        .unwrap());
        let me = Locker {
            dev: 0,
            ino: 0,
            slot: 4,
            fd: f2.as_raw_fd(),
            lock_table_off: 0,
            lock_stride: 64,
        };
        let mut e = fresh();
        let p = e.0.as_mut_ptr();
        unsafe {
            // Held by a thread we cannot see, recorded as slot 3: alive, so waited for.
            word(p).store(0x3fff_fff0, Ordering::Relaxed);
            owner(p).store(4, Ordering::Relaxed);
            let err = lock(p, 2, Some(STALE_CHECK * 3), &me).unwrap_err();
            assert!(err.message().contains("timed out"), "{err}");
            // The holder's opener goes away: now it is abandoned.
            drop(f1);
            assert_eq!(
                lock(p, 2, Some(STALE_CHECK * 6), &me).unwrap(),
                Acquired::OwnerDied
            );
            unlock(p);
        }
    }
}
