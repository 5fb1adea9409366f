//! The C ABI: the only `extern "C"` surface of the engine (xs/fastmmap.h is generated from
//! this file by cbindgen).
//!
//! Conventions: functions returning `int` give 0 on success and -1 on error, and then
//! `fc_last_error` holds the message. No Rust panic crosses this boundary: each body runs
//! under `catch_unwind` and a panic becomes an error ("internal error: ...").

use crate::cache::{
    Cache, Evicted, NewItem, ReadOut, FLAG_HASMODSEQ, FLAG_ISDIRTY, FLAG_TOMBSTONE, FLAG_UNDEF,
    FLAG_UTF8KEY, FLAG_UTF8VAL,
};
use crate::time;
use std::ffi::{c_char, c_int, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Item flag: a write-back entry not yet written (Perl layer).
pub const FC_ISDIRTY: u32 = 1;
/// Item flag: the value carries an 8-byte modseq (set by the engine).
pub const FC_HASMODSEQ: u32 = 1 << 27;
/// Item flag: the entry is a tombstone (set by the engine).
pub const FC_TOMBSTONE: u32 = 1 << 28;
/// Item flag: the value was undef, stored as empty (set by the XS layer).
pub const FC_UNDEF: u32 = 1 << 29;
/// Item flag: the key had Perl's UTF-8 flag (set by the XS layer).
pub const FC_UTF8KEY: u32 = 1 << 30;
/// Item flag: the value had Perl's UTF-8 flag (set by the XS layer).
pub const FC_UTF8VAL: u32 = 0x8000_0000;

const _: () = assert!(
    FC_ISDIRTY == FLAG_ISDIRTY
        && FC_HASMODSEQ == FLAG_HASMODSEQ
        && FC_TOMBSTONE == FLAG_TOMBSTONE
        && FC_UNDEF == FLAG_UNDEF
        && FC_UTF8KEY == FLAG_UTF8KEY
        && FC_UTF8VAL == FLAG_UTF8VAL
);

/// An opaque cache handle: one per Perl cache object.
pub struct FcCache {
    cache: Cache,
    error: CString,
    warning: CString,
}

/// What `fc_read` found.
#[repr(C)]
pub struct FcReadResult {
    /// The value's bytes, inside the locked page: copy them before unlocking.
    pub val: *const u8,
    /// Length of the value (any modseq prefix already split off).
    pub val_len: usize,
    /// The flags stored with the entry, unmodified.
    pub flags: u32,
    /// 1 for a live entry; 0 for a miss, an expired entry or a tombstone.
    pub found: u32,
    /// 0 on a miss.
    pub expire_on: u32,
    /// 1 when `modseq` is valid.
    pub has_modseq: u32,
    pub modseq: u64,
}

/// An entry from `fc_expunge` or `fc_collect_keys`.
#[repr(C)]
pub struct FcItem {
    /// Key bytes, in a buffer owned by the handle (valid until the next `fc_expunge`,
    /// `fc_collect_keys` or `fc_close`).
    pub key: *const u8,
    pub key_len: usize,
    /// Value bytes (empty when values were not asked for), same lifetime as `key`.
    pub val: *const u8,
    pub val_len: usize,
    pub last_access: u32,
    pub expire_on: u32,
    /// The flags stored with the entry, unmodified.
    pub flags: u32,
    pub has_modseq: u32,
    pub modseq: u64,
}

impl FcCache {
    fn set_error(&mut self, msg: &str) {
        // Messages never contain NUL (they are our own text and paths, which cannot).
        self.error = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Runs `f` on the handle with errors and panics turned into -1 + `fc_last_error`.
fn call(c: *mut FcCache, f: impl FnOnce(&mut Cache) -> crate::error::Result<()>) -> c_int {
    // SAFETY: the caller passes a handle from fc_new that was not closed, or NULL.
    let Some(h) = (unsafe { c.as_mut() }) else {
        return -1;
    };
    match catch_unwind(AssertUnwindSafe(|| f(&mut h.cache))) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            h.set_error(e.message());
            -1
        }
        Err(p) => {
            h.set_error(&format!(
                "Cache::FastMmap internal error: {}",
                panic_message(&*p)
            ));
            -1
        }
    }
}

/// Bytes from a (pointer, length) pair; NULL with length 0 is the empty string.
///
/// # Safety
/// `p` points at `len` readable bytes, or `len` is 0.
unsafe fn bytes<'a>(p: *const u8, len: usize) -> &'a [u8] {
    if len == 0 || p.is_null() {
        &[]
    } else {
        std::slice::from_raw_parts(p, len)
    }
}

/// Writes `v` through `out` when it is not NULL.
fn put<T>(out: *mut T, v: T) {
    // SAFETY: the caller passes NULL or a valid pointer to a T.
    if let Some(o) = unsafe { out.as_mut() } {
        *o = v;
    }
}

/// Called once when the XS module is loaded: makes a caught panic silent (its message
/// reaches the user through `fc_last_error` and a croak instead of on stderr).
#[no_mangle]
pub extern "C" fn fc_library_init() {
    let _ = catch_unwind(|| std::panic::set_hook(Box::new(|_| {})));
}

/// A new handle with upstream's default parameters. NULL only if memory ran out.
#[no_mangle]
pub extern "C" fn fc_new() -> *mut FcCache {
    catch_unwind(|| {
        Box::into_raw(Box::new(FcCache {
            cache: Cache::new(),
            error: CString::default(),
            warning: CString::default(),
        }))
    })
    .unwrap_or(std::ptr::null_mut())
}

/// A new handle on the same open share file, with the same parameters and nothing
/// locked; NULL if `c` is NULL or not initialised, or on failure.
///
/// # Safety
/// `c` is NULL or a live handle from `fc_new`, not in use by another thread meanwhile.
#[no_mangle]
pub unsafe extern "C" fn fc_clone(c: *const FcCache) -> *mut FcCache {
    // SAFETY: c is a live handle or NULL (caller's contract).
    let Some(h) = (unsafe { c.as_ref() }) else {
        return std::ptr::null_mut();
    };
    catch_unwind(AssertUnwindSafe(|| match h.cache.duplicate() {
        Ok(cache) => Box::into_raw(Box::new(FcCache {
            cache,
            error: CString::default(),
            warning: CString::default(),
        })),
        Err(_) => std::ptr::null_mut(),
    }))
    .unwrap_or(std::ptr::null_mut())
}

/// Unlocks, unmaps, closes and frees the handle. NULL is ignored.
///
/// # Safety
/// `c` is NULL or a live handle from `fc_new`.
#[no_mangle]
pub unsafe extern "C" fn fc_close(c: *mut FcCache) {
    if c.is_null() {
        return;
    }
    // SAFETY: c came from fc_new (Box::into_raw) and is closed only once (caller's contract).
    let h = unsafe { Box::from_raw(c) };
    let _ = catch_unwind(AssertUnwindSafe(move || drop(h)));
}

/// The message of the last failed call on this handle (owned by the handle).
///
/// # Safety
/// `c` is NULL or a live handle from `fc_new`.
#[no_mangle]
pub unsafe extern "C" fn fc_last_error(c: *const FcCache) -> *const c_char {
    // SAFETY: c is a live handle or NULL.
    match unsafe { c.as_ref() } {
        Some(h) => h.error.as_ptr(),
        None => c"Object not created correctly".as_ptr(),
    }
}

/// Sets a constructor parameter (upstream's names); the value is decimal text, or the path
/// bytes for share_file.
///
/// # Safety
/// `c` is NULL or a live handle from `fc_new`;
/// `name` and `value` point at `name_len` / `value_len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn fc_set_param(
    c: *mut FcCache,
    name: *const u8,
    name_len: usize,
    value: *const u8,
    value_len: usize,
) -> c_int {
    let (n, v) = (bytes(name, name_len), bytes(value, value_len));
    call(c, |k| k.set_param(n, v))
}

/// Opens (creating or replacing as needed) and maps the share file.
///
/// # Safety
/// `c` is NULL or a live handle from `fc_new`.
#[no_mangle]
pub unsafe extern "C" fn fc_init(c: *mut FcCache) -> c_int {
    call(c, |k| k.init())
}

/// The page and slot hash of a key (with `page` NULL, only the slot hash, which is cheaper).
///
/// # Safety
/// `c` is NULL or a live handle from `fc_new`;
/// `key` points at `key_len` readable bytes; `page` and `slot_hash` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn fc_hash(
    c: *const FcCache,
    key: *const u8,
    key_len: usize,
    page: *mut u32,
    slot_hash: *mut u32,
) {
    let k = bytes(key, key_len);
    let Some(h) = c.as_ref() else { return };
    if page.is_null() {
        // Only the slot hash (a multi_get/multi_set name): no page to pick.
        if let Ok(s) = catch_unwind(AssertUnwindSafe(|| crate::cache::slot_hash(k))) {
            put(slot_hash, s);
        }
    } else if let Ok((p, s)) = catch_unwind(AssertUnwindSafe(|| h.cache.hash(k))) {
        put(page, p);
        put(slot_hash, s);
    }
}

/// Locks a page (one per handle at a time).
///
/// # Safety
/// `c` is NULL or a live handle from `fc_new`.
#[no_mangle]
pub unsafe extern "C" fn fc_lock(c: *mut FcCache, page: u32) -> c_int {
    call(c, |k| k.lock(page))
}

/// Unlocks the handle's page, if any.
///
/// # Safety
/// `c` is NULL or a live handle from `fc_new`.
#[no_mangle]
pub unsafe extern "C" fn fc_unlock(c: *mut FcCache) {
    call(c, |k| {
        k.unlock();
        Ok(())
    });
}

/// 1 if the handle holds a page lock, else 0.
///
/// # Safety
/// `c` is NULL or a live handle from `fc_new`.
#[no_mangle]
pub unsafe extern "C" fn fc_is_locked(c: *const FcCache) -> c_int {
    // SAFETY: c is a live handle or NULL.
    unsafe { c.as_ref() }.map_or(0, |h| c_int::from(h.cache.is_locked()))
}

/// Looks a key up in the locked page.
///
/// # Safety
/// `c` is NULL or a live handle from `fc_new`;
/// `key` points at `key_len` readable bytes; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn fc_read(
    c: *mut FcCache,
    slot_hash: u32,
    key: *const u8,
    key_len: usize,
    out: *mut FcReadResult,
) -> c_int {
    let k = bytes(key, key_len);
    call(c, |cache| {
        let r = cache.read(slot_hash, k)?;
        put(
            out,
            FcReadResult {
                val: cache.value_ptr(&r),
                val_len: r.val_len,
                flags: r.flags,
                found: u32::from(r.found),
                expire_on: r.expire_on,
                has_modseq: u32::from(r.modseq.is_some()),
                modseq: r.modseq.unwrap_or(0),
            },
        );
        Ok(())
    })
}

/// Looks a key up without locking (a sequence-lock read). Always sets `*page` and
/// `*slot_hash` to the key's (as `fc_hash` does), for a locked retry. Returns 1 with `*out`
/// filled and a `*ticket` when it could; the value bytes may be copied but only trusted if
/// `fc_peek_confirm` then returns 1. Returns 0 when the caller must lock and `fc_read`
/// instead (a change under way, or the handle holds a lock).
///
/// # Safety
/// `c` is NULL or a live handle from `fc_new`; `key` points at `key_len` readable bytes;
/// `page`, `slot_hash`, `out` and `ticket` are writable.
#[no_mangle]
pub unsafe extern "C" fn fc_peek(
    c: *const FcCache,
    key: *const u8,
    key_len: usize,
    page: *mut u32,
    slot_hash: *mut u32,
    out: *mut FcReadResult,
    ticket: *mut u32,
) -> c_int {
    let k = bytes(key, key_len);
    let Some(h) = c.as_ref() else { return 0 };
    let r = catch_unwind(AssertUnwindSafe(|| {
        let (p, s) = h.cache.hash(k);
        put(page, p);
        put(slot_hash, s);
        h.cache.peek(p, s, k).map(|found| (p, found))
    }));
    match r {
        Ok(Some((page, (p, t)))) => {
            put(out, peek_result(h, page, &p));
            put(ticket, t);
            1
        }
        _ => 0,
    }
}

/// What a lock-free lookup of page `page` answers, for C.
fn peek_result(h: &FcCache, page: u32, p: &ReadOut) -> FcReadResult {
    FcReadResult {
        val: h.cache.peek_ptr(page, p),
        val_len: p.val_len,
        flags: p.flags,
        found: u32::from(p.found),
        expire_on: p.expire_on,
        has_modseq: u32::from(p.modseq.is_some()),
        modseq: p.modseq.unwrap_or(0),
    }
}

/// One key of a batch: `len` bytes at `ptr`.
#[repr(C)]
pub struct FcKey {
    pub ptr: *const u8,
    pub len: usize,
}

/// `fc_peek` for `n` keys of a multi_get on page `page`, each stored as
/// `"{prefix}-{key}"`, under one ticket: 1 with `out[i]` the answer for `keys[i]` and
/// `*ticket` set, or 0 (take the lock). The answers and their value bytes count only if
/// `fc_peek_confirm(page, ticket)` returns 1 after the values are copied.
///
/// # Safety
/// `c` is NULL or a live handle from `fc_new`; `prefix` points at `prefix_len` readable
/// bytes; `keys` at `n` readable `FcKey`s whose bytes are readable; `out` at `n` writable
/// `FcReadResult`s.
#[no_mangle]
pub unsafe extern "C" fn fc_peek_many(
    c: *const FcCache,
    page: u32,
    prefix: *const u8,
    prefix_len: usize,
    keys: *const FcKey,
    n: usize,
    out: *mut FcReadResult,
    ticket: *mut u32,
) -> c_int {
    let Some(h) = c.as_ref() else { return 0 };
    if n > 0 && (keys.is_null() || out.is_null()) {
        return 0;
    }
    let prefix = bytes(prefix, prefix_len);
    let keys: &[FcKey] = if n == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(keys, n)
    };
    let r = catch_unwind(AssertUnwindSafe(|| {
        h.cache.peek_many(
            page,
            prefix,
            keys.iter().map(|k| bytes(k.ptr, k.len)),
            |i, p| put(out.wrapping_add(i), peek_result(h, page, p)),
        )
    }));
    match r {
        Ok(Some(t)) => {
            put(ticket, t);
            1
        }
        _ => 0,
    }
}

/// 1 if page `page` did not change since `fc_peek` gave out `ticket`, else 0.
///
/// # Safety
/// `c` is NULL or a live handle from `fc_new`.
#[no_mangle]
pub unsafe extern "C" fn fc_peek_confirm(c: *const FcCache, page: u32, ticket: u32) -> c_int {
    c.as_ref()
        .map_or(0, |h| c_int::from(h.cache.peek_confirm(page, ticket)))
}

/// Stores a value in the locked page: `*stored` is 1 (stored), 0 (no room; any old value
/// kept) or -1 (refused by the modseq rules). `expire_on` 0xFFFFFFFF means the cache default.
///
/// # Safety
/// `c` is NULL or a live handle from `fc_new`;
/// `key`/`val` point at `key_len`/`val_len` readable bytes; `stored` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn fc_write(
    c: *mut FcCache,
    slot_hash: u32,
    key: *const u8,
    key_len: usize,
    val: *const u8,
    val_len: usize,
    expire_on: u32,
    flags: u32,
    has_modseq: c_int,
    modseq: u64,
    stored: *mut i32,
) -> c_int {
    let (k, v) = (bytes(key, key_len), bytes(val, val_len));
    let modseq = (has_modseq != 0).then_some(modseq);
    call(c, |cache| {
        let r = cache.write(&value_item(slot_hash, k, v, expire_on, flags, modseq))?;
        put(stored, r.code());
        Ok(())
    })
}

/// A value (not a tombstone) to store, with the caller's flags less the engine's own.
fn value_item<'a>(
    slot_hash: u32,
    key: &'a [u8],
    val: &'a [u8],
    expire_on: u32,
    flags: u32,
    modseq: Option<u64>,
) -> NewItem<'a> {
    NewItem {
        slot_hash,
        key,
        val,
        expire_on,
        flags: flags & !(FC_TOMBSTONE | FC_HASMODSEQ),
        modseq,
    }
}

/// What `set` does in the locked page of a cache without write-back: expunges the least
/// recently used entries first if the value would not fit, then stores it (no modseq).
/// `*stored` as for `fc_write`. The same as `fc_expunge(c, 2, 0, key_len + val_len, ..)`
/// then `fc_write`, in one pass when the value fits.
///
/// # Safety
/// As [`fc_write`].
#[no_mangle]
pub unsafe extern "C" fn fc_store(
    c: *mut FcCache,
    slot_hash: u32,
    key: *const u8,
    key_len: usize,
    val: *const u8,
    val_len: usize,
    expire_on: u32,
    flags: u32,
    stored: *mut i32,
) -> c_int {
    let (k, v) = (bytes(key, key_len), bytes(val, val_len));
    call(c, |cache| {
        let r = cache.store(&value_item(slot_hash, k, v, expire_on, flags, None))?;
        put(stored, r.code());
        Ok(())
    })
}

/// A whole `set` of a cache without write-back in one call: locks the key's page, does
/// what [`fc_store`] does, and unlocks (on every path). `*stored` as for `fc_write`. The
/// handle must hold no lock. Returns 0, or 1 when it also queued warnings for
/// `fc_take_warning`, or -1 on an error.
///
/// # Safety
/// As [`fc_write`].
#[no_mangle]
pub unsafe extern "C" fn fc_set(
    c: *mut FcCache,
    key: *const u8,
    key_len: usize,
    val: *const u8,
    val_len: usize,
    expire_on: u32,
    flags: u32,
    stored: *mut i32,
) -> c_int {
    let (k, v) = (bytes(key, key_len), bytes(val, val_len));
    one_call(c, k, |cache, slot_hash| {
        let r = cache.store(&value_item(slot_hash, k, v, expire_on, flags, None))?;
        put(stored, r.code());
        Ok(())
    })
}

/// [`call`] for an operation on one key in one call (`fc_set`, `fc_remove`): runs `f` with
/// the key's page locked and its slot hash, and unlocks on every path. Returns -1 on an
/// error, else 1 when the handle has warnings queued, else 0.
fn one_call(
    c: *mut FcCache,
    key: &[u8],
    f: impl FnOnce(&mut Cache, u32) -> crate::error::Result<()>,
) -> c_int {
    let rc = call(c, |cache| {
        let (page, slot_hash) = cache.hash(key);
        cache.with_locked(page, |cache| f(cache, slot_hash))
    });
    if rc < 0 {
        return rc;
    }
    // SAFETY: as in `call`: c is a live handle or NULL.
    unsafe { c.as_ref() }.map_or(0, |h| c_int::from(h.cache.has_warnings()))
}

/// Writes a tombstone (key + modseq) in the locked page: `*stored` is 1 (written, or a no-op
/// over a newer modseq) or 0 (no room). `flags` may carry FC_UTF8KEY.
///
/// # Safety
/// `c` is NULL or a live handle from `fc_new`;
/// `key` points at `key_len` readable bytes; `stored` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn fc_tombstone(
    c: *mut FcCache,
    slot_hash: u32,
    key: *const u8,
    key_len: usize,
    expire_on: u32,
    flags: u32,
    modseq: u64,
    stored: *mut i32,
) -> c_int {
    let k = bytes(key, key_len);
    call(c, |cache| {
        let r = cache.write(&NewItem {
            slot_hash,
            key: k,
            val: &[],
            expire_on,
            flags: (flags & FC_UTF8KEY) | FC_TOMBSTONE,
            modseq: Some(modseq),
        })?;
        put(stored, r.code());
        Ok(())
    })
}

/// Deletes a key (expired entries and tombstones too) from the locked page.
///
/// # Safety
/// `c` is NULL or a live handle from `fc_new`;
/// `key` points at `key_len` readable bytes; the out pointers are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn fc_delete(
    c: *mut FcCache,
    slot_hash: u32,
    key: *const u8,
    key_len: usize,
    did_delete: *mut i32,
    flags: *mut u32,
) -> c_int {
    let k = bytes(key, key_len);
    call(c, |cache| {
        let r = cache.delete(slot_hash, k)?;
        put(did_delete, i32::from(r.is_some()));
        put(flags, r.unwrap_or(0));
        Ok(())
    })
}

/// A whole `remove` in one call: locks the key's page, does what [`fc_delete`] does, and
/// unlocks (on every path). The handle must hold no lock. Returns as [`fc_set`].
///
/// # Safety
/// As [`fc_delete`].
#[no_mangle]
pub unsafe extern "C" fn fc_remove(
    c: *mut FcCache,
    key: *const u8,
    key_len: usize,
    did_delete: *mut i32,
    flags: *mut u32,
) -> c_int {
    let k = bytes(key, key_len);
    one_call(c, k, |cache, slot_hash| {
        let r = cache.delete(slot_hash, k)?;
        put(did_delete, i32::from(r.is_some()));
        put(flags, r.unwrap_or(0));
        Ok(())
    })
}

/// Expunges the locked page: mode 0 expired entries, 1 everything, 2 also least recently
/// used. `len` >= 0 is the size of an item about to be written (no expunge when it fits and
/// slots are plentiful). `wb` selects the evicted entries kept for `fc_item`: 0 none, 2 only
/// the dirty ones (a write-back), any other value all of them but tombstones. Their count
/// goes to `*n_items`.
///
/// # Safety
/// `c` is NULL or a live handle from `fc_new`.
#[no_mangle]
pub unsafe extern "C" fn fc_expunge(
    c: *mut FcCache,
    mode: i32,
    wb: i32,
    len: i64,
    n_items: *mut usize,
) -> c_int {
    call(c, |cache| {
        let copy = match wb {
            0 => Evicted::Forget,
            2 => Evicted::Dirty,
            _ => Evicted::All,
        };
        let n = cache.expunge(mode, copy, len)?;
        put(n_items, n);
        Ok(())
    })
}

/// Collects the live entries of every page (one page locked at a time; fails if this handle
/// holds a lock). Their count goes to `*n_items`; read them with `fc_item`.
///
/// # Safety
/// `c` is NULL or a live handle from `fc_new`.
#[no_mangle]
pub unsafe extern "C" fn fc_collect_keys(
    c: *mut FcCache,
    with_values: i32,
    n_items: *mut usize,
) -> c_int {
    call(c, |cache| {
        let n = cache.collect_keys(with_values != 0)?;
        put(n_items, n);
        Ok(())
    })
}

/// Entry `index` of the last `fc_expunge` / `fc_collect_keys` batch.
///
/// # Safety
/// `c` is NULL or a live handle from `fc_new`.
#[no_mangle]
pub unsafe extern "C" fn fc_item(c: *const FcCache, index: usize, out: *mut FcItem) -> c_int {
    // SAFETY: c is a live handle or NULL.
    let Some(h) = (unsafe { c.as_ref() }) else {
        return -1;
    };
    let Some(it) = h.cache.item(index) else {
        return -1;
    };
    put(
        out,
        FcItem {
            key: it.key.as_ptr(),
            key_len: it.key.len(),
            val: it.val.as_ptr(),
            val_len: it.val.len(),
            last_access: it.rec.last_access,
            expire_on: it.rec.expire_on,
            flags: it.rec.flags,
            has_modseq: u32::from(it.rec.modseq().is_some()),
            modseq: it.rec.modseq().unwrap_or(0),
        },
    );
    0
}

/// Read statistics of the locked page.
///
/// # Safety
/// `c` is NULL or a live handle from `fc_new`.
#[no_mangle]
pub unsafe extern "C" fn fc_get_page_details(
    c: *mut FcCache,
    nreads: *mut u32,
    nreadhits: *mut u32,
) -> c_int {
    call(c, |cache| {
        let (r, h) = cache.page_details()?;
        put(nreads, r);
        put(nreadhits, h);
        Ok(())
    })
}

/// Zeroes the locked page's read statistics.
///
/// # Safety
/// `c` is NULL or a live handle from `fc_new`.
#[no_mangle]
pub unsafe extern "C" fn fc_reset_page_details(c: *mut FcCache) -> c_int {
    call(c, |cache| cache.reset_page_details())
}

/// Sets the process-wide clock override (seconds); 0 turns it off.
#[no_mangle]
pub extern "C" fn fc_set_time_override(t: u32) {
    time::set_override(t);
}

/// The engine's clock in seconds: the process-wide override when set, else the time.
#[no_mangle]
pub extern "C" fn fc_now() -> u32 {
    time::now()
}

/// The page-lock backend this engine was built with: "robust-mutex" (Linux) or "fcntl"
/// (other systems, and Linux built with FASTMMAP_PORTABLE=1). A static NUL-terminated
/// string.
#[no_mangle]
pub extern "C" fn fc_lock_backend() -> *const c_char {
    crate::lock::NAME_C.as_ptr()
}

/// How many pages this handle has found corrupt and repaired.
///
/// # Safety
/// `c` is NULL or a live handle from `fc_new`.
#[no_mangle]
pub unsafe extern "C" fn fc_repaired_pages(c: *const FcCache) -> u64 {
    // SAFETY: c is a live handle or NULL.
    unsafe { c.as_ref() }.map_or(0, |h| h.cache.repaired_pages())
}

/// The oldest warning not yet reported (e.g. a repaired page), or NULL when there is none
/// or the handle holds a page lock (warnings wait for the unlock: a `__WARN__` handler is
/// Perl code, which never runs under the lock). The string is owned by the handle, valid
/// until the next call of this function.
///
/// # Safety
/// `c` is NULL or a live handle from `fc_new`.
#[no_mangle]
pub unsafe extern "C" fn fc_take_warning(c: *mut FcCache) -> *const c_char {
    // SAFETY: c is a live handle or NULL.
    let Some(h) = (unsafe { c.as_mut() }) else {
        return std::ptr::null();
    };
    if h.cache.is_locked() {
        return std::ptr::null();
    }
    match catch_unwind(AssertUnwindSafe(|| h.cache.take_warning())) {
        Ok(Some(w)) => {
            h.warning = CString::new(w.replace('\0', "\\0")).unwrap_or_default();
            h.warning.as_ptr()
        }
        _ => std::ptr::null(),
    }
}

// ---- Statistics and inspection (the `fastmmap` command) ------------------------------

/// What `fc_stats` reports (see `stats.rs`): counters cumulative since the file was created,
/// shared by every process using it.
#[repr(C)]
pub struct FcStats {
    /// Occupied slots: live entries plus expired entries and tombstones not yet expunged.
    pub entries: u64,
    /// num_pages * page_size.
    pub capacity_bytes: u64,
    /// capacity_bytes minus the pages' free bytes.
    pub used_bytes: u64,
    /// Live entries evicted to make room (LRU).
    pub evictions: u64,
    /// Expired entries removed.
    pub expirations: u64,
    /// Pages found damaged and repaired.
    pub repairs: u64,
    /// Reads, and those that found a live entry (batched per handle, see `stats.rs`).
    pub reads: u64,
    pub hits: u64,
    pub num_pages: u32,
    pub page_size: u32,
}

/// Fills `*out` with the cache's statistics (no page lock needed, none left held).
///
/// # Safety
/// `c` is NULL or a live handle from `fc_new`; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn fc_stats(c: *mut FcCache, out: *mut FcStats) -> c_int {
    call(c, |cache| {
        let s = crate::stats::snapshot(cache)?;
        put(
            out,
            FcStats {
                entries: s.entries,
                capacity_bytes: s.capacity_bytes,
                used_bytes: s.used_bytes,
                evictions: s.counters.evictions,
                expirations: s.counters.expirations,
                repairs: s.counters.repairs,
                reads: s.counters.reads,
                hits: s.counters.hits,
                num_pages: s.num_pages,
                page_size: s.page_size,
            },
        );
        Ok(())
    })
}

/// An opaque inspection handle on a share file (see `inspect.rs`).
pub struct FcInspect {
    ins: Option<crate::inspect::Inspector>,
    report: Option<crate::inspect::PageReport>,
    message: CString,
}

impl FcInspect {
    fn set_message(&mut self, msg: &str) {
        self.message = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    }
}

/// What a file's header says, with its counters.
#[repr(C)]
pub struct FcFileInfo {
    pub format_version: u32,
    pub page_size: u32,
    pub num_pages: u32,
    pub start_slots: u32,
    pub file_size: u64,
    /// Page 0's lock entry and page 0; page n's are n * page_stride further on.
    pub lock_table_off: u64,
    pub pages_off: u64,
    pub page_stride: u64,
    /// 1 when another process has the file open.
    pub in_use: u32,
    pub reads: u64,
    pub hits: u64,
    pub evictions: u64,
    pub expirations: u64,
    pub repairs: u64,
}

/// What `fc_inspect_page` found.
#[repr(C)]
pub struct FcPageInfo {
    /// 0 sound, 1 damaged, 2 busy (not checked), 3 a change left unfinished.
    pub state: u32,
    /// 0 free, 1 held by a live process, 2 held by one that is gone, 3 malformed.
    pub lock: u32,
    pub num_slots: u32,
    pub free_slots: u32,
    pub old_slots: u32,
    pub free_bytes: u32,
    /// Live entries, expired ones, tombstones, dirty (write-back) ones.
    pub entries: u32,
    pub expired: u32,
    pub tombstones: u32,
    pub dirty: u32,
    pub nreads: u32,
    pub nhits: u32,
    /// Oldest and newest last-access time (0 when the page is empty).
    pub oldest: u32,
    pub newest: u32,
    /// Entries listed (with `with_items`), readable with `fc_inspect_item`.
    pub nitems: u32,
}

/// Opens `path` for inspection (read-only), or with `writable` for `fc_inspect_repair`.
/// Always returns a handle (NULL only if memory ran out): `fc_inspect_open_error` says
/// whether the file could be opened.
///
/// # Safety
/// `path` points at `path_len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn fc_inspect_open(
    path: *const u8,
    path_len: usize,
    writable: c_int,
) -> *mut FcInspect {
    let p = crate::file::path_from_bytes(bytes(path, path_len));
    catch_unwind(AssertUnwindSafe(|| {
        let mut h = FcInspect {
            ins: None,
            report: None,
            message: CString::default(),
        };
        match crate::inspect::Inspector::open(&p, writable != 0) {
            Ok(i) => h.ins = Some(i),
            Err(e) => h.set_message(e.message()),
        }
        Box::into_raw(Box::new(h))
    }))
    .unwrap_or(std::ptr::null_mut())
}

/// Why the file could not be opened, or NULL when it was.
///
/// # Safety
/// `h` is NULL or a live handle from `fc_inspect_open`.
#[no_mangle]
pub unsafe extern "C" fn fc_inspect_open_error(h: *const FcInspect) -> *const c_char {
    match h.as_ref() {
        Some(h) if h.ins.is_none() => h.message.as_ptr(),
        Some(_) => std::ptr::null(),
        None => b"no inspection handle\0".as_ptr() as *const c_char,
    }
}

/// The message of the last call that returned -1 (or a repair's report).
///
/// # Safety
/// `h` is NULL or a live handle from `fc_inspect_open`.
#[no_mangle]
pub unsafe extern "C" fn fc_inspect_message(h: *const FcInspect) -> *const c_char {
    h.as_ref()
        .map_or(b"no inspection handle\0".as_ptr() as *const c_char, |h| {
            h.message.as_ptr()
        })
}

/// Fills `*out` from the header: 0, or -1 when the header cannot be used (why: in
/// `fc_inspect_message`).
///
/// # Safety
/// `h` is NULL or a live handle from `fc_inspect_open`; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn fc_inspect_header(h: *mut FcInspect, out: *mut FcFileInfo) -> c_int {
    let Some(h) = h.as_mut() else { return -1 };
    let r = catch_unwind(AssertUnwindSafe(|| {
        let ins = h.ins.as_ref().ok_or("the file is not open".to_string())?;
        let l = ins.header.clone()?;
        let k = ins.counters();
        put(
            out,
            FcFileInfo {
                format_version: crate::file::FORMAT_VERSION,
                page_size: l.geometry.page_size,
                num_pages: l.geometry.num_pages,
                start_slots: l.geometry.start_slots,
                file_size: l.file_size,
                lock_table_off: l.lock_table_off,
                pages_off: l.pages_off,
                page_stride: l.page_stride,
                in_use: u32::from(ins.in_use()),
                reads: k.reads,
                hits: k.hits,
                evictions: k.evictions,
                expirations: k.expirations,
                repairs: k.repairs,
            },
        );
        Ok::<(), String>(())
    }));
    match r {
        Ok(Ok(())) => 0,
        Ok(Err(m)) => {
            h.set_message(&m);
            -1
        }
        Err(p) => {
            h.set_message(&format!("internal error: {}", panic_message(&*p)));
            -1
        }
    }
}

/// Checks page `page` (read-only) and fills `*out`; with `with_items` its entries are
/// kept for `fc_inspect_item`. The page's problems, joined by "; ", are in
/// `fc_inspect_message` (empty when sound). Returns -1 on a bad page number or an
/// unusable header.
///
/// # Safety
/// `h` is NULL or a live handle from `fc_inspect_open`; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn fc_inspect_page(
    h: *mut FcInspect,
    page: u32,
    with_items: c_int,
    out: *mut FcPageInfo,
) -> c_int {
    let Some(h) = h.as_mut() else { return -1 };
    h.report = None;
    let r = catch_unwind(AssertUnwindSafe(|| match &h.ins {
        Some(ins) => ins
            .page(page, with_items != 0)
            .map_err(|e| e.message().to_string()),
        None => Err("the file is not open".to_string()),
    }));
    let r = match r {
        Ok(r) => r,
        Err(p) => Err(format!("internal error: {}", panic_message(&*p))),
    };
    match r {
        Ok(rep) => {
            put(
                out,
                FcPageInfo {
                    state: rep.state as u32,
                    lock: rep.lock as u32,
                    num_slots: rep.num_slots,
                    free_slots: rep.free_slots,
                    old_slots: rep.old_slots,
                    free_bytes: rep.free_bytes,
                    entries: rep.entries,
                    expired: rep.expired,
                    tombstones: rep.tombstones,
                    dirty: rep.dirty,
                    nreads: rep.nreads,
                    nhits: rep.nhits,
                    oldest: rep.oldest,
                    newest: rep.newest,
                    nitems: rep.items.len() as u32,
                },
            );
            h.set_message(&rep.problems.join("; "));
            h.report = Some(rep);
            0
        }
        Err(m) => {
            h.set_message(&m);
            -1
        }
    }
}

/// Entry `index` of the last `fc_inspect_page` with `with_items`: the key (owned by the
/// handle, valid until the next `fc_inspect_page`), the value's length (`val` is NULL),
/// times, flags, modseq. Returns -1 when there is no such entry.
///
/// # Safety
/// `h` is NULL or a live handle from `fc_inspect_open`; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn fc_inspect_item(
    h: *const FcInspect,
    index: u32,
    out: *mut FcItem,
) -> c_int {
    let Some(e) = h
        .as_ref()
        .and_then(|h| h.report.as_ref())
        .and_then(|r| r.items.get(index as usize))
    else {
        return -1;
    };
    put(
        out,
        FcItem {
            key: e.key.as_ptr(),
            key_len: e.key.len(),
            val: std::ptr::null(),
            val_len: e.val_len,
            last_access: e.last_access,
            expire_on: e.expire_on,
            flags: e.flags,
            has_modseq: u32::from(e.modseq.is_some()),
            modseq: e.modseq.unwrap_or(0),
        },
    );
    0
}

/// Repairs the file offline (opened with `writable`; refused while other processes have
/// it open). Returns how many pages it changed, with one line per page in
/// `fc_inspect_message`, or -1 with the reason there.
///
/// # Safety
/// `h` is NULL or a live handle from `fc_inspect_open`.
#[no_mangle]
pub unsafe extern "C" fn fc_inspect_repair(h: *mut FcInspect) -> i64 {
    let Some(h) = h.as_mut() else { return -1 };
    let r = catch_unwind(AssertUnwindSafe(|| match h.ins.as_mut() {
        Some(ins) => ins.repair().map_err(|e| e.message().to_string()),
        None => Err("the file is not open".to_string()),
    }));
    match r {
        Ok(Ok(notes)) => {
            h.set_message(&notes.join("\n"));
            notes.len() as i64
        }
        Ok(Err(m)) => {
            h.set_message(&m);
            -1
        }
        Err(p) => {
            h.set_message(&format!("internal error: {}", panic_message(&*p)));
            -1
        }
    }
}

/// Closes and frees an inspection handle. NULL is ignored.
///
/// # Safety
/// `h` is NULL or a live handle from `fc_inspect_open`, closed only once.
#[no_mangle]
pub unsafe extern "C" fn fc_inspect_close(h: *mut FcInspect) {
    if !h.is_null() {
        let b = Box::from_raw(h);
        let _ = catch_unwind(AssertUnwindSafe(move || drop(b)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_come_back_as_status_and_message() {
        let c = fc_new();
        let name = b"bogus";
        // SAFETY: c is a live handle; the byte pointers match their lengths.
        unsafe {
            let rc = fc_set_param(c, name.as_ptr(), name.len(), b"1".as_ptr(), 1);
            assert_eq!(rc, -1);
            let msg = std::ffi::CStr::from_ptr(fc_last_error(c));
            assert_eq!(msg.to_str().unwrap(), "Bad set_param parameter: bogus");
            assert_eq!(fc_lock(c, 0), -1, "locking before init is an error");
            assert_eq!(fc_is_locked(c), 0);
            assert!(fc_take_warning(c).is_null());
            fc_close(c);
            fc_close(std::ptr::null_mut());
        }
    }
}
