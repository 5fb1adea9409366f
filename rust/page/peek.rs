//! The lock-free lookup used by sequence-lock readers.

use super::*;
use crate::time::is_expired;

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
