//! The clock used for expiry and LRU: u32 unix seconds, with a process-global override
//! (upstream's `fc_set_time_override`, used by tests to move time deterministically).

use std::sync::atomic::{AtomicU32, Ordering};

/// 0 means "no override". A plain atomic in the library's data segment: nothing to tear down
/// when the library is unloaded.
static TIME_OVERRIDE: AtomicU32 = AtomicU32::new(0);

/// Sets (non-zero) or clears (0) the process-wide clock override.
pub fn set_override(t: u32) {
    TIME_OVERRIDE.store(t, Ordering::Relaxed);
}

/// Current time in seconds, truncated to u32 like upstream (good until 2106).
#[inline]
pub fn now() -> u32 {
    let o = TIME_OVERRIDE.load(Ordering::Relaxed);
    if o != 0 {
        return o;
    }
    // SAFETY: time(NULL) has no pointer argument to honour and cannot fail on Linux.
    unsafe { libc::time(std::ptr::null_mut()) as u32 }
}

/// Is an entry with this `expire_on` expired at `now`? 0 means never; expiry is inclusive.
#[inline]
pub fn is_expired(expire_on: u32, now: u32) -> bool {
    expire_on != 0 && now >= expire_on
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_inclusive_and_zero_never_expires() {
        assert!(!is_expired(0, u32::MAX));
        assert!(is_expired(100, 100));
        assert!(!is_expired(101, 100));
    }
}
