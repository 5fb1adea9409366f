//! Full validation of a page and the repair of one that failed it.

use super::*;

impl Page<'_> {
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
                    let it = self.item(i, off)?;
                    let key = self.key(&it);
                    if !hash_ok(key, it.slot_hash) {
                        return Err(Corrupt(format!(
                            "item at offset {off} is not in the slot its key hashes to"
                        )));
                    }
                    if self.slot_meta(i) >> 24 != tag_of(it.slot_hash) {
                        return Err(Corrupt(format!(
                            "slot {i} has a tag that does not match its item's hash"
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
            let it = match self.item_within(off, self.slot_meta(i), lo, ps) {
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
