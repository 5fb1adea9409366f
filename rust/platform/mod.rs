//! Operating-system calls that have no portable Rust API, one small function each.
//!
//! Linux gets the real thing (`linux.rs`); other systems get `fallback.rs`, which does the
//! portable part of each job or reports "not supported" so that callers take their
//! portable path. Nothing outside this module calls `futex`, `gettid`, `O_TMPFILE` or
//! `linkat` directly.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub use linux::*;

#[cfg(not(target_os = "linux"))]
mod fallback;
#[cfg(not(target_os = "linux"))]
pub use fallback::*;

/// The SIGBUS safety net for share-file mappings (POSIX: sigaction and mmap).
pub mod sigbus;
