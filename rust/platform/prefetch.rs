//! Cache prefetch hints, one per CPU architecture, and a no-op elsewhere. A hint never
//! faults and changes no memory, so a wrong address only costs the hint.

/// Asks the CPU to bring the cache line holding `p` into its cache for a coming store.
#[inline(always)]
pub fn prefetch_write(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing architecturally and cannot fault, whatever `p` is.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0};
        _mm_prefetch::<_MM_HINT_ET0>(p as *const i8);
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: as above: PRFM is a hint and cannot fault.
    unsafe {
        std::arch::asm!("prfm pstl1keep, [{0}]", in(reg) p, options(nostack, readonly, preserves_flags));
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = p;
}
