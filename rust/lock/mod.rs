//! Page locks: one lock per page, recorded in the lock table of the shared file, and the
//! share file descriptors the locks are taken through.
//!
//! Two backends, chosen at build time (`build.rs` sets `cfg(fastmmap_portable)`):
//! - `robust` (Linux): a robust, process-shared pthread mutex per page, living in the
//!   lock table itself; holders are told apart by opener slots (OFD byte locks). An
//!   uncontended lock/unlock pair is two userspace atomics.
//! - `fcntl` (every other Unix, and Linux built with `FASTMMAP_PORTABLE=1`): a POSIX
//!   byte-range lock (`F_SETLKW`) on one byte per page, which the kernel drops when its
//!   holder dies, plus an in-process table that makes threads and handles of one process
//!   exclude each other (the kernel's locks belong to the whole process). A system call
//!   per lock and per unlock.
//!
//! Both export the same items: [`lock`], [`unlock`], [`init`], [`make_consistent`],
//! [`entry_state`], [`recorded_owner_alive`], [`Locker`], [`ShareFile`] and the constants
//! naming the backend ([`NAME`], [`KIND`], [`KIND_DETAIL`]), which the file header
//! records so that the two kinds never share a file by mistake (see `file.rs`).
//!
//! The layout of a lock table entry is common: what the backend needs first, then the
//! holder record, the "being mutated" marker and the change counter used by `cache.rs`.

use std::sync::atomic::AtomicU32;

/// Bytes per page in the lock table: one cache line, so neighbouring pages' locks never share
/// a line.
pub const LOCK_STRIDE: usize = 64;
/// Offset of the holder record (robust: the holder's opener slot + 1; fcntl: the holder's
/// process id; 0: no holder recorded).
const OWNER_OFF: usize = 52;
/// Offset of the page's "being mutated" marker inside a lock table entry (see `cache.rs`).
pub const DIRTY_OFF: usize = 56;
/// Offset of the page's change counter (a sequence lock for lock-free readers: odd while
/// a change is under way, bumped to the next even value when it is done).
pub const VERSION_OFF: usize = 60;

/// How a lock attempt ended when it succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// The lock was free or released normally: the page is as its last owner left it.
    Clean,
    /// The previous owner died holding it (or the entry was abandoned and taken over): the
    /// page may be half-modified. The caller must check the page and then call
    /// [`make_consistent`].
    OwnerDied,
}

/// Who is locking: the file's identity (to recognise the same lock through another
/// mapping in this process), this opener's slot and the descriptor locks go through.
#[derive(Debug, Clone, Copy)]
pub struct Locker {
    pub dev: u64,
    pub ino: u64,
    /// This open file description's slot (robust backend), or [`NO_SLOT`].
    pub slot: u32,
    /// The open share file.
    pub fd: std::os::unix::io::RawFd,
    /// Where page 0's lock entry is in the file, and the distance between entries (the fcntl
    /// backend locks one byte of each page's entry).
    pub lock_table_off: u64,
    pub lock_stride: u64,
}

/// "No slot" (a `Locker` being built, or a backend without slots; never used to lock).
pub const NO_SLOT: u32 = u32::MAX;

/// The change counter of a lock table entry.
///
/// # Safety
/// `entry` points at a lock table entry (64-byte aligned) inside a mapping that outlives
/// the returned reference.
pub unsafe fn version<'a>(entry: *mut u8) -> &'a AtomicU32 {
    &*(entry.add(VERSION_OFF) as *const AtomicU32)
}

/// The holder record of a lock table entry.
///
/// # Safety
/// As for [`version`].
unsafe fn owner<'a>(entry: *mut u8) -> &'a AtomicU32 {
    &*(entry.add(OWNER_OFF) as *const AtomicU32)
}

#[cfg(not(fastmmap_portable))]
mod robust;
#[cfg(not(fastmmap_portable))]
pub use robust::*;

#[cfg(fastmmap_portable)]
mod fcntl;
#[cfg(fastmmap_portable)]
pub use fcntl::*;
