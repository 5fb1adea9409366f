//! The lock-free lookup used by sequence-lock readers, and the lock-free LRU touch.

use super::*;
use crate::time::is_expired;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// An access-time update a lock-free hit asks for: slot entry at `entry` (page-relative,
/// 8-byte aligned) seen holding `seen`, to become `new` (same offset and tag, newer delta).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Touch {
    pub entry: usize,
    pub seen: u64,
    pub new: u64,
}

/// A slot entry's 8 bytes as one u64 in memory order (offset word first).
#[inline]
fn entry_word(off: u32, meta: u32) -> u64 {
    let mut b = [0u8; SLOT_BYTES];
    b[..4].copy_from_slice(&off.to_ne_bytes());
    b[4..].copy_from_slice(&meta.to_ne_bytes());
    u64::from_ne_bytes(b)
}

/// A lookup without the page lock, for readers using the page's change counter as a
/// sequence lock: the bytes may be changing under us, so each word is read once
/// (volatile), every offset is checked against the page before use, and the answer is only
/// trusted if the change counter is unchanged afterwards (the caller checks). `None` means
/// "take the lock": the view was inconsistent. A hit whose slot records an older access
/// than `now` comes with the [`Touch`] that [`touch`] applies once the view is confirmed.
///
/// This is [`Page::read`]'s probe, written separately because it may not hold a reference
/// to bytes another process is writing.
///
/// # Safety
/// `base` points at `page_size` readable bytes that stay mapped during the call, and is
/// 8-byte aligned.
pub unsafe fn peek(
    base: *const u8,
    page_size: usize,
    slot_hash: u32,
    key: &[u8],
    now: u32,
) -> Option<(ReadOut, Option<Touch>)> {
    let rd = |off: usize| -> Option<u32> {
        (off + 4 <= page_size).then(|| std::ptr::read_volatile(base.add(off) as *const u32))
    };
    if rd(H_MAGIC)? != PAGE_MAGIC {
        return None;
    }
    let n = rd(H_NUM_SLOTS)? as usize;
    let start = PAGE_HEADER.checked_add(SLOT_BYTES.checked_mul(n)?)?;
    let free_data = rd(H_FREE_DATA)? as usize;
    if n == 0 || start > page_size || free_data > page_size || free_data < start {
        return None;
    }
    let tag = tag_of(slot_hash);
    let mut i = slot_hash as usize % n;
    for _ in 0..n {
        let entry = PAGE_HEADER + SLOT_BYTES * i;
        match rd(entry)? {
            SLOT_EMPTY => return Some((ReadOut::MISS, None)),
            SLOT_DELETED => {}
            off => {
                let meta = rd(entry + 4)?;
                if meta >> 24 == tag {
                    if let Some(found) = peek_item(base, start, free_data, off, slot_hash, key, now)
                    {
                        let (out, stored_on) = found?;
                        let want = super::meta(slot_hash, access_delta(stored_on, now));
                        // Only ever forward: a clock that went back leaves the time alone.
                        let touch = (out.found
                            && (want & MAX_ACCESS_DELTA) > (meta & MAX_ACCESS_DELTA))
                            .then(|| Touch {
                                entry,
                                seen: entry_word(off, meta),
                                new: entry_word(off, want),
                            });
                        return Some((out, touch));
                    }
                }
            }
        }
        i += 1;
        if i == n {
            i = 0;
        }
    }
    Some((ReadOut::MISS, None))
}

/// The item at `off` if it holds `key`: `None` when it does not (probing goes on),
/// `Some(None)` when the view is inconsistent, else what a read returns and the item's store
/// time.
///
/// # Safety
/// As [`peek`]; `start <= free_data <= page_size`.
unsafe fn peek_item(
    base: *const u8,
    start: usize,
    free_data: usize,
    off: u32,
    slot_hash: u32,
    key: &[u8],
    now: u32,
) -> Option<Option<(ReadOut, u32)>> {
    let rd = |o: usize| std::ptr::read_volatile(base.add(o) as *const u32);
    let off = off as usize;
    if off % 4 != 0 || off < start || off + ITEM_HEADER > free_data {
        return Some(None);
    }
    if rd(off + I_SLOT_HASH) != slot_hash || rd(off + I_KEY_LEN) as usize != key.len() {
        return None;
    }
    let raw_val_len = rd(off + I_VAL_LEN) as usize;
    let key_off = off + ITEM_HEADER;
    if key.len() + raw_val_len > free_data - key_off {
        return Some(None);
    }
    if !same_bytes(base.add(key_off), key) {
        return None;
    }
    let flags = rd(off + I_FLAGS);
    let expire_on = rd(off + I_EXPIRE_ON);
    let stored_on = rd(off + I_STORED_ON);
    if is_expired(expire_on, now) || flags & FLAG_TOMBSTONE != 0 {
        return Some(Some((ReadOut::MISS, stored_on)));
    }
    let mut val_off = key_off + key.len();
    let mut val_len = raw_val_len;
    let mut modseq = None;
    if flags & FLAG_HASMODSEQ != 0 {
        if raw_val_len < MODSEQ_LEN {
            return Some(None);
        }
        let mut w = [0u8; 8];
        for (j, b) in w.iter_mut().enumerate() {
            *b = std::ptr::read_volatile(base.add(val_off + j));
        }
        modseq = Some(u64::from_ne_bytes(w));
        val_off += MODSEQ_LEN;
        val_len -= MODSEQ_LEN;
    }
    let out = ReadOut {
        found: true,
        flags,
        expire_on,
        val_off,
        val_len,
        modseq,
    };
    Some(Some((out, stored_on)))
}

/// Do the bytes at `at` equal `want`? Read with volatile loads (the bytes may be changing:
/// a wrong answer is caught by the caller's sequence check), four at a time.
///
/// # Safety
/// `at` is 4-byte aligned and `want.len()` bytes from it are readable.
#[inline]
unsafe fn same_bytes(at: *const u8, want: &[u8]) -> bool {
    let mut chunks = want.chunks_exact(4);
    let mut p = at;
    for c in &mut chunks {
        let got = std::ptr::read_volatile(p as *const u32);
        if got != u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) {
            return false;
        }
        p = p.add(4);
    }
    chunks
        .remainder()
        .iter()
        .enumerate()
        .all(|(j, &b)| std::ptr::read_volatile(p.add(j)) == b)
}

/// Applies a [`Touch`] without the page lock: one compare-and-swap of the whole slot entry,
/// so it lands only if the entry still holds exactly the offset, tag and access time the
/// reader saw. If a writer moved things meanwhile the swap fails (or, should the bytes there
/// happen to be equal, it changes only an access time), and nothing else can be written.
///
/// # Safety
/// `base` points at `page_size` writable bytes that stay mapped during the call, and is
/// 8-byte aligned.
pub unsafe fn touch(base: *mut u8, page_size: usize, t: &Touch) {
    if t.entry % SLOT_BYTES != 0 || t.entry + SLOT_BYTES > page_size {
        return;
    }
    // SAFETY: in bounds and 8-byte aligned (checked above, base is 8-byte aligned); other
    // processes only access this word with aligned loads, stores and this same CAS.
    let word = &*(base.add(t.entry) as *const AtomicU64);
    let _ = word.compare_exchange(t.seen, t.new, Ordering::Relaxed, Ordering::Relaxed);
}

/// Counts a lock-free read (and hit) in the page header's statistics counters with atomic
/// adds. They are fixed words of the header, never item bytes; an expunge of the page at the
/// same moment (which rewrites the header under the lock) may lose the count.
///
/// # Safety
/// `base` points at `page_size` writable bytes that stay mapped during the call, and is
/// 4-byte aligned.
pub unsafe fn count_read(base: *mut u8, page_size: usize, hit: bool) {
    if page_size < PAGE_HEADER {
        return;
    }
    // SAFETY: both counters lie in the page header (checked above), 4-byte aligned.
    let counter = |off: usize| &*(base.add(off) as *const AtomicU32);
    counter(H_NREADS).fetch_add(1, Ordering::Relaxed);
    if hit {
        counter(H_NREADHITS).fetch_add(1, Ordering::Relaxed);
    }
}
