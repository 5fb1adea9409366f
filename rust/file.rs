//! The share file: its header, layout, safe creation and opening.
//!
//! Layout: a 4 KiB header, a lock table (one 64-byte entry per page, rounded up to 4 KiB),
//! then `num_pages` pages of `page_size` bytes.
//!
//! Creation never exposes a half-made file: a new file is built and initialised under a
//! temporary name in the same directory, then linked into place (or renamed over a file that
//! must be replaced). Every process that has the file open holds a shared OFD lock on byte 0;
//! whoever gets it exclusively knows nobody else maps the file and may re-initialise the lock
//! words (stale after a reboot or a crash of every user).

use crate::error::{Error, Result};
use crate::lock::{self, LOCK_STRIDE, MUTEX_SIZE};
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
use std::sync::atomic::{AtomicU32, Ordering};

const FILE_MAGIC: [u8; 8] = *b"FMMAPRS\0";
const FORMAT_VERSION: u32 = 1;
const HEADER_SIZE: u64 = 4096;
/// Lock kind recorded in the header: robust process-shared pthread mutexes of the plain
/// kind, with holders' opener slots recorded (kind 1 was error-checking mutexes).
const LOCK_KIND_ROBUST_MUTEX: u32 = 2;
const ENDIAN_MARK: u32 = 0x0102_0304;
/// Bytes of the header covered by the checksum; the checksum follows them.
const HEADER_FIELDS: usize = 72;
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
    pub lock_table_off: u64,
    pub pages_off: u64,
    pub file_size: u64,
}

fn round_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
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
        let lock_table_off = HEADER_SIZE;
        let pages_off =
            lock_table_off + round_up(u64::from(g.num_pages) * LOCK_STRIDE as u64, 4096);
        let file_size = u64::from(g.num_pages)
            .checked_mul(u64::from(g.page_size))
            .and_then(|d| d.checked_add(pages_off))
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
            file_size,
        })
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
        put(28, &LOCK_KIND_ROBUST_MUTEX.to_ne_bytes());
        put(32, &(LOCK_STRIDE as u32).to_ne_bytes());
        put(36, &MUTEX_SIZE.to_ne_bytes());
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

/// An open, mapped share file.
pub struct MappedFile {
    pub layout: Layout,
    pub path: PathBuf,
    file: File,
    map: MmapRaw,
    ino: u64,
    locker: lock::Locker,
}

impl MappedFile {
    /// Who this opener is, for the page locks.
    pub fn locker(&self) -> &lock::Locker {
        &self.locker
    }

    /// Pointer to the start of page `n`. Valid while `self` lives; `n < num_pages`.
    pub fn page_ptr(&self, n: u32) -> *mut u8 {
        debug_assert!(n < self.layout.geometry.num_pages);
        let off = self.layout.pages_off + u64::from(n) * u64::from(self.layout.geometry.page_size);
        self.map.as_mut_ptr().wrapping_add(off as usize)
    }

    /// Pointer to page `n`'s lock table entry. Valid while `self` lives; `n < num_pages`.
    pub fn lock_entry(&self, n: u32) -> *mut u8 {
        debug_assert!(n < self.layout.geometry.num_pages);
        let off = self.layout.lock_table_off + u64::from(n) * LOCK_STRIDE as u64;
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
                build_and_install(path, &layout, permissions, Install::Replace)?;
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
                // Left empty by a crashed creator or a `touch`: initialise it in place, but
                // only when nobody else has it open.
                if exclusive {
                    init_file_contents(&file, &layout, &shown)?;
                } else {
                    std::thread::sleep(std::time::Duration::from_millis(1));
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
                },
            };
            if exclusive {
                // Nobody else has the file open: lock words left by dead processes (or a
                // reboot) are stale. Re-initialise them, then let others in.
                for n in 0..layout.geometry.num_pages {
                    // SAFETY: the entry lies in the mapping; no other process uses the file.
                    unsafe { lock::init(mf.lock_entry(n))? };
                }
                set_ofd_lock(&mf.file, libc::F_RDLCK as i16, false)
                    .map_err(|e| Error::os(format!("Lock of share file {shown} failed"), &e))?;
            }
            let mut mf = mf;
            mf.locker.fd = mf.file.as_raw_fd();
            mf.locker.slot = take_slot(&mf.file, &shown)?;
            return Ok(mf);
        }
        Err(Error::new(format!(
            "Open of share file {shown} failed: it kept changing under us (other processes replacing it?)"
        )))
    }
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

fn open_existing(path: &Path) -> io::Result<File> {
    let c = cpath(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
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
}

/// Sets an OFD lock on byte 0 (the liveness range). Returns false when it would block.
fn set_ofd_lock(file: &File, kind: i16, wait: bool) -> io::Result<bool> {
    // SAFETY: flock is plain data; all-zero is a valid starting value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = 0;
    fl.l_len = 1;
    let cmd = if wait {
        libc::F_OFD_SETLKW
    } else {
        libc::F_OFD_SETLK
    };
    loop {
        // SAFETY: fd is open; fl is a valid flock.
        if unsafe { libc::fcntl(file.as_raw_fd(), cmd, &fl) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) | Some(libc::EACCES) if !wait => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// Takes a free opener slot: an exclusive OFD lock on one byte of the slot range, kept while
/// the file is open, whose number this opener records in every lock it holds (see
/// `lock.rs`). Searching from a random start keeps the search short with many openers.
fn take_slot(file: &File, shown: &str) -> Result<u32> {
    let start = (platform::random_u64() % u64::from(lock::MAX_SLOTS)) as u32;
    for i in 0..lock::MAX_SLOTS {
        let slot = (start + i) % lock::MAX_SLOTS;
        let off = lock::slot_offset(slot);
        match platform::ofd_lock(file.as_raw_fd(), off, libc::F_WRLCK as i16, false) {
            Ok(true) => return Ok(slot),
            Ok(false) => continue,
            Err(e) => return Err(Error::os(format!("Lock of share file {shown} failed"), &e)),
        }
    }
    Err(Error::new(format!(
        "Lock of share file {shown} failed: {} processes have it open",
        lock::MAX_SLOTS
    )))
}

/// Takes the liveness lock: exclusive if nobody else has the file open (returns true), else
/// shared (waiting for an exclusive holder to finish initialising).
fn liveness_lock(file: &File, shown: &str) -> Result<bool> {
    let err = |e: io::Error| Error::os(format!("Lock of share file {shown} failed"), &e);
    if set_ofd_lock(file, libc::F_WRLCK as i16, false).map_err(err)? {
        return Ok(true);
    }
    set_ofd_lock(file, libc::F_RDLCK as i16, true).map_err(err)?;
    Ok(false)
}

fn map_file(file: &File, layout: &Layout, shown: &str) -> Result<MmapRaw> {
    MmapOptions::new()
        .len(layout.file_size as usize)
        .map_raw(file)
        .map_err(|e| Error::os(format!("Mmap of shared file {shown} failed"), &e))
}

/// Sizes an empty file and writes the header, lock table and empty pages.
fn init_file_contents(file: &File, layout: &Layout, shown: &str) -> Result<()> {
    let size = layout.file_size as libc::off_t;
    // Refuse up front what cannot fit: reserving it would fill the filesystem (for every
    // other process too) before failing.
    // SAFETY: statvfs is plain data; fd is open.
    let mut vfs: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatvfs(file.as_raw_fd(), &mut vfs) } == 0 {
        // The fields are u32 on some 32-bit targets, hence the conversions.
        #[allow(clippy::useless_conversion)]
        let avail = u64::from(vfs.f_bavail).saturating_mul(u64::from(vfs.f_frsize));
        if vfs.f_frsize > 0 && layout.file_size > avail {
            return Err(Error::new(format!(
                "Create of share file {shown} failed: a {}-byte cache does not fit in the {avail} bytes free on its filesystem",
                layout.file_size
            )));
        }
    }
    // Reserve the blocks now: a full disk is an error here, not a SIGBUS later.
    // SAFETY: fd is open for writing.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, size) };
    if rc != 0 {
        return Err(Error::os(
            format!("Create of share file {shown} failed"),
            &io::Error::from_raw_os_error(rc),
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
            let entry =
                base.add((layout.lock_table_off + u64::from(n) * LOCK_STRIDE as u64) as usize);
            lock::init(entry)?;
            let page =
                base.add((layout.pages_off + u64::from(n) * u64::from(g.page_size)) as usize);
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

static TEMP_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Builds a complete new file under a temporary name next to `path`, then installs it.
fn build_and_install(path: &Path, layout: &Layout, permissions: u32, how: Install) -> Result<()> {
    let shown = path.display().to_string();
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = PathBuf::from(tmp_name);
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
        return Err(Error::last_os(format!(
            "Create of share file {shown} failed"
        )));
    }
    // SAFETY: fd is a freshly opened descriptor nobody else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    let result = init_file_contents(&file, layout, &shown).and_then(|()| install(&tmp, path, how));
    drop(file);
    let _ = std::fs::remove_file(&tmp);
    result
}

fn install(tmp: &Path, path: &Path, how: Install) -> Result<()> {
    let shown = path.display();
    match how {
        Install::Replace => std::fs::rename(tmp, path)
            .map_err(|e| Error::os(format!("Replace of share file {shown} failed"), &e)),
        Install::IfAbsent => match std::fs::hard_link(tmp, path) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EOPNOTSUPP)) => {
                // Filesystems without hard links: an exclusive rename does the same job.
                rename_noreplace(tmp, path)
            }
            Err(e) => Err(Error::os(
                format!("Create of share file {shown} failed"),
                &e,
            )),
        },
    }
}

fn rename_noreplace(tmp: &Path, path: &Path) -> Result<()> {
    let (a, b) = (cpath(tmp)?, cpath(path)?);
    // SAFETY: both are valid NUL-terminated paths.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EEXIST) {
        Ok(())
    } else {
        Err(Error::last_os(format!(
            "Create of share file {} failed",
            path.display()
        )))
    }
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
}
