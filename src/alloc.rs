//! The global allocator of arrowport's own Rust code: the system allocator, except that blocks of 256 KiB and
//! more are mapped from the kernel directly and given back when freed, but for a small bounded cache (see
//! [`LargeMmap`]). With `duck/`, the only module that holds `unsafe`; it uses nothing but std.
#![allow(unsafe_code)]

use std::ffi::{c_int, c_void};
use std::sync::Mutex;

/// Allocations at least this large are mapped from the kernel; their sizes are rounded up to a multiple of it.
const LARGE_ALLOC: usize = 256 << 10;
const PAGE: usize = 4096;
/// Freed large blocks kept mapped for reuse, at most this many bytes in all...
const CACHE_BYTES: usize = 32 << 20;
/// ...of blocks of at most this size each...
const CACHE_BLOCK: usize = 8 << 20;
/// ...in at most this many slots.
const CACHE_SLOTS: usize = 64;

unsafe extern "C" {
    fn mmap(addr: *mut c_void, len: usize, prot: c_int, flags: c_int, fd: c_int, offset: i64) -> *mut c_void;
    fn munmap(addr: *mut c_void, len: usize) -> c_int;
    fn mremap(old: *mut c_void, old_len: usize, new_len: usize, flags: c_int, ...) -> *mut c_void;
}

const PROT_READ_WRITE: c_int = 0x1 | 0x2;
const MAP_PRIVATE_ANONYMOUS: c_int = 0x02 | 0x20;
const MREMAP_MAYMOVE: c_int = 1;

fn map_failed(p: *mut c_void) -> bool {
    p as usize == usize::MAX
}

/// The global allocator of arrowport's Rust code (not of the host): the system allocator, except that blocks of
/// 256 KiB and more (decoded and gathered Arrow buffers, network messages) are mapped directly, and given back
/// to the kernel when freed, but for a small bounded cache of recently freed blocks.
///
/// Why: batches are allocated on the network threads and freed on DuckDB's threads after the scan; with glibc's
/// dynamic mmap threshold those multi-megabyte blocks land in the heap and are kept after they are freed, so the
/// host's RSS grew by about the size of every large request (measured: +500 MiB per 10M-row DoPut, again for
/// each one) although nothing stayed referenced. Mapped directly, freed memory goes back to the kernel at once;
/// but a fresh mapping costs a page fault per 4 KiB on first touch, which was half the network thread's time in
/// a large DoPut. A stream of batches frees and allocates blocks of the same few sizes over and over, so up to
/// [`CACHE_BYTES`] of freed blocks stay mapped and are handed out again for the same rounded size (the newest
/// first; a full cache gives its oldest back): that bounds what is kept while idle, and a steady stream reuses
/// its pages. A large block that grows moves into a cached block of its new size when there is one, since
/// copying into touched pages costs less than the fresh pages of a grown mapping. Measured on `arrowport_send`
/// of 10M rows over Flight (it gathers 1 MB column buffers and encodes 5 MB messages): about 220,000 page
/// faults and 0.8 s of the sender's CPU with a 1 MiB threshold, a 32 MiB cache and growth by `mremap`;
/// 2,000-15,000 faults and 0.5 s as it is.
pub struct LargeMmap;

fn large(size: usize, align: usize) -> bool {
    size >= LARGE_ALLOC && align <= PAGE
}

/// The length of the mapping that holds a large block of `size` bytes.
fn mapped_len(size: usize) -> usize {
    size.div_ceil(LARGE_ALLOC) * LARGE_ALLOC
}

/// Freed mappings kept for reuse: (address, length) in the first `count` slots, oldest first.
struct BlockCache {
    slots: [(usize, usize); CACHE_SLOTS],
    count: usize,
    bytes: usize,
}

static CACHE: Mutex<BlockCache> = Mutex::new(BlockCache { slots: [(0, 0); CACHE_SLOTS], count: 0, bytes: 0 });

/// The cache, whose slots are consistent at every unlock (a poisoned lock only means a panic elsewhere).
fn cache() -> std::sync::MutexGuard<'static, BlockCache> {
    CACHE.lock().unwrap_or_else(|p| p.into_inner())
}

impl BlockCache {
    /// The newest cached mapping of exactly `len` bytes, taken out of the cache.
    fn take(&mut self, len: usize) -> Option<*mut u8> {
        let i = self.slots[..self.count].iter().rposition(|&(_, l)| l == len)?;
        let (addr, _) = self.slots[i];
        self.slots.copy_within(i + 1..self.count, i);
        self.count -= 1;
        self.bytes -= len;
        Some(addr as *mut u8)
    }

    /// Keeps a mapping as the newest, first making room by handing back the oldest ones (to be unmapped by the
    /// caller, outside the lock) when the cache is full. `Err` when the block is too large to be kept at all.
    fn keep(&mut self, addr: *mut u8, len: usize, evicted: &mut [(usize, usize); EVICT_AT_ONCE]) -> Result<usize, ()> {
        if len > CACHE_BLOCK {
            return Err(());
        }
        let mut out = 0;
        while self.count == CACHE_SLOTS || self.bytes + len > CACHE_BYTES {
            let oldest = self.slots[0];
            self.slots.copy_within(1..self.count, 0);
            self.count -= 1;
            self.bytes -= oldest.1;
            evicted[out] = oldest;
            out += 1;
        }
        self.slots[self.count] = (addr as usize, len);
        self.count += 1;
        self.bytes += len;
        Ok(out)
    }
}

/// At most how many cached mappings one freed block pushes out: it is at most [`CACHE_BLOCK`] long, and each
/// cached one at least [`LARGE_ALLOC`], plus one for a full set of slots.
const EVICT_AT_ONCE: usize = CACHE_BLOCK / LARGE_ALLOC + 1;

/// A mapping of `len` bytes: a cached one, or a fresh one (zero-filled) from the kernel. `.1` says it is fresh.
fn map(len: usize) -> (*mut u8, bool) {
    let cached = cache().take(len);
    if let Some(p) = cached {
        return (p, false);
    }
    // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
    let p = unsafe { mmap(std::ptr::null_mut(), len, PROT_READ_WRITE, MAP_PRIVATE_ANONYMOUS, -1, 0) };
    (if map_failed(p) { std::ptr::null_mut() } else { p.cast() }, true)
}

/// Keeps a freed mapping for reuse (giving older ones back to the kernel if the cache is full), or gives it
/// back to the kernel.
///
/// # Safety
/// `p` is the start of a mapping of exactly `len` bytes that nothing uses any more.
unsafe fn unmap(p: *mut u8, len: usize) {
    let mut evicted = [(0usize, 0usize); EVICT_AT_ONCE];
    // The lock is released at the end of this statement, before any munmap.
    let kept = cache().keep(p, len, &mut evicted);
    match kept {
        // SAFETY: mappings the cache owned alone, each of its recorded length.
        Ok(n) => evicted[..n].iter().for_each(|&(a, l)| unsafe {
            munmap(a as *mut c_void, l);
        }),
        // SAFETY: the caller's contract.
        Err(()) => unsafe {
            munmap(p.cast(), len);
        },
    }
}

// SAFETY: every block is either the system allocator's (small, or over-aligned) or a private anonymous mapping
// of `mapped_len` of its size, page-aligned (so any alignment up to a page holds); the size/alignment test and the
// rounding decide the same way for a block's allocation and its release, since Rust passes the same layout to
// both. A cached mapping is owned by the cache alone until it is handed out again.
unsafe impl std::alloc::GlobalAlloc for LargeMmap {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if !large(layout.size(), layout.align()) {
            // SAFETY: forwarded with the caller's layout.
            return unsafe { std::alloc::System.alloc(layout) };
        }
        map(mapped_len(layout.size())).0
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        if !large(layout.size(), layout.align()) {
            // SAFETY: forwarded with the caller's layout.
            return unsafe { std::alloc::System.alloc_zeroed(layout) };
        }
        let (p, fresh) = map(mapped_len(layout.size()));
        if !p.is_null() && !fresh {
            // SAFETY: a reused mapping of at least `layout.size()` bytes, ours alone now.
            unsafe { std::ptr::write_bytes(p, 0, layout.size()) };
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        if large(layout.size(), layout.align()) {
            // SAFETY: `ptr` is the start of our mapping of `mapped_len(layout.size())` bytes, freed by its owner.
            unsafe { unmap(ptr, mapped_len(layout.size())) };
        } else {
            // SAFETY: the system allocator's block, with its layout.
            unsafe { std::alloc::System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        let (was, will) = (large(layout.size(), layout.align()), large(new_size, layout.align()));
        match (was, will) {
            // SAFETY: the system allocator's block, resized by it.
            (false, false) => unsafe { std::alloc::System.realloc(ptr, layout, new_size) },
            (true, true) => {
                let (old_len, new_len) = (mapped_len(layout.size()), mapped_len(new_size));
                if old_len == new_len {
                    return ptr;
                }
                // A cached mapping of the new size is already touched: copying into it costs less than the
                // kernel's fresh pages behind a grown mapping (a growing buffer's usual path).
                // (The cache's lock is released at the end of this statement: `unmap` below takes it again.)
                let cached = cache().take(new_len);
                if let Some(p) = cached {
                    // SAFETY: two distinct mappings, each at least as long as what is copied; the old one is
                    // released after the copy, once.
                    unsafe {
                        std::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size));
                        unmap(ptr, old_len);
                    }
                    return p;
                }
                // SAFETY: our mapping, moved or resized by the kernel; the old mapping is gone afterwards.
                let p = unsafe { mremap(ptr.cast(), old_len, new_len, MREMAP_MAYMOVE) };
                if map_failed(p) { std::ptr::null_mut() } else { p.cast() }
            }
            _ => {
                // SAFETY: a new block of the new size with the same alignment (valid: the caller's contract),
                // the overlap copied, the old block released with its own layout.
                unsafe {
                    let new_layout = std::alloc::Layout::from_size_align_unchecked(new_size, layout.align());
                    let p = self.alloc(new_layout);
                    if !p.is_null() {
                        std::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                    p
                }
            }
        }
    }
}

#[cfg(test)]
mod alloc_tests {
    use super::*;
    use std::alloc::{GlobalAlloc, Layout};

    #[test]
    fn large_blocks_round_trip_through_their_mappings() {
        let a = LargeMmap;
        // SAFETY: test of the allocator itself; every block is used within its size and freed with its layout.
        unsafe {
            let small = Layout::from_size_align(64, 8).unwrap();
            let big = Layout::from_size_align(3 << 20, 64).unwrap();
            let p = a.alloc_zeroed(big);
            assert!(!p.is_null() && (p as usize).is_multiple_of(PAGE));
            assert_eq!(*p.add((3 << 20) - 1), 0);
            *p.add(12345) = 7;
            let q = a.realloc(p, big, 9 << 20);
            assert_eq!(*q.add(12345), 7);
            let r = a.realloc(q, Layout::from_size_align(9 << 20, 64).unwrap(), 100);
            assert_eq!(*r.add(99), 0);
            a.dealloc(r, Layout::from_size_align(100, 64).unwrap());
            let s = a.alloc(small);
            *s = 1;
            let t = a.realloc(s, small, 2 << 20);
            assert_eq!(*t, 1);
            a.dealloc(t, Layout::from_size_align(2 << 20, 8).unwrap());
        }
    }

    #[test]
    fn freed_blocks_are_reused_within_bounds_and_zeroed_when_asked() {
        let mut c = BlockCache { slots: [(0, 0); CACHE_SLOTS], count: 0, bytes: 0 };
        let block = |i: usize| (i * PAGE) as *mut u8;
        let mut evicted = [(0, 0); EVICT_AT_ONCE];
        assert_eq!(c.keep(block(1), 2 << 20, &mut evicted), Ok(0));
        assert_eq!(c.keep(block(2), 4 << 20, &mut evicted), Ok(0));
        assert_eq!(
            c.keep(block(3), CACHE_BLOCK + LARGE_ALLOC, &mut evicted),
            Err(()),
            "blocks over the per-block bound go back to the kernel"
        );
        assert_eq!(c.take(3 << 20), None, "only the same rounded size is reused");
        assert_eq!(c.take(4 << 20), Some(block(2)));
        assert_eq!((c.count, c.bytes), (1, 2 << 20));
        // Filling the cache pushes out the oldest blocks first, and never holds more than CACHE_BYTES.
        let mut out = Vec::new();
        for i in 10..10 + 2 * CACHE_BYTES / CACHE_BLOCK {
            let n = c.keep(block(i), CACHE_BLOCK, &mut evicted).unwrap();
            out.extend_from_slice(&evicted[..n]);
            assert!(c.bytes <= CACHE_BYTES);
        }
        assert_eq!(out[0], (PAGE, 2 << 20), "the oldest block goes first");
        assert_eq!(out[1], (10 * PAGE, CACHE_BLOCK));
        assert_eq!(c.bytes, CACHE_BYTES);
        assert_eq!(
            c.take(CACHE_BLOCK),
            Some(block(9 + 2 * CACHE_BYTES / CACHE_BLOCK)),
            "the newest block is reused first"
        );
        // A full set of small slots makes room too.
        let mut small = BlockCache { slots: [(0, 0); CACHE_SLOTS], count: 0, bytes: 0 };
        for i in 0..CACHE_SLOTS {
            assert_eq!(small.keep(block(i + 1), LARGE_ALLOC, &mut evicted), Ok(0));
        }
        assert_eq!(small.keep(block(100), LARGE_ALLOC, &mut evicted), Ok(1));
        assert_eq!(evicted[0], (PAGE, LARGE_ALLOC));

        // Through the allocator: a dirty freed block handed out zeroed.
        let a = LargeMmap;
        let big = Layout::from_size_align(3 << 20, 64).unwrap();
        // SAFETY: test of the allocator itself; every block is used within its size and freed with its layout.
        unsafe {
            let p = a.alloc(big);
            std::ptr::write_bytes(p, 0xAB, 3 << 20);
            a.dealloc(p, big);
            let q = a.alloc_zeroed(big);
            assert!((0..3 << 20).step_by(4093).all(|i| *q.add(i) == 0));
            a.dealloc(q, big);
        }
        // A block that grows into a cached mapping of its new size (the cache is taken, then released before the
        // old block is given back to it: this path once held the lock across both and never returned).
        let two = Layout::from_size_align(2 << 20, 64).unwrap();
        let one = Layout::from_size_align(1 << 20, 64).unwrap();
        // SAFETY: as above.
        unsafe {
            let cached = a.alloc(two);
            a.dealloc(cached, two);
            let p = a.alloc(one);
            std::ptr::write_bytes(p, 0x5A, 1 << 20);
            let grown = a.realloc(p, one, 2 << 20);
            assert!(!grown.is_null());
            assert!((0..1 << 20).step_by(4093).all(|i| *grown.add(i) == 0x5A));
            a.dealloc(grown, two);
        }
        assert_eq!(mapped_len(LARGE_ALLOC), LARGE_ALLOC);
        assert_eq!(mapped_len(LARGE_ALLOC + 1), 2 * LARGE_ALLOC);
    }
}
