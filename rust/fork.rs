//! Telling a forked child from the process that took a page lock.
//!
//! A child forked while its parent holds a page lock inherits the handle's "locked" state
//! but not the lock. When the child releases that state it must not touch the page's
//! marker or version words, which belong to the parent's ongoing change. A private page
//! with `MADV_WIPEONFORK` reads as zero in every child: a cheap memory read instead of a
//! `getpid` system call per change. Where the kernel or the system lacks it (see
//! `platform::wipe_on_fork`), the token records the process's fork generation instead: a
//! counter that a `pthread_atfork` child handler bumps in every child, so telling a child
//! apart is a memory read there too (a `getpid` is a system call, as dear as the lock).

use std::cell::Cell;
use std::ptr::{null_mut, read_volatile, write_volatile};
use std::sync::atomic::{AtomicU64, Ordering};

/// How many forks separate this process from the first one: each child's is one more than
/// its parent's was at the fork, so a value recorded before a fork differs in the child.
static GENERATION: AtomicU64 = AtomicU64::new(0);

extern "C" fn count_fork_in_child() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

fn register_fork_counter() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers a child handler that only bumps an atomic.
        unsafe { libc::pthread_atfork(None, None, Some(count_fork_in_child)) };
    });
}

pub struct ForkToken {
    /// A private anonymous page (wiped in children), or null when unavailable.
    page: *mut u32,
    /// Fallback: the fork generation of the process that armed the token.
    armed_in: Cell<u64>,
}

impl ForkToken {
    pub fn new() -> ForkToken {
        // SAFETY: a fresh private anonymous mapping; we only read/write its first u32.
        let page = unsafe {
            let p = libc::mmap(
                null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                null_mut()
            } else if !crate::platform::wipe_on_fork(p, 4096) {
                libc::munmap(p, 4096);
                null_mut()
            } else {
                p as *mut u32
            }
        };
        if page.is_null() {
            // Before any arm, so that every later fork is counted.
            register_fork_counter();
        }
        ForkToken {
            page,
            armed_in: Cell::new(u64::MAX),
        }
    }

    /// Marks the current process as the one holding whatever is locked next.
    pub fn arm(&self) {
        if self.page.is_null() {
            self.armed_in.set(GENERATION.load(Ordering::Relaxed));
        } else {
            // SAFETY: page is our live private mapping.
            unsafe { write_volatile(self.page, 1) };
        }
    }

    /// Is this still the process that last called `arm`?
    pub fn same_process(&self) -> bool {
        if self.page.is_null() {
            self.armed_in.get() == GENERATION.load(Ordering::Relaxed)
        } else {
            // SAFETY: page is our live private mapping (zeroed in a forked child).
            unsafe { read_volatile(self.page) != 0 }
        }
    }
}

impl Default for ForkToken {
    fn default() -> Self {
        ForkToken::new()
    }
}

impl Drop for ForkToken {
    fn drop(&mut self) {
        if !self.page.is_null() {
            // SAFETY: the mapping was created by new() and is unmapped once.
            unsafe { libc::munmap(self.page as *mut libc::c_void, 4096) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forked_child_is_told_apart() {
        let t = ForkToken::new();
        t.arm();
        assert!(t.same_process());
        // SAFETY: fork in a test; the child only evaluates and _exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let code = if t.same_process() { 1 } else { 0 };
            // SAFETY: leave the child without running the test harness.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        assert!(t.same_process());
    }
}
