//! Looking inside a share file from outside a cache: what the `fastmmap` command uses.
//!
//! Nothing here trusts the file: the header is checked field by field ([`parse_header`])
//! before anything else is read, and each page is copied out and checked with the
//! engine's own validation ([`Page::validate`]) on the private copy.
//!
//! A live file is read without taking any lock and without writing a byte: the file is
//! opened read-only and mapped read-only, and each page is copied with its change counter
//! as a sequence lock (the copy counts only if the counter was even and unchanged across
//! it), exactly as lock-free readers do. A page that never holds still is reported as busy,
//! not as damaged. Only [`Inspector::repair`] writes, and only with the file's liveness
//! lock held exclusively (nobody else has it open, and new openers wait).
//!
//! What stays trusted: like every user of the file, an inspector relies on the file not
//! being truncated while it has it mapped (the engine itself would fault too).

use crate::error::{Error, Result};
use crate::file::{parse_header, Layout, HEADER_SIZE};
use crate::hash::belongs_on;
use crate::lock::{self, DIRTY_OFF};
use crate::page::{Item, Page, FLAG_ISDIRTY};
use crate::stats::{self, Counters};
use crate::time::{self, is_expired};
use memmap2::{MmapOptions, MmapRaw};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

/// Copies of a page attempted before it is reported busy.
const COPY_ATTEMPTS: u32 = 2000;

/// How a page was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageState {
    Sound = 0,
    /// Fails validation, or its lock entry is unusable.
    Damaged = 1,
    /// Kept changing under every copy (live writers): not checked.
    Busy = 2,
    /// A change was left unfinished by a writer that is gone (the next locker checks and
    /// repairs the page).
    Unfinished = 3,
}

/// How a page's lock entry was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockState {
    Free = 0,
    HeldLive = 1,
    /// Held, but the recorded holder is gone (taken over by the next locker).
    HeldDead = 2,
    /// Not a mutex of this build (taken over by the next locker).
    Malformed = 3,
}

/// One entry of a page, as listed by `fastmmap keys`.
#[derive(Debug, Clone)]
pub struct EntryInfo {
    pub key: Vec<u8>,
    pub val_len: usize,
    pub last_access: u32,
    pub expire_on: u32,
    pub flags: u32,
    pub modseq: Option<u64>,
}

/// What one page holds and what is wrong with it.
#[derive(Debug, Clone)]
pub struct PageReport {
    pub state: PageState,
    pub lock: LockState,
    pub problems: Vec<String>,
    pub num_slots: u32,
    pub free_slots: u32,
    pub old_slots: u32,
    pub free_bytes: u32,
    /// Live entries (not expired, not tombstones).
    pub entries: u32,
    pub expired: u32,
    pub tombstones: u32,
    /// Entries flagged dirty (write-back, not yet written).
    pub dirty: u32,
    pub nreads: u32,
    pub nhits: u32,
    /// Oldest and newest last-access time of the page's entries (0 when none).
    pub oldest: u32,
    pub newest: u32,
    pub items: Vec<EntryInfo>,
}

impl PageReport {
    fn empty(state: PageState, lock: LockState) -> PageReport {
        PageReport {
            state,
            lock,
            problems: Vec::new(),
            num_slots: 0,
            free_slots: 0,
            old_slots: 0,
            free_bytes: 0,
            entries: 0,
            expired: 0,
            tombstones: 0,
            dirty: 0,
            nreads: 0,
            nhits: 0,
            oldest: 0,
            newest: 0,
            items: Vec::new(),
        }
    }
}

/// An open share file, for inspection (read-only) or offline repair.
pub struct Inspector {
    pub path: PathBuf,
    file: lock::ShareFile,
    pub file_len: u64,
    map: Option<MmapRaw>,
    /// The header's layout, or why the header cannot be used.
    pub header: std::result::Result<Layout, String>,
    writable: bool,
}

fn open_file(path: &Path, writable: bool) -> Result<lock::ShareFile> {
    let shown = path.display();
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
        .map_err(|_| Error::new(format!("{shown}: the name contains a NUL byte")))?;
    let mode = if writable {
        libc::O_RDWR
    } else {
        libc::O_RDONLY
    };
    // Through lock::ShareFile: in a process that also has the file open as a cache, the
    // fcntl backend must not close a second descriptor of it (that drops the process's
    // locks).
    let opened = lock::ShareFile::open_with(path, writable, || {
        // SAFETY: c is a valid NUL-terminated path; the fd is owned by the File below.
        let fd = unsafe { libc::open(c.as_ptr(), mode | libc::O_CLOEXEC | libc::O_NOFOLLOW) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a freshly opened descriptor nobody else owns.
        Ok(unsafe { File::from_raw_fd(fd) })
    });
    if let Err(e) = opened {
        if e.raw_os_error() == Some(libc::ELOOP) {
            return Err(Error::new(format!(
                "cannot open {shown}: it is a symbolic link, which is not followed"
            )));
        }
        return Err(Error::os(format!("cannot open {shown}"), &e));
    }
    opened.map_err(|e| Error::os(format!("cannot open {shown}"), &e))
}

impl Inspector {
    /// Opens `path` read-only (or read-write for [`Inspector::repair`]). Errors: the file
    /// cannot be opened or is not a regular file. A header that cannot be used is not an
    /// error here: it is in `header`.
    pub fn open(path: &Path, writable: bool) -> Result<Inspector> {
        let shown = path.display().to_string();
        let file = open_file(path, writable)?;
        let meta = file
            .metadata()
            .map_err(|e| Error::os(format!("cannot stat {shown}"), &e))?;
        if !meta.is_file() {
            return Err(Error::new(format!("{shown} is not a regular file")));
        }
        let file_len = meta.size();
        let mut head = vec![0u8; HEADER_SIZE as usize];
        let got = read_fully(&file, &mut head)
            .map_err(|e| Error::os(format!("cannot read {shown}"), &e))?;
        head.truncate(got);
        let header = if got < HEADER_SIZE as usize {
            Err(format!(
                "file is {file_len} bytes, shorter than the {HEADER_SIZE}-byte header"
            ))
        } else {
            parse_header(&head, file_len)
        };
        let map = match &header {
            Ok(l) => {
                let mut o = MmapOptions::new();
                o.len(l.file_size as usize);
                let m = if writable {
                    o.map_raw(&*file)
                } else {
                    o.map_raw_read_only(&*file)
                };
                Some(m.map_err(|e| Error::os(format!("cannot map {shown}"), &e))?)
            }
            Err(_) => None,
        };
        Ok(Inspector {
            path: path.to_path_buf(),
            file,
            file_len,
            map,
            header,
            writable,
        })
    }

    /// Does any other open file description hold the file open (a live cache)?
    pub fn in_use(&self) -> bool {
        self.file.byte_locked_elsewhere(0)
    }

    fn layout(&self) -> Option<(&Layout, &MmapRaw)> {
        match (&self.header, &self.map) {
            (Ok(l), Some(m)) => Some((l, m)),
            _ => None,
        }
    }

    /// The file's cumulative counters (zero when the header cannot be used).
    pub fn counters(&self) -> Counters {
        match self.layout() {
            // SAFETY: the mapping covers the header (at least HEADER_SIZE bytes).
            Some((_, m)) => unsafe { stats::read_counters(m.as_ptr()) },
            None => Counters::default(),
        }
    }

    fn entry_ptr(l: &Layout, m: &MmapRaw, n: u32) -> *mut u8 {
        let off = l.lock_off(n);
        m.as_mut_ptr().wrapping_add(off as usize)
    }

    fn page_ptr(l: &Layout, m: &MmapRaw, n: u32) -> *mut u8 {
        let off = l.page_off(n);
        m.as_mut_ptr().wrapping_add(off as usize)
    }

    /// The lock entry's state, with "held by a process that is gone" judged as the engine
    /// judges it before a takeover: the same lock word and recorded owner seen twice, a
    /// second apart. A live locker records its opener slot just after taking the mutex, so
    /// one look can catch a live holder that has not written its slot yet.
    fn lock_state(&self, entry: *const u8) -> LockState {
        let mut first = self.look(entry);
        let give_up = Instant::now() + Duration::from_secs(3);
        loop {
            if first.0 != LockState::HeldDead {
                return first.0;
            }
            let settled = Instant::now() + Duration::from_millis(1100);
            let mut changed = None;
            while Instant::now() < settled {
                std::thread::sleep(Duration::from_millis(20));
                let again = self.look(entry);
                if (again.1, again.2) != (first.1, first.2) || again.0 != LockState::HeldDead {
                    changed = Some(again);
                    break;
                }
            }
            match changed {
                None => return LockState::HeldDead,
                Some(_) if Instant::now() >= give_up => return LockState::HeldLive,
                Some(again) => first = again,
            }
        }
    }

    /// One look at a lock entry: (state, lock word, recorded owner).
    fn look(&self, entry: *const u8) -> (LockState, u32, u32) {
        // SAFETY: entry is a lock table entry inside the live mapping.
        let (ok, word, rec) = unsafe { lock::entry_state(entry) };
        let state = if !ok {
            LockState::Malformed
        } else if word == 0 {
            LockState::Free
        } else if lock::recorded_owner_alive(rec, self.file.as_raw_fd()) {
            LockState::HeldLive
        } else {
            LockState::HeldDead
        };
        (state, word, rec)
    }

    /// Checks page `n` (and lists its entries with `with_items`). Never writes.
    pub fn page(&self, n: u32, with_items: bool) -> Result<PageReport> {
        let (l, m) = self
            .layout()
            .ok_or_else(|| Error::new("the file's header cannot be used"))?;
        let g = l.geometry;
        if n >= g.num_pages {
            return Err(Error::new(format!(
                "page {n} does not exist (the file has {} pages)",
                g.num_pages
            )));
        }
        let entry = Self::entry_ptr(l, m, n);
        let base = Self::page_ptr(l, m, n) as *const u8;
        let lock_state = self.lock_state(entry);
        let mut copy = vec![0u8; g.page_size as usize];
        let mut consistent = false;
        let mut unfinished = false;
        for attempt in 0..COPY_ATTEMPTS {
            // SAFETY: the entry and the page lie inside the live mapping; the page's bytes
            // may be changing, so they are read one at a time (volatile) into our copy,
            // which is trusted only if the change counter shows no change meanwhile.
            unsafe {
                let version = lock::version(entry);
                let before = version.load(Ordering::Acquire);
                if before & 1 == 0 {
                    for (i, b) in copy.iter_mut().enumerate() {
                        *b = std::ptr::read_volatile(base.add(i));
                    }
                    fence(Ordering::Acquire);
                    if version.load(Ordering::Relaxed) == before {
                        consistent = true;
                        break;
                    }
                } else if attempt >= 16 {
                    // Odd, and nobody alive is changing it: a writer died part-way. A live
                    // writer makes the counter even before it unlocks, so a free lock or a
                    // counter that moved meanwhile means the change simply finished.
                    let state = self.lock_state(entry);
                    let still = version.load(Ordering::Acquire) == before;
                    if still && matches!(state, LockState::HeldDead | LockState::Malformed) {
                        unfinished = true;
                        break;
                    }
                }
            }
            std::thread::yield_now();
        }
        if !consistent {
            let mut r = PageReport::empty(
                if unfinished {
                    PageState::Unfinished
                } else {
                    PageState::Busy
                },
                lock_state,
            );
            r.problems.push(if unfinished {
                "a change was left unfinished by a writer that is gone (the next process to lock the page checks and repairs it)".into()
            } else {
                format!("kept changing under {COPY_ATTEMPTS} copies (live writers): not checked")
            });
            return Ok(r);
        }
        let mut r = PageReport::empty(PageState::Sound, lock_state);
        match lock_state {
            LockState::Malformed => r.problems.push(
                "lock entry is not a mutex of this build (the next locker takes it over)".into(),
            ),
            LockState::HeldDead => r
                .problems
                .push("locked by a process that is gone (the next locker takes it over)".into()),
            _ => {}
        }
        // SAFETY: the marker is a u32 inside the entry (64-byte aligned).
        let marker_at =
            |e: *const u8| unsafe { std::ptr::read_volatile(e.add(DIRTY_OFF) as *const u32) };
        // A writer that locked after our first look sets the marker too: judge the lock
        // as it is now, and only a marker that stays set under a holder that is gone.
        if marker_at(entry) != 0
            && matches!(
                self.lock_state(entry),
                LockState::HeldDead | LockState::Malformed
            )
            && marker_at(entry) != 0
        {
            r.problems.push(
                "marked as being changed, by nobody alive (the next locker checks it)".into(),
            );
        }
        let page = Page::new(&mut copy);
        let hash_ok = |key: &[u8], sh: u32| belongs_on(key, sh, n, g.num_pages);
        if let Err(c) = page.validate(&hash_ok) {
            r.problems.push(c.0);
            r.state = PageState::Damaged;
            return Ok(r);
        }
        if !r.problems.is_empty() {
            r.state = PageState::Damaged;
        }
        r.num_slots = page.num_slots();
        r.free_slots = page.free_slots();
        r.old_slots = page.old_slots();
        r.free_bytes = page.free_bytes();
        (r.nreads, r.nhits) = page.stats();
        let now = time::now();
        let items: Vec<Item> = page.items().unwrap_or_default();
        for it in &items {
            if it.is_tombstone() {
                r.tombstones += 1;
            } else if is_expired(it.expire_on, now) {
                r.expired += 1;
            } else {
                r.entries += 1;
            }
            if it.flags & FLAG_ISDIRTY != 0 && !it.is_tombstone() {
                r.dirty += 1;
            }
            if r.oldest == 0 || it.last_access < r.oldest {
                r.oldest = it.last_access;
            }
            r.newest = r.newest.max(it.last_access);
            if with_items {
                r.items.push(EntryInfo {
                    key: page.key(it).to_vec(),
                    val_len: it.value_span().1,
                    last_access: it.last_access,
                    expire_on: it.expire_on,
                    flags: it.flags,
                    modseq: page.modseq(it),
                });
            }
        }
        Ok(r)
    }

    /// Repairs the file offline: refuses unless opened writable and nobody else has it
    /// open (then holds its liveness lock exclusively, so that new openers wait). Resets
    /// every lock entry, finishes unfinished changes and repairs each page that fails
    /// validation (keeping the entries that validate). Returns one line per page changed.
    pub fn repair(&mut self) -> Result<Vec<String>> {
        let shown = self.path.display().to_string();
        if !self.writable {
            return Err(Error::new("not opened for writing"));
        }
        if let Err(why) = &self.header {
            return Err(Error::new(format!(
                "{shown} cannot be repaired: {why}. Without a sound header its geometry is \
                 unknown; remove the file (the next process to open it creates a new one)"
            )));
        }
        let got = self
            .file
            .byte_lock(0, crate::platform::LOCK_WRITE, false)
            .map_err(|e| Error::os(format!("cannot lock {shown}"), &e))?;
        if !got {
            return Err(Error::new(format!(
                "{shown} is open in other processes: repair works only on a file nobody uses \
                 (stop them first; a live cache repairs damaged pages itself when it finds them)"
            )));
        }
        let result = self.repair_locked();
        let _ = self.file.byte_lock(0, crate::platform::LOCK_UNLOCK, false);
        result
    }

    fn repair_locked(&self) -> Result<Vec<String>> {
        let (l, m) = self
            .layout()
            .ok_or_else(|| Error::new("the file's header cannot be used"))?;
        let g = l.geometry;
        let mut notes = Vec::new();
        for n in 0..g.num_pages {
            let entry = Self::entry_ptr(l, m, n);
            let mut why = Vec::new();
            match self.lock_state(entry) {
                LockState::Malformed => why.push("lock entry rewritten"),
                LockState::HeldDead | LockState::HeldLive => why.push("stale lock released"),
                LockState::Free => {}
            }
            // SAFETY: entry and page lie in the live writable mapping, and nobody else has
            // the file open (we hold the liveness lock exclusively): we own every byte.
            unsafe {
                lock::init(entry)?;
                let marker = entry.add(DIRTY_OFF) as *mut u32;
                if std::ptr::read_volatile(marker) != 0 {
                    std::ptr::write_volatile(marker, 0);
                    why.push("unfinished change closed");
                }
                let version = lock::version(entry);
                let v = version.load(Ordering::Relaxed);
                if v & 1 == 1 {
                    version.store(v.wrapping_add(1), Ordering::Relaxed);
                }
                let bytes =
                    std::slice::from_raw_parts_mut(Self::page_ptr(l, m, n), g.page_size as usize);
                let mut page = Page::new(bytes);
                let hash_ok = |key: &[u8], sh: u32| belongs_on(key, sh, n, g.num_pages);
                if let Err(c) = page.validate(&hash_ok) {
                    let kept = page.repair(g.start_slots, &hash_ok);
                    stats::record_repair_at(m.as_mut_ptr());
                    notes.push(format!("page {n}: repaired ({}; {kept} entries kept)", c.0));
                    continue;
                }
            }
            if !why.is_empty() {
                notes.push(format!("page {n}: {}", why.join(", ")));
            }
        }
        m.flush()
            .map_err(|e| Error::os(format!("cannot write {}", self.path.display()), &e))?;
        Ok(notes)
    }
}

fn read_fully(file: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], got as u64) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Cache;
    use crate::page::NewItem;
    use std::os::unix::ffi::OsStrExt;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fmtest-insp-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn cache(p: &Path) -> Cache {
        let mut c = Cache::new();
        c.set_param(b"share_file", p.as_os_str().as_bytes())
            .unwrap();
        c.set_param(b"num_pages", b"3").unwrap();
        c.set_param(b"page_size", b"8192").unwrap();
        c.init().unwrap();
        c
    }

    fn set(c: &mut Cache, k: &str, v: &str) {
        let (p, s) = c.hash(k.as_bytes());
        c.lock(p).unwrap();
        c.write(&NewItem {
            slot_hash: s,
            key: k.as_bytes(),
            val: v.as_bytes(),
            expire_on: 0,
            flags: 0,
            modseq: None,
        })
        .unwrap();
        c.unlock();
    }

    #[test]
    fn sound_damaged_and_repaired() {
        let d = tmpdir("basic");
        let p = d.join("c");
        let mut c = cache(&p);
        for i in 0..30 {
            set(&mut c, &format!("k{i}"), "value");
        }
        let ins = Inspector::open(&p, false).unwrap();
        assert!(ins.in_use(), "the cache above has it open");
        let mut total = 0;
        for n in 0..3 {
            let r = ins.page(n, true).unwrap();
            assert_eq!(r.state, PageState::Sound, "{:?}", r.problems);
            total += r.entries;
            assert_eq!(r.items.len() as u32, r.entries);
        }
        assert_eq!(total, 30);
        // Damage page 1's slot count through the cache's own mapping.
        let f = c.mapped().unwrap();
        // SAFETY: test-only scribble inside the mapping.
        unsafe { std::ptr::write_bytes(f.page_ptr(1).add(4), 0xFF, 4) };
        let r = ins.page(1, false).unwrap();
        assert_eq!(r.state, PageState::Damaged);
        assert!(r.problems[0].contains("slot count"), "{:?}", r.problems);
        drop(ins);
        // Repair refuses while the cache has it open.
        let mut w = Inspector::open(&p, true).unwrap();
        assert!(w
            .repair()
            .unwrap_err()
            .message()
            .contains("open in other processes"));
        drop(w);
        drop(c);
        let mut w = Inspector::open(&p, true).unwrap();
        let notes = w.repair().unwrap();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].starts_with("page 1: repaired"), "{notes:?}");
        assert_eq!(w.counters().repairs, 1);
        assert_eq!(w.page(1, false).unwrap().state, PageState::Sound);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn hostile_headers_are_reported_not_trusted() {
        let d = tmpdir("hostile");
        let p = d.join("c");
        drop(cache(&p));
        let good = std::fs::read(&p).unwrap();
        // Geometry fields rewritten (checksum then fails), garbage, short, empty.
        let mut geo = good.clone();
        geo[20..24].copy_from_slice(&u32::MAX.to_ne_bytes());
        for (bytes, want) in [
            (geo, "checksum"),
            (vec![0xAB; 70000], "bad magic"),
            (good[..100].to_vec(), "shorter than"),
            (Vec::new(), "shorter than"),
        ] {
            std::fs::write(&p, &bytes).unwrap();
            let ins = Inspector::open(&p, false).unwrap();
            let e = ins.header.as_ref().unwrap_err();
            assert!(e.contains(want), "{e}");
            assert!(ins.page(0, false).is_err());
        }
        // A file cut short after a good header.
        std::fs::write(&p, &good[..8192]).unwrap();
        let e = Inspector::open(&p, false).unwrap().header.unwrap_err();
        assert!(e.contains("its header says"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
