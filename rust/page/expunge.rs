//! Expunging: which entries an expunge keeps (upstream's thresholds), and the compacting
//! rebuild that carries it out.

use super::*;
use crate::time::is_expired;

/// What an expunge decided: the new slot count, the items that stay (in storage order), the
/// items that go (expired ones in slot order, then the least recently used, oldest first).
#[derive(Debug, Clone, Default)]
pub struct ExpungePlan {
    pub new_num_slots: u32,
    pub keep: Vec<Item>,
    pub evict: Vec<Item>,
}

/// An expunge grows the slot table (to 2n+1 slots) when more than this share of its slots
/// is kept. Upstream grows at 30%; its slots are 4 bytes and ours 8, so the same item count
/// against a table of half as many slots keeps the table at upstream's size in bytes (and
/// the page's item area at upstream's size), at twice upstream's load, which the slot tags
/// make cheap to probe.
pub(super) const GROW_KEPT: f64 = 0.6;

/// Expunge modes (upstream's numbering).
pub const EXPUNGE_EXPIRED: i32 = 0;
pub const EXPUNGE_ALL: i32 = 1;
pub const EXPUNGE_LRU: i32 = 2;

impl Page<'_> {
    /// Decides an expunge (upstream's thresholds, but for table growth: see `GROW_KEPT`).
    /// `len >= 0` is the size of an
    /// item about to be written: if there is room for it and enough never-used slots, nothing
    /// is done (`None`). Mode 0 drops expired entries, 1 everything, 2 also evicts the least
    /// recently used until under 60% of the data area is used.
    pub fn plan_expunge(&self, mode: i32, len: i64, now: u32) -> PageResult<Option<ExpungePlan>> {
        self.check_header()?;
        let n = self.num_slots();
        if len >= 0 && self.has_room(len as u64) {
            return Ok(None);
        }
        // Memory: an expunge runs on every set that needs room, so what it allocates is
        // kept small and sized once (no doubling): the items (sized by the live slot count),
        // the evicted ones, and for the LRU order 4-byte positions instead of the items.
        let mut plan = ExpungePlan {
            keep: Vec::with_capacity(n.saturating_sub(self.free_slots()).min(n) as usize),
            ..ExpungePlan::default()
        };
        let mut used_data: u64 = 0;
        for i in 0..n as usize {
            let off = self.slot(i);
            if off <= SLOT_DELETED {
                continue;
            }
            let it = self.item(i, off)?;
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
        if kept_frac > GROW_KEPT
            && (data_size.saturating_sub(used_data) > (u64::from(n) + 1) * SLOT_BYTES as u64
                || mode == EXPUNGE_LRU)
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
            // Oldest first; ties keep slot order (a stable sort, of positions in `keep`).
            let mut order: Vec<u32> = (0..plan.keep.len() as u32).collect();
            order.sort_by_key(|&i| plan.keep[i as usize].last_access);
            let mut first_kept = 0;
            while used_data >= limit && first_kept < order.len() {
                used_data -= plan.keep[order[first_kept] as usize].size() as u64;
                first_kept += 1;
            }
            let gone = &mut order[..first_kept];
            plan.evict.reserve_exact(gone.len());
            plan.evict
                .extend(gone.iter().map(|&i| plan.keep[i as usize]));
            gone.sort_unstable();
            let mut gone = gone.iter().copied().peekable();
            let mut pos = 0u32;
            plan.keep.retain(|_| {
                let drop = gone.next_if_eq(&pos).is_some();
                pos += 1;
                !drop
            });
        }
        // Storage order, as `rebuild` places them (offsets are unique: any sort will do).
        plan.keep.sort_unstable_by_key(|it| it.off);
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
        // In storage order; a plan's `keep` already is (no copy then).
        let sorted: Vec<Item>;
        let items = if items.windows(2).all(|w| w[0].off <= w[1].off) {
            items
        } else {
            let mut v = items.to_vec();
            v.sort_unstable_by_key(|it| it.off);
            sorted = v;
            &sorted
        };
        let ps = self.page_size() as usize;
        let start = data_start(num_slots) as usize;
        let n = num_slots as usize;
        let (used, placed) =
            placements(items, start, ps, n).fold((0, 0), |(u, p), (it, _)| (u + it.size(), p + 1));
        // The kept items are compacted first (the slot table may grow over them), then the
        // slot table is filled.
        if placed < items.len() || !self.compact_in_place(items, start) {
            // Not all of them fit, or they overlap (a page being repaired): through a copy.
            let mut data: Vec<u8> = Vec::with_capacity(used);
            for (it, _) in placements(items, start, ps, n) {
                let raw = ITEM_HEADER + it.key_len + it.raw_val_len;
                data.extend_from_slice(&self.b[it.off..it.off + raw]);
                data.resize(data.len() + (it.size() - raw), 0);
            }
            self.b[start..start + used].copy_from_slice(&data);
        }
        let (nreads, nhits) = self.stats();
        self.b[PAGE_HEADER..start].fill(0); // every slot SLOT_EMPTY
        for (it, off) in placements(items, start, ps, n) {
            let mut i = it.slot_hash as usize % n;
            while self.slot(i) != SLOT_EMPTY {
                i = (i + 1) % n;
            }
            // The access delta moves with its item.
            let delta = it.last_access.saturating_sub(it.stored_on);
            self.set_slot(i, off as u32, meta(it.slot_hash, delta));
        }
        let fd = start + used;
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

    /// Moves `items` (in storage order) next to each other from `start` on, within the page
    /// (no copy of the item area: an expunge allocates little). Only for items that do not
    /// overlap, lie after the current slot table and all fit; returns false, changing
    /// nothing, otherwise.
    ///
    /// An item's move (new offset minus old) never grows along the storage order: the gaps
    /// before it only add up. So the items that move up (out of the way of a grown slot
    /// table) come first: they move last, from the end, each into room already vacated, and
    /// the others move down in order.
    fn compact_in_place(&mut self, items: &[Item], start: usize) -> bool {
        let ps = self.page_size() as usize;
        let mut end = data_start(self.num_slots()) as usize;
        for it in items {
            if it.off < end || it.off + it.size() > ps {
                return false;
            }
            end = it.off + it.size();
        }
        if start + items.iter().map(Item::size).sum::<usize>() > ps {
            return false;
        }
        let mut new_off = start;
        let mut up = 0;
        while up < items.len() && new_off > items[up].off {
            new_off += items[up].size();
            up += 1;
        }
        let split_off = new_off;
        for it in &items[up..] {
            self.move_item(it, new_off);
            new_off += it.size();
        }
        let mut new_off = split_off;
        for it in items[..up].iter().rev() {
            new_off -= it.size();
            self.move_item(it, new_off);
        }
        true
    }

    /// Moves item `it` to `to`, zeroing its padding.
    fn move_item(&mut self, it: &Item, to: usize) {
        let raw = ITEM_HEADER + it.key_len + it.raw_val_len;
        self.b.copy_within(it.off..it.off + raw, to);
        self.b[to + raw..to + it.size()].fill(0);
    }

    /// Carries out a plan from [`Page::plan_expunge`] on the unchanged page.
    pub fn apply_expunge(&mut self, plan: &ExpungePlan) {
        self.rebuild(plan.new_num_slots, &plan.keep);
    }
}

/// Where [`Page::rebuild`] puts `items` (in storage order) in a page of `ps` bytes whose item
/// area starts at `start`, with `n` slots: each item that fits and its new offset. Items that
/// do not fit (only when repairing a corrupt page) are skipped.
fn placements(
    items: &[Item],
    start: usize,
    ps: usize,
    n: usize,
) -> impl Iterator<Item = (&Item, usize)> {
    let (mut used, mut placed) = (0usize, 0usize);
    items.iter().filter_map(move |it| {
        let l = it.size();
        if start + used + l > ps || placed >= n {
            return None;
        }
        let off = start + used;
        used += l;
        placed += 1;
        Some((it, off))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(key: &[u8]) -> u32 {
        crate::hash::hash_key(key, 1).1
    }

    fn put(p: &mut Page, key: &str, val: &str, now: u32) -> Stored {
        let k = key.as_bytes();
        let it = NewItem {
            slot_hash: sh(k),
            key: k,
            val: val.as_bytes(),
            expire_on: 0,
            flags: 0,
            modseq: None,
        };
        p.write(&it, now, 0).unwrap()
    }

    fn get(p: &mut Page, key: &str, now: u32) -> Option<Vec<u8>> {
        let k = key.as_bytes();
        let r = p.read(sh(k), k, now, false).unwrap();
        r.found.then(|| p.bytes(r.val_off, r.val_len).to_vec())
    }

    /// The in-place compaction keeps every kept entry's bytes, whether the items move down
    /// (over evicted ones) or up (out of the way of a grown slot table), and leaves a page
    /// that validates and keeps the storage order.
    #[test]
    fn in_place_compaction_keeps_the_kept_entries() {
        let mut b = vec![0u8; 16384];
        let mut p = Page::new(&mut b);
        p.init(89);
        let val = |i: u32| format!("{i}:").repeat(1 + i as usize % 13);
        let mut alive: Vec<u32> = Vec::new();
        let (mut grew, mut moved_up) = (0, 0);
        for i in 1..=2000u32 {
            let key = format!("k{i}");
            if i % 7 == 0 {
                // Touch an older entry now and then: LRU eviction then leaves gaps.
                let j = alive[alive.len() / 3];
                assert!(get(&mut p, &format!("k{j}"), 1000 + i).is_some());
            }
            let len = (key.len() + val(i).len()) as i64;
            if let Some(plan) = p.plan_expunge(EXPUNGE_LRU, len, 1000 + i).unwrap() {
                let old_start = data_start(p.num_slots()) as usize;
                if plan.new_num_slots > p.num_slots() {
                    grew += 1;
                    let first = plan.keep.first().map_or(usize::MAX, |it| it.off);
                    if first < data_start(plan.new_num_slots) as usize {
                        moved_up += 1;
                    }
                }
                assert!(plan.keep.windows(2).all(|w| w[0].off < w[1].off));
                assert!(plan.keep.first().is_none_or(|it| it.off >= old_start));
                let gone: Vec<String> = plan
                    .evict
                    .iter()
                    .map(|it| String::from_utf8(p.key(it).to_vec()).unwrap())
                    .collect();
                p.apply_expunge(&plan);
                alive.retain(|j| !gone.contains(&format!("k{j}")));
                assert!(
                    p.validate(&|k: &[u8], s: u32| sh(k) == s).is_ok(),
                    "set {i}"
                );
            }
            assert_eq!(put(&mut p, &key, &val(i), 1000 + i), Stored::Yes, "set {i}");
            alive.push(i);
        }
        assert!(grew > 0 && moved_up > 0, "grew {grew}, moved up {moved_up}");
        for &j in &alive {
            assert_eq!(
                get(&mut p, &format!("k{j}"), 5000),
                Some(val(j).into_bytes()),
                "k{j}"
            );
        }
        let newest: Vec<u32> = p
            .items_newest_first()
            .unwrap()
            .iter()
            .map(|it| {
                std::str::from_utf8(&p.key(it)[1..])
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        let mut by_age = alive.clone();
        by_age.sort_unstable_by(|a, b| b.cmp(a));
        assert_eq!(newest, by_age);
    }
}
