//! One page of the cache: a 32-byte header, a slot table of u32 offsets, and an item area.
//!
//! The layout and the eviction arithmetic follow upstream Cache::FastMmap (so that hit rates
//! users tuned against stay the same): header fields are native-endian u32s; a slot holds 0
//! (empty, stops probing), 1 (deleted, probing continues) or the page-relative offset of an
//! item; an item is a 24-byte header, the key bytes, then the value bytes, padded to 4 bytes.
//!
//! Nothing read from the page is trusted: every offset and length is checked against the page
//! before use, and a failed check comes back as [`Corrupt`] (the caller repairs the page).

use crate::time::is_expired;

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
const I_LAST_ACCESS: usize = 0;
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

/// Offset of the item area for a slot table of `num_slots` entries.
#[inline]
fn data_start(num_slots: u32) -> u64 {
    PAGE_HEADER as u64 + 4 * u64::from(num_slots)
}

/// Why a page failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corrupt(pub String);

pub type PageResult<T> = std::result::Result<T, Corrupt>;

/// A validated item header: every field here was checked against the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item {
    pub off: usize,
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

/// What an expunge decided: the new slot count, the items that stay, the items that go.
#[derive(Debug, Clone, Default)]
pub struct ExpungePlan {
    pub new_num_slots: u32,
    pub keep: Vec<Item>,
    pub evict: Vec<Item>,
}

/// Expunge modes (upstream's numbering).
pub const EXPUNGE_EXPIRED: i32 = 0;
pub const EXPUNGE_ALL: i32 = 1;
pub const EXPUNGE_LRU: i32 = 2;

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

    fn slot(&self, i: usize) -> u32 {
        self.rd(PAGE_HEADER + 4 * i)
    }

    fn set_slot(&mut self, i: usize, v: u32) {
        self.wr(PAGE_HEADER + 4 * i, v)
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

    /// Validates the item a slot points at, against the bounds `[lo, hi)` of the item area.
    fn item_within(&self, off: u32, lo: u64, hi: u64) -> PageResult<Item> {
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
        Ok(Item {
            off,
            last_access: self.rd(off + I_LAST_ACCESS),
            expire_on: self.rd(off + I_EXPIRE_ON),
            slot_hash: self.rd(off + I_SLOT_HASH),
            flags,
            key_len: key_len as usize,
            raw_val_len: raw_val_len as usize,
        })
    }

    /// The item at a slot offset, checked against this page's (already checked) header.
    fn item(&self, off: u32) -> PageResult<Item> {
        self.item_within(
            off,
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

    /// Linear probing from `slot_hash % num_slots`. Returns the slot index and, when the key
    /// is present, its item. When absent: the empty slot that stopped the probe, or in write
    /// mode the first deleted slot seen (reused); `None` when every slot was probed.
    fn find_slot(
        &self,
        slot_hash: u32,
        key: &[u8],
        write: bool,
    ) -> PageResult<Option<(usize, Option<Item>)>> {
        let n = self.num_slots() as usize;
        let mut i = slot_hash as usize % n;
        let mut first_deleted = None;
        for _ in 0..n {
            match self.slot(i) {
                SLOT_EMPTY => {
                    let at = if write { first_deleted.unwrap_or(i) } else { i };
                    return Ok(Some((at, None)));
                }
                SLOT_DELETED => {
                    if write && first_deleted.is_none() {
                        first_deleted = Some(i);
                    }
                }
                off => {
                    let it = self.item(off)?;
                    if it.slot_hash == slot_hash && it.key_len == key.len() && self.key(&it) == key
                    {
                        return Ok(Some((i, Some(it))));
                    }
                }
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
        Ok(first_deleted.map(|d| (d, None)))
    }

    /// Looks a key up. A miss is: absent, expired (left in place for write-back) or a
    /// tombstone. A hit updates last_access (the LRU touch). With `stats`, counts the read and
    /// the hit.
    pub fn read(
        &mut self,
        slot_hash: u32,
        key: &[u8],
        now: u32,
        stats: bool,
    ) -> PageResult<ReadOut> {
        self.check_header()?;
        if stats {
            let n = self.rd(H_NREADS).wrapping_add(1);
            self.wr(H_NREADS, n);
        }
        let it = match self.find_slot(slot_hash, key, false)? {
            Some((_, Some(it))) => it,
            _ => return Ok(ReadOut::MISS),
        };
        if is_expired(it.expire_on, now) || it.is_tombstone() {
            return Ok(ReadOut::MISS);
        }
        // Skip the store when it would not change anything: readers then leave the page's
        // cache lines clean.
        if it.last_access != now {
            self.wr(it.off + I_LAST_ACCESS, now);
        }
        if stats {
            let n = self.rd(H_NREADHITS).wrapping_add(1);
            self.wr(H_NREADHITS, n);
        }
        let (val_off, val_len) = it.value_span();
        Ok(ReadOut {
            found: true,
            flags: it.flags,
            expire_on: it.expire_on,
            val_off,
            val_len,
            modseq: self.modseq(&it),
        })
    }

    fn mark_deleted(&mut self, slot: usize) {
        self.set_slot(slot, SLOT_DELETED);
        let fs = self.free_slots() + 1;
        let os = self.old_slots() + 1;
        self.wr(H_FREE_SLOTS, fs);
        self.wr(H_OLD_SLOTS, os);
    }

    /// Stores an entry (a tombstone when `new.flags` has FLAG_TOMBSTONE). Never expunges: when
    /// there is no room it returns [`Stored::NoSpace`] and leaves any old value in place.
    /// `default_expire` is the cache's expire_time, used when `new.expire_on == u32::MAX`.
    pub fn write(
        &mut self,
        new: &NewItem<'_>,
        now: u32,
        default_expire: u32,
    ) -> PageResult<Stored> {
        self.check_header()?;
        let mut flags = new.flags & !FLAG_HASMODSEQ;
        let tombstone = flags & FLAG_TOMBSTONE != 0;
        let val: &[u8] = if tombstone { &[] } else { new.val };
        let prefix = if new.modseq.is_some() { MODSEQ_LEN } else { 0 };
        if new.modseq.is_some() {
            flags |= FLAG_HASMODSEQ;
        }
        let raw_val_len = val.len() as u64 + prefix as u64;
        let len = roundlen(ITEM_HEADER as u64 + new.key.len() as u64 + raw_val_len);
        if len > self.page_size() || new.key.len() > u32::MAX as usize {
            return Ok(Stored::NoSpace);
        }
        let (slot, old) = match self.find_slot(new.slot_hash, new.key, true)? {
            Some(found) => found,
            None => return Ok(Stored::NoSpace),
        };
        if let Some(old) = old {
            if old.has_modseq() && !is_expired(old.expire_on, now) {
                let old_ms = self.modseq(&old).unwrap_or(0);
                match (tombstone, new.modseq) {
                    // A tombstone never lowers the modseq nor removes a newer value.
                    (true, Some(m)) if m <= old_ms => return Ok(Stored::Yes),
                    (true, _) => {}
                    (false, None) if old.is_tombstone() => return Ok(Stored::Refused),
                    (false, None) => {}
                    (false, Some(m)) if m < old_ms => return Ok(Stored::Refused),
                    (false, Some(_)) => {}
                }
            }
        }
        if u64::from(self.free_bytes()) < len {
            return Ok(Stored::NoSpace);
        }
        let expire_on = if new.expire_on == u32::MAX {
            if default_expire != 0 {
                now.wrapping_add(default_expire)
            } else {
                0
            }
        } else {
            new.expire_on
        };
        // Order matters for a writer killed part-way: the new item is written and
        // allocated first, then one slot store makes it visible, so the old value stays
        // readable until that store; the slot counters come last.
        let off = self.free_data() as usize;
        self.wr(off + I_LAST_ACCESS, now);
        self.wr(off + I_EXPIRE_ON, expire_on);
        self.wr(off + I_SLOT_HASH, new.slot_hash);
        self.wr(off + I_FLAGS, flags);
        self.wr(off + I_KEY_LEN, new.key.len() as u32);
        self.wr(off + I_VAL_LEN, raw_val_len as u32);
        let mut p = off + ITEM_HEADER;
        self.b[p..p + new.key.len()].copy_from_slice(new.key);
        p += new.key.len();
        if let Some(m) = new.modseq {
            self.b[p..p + MODSEQ_LEN].copy_from_slice(&m.to_ne_bytes());
            p += MODSEQ_LEN;
        }
        self.b[p..p + val.len()].copy_from_slice(val);
        let fd = self.free_data() + len as u32;
        let fb = self.free_bytes() - len as u32;
        self.wr(H_FREE_DATA, fd);
        self.wr(H_FREE_BYTES, fb);
        let was_deleted = self.slot(slot) == SLOT_DELETED;
        self.set_slot(slot, off as u32);
        if old.is_none() {
            // A previously free slot is now used (an overwrite keeps the counts).
            let fs = self.free_slots() - 1;
            self.wr(H_FREE_SLOTS, fs);
            if was_deleted {
                let os = self.old_slots() - 1;
                self.wr(H_OLD_SLOTS, os);
            }
        }
        Ok(Stored::Yes)
    }

    /// Deletes whatever entry holds the key (expired entries and tombstones too), returning
    /// its flags, or `None` when the key is absent.
    pub fn delete(&mut self, slot_hash: u32, key: &[u8]) -> PageResult<Option<u32>> {
        self.check_header()?;
        match self.find_slot(slot_hash, key, false)? {
            Some((slot, Some(it))) => {
                self.mark_deleted(slot);
                Ok(Some(it.flags))
            }
            _ => Ok(None),
        }
    }

    /// Every item the slot table points at, in slot order.
    pub fn items(&self) -> PageResult<Vec<Item>> {
        self.check_header()?;
        let mut v = Vec::new();
        for i in 0..self.num_slots() as usize {
            let off = self.slot(i);
            if off > SLOT_DELETED {
                v.push(self.item(off)?);
            }
        }
        Ok(v)
    }

    /// Every item, most recently stored first. Items are appended as they are stored and
    /// [`Page::rebuild`] keeps their relative order, so this is the order of the last store of
    /// each key, newest first; neither the hash nor the clock has a say in it. `get_keys` lists
    /// a page this way (upstream lists slot order, which with its additive hash often puts a
    /// run of recently stored, similarly named keys first; CHI's `arbitrary` discard policy and
    /// its test suite depend on that; see `collect_keys` in cache.rs).
    pub fn items_newest_first(&self) -> PageResult<Vec<Item>> {
        let mut v = self.items()?;
        v.sort_unstable_by_key(|it| std::cmp::Reverse(it.off));
        Ok(v)
    }

    /// Decides an expunge (upstream's thresholds, exactly). `len >= 0` is the size of an
    /// item about to be written: if there is room for it and enough never-used slots, nothing
    /// is done (`None`). Mode 0 drops expired entries, 1 everything, 2 also evicts the least
    /// recently used until under 60% of the data area is used.
    pub fn plan_expunge(&self, mode: i32, len: i64, now: u32) -> PageResult<Option<ExpungePlan>> {
        self.check_header()?;
        let n = self.num_slots();
        if len >= 0 {
            let unused = f64::from(self.free_slots() - self.old_slots()) / f64::from(n);
            let need = roundlen(ITEM_HEADER as u64 + len as u64);
            if unused > 0.3 && u64::from(self.free_bytes()) >= need {
                return Ok(None);
            }
        }
        let mut plan = ExpungePlan::default();
        let mut used_data: u64 = 0;
        for it in self.items()? {
            if mode == EXPUNGE_ALL || is_expired(it.expire_on, now) {
                plan.evict.push(it);
            } else {
                used_data += it.size() as u64;
                plan.keep.push(it);
            }
        }
        let ps = self.page_size();
        let mut new_n = n;
        let data_size = ps - data_start(n);
        let kept_frac = plan.keep.len() as f64 / f64::from(n);
        if kept_frac > 0.3
            && (data_size.saturating_sub(used_data) > (u64::from(n) + 1) * 4 || mode == EXPUNGE_LRU)
        {
            // The growth condition leaves room for the kept items in modes 0 and 1; mode 2
            // makes room by evicting below. Only a table that would fill the whole page (a
            // geometry upstream never reaches) is refused.
            let grown = u64::from(n) * 2 + 1;
            if grown <= u64::from(u32::MAX) && data_start(grown as u32) < ps {
                new_n = grown as u32;
            }
        }
        if mode == EXPUNGE_LRU {
            let data_size = ps - data_start(new_n);
            let limit = (0.6 * data_size as f64) as u32 as u64;
            // Oldest first; ties keep slot order (a stable sort).
            plan.keep.sort_by_key(|it| it.last_access);
            let mut first_kept = 0;
            while used_data >= limit && first_kept < plan.keep.len() {
                used_data -= plan.keep[first_kept].size() as u64;
                first_kept += 1;
            }
            plan.evict.extend(plan.keep.drain(..first_kept));
        }
        plan.new_num_slots = new_n;
        Ok(Some(plan))
    }

    /// Rewrites the page with `num_slots` slots holding exactly `items` (which must be items
    /// of this page, already validated), compacting the item area. Items that do not fit (only
    /// possible when repairing a corrupt page) are dropped; returns how many were placed.
    /// The item area keeps the items' storage order (whatever order `items` is in), so that
    /// [`Page::items_newest_first`] survives expunges.
    fn rebuild(&mut self, num_slots: u32, items: &[Item]) -> usize {
        let mut items = items.to_vec();
        items.sort_unstable_by_key(|it| it.off);
        let ps = self.page_size() as usize;
        let start = data_start(num_slots) as usize;
        let n = num_slots as usize;
        let mut slots = vec![SLOT_EMPTY; n];
        let mut data: Vec<u8> = Vec::with_capacity(ps - start);
        let mut placed = 0;
        for it in &items {
            let l = it.size();
            let raw = ITEM_HEADER + it.key_len + it.raw_val_len;
            if start + data.len() + l > ps || placed >= n {
                continue;
            }
            let mut i = it.slot_hash as usize % n;
            while slots[i] != SLOT_EMPTY {
                i = (i + 1) % n;
            }
            slots[i] = (start + data.len()) as u32;
            data.extend_from_slice(&self.b[it.off..it.off + raw]);
            data.resize(data.len() + (l - raw), 0);
            placed += 1;
        }
        let (nreads, nhits) = self.stats();
        self.b[PAGE_HEADER..start].copy_from_slice(
            &slots
                .iter()
                .flat_map(|s| s.to_ne_bytes())
                .collect::<Vec<u8>>(),
        );
        self.b[start..start + data.len()].copy_from_slice(&data);
        let fd = start + data.len();
        self.wr(H_MAGIC, PAGE_MAGIC);
        self.wr(H_NUM_SLOTS, num_slots);
        self.wr(H_FREE_SLOTS, num_slots - placed as u32);
        self.wr(H_OLD_SLOTS, 0);
        self.wr(H_FREE_DATA, fd as u32);
        self.wr(H_FREE_BYTES, (ps - fd) as u32);
        self.wr(H_NREADS, nreads);
        self.wr(H_NREADHITS, nhits);
        placed
    }

    /// Carries out a plan from [`Page::plan_expunge`] on the unchanged page.
    pub fn apply_expunge(&mut self, plan: &ExpungePlan) {
        self.rebuild(plan.new_num_slots, &plan.keep);
    }

    /// Full validation (slower than [`Page::check_header`]): the header, every slot's item,
    /// that every item is found by probing for its own key, the slot counts, and `hash_ok`
    /// (does this key hash to this page with this slot hash?).
    pub fn validate(&self, hash_ok: &dyn Fn(&[u8], u32) -> bool) -> PageResult<()> {
        self.check_header()?;
        let n = self.num_slots() as usize;
        let (mut free, mut old) = (0u32, 0u32);
        for i in 0..n {
            match self.slot(i) {
                SLOT_EMPTY => free += 1,
                SLOT_DELETED => {
                    free += 1;
                    old += 1
                }
                off => {
                    let it = self.item(off)?;
                    let key = self.key(&it);
                    if !hash_ok(key, it.slot_hash) {
                        return Err(Corrupt(format!(
                            "item at offset {off} is not in the slot its key hashes to"
                        )));
                    }
                    match self.find_slot(it.slot_hash, key, false)? {
                        Some((j, Some(_))) if j == i => {}
                        _ => {
                            return Err(Corrupt(format!(
                                "item at offset {off} is not reachable by its key"
                            )))
                        }
                    }
                }
            }
        }
        if free != self.free_slots() || old != self.old_slots() {
            return Err(Corrupt(format!(
                "slot counts do not match the table ({} free/{} deleted recorded, {free}/{old} found)",
                self.free_slots(),
                self.old_slots()
            )));
        }
        Ok(())
    }

    /// Repairs a page that failed validation: keeps every item that validates (first of any
    /// duplicate key), drops the rest, and rebuilds the slot table. When even the slot table
    /// cannot be trusted the page is reinitialised with `start_slots` slots. Returns the
    /// number of entries kept.
    pub fn repair(&mut self, start_slots: u32, hash_ok: &dyn Fn(&[u8], u32) -> bool) -> usize {
        let ps = self.page_size();
        let n = self.num_slots();
        let table_ok = self.rd(H_MAGIC) == PAGE_MAGIC && n > 0 && data_start(n) <= ps;
        if !table_ok {
            self.init(start_slots);
            return 0;
        }
        // The recorded end of data may be the corrupt part: bound items by the page instead.
        let lo = data_start(n);
        let mut keep: Vec<Item> = Vec::new();
        for i in 0..n as usize {
            let off = self.slot(i);
            if off <= SLOT_DELETED {
                continue;
            }
            let it = match self.item_within(off, lo, ps) {
                Ok(it) => it,
                Err(_) => continue,
            };
            let key = self.key(&it);
            if !hash_ok(key, it.slot_hash) {
                continue;
            }
            // Overlapping items mean at least one is garbage: keep the first.
            let overlaps = keep
                .iter()
                .any(|k| it.off < k.off + k.size() && k.off < it.off + it.size());
            let duplicate = keep.iter().any(|k| self.key(k) == key);
            if !overlaps && !duplicate {
                keep.push(it);
            }
        }
        self.rebuild(n, &keep)
    }
}

/// A lookup without the page lock, for readers using the page's change counter as a
/// sequence lock: the bytes may be changing under us, so each word is read once
/// (volatile), every offset is checked against the page before use, and the answer is only
/// trusted if the change counter is unchanged afterwards (the caller checks). `None` means
/// "take the lock": the view was inconsistent, or a hit needs its LRU time updated.
///
/// This is [`Page::read`]'s probe, written separately because it may not hold a reference
/// to bytes another process is writing.
///
/// # Safety
/// `base` points at `page_size` readable bytes that stay mapped during the call, and is
/// 4-byte aligned.
pub unsafe fn peek(
    base: *const u8,
    page_size: usize,
    slot_hash: u32,
    key: &[u8],
    now: u32,
) -> Option<ReadOut> {
    let rd = |off: usize| -> Option<u32> {
        (off + 4 <= page_size).then(|| std::ptr::read_volatile(base.add(off) as *const u32))
    };
    if rd(H_MAGIC)? != PAGE_MAGIC {
        return None;
    }
    let n = rd(H_NUM_SLOTS)? as usize;
    let start = PAGE_HEADER + 4 * n;
    let free_data = rd(H_FREE_DATA)? as usize;
    if n == 0 || start > page_size || free_data > page_size || free_data < start {
        return None;
    }
    let mut i = slot_hash as usize % n;
    for _ in 0..n {
        match rd(PAGE_HEADER + 4 * i)? {
            SLOT_EMPTY => return Some(ReadOut::MISS),
            SLOT_DELETED => {}
            off => {
                let off = off as usize;
                if off % 4 != 0 || off < start || off + ITEM_HEADER > free_data {
                    return None;
                }
                if rd(off + I_SLOT_HASH)? == slot_hash && rd(off + I_KEY_LEN)? as usize == key.len()
                {
                    let raw_val_len = rd(off + I_VAL_LEN)? as usize;
                    let key_off = off + ITEM_HEADER;
                    if key_off + key.len() + raw_val_len > free_data {
                        return None;
                    }
                    let same = key
                        .iter()
                        .enumerate()
                        .all(|(j, &b)| std::ptr::read_volatile(base.add(key_off + j)) == b);
                    if same {
                        let flags = rd(off + I_FLAGS)?;
                        let expire_on = rd(off + I_EXPIRE_ON)?;
                        if is_expired(expire_on, now) || flags & FLAG_TOMBSTONE != 0 {
                            return Some(ReadOut::MISS);
                        }
                        if rd(off + I_LAST_ACCESS)? != now {
                            return None;
                        }
                        let mut val_off = key_off + key.len();
                        let mut val_len = raw_val_len;
                        let mut modseq = None;
                        if flags & FLAG_HASMODSEQ != 0 {
                            if raw_val_len < MODSEQ_LEN {
                                return None;
                            }
                            let mut w = [0u8; 8];
                            for (j, b) in w.iter_mut().enumerate() {
                                *b = std::ptr::read_volatile(base.add(val_off + j));
                            }
                            modseq = Some(u64::from_ne_bytes(w));
                            val_off += MODSEQ_LEN;
                            val_len -= MODSEQ_LEN;
                        }
                        return Some(ReadOut {
                            found: true,
                            flags,
                            expire_on,
                            val_off,
                            val_len,
                            modseq,
                        });
                    }
                }
            }
        }
        i += 1;
        if i == n {
            i = 0;
        }
    }
    Some(ReadOut::MISS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(size: usize, slots: u32) -> Vec<u8> {
        let mut b = vec![0u8; size];
        Page::new(&mut b).init(slots);
        b
    }

    fn item<'k>(sh: u32, key: &'k [u8], val: &'k [u8]) -> NewItem<'k> {
        NewItem {
            slot_hash: sh,
            key,
            val,
            expire_on: 0,
            flags: 0,
            modseq: None,
        }
    }

    fn sh(key: &[u8]) -> u32 {
        crate::hash::hash_key(key, 1).1
    }

    fn put(p: &mut Page, key: &str, val: &str, now: u32) -> Stored {
        let k = key.as_bytes();
        p.write(&item(sh(k), k, val.as_bytes()), now, 0).unwrap()
    }

    fn get(p: &mut Page, key: &str, now: u32) -> Option<Vec<u8>> {
        let k = key.as_bytes();
        let r = p.read(sh(k), k, now, false).unwrap();
        r.found.then(|| p.bytes(r.val_off, r.val_len).to_vec())
    }

    fn hash_ok(key: &[u8], s: u32) -> bool {
        sh(key) == s
    }

    #[test]
    fn fresh_page_geometry_matches_upstream() {
        let b = page(8192, 89);
        let p = Page { b: &mut b.clone() };
        assert_eq!(p.free_data(), 32 + 4 * 89);
        assert_eq!(p.free_bytes(), 8192 - 388);
        assert!(p.check_header().is_ok());
        assert!(p.validate(&hash_ok).is_ok());
    }

    #[test]
    fn write_read_overwrite_delete() {
        let mut b = page(8192, 89);
        let mut p = Page::new(&mut b);
        assert_eq!(put(&mut p, "a", "1", 100), Stored::Yes);
        assert_eq!(get(&mut p, "a", 100).unwrap(), b"1");
        assert_eq!(put(&mut p, "a", "22", 100), Stored::Yes);
        assert_eq!(get(&mut p, "a", 100).unwrap(), b"22");
        assert_eq!(p.old_slots(), 0);
        assert_eq!(p.free_slots(), 88);
        assert_eq!(p.delete(sh(b"a"), b"a").unwrap(), Some(0));
        assert_eq!(get(&mut p, "a", 100), None);
        assert_eq!((p.free_slots(), p.old_slots()), (89, 1));
        // Writing the key again reuses the deleted slot.
        assert_eq!(put(&mut p, "a", "3", 100), Stored::Yes);
        assert_eq!((p.free_slots(), p.old_slots()), (88, 0));
        assert!(p.validate(&hash_ok).is_ok());
    }

    #[test]
    fn full_page_refuses_and_keeps_old_value() {
        let mut b = page(4096, 89);
        let mut p = Page::new(&mut b);
        assert_eq!(put(&mut p, "k", "old", 1), Stored::Yes);
        let big = "x".repeat(5000);
        assert_eq!(put(&mut p, "k", &big, 1), Stored::NoSpace);
        assert_eq!(get(&mut p, "k", 1).unwrap(), b"old");
    }

    #[test]
    fn expired_entries_miss_but_stay() {
        let mut b = page(4096, 89);
        let mut p = Page::new(&mut b);
        let k = b"e";
        let mut n = item(sh(k), k, b"v");
        n.expire_on = 50;
        p.write(&n, 10, 0).unwrap();
        assert!(p.read(sh(k), k, 49, false).unwrap().found);
        assert!(!p.read(sh(k), k, 50, false).unwrap().found);
        assert_eq!(p.items().unwrap().len(), 1);
        // Default expiry sentinel.
        n.expire_on = u32::MAX;
        p.write(&n, 10, 7).unwrap();
        assert_eq!(p.read(sh(k), k, 10, false).unwrap().expire_on, 17);
    }

    #[test]
    fn stats_count_reads_and_hits() {
        let mut b = page(4096, 89);
        let mut p = Page::new(&mut b);
        put(&mut p, "a", "1", 1);
        p.read(sh(b"a"), b"a", 1, true).unwrap();
        p.read(sh(b"b"), b"b", 1, true).unwrap();
        assert_eq!(p.stats(), (2, 1));
    }

    #[test]
    fn modseq_conditional_store_matrix() {
        let mut b = page(8192, 89);
        let mut p = Page::new(&mut b);
        let k = b"m";
        let w = |p: &mut Page, val: &[u8], ms: Option<u64>, tomb: bool| {
            let mut n = item(sh(k), k, val);
            n.modseq = ms;
            if tomb {
                n.flags = FLAG_TOMBSTONE;
            }
            p.write(&n, 1, 0).unwrap()
        };
        assert_eq!(w(&mut p, b"", Some(5), true), Stored::Yes); // tombstone(5)
        assert_eq!(w(&mut p, b"", Some(3), true), Stored::Yes); // no-op
        assert!(!p.read(sh(k), k, 1, false).unwrap().found);
        assert_eq!(w(&mut p, b"v", None, false), Stored::Refused);
        assert_eq!(w(&mut p, b"v", Some(4), false), Stored::Refused);
        assert_eq!(w(&mut p, b"v", Some(5), false), Stored::Yes);
        let r = p.read(sh(k), k, 1, false).unwrap();
        assert_eq!((r.found, r.modseq), (true, Some(5)));
        assert_eq!(p.bytes(r.val_off, r.val_len), b"v");
        assert_eq!(w(&mut p, b"", Some(5), true), Stored::Yes); // no-op, value kept
        assert!(p.read(sh(k), k, 1, false).unwrap().found);
        assert_eq!(w(&mut p, b"w", Some(4), false), Stored::Refused);
        assert_eq!(w(&mut p, b"plain", None, false), Stored::Yes);
        assert_eq!(p.read(sh(k), k, 1, false).unwrap().modseq, None);
        assert_eq!(w(&mut p, b"", Some(9), true), Stored::Yes);
        assert!(!p.read(sh(k), k, 1, false).unwrap().found);
    }

    /// SPEC 2.8's worked trace: one 8192-byte page, 89 start slots, 80-byte items.
    #[test]
    fn expunge_thresholds_follow_upstream_trace() {
        let mut b = page(8192, 89);
        let mut p = Page::new(&mut b);
        let val = "v".repeat(50);
        let set = |p: &mut Page, i: u32, now: u32| {
            let key = format!("k{i:03}");
            let len = (key.len() + val.len()) as i64;
            if let Some(plan) = p.plan_expunge(EXPUNGE_LRU, len, now).unwrap() {
                p.apply_expunge(&plan);
                Some(plan.evict.len())
            } else {
                assert_eq!(put(p, &key, &val, now), Stored::Yes);
                None
            }
        };
        for i in 1..=62 {
            assert_eq!(set(&mut p, i, 1000 + i), None);
        }
        assert_eq!(
            (p.num_slots(), p.free_slots(), p.free_data()),
            (89, 27, 5348)
        );
        assert_eq!(set(&mut p, 63, 1063), None);
        assert_eq!(p.free_slots(), 26);
        assert!(get(&mut p, "k001", 1064).is_some());
        // The 64th set expunges: 179 slots, 8 evicted (k002..k009).
        assert_eq!(set(&mut p, 64, 1065), Some(8));
        assert_eq!(put(&mut p, "k064", &val, 1065), Stored::Yes);
        assert_eq!(p.num_slots(), 179);
        assert_eq!(p.items().unwrap().len(), 56);
        assert_eq!((p.free_data(), p.free_bytes()), (5228, 2964));
        assert!(get(&mut p, "k001", 1066).is_some());
        for i in 2..=9 {
            assert!(get(&mut p, &format!("k{i:03}"), 1066).is_none());
        }
        assert!(get(&mut p, "k010", 1066).is_some());
        // purge (mode 0) with nothing expired still grows the table; clear keeps its size.
        let plan = p.plan_expunge(EXPUNGE_EXPIRED, -1, 1066).unwrap().unwrap();
        p.apply_expunge(&plan);
        assert_eq!(p.num_slots(), 359);
        let plan = p.plan_expunge(EXPUNGE_ALL, -1, 1066).unwrap().unwrap();
        p.apply_expunge(&plan);
        assert_eq!((p.num_slots(), p.free_data()), (359, 1468));
        assert!(p.validate(&hash_ok).is_ok());
    }

    /// SPEC 2.8: a write-back cache of one 4096-byte page, 100 sets of 'keyN' => 100 bytes,
    /// writes back 83 entries (each set evicts through a mode-2 expunge first).
    #[test]
    fn small_page_churn_evicts_like_upstream() {
        let mut b = page(4096, 89);
        let mut p = Page::new(&mut b);
        let val = "x".repeat(100);
        let mut evicted = 0;
        for i in 1..=100u32 {
            let key = format!("key{i}");
            let len = (key.len() + val.len()) as i64;
            if let Some(plan) = p.plan_expunge(EXPUNGE_LRU, len, 1000 + i).unwrap() {
                evicted += plan.evict.len();
                p.apply_expunge(&plan);
            }
            assert_eq!(put(&mut p, &key, &val, 1000 + i), Stored::Yes, "set {i}");
        }
        assert_eq!(evicted, 83);
        assert_eq!(p.items().unwrap().len(), 100 - 83);
        assert!(p.validate(&hash_ok).is_ok());
    }

    #[test]
    fn peek_agrees_with_read_and_never_touches() {
        let mut b = page(4096, 89);
        let mut p = Page::new(&mut b);
        put(&mut p, "a", "1", 7);
        let k = b"m";
        let mut n = item(sh(k), k, b"v");
        n.modseq = Some(9);
        p.write(&n, 7, 0).unwrap();
        let size = b.len();
        let peek_at =
            |b: &Vec<u8>, key: &[u8], now| unsafe { peek(b.as_ptr(), size, sh(key), key, now) };
        let got = peek_at(&b, b"a", 7).unwrap();
        assert!(got.found);
        assert_eq!(&b[got.val_off..got.val_off + got.val_len], b"1");
        let got = peek_at(&b, b"m", 7).unwrap();
        assert_eq!((got.found, got.modseq), (true, Some(9)));
        assert_eq!(&b[got.val_off..got.val_off + got.val_len], b"v");
        assert!(!peek_at(&b, b"zz", 7).unwrap().found);
        // A hit whose LRU time is stale needs the lock.
        assert_eq!(peek_at(&b, b"a", 8), None);
        // Garbage never panics and never reads outside the page.
        let mut x: u64 = 12345;
        for _ in 0..2000 {
            let mut g = b.clone();
            for _ in 0..8 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                g[(x % 4096) as usize] = x as u8;
            }
            let _ = unsafe { peek(g.as_ptr(), size, sh(b"a"), b"a", 7) };
        }
    }

    /// get_keys order (issue 16): newest store first, and neither reads (last_access), slot
    /// positions nor expunges (which regrow and refill the slot table) change it.
    #[test]
    fn items_come_newest_stored_first_across_expunges() {
        let keys = |p: &Page| -> Vec<String> {
            p.items_newest_first()
                .unwrap()
                .iter()
                .map(|it| String::from_utf8(p.key(it).to_vec()).unwrap())
                .collect()
        };
        let mut b = page(8192, 89);
        let mut p = Page::new(&mut b);
        let val = "v".repeat(50);
        for i in 0..40 {
            put(&mut p, &format!("key{i}"), &val, 1000);
        }
        let want: Vec<String> = (0..40).rev().map(|i| format!("key{i}")).collect();
        assert_eq!(keys(&p), want, "newest first, not slot order");
        // Reads touch last_access only; an overwrite and a remove move or drop the key.
        assert!(get(&mut p, "key0", 1001).is_some());
        put(&mut p, "key5", "new", 1001);
        p.delete(sh(b"key7"), b"key7").unwrap().unwrap();
        let mut want: Vec<String> = (0..40)
            .rev()
            .filter(|i| *i != 5 && *i != 7)
            .map(|i| format!("key{i}"))
            .collect();
        want.insert(0, "key5".into());
        assert_eq!(keys(&p), want);
        // Mode 0 (purge) regrows the slot table, which moves every key to a new slot.
        let plan = p.plan_expunge(EXPUNGE_EXPIRED, -1, 1002).unwrap().unwrap();
        p.apply_expunge(&plan);
        assert_eq!(p.num_slots(), 179);
        assert_eq!(keys(&p), want);
        // Mode 2 sorts by last_access to evict; the survivors keep their storage order, even
        // the two old entries that reads keep recently used.
        for i in 40..120 {
            assert!(get(&mut p, "key0", 1003 + i).is_some());
            assert!(get(&mut p, "key3", 1003 + i).is_some());
            let key = format!("key{i}");
            let len = (key.len() + val.len()) as i64;
            if let Some(plan) = p.plan_expunge(EXPUNGE_LRU, len, 1003 + i).unwrap() {
                assert!(!plan.evict.is_empty());
                p.apply_expunge(&plan);
            }
            assert_eq!(put(&mut p, &key, &val, 1003 + i), Stored::Yes);
        }
        let got = keys(&p);
        assert!(got.len() < 80, "{got:?}");
        assert_eq!(
            got[got.len() - 2..],
            ["key3".to_string(), "key0".to_string()]
        );
        // Storage order: key0..key39 (less key5 and key7), key5 again, then key40 on.
        let order = |k: &String| -> u32 {
            match k.as_str() {
                "key5" => 2 * 39 + 1,
                _ => 2 * k[3..].parse::<u32>().unwrap(),
            }
        };
        let mut want = got.clone();
        want.sort_by_key(|k| std::cmp::Reverse(order(k)));
        assert_eq!(got, want, "survivors of LRU expunges in storage order");
        assert!(p.validate(&hash_ok).is_ok());
    }

    #[test]
    fn corrupt_slot_is_detected_and_repaired() {
        let mut b = page(4096, 89);
        let mut p = Page::new(&mut b);
        for i in 0..10 {
            put(&mut p, &format!("key{i}"), "value", 5);
        }
        // Point one slot far outside the item area.
        let victim = (0..89).find(|&i| p.slot(i) > 1).unwrap();
        p.set_slot(victim, 4000);
        assert!(p.validate(&hash_ok).is_err());
        let kept = p.repair(89, &hash_ok);
        assert_eq!(kept, 9);
        assert!(p.validate(&hash_ok).is_ok());
        // Garbage header: reinitialised.
        p.wr(H_NUM_SLOTS, 0xFFFF_FFF0);
        assert!(p.check_header().is_err());
        assert_eq!(p.repair(89, &hash_ok), 0);
        assert!(p.validate(&hash_ok).is_ok());
        assert_eq!(p.num_slots(), 89);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A tiny deterministic generator: the page parser must survive any bytes.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..2000 {
            let mut b = page(1024, 17);
            {
                let mut p = Page::new(&mut b);
                for i in 0..(round % 12) {
                    put(&mut p, &format!("k{i}"), "vvvvvvvv", 3);
                }
            }
            let flips = 1 + next() % 16;
            for _ in 0..flips {
                let at = (next() % 1024) as usize;
                b[at] = next() as u8;
            }
            let mut p = Page::new(&mut b);
            let _ = p.validate(&hash_ok);
            let _ = p.items();
            let _ = p.plan_expunge(EXPUNGE_LRU, 10, 3);
            let _ = p.read(sh(b"k1"), b"k1", 3, true);
            let _ = p.write(&item(sh(b"k2"), b"k2", b"zz"), 3, 0);
            let _ = p.delete(sh(b"k3"), b"k3");
            p.repair(17, &hash_ok);
            assert!(p.validate(&hash_ok).is_ok(), "round {round}");
        }
    }
}
