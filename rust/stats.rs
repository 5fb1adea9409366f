//! Cumulative counters kept in the share file, and the `stats` snapshot.
//!
//! # Where the counters live
//! In the file header (since format version 2), which is 4 KiB of which the fields and checksum
//! use the first 80 bytes. Two cache lines at [`COUNTERS_OFF`]:
//!
//! | offset | u64 counter  | updated                                              |
//! |--------|--------------|------------------------------------------------------|
//! | +0     | reads        | in batches, by each handle (see [`Tally`])           |
//! | +8     | hits         | with `reads`                                         |
//! | +64    | evictions    | once per expunge that evicted live entries (LRU)     |
//! | +72    | expirations  | once per expunge that removed expired entries        |
//! | +80    | repairs      | once per page repaired                               |
//!
//! They are not covered by the header checksum (they change), and every update is one
//! relaxed `fetch_add`: a counter never needs a lock, and a garbage value in a damaged
//! file is only a wrong number, never a wrong offset. They count from the file's creation
//! (an `init_file` or a geometry change starts again from zero).
//!
//! # Why reads are batched
//! A read that takes no lock (the sequence-lock path) writes nothing to shared memory;
//! an atomic add per read on a line every process writes would make every read bounce
//! that line between cores. So a handle counts its reads in process memory and adds them
//! to the file every [`FLUSH_EVERY`] reads, when `stats` is called, and when it is
//! closed. The file's `reads` and `hits` therefore lag by fewer than `FLUSH_EVERY` reads
//! per open handle (the counts of a process killed with SIGKILL are lost). A forked child
//! drops the unflushed counts it inherited (they are its parent's).
//!
//! Evictions and expirations happen inside an expunge, which already rewrites a page: one
//! more atomic add there costs nothing measurable.

use crate::cache::Cache;
use crate::error::Result;
use crate::file::{MappedFile, HEADER_FIELDS, HEADER_SIZE};
use crate::fork::ForkToken;
use crate::lock;
use crate::page::{ExpungePlan, EXPUNGE_LRU};
use crate::time::is_expired;
use std::cell::Cell;
use std::sync::atomic::{fence, AtomicU64, Ordering};

/// Offset of the counters in the file header (64-byte aligned).
pub const COUNTERS_OFF: usize = 1024;
const READS: usize = 0;
const HITS: usize = 8;
const EVICTIONS: usize = 64;
const EXPIRATIONS: usize = 72;
const REPAIRS: usize = 80;
/// Bytes of the header the counters take.
pub const COUNTERS_LEN: usize = 128;

const _: () = assert!(COUNTERS_OFF >= HEADER_FIELDS + 8);
const _: () = assert!(COUNTERS_OFF + COUNTERS_LEN <= HEADER_SIZE as usize);
const _: () = assert!(COUNTERS_OFF % 64 == 0);

/// A handle adds its reads to the file after this many.
pub const FLUSH_EVERY: u32 = 64;

/// The cumulative counters, as read from a file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub reads: u64,
    pub hits: u64,
    pub evictions: u64,
    pub expirations: u64,
    pub repairs: u64,
}

/// The counter at `off` of the counter block starting at `base`.
///
/// # Safety
/// `base` points at the file header of a live mapping (page aligned), which outlives the
/// returned reference.
unsafe fn counter<'a>(base: *const u8, off: usize) -> &'a AtomicU64 {
    &*(base.add(COUNTERS_OFF + off) as *const AtomicU64)
}

/// Reads the counters of the mapping whose header starts at `base`.
///
/// # Safety
/// As for `counter`; the mapping may be read-only.
pub unsafe fn read_counters(base: *const u8) -> Counters {
    let get = |off| counter(base, off).load(Ordering::Relaxed);
    Counters {
        reads: get(READS),
        hits: get(HITS),
        evictions: get(EVICTIONS),
        expirations: get(EXPIRATIONS),
        repairs: get(REPAIRS),
    }
}

fn add(file: &MappedFile, off: usize, n: u64) {
    if n > 0 {
        // SAFETY: the header is the first HEADER_SIZE bytes of the live, writable mapping
        // owned by `file`; the offset is inside it (asserted above) and 8-byte aligned.
        unsafe { counter(file.base_ptr(), off).fetch_add(n, Ordering::Relaxed) };
    }
}

/// Counts one repaired page in the file.
pub fn record_repair(file: &MappedFile) {
    add(file, REPAIRS, 1);
}

/// [`record_repair`] for a file mapped by an inspector (`base`: its writable header).
///
/// # Safety
/// `base` points at the header of a live, writable mapping of a share file.
pub unsafe fn record_repair_at(base: *mut u8) {
    counter(base, REPAIRS).fetch_add(1, Ordering::Relaxed);
}

/// Counts what an expunge removed: expired entries (any mode) and, in LRU mode, the live
/// entries evicted to make room. Emptying the cache (`clear`) removes entries on purpose
/// and counts as neither.
pub fn record_expunge(file: &MappedFile, plan: &ExpungePlan, mode: i32, now: u32) {
    let expired = plan
        .evict
        .iter()
        .filter(|it| is_expired(it.expire_on, now))
        .count() as u64;
    add(file, EXPIRATIONS, expired);
    if mode == EXPUNGE_LRU {
        add(file, EVICTIONS, plan.evict.len() as u64 - expired);
    }
}

/// A handle's reads and hits not yet added to the file (see the module notes).
#[derive(Default)]
pub struct Tally {
    reads: Cell<u32>,
    hits: Cell<u32>,
    /// Armed by the process that counted them (a forked child sees it unarmed).
    owner: ForkToken,
    /// Lock-free reads waiting for their confirmation: (reads, hits).
    peeked: Cell<(u32, u32)>,
}

impl Tally {
    /// Counts one read (and a hit when `found`), adding the batch to the file when full.
    pub fn count(&self, file: &MappedFile, found: bool) {
        self.add(file, 1, u32::from(found));
    }

    /// Counts `reads` reads of which `hits` hit.
    fn add(&self, file: &MappedFile, reads: u32, hits: u32) {
        if self.reads.get() == 0 || !self.owner.same_process() {
            // A new batch, or counts inherited over fork (the parent's): start afresh.
            self.reads.set(0);
            self.hits.set(0);
            self.owner.arm();
        }
        self.reads.set(self.reads.get().saturating_add(reads));
        self.hits.set(self.hits.get().saturating_add(hits));
        if self.reads.get() >= FLUSH_EVERY {
            self.flush(file);
        }
    }

    /// Lock-free reads (`reads`, of which `hits` hit) whose answers are still to be
    /// confirmed; they replace any unconfirmed ones.
    pub fn peeked(&self, reads: u32, hits: u32) {
        self.peeked.set((reads, hits));
    }

    /// The last lock-free reads were confirmed: count them (once).
    pub fn confirmed(&self, file: &MappedFile) {
        let (reads, hits) = self.peeked.replace((0, 0));
        if reads > 0 {
            self.add(file, reads, hits);
        }
    }

    /// Adds the pending counts to the file.
    pub fn flush(&self, file: &MappedFile) {
        let (r, h) = (self.reads.replace(0), self.hits.replace(0));
        if r == 0 || !self.owner.same_process() {
            return; // nothing, or counted by the parent before a fork: not ours to add
        }
        add(file, READS, u64::from(r));
        add(file, HITS, u64::from(h));
    }
}

/// What `$cache->stats` returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Occupied slots: live entries, plus expired entries and tombstones not yet expunged.
    pub entries: u64,
    /// num_pages * page_size.
    pub capacity_bytes: u64,
    /// capacity_bytes minus every page's free bytes (page headers and slot tables, and
    /// overwritten or deleted entries until an expunge reclaims them, count as used).
    pub used_bytes: u64,
    pub num_pages: u32,
    pub page_size: u32,
    pub counters: Counters,
}

/// Page header words `stats` needs: (magic, num_slots, free_slots, free_bytes).
///
/// # Safety
/// `base` points at a page of at least 32 bytes in a live mapping (a page_size that is not
/// a multiple of 4 leaves pages unaligned, hence the byte reads).
unsafe fn header_words(base: *const u8) -> [u32; 4] {
    let rd = |off: usize| {
        let mut w = [0u8; 4];
        for (i, b) in w.iter_mut().enumerate() {
            *b = std::ptr::read_volatile(base.add(off + i));
        }
        u32::from_ne_bytes(w)
    };
    [rd(0), rd(4), rd(8), rd(20)]
}

/// Reads page `n`'s header words consistently: with the change counter as a sequence lock
/// (no lock taken, nothing written), falling back to the page lock if the page never
/// holds still, or reading directly when this handle holds that page's lock itself.
fn page_words(cache: &mut Cache, n: u32) -> Result<Option<[u32; 4]>> {
    let Some(file) = cache.mapped() else {
        return Ok(None);
    };
    let base = file.page_ptr(n);
    let entry = file.lock_entry(n);
    if cache.locked_page() == Some(n) {
        // SAFETY: page n lies in the mapping, and we hold its lock.
        return Ok(Some(unsafe { header_words(base) }));
    }
    for _ in 0..1000 {
        // SAFETY: the entry and the page lie in the live mapping owned by `file`; pages
        // are page-aligned in the file, so the words are aligned.
        unsafe {
            let version = lock::version(entry);
            let before = version.load(Ordering::Acquire);
            if before & 1 == 0 {
                let w = header_words(base);
                fence(Ordering::Acquire);
                if version.load(Ordering::Relaxed) == before {
                    return Ok(Some(w));
                }
            }
        }
        std::thread::yield_now();
    }
    if cache.locked_page().is_some() {
        // We hold another page's lock (stats inside a callback): cannot lock this one.
        return Ok(None);
    }
    cache.lock(n)?;
    let w = cache.mapped().map(|f| {
        // SAFETY: as above, and we now hold page n's lock.
        unsafe { header_words(f.page_ptr(n)) }
    });
    cache.unlock();
    Ok(w)
}

/// The `stats` snapshot of an open cache. Cheap: a few words of each page header, read
/// without locking, and the file's counters (this handle's pending reads added first).
pub fn snapshot(cache: &mut Cache) -> Result<Snapshot> {
    let file = cache.mapped_or_err()?;
    cache.tally().flush(file);
    let g = file.layout.geometry;
    let mut s = Snapshot {
        capacity_bytes: u64::from(g.num_pages) * u64::from(g.page_size),
        num_pages: g.num_pages,
        page_size: g.page_size,
        ..Snapshot::default()
    };
    // SAFETY: the header of the live mapping owned by `file`.
    s.counters = unsafe { read_counters(file.base_ptr()) };
    let mut free = 0u64;
    for n in 0..g.num_pages {
        match page_words(cache, n)? {
            Some([magic, slots, free_slots, free_bytes])
                if magic == crate::page::PAGE_MAGIC
                    && free_slots <= slots
                    && free_bytes <= g.page_size =>
            {
                s.entries += u64::from(slots - free_slots);
                free += u64::from(free_bytes);
            }
            // A damaged page (repaired when next locked) or one we could not read: it
            // counts as holding nothing and fully used.
            _ => {}
        }
    }
    s.used_bytes = s.capacity_bytes - free;
    Ok(s)
}
