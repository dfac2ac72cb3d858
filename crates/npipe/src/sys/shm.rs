//! Shared memory for the fast data path: a sealed `memfd` mapped by both
//! ends of a connection. The seals (no shrinking, no growing) mean a peer
//! can never make our accesses fault (SIGBUS), and a received descriptor is
//! taken only if it carries them; everything else about the memory's
//! contents is untrusted, and the ring (`crate::shm`) bounds every value it
//! reads through this interface.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};

/// The seals a region must carry before it is mapped: its size is fixed
/// for good.
const REQUIRED_SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// A shared, fixed-size, mapped memory region.
#[derive(Debug)]
pub struct ShmRegion {
    /// The memory file, until the rings are made: the mapping does not
    /// need it, and a connection should hold one descriptor, not two.
    fd: Option<OwnedFd>,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory shared by design; every access goes
// through atomics or through copies that tolerate concurrent writers (see
// `read`, `append` and `write`), so using it from several threads is as sound as
// from several processes.
unsafe impl Send for ShmRegion {}
// SAFETY: as above.
unsafe impl Sync for ShmRegion {}

impl ShmRegion {
    /// A new zeroed region of `len` bytes, sealed against resizing.
    pub fn create(len: usize) -> io::Result<ShmRegion> {
        let fd = rustix::fs::memfd_create(
            c"npipe-ring",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        rustix::fs::ftruncate(&fd, len as u64)?;
        rustix::fs::fcntl_add_seals(&fd, REQUIRED_SEALS)?;
        Self::map(fd, len)
    }

    /// Maps a region a peer sent, if it is what we can agree to: a sealed
    /// memory file (so it can never shrink under us) whose size `fits`.
    /// Anything else is refused with `InvalidData`.
    ///
    /// (A huge-page memory file could fault with SIGBUS when the pool runs
    /// dry; such files come only in whole huge pages, a size no caller's
    /// `fits` takes: two rings always add 384 bytes to a power of two.)
    pub fn from_peer(fd: OwnedFd, fits: impl FnOnce(usize) -> bool) -> io::Result<ShmRegion> {
        match Self::peer_size(fd.as_fd(), fits) {
            Ok(size) => Self::map(fd, size),
            // Not a sealed memory file of ours to take: it may be any file
            // the peer chose, so it is not closed on this thread.
            Err(e) => {
                super::close_elsewhere(fd);
                Err(e)
            }
        }
    }

    /// The size of a peer's memory file, if it is sealed and `fits`.
    fn peer_size(fd: BorrowedFd<'_>, fits: impl FnOnce(usize) -> bool) -> io::Result<usize> {
        let refuse = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
        // Seals exist only on memory files: a regular file fails here.
        let seals = rustix::fs::fcntl_get_seals(fd)
            .map_err(|_| refuse("the peer's shared memory is not a sealed memory file"))?;
        if !seals.contains(REQUIRED_SEALS) {
            return Err(refuse("the peer's shared memory can still change size"));
        }
        // Sealed, so this size is for good.
        usize::try_from(rustix::fs::fstat(fd)?.st_size)
            .ok()
            .filter(|&size| fits(size))
            .ok_or_else(|| refuse("the peer's shared memory has the wrong size"))
    }

    fn map(fd: OwnedFd, len: usize) -> io::Result<ShmRegion> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an empty region",
            ));
        }
        // SAFETY: a fresh mapping (no address asked for) of `len` bytes of
        // a file that is exactly `len` bytes and sealed against shrinking,
        // so every page stays backed; it is unmapped once, in `Drop`.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )?
        };
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(ShmRegion {
            fd: Some(fd),
            ptr,
            len,
        })
    }

    /// The region's size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The memory file, to send to the peer (`SCM_RIGHTS`). Panics once
    /// [`close_fd`](Self::close_fd) closed it (a bug: only a region not in
    /// use yet is sent).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd
            .as_ref()
            .expect("the memory file was closed once the rings were made")
            .as_fd()
    }

    /// Closes the memory file; the mapping stays.
    pub fn close_fd(&mut self) {
        self.fd = None;
    }

    /// Panics unless `[off, off + n)` lies in the region and `off` is
    /// aligned to `align`: offsets come from the ring's own arithmetic,
    /// never from the peer unchecked, so a failure here is a bug.
    fn check(&self, off: usize, n: usize, align: usize) {
        assert!(
            off.is_multiple_of(align) && off.checked_add(n).is_some_and(|end| end <= self.len),
            "shared memory access out of bounds: {off}+{n} of {}",
            self.len
        );
    }

    /// The 64-bit word at `off` (8-aligned), as an atomic.
    pub fn u64_at(&self, off: usize) -> &AtomicU64 {
        self.check(off, 8, 8);
        // SAFETY: in bounds and aligned (checked), inside a mapping that
        // lives as long as `self`; the memory is only ever accessed as this
        // atomic at this offset by a well-behaved peer, and any bit
        // pattern is a valid u64.
        unsafe { AtomicU64::from_ptr(self.ptr.as_ptr().add(off).cast()) }
    }

    /// The 32-bit word at `off` (4-aligned), as an atomic (also a futex
    /// word shared with the peer).
    pub fn u32_at(&self, off: usize) -> &AtomicU32 {
        self.check(off, 4, 4);
        // SAFETY: as for `u64_at`.
        unsafe { AtomicU32::from_ptr(self.ptr.as_ptr().add(off).cast()) }
    }

    /// Copies `out.len()` bytes from `off`.
    pub fn read(&self, off: usize, out: &mut [u8]) {
        self.check(off, out.len(), 1);
        // SAFETY: in bounds (checked); `out` is our own memory and cannot
        // overlap the mapping. A hostile peer may write these bytes while
        // we copy them: we then get arbitrary bytes, which are still just
        // bytes, and the ring never trusts a payload's content.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(off), out.as_mut_ptr(), out.len())
        }
    }

    /// Appends the `n` bytes at `off` to `out`, without zeroing its new
    /// room first.
    pub fn append(&self, off: usize, n: usize, out: &mut Vec<u8>) {
        self.check(off, n, 1);
        out.reserve(n);
        let len = out.len();
        // SAFETY: in bounds (checked); `reserve` made room for `n` more
        // bytes in `out`, our own memory, which cannot overlap the mapping.
        // Every one of them is written before `set_len` counts them (bytes
        // a hostile peer changes meanwhile are still initialized bytes).
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(off), out.as_mut_ptr().add(len), n);
            out.set_len(len + n);
        }
    }

    /// Copies `data` to `off`.
    pub fn write(&self, off: usize, data: &[u8]) {
        self.check(off, data.len(), 1);
        // SAFETY: in bounds (checked); `data` is our own memory. The ring
        // writes only where the peer has released the space.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(off), data.len())
        }
    }
}

impl Drop for ShmRegion {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once; no reference
        // into it outlives `self` (accessors borrow `self`).
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Sleeps while the shared futex word at `word` still holds `expected`,
/// for at most `timeout`: `true` if the time ran out. Not private: the
/// peer is another process.
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<std::time::Duration>) -> bool {
    use rustix::thread::futex;
    let ts = timeout.map(|d| futex::Timespec {
        tv_sec: d.as_secs().try_into().unwrap_or(i64::MAX),
        tv_nsec: d.subsec_nanos().into(),
    });
    // Woken, interrupted or the value changed: the caller looks again in
    // every case, and asks after the peer only when the time ran out.
    matches!(
        futex::wait(word, futex::Flags::empty(), expected, ts.as_ref()),
        Err(rustix::io::Errno::TIMEDOUT)
    )
}

/// Wakes every sleeper on the shared futex word `word`.
pub fn futex_wake(word: &AtomicU32) {
    use rustix::thread::futex;
    let _ = futex::wake(word, futex::Flags::empty(), u32::MAX);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn a_region_is_sealed_and_shared_through_its_descriptor() {
        let a = ShmRegion::create(4096).unwrap();
        a.write(100, b"hello");
        a.u64_at(8).store(42, Ordering::Release);
        let b = ShmRegion::from_peer(a.fd().try_clone_to_owned().unwrap(), |n| n == 4096).unwrap();
        let mut got = [0u8; 5];
        b.read(100, &mut got);
        assert_eq!(&got, b"hello");
        assert_eq!(b.u64_at(8).load(Ordering::Acquire), 42);
        // The seals hold: nobody can shrink it under a mapping.
        assert!(rustix::fs::ftruncate(a.fd(), 0).is_err());
        // Without their descriptors the two mappings still share.
        let (mut a, mut b) = (a, b);
        a.close_fd();
        b.close_fd();
        b.write(200, b"after");
        a.read(200, &mut got);
        assert_eq!(&got, b"after");
    }

    #[test]
    fn a_peer_region_that_is_not_what_was_agreed_is_refused() {
        let a = ShmRegion::create(4096).unwrap();
        let wrong_size = ShmRegion::from_peer(a.fd().try_clone_to_owned().unwrap(), |n| n == 8192);
        assert_eq!(wrong_size.unwrap_err().kind(), io::ErrorKind::InvalidData);
        // An unsealed memory file could shrink later (SIGBUS): refused.
        let unsealed =
            rustix::fs::memfd_create(c"x", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
                .unwrap();
        rustix::fs::ftruncate(&unsealed, 4096).unwrap();
        let e = ShmRegion::from_peer(unsealed, |_| true).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        // A regular file has no seals at all.
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        let e = ShmRegion::from_peer(file.into(), |_| true).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn an_access_outside_the_region_is_a_bug_not_a_fault() {
        let a = ShmRegion::create(4096).unwrap();
        a.read(4090, &mut [0u8; 8]);
    }
}
