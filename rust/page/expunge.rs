//! Expunging: which entries an expunge keeps (upstream's thresholds), and the compacting
//! rebuild that carries it out.

use super::*;
use crate::time::is_expired;

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

impl Page<'_> {
    /// Decides an expunge (upstream's thresholds, exactly). `len >= 0` is the size of an
    /// item about to be written: if there is room for it and enough never-used slots, nothing
    /// is done (`None`). Mode 0 drops expired entries, 1 everything, 2 also evicts the least
    /// recently used until under 60% of the data area is used.
    pub fn plan_expunge(&self, mode: i32, len: i64, now: u32) -> PageResult<Option<ExpungePlan>> {
        self.check_header()?;
        let n = self.num_slots();
        if len >= 0 && self.has_room(len as u64) {
            return Ok(None);
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

    /// Is there room for an item of `len` key + value bytes without an expunge: enough free
    /// bytes, and more than 30% of the slots never used (upstream's test). The header must
    /// have passed [`Page::check_header`].
    pub(super) fn has_room(&self, len: u64) -> bool {
        let unused = f64::from(self.free_slots() - self.old_slots()) / f64::from(self.num_slots());
        let need = roundlen(ITEM_HEADER as u64 + len);
        unused > 0.3 && u64::from(self.free_bytes()) >= need
    }

    /// Rewrites the page with `num_slots` slots holding exactly `items` (which must be items
    /// of this page, already validated), compacting the item area. Items that do not fit (only
    /// possible when repairing a corrupt page) are dropped; returns how many were placed.
    /// The item area keeps the items' storage order (whatever order `items` is in), so that
    /// [`Page::items_newest_first`] survives expunges.
    pub(super) fn rebuild(&mut self, num_slots: u32, items: &[Item]) -> usize {
        let mut items = items.to_vec();
        items.sort_unstable_by_key(|it| it.off);
        let ps = self.page_size() as usize;
        let start = data_start(num_slots) as usize;
        let n = num_slots as usize;
        // (offset, meta) per slot; the access delta moves with its item.
        let mut slots = vec![(SLOT_EMPTY, 0u32); n];
        let mut data: Vec<u8> = Vec::with_capacity(ps - start);
        let mut placed = 0;
        for it in &items {
            let l = it.size();
            let raw = ITEM_HEADER + it.key_len + it.raw_val_len;
            if start + data.len() + l > ps || placed >= n {
                continue;
            }
            let mut i = it.slot_hash as usize % n;
            while slots[i].0 != SLOT_EMPTY {
                i = (i + 1) % n;
            }
            let delta = it.last_access.saturating_sub(it.stored_on);
            slots[i] = ((start + data.len()) as u32, meta(it.slot_hash, delta));
            data.extend_from_slice(&self.b[it.off..it.off + raw]);
            data.resize(data.len() + (l - raw), 0);
            placed += 1;
        }
        let (nreads, nhits) = self.stats();
        self.b[PAGE_HEADER..start].copy_from_slice(
            &slots
                .iter()
                .flat_map(|&(off, m)| {
                    let mut b = [0u8; SLOT_BYTES];
                    b[..4].copy_from_slice(&off.to_ne_bytes());
                    b[4..].copy_from_slice(&m.to_ne_bytes());
                    b
                })
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
}
