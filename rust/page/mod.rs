//! One page of the cache: a 32-byte header, a slot table, and an item area.
//!
//! The layout and the eviction arithmetic follow upstream Cache::FastMmap (so that hit rates
//! users tuned against stay the same): header fields are native-endian u32s; an item is a
//! 24-byte header, the key bytes, then the value bytes, padded to 4 bytes. Our slots are
//! twice the size of upstream's, so tables have half as many (44 to start with; growth at
//! `GROW_KEPT` in expunge.rs) and take upstream's bytes: a page holds what upstream's holds.
//!
//! A slot is 8 bytes, two native-endian u32s (upstream's is only the first):
//! - the item's page-relative offset, or 0 (empty, stops probing) or 1 (deleted, probing
//!   continues);
//! - the slot's *meta* word: the top byte is a tag, the top 8 bits of the item's slot hash,
//!   so that a probe passes most non-matching slots without touching their items (one cache
//!   line per 8 slots); the low 24 bits are the item's last access, in seconds after the time
//!   its header records (its store), saturating at [`MAX_ACCESS_DELTA`] (194 days).
//!
//! Readers that take no lock update the access time with one compare-and-swap of the whole
//! 8-byte slot ([`peek::touch`]): it lands only on a slot that still holds exactly what the
//! reader saw, so the worst a race can do is give the wrong age to an entry (which only
//! matters to the order of LRU eviction), never change an offset, a tag or an item byte.
//! Code under the page lock therefore reads each meta word once and treats its access part
//! as advisory.
//!
//! Nothing read from the page is trusted: every offset and length is checked against the page
//! before use, and a failed check comes back as [`Corrupt`] (the caller repairs the page).

mod expunge;
mod ops;
mod peek;
mod repair;
#[cfg(test)]
mod tests;

pub use expunge::{ExpungePlan, EXPUNGE_ALL, EXPUNGE_EXPIRED, EXPUNGE_LRU};
pub use peek::{count_read, peek, touch, Touch};

/// Bytes of the page header.
pub const PAGE_HEADER: usize = 32;
/// Bytes of an item header.
pub const ITEM_HEADER: usize = 24;
/// Marks an initialised page of this format.
pub const PAGE_MAGIC: u32 = 0x4650_4731;

// Page header fields.
const H_MAGIC: usize = 0;
const H_NUM_SLOTS: usize = 4;
const H_FREE_SLOTS: usize = 8;
const H_OLD_SLOTS: usize = 12;
const H_FREE_DATA: usize = 16;
const H_FREE_BYTES: usize = 20;
const H_NREADS: usize = 24;
const H_NREADHITS: usize = 28;

// Item header fields.
const I_STORED_ON: usize = 0;
const I_EXPIRE_ON: usize = 4;
const I_SLOT_HASH: usize = 8;
const I_FLAGS: usize = 12;
const I_KEY_LEN: usize = 16;
const I_VAL_LEN: usize = 20;

const SLOT_EMPTY: u32 = 0;
const SLOT_DELETED: u32 = 1;

/// Item flag: written back by the Perl layer's write_back mode, not yet written.
pub const FLAG_ISDIRTY: u32 = 1;
/// Item flag: the value area starts with an 8-byte native-endian modseq.
pub const FLAG_HASMODSEQ: u32 = 1 << 27;
/// Item flag: the entry is a tombstone (key + modseq, no value).
pub const FLAG_TOMBSTONE: u32 = 1 << 28;
/// Item flag (set by the XS layer): the value was undef.
pub const FLAG_UNDEF: u32 = 1 << 29;
/// Item flag (set by the XS layer): the key had Perl's UTF-8 flag.
pub const FLAG_UTF8KEY: u32 = 1 << 30;
/// Item flag (set by the XS layer): the value had Perl's UTF-8 flag.
pub const FLAG_UTF8VAL: u32 = 1 << 31;

const MODSEQ_LEN: usize = 8;

/// Rounds an item length up to a multiple of 4.
#[inline]
pub fn roundlen(l: u64) -> u64 {
    (l + 3) & !3
}

/// Bytes per slot: the item offset and the meta word.
pub const SLOT_BYTES: usize = 8;
/// Largest access time a slot records, in seconds after the item's store (2^24 - 1).
pub const MAX_ACCESS_DELTA: u32 = 0x00FF_FFFF;

/// Offset of the item area for a slot table of `num_slots` entries.
#[inline]
fn data_start(num_slots: u32) -> u64 {
    PAGE_HEADER as u64 + SLOT_BYTES as u64 * u64::from(num_slots)
}

/// The tag a slot keeps for an item of this slot hash.
#[inline]
fn tag_of(slot_hash: u32) -> u32 {
    slot_hash >> 24
}

/// A meta word: the tag of `slot_hash` and an access `delta` (clamped).
#[inline]
fn meta(slot_hash: u32, delta: u32) -> u32 {
    (tag_of(slot_hash) << 24) | delta.min(MAX_ACCESS_DELTA)
}

/// Seconds from an item's store time to an access at `now` (0 if the clock went back).
#[inline]
fn access_delta(stored_on: u32, now: u32) -> u32 {
    now.saturating_sub(stored_on).min(MAX_ACCESS_DELTA)
}

/// Why a page failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corrupt(pub String);

pub type PageResult<T> = std::result::Result<T, Corrupt>;

/// A validated item header: every field here was checked against the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item {
    pub off: usize,
    /// When the item was stored (its header's time).
    pub stored_on: u32,
    /// The last access: `stored_on` plus the slot's access delta.
    pub last_access: u32,
    pub expire_on: u32,
    pub slot_hash: u32,
    pub flags: u32,
    pub key_len: usize,
    /// Stored value length, including the modseq prefix when FLAG_HASMODSEQ.
    pub raw_val_len: usize,
}

impl Item {
    /// Rounded bytes this item occupies.
    pub fn size(&self) -> usize {
        roundlen((ITEM_HEADER + self.key_len + self.raw_val_len) as u64) as usize
    }

    pub fn is_tombstone(&self) -> bool {
        self.flags & FLAG_TOMBSTONE != 0
    }

    fn has_modseq(&self) -> bool {
        self.flags & FLAG_HASMODSEQ != 0
    }

    fn key_off(&self) -> usize {
        self.off + ITEM_HEADER
    }

    /// Offset and length of the value proper (after any modseq prefix).
    pub fn value_span(&self) -> (usize, usize) {
        let skip = if self.has_modseq() { MODSEQ_LEN } else { 0 };
        (
            self.key_off() + self.key_len + skip,
            self.raw_val_len - skip,
        )
    }
}

/// What a read found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOut {
    pub found: bool,
    pub flags: u32,
    pub expire_on: u32,
    pub val_off: usize,
    pub val_len: usize,
    pub modseq: Option<u64>,
}

impl ReadOut {
    const MISS: ReadOut = ReadOut {
        found: false,
        flags: 0,
        expire_on: 0,
        val_off: 0,
        val_len: 0,
        modseq: None,
    };
}

/// A new entry to store.
#[derive(Debug, Clone, Copy)]
pub struct NewItem<'k> {
    pub slot_hash: u32,
    pub key: &'k [u8],
    pub val: &'k [u8],
    /// Absolute expiry; `u32::MAX` means "the cache default".
    pub expire_on: u32,
    pub flags: u32,
    pub modseq: Option<u64>,
}

/// Result of storing: upstream's 1 / 0 / -1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Stored (or, for a tombstone over a newer modseq, a successful no-op).
    Yes,
    /// No room (no slot, or not enough free bytes); the old value is untouched.
    NoSpace,
    /// Refused by the conditional-store (modseq) rules.
    Refused,
}

impl Stored {
    pub fn code(self) -> i32 {
        match self {
            Stored::Yes => 1,
            Stored::NoSpace => 0,
            Stored::Refused => -1,
        }
    }
}

/// A view of one page's bytes. Whoever builds it holds the page's lock.
pub struct Page<'a> {
    b: &'a mut [u8],
}

impl<'a> Page<'a> {
    pub fn new(b: &'a mut [u8]) -> Page<'a> {
        Page { b }
    }

    #[inline]
    fn rd(&self, off: usize) -> u32 {
        let mut w = [0u8; 4];
        w.copy_from_slice(&self.b[off..off + 4]);
        u32::from_ne_bytes(w)
    }

    #[inline]
    fn wr(&mut self, off: usize, v: u32) {
        self.b[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }

    fn page_size(&self) -> u64 {
        self.b.len() as u64
    }

    pub fn num_slots(&self) -> u32 {
        self.rd(H_NUM_SLOTS)
    }
    pub fn free_slots(&self) -> u32 {
        self.rd(H_FREE_SLOTS)
    }
    pub fn old_slots(&self) -> u32 {
        self.rd(H_OLD_SLOTS)
    }
    pub fn free_data(&self) -> u32 {
        self.rd(H_FREE_DATA)
    }
    pub fn free_bytes(&self) -> u32 {
        self.rd(H_FREE_BYTES)
    }

    /// `(nreads, nreadhits)` statistics counters.
    pub fn stats(&self) -> (u32, u32) {
        (self.rd(H_NREADS), self.rd(H_NREADHITS))
    }

    pub fn reset_stats(&mut self) {
        self.wr(H_NREADS, 0);
        self.wr(H_NREADHITS, 0);
    }

    /// Slot `i`'s offset word.
    fn slot(&self, i: usize) -> u32 {
        self.rd(PAGE_HEADER + SLOT_BYTES * i)
    }

    /// Slot `i`'s meta word (tag and access delta).
    fn slot_meta(&self, i: usize) -> u32 {
        self.rd(PAGE_HEADER + SLOT_BYTES * i + 4)
    }

    /// Sets slot `i`. The meta word goes first: a writer killed between the two stores
    /// leaves the old offset (still a valid slot: an overwrite keeps the tag) rather than a
    /// new offset under a stale tag.
    fn set_slot(&mut self, i: usize, off: u32, meta: u32) {
        self.wr(PAGE_HEADER + SLOT_BYTES * i + 4, meta);
        self.wr(PAGE_HEADER + SLOT_BYTES * i, off);
    }

    fn set_slot_meta(&mut self, i: usize, meta: u32) {
        self.wr(PAGE_HEADER + SLOT_BYTES * i + 4, meta);
    }

    /// Smallest page that can hold the header, `num_slots` slots and one small item.
    pub fn min_size(num_slots: u32) -> u64 {
        data_start(num_slots) + 2 * ITEM_HEADER as u64
    }

    /// Makes this an empty page with `num_slots` slots (stats zeroed).
    pub fn init(&mut self, num_slots: u32) {
        self.b.fill(0);
        self.init_zeroed(num_slots);
    }

    /// [`Page::init`] for a page known to be all zero bytes (a new file): writes only the
    /// header, so a large new cache does not dirty every page of memory.
    pub fn init_zeroed(&mut self, num_slots: u32) {
        let start = data_start(num_slots);
        debug_assert!(start <= self.page_size());
        self.wr(H_MAGIC, PAGE_MAGIC);
        self.wr(H_NUM_SLOTS, num_slots);
        self.wr(H_FREE_SLOTS, num_slots);
        self.wr(H_OLD_SLOTS, 0);
        self.wr(H_FREE_DATA, start as u32);
        self.wr(H_FREE_BYTES, (self.page_size() - start) as u32);
    }

    /// The cheap check done at every lock: the header fields are consistent with each other
    /// and with the page size, so the slot table and the item area lie inside the page.
    pub fn check_header(&self) -> PageResult<()> {
        let ps = self.page_size();
        if ps < PAGE_HEADER as u64 {
            return Err(Corrupt(format!("page of {ps} bytes is too small")));
        }
        if self.rd(H_MAGIC) != PAGE_MAGIC {
            return Err(Corrupt("bad page magic".into()));
        }
        let n = self.num_slots();
        if n == 0 || data_start(n) > ps {
            return Err(Corrupt(format!("slot count {n} does not fit the page")));
        }
        if self.free_slots() > n {
            return Err(Corrupt(format!(
                "free slot count {} exceeds slot count {n}",
                self.free_slots()
            )));
        }
        if self.old_slots() > self.free_slots() {
            return Err(Corrupt(format!(
                "deleted slot count {} exceeds free slot count {}",
                self.old_slots(),
                self.free_slots()
            )));
        }
        let fd = u64::from(self.free_data());
        if fd < data_start(n) || fd > ps || fd + u64::from(self.free_bytes()) != ps {
            return Err(Corrupt(format!(
                "free data offset {fd} / free bytes {} do not add up",
                self.free_bytes()
            )));
        }
        Ok(())
    }

    /// Validates the item a slot (offset `off`, meta word `meta`) points at, against the
    /// bounds `[lo, hi)` of the item area. The tag is not checked here (see `validate`).
    fn item_within(&self, off: u32, meta: u32, lo: u64, hi: u64) -> PageResult<Item> {
        let o = u64::from(off);
        if o < lo || o % 4 != 0 || o + ITEM_HEADER as u64 > hi {
            return Err(Corrupt(format!("slot offset {off} outside the item area")));
        }
        let off = off as usize;
        let key_len = self.rd(off + I_KEY_LEN);
        let raw_val_len = self.rd(off + I_VAL_LEN);
        let end = o + ITEM_HEADER as u64 + u64::from(key_len) + u64::from(raw_val_len);
        if end > hi {
            return Err(Corrupt(format!(
                "item at offset {off} (key {key_len} + value {raw_val_len} bytes) runs past the item area"
            )));
        }
        let flags = self.rd(off + I_FLAGS);
        if flags & FLAG_HASMODSEQ != 0 && (raw_val_len as usize) < MODSEQ_LEN {
            return Err(Corrupt(format!(
                "item at offset {off} has a modseq flag but no modseq"
            )));
        }
        let stored_on = self.rd(off + I_STORED_ON);
        Ok(Item {
            off,
            stored_on,
            last_access: stored_on.saturating_add(meta & MAX_ACCESS_DELTA),
            expire_on: self.rd(off + I_EXPIRE_ON),
            slot_hash: self.rd(off + I_SLOT_HASH),
            flags,
            key_len: key_len as usize,
            raw_val_len: raw_val_len as usize,
        })
    }

    /// The item slot `i` points at (offset `off`), checked against this page's (already
    /// checked) header.
    fn item(&self, i: usize, off: u32) -> PageResult<Item> {
        self.item_within(
            off,
            self.slot_meta(i),
            data_start(self.num_slots()),
            u64::from(self.free_data()),
        )
    }

    pub fn key(&self, it: &Item) -> &[u8] {
        &self.b[it.key_off()..it.key_off() + it.key_len]
    }

    pub fn value(&self, it: &Item) -> &[u8] {
        let (o, l) = it.value_span();
        &self.b[o..o + l]
    }

    /// Bytes at `[off, off+len)`, as returned by [`Page::read`].
    pub fn bytes(&self, off: usize, len: usize) -> &[u8] {
        &self.b[off..off + len]
    }

    pub fn modseq(&self, it: &Item) -> Option<u64> {
        if !it.has_modseq() {
            return None;
        }
        let o = it.key_off() + it.key_len;
        let mut w = [0u8; 8];
        w.copy_from_slice(&self.b[o..o + 8]);
        Some(u64::from_ne_bytes(w))
    }
}
