//! A cache handle: parameters, the open file, the one page this handle may hold locked, and
//! the page operations, with corruption handling around each of them.
//!
//! Lock model (upstream's): a handle holds at most one page lock at a time; every page
//! operation acts on that locked page. A page found inconsistent is repaired (valid entries
//! kept), counted, and reported through [`Cache::take_warning`].

use crate::error::{Error, Result};
use crate::file::{path_from_bytes, Geometry, Layout, MappedFile};
use crate::fork::ForkToken;
pub use crate::hash::slot_hash;
use crate::hash::{belongs_on, hash_key};
use crate::lock::{self, Acquired, DIRTY_OFF};
use crate::page::{self, Corrupt, ExpungePlan, Item, Page, PageResult, Stored};

// What the C ABI (ffi.rs) needs of the page format: it reaches pages only through here.
pub use crate::page::{
    NewItem, ReadOut, FLAG_HASMODSEQ, FLAG_ISDIRTY, FLAG_TOMBSTONE, FLAG_UNDEF, FLAG_UTF8KEY,
    FLAG_UTF8VAL,
};
use crate::stats;
use crate::time;
use std::cell::Cell;
use std::path::PathBuf;
use std::sync::atomic::{compiler_fence, fence, Ordering};
use std::time::Duration;

/// How often a lock-free read re-checks a page that is being changed before it takes
/// the lock instead.
const PEEK_SPINS: u32 = 64;

/// How long `catch_deadlocks` waits for a page lock before giving up.
const DEADLOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// Constructor parameters (upstream's `fc_set_param` names and defaults).
#[derive(Debug, Clone)]
pub struct Params {
    pub share_file: Option<PathBuf>,
    pub init_file: bool,
    pub test_file: bool,
    pub page_size: u32,
    pub num_pages: u32,
    pub expire_time: u32,
    pub permissions: u32,
    pub start_slots: u32,
    pub catch_deadlocks: bool,
    pub enable_stats: bool,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            share_file: None,
            init_file: false,
            test_file: false,
            page_size: 65536,
            num_pages: 89,
            expire_time: 0,
            permissions: 0o640,
            // Upstream's 89 slots take 356 bytes; 44 of ours (8 bytes each) as many.
            start_slots: 44,
            catch_deadlocks: false,
            enable_stats: false,
        }
    }
}

/// Parses a parameter's decimal text (empty means 0, as Perl's false does).
fn parse_u32(name: &str, value: &[u8]) -> Result<u32> {
    let bad = || {
        Error::new(format!(
            "Bad value '{}' for {name}: must be a whole number from 0 to {}",
            String::from_utf8_lossy(value),
            u32::MAX
        ))
    };
    if value.is_empty() {
        return Ok(0);
    }
    let text = std::str::from_utf8(value).map_err(|_| bad())?.trim();
    let digits = text.strip_prefix('+').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    digits.parse::<u32>().map_err(|_| bad())
}

/// One entry copied out of the cache (by an expunge or a key listing). Its key and value
/// bytes lie next to each other in the batch's buffer, the value right after the key.
#[derive(Debug, Clone, Copy)]
pub struct ItemRec {
    key_off: usize,
    key_len: u32,
    val_len: u32,
    pub last_access: u32,
    pub expire_on: u32,
    /// With `page::FLAG_HASMODSEQ` when the entry has a modseq.
    pub flags: u32,
    modseq: u64,
}

// A batch can hold every entry of the cache: keep the records small.
const _: () = assert!(std::mem::size_of::<ItemRec>() <= 40);

impl ItemRec {
    pub fn modseq(&self) -> Option<u64> {
        (self.flags & page::FLAG_HASMODSEQ != 0).then_some(self.modseq)
    }
}

/// A borrowed view of an [`ItemRec`] with its bytes.
pub struct ItemView<'a> {
    pub key: &'a [u8],
    pub val: &'a [u8],
    pub rec: ItemRec,
}

/// Which of the entries an expunge evicts it copies out for the caller (`Cache::item`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evicted {
    /// None: nobody is told (no write-back).
    Forget,
    /// Every evicted entry but tombstones, with its value.
    All,
    /// Only the dirty ones (tombstones never are): what a write-back hands to `write_cb`.
    Dirty,
}

/// Entries handed to the caller in one batch; reused between calls (the buffers keep their
/// capacity). Its size is what the caller asked for: an expunge of a write-back cache copies
/// only the dirty entries it evicts, and one without write-back copies nothing.
#[derive(Default)]
struct ItemBuf {
    data: Vec<u8>,
    recs: Vec<ItemRec>,
}

impl ItemBuf {
    fn clear(&mut self) {
        self.data.clear();
        self.recs.clear();
    }

    fn push(&mut self, page: &Page<'_>, it: &Item, with_value: bool) {
        let key = page.key(it);
        let val: &[u8] = if with_value { page.value(it) } else { &[] };
        let key_off = self.data.len();
        self.data.extend_from_slice(key);
        self.data.extend_from_slice(val);
        self.recs.push(ItemRec {
            key_off,
            // Both lie inside one page, whose size is a u32.
            key_len: key.len() as u32,
            val_len: val.len() as u32,
            last_access: it.last_access,
            expire_on: it.expire_on,
            flags: it.flags,
            modseq: page.modseq(it).unwrap_or(0),
        });
    }
}

/// A view of page `n` of `file`.
///
/// The page lock for `n` must be held by the caller, and no other `Page` of `n` may be alive:
/// that is what makes handing out `&mut` bytes of shared memory sound (cooperating processes
/// only touch a page while holding its lock).
fn page_at(file: &MappedFile, n: u32) -> Page<'_> {
    let size = file.layout.geometry.page_size as usize;
    // SAFETY: page_ptr(n) .. +page_size lies inside the live mapping owned by `file`, and the
    // caller holds page n's lock (see above), so nobody else writes these bytes meanwhile.
    Page::new(unsafe { std::slice::from_raw_parts_mut(file.page_ptr(n), size) })
}

/// The hash check used to validate items: does `key` belong to page `n` with `slot_hash`?
fn hash_checker(num_pages: u32, n: u32) -> impl Fn(&[u8], u32) -> bool {
    move |key: &[u8], slot_hash: u32| belongs_on(key, slot_hash, n, num_pages)
}

/// Reads or writes the "being mutated" marker of a lock table entry.
///
/// # Safety
/// `entry` is a lock table entry inside a live mapping (64-byte aligned, so the u32 marker is
/// aligned) and the caller holds that page's lock.
unsafe fn marker(entry: *mut u8) -> *mut u32 {
    entry.add(DIRTY_OFF) as *mut u32
}

pub struct Cache {
    params: Params,
    file: Option<MappedFile>,
    locked: Option<u32>,
    /// This lock session has set the page's "being mutated" marker.
    marked: bool,
    items: ItemBuf,
    repaired: u64,
    warnings: Vec<String>,
    /// Tells a forked child that inherited our "locked" state (see `unlock`).
    fork: ForkToken,
    /// Reads and hits not yet added to the file's counters (see `stats.rs`).
    tally: stats::Tally,
    /// What the last `peek` leaves for `peek_confirm` to do once its view is confirmed;
    /// meaningful only while `after_peek_armed` (a flag, so the common hit that leaves
    /// nothing to do costs one byte store and one load).
    after_peek: Cell<AfterPeek>,
    after_peek_armed: Cell<bool>,
    /// The same for the last `peek_many`, one per key that left something to do.
    after_many: Cell<Vec<AfterPeek>>,
    after_many_armed: Cell<bool>,
    /// `peek_many`'s buffer for the names it looks up.
    peek_name: Cell<Vec<u8>>,
}

/// The writes a lock-free hit makes, once its view is confirmed: the LRU touch and, with
/// `enable_stats`, the page's read counters.
#[derive(Debug, Clone, Copy, Default)]
struct AfterPeek {
    page: u32,
    touch: Option<page::Touch>,
    count: Option<bool>,
}

impl Default for Cache {
    fn default() -> Self {
        Cache::new()
    }
}

impl Cache {
    pub fn new() -> Cache {
        Cache {
            params: Params::default(),
            file: None,
            locked: None,
            marked: false,
            items: ItemBuf::default(),
            repaired: 0,
            warnings: Vec::new(),
            fork: ForkToken::new(),
            tally: stats::Tally::default(),
            after_peek: Cell::new(AfterPeek::default()),
            after_peek_armed: Cell::new(false),
            after_many: Cell::new(Vec::new()),
            after_many_armed: Cell::new(false),
            peek_name: Cell::new(Vec::new()),
        }
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Sets a constructor parameter by upstream's name; values are decimal text.
    pub fn set_param(&mut self, name: &[u8], value: &[u8]) -> Result<()> {
        let name_s = String::from_utf8_lossy(name).into_owned();
        let p = &mut self.params;
        match name {
            b"share_file" => {
                if value.is_empty() {
                    return Err(Error::new("No share file specified"));
                }
                p.share_file = Some(path_from_bytes(value));
            }
            b"init_file" => p.init_file = parse_u32(&name_s, value)? != 0,
            b"test_file" => p.test_file = parse_u32(&name_s, value)? != 0,
            b"page_size" => p.page_size = parse_u32(&name_s, value)?,
            b"num_pages" => p.num_pages = parse_u32(&name_s, value)?,
            b"expire_time" => p.expire_time = parse_u32(&name_s, value)?,
            b"permissions" => p.permissions = parse_u32(&name_s, value)?,
            b"start_slots" => p.start_slots = parse_u32(&name_s, value)?,
            b"catch_deadlocks" => p.catch_deadlocks = parse_u32(&name_s, value)? != 0,
            b"enable_stats" => p.enable_stats = parse_u32(&name_s, value)? != 0,
            _ => return Err(Error::new(format!("Bad set_param parameter: {name_s}"))),
        }
        Ok(())
    }

    /// Opens (creating as needed) and maps the share file.
    pub fn init(&mut self) -> Result<()> {
        if self.file.is_some() {
            return Err(Error::new("cache is already initialised"));
        }
        let path = self
            .params
            .share_file
            .clone()
            .ok_or_else(|| Error::new("No share file specified"))?;
        let layout = Layout::new(Geometry {
            page_size: self.params.page_size,
            num_pages: self.params.num_pages,
            start_slots: self.params.start_slots,
        })?;
        self.file = Some(MappedFile::open(
            &path,
            layout,
            self.params.init_file,
            self.params.permissions,
        )?);
        if self.params.test_file {
            self.test_all_pages()?;
        }
        Ok(())
    }

    /// A new handle on the same open share file, with the same parameters and nothing
    /// locked (for a new Perl interpreter: see `MappedFile::duplicate`).
    pub fn duplicate(&self) -> Result<Cache> {
        let mut c = Cache::new();
        c.params = self.params.clone();
        c.file = Some(self.file()?.duplicate()?);
        Ok(c)
    }

    /// The share file shrank under our mapping (truncated, or a sparse file on a full disk:
    /// see `platform::sigbus`), which now shows zero pages: open the file again by name,
    /// which rebuilds it if it is no longer a usable cache. Only between lock sessions.
    fn reopen_if_lost(&mut self) -> Result<()> {
        if self.locked.is_some() || !self.file.as_ref().is_some_and(MappedFile::lost) {
            return Ok(());
        }
        let path = self.file.as_ref().map(|f| f.path.clone());
        let layout = self.file.as_ref().map(|f| f.layout);
        // Close ours first: the file must not look "open elsewhere" to its own rebuild.
        self.file = None;
        let (Some(path), Some(layout)) = (path, layout) else {
            return Ok(());
        };
        self.file = Some(MappedFile::open(
            &path,
            layout,
            false,
            self.params.permissions,
        )?);
        self.warnings.push(format!(
            "share file {} shrank while mapped (truncated or out of disk space); it was opened again",
            path.display()
        ));
        Ok(())
    }

    fn file(&self) -> Result<&MappedFile> {
        self.file
            .as_ref()
            .ok_or_else(|| Error::new("cache is not initialised (fc_init was not called)"))
    }

    fn num_pages(&self) -> u32 {
        match &self.file {
            Some(f) => f.layout.geometry.num_pages,
            None => self.params.num_pages,
        }
    }

    /// `(page, slot_hash)` of a key.
    pub fn hash(&self, key: &[u8]) -> (u32, u32) {
        hash_key(key, self.num_pages())
    }

    pub fn is_locked(&self) -> bool {
        self.locked.is_some()
    }

    /// Takes page `page`'s lock. Only one page per handle.
    pub fn lock(&mut self, page: u32) -> Result<()> {
        self.forget_inherited_lock();
        self.reopen_if_lost()?;
        if let Some(p) = self.locked {
            return Err(Error::new(format!(
                "page {p} is already locked, can't lock multiple pages"
            )));
        }
        let file = self.file()?;
        if page >= file.layout.geometry.num_pages {
            return Err(Error::new(format!(
                "page {page} is NOPAGE or larger than number of pages"
            )));
        }
        let entry = file.lock_entry(page);
        let timeout = self.params.catch_deadlocks.then_some(DEADLOCK_TIMEOUT);
        // SAFETY: entry is this page's lock table entry inside the live mapping.
        let how = unsafe { lock::lock(entry, page, timeout, file.locker())? };
        self.locked = Some(page);
        self.marked = false;
        self.fork.arm();
        // SAFETY: we now hold the page lock; entry is inside the mapping.
        let half_done = unsafe { std::ptr::read_volatile(marker(entry)) } != 0;
        if how == Acquired::OwnerDied || half_done {
            let why = if how == Acquired::OwnerDied {
                "its last user died while holding the lock"
            } else {
                "it was left half-modified"
            };
            self.check_locked_page(why);
            let entry = self.file()?.lock_entry(page);
            // SAFETY: as above; the page is consistent again.
            unsafe {
                std::ptr::write_volatile(marker(entry), 0);
                // A change counter left odd by the dead writer: the change is over.
                let version = lock::version(entry);
                let v = version.load(Ordering::Relaxed);
                if v & 1 == 1 {
                    version.store(v.wrapping_add(1), Ordering::Release);
                }
                if how == Acquired::OwnerDied {
                    lock::make_consistent(entry);
                }
            }
            self.marked = false;
        }
        Ok(())
    }

    /// Runs `f` with page `page` locked, and unlocks however `f` ends, a panic included:
    /// a whole operation in one call from C.
    pub fn with_locked<T>(
        &mut self,
        page: u32,
        f: impl FnOnce(&mut Cache) -> Result<T>,
    ) -> Result<T> {
        struct Unlock<'a>(&'a mut Cache);
        impl Drop for Unlock<'_> {
            fn drop(&mut self) {
                self.0.unlock();
            }
        }
        self.lock(page)?;
        let held = Unlock(self);
        f(&mut *held.0)
    }

    /// Releases the page lock, if one is held. Never fails.
    pub fn unlock(&mut self) {
        let (Some(page), Some(file)) = (self.locked.take(), self.file.as_ref()) else {
            return;
        };
        let marked = std::mem::take(&mut self.marked);
        if !self.fork.same_process() {
            // A child forked while its parent held this lock: the lock, and the change
            // the marker and counter describe, are the parent's. Just forget them.
            return;
        }
        let entry = file.lock_entry(page);
        if marked {
            compiler_fence(Ordering::SeqCst);
            // SAFETY: our page's marker and counter; the lock is still held.
            unsafe {
                std::ptr::write_volatile(marker(entry), 0);
                let version = lock::version(entry);
                let v = version.load(Ordering::Relaxed);
                // The change is complete: publish it (next even value).
                version.store((v | 1).wrapping_add(1), Ordering::Release);
            }
        }
        // SAFETY: entry is the lock we hold.
        unsafe { lock::unlock(entry) };
    }

    /// Sets the locked page's "being mutated" marker before the first change of this lock
    /// session, so that a crash part-way shows up as a half-modified page.
    fn mark(&mut self, page: u32) {
        if self.marked {
            return;
        }
        if let Some(file) = &self.file {
            let entry = file.lock_entry(page);
            // SAFETY: our page's marker and counter inside the mapping; we hold the lock.
            unsafe {
                std::ptr::write_volatile(marker(entry), 1);
                // An odd counter tells lock-free readers a change is under way; the
                // fence keeps the page's stores after it.
                let version = lock::version(entry);
                let v = version.load(Ordering::Relaxed);
                version.store(v | 1, Ordering::Relaxed);
            }
            fence(Ordering::Release);
            compiler_fence(Ordering::SeqCst);
            self.marked = true;
        }
    }

    /// The locked page, for an operation about to take a view of it. A forked child that
    /// inherited the "locked" state gets an error instead: the lock, and the page under it,
    /// are its parent's. The child's state is cleared so that it can lock pages itself.
    fn locked_or_err(&mut self) -> Result<u32> {
        let n = self
            .locked
            .ok_or_else(|| Error::new("no page is locked (call fc_lock first)"))?;
        if !self.fork.same_process() {
            self.forget_inherited_lock();
            return Err(Error::new(format!(
                "page {n} was locked by the parent process when this process forked; \
                 the child must lock it itself"
            )));
        }
        Ok(n)
    }

    /// A child forked while its parent held a lock: drop the copied "locked" state without
    /// touching the page's lock, marker or counter, which all belong to the parent.
    fn forget_inherited_lock(&mut self) {
        if self.locked.is_some() && !self.fork.same_process() {
            self.locked = None;
            self.marked = false;
        }
    }

    /// Repairs page `n` (locked by us) and records why.
    fn repair(&mut self, n: u32, why: &str) {
        self.mark(n);
        let Some(file) = self.file.as_ref() else {
            return;
        };
        let g = file.layout.geometry;
        let kept = page_at(file, n).repair(g.start_slots, &hash_checker(g.num_pages, n));
        stats::record_repair(file);
        self.repaired += 1;
        self.warnings.push(format!(
            "page {n} of {} reinitialised: {why} ({kept} entries kept)",
            file.path.display()
        ));
    }

    /// Fully validates the locked page, repairing it if needed.
    fn check_locked_page(&mut self, context: &str) {
        let (Some(n), Some(file)) = (self.locked, self.file.as_ref()) else {
            return;
        };
        let num_pages = file.layout.geometry.num_pages;
        if let Err(Corrupt(reason)) = page_at(file, n).validate(&hash_checker(num_pages, n)) {
            self.repair(n, &format!("{context}: {reason}"));
        }
    }

    /// Runs `op` on the locked page. If the page turns out corrupt, repairs it and runs `op`
    /// once more.
    fn with_page<T>(
        &mut self,
        mutates: bool,
        op: impl Fn(&mut Page<'_>) -> PageResult<T>,
    ) -> Result<T> {
        let n = self.locked_or_err()?;
        if mutates {
            self.mark(n);
        }
        match op(&mut page_at(self.file()?, n)) {
            Ok(v) => Ok(v),
            Err(Corrupt(reason)) => {
                self.repair(n, &reason);
                op(&mut page_at(self.file()?, n)).map_err(|Corrupt(r)| {
                    Error::new(format!("page {n} is corrupt even after repair: {r}"))
                })
            }
        }
    }

    /// Looks a key up in the locked page. On a hit the value is `value_ptr(&out)` for
    /// `out.val_len` bytes, valid until the page is unlocked or changed.
    pub fn read(&mut self, slot_hash: u32, key: &[u8]) -> Result<ReadOut> {
        let now = time::now();
        let stats = self.params.enable_stats;
        let r = self.with_page(false, |p| p.read(slot_hash, key, now, stats));
        if let (Ok(out), Some(f)) = (&r, &self.file) {
            self.tally.count(f, out.found);
        }
        r
    }

    /// A lookup without taking the page lock (a sequence-lock read): `Some((peek, ticket))`
    /// when the page was not being changed; the answer (and the value bytes at
    /// `peek_ptr`) may only be used if `peek_confirm(page, ticket)` is true after copying
    /// them; the confirmation also updates the entry's access time (and, with
    /// `enable_stats`, the page's counters) without the lock. `None`: take the lock (a
    /// change under way, or this handle holds a lock).
    pub fn peek(&self, page: u32, slot_hash: u32, key: &[u8]) -> Option<(ReadOut, u32)> {
        let (base, size, ticket) = self.peek_ticket(page)?;
        // SAFETY: `peek_ticket` checked that page `page` lies in the live mapping and that
        // its base is 8-byte aligned.
        let (found, touch) = unsafe { page::peek(base, size, slot_hash, key, time::now())? };
        self.tally.peeked(1, u32::from(found.found));
        if touch.is_some() || self.params.enable_stats {
            self.after_peek.set(AfterPeek {
                page,
                touch,
                count: self.params.enable_stats.then_some(found.found),
            });
            self.after_peek_armed.set(true);
        }
        Some((found, ticket))
    }

    /// [`Cache::peek`] for a batch of multi_get's keys, every one on page `page` under the
    /// name multi_set gives it, `"{prefix}-{key}"`, all under one ticket: `Some(ticket)`
    /// once `found(i, answer)` was called for each key in order, or `None` (take the lock).
    /// As with `peek`, the answers count only if `peek_confirm(page, ticket)` holds after
    /// their values are copied, and that confirmation applies every key's access-time update.
    pub fn peek_many<'k>(
        &self,
        page: u32,
        prefix: &[u8],
        keys: impl Iterator<Item = &'k [u8]>,
        mut found: impl FnMut(usize, &ReadOut),
    ) -> Option<u32> {
        let (base, size, ticket) = self.peek_ticket(page)?;
        let now = time::now();
        let stats = self.params.enable_stats;
        let mut name = self.peek_name.take();
        name.clear();
        name.extend_from_slice(prefix);
        name.push(b'-');
        let stem = name.len();
        let mut after = self.after_many.take();
        after.clear();
        let (mut reads, mut hits) = (0u32, 0u32);
        let mut all = true;
        for (i, key) in keys.enumerate() {
            name.truncate(stem);
            name.extend_from_slice(key);
            let slot_hash = slot_hash(&name);
            // SAFETY: as in `peek`.
            let Some((out, touch)) = (unsafe { page::peek(base, size, slot_hash, &name, now) })
            else {
                all = false;
                break;
            };
            reads += 1;
            hits += u32::from(out.found);
            if touch.is_some() || stats {
                after.push(AfterPeek {
                    page,
                    touch,
                    count: stats.then_some(out.found),
                });
            }
            found(i, &out);
        }
        self.peek_name.set(name);
        self.after_many_armed.set(all && !after.is_empty());
        self.after_many.set(after);
        if !all {
            return None;
        }
        self.tally.peeked(reads, hits);
        Some(ticket)
    }

    /// The start of a lock-free read of page `page`: its base and size, and the ticket (the
    /// change counter, even); `None` when the page is being changed (for longer than a short
    /// wait), out of range, not aligned, or this handle holds a lock. Disarms what an
    /// earlier unconfirmed read left for `peek_confirm`.
    fn peek_ticket(&self, page: u32) -> Option<(*mut u8, usize, u32)> {
        self.after_peek_armed.set(false);
        self.after_many_armed.set(false);
        let file = self.file.as_ref()?;
        let g = file.layout.geometry;
        if self.locked.is_some() || page >= g.num_pages || file.lost() {
            return None;
        }
        let base = file.page_ptr(page);
        if (base as usize) % 8 != 0 {
            return None;
        }
        // SAFETY: the entry lies in the live mapping owned by `file`.
        let version = unsafe { lock::version(file.lock_entry(page)) };
        let mut ticket = version.load(Ordering::Acquire);
        // A change under way takes well under a microsecond: wait a little for it rather
        // than queueing on the lock (a writer that died leaves the counter odd; the locked
        // path then repairs the page).
        let mut spins = 0;
        while ticket & 1 == 1 {
            if spins == PEEK_SPINS {
                return None;
            }
            spins += 1;
            for _ in 0..16 {
                std::hint::spin_loop();
            }
            ticket = version.load(Ordering::Acquire);
        }
        Some((base, g.page_size as usize, ticket))
    }

    /// Pointer to a peeked value's bytes (to be copied, then confirmed).
    pub fn peek_ptr(&self, page: u32, p: &ReadOut) -> *const u8 {
        match &self.file {
            Some(f) if p.found && page < f.layout.geometry.num_pages => {
                f.page_ptr(page).wrapping_add(p.val_off)
            }
            _ => std::ptr::NonNull::dangling().as_ptr(),
        }
    }

    /// Was page `page` left unchanged since `peek` handed out `ticket`?
    pub fn peek_confirm(&self, page: u32, ticket: u32) -> bool {
        let Some(file) = self.file.as_ref() else {
            return false;
        };
        if page >= file.layout.geometry.num_pages {
            return false;
        }
        fence(Ordering::Acquire);
        if file.lost() {
            return false; // what was read may be zero pages standing in for the file
        }
        // SAFETY: the entry lies in the live mapping owned by `file`.
        let same =
            unsafe { lock::version(file.lock_entry(page)).load(Ordering::Relaxed) == ticket };
        if same {
            self.tally.confirmed(file);
            if self.after_peek_armed.replace(false) {
                self.apply_after_peek(file, page, &self.after_peek.get());
            }
            if self.after_many_armed.replace(false) {
                let after = self.after_many.take();
                for a in &after {
                    self.apply_after_peek(file, page, a);
                }
                self.after_many.set(after);
            }
        }
        same
    }

    /// The writes of a confirmed lock-free hit on page `page` (see [`AfterPeek`]).
    fn apply_after_peek(&self, file: &MappedFile, page: u32, after: &AfterPeek) {
        if after.page != page {
            return;
        }
        let base = file.page_ptr(page);
        let size = file.layout.geometry.page_size as usize;
        // SAFETY: page `page` lies in the live mapping; `peek_ticket` checked that its base
        // is 8-byte aligned.
        unsafe {
            if let Some(t) = &after.touch {
                page::touch(base, size, t);
            }
            if let Some(hit) = after.count {
                page::count_read(base, size, hit);
            }
        }
    }

    /// Pointer to a read value's bytes (valid as [`Cache::read`] says).
    pub fn value_ptr(&self, out: &ReadOut) -> *const u8 {
        match (self.locked, &self.file) {
            (Some(n), Some(f)) if out.found => f.page_ptr(n).wrapping_add(out.val_off),
            _ => std::ptr::NonNull::dangling().as_ptr(),
        }
    }

    /// Stores an entry in the locked page (never expunges; see `expunge`).
    pub fn write(&mut self, new: &NewItem<'_>) -> Result<Stored> {
        let now = time::now();
        let default_expire = self.params.expire_time;
        self.with_page(true, |p| p.write(new, now, default_expire))
    }

    /// What `set` does in the locked page: makes room by an LRU expunge if the entry would
    /// not fit (its evicted entries are not kept: a write-back cache, which needs them, calls
    /// `expunge` then `write`), then stores it. One pass over the page when it fits.
    pub fn store(&mut self, new: &NewItem<'_>) -> Result<Stored> {
        let now = time::now();
        let default_expire = self.params.expire_time;
        if let Some(stored) = self.with_page(true, |p| p.write_if_room(new, now, default_expire))? {
            return Ok(stored);
        }
        self.expunge(
            page::EXPUNGE_LRU,
            Evicted::Forget,
            (new.key.len() + new.val.len()) as i64,
        )?;
        self.write(new)
    }

    /// Deletes a key from the locked page, returning the deleted entry's flags.
    pub fn delete(&mut self, slot_hash: u32, key: &[u8]) -> Result<Option<u32>> {
        self.with_page(true, |p| p.delete(slot_hash, key))
    }

    /// Expunges the locked page (see [`Page::plan_expunge`]). The evicted entries that
    /// `copy` selects are copied out first; returns how many, readable with `item`.
    pub fn expunge(&mut self, mode: i32, copy: Evicted, len: i64) -> Result<usize> {
        self.items.clear();
        let now = time::now();
        let plan: Option<ExpungePlan> =
            self.with_page(false, |p| p.plan_expunge(mode, len, now))?;
        let Some(plan) = plan else { return Ok(0) };
        let n = self.locked_or_err()?;
        self.file()?.check_fd()?;
        self.mark(n);
        let Some(file) = self.file.as_ref() else {
            return Ok(0);
        };
        let mut page = page_at(file, n);
        let wanted = |it: &&Item| match copy {
            Evicted::Forget => false,
            Evicted::All => !it.is_tombstone(),
            Evicted::Dirty => !it.is_tombstone() && it.flags & page::FLAG_ISDIRTY != 0,
        };
        if copy != Evicted::Forget {
            // Sized once: no doubling of the buffers while copying.
            let (count, bytes) = plan.evict.iter().filter(wanted).fold((0, 0), |(c, b), it| {
                (c + 1, b + page.key(it).len() + page.value(it).len())
            });
            self.items.recs.reserve_exact(count);
            self.items.data.reserve_exact(bytes);
            for it in plan.evict.iter().filter(wanted) {
                self.items.push(&page, it, true);
            }
        }
        page.apply_expunge(&plan);
        stats::record_expunge(file, &plan, mode, now);
        Ok(self.items.recs.len())
    }

    /// Collects every live entry (not expired, not a tombstone) of every page, locking one
    /// page at a time. Returns how many, readable with `item`.
    pub fn collect_keys(&mut self, with_values: bool) -> Result<usize> {
        self.forget_inherited_lock();
        if let Some(p) = self.locked {
            return Err(Error::new(format!(
                "page {p} is already locked, can't lock multiple pages"
            )));
        }
        self.items.clear();
        let now = time::now();
        for n in 0..self.file()?.layout.geometry.num_pages {
            self.lock(n)?;
            // Newest first within a page, whatever the hash and the clock. A size-aware CHI
            // cache with the `arbitrary` discard policy removes keys in get_keys order: this
            // way it drops the entries stored last, as upstream happens to for runs of keys
            // named alike. In slot order (or oldest first) it can remove every key that its
            // size-aware l1 cache still holds, and CHI's own test of that fails now and then
            // (issue 16).
            let items = match self.with_page(false, |p| p.items_newest_first()) {
                Ok(items) => items,
                Err(e) => {
                    self.unlock();
                    return Err(e);
                }
            };
            if let Some(file) = self.file.as_ref() {
                let page = page_at(file, n);
                for it in items
                    .iter()
                    .filter(|it| !it.is_tombstone() && !time::is_expired(it.expire_on, now))
                {
                    self.items.push(&page, it, with_values);
                }
            }
            self.unlock();
        }
        Ok(self.items.recs.len())
    }

    /// Entry `i` of the last `expunge` / `collect_keys` batch.
    pub fn item(&self, i: usize) -> Option<ItemView<'_>> {
        let rec = *self.items.recs.get(i)?;
        let val_off = rec.key_off + rec.key_len as usize;
        Some(ItemView {
            key: &self.items.data[rec.key_off..val_off],
            val: &self.items.data[val_off..val_off + rec.val_len as usize],
            rec,
        })
    }

    /// `(nreads, nreadhits)` of the locked page.
    pub fn page_details(&mut self) -> Result<(u32, u32)> {
        self.with_page(false, |p| p.check_header().map(|()| p.stats()))
    }

    pub fn reset_page_details(&mut self) -> Result<()> {
        self.with_page(true, |p| p.check_header().map(|()| p.reset_stats()))
    }

    /// test_file: validates every page now, repairing the bad ones.
    fn test_all_pages(&mut self) -> Result<()> {
        let before = self.repaired;
        let pages = self.file()?.layout.geometry.num_pages;
        for n in 0..pages {
            self.lock(n)?;
            self.check_locked_page("test_file check failed");
            self.unlock();
        }
        let bad = self.repaired - before;
        if bad > 0 {
            let path = self.file()?.path.display().to_string();
            self.warnings.push(format!(
                "test_file: {bad} of {pages} pages of {path} were repaired"
            ));
        }
        Ok(())
    }

    /// Pages this handle has repaired so far.
    pub fn repaired_pages(&self) -> u64 {
        self.repaired
    }

    /// Are there warnings not yet reported?
    pub fn has_warnings(&self) -> bool {
        !self.warnings.is_empty()
    }

    /// The oldest warning not yet reported, if any.
    pub fn take_warning(&mut self) -> Option<String> {
        if self.warnings.is_empty() {
            None
        } else {
            Some(self.warnings.remove(0))
        }
    }

    // ---- Accessors for `stats.rs` and `inspect.rs` (additive) ----

    /// The open file, if any.
    pub(crate) fn mapped(&self) -> Option<&MappedFile> {
        self.file.as_ref()
    }

    pub(crate) fn mapped_or_err(&self) -> Result<&MappedFile> {
        self.file()
    }

    /// The page this handle holds locked, if any (in this process).
    pub fn locked_page(&self) -> Option<u32> {
        if self.fork.same_process() {
            self.locked
        } else {
            None
        }
    }

    pub(crate) fn tally(&self) -> &stats::Tally {
        &self.tally
    }

    /// Unlocks and unmaps. The handle can no longer be used for pages.
    pub fn close(&mut self) {
        if let Some(f) = &self.file {
            self.tally.flush(f);
        }
        self.unlock();
        self.file = None;
        self.items = ItemBuf::default();
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        if let Some(f) = &self.file {
            self.tally.flush(f);
        }
        self.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::FLAG_ISDIRTY;
    use std::os::unix::ffi::OsStrExt;

    /// Held by the tests that set the process-wide clock override, which the test harness's
    /// threads share.
    static CLOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fmtest-cache-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn open(dir: &std::path::Path, pages: u32, page_size: u32) -> Cache {
        let mut c = Cache::new();
        c.set_param(b"share_file", dir.join("c").as_os_str().as_bytes())
            .unwrap();
        c.set_param(b"num_pages", pages.to_string().as_bytes())
            .unwrap();
        c.set_param(b"page_size", page_size.to_string().as_bytes())
            .unwrap();
        c.set_param(b"enable_stats", b"1").unwrap();
        c.init().unwrap();
        c
    }

    fn new_item<'a>(s: u32, k: &'a str, v: &'a [u8]) -> NewItem<'a> {
        NewItem {
            slot_hash: s,
            key: k.as_bytes(),
            val: v,
            expire_on: u32::MAX,
            flags: FLAG_ISDIRTY,
            modseq: None,
        }
    }

    fn set(c: &mut Cache, k: &str, v: &str) -> Stored {
        let (p, s) = c.hash(k.as_bytes());
        c.lock(p).unwrap();
        c.expunge(2, Evicted::Forget, (k.len() + v.len()) as i64)
            .unwrap();
        let r = c.write(&new_item(s, k, v.as_bytes())).unwrap();
        c.unlock();
        r
    }

    fn get(c: &mut Cache, k: &str) -> Option<Vec<u8>> {
        let (p, s) = c.hash(k.as_bytes());
        c.lock(p).unwrap();
        let r = c.read(s, k.as_bytes()).unwrap();
        // SAFETY: read said found; the page is still locked.
        let v = r
            .found
            .then(|| unsafe { std::slice::from_raw_parts(c.value_ptr(&r), r.val_len) }.to_vec());
        c.unlock();
        v
    }

    /// `with_locked` (fc_set and fc_remove) unlocks on every way out: success, an error and
    /// a panic, which the C ABI catches.
    #[test]
    fn with_locked_always_unlocks() {
        let d = tmpdir("with-locked");
        let mut c = open(&d, 3, 8192);
        let (p, s) = c.hash(b"k");
        let stored = c
            .with_locked(p, |c| c.store(&new_item(s, "k", b"v")))
            .unwrap();
        assert_eq!(stored, Stored::Yes);
        assert!(!c.is_locked(), "unlocked after success");
        let err = c
            .with_locked(p, |_| -> Result<()> { Err(Error::new("refused")) })
            .unwrap_err();
        assert_eq!(err.message(), "refused");
        assert!(!c.is_locked(), "unlocked after an error");
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = c.with_locked(p, |_| -> Result<()> { panic!("boom") });
        }));
        assert!(panicked.is_err());
        assert!(!c.is_locked(), "unlocked after a panic");
        assert_eq!(get(&mut c, "k").as_deref(), Some(&b"v"[..]));
        let _ = std::fs::remove_dir_all(&d);
    }

    /// `store` (set's one-call path) leaves every page exactly as `expunge` + `write` does,
    /// through many expunges of small pages.
    #[test]
    fn store_matches_expunge_then_write() {
        // One fixed second: LRU ties, stored times and access times all agree.
        let _clock = CLOCK.lock().unwrap_or_else(|e| e.into_inner());
        time::set_override(1_700_000_000);
        let (d1, d2) = (tmpdir("store-a"), tmpdir("store-b"));
        let (mut a, mut b) = (open(&d1, 3, 4096), open(&d2, 3, 4096));
        for i in 0..3000u32 {
            let k = format!("key{}", i % 700);
            let v = vec![b'v'; (i % 37 * 7) as usize];
            let (p, s) = a.hash(k.as_bytes());
            let item = new_item(s, &k, &v);
            a.lock(p).unwrap();
            let ra = a.store(&item).unwrap();
            a.unlock();
            b.lock(p).unwrap();
            b.expunge(2, Evicted::Forget, (k.len() + v.len()) as i64)
                .unwrap();
            let rb = b.write(&item).unwrap();
            b.unlock();
            assert_eq!(ra, rb, "set {i}");
        }
        for p in 0..3 {
            let size = 4096;
            let fa = a.file.as_ref().unwrap();
            let fb = b.file.as_ref().unwrap();
            // SAFETY: both pages lie in live mappings nobody else writes.
            let (pa, pb) = unsafe {
                (
                    std::slice::from_raw_parts(fa.page_ptr(p), size),
                    std::slice::from_raw_parts(fb.page_ptr(p), size),
                )
            };
            assert!(pa == pb, "page {p} differs");
        }
        time::set_override(0);
        let _ = std::fs::remove_dir_all(d1);
        let _ = std::fs::remove_dir_all(d2);
    }

    #[test]
    fn params_are_checked() {
        let mut c = Cache::new();
        let e = c.set_param(b"page_size", b"abc").unwrap_err();
        assert!(e.message().contains("page_size"), "{e}");
        assert!(c.set_param(b"num_pages", b"-3").is_err());
        assert_eq!(
            c.set_param(b"frobnicate", b"1").unwrap_err().message(),
            "Bad set_param parameter: frobnicate"
        );
        c.set_param(b"init_file", b"").unwrap();
        assert!(c.init().unwrap_err().message().contains("No share file"));
    }

    #[test]
    fn set_get_across_handles_and_lock_rules() {
        let d = tmpdir("basic");
        let mut a = open(&d, 7, 8192);
        let mut b = open(&d, 7, 8192);
        assert_eq!(set(&mut a, "hello", "world"), Stored::Yes);
        assert_eq!(get(&mut b, "hello").unwrap(), b"world");
        a.lock(1).unwrap();
        let e = a.lock(2).unwrap_err();
        assert_eq!(
            e.message(),
            "page 1 is already locked, can't lock multiple pages"
        );
        assert!(a.collect_keys(false).is_err());
        a.unlock();
        let e = a.lock(7).unwrap_err();
        assert!(e.message().contains("larger than number of pages"), "{e}");
        assert_eq!(a.collect_keys(true).unwrap(), 1);
        let it = a.item(0).unwrap();
        assert_eq!((it.key, it.val), (&b"hello"[..], &b"world"[..]));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn lru_keeps_recent_entries_and_reports_dirty_evictions() {
        let d = tmpdir("lru");
        let mut c = open(&d, 1, 8192);
        let mut evicted = 0;
        for i in 0..500 {
            let k = format!("key{i}");
            let (p, s) = c.hash(k.as_bytes());
            c.lock(p).unwrap();
            evicted += c.expunge(2, Evicted::All, 60).unwrap();
            assert_eq!(c.write(&new_item(s, &k, &[b'v'; 50])).unwrap(), Stored::Yes);
            c.unlock();
        }
        assert!(evicted > 300, "evicted {evicted}");
        assert!(get(&mut c, "key499").is_some());
        assert!(get(&mut c, "key0").is_none());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn corrupt_page_is_repaired_on_use() {
        let d = tmpdir("repair");
        let mut c = open(&d, 1, 8192);
        for i in 0..20 {
            set(&mut c, &format!("k{i}"), "value");
        }
        let file = c.file.as_ref().unwrap();
        // SAFETY: test-only scribble over the page header's slot count, inside the mapping.
        unsafe { std::ptr::write_bytes(file.page_ptr(0).add(4), 0xFF, 4) };
        assert!(get(&mut c, "k1").is_none());
        assert_eq!(c.repaired_pages(), 1);
        let w = c.take_warning().unwrap();
        assert!(w.starts_with("page 0 of "), "{w}");
        assert!(w.contains("reinitialised"), "{w}");
        assert_eq!(set(&mut c, "k1", "again"), Stored::Yes);
        assert_eq!(get(&mut c, "k1").unwrap(), b"again");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_lock_holder_killed_mid_write_is_recovered() {
        let d = tmpdir("ownerdead");
        let mut c = open(&d, 1, 8192);
        set(&mut c, "keep", "me");
        // A thread that takes the lock, marks the page as being changed, and exits.
        let path = d.join("c");
        std::thread::spawn(move || {
            let mut t = Cache::new();
            t.set_param(b"share_file", path.as_os_str().as_bytes())
                .unwrap();
            t.set_param(b"num_pages", b"1").unwrap();
            t.set_param(b"page_size", b"8192").unwrap();
            t.init().unwrap();
            t.lock(0).unwrap();
            t.mark(0);
            // Leak the handle so that nothing unlocks: like a SIGKILL.
            std::mem::forget(t);
        })
        .join()
        .unwrap();
        assert_eq!(get(&mut c, "keep").unwrap(), b"me");
        assert_eq!(set(&mut c, "after", "x"), Stored::Yes);
        assert_eq!(c.repaired_pages(), 0, "a valid page needs no repair");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn lock_free_reads_never_return_a_torn_value() {
        let d = tmpdir("seqlock");
        drop(open(&d, 1, 8192));
        let path = d.join("c");
        let open_at = |p: &std::path::Path| {
            let mut c = Cache::new();
            c.set_param(b"share_file", p.as_os_str().as_bytes())
                .unwrap();
            c.set_param(b"num_pages", b"1").unwrap();
            c.set_param(b"page_size", b"8192").unwrap();
            c.init().unwrap();
            c
        };
        let value = |i: u32| {
            let body: Vec<u8> = (0..(i % 200) + 8)
                .map(|j| (i.wrapping_mul(31) + j) as u8)
                .collect();
            let sum: u32 = body.iter().map(|&b| u32::from(b)).sum();
            let mut v = sum.to_ne_bytes().to_vec();
            v.extend_from_slice(&body);
            v
        };
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (p, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut w = open_at(&p);
                for i in 0..60_000u32 {
                    let k = format!("k{}", i % 7);
                    let (pg, s) = w.hash(k.as_bytes());
                    w.lock(pg).unwrap();
                    w.expunge(2, Evicted::Forget, 300).unwrap();
                    w.write(&NewItem {
                        slot_hash: s,
                        key: k.as_bytes(),
                        val: &value(i),
                        expire_on: 0,
                        flags: 0,
                        modseq: None,
                    })
                    .unwrap();
                    w.unlock();
                }
                stop.store(true, Ordering::Relaxed);
            })
        };
        let r = open_at(&path);
        let (mut confirmed, mut refused) = (0u64, 0u64);
        let clock = CLOCK.lock().unwrap_or_else(|e| e.into_inner());
        time::set_override(0);
        drop(clock);
        while !stop.load(Ordering::Relaxed) {
            for k in 0..7 {
                let k = format!("k{k}");
                let (pg, s) = r.hash(k.as_bytes());
                let Some((p, ticket)) = r.peek(pg, s, k.as_bytes()) else {
                    refused += 1;
                    continue;
                };
                // SAFETY: the pointer lies in the mapping (peek bounds-checked it); the bytes
                // may be torn, which is what the confirmation below rules out.
                let copy: Vec<u8> = (0..p.val_len)
                    .map(|j| unsafe { std::ptr::read_volatile(r.peek_ptr(pg, &p).add(j)) })
                    .collect();
                if !r.peek_confirm(pg, ticket) {
                    refused += 1;
                    continue;
                }
                confirmed += 1;
                if p.found {
                    assert!(copy.len() >= 4, "short value");
                    let sum = u32::from_ne_bytes(copy[..4].try_into().unwrap());
                    let got: u32 = copy[4..].iter().map(|&b| u32::from(b)).sum();
                    assert_eq!(sum, got, "torn value passed confirmation");
                }
            }
        }
        writer.join().unwrap();
        // Quiet now: a lock-free read right after a locked one (which set the LRU time)
        // must be confirmed; retried in case a second boundary fell in between.
        let mut r = r;
        let quiet_ok = (0..3).any(|_| {
            let (pg, s) = r.hash(b"k1");
            r.lock(pg).unwrap();
            let hit = r.read(s, b"k1").unwrap().found;
            r.unlock();
            hit && r
                .peek(pg, s, b"k1")
                .is_some_and(|(p, t)| p.found && r.peek_confirm(pg, t))
        });
        assert!(quiet_ok, "a quiet lock-free read was not confirmed");
        eprintln!("lock-free reads: {confirmed} confirmed, {refused} refused");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
