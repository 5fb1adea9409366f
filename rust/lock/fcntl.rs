//! The portable page-lock backend: a classic POSIX fcntl byte-range lock on one byte per
//! page (the first byte of the page's lock table entry), for systems without Linux's
//! robust mutexes and OFD locks (macOS, the BSDs...), and for Linux built with the
//! `portable` feature.
//!
//! # What the kernel gives, and what this module adds
//! A classic fcntl lock is released by the kernel when its process dies, so a killed
//! holder never blocks anybody: the next waiter's `F_SETLKW` simply succeeds. It belongs to
//! the *process* and to the file's inode, not to a descriptor or a thread, which brings
//! three traps this module closes:
//! - Two threads, or two handles on one file, of one process never exclude each other in
//!   the kernel. A process-wide table (one [`Inode`] per open share file) keeps the pages
//!   this process holds; a thread waits there (a condition variable) before it asks the
//!   kernel, so the kernel only ever arbitrates between processes.
//! - Closing *any* descriptor of the file drops all of the process's locks on it. So each
//!   process keeps one descriptor per share file for as long as any handle has it open:
//!   [`ShareFile::open_with`] hands out that descriptor again instead of opening a second
//!   one, and a descriptor opened anyway (a race) is parked, not closed, until the last
//!   handle goes.
//! - Liveness locks (byte 0, see `file.rs`) must behave like OFD locks, one per handle.
//!   [`ShareFile::byte_lock`] keeps each handle's locks in the table (a [`Desc`], the
//!   stand-in for an open file description) and asks the kernel only for what the process
//!   as a whole must hold: a handle's exclusive lock conflicts with its siblings' locks
//!   here, and with other processes' in the kernel.
//!
//! # A holder that died
//! Every holder records its process id in the entry (`OWNER_OFF`) once it has the lock and
//! clears it before releasing. A locker that finds a record left over knows the previous
//! holder died holding the lock and reports [`Acquired::OwnerDied`], so the page is
//! validated exactly as after a robust mutex's `EOWNERDEAD`; the "being mutated" marker
//! (`cache.rs`) tells the same from the page's side.
//!
//! # Fork
//! A child holds none of its parent's classic locks. A `pthread_atfork` handler makes the
//! child's table agree: no pages held, no lock requests under way, and the shared
//! liveness locks of the handles it inherited taken again for the child.

use super::{owner, Acquired, Locker, NO_SLOT};
use crate::error::{Error, Result};
use crate::platform;
use std::cell::{RefCell, UnsafeCell};
use std::fs::File;
use std::io;
use std::mem::ManuallyDrop;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The backend's name, as `Cache::FastMmap::_lock_backend` reports it.
pub const NAME: &str = "fcntl";
/// [`NAME`] for C.
pub const NAME_C: &std::ffi::CStr = c"fcntl";
/// Lock kind recorded in the file header (the robust backend's is 2).
pub const KIND: u32 = 3;
/// Recorded next to the kind: nothing of the entry's layout depends on the platform here.
pub const KIND_DETAIL: u32 = 0;

const WRITE: i16 = crate::platform::LOCK_WRITE;
const READ: i16 = crate::platform::LOCK_READ;
const UNLOCK: i16 = crate::platform::LOCK_UNLOCK;

/// Longest single sleep on the table's condition variable: waits are re-checked against
/// the monotonic clock this often, whatever the wall clock does.
const WAIT_SLICE: Duration = Duration::from_millis(200);
/// With a timeout (`catch_deadlocks`), the kernel lock is polled: first and longest pause.
const POLL_FIRST: Duration = Duration::from_micros(50);
const POLL_MAX: Duration = Duration::from_millis(10);
/// Pause before asking again when the kernel reports a deadlock: it sees processes, not
/// threads, so a cycle through two threads of one process is reported although the other
/// thread will release its lock.
const DEADLOCK_RETRY: Duration = Duration::from_millis(1);

// ---------------------------------------------------------------- the process-wide table

/// One byte lock of one handle.
struct Record {
    start: u64,
    kind: i16,
    /// Being waited for in the kernel (not held yet).
    pending: bool,
}

/// A handle's share of an inode: what an open file description is to OFD locks.
struct Desc {
    id: u64,
    /// ShareFiles using this description (`try_clone` shares it).
    refs: u32,
    locks: Vec<Record>,
}

/// A share file this process has open.
struct Inode {
    dev: u64,
    ino: u64,
    /// The descriptor every handle uses (opened read-write if any handle needs that).
    fd: RawFd,
    writable: bool,
    /// Other descriptors of the same file, closed only with the last handle.
    parked: Vec<RawFd>,
    descs: Vec<Desc>,
    /// Pages some thread of this process holds (or is acquiring in the kernel).
    pages: Vec<u32>,
}

impl Inode {
    /// The strongest lock other descriptions than `me` have (or wait for) on `start`:
    /// `(kind or UNLOCK, any of them pending)`.
    fn others(&self, me: u64, start: u64) -> (i16, bool) {
        let mut kind = UNLOCK;
        let mut pending = false;
        for r in self
            .descs
            .iter()
            .filter(|d| d.id != me)
            .flat_map(|d| d.locks.iter())
            .filter(|r| r.start == start)
        {
            pending |= r.pending;
            if !r.pending && (kind == UNLOCK || r.kind == WRITE) {
                kind = r.kind;
            }
        }
        (kind, pending)
    }

    fn desc(&mut self, id: u64) -> Option<&mut Desc> {
        self.descs.iter_mut().find(|d| d.id == id)
    }

    /// Sets description `id`'s record for `start` (`UNLOCK` removes it).
    fn record(&mut self, id: u64, start: u64, kind: i16, pending: bool) {
        if let Some(d) = self.desc(id) {
            d.locks.retain(|r| r.start != start);
            if kind != UNLOCK {
                d.locks.push(Record {
                    start,
                    kind,
                    pending,
                });
            }
        }
    }

    /// After a description gave up its `kind` lock on `start`: what the process holds in
    /// the kernel becomes what the others still hold.
    fn settle_kernel(&self, start: u64, kind: i16, me: u64) {
        let (left, _) = self.others(me, start);
        let want = match (left, kind) {
            (UNLOCK, _) => UNLOCK,
            (READ, WRITE) => READ,
            _ => return, // the process still needs what it has
        };
        let _ = platform::byte_lock(self.fd, start, want, false);
    }
}

struct Table {
    inodes: Vec<Inode>,
    next_desc: u64,
    waiters: u32,
}

impl Table {
    fn inode(&mut self, dev: u64, ino: u64) -> Option<&mut Inode> {
        self.inodes
            .iter_mut()
            .find(|i| i.dev == dev && i.ino == ino)
    }
}

/// The table and its lock. A pthread mutex and condition variable rather than std's: the
/// fork handlers must hold the lock across `fork` and release it in the child, which std's
/// guards cannot express.
struct Global {
    mutex: UnsafeCell<libc::pthread_mutex_t>,
    cond: UnsafeCell<libc::pthread_cond_t>,
    table: UnsafeCell<Table>,
}

// SAFETY: `table` is only touched with `mutex` held (through `Guard`), and the pthread
// objects are made for sharing between threads.
unsafe impl Sync for Global {}

static GLOBAL: Global = Global {
    mutex: UnsafeCell::new(libc::PTHREAD_MUTEX_INITIALIZER),
    cond: UnsafeCell::new(libc::PTHREAD_COND_INITIALIZER),
    table: UnsafeCell::new(Table {
        inodes: Vec::new(),
        next_desc: 1,
        waiters: 0,
    }),
};

/// The table, locked.
struct Guard(());

impl Guard {
    fn lock() -> Guard {
        register_fork_handlers();
        // SAFETY: a static, initialised mutex.
        unsafe { libc::pthread_mutex_lock(GLOBAL.mutex.get()) };
        Guard(())
    }

    fn table(&mut self) -> &mut Table {
        // SAFETY: we hold the mutex, and the borrow is tied to this guard.
        unsafe { &mut *GLOBAL.table.get() }
    }

    /// Releases the table until another thread changes it (or for at most WAIT_SLICE, or
    /// until `until`); the caller checks again what it waits for.
    fn wait(&mut self, until: Option<Instant>) {
        let slice = until.map_or(WAIT_SLICE, |u| {
            u.saturating_duration_since(Instant::now()).min(WAIT_SLICE)
        });
        self.table().waiters += 1;
        // SAFETY: plain data filled in by clock_gettime; the mutex is held by us, as
        // pthread_cond_timedwait requires.
        unsafe {
            let mut at: libc::timespec = std::mem::zeroed();
            libc::clock_gettime(libc::CLOCK_REALTIME, &mut at);
            let nanos = at.tv_nsec as u64 + u64::from(slice.subsec_nanos());
            at.tv_sec += (slice.as_secs() + nanos / 1_000_000_000) as libc::time_t;
            at.tv_nsec = (nanos % 1_000_000_000) as _;
            libc::pthread_cond_timedwait(GLOBAL.cond.get(), GLOBAL.mutex.get(), &at);
        }
        self.table().waiters -= 1;
    }

    /// Wakes the threads waiting for a change of the table.
    fn wake_all(&mut self) {
        if self.table().waiters > 0 {
            // SAFETY: a static, initialised condition variable.
            unsafe { libc::pthread_cond_broadcast(GLOBAL.cond.get()) };
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: this guard locked it.
        unsafe { libc::pthread_mutex_unlock(GLOBAL.mutex.get()) };
    }
}

// ---------------------------------------------------------------- fork

extern "C" fn before_fork() {
    // SAFETY: a static, initialised mutex; released by the handlers below in both
    // processes. Nothing forks while holding it (fork is called from Perl code only).
    unsafe { libc::pthread_mutex_lock(GLOBAL.mutex.get()) };
}

extern "C" fn after_fork_in_parent() {
    // SAFETY: locked by before_fork in this thread.
    unsafe { libc::pthread_mutex_unlock(GLOBAL.mutex.get()) };
}

/// The child has only the forking thread and none of the parent's classic locks: it holds
/// no pages and waits for nothing, and the shared liveness locks of the handles it
/// inherited are taken again (best effort: fcntl is async-signal-safe, nothing here
/// allocates).
extern "C" fn after_fork_in_child() {
    // SAFETY: the mutex is held (before_fork) by this, the only, thread; no other thread
    // exists to use the condition variable, which is re-initialised because waiters of
    // the parent that are gone may still be counted in it.
    PID.store(0, Ordering::Relaxed);
    unsafe {
        libc::pthread_cond_init(GLOBAL.cond.get(), std::ptr::null());
        let t = &mut *GLOBAL.table.get();
        t.waiters = 0;
        for i in t.inodes.iter_mut() {
            i.pages.clear();
            for d in i.descs.iter_mut() {
                // Exclusive locks and requests under way belonged to threads that do not
                // exist here.
                d.locks.retain(|r| r.kind == READ && !r.pending);
                for r in &d.locks {
                    let _ = platform::byte_lock(i.fd, r.start, READ, false);
                }
            }
        }
        libc::pthread_mutex_unlock(GLOBAL.mutex.get());
    }
    let _ = HELD.try_with(|h| {
        if let Ok(mut h) = h.try_borrow_mut() {
            // Forgotten, not released: the parent's.
            h.0.clear();
        }
    });
}

fn register_fork_handlers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers the handlers above, which only touch GLOBAL and HELD.
        unsafe {
            libc::pthread_atfork(
                Some(before_fork),
                Some(after_fork_in_parent),
                Some(after_fork_in_child),
            )
        };
    });
}

// ---------------------------------------------------------------- share files

/// An open share file: this process's one descriptor of it, and this handle's place in
/// the table (see the module notes).
pub struct ShareFile {
    /// The inode's descriptor, borrowed: closed by the table, never by this File.
    file: ManuallyDrop<File>,
    dev: u64,
    ino: u64,
    desc: u64,
}

impl std::ops::Deref for ShareFile {
    type Target = File;
    fn deref(&self) -> &File {
        &self.file
    }
}

/// A `File` for descriptor `fd` that must never be dropped (the table owns `fd`).
fn borrowed(fd: RawFd) -> ManuallyDrop<File> {
    // SAFETY: fd is open and owned by the table, which closes it only after every
    // ShareFile using it is gone; ManuallyDrop keeps this File from closing it.
    ManuallyDrop::new(unsafe { File::from_raw_fd(fd) })
}

impl ShareFile {
    /// Opens the file at `path`: if this process has it open already (as a regular file,
    /// `writable` or not as asked), through the descriptor it has; else with `open`.
    pub fn open_with(
        path: &Path,
        writable: bool,
        open: impl FnOnce() -> io::Result<File>,
    ) -> io::Result<ShareFile> {
        if let Ok(m) = std::fs::symlink_metadata(path) {
            if m.is_file() {
                let mut g = Guard::lock();
                let t = g.table();
                let id = t.next_desc;
                if let Some(i) = t.inode(m.dev(), m.ino()) {
                    if i.writable || !writable {
                        i.descs.push(Desc {
                            id,
                            refs: 1,
                            locks: Vec::new(),
                        });
                        let fd = i.fd;
                        t.next_desc += 1;
                        return Ok(ShareFile {
                            file: borrowed(fd),
                            dev: m.dev(),
                            ino: m.ino(),
                            desc: id,
                        });
                    }
                }
            }
        }
        Self::adopt(open()?, writable)
    }

    /// Takes charge of `file` (opened read-write if `writable`).
    pub fn adopt(file: File, writable: bool) -> io::Result<ShareFile> {
        let m = file.metadata()?;
        let (dev, ino) = (m.dev(), m.ino());
        let mut g = Guard::lock();
        let t = g.table();
        let id = t.next_desc;
        t.next_desc += 1;
        let desc = Desc {
            id,
            refs: 1,
            locks: Vec::new(),
        };
        let fd = match t.inode(dev, ino) {
            Some(i) => {
                // Opened meanwhile by another handle: keep both descriptors open (closing
                // one would drop the process's locks), use the read-write one.
                let new = file.into_raw_fd();
                if writable && !i.writable {
                    i.parked.push(i.fd);
                    i.fd = new;
                    i.writable = true;
                } else {
                    i.parked.push(new);
                }
                i.descs.push(desc);
                i.fd
            }
            None => {
                let fd = file.into_raw_fd();
                t.inodes.push(Inode {
                    dev,
                    ino,
                    fd,
                    writable,
                    parked: Vec::new(),
                    descs: vec![desc],
                    pages: Vec::new(),
                });
                fd
            }
        };
        Ok(ShareFile {
            file: borrowed(fd),
            dev,
            ino,
            desc: id,
        })
    }

    /// A second handle on the same description (as `dup` is for OFD locks: it shares
    /// this handle's locks, which last until both are dropped).
    pub fn try_clone(&self) -> io::Result<ShareFile> {
        let mut g = Guard::lock();
        let i = g
            .table()
            .inode(self.dev, self.ino)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))?;
        let fd = i.fd;
        if let Some(d) = i.desc(self.desc) {
            d.refs += 1;
        }
        Ok(ShareFile {
            file: borrowed(fd),
            dev: self.dev,
            ino: self.ino,
            desc: self.desc,
        })
    }

    /// Sets (or with `F_UNLCK` drops) this handle's lock on byte `start`, with the meaning
    /// of an OFD lock: it conflicts with the locks of every other handle, of this process
    /// or another. False when it would block and `wait` is false.
    pub fn byte_lock(&self, start: u64, kind: i16, wait: bool) -> io::Result<bool> {
        let mut g = Guard::lock();
        loop {
            let i = g
                .table()
                .inode(self.dev, self.ino)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))?;
            let mine = i
                .descs
                .iter()
                .find(|d| d.id == self.desc)
                .and_then(|d| d.locks.iter().find(|r| r.start == start))
                .map_or(UNLOCK, |r| r.kind);
            let (others, others_pending) = i.others(self.desc, start);
            if kind == UNLOCK {
                i.record(self.desc, start, UNLOCK, false);
                if mine != UNLOCK {
                    i.settle_kernel(start, mine, self.desc);
                }
                g.wake_all();
                return Ok(true);
            }
            let conflict = others_pending || others == WRITE || (kind == WRITE && others != UNLOCK);
            if conflict {
                if !wait {
                    return Ok(false);
                }
                g.wait(None);
                continue;
            }
            if kind == READ && others == READ {
                // The process holds it shared already, for a sibling.
                i.record(self.desc, start, READ, false);
                g.wake_all();
                return Ok(true);
            }
            if platform::byte_lock(i.fd, start, kind, false)? {
                i.record(self.desc, start, kind, false);
                g.wake_all();
                return Ok(true);
            }
            if !wait {
                return Ok(false);
            }
            // Another process holds it: wait in the kernel without the table, marked as
            // pending so that siblings neither take it nor count on it meanwhile.
            i.record(self.desc, start, kind, true);
            let fd = i.fd;
            drop(g);
            let r = platform::byte_lock(fd, start, kind, true);
            let mut g = Guard::lock();
            if let Some(i) = g.table().inode(self.dev, self.ino) {
                match r {
                    Ok(_) => i.record(self.desc, start, kind, false),
                    Err(_) => i.record(self.desc, start, mine, false),
                }
            }
            g.wake_all();
            return r;
        }
    }

    /// Is byte `start` locked by another handle (of this process or another)?
    pub fn byte_locked_elsewhere(&self, start: u64) -> bool {
        let mut g = Guard::lock();
        match g.table().inode(self.dev, self.ino) {
            Some(i) => {
                let (others, pending) = i.others(self.desc, start);
                others != UNLOCK || pending || platform::byte_locked_elsewhere(i.fd, start)
            }
            None => true,
        }
    }
}

impl Drop for ShareFile {
    fn drop(&mut self) {
        let mut g = Guard::lock();
        let t = g.table();
        let Some(at) = t
            .inodes
            .iter()
            .position(|i| i.dev == self.dev && i.ino == self.ino)
        else {
            return;
        };
        let i = &mut t.inodes[at];
        if let Some(d) = i.descs.iter().position(|d| d.id == self.desc) {
            i.descs[d].refs -= 1;
            if i.descs[d].refs == 0 {
                let gone = i.descs.swap_remove(d);
                for r in gone.locks.iter().filter(|r| !r.pending) {
                    i.settle_kernel(r.start, r.kind, gone.id);
                }
            }
        }
        if i.descs.is_empty() {
            let i = t.inodes.swap_remove(at);
            // The last handle: closing drops whatever the process still held on the file.
            for fd in std::iter::once(i.fd).chain(i.parked) {
                // SAFETY: descriptors the table owns; no ShareFile uses them any more.
                unsafe { libc::close(fd) };
            }
        }
        g.wake_all();
    }
}

// ---------------------------------------------------------------- page locks

/// This opener's identity for the page locks (no slots here: the kernel tells a live
/// holder from a dead one).
pub fn opener(
    file: &ShareFile,
    dev: u64,
    ino: u64,
    lock_table_off: u64,
    lock_stride: u64,
    _shown: &str,
) -> Result<Locker> {
    Ok(Locker {
        dev,
        ino,
        slot: NO_SLOT,
        fd: file.as_raw_fd(),
        lock_table_off,
        lock_stride,
    })
}

/// The identity of a second handle on the same file (see [`ShareFile::try_clone`]).
pub fn duplicate_opener(who: &Locker, file: &ShareFile) -> Locker {
    Locker {
        fd: file.as_raw_fd(),
        ..*who
    }
}

/// A lock this thread holds.
struct Held {
    entry: usize,
    dev: u64,
    ino: u64,
    page: u32,
    /// The file offset of the page's lock byte.
    byte: u64,
}

/// The page locks of one thread.
struct HeldList(Vec<Held>);

impl Drop for HeldList {
    /// A thread that ends holding page locks (its handle leaked) is a holder that died: its
    /// locks are released for the others, and its holder records stay, so that the next
    /// locker checks the page (a robust mutex reports a dead thread the same way).
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let mut g = Guard::lock();
        for h in self.0.drain(..) {
            if let Some(i) = g.table().inode(h.dev, h.ino) {
                let _ = platform::byte_lock(i.fd, h.byte, UNLOCK, false);
                i.pages.retain(|&p| p != h.page);
            }
        }
        g.wake_all();
    }
}

thread_local! {
    /// The page locks the current thread holds, through any handle.
    static HELD: RefCell<HeldList> = const { RefCell::new(HeldList(Vec::new())) };
}

/// This process's id, cached (a `getpid` is a system call: as dear as the lock itself);
/// 0 until first asked, and again in a forked child (see `after_fork_in_child`).
static PID: AtomicU32 = AtomicU32::new(0);

fn getpid() -> u32 {
    match PID.load(Ordering::Relaxed) {
        0 => {
            // SAFETY: getpid has no preconditions.
            let pid = unsafe { libc::getpid() as u32 };
            PID.store(pid, Ordering::Relaxed);
            pid
        }
        pid => pid,
    }
}

/// Does this thread already hold this lock (through this or another mapping of the file)?
fn held_here(entry: *mut u8, page: u32, who: &Locker) -> bool {
    HELD.with(|h| {
        h.borrow().0.iter().any(|x| {
            x.entry == entry as usize || (x.dev == who.dev && x.ino == who.ino && x.page == page)
        })
    })
}

/// Gives page `page` of a file back to the other threads of this process.
fn release_in_process(dev: u64, ino: u64, page: u32) {
    let mut g = Guard::lock();
    if let Some(i) = g.table().inode(dev, ino) {
        i.pages.retain(|&p| p != page);
    }
    g.wake_all();
}

fn timed_out(page: u32, timeout: Option<Duration>) -> Error {
    Error::new(format!(
        "Lock failed: timed out after {} seconds waiting for page {page} (catch_deadlocks)",
        timeout.map_or(0, |t| t.as_secs())
    ))
}

/// Takes the process's kernel lock on byte `byte`: waiting as long as it takes, or polling
/// until `deadline`.
fn kernel_lock(fd: RawFd, byte: u64, deadline: Option<Instant>) -> io::Result<bool> {
    let Some(deadline) = deadline else {
        loop {
            match platform::byte_lock(fd, byte, WRITE, true) {
                Err(e) if e.raw_os_error() == Some(libc::EDEADLK) => {
                    std::thread::sleep(DEADLOCK_RETRY)
                }
                r => return r,
            }
        }
    };
    let mut pause = POLL_FIRST;
    loop {
        if platform::byte_lock(fd, byte, WRITE, false)? {
            return Ok(true);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(POLL_MAX);
    }
}

/// Initialises a lock table entry: no holder recorded (the lock itself lives in the
/// kernel).
///
/// # Safety
/// `entry` points at a LOCK_STRIDE-byte lock table entry in a live mapping, and no process
/// is using it (a new file, or the caller holds the file's exclusive liveness lock).
pub unsafe fn init(entry: *mut u8) -> Result<()> {
    owner(entry).store(0, Ordering::Relaxed);
    Ok(())
}

/// Locks page `page` (its lock table entry is `entry`), blocking (or up to `timeout`).
///
/// # Safety
/// `entry` points at the page's lock table entry in a live mapping of the file `who` names,
/// which stays mapped while held.
pub unsafe fn lock(
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
    let deadline = timeout.map(|t| Instant::now() + t);
    // First among this process's threads...
    {
        let mut g = Guard::lock();
        loop {
            let Some(i) = g.table().inode(who.dev, who.ino) else {
                return Err(Error::new(
                    "Lock failed: the share file is not open in this process",
                ));
            };
            if !i.pages.contains(&page) {
                i.pages.push(page);
                break;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(timed_out(page, timeout));
            }
            g.wait(deadline);
        }
    }
    // ... then among processes.
    let byte = who.lock_table_off + u64::from(page) * who.lock_stride;
    match kernel_lock(who.fd, byte, deadline) {
        Ok(true) => {}
        Ok(false) => {
            release_in_process(who.dev, who.ino, page);
            return Err(timed_out(page, timeout));
        }
        Err(e) => {
            release_in_process(who.dev, who.ino, page);
            return Err(Error::os("Lock failed", &e));
        }
    }
    // The kernel call orders the previous holder's page writes before ours; the fence
    // says so to the compiler and documents it.
    fence(Ordering::SeqCst);
    let before = owner(entry).swap(getpid(), Ordering::Relaxed);
    HELD.with(|h| {
        h.borrow_mut().0.push(Held {
            entry: entry as usize,
            dev: who.dev,
            ino: who.ino,
            page,
            byte,
        })
    });
    // A record left over: its holder died between taking the lock and releasing it.
    Ok(if before != 0 {
        Acquired::OwnerDied
    } else {
        Acquired::Clean
    })
}

/// Nothing to do: the kernel already forgot the dead holder (the page was checked by the
/// caller, and our record replaced the dead one's).
///
/// # Safety
/// The caller holds the lock.
pub unsafe fn make_consistent(_entry: *mut u8) {}

/// Unlocks. A lock this thread does not hold (a forked child's inherited state) is left
/// alone, as the robust backend's unlock of a mutex it does not own is refused.
///
/// # Safety
/// `entry` points at a lock table entry in a live mapping.
pub unsafe fn unlock(entry: *mut u8) {
    let Some(h) = HELD.with(|h| {
        let mut h = h.borrow_mut();
        let at = h.0.iter().rposition(|x| x.entry == entry as usize)?;
        Some(h.0.swap_remove(at))
    }) else {
        return;
    };
    owner(entry).store(0, Ordering::Relaxed);
    fence(Ordering::SeqCst);
    let mut g = Guard::lock();
    if let Some(i) = g.table().inode(h.dev, h.ino) {
        // The kernel lock first: a sibling thread taking the page next must find it free
        // in the kernel too (else its F_SETLKW would succeed at once, ours being the
        // same process's, and our unlock would then take it from under it).
        let _ = platform::byte_lock(i.fd, h.byte, UNLOCK, false);
        i.pages.retain(|&p| p != h.page);
    }
    g.wake_all();
}

/// What an inspection tool sees in a lock table entry: `(well_formed, word,
/// owner_record)`. Here every entry is well formed (nothing in it is handed to the
/// system), and the "word" is the holder record: non-zero while held.
///
/// # Safety
/// `entry` points at a lock table entry in a live (possibly read-only) mapping.
pub unsafe fn entry_state(entry: *const u8) -> (bool, u32, u32) {
    let rec = owner(entry as *mut u8).load(Ordering::Relaxed);
    (true, rec, rec)
}

/// Is the holder that recorded `rec` (a process id) still there? Weaker than the robust
/// backend's answer: a process id is only meaningful in the PID namespace it was written
/// in, and may have been reused.
pub fn recorded_owner_alive(rec: u32, _fd: RawFd) -> bool {
    platform::process_exists(rec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::LOCK_STRIDE;
    use memmap2::{MmapOptions, MmapRaw};
    use std::path::PathBuf;

    const PAGES: u32 = 4;
    const TABLE_OFF: u64 = 4096;

    struct Fixture {
        path: PathBuf,
        file: ShareFile,
        map: MmapRaw,
        who: Locker,
    }

    impl Fixture {
        fn new(name: &str) -> Fixture {
            let path =
                std::env::temp_dir().join(format!("fmtest-fcntl-{}-{name}", std::process::id()));
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .unwrap();
            f.set_len(TABLE_OFF + u64::from(PAGES) * LOCK_STRIDE as u64)
                .unwrap();
            let file = ShareFile::adopt(f, true).unwrap();
            Self::with(path, file)
        }

        fn with(path: PathBuf, file: ShareFile) -> Fixture {
            let m = file.metadata().unwrap();
            let map = MmapOptions::new().map_raw(&*file).unwrap();
            let who = opener(
                &file,
                m.dev(),
                m.ino(),
                TABLE_OFF,
                LOCK_STRIDE as u64,
                "test",
            )
            .unwrap();
            Fixture {
                path,
                file,
                map,
                who,
            }
        }

        /// A second handle on the same file, opened by name as `file.rs` does.
        fn reopen(&self) -> Fixture {
            let file = ShareFile::open_with(&self.path, true, || {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&self.path)
            })
            .unwrap();
            Self::with(self.path.clone(), file)
        }

        fn entry(&self, page: u32) -> *mut u8 {
            self.map
                .as_mut_ptr()
                .wrapping_add(TABLE_OFF as usize + page as usize * LOCK_STRIDE)
        }

        /// Is page `page`'s lock byte held, as another process sees it? (A forked child
        /// holds none of our locks, so its F_GETLK sees them.)
        fn held_seen_from_another_process(&self, page: u32) -> bool {
            let byte = TABLE_OFF + u64::from(page) * LOCK_STRIDE as u64;
            let fd = self.file.as_raw_fd();
            in_child(move || platform::byte_locked_elsewhere(fd, byte))
        }
    }

    /// Runs `f` in a forked child (which only evaluates and exits) and returns its answer;
    /// the child is reaped, and killed if it takes more than 20 s.
    fn in_child(f: impl FnOnce() -> bool) -> bool {
        // SAFETY: fork in a test; the child runs `f` and _exits without unwinding.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: bounds the child; alarm and _exit have no preconditions.
            unsafe { libc::alarm(20) };
            let code = if f() { 1 } else { 0 };
            // SAFETY: leaves the child without running the test harness.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status), "child died: status {status}");
        libc::WEXITSTATUS(status) == 1
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    #[test]
    fn a_second_handle_shares_the_descriptor_and_closing_it_keeps_the_lock() {
        let a = Fixture::new("share");
        let b = a.reopen();
        assert_eq!(a.file.as_raw_fd(), b.file.as_raw_fd(), "one descriptor");
        unsafe {
            assert_eq!(lock(a.entry(1), 1, None, &a.who).unwrap(), Acquired::Clean);
        }
        assert!(a.held_seen_from_another_process(1));
        drop(b);
        assert!(
            a.held_seen_from_another_process(1),
            "closing the second handle must not drop the first one's lock"
        );
        unsafe { unlock(a.entry(1)) };
        assert!(!a.held_seen_from_another_process(1));
    }

    #[test]
    fn the_same_page_through_two_handles_in_one_thread_is_reentrance() {
        let a = Fixture::new("reenter");
        let b = a.reopen();
        unsafe {
            lock(a.entry(2), 2, None, &a.who).unwrap();
            let err = lock(b.entry(2), 2, None, &b.who).unwrap_err();
            assert!(err.message().contains("already locked"), "{err}");
            unlock(a.entry(2));
            lock(b.entry(2), 2, None, &b.who).unwrap();
            unlock(b.entry(2));
        }
    }

    #[test]
    fn threads_exclude_each_other() {
        let a = Fixture::new("threads");
        let b = a.reopen();
        let counter = a.entry(3).wrapping_add(8) as usize; // spare bytes of the entry
        let run = |f: &Fixture| {
            let (e, who) = (f.entry(0) as usize, f.who);
            move || {
                for _ in 0..300 {
                    // SAFETY: the fixtures outlive the scope's threads.
                    unsafe {
                        lock(e as *mut u8, 0, Some(Duration::from_secs(20)), &who).unwrap();
                        let c = counter as *mut u32;
                        // Not atomic on purpose: only exclusion keeps the count right.
                        let v = std::ptr::read_volatile(c);
                        std::thread::yield_now();
                        std::ptr::write_volatile(c, v + 1);
                        unlock(e as *mut u8);
                    }
                }
            }
        };
        std::thread::scope(|s| {
            for f in [&a, &b, &a, &b] {
                s.spawn(run(f));
            }
        });
        assert_eq!(
            unsafe { std::ptr::read_volatile(counter as *const u32) },
            1200
        );
    }

    #[test]
    fn a_holder_killed_holding_the_lock_is_reported_dead() {
        let a = Fixture::new("killed");
        let e = a.entry(1) as usize;
        let who = a.who;
        // SAFETY: fork in a test; the child locks and is killed.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            unsafe {
                libc::alarm(20);
                let ok = lock(e as *mut u8, 1, None, &who).is_ok();
                libc::_exit(if ok { 0 } else { 1 });
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child, which exits holding the lock.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        unsafe {
            let how = lock(e as *mut u8, 1, Some(Duration::from_secs(5)), &who).unwrap();
            assert_eq!(how, Acquired::OwnerDied, "the dead holder's record is seen");
            make_consistent(e as *mut u8);
            unlock(e as *mut u8);
            assert_eq!(lock(e as *mut u8, 1, None, &who).unwrap(), Acquired::Clean);
            unlock(e as *mut u8);
        }
    }

    #[test]
    fn a_lock_held_by_another_process_times_out_then_is_had() {
        let a = Fixture::new("timeout");
        let e = a.entry(0) as usize;
        let who = a.who;
        let mut pipe = [0; 2];
        // SAFETY: plain pipe creation.
        assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
        // SAFETY: fork in a test; the child holds the lock until the pipe closes.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            unsafe {
                libc::alarm(20);
                libc::close(pipe[1]);
                lock(e as *mut u8, 0, None, &who).unwrap();
                // Blocks until the parent closes its write end.
                let mut b = 0u8;
                libc::read(pipe[0], (&mut b as *mut u8).cast(), 1);
                unlock(e as *mut u8);
                libc::_exit(0);
            }
        }
        // SAFETY: our end of the pipe; closing it later releases the child.
        unsafe { libc::close(pipe[0]) };
        // Wait (bounded) until the child has the lock.
        let until = Instant::now() + Duration::from_secs(20);
        while !a.held_seen_from_another_process(0) {
            assert!(Instant::now() < until, "the child never locked");
            std::thread::sleep(Duration::from_millis(5));
        }
        let err =
            unsafe { lock(e as *mut u8, 0, Some(Duration::from_millis(200)), &who) }.unwrap_err();
        assert!(err.message().contains("timed out"), "{err}");
        unsafe { libc::close(pipe[1]) };
        let how = unsafe { lock(e as *mut u8, 0, Some(Duration::from_secs(20)), &who) }.unwrap();
        assert_eq!(how, Acquired::Clean, "released normally");
        unsafe { unlock(e as *mut u8) };
        let mut status = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }

    #[test]
    fn handles_byte_locks_conflict_like_ofd_locks() {
        let a = Fixture::new("ofd");
        let b = a.reopen();
        assert!(a.file.byte_lock(0, READ, false).unwrap());
        assert!(
            !b.file.byte_lock(0, WRITE, false).unwrap(),
            "a sibling's shared lock"
        );
        assert!(b.file.byte_locked_elsewhere(0));
        assert!(
            b.file.byte_lock(0, READ, false).unwrap(),
            "shared with a sibling"
        );
        a.file.byte_lock(0, UNLOCK, false).unwrap();
        assert!(
            in_child({
                let fd = a.file.as_raw_fd();
                move || platform::byte_locked_elsewhere(fd, 0)
            }),
            "b's shared lock is still held for the process"
        );
        assert!(!a.file.byte_lock(0, WRITE, false).unwrap());
        drop(b);
        assert!(
            a.file.byte_lock(0, WRITE, false).unwrap(),
            "b's lock went with it"
        );
        assert!(!a.file.byte_locked_elsewhere(0));
    }
}
