//! The share file: its header, layout, safe creation and opening.
//!
//! Layout: a 4 KiB header, then `num_pages` times a 64-byte lock entry followed by its page
//! of `page_size` bytes (see [`Layout::new`] for why they are interleaved).
//!
//! Creation never exposes a half-made file: a new file is built and initialised under a
//! temporary name in the same directory, then linked into place (or renamed over a file that
//! must be replaced). Every opener holds a shared lock on byte 0 (an OFD lock, or with the
//! fcntl backend a classic lock per process plus its in-process bookkeeping: see
//! `lock::ShareFile`); whoever gets it exclusively knows nobody else maps the file and may
//! re-initialise the lock words (stale after a reboot or a crash of every user).
//!
//! Every descriptor of a share file is a [`ShareFile`]: with classic fcntl locks, closing
//! any descriptor of a file drops all the locks its process holds on it, so the fcntl
//! backend keeps one descriptor per file per process and hands it out again.

use crate::error::{Error, Result};
use crate::lock::{self, ShareFile, LOCK_STRIDE};
use crate::page::Page;
use crate::platform;
use memmap2::{MmapOptions, MmapRaw};
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
#[cfg(test)]
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};

const FILE_MAGIC: [u8; 8] = *b"FMMAPRS\0";
/// Version 2: the header also holds the cumulative counters of `stats.rs`. Version 3: pages
/// have 8-byte slots (an offset, a tag and an access time; see `page`). Version 4: each
/// page follows its lock entry instead of all entries coming first. Files of another version
/// are replaced like any other mismatch.
pub const FORMAT_VERSION: u32 = 4;
pub const HEADER_SIZE: u64 = 4096;
/// Header offset of the lock backend's kind (`lock::KIND`) and, after it, the size of a lock
/// entry and the backend's detail (`lock::KIND_DETAIL`).
const LOCK_KIND_AT: usize = 28;
const ENDIAN_MARK: u32 = 0x0102_0304;
/// Bytes of the header covered by the checksum; the checksum follows them.
pub const HEADER_FIELDS: usize = 72;
/// Largest page we accept: offsets inside a page are u32, and upstream never went past 1 GiB.
pub const MAX_PAGE_SIZE: u32 = 1 << 30;
/// How often `open` retries when another process keeps changing the file under it.
const OPEN_ATTEMPTS: u32 = 200;

/// The numbers that decide a file's layout; two processes share a file only if these match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub page_size: u32,
    pub num_pages: u32,
    pub start_slots: u32,
}

/// Byte offsets of the file's regions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub geometry: Geometry,
    /// Offset of page 0's lock entry; page `n`'s is `page_stride * n` further on.
    pub lock_table_off: u64,
    /// Offset of page 0; page `n` is `page_stride * n` further on.
    pub pages_off: u64,
    /// Distance from one page's lock entry (and page) to the next: `LOCK_STRIDE + page_size`
    /// (the page size rounded up to a multiple of `LOCK_STRIDE`).
    pub page_stride: u64,
    pub file_size: u64,
}

impl Layout {
    /// Checks a geometry and computes its layout; errors name the offending option.
    pub fn new(g: Geometry) -> Result<Layout> {
        if g.num_pages == 0 {
            return Err(Error::new("num_pages must be at least 1"));
        }
        if g.start_slots == 0 {
            return Err(Error::new("start_slots must be at least 1"));
        }
        if g.page_size > MAX_PAGE_SIZE {
            return Err(Error::new(format!(
                "page_size {} is larger than the maximum of {MAX_PAGE_SIZE} bytes",
                g.page_size
            )));
        }
        let min = Page::min_size(g.start_slots);
        if u64::from(g.page_size) < min {
            return Err(Error::new(format!(
                "page_size {} is too small for start_slots {}: a page needs at least {min} bytes",
                g.page_size, g.start_slots
            )));
        }
        // Each page follows its lock entry. Every lookup reads both, so they share a
        // neighbourhood (one TLB entry, adjacent lines); and the 64 bytes between
        // power-of-two pages keep the page headers from all falling into the same cache sets.
        // A page size that is not a multiple of 64 (only the C ABI allows one) is padded, so
        // that every entry stays aligned to its own cache line.
        let lock_table_off = HEADER_SIZE;
        let pages_off = lock_table_off + LOCK_STRIDE as u64;
        let page_stride =
            LOCK_STRIDE as u64 + u64::from(g.page_size).next_multiple_of(LOCK_STRIDE as u64);
        let file_size = u64::from(g.num_pages)
            .checked_mul(page_stride)
            .and_then(|d| d.checked_add(lock_table_off))
            .filter(|&s| s <= isize::MAX as u64 && s <= i64::MAX as u64)
            .ok_or_else(|| {
                Error::new(format!(
                    "cache size num_pages {} x page_size {} is too large",
                    g.num_pages, g.page_size
                ))
            })?;
        Ok(Layout {
            geometry: g,
            lock_table_off,
            pages_off,
            page_stride,
            file_size,
        })
    }

    /// File offset of page `n`.
    pub fn page_off(&self, n: u32) -> u64 {
        self.pages_off + u64::from(n) * self.page_stride
    }

    /// File offset of page `n`'s lock entry.
    pub fn lock_off(&self, n: u32) -> u64 {
        self.lock_table_off + u64::from(n) * self.page_stride
    }

    fn header_bytes(&self) -> [u8; HEADER_FIELDS + 8] {
        let g = self.geometry;
        let mut h = [0u8; HEADER_FIELDS + 8];
        let mut put = |off: usize, bytes: &[u8]| h[off..off + bytes.len()].copy_from_slice(bytes);
        put(0, &FILE_MAGIC);
        put(8, &FORMAT_VERSION.to_ne_bytes());
        put(12, &(HEADER_SIZE as u32).to_ne_bytes());
        put(16, &g.page_size.to_ne_bytes());
        put(20, &g.num_pages.to_ne_bytes());
        put(24, &g.start_slots.to_ne_bytes());
        put(LOCK_KIND_AT, &lock::KIND.to_ne_bytes());
        put(32, &(LOCK_STRIDE as u32).to_ne_bytes());
        put(36, &lock::KIND_DETAIL.to_ne_bytes());
        put(40, &self.lock_table_off.to_ne_bytes());
        put(48, &self.pages_off.to_ne_bytes());
        put(56, &self.file_size.to_ne_bytes());
        put(64, &ENDIAN_MARK.to_ne_bytes());
        let sum = xxhash_rust::xxh3::xxh3_64(&h[..HEADER_FIELDS]);
        h[HEADER_FIELDS..].copy_from_slice(&sum.to_ne_bytes());
        h
    }
}

/// Why an existing file cannot be used as it is.
fn header_mismatch(layout: &Layout, found: &[u8]) -> Option<&'static str> {
    let want = layout.header_bytes();
    if found.len() < want.len() || found[..8] != FILE_MAGIC {
        return Some("not a Cache::FastMmap (Rust core) file");
    }
    let sum = xxhash_rust::xxh3::xxh3_64(&found[..HEADER_FIELDS]);
    if found[HEADER_FIELDS..HEADER_FIELDS + 8] != sum.to_ne_bytes() {
        return Some("damaged header");
    }
    if found[..want.len()] != want[..] {
        return Some("different format or geometry");
    }
    None
}

/// The lock backend named by a sound header (magic and checksum right) when it is not
/// this build's: files of the two backends have lock table entries of different meaning.
fn other_backend(found: &[u8]) -> Option<&'static str> {
    if found.len() < HEADER_FIELDS + 8 || found[..8] != FILE_MAGIC {
        return None;
    }
    let sum = xxhash_rust::xxh3::xxh3_64(&found[..HEADER_FIELDS]);
    if found[HEADER_FIELDS..HEADER_FIELDS + 8] != sum.to_ne_bytes() {
        return None;
    }
    let kind = u32::from_ne_bytes(found[LOCK_KIND_AT..LOCK_KIND_AT + 4].try_into().ok()?);
    match kind {
        k if k == lock::KIND => None,
        2 => Some("robust-mutex"),
        3 => Some("fcntl"),
        _ => Some("unknown"),
    }
}

/// What the header of an existing file says, checked without knowing the geometry it
/// should have (for inspection tools): the layout it describes, or what is wrong with it.
/// `file_len` is the file's actual size. Every field is checked against the others and
/// against what this build writes, so a hostile header cannot give out-of-range offsets.
pub fn parse_header(found: &[u8], file_len: u64) -> std::result::Result<Layout, String> {
    if found.len() < HEADER_FIELDS + 8 || found[..8] != FILE_MAGIC {
        return Err("not a Cache::FastMmap (Rust core) file: bad magic".into());
    }
    let u32_at = |off: usize| u32::from_ne_bytes(found[off..off + 4].try_into().unwrap());
    let sum = xxhash_rust::xxh3::xxh3_64(&found[..HEADER_FIELDS]);
    if found[HEADER_FIELDS..HEADER_FIELDS + 8] != sum.to_ne_bytes() {
        return Err("damaged header: its checksum does not match".into());
    }
    if u32_at(64) != ENDIAN_MARK {
        return Err("made on a machine of the other byte order".into());
    }
    let version = u32_at(8);
    if version != FORMAT_VERSION {
        return Err(format!(
            "format version {version}, this build reads version {FORMAT_VERSION} \
             (the next Cache::FastMmap to open it replaces it)"
        ));
    }
    let geometry = Geometry {
        page_size: u32_at(16),
        num_pages: u32_at(20),
        start_slots: u32_at(24),
    };
    let layout = Layout::new(geometry).map_err(|e| format!("bad geometry: {}", e.message()))?;
    if let Some(other) = other_backend(found) {
        return Err(format!(
            "made by a build with the {other} lock backend; this build uses {}",
            lock::NAME
        ));
    }
    if found[..HEADER_FIELDS + 8] != layout.header_bytes()[..] {
        return Err(
            "header fields (lock kind, mutex size or offsets) differ from this build's".into(),
        );
    }
    if file_len != layout.file_size {
        return Err(format!(
            "file is {file_len} bytes, its header says {}",
            layout.file_size
        ));
    }
    Ok(layout)
}

/// A share-file mapping under the SIGBUS safety net (see `platform::sigbus`): if the file
/// shrinks under it, the range reads as zeros instead of killing the process, and `lost`
/// says so.
pub struct GuardedMap {
    map: MmapRaw,
    slot: Option<usize>,
}

impl GuardedMap {
    fn new(map: MmapRaw) -> GuardedMap {
        let slot = platform::sigbus::register(map.as_mut_ptr(), map.len());
        GuardedMap { map, slot }
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.map.as_ptr()
    }

    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// The file under this mapping shrank (a SIGBUS was absorbed): what it shows now is
    /// zero pages, not the file.
    pub fn lost(&self) -> bool {
        self.slot.is_some_and(platform::sigbus::lost)
    }
}

impl Drop for GuardedMap {
    fn drop(&mut self) {
        // Unregistered before `map` is unmapped (fields drop after this).
        if let Some(slot) = self.slot {
            platform::sigbus::unregister(slot);
        }
    }
}

/// An open, mapped share file.
pub struct MappedFile {
    pub layout: Layout,
    pub path: PathBuf,
    file: ShareFile,
    map: GuardedMap,
    ino: u64,
    locker: lock::Locker,
}

impl MappedFile {
    /// The file shrank under the mapping (see [`GuardedMap`]): re-open it.
    pub fn lost(&self) -> bool {
        self.map.lost()
    }

    /// Who this opener is, for the page locks.
    pub fn locker(&self) -> &lock::Locker {
        &self.locker
    }

    /// Pointer to the start of page `n`. Valid while `self` lives; `n < num_pages`.
    pub fn page_ptr(&self, n: u32) -> *mut u8 {
        debug_assert!(n < self.layout.geometry.num_pages);
        let off = self.layout.page_off(n);
        self.map.as_mut_ptr().wrapping_add(off as usize)
    }

    /// Pointer to the start of the mapping (the header). Valid while `self` lives.
    pub fn base_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// Pointer to page `n`'s lock entry. Valid while `self` lives; `n < num_pages`.
    pub fn lock_entry(&self, n: u32) -> *mut u8 {
        debug_assert!(n < self.layout.geometry.num_pages);
        let off = self.layout.lock_off(n);
        self.map.as_mut_ptr().wrapping_add(off as usize)
    }

    /// Has the open file been swapped underneath us (another fd now at this number)?
    pub fn check_fd(&self) -> Result<()> {
        let meta = self.file.metadata().map_err(|e| {
            Error::os(
                format!(
                    "Underlying cache file fd {} fstat failed",
                    self.file.as_raw_fd()
                ),
                &e,
            )
        })?;
        if meta.ino() != self.ino {
            return Err(Error::new(format!(
                "Underlying cache file fd {} was inode {} but now {}, something messed up underlying file descriptors",
                self.file.as_raw_fd(),
                self.ino,
                meta.ino()
            )));
        }
        Ok(())
    }

    /// A second handle on the same open file (a duplicated descriptor, which shares the
    /// open file description and so its liveness lock) with a mapping of its own. Used for
    /// a new Perl interpreter (ithreads), which may run as a user who could not open the
    /// file by name (mod_perl's threaded MPMs clone interpreters after dropping root).
    pub fn duplicate(&self) -> Result<MappedFile> {
        let shown = self.path.display().to_string();
        let file = self
            .file
            .try_clone()
            .map_err(|e| Error::os(format!("Dup of share file {shown} failed"), &e))?;
        let map = map_file(&file, &self.layout, &shown)?;
        // The duplicate shares the open file description, and with it the opener slot
        // that marks this description's lock holders as alive.
        let locker = lock::duplicate_opener(&self.locker, &file);
        Ok(MappedFile {
            layout: self.layout,
            path: self.path.clone(),
            file,
            map,
            ino: self.ino,
            locker,
        })
    }

    /// Opens (creating or replacing as needed) the share file at `path`.
    pub fn open(
        path: &Path,
        layout: Layout,
        init_file: bool,
        permissions: u32,
    ) -> Result<MappedFile> {
        let shown = path.display().to_string();
        let mut replace = init_file;
        for _ in 0..OPEN_ATTEMPTS {
            if replace {
                refuse_special(path)?;
                if let Err(e) = build_and_install(path, &layout, permissions, Install::Replace) {
                    // No room for a second copy, or a directory we cannot create in: rebuild
                    // the file in place, which is safe only while nobody else has it open.
                    rebuild_in_place(path, &layout, &shown, e)?;
                }
                replace = false;
            }
            let file = match open_existing(path) {
                Ok(f) => f,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    build_and_install(path, &layout, permissions, Install::IfAbsent)?;
                    continue;
                }
                Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                    return Err(Error::new(format!(
                        "Open of share file {shown} failed: it is a symbolic link, which is not followed"
                    )))
                }
                Err(e) => return Err(Error::os(format!("Open of share file {shown} failed"), &e)),
            };
            let exclusive = liveness_lock(&file, &shown)?;
            let meta = file
                .metadata()
                .map_err(|e| Error::os(format!("Stat of share file {shown} failed"), &e))?;
            if !meta.is_file() {
                return Err(Error::new(format!(
                    "Open of share file {shown} failed: not a regular file"
                )));
            }
            // Still the file the path names? Someone may have replaced it meanwhile.
            match std::fs::symlink_metadata(path) {
                Ok(now) if now.ino() == meta.ino() && now.dev() == meta.dev() => {}
                _ => continue,
            }
            if meta.len() == 0 {
                // Made empty by a `touch`, an operator's `: > file` or a restore: initialise
                // it in place when nobody else has it open. Otherwise the processes that
                // have it open are mapping a file that lost its pages (nobody initialises
                // files in place without the exclusive lock, so this is not a creation
                // under way): give the path a new file.
                if exclusive {
                    init_file_contents(&file, &layout, &shown)?;
                } else {
                    replace = true;
                }
                continue;
            }
            if meta.len() != layout.file_size {
                replace = true;
                continue;
            }
            let map = map_file(&file, &layout, &shown)?;
            // SAFETY: the mapping is at least HEADER_SIZE bytes long (the file size matched).
            let header = unsafe { std::slice::from_raw_parts(map.as_ptr(), HEADER_FIELDS + 8) };
            if header_mismatch(&layout, header).is_some() {
                if let (false, Some(other)) = (exclusive, other_backend(header)) {
                    // Replacing it would leave its users on the old file and us on a new
                    // one, each side replacing the other's at its next open: refuse.
                    return Err(Error::new(format!(
                        "Open of share file {shown} failed: it is in use by a Cache::FastMmap                          built with the {other} lock backend, and this one uses {} locks;                          the two cannot share a file (use another share_file, or stop the                          other processes first)",
                        lock::NAME
                    )));
                }
                replace = true;
                continue;
            }
            let mf = MappedFile {
                layout,
                path: path.to_path_buf(),
                file,
                map,
                ino: meta.ino(),
                locker: lock::Locker {
                    dev: meta.dev(),
                    ino: meta.ino(),
                    slot: lock::NO_SLOT,
                    fd: -1,
                    lock_table_off: layout.lock_table_off,
                    lock_stride: layout.page_stride,
                },
            };
            if exclusive {
                // The first opener also clears away what killed creators left.
                remove_stale_temps(&dir_of(path));
                // Nobody else has the file open: lock words left by dead processes (or a
                // reboot) are stale. Re-initialise them, then let others in.
                for n in 0..layout.geometry.num_pages {
                    // SAFETY: the entry lies in the mapping; no other process uses the file.
                    unsafe { lock::init(mf.lock_entry(n))? };
                }
                set_liveness_lock(&mf.file, crate::platform::LOCK_READ, false)
                    .map_err(|e| Error::os(format!("Lock of share file {shown} failed"), &e))?;
            }
            let mut mf = mf;
            mf.locker = lock::opener(
                &mf.file,
                meta.dev(),
                meta.ino(),
                layout.lock_table_off,
                layout.page_stride,
                &shown,
            )?;
            return Ok(mf);
        }
        Err(Error::new(format!(
            "Open of share file {shown} failed: it kept changing under us (other processes replacing it?)"
        )))
    }
}

/// Re-initialises the existing file at `path` in place (init_file, or another geometry)
/// when a replacement could not be built beside it (`why`). Only with the exclusive
/// liveness lock: a process that has the file open must never see it change shape. Errors
/// name the file and say why a replacement was not possible.
fn rebuild_in_place(path: &Path, layout: &Layout, shown: &str, why: Error) -> Result<()> {
    let file = match open_existing(path) {
        Ok(f) => f,
        // Nothing there to rebuild: the first error is the one to report.
        Err(_) => return Err(why),
    };
    let meta = file
        .metadata()
        .map_err(|e| Error::os(format!("Stat of share file {shown} failed"), &e))?;
    if !meta.is_file() {
        return Err(why);
    }
    if !liveness_lock(&file, shown)? {
        return Err(Error::new(format!(
            "{}; it cannot be rebuilt in place either while other processes have it open",
            why.message()
        )));
    }
    match std::fs::symlink_metadata(path) {
        Ok(now) if now.ino() == meta.ino() && now.dev() == meta.dev() => {}
        // Replaced meanwhile by someone else: use theirs.
        _ => return Ok(()),
    }
    init_file_contents(&file, layout, shown).map_err(|e| {
        Error::new(format!(
            "{}; rebuilding it in place failed too: {}",
            why.message(),
            e.message()
        ))
    })
}

/// Replacing renames a new file over the path: never do that to anything but a regular
/// file (a device such as /dev/null, a FIFO, a socket, a directory, or a symbolic link).
fn refuse_special(path: &Path) -> Result<()> {
    let shown = path.display();
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(Error::new(format!(
            "Open of share file {shown} failed: it is a symbolic link, which is not followed"
        ))),
        Ok(m) if !m.is_file() => Err(Error::new(format!(
            "Open of share file {shown} failed: not a regular file"
        ))),
        _ => Ok(()),
    }
}

fn cpath(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::new(format!("share_file {} contains a NUL byte", path.display())))
}

fn open_existing(path: &Path) -> io::Result<ShareFile> {
    let c = cpath(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    ShareFile::open_with(path, true, || {
        // SAFETY: c is a valid NUL-terminated path; the returned fd is owned by the File.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDWR | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a freshly opened descriptor nobody else owns.
        Ok(unsafe { File::from_raw_fd(fd) })
    })
}

/// Sets this opener's lock on byte 0 (the liveness range). Returns false when it would
/// block.
fn set_liveness_lock(file: &ShareFile, kind: i16, wait: bool) -> io::Result<bool> {
    file.byte_lock(0, kind, wait)
}

/// Takes the liveness lock: exclusive if nobody else has the file open (returns true), else
/// shared (waiting for an exclusive holder to finish initialising).
fn liveness_lock(file: &ShareFile, shown: &str) -> Result<bool> {
    let err = |e: io::Error| Error::os(format!("Lock of share file {shown} failed"), &e);
    if set_liveness_lock(file, crate::platform::LOCK_WRITE, false).map_err(err)? {
        return Ok(true);
    }
    set_liveness_lock(file, crate::platform::LOCK_READ, true).map_err(err)?;
    Ok(false)
}

fn map_file(file: &File, layout: &Layout, shown: &str) -> Result<GuardedMap> {
    MmapOptions::new()
        .len(layout.file_size as usize)
        .map_raw(file)
        .map(GuardedMap::new)
        .map_err(|e| Error::os(format!("Mmap of shared file {shown} failed"), &e))
}

/// Sizes an empty file and writes the header, lock table and empty pages.
fn init_file_contents(file: &File, layout: &Layout, shown: &str) -> Result<()> {
    // Blocks the file holds now count as free: an in-place rebuild truncates it first (and
    // a filesystem may report blocks freed by a truncation only a little later).
    #[allow(clippy::useless_conversion)]
    let own = file
        .metadata()
        .map(|m| u64::from(m.blocks()).saturating_mul(512))
        .unwrap_or(0);
    // SAFETY: fd is open for writing; an in-place rebuild starts from an empty file.
    if own > 0 && unsafe { libc::ftruncate(file.as_raw_fd(), 0) } != 0 {
        return Err(Error::last_os(format!(
            "Truncate of share file {shown} failed"
        )));
    }
    // Refuse up front what cannot fit: reserving it would fill the filesystem (for every
    // other process too) before failing.
    // SAFETY: statvfs is plain data; fd is open.
    let mut vfs: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatvfs(file.as_raw_fd(), &mut vfs) } == 0 {
        // The fields are u32 on some 32-bit targets, hence the conversions.
        #[allow(clippy::useless_conversion)]
        let avail = u64::from(vfs.f_bavail)
            .saturating_mul(u64::from(vfs.f_frsize))
            .max(own);
        if vfs.f_frsize > 0 && layout.file_size > avail {
            return Err(Error::new(format!(
                "Create of share file {shown} failed: a {}-byte cache does not fit in the {avail} bytes free on its filesystem",
                layout.file_size
            )));
        }
    }
    // Reserve the blocks now: a full disk is an error here, not a SIGBUS later.
    // SAFETY: fd is open for writing.
    if let Err(e) = platform::reserve_space(file.as_raw_fd(), layout.file_size) {
        return Err(Error::os(
            format!("Create of share file {shown} failed"),
            &e,
        ));
    }
    let map = map_file(file, layout, shown)?;
    let base = map.as_mut_ptr();
    let g = layout.geometry;
    let header = layout.header_bytes();
    // SAFETY: the mapping is file_size bytes, which covers the header, every lock entry and
    // every page; nobody else uses this file yet (a private temporary, or held exclusively).
    unsafe {
        std::ptr::copy_nonoverlapping(header.as_ptr(), base, header.len());
        for n in 0..g.num_pages {
            lock::init(base.add(layout.lock_off(n) as usize))?;
            let page = base.add(layout.page_off(n) as usize);
            Page::new(std::slice::from_raw_parts_mut(page, g.page_size as usize))
                .init_zeroed(g.start_slots);
        }
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Install {
    /// Put the new file in place only if nothing is there (losing a race is fine).
    IfAbsent,
    /// Replace whatever is there (init_file, or a foreign/mismatched file).
    Replace,
}

/// Named temporary files (only where an unnamed O_TMPFILE cannot be had, and for the
/// moment between linking and renaming a replacement) are `.fmmap-tmp-<64 random bits>`
/// in the share file's directory: short, so that every share_file name that fits the
/// directory works, and random, so creators in different PID namespaces never collide.
const TEMP_PREFIX: &str = ".fmmap-tmp-";
/// Attempts at a fresh random temporary name (EEXIST), and at building again when a
/// cleaner removed our named temporary in the instant before we locked it.
const TEMP_ATTEMPTS: u32 = 16;

/// The directory a share file lives in ("." for a bare name).
fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn temp_name(dir: &Path) -> PathBuf {
    dir.join(format!("{TEMP_PREFIX}{:016x}", platform::random_u64()))
}

/// A file being built. Its creator holds an exclusive OFD lock on byte 0 from before it
/// has a name until it is installed, so a named temporary whose byte 0 is not locked by
/// anyone was left by a dead creator (see [`remove_stale_temps`]).
struct Building {
    file: ShareFile,
    /// The temporary name, if it has one (None: O_TMPFILE, no name at all).
    name: Option<PathBuf>,
}

impl Drop for Building {
    fn drop(&mut self) {
        if let Some(n) = &self.name {
            let _ = std::fs::remove_file(n);
        }
    }
}

fn create_named_temp(dir: &Path, permissions: u32, shown: &str) -> Result<Building> {
    for _ in 0..TEMP_ATTEMPTS {
        let tmp = temp_name(dir);
        let c = cpath(&tmp)?;
        // SAFETY: c is a valid path; the fd is owned by the File below.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                permissions as libc::c_uint,
            )
        };
        if fd < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EEXIST) {
                continue;
            }
            return Err(Error::last_os(format!(
                "Create of share file {shown} failed"
            )));
        }
        // SAFETY: fd is a freshly opened descriptor nobody else owns.
        let file = ShareFile::adopt(unsafe { File::from_raw_fd(fd) }, true)
            .map_err(|e| Error::os(format!("Create of share file {shown} failed"), &e))?;
        let b = Building {
            file,
            name: Some(tmp),
        };
        lock_building(&b.file, shown)?;
        return Ok(b);
    }
    Err(Error::new(format!(
        "Create of share file {shown} failed: no free temporary name in {TEMP_ATTEMPTS} tries"
    )))
}

fn lock_building(file: &ShareFile, shown: &str) -> Result<()> {
    set_liveness_lock(file, crate::platform::LOCK_WRITE, false)
        .map_err(|e| Error::os(format!("Lock of share file {shown} failed"), &e))
        .and_then(|got| {
            if got {
                Ok(())
            } else {
                Err(Error::new(format!(
                    "Lock of share file {shown} failed: a new temporary file is locked by someone else"
                )))
            }
        })
}

/// A new, locked, empty file in `dir`: unnamed (O_TMPFILE) where the filesystem can, else
/// under a random temporary name.
fn create_temp(dir: &Path, permissions: u32, shown: &str) -> Result<Building> {
    let cdir = cpath(dir)?;
    match platform::open_tmpfile(&cdir, permissions) {
        Ok(Some(file)) => {
            let file = ShareFile::adopt(file, true)
                .map_err(|e| Error::os(format!("Create of share file {shown} failed"), &e))?;
            lock_building(&file, shown)?;
            Ok(Building { file, name: None })
        }
        Ok(None) => create_named_temp(dir, permissions, shown),
        Err(e) => Err(Error::os(
            format!("Create of share file {shown} failed"),
            &e,
        )),
    }
}

/// Removes named temporaries of dead creators from `dir`: a `.fmmap-tmp-*` regular file
/// whose byte 0 nobody has locked (a live creator locks it before anything else; if a
/// cleaner wins that instant, the creator finds its name gone and builds again). Best
/// effort: errors only mean nothing is removed.
pub fn remove_stale_temps(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for ent in rd.flatten() {
        let name = ent.file_name();
        let b = name.as_bytes();
        if !b.starts_with(TEMP_PREFIX.as_bytes()) || b.len() != TEMP_PREFIX.len() + 16 {
            continue;
        }
        let p = dir.join(&name);
        let Ok(file) = open_existing(&p) else {
            continue;
        };
        let (Ok(m), Ok(now)) = (file.metadata(), std::fs::symlink_metadata(&p)) else {
            continue;
        };
        if !m.is_file() || m.ino() != now.ino() || m.dev() != now.dev() {
            continue;
        }
        if !file.byte_locked_elsewhere(0) {
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// Builds a complete new file next to `path`, then installs it.
fn build_and_install(path: &Path, layout: &Layout, permissions: u32, how: Install) -> Result<()> {
    let shown = path.display().to_string();
    let dir = dir_of(path);
    remove_stale_temps(&dir);
    for _ in 0..TEMP_ATTEMPTS {
        let mut b = create_temp(&dir, permissions, &shown)?;
        init_file_contents(&b.file, layout, &shown)?;
        match install(&mut b, &dir, path, how) {
            // A cleaner removed our named temporary before we had locked it: again.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && b.name.is_some() => continue,
            Err(e) => {
                let verb = if how == Install::Replace {
                    "Replace"
                } else {
                    "Create"
                };
                return Err(Error::os(
                    format!("{verb} of share file {shown} failed"),
                    &e,
                ));
            }
            Ok(()) => return Ok(()),
        }
    }
    Err(Error::new(format!(
        "Create of share file {shown} failed: its temporary file kept disappearing"
    )))
}

fn install(b: &mut Building, dir: &Path, path: &Path, how: Install) -> io::Result<()> {
    let target = cpath(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    if b.name.is_none() {
        if how == Install::IfAbsent {
            // An unnamed file gets its name at last: if the name is taken, another
            // creator won and its file is used.
            return match platform::link_fd(&b.file, &target) {
                Err(e) if e.raw_os_error() != Some(libc::EEXIST) => Err(e),
                _ => Ok(()),
            };
        }
        // Replacing needs a rename, so a name first (locked, so not stale).
        let tmp = temp_name(dir);
        let c = cpath(&tmp).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        platform::link_fd(&b.file, &c)?;
        b.name = Some(tmp);
    }
    let tmp = b.name.clone().expect("named above");
    let from = cpath(&tmp).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let r = match how {
        Install::Replace => std::fs::rename(&tmp, path),
        Install::IfAbsent => match platform::rename_noreplace(&from, &target) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                // No renameat2 on this filesystem: a hard link does the same job.
                match std::fs::hard_link(&tmp, path) {
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
                    r => r,
                }
            }
            r => r,
        },
    };
    if r.is_ok() && how == Install::Replace {
        b.name = None; // the name is the share file's now
    }
    r
}

/// `OsStr` from raw path bytes (share_file comes from Perl as bytes).
pub fn path_from_bytes(b: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo() -> Geometry {
        Geometry {
            page_size: 4096,
            num_pages: 3,
            start_slots: 89,
        }
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fmtest-file-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn layout_rejects_bad_geometry_naming_the_option() {
        let mut g = geo();
        g.page_size = 256;
        assert!(Layout::new(g)
            .unwrap_err()
            .message()
            .contains("page_size 256"));
        g = geo();
        g.num_pages = 0;
        assert!(Layout::new(g).unwrap_err().message().contains("num_pages"));
        g = geo();
        g.page_size = MAX_PAGE_SIZE;
        g.num_pages = u32::MAX;
        assert!(Layout::new(g).is_ok() || cfg!(target_pointer_width = "32"));
    }

    #[test]
    fn each_page_follows_its_lock_entry_on_cache_line_boundaries() {
        for page_size in [4096, 1000, 1001] {
            let l = Layout::new(Geometry {
                page_size,
                num_pages: 3,
                start_slots: 44,
            })
            .unwrap();
            for n in 0..3 {
                assert_eq!(l.page_off(n), l.lock_off(n) + LOCK_STRIDE as u64);
                assert_eq!(l.lock_off(n) % 64, 0, "page size {page_size}, entry {n}");
                assert!(l.page_off(n) + u64::from(page_size) <= l.lock_off(n + 1));
            }
            assert_eq!(l.file_size, l.lock_off(3), "page size {page_size}");
        }
    }

    #[test]
    fn create_open_and_reuse() {
        let d = tmpdir("reuse");
        let p = d.join("c");
        let l = Layout::new(geo()).unwrap();
        let a = MappedFile::open(&p, l, false, 0o600).unwrap();
        let ino = a.ino;
        let b = MappedFile::open(&p, l, false, 0o600).unwrap();
        assert_eq!(b.ino, ino);
        drop((a, b));
        // Different geometry: replaced by a fresh file (new inode).
        let mut g2 = geo();
        g2.num_pages = 5;
        let c = MappedFile::open(&p, Layout::new(g2).unwrap(), false, 0o600).unwrap();
        assert_ne!(c.ino, ino);
        // init_file: always a new inode.
        let e = MappedFile::open(&p, Layout::new(g2).unwrap(), true, 0o600).unwrap();
        assert_ne!(e.ino, c.ino);
        // No temporary files left behind.
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn foreign_and_empty_files_are_handled() {
        let d = tmpdir("foreign");
        let p = d.join("c");
        let l = Layout::new(geo()).unwrap();
        std::fs::write(&p, vec![0xAB; l.file_size as usize]).unwrap();
        let ino0 = std::fs::metadata(&p).unwrap().ino();
        let a = MappedFile::open(&p, l, false, 0o600).unwrap();
        assert_ne!(a.ino, ino0, "same-size foreign file must be replaced");
        drop(a);
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, b"").unwrap();
        let ino1 = std::fs::metadata(&p).unwrap().ino();
        let b = MappedFile::open(&p, l, false, 0o600).unwrap();
        assert_eq!(b.ino, ino1, "an empty file is initialised in place");
        assert_eq!(std::fs::metadata(&p).unwrap().len(), l.file_size);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn init_file_never_replaces_a_special_file() {
        let d = tmpdir("special");
        let fifo = d.join("fifo");
        let c = cpath(&fifo).unwrap();
        // SAFETY: c is a valid path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = MappedFile::open(&fifo, Layout::new(geo()).unwrap(), true, 0o600)
            .err()
            .unwrap();
        assert!(err.message().contains("not a regular file"), "{err}");
        assert!(std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn symlink_is_refused() {
        let d = tmpdir("symlink");
        let target = d.join("target");
        std::fs::write(&target, b"precious").unwrap();
        let p = d.join("c");
        std::os::unix::fs::symlink(&target, &p).unwrap();
        let err = MappedFile::open(&p, Layout::new(geo()).unwrap(), false, 0o600)
            .err()
            .unwrap();
        assert!(err.message().contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn stale_temporaries_go_live_ones_stay() {
        let d = tmpdir("stale");
        let stale = d.join(format!("{TEMP_PREFIX}{:016x}", 0xdead_u64));
        std::fs::write(&stale, vec![0u8; 8192]).unwrap();
        let other = d.join(format!("{TEMP_PREFIX}notours"));
        std::fs::write(&other, b"x").unwrap();
        let live = create_named_temp(&d, 0o600, "test").unwrap();
        let live_name = live.name.clone().unwrap();
        remove_stale_temps(&d);
        assert!(!stale.exists(), "a temporary nobody locks is removed");
        assert!(other.exists(), "a name not of our pattern is left alone");
        assert!(
            live_name.exists(),
            "a temporary its creator still locks is kept"
        );
        drop(live);
        assert!(!live_name.exists(), "a creator removes its own temporary");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_longest_name_the_directory_takes_works() {
        let d = tmpdir("long");
        let p = d.join("n".repeat(255));
        let l = Layout::new(geo()).unwrap();
        let a = MappedFile::open(&p, l, false, 0o600).unwrap();
        drop(a);
        let b = MappedFile::open(&p, l, true, 0o600).unwrap();
        drop(b);
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Rewrites the header of the file at `p` as the other lock backend writes it.
    fn as_other_backend(p: &Path) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .unwrap();
        let mut h = [0u8; HEADER_FIELDS + 8];
        f.read_exact_at(&mut h, 0).unwrap();
        let other: u32 = if lock::KIND == 2 { 3 } else { 2 };
        h[LOCK_KIND_AT..LOCK_KIND_AT + 4].copy_from_slice(&other.to_ne_bytes());
        let sum = xxhash_rust::xxh3::xxh3_64(&h[..HEADER_FIELDS]);
        h[HEADER_FIELDS..].copy_from_slice(&sum.to_ne_bytes());
        f.write_all_at(&h, 0).unwrap();
        // (Leaked, not closed: with the fcntl backend closing a second descriptor of the
        // file would drop this process's locks on it, which the test relies on.)
        std::mem::forget(f);
    }

    #[test]
    fn a_file_of_the_other_lock_backend_is_refused_while_in_use() {
        let d = tmpdir("backend");
        let p = d.join("c");
        let l = Layout::new(geo()).unwrap();
        let a = MappedFile::open(&p, l, false, 0o600).unwrap();
        as_other_backend(&p);
        let err = MappedFile::open(&p, l, false, 0o600).err().unwrap();
        assert!(err.message().contains("lock backend"), "{err}");
        drop(a);
        // Nobody has it open: replaced like a file of another geometry.
        let b = MappedFile::open(&p, l, false, 0o600).unwrap();
        let found = std::fs::read(&p).unwrap();
        assert!(parse_header(&found, found.len() as u64).is_ok());
        drop(b);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_file_truncated_while_open_is_replaced() {
        let d = tmpdir("trunc");
        let p = d.join("c");
        let l = Layout::new(geo()).unwrap();
        let a = MappedFile::open(&p, l, false, 0o600).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(0)
            .unwrap();
        let b = MappedFile::open(&p, l, false, 0o600).unwrap();
        assert_ne!(
            b.ino, a.ino,
            "a new file, since `a` still has the old one open"
        );
        assert_eq!(std::fs::metadata(&p).unwrap().len(), l.file_size);
        drop((a, b));
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
