//! A safety net for mappings whose file shrank under us.
//!
//! When a share file is truncated while we have it mapped (an operator's `: > file`, a
//! restore, an old process re-initialising it), touching a page past the new end raises
//! SIGBUS, and so does writing into a sparse file on a full filesystem. Without help that
//! kills the process. Here every share-file mapping is registered in a fixed table; a
//! SIGBUS handler (installed with the first registration) that finds the faulting address
//! in a registered range maps private zero pages over the whole range, marks it lost and
//! returns, so the faulting access completes on zeros. The handle notices the mark at its
//! next lock and re-opens the file. Faults anywhere else go to the handler that was there
//! before (or get the default action, which kills as usual).
//!
//! The handler only reads the table (atomics), calls `mmap` and `sigaction`/`raise`, and
//! stores one flag: nothing that could deadlock or allocate.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Once;

const SLOTS: usize = 1024;

struct Range {
    start: AtomicUsize,
    len: AtomicUsize,
    lost: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Range = Range {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    lost: AtomicBool::new(false),
};
static RANGES: [Range; SLOTS] = [EMPTY; SLOTS];

static INSTALL: Once = Once::new();
/// The disposition before ours; written once, before our handler can run.
static mut PREVIOUS: Option<libc::sigaction> = None;

/// Registers `[start, start + len)` as a share-file mapping; `None` when the table is full
/// (the mapping then simply has no safety net).
pub fn register(start: *mut u8, len: usize) -> Option<usize> {
    INSTALL.call_once(install);
    for (i, r) in RANGES.iter().enumerate() {
        if r.start
            .compare_exchange(0, start as usize, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            r.lost.store(false, Ordering::Relaxed);
            r.len.store(len, Ordering::Release);
            return Some(i);
        }
    }
    None
}

/// Removes a registration, before the range is unmapped.
pub fn unregister(slot: usize) {
    if let Some(r) = RANGES.get(slot) {
        r.len.store(0, Ordering::Release);
        r.start.store(0, Ordering::Release);
    }
}

/// Did this range lose its file (a SIGBUS was absorbed in it)?
pub fn lost(slot: usize) -> bool {
    RANGES
        .get(slot)
        .is_some_and(|r| r.lost.load(Ordering::Acquire))
}

fn install() {
    // SAFETY: plain sigaction calls with zero-initialised structs; PREVIOUS is written
    // here, inside call_once, before our handler is installed, and only read afterwards.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) != 0 {
            return;
        }
        std::ptr::addr_of_mut!(PREVIOUS).write(Some(old));
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_sigbus as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaction(libc::SIGBUS, &act, std::ptr::null_mut());
    }
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo; si_addr is meaningful for faults it raised
    // itself (si_code > 0), not for a SIGBUS sent with kill().
    let (kernel, addr) = unsafe { ((*info).si_code > 0, (*info).si_addr() as usize) };
    if kernel {
        for r in RANGES.iter() {
            let start = r.start.load(Ordering::Acquire);
            let len = r.len.load(Ordering::Acquire);
            if start != 0 && addr >= start && addr - start < len {
                // SAFETY: [start, start+len) is one of our live mappings; replacing it with
                // anonymous zero pages keeps every address valid until it is unmapped.
                let p = unsafe {
                    libc::mmap(
                        start as *mut libc::c_void,
                        len,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                        -1,
                        0,
                    )
                };
                if p != libc::MAP_FAILED {
                    r.lost.store(true, Ordering::Release);
                    return;
                }
                break;
            }
        }
    }
    chain(sig, info, ctx);
}

/// Hands a SIGBUS that is not ours to the disposition that was there before.
fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: PREVIOUS was set before our handler was installed and is never written again.
    let prev = unsafe { *std::ptr::addr_of!(PREVIOUS) };
    let handler = prev.map_or(libc::SIG_DFL, |p| p.sa_sigaction);
    if handler == libc::SIG_IGN {
        return;
    }
    if handler == libc::SIG_DFL {
        // SAFETY: restore the default action; a fault re-raises itself when the
        // instruction is retried, a sent signal is raised again here.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(sig, &act, std::ptr::null_mut());
            libc::raise(sig);
        }
        return;
    }
    let flags = prev.map_or(0, |p| p.sa_flags);
    // SAFETY: calling the previously installed handler the way it asked to be called.
    unsafe {
        if flags & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                std::mem::transmute(handler);
            f(sig, info, ctx);
        } else {
            let f: extern "C" fn(libc::c_int) = std::mem::transmute(handler);
            f(sig);
        }
    }
}
