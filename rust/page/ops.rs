//! Operations under the page lock: probing, reading, storing, deleting, listing.

use super::*;
use crate::platform;
use crate::time::is_expired;

impl Page<'_> {
    /// Linear probing from `slot_hash % num_slots`. Returns the slot index and, when the key
    /// is present, its item. When absent: the empty slot that stopped the probe, or in write
    /// mode the first deleted slot seen (reused); `None` when every slot was probed.
    pub(super) fn find_slot(
        &self,
        slot_hash: u32,
        key: &[u8],
        write: bool,
    ) -> PageResult<Option<(usize, Option<Item>)>> {
        let n = self.num_slots() as usize;
        let mut i = slot_hash as usize % n;
        let mut first_deleted = None;
        let tag = tag_of(slot_hash);
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
                // A slot whose tag differs cannot hold the key: its item is not read.
                _ if self.slot_meta(i) >> 24 != tag => {}
                off => {
                    let it = self.item(i, off)?;
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
    /// tombstone. A hit updates the slot's access time (the LRU touch). With `stats`, counts
    /// the read and the hit.
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
        let (slot, it) = match self.find_slot(slot_hash, key, false)? {
            Some((slot, Some(it))) => (slot, it),
            _ => return Ok(ReadOut::MISS),
        };
        if is_expired(it.expire_on, now) || it.is_tombstone() {
            return Ok(ReadOut::MISS);
        }
        // Skip the store when it would not change anything: readers then leave the page's
        // cache lines clean.
        let m = meta(slot_hash, access_delta(it.stored_on, now));
        if self.slot_meta(slot) != m {
            self.set_slot_meta(slot, m);
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
        self.set_slot(slot, SLOT_DELETED, 0);
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
        self.write_checked(new, now, default_expire)
    }

    /// [`Page::write`] when there is room for the entry without an expunge (see
    /// `plan_expunge`), else `None` and nothing changed: `set`'s common case in one pass.
    pub fn write_if_room(
        &mut self,
        new: &NewItem<'_>,
        now: u32,
        default_expire: u32,
    ) -> PageResult<Option<Stored>> {
        self.check_header()?;
        if !self.has_room((new.key.len() + new.val.len()) as u64) {
            return Ok(None);
        }
        self.write_checked(new, now, default_expire).map(Some)
    }

    /// [`Page::write`] after `check_header` passed.
    fn write_checked(
        &mut self,
        new: &NewItem<'_>,
        now: u32,
        default_expire: u32,
    ) -> PageResult<Stored> {
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
        self.prefetch_append(len);
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
        self.wr(off + I_STORED_ON, now);
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
        self.set_slot(slot, off as u32, meta(new.slot_hash, 0));
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

    /// Hints the CPU to fetch the lines a store of `len` bytes at the end of the item area
    /// will write: they have usually not been touched since the page was last compacted,
    /// so their fetch from memory overlaps with the slot search instead of stalling the
    /// copy (about a sixth of an overwriting set's time, measured).
    fn prefetch_append(&self, len: u64) {
        let start = self.free_data() as usize;
        let end = start.saturating_add(len as usize).min(self.b.len());
        let base = self.b.as_ptr();
        let mut at = start & !63;
        while at < end {
            platform::prefetch_write(base.wrapping_add(at));
            at += 64;
        }
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
                v.push(self.item(i, off)?);
            }
        }
        Ok(v)
    }

    /// Every item, most recently stored first. Items are appended as they are stored and
    /// `Page::rebuild` keeps their relative order, so this is the order of the last store of
    /// each key, newest first; neither the hash nor the clock has a say in it. `get_keys` lists
    /// a page this way (upstream lists slot order, which with its additive hash often puts a
    /// run of recently stored, similarly named keys first; CHI's `arbitrary` discard policy and
    /// its test suite depend on that; see `collect_keys` in cache.rs).
    pub fn items_newest_first(&self) -> PageResult<Vec<Item>> {
        let mut v = self.items()?;
        v.sort_unstable_by_key(|it| std::cmp::Reverse(it.off));
        Ok(v)
    }
}
