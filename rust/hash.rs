//! Key hashing: xxh3-64 of the key's bytes picks the page and the page-local slot hash.

use xxhash_rust::xxh3::xxh3_64;

/// `(page, slot_hash)` for a key. The page comes from the whole hash modulo the page count;
/// the slot hash from the high 32 bits, so the two are independent for any page count.
#[inline]
pub fn hash_key(key: &[u8], num_pages: u32) -> (u32, u32) {
    let h = xxh3_64(key);
    let page = (h % u64::from(num_pages.max(1))) as u32;
    (page, slot_part(h))
}

/// Only the slot hash of [`hash_key`], for a key whose page is known (multi_get's names live
/// on their page key's page), without the division that picks a page.
#[inline]
pub fn slot_hash(key: &[u8]) -> u32 {
    slot_part(xxh3_64(key))
}

#[inline]
fn slot_part(h: u64) -> u32 {
    (h >> 32) as u32
}

/// Does an entry with this key and slot hash belong on page `page`? The slot hash is always
/// that of the whole key; the page is the whole key's, or, for an entry stored by
/// `multi_set` (key `"$page_key-$key"`, placed on the page of `$page_key`), that of the key
/// up to one of its `-`s. Used by validation and repair, never on the hot path.
pub fn belongs_on(key: &[u8], slot_hash: u32, page: u32, num_pages: u32) -> bool {
    let (p, s) = hash_key(key, num_pages);
    if s != slot_hash {
        return false;
    }
    p == page
        || key
            .iter()
            .enumerate()
            .any(|(i, &b)| b == b'-' && hash_key(&key[..i], num_pages).0 == page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xxh3_matches_reference_vector() {
        // Reference value from `xxhsum -H3` for "abc".
        assert_eq!(xxh3_64(b"abc"), 0x78af5f94892f3950);
    }

    #[test]
    fn slot_hash_is_hash_keys_slot_part() {
        for k in [&b""[..], b"a", b"user-42-name"] {
            assert_eq!(slot_hash(k), hash_key(k, 89).1);
        }
    }

    #[test]
    fn multi_set_entries_belong_on_their_page_keys_page() {
        let n = 89;
        let full = b"user-42-name";
        let (_, s) = hash_key(full, n);
        for prefix in [&b"user"[..], &b"user-42"[..]] {
            let page = hash_key(prefix, n).0;
            assert!(belongs_on(full, s, page, n));
        }
        assert!(belongs_on(full, s, hash_key(full, n).0, n));
        assert!(!belongs_on(full, s ^ 1, hash_key(full, n).0, n));
        let elsewhere = (0..n)
            .find(|&p| {
                p != hash_key(full, n).0
                    && p != hash_key(b"user", n).0
                    && p != hash_key(b"user-42", n).0
            })
            .unwrap();
        assert!(!belongs_on(full, s, elsewhere, n));
    }

    #[test]
    fn page_is_in_range_and_stable() {
        for n in [1u32, 2, 89, 1000] {
            for k in ["", "a", "abc", "hello world"] {
                let (p, s) = hash_key(k.as_bytes(), n);
                assert!(p < n);
                assert_eq!(hash_key(k.as_bytes(), n), (p, s));
            }
        }
    }
}
