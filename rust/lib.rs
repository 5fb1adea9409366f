//! The engine of Cache::FastMmap: a shared-memory cache in an mmap'd file, with one robust
//! process-shared lock per page.
//!
//! Modules, bottom up: `error` (messages), `time` (the clock and its override), `hash`
//! (key -> page + slot hash), `lock` (page mutexes), `fork` (telling a forked child apart), `page` (one page's format and
//! operations), `platform` (the
//! few OS calls without a portable API), `file` (the share file: header, creation, mapping), `cache` (a handle and its
//! lock-ownership model), `stats` (the file's cumulative counters), `inspect` (reading and
//! checking a file from outside, for the `fastmmap` command) and `ffi` (the C ABI, the only `extern "C"` code).

pub mod cache;
pub mod error;
pub mod ffi;
pub mod file;
pub mod fork;
pub mod hash;
pub mod inspect;
pub mod lock;
pub mod page;
pub mod platform;
pub mod stats;
pub mod time;
