//! Shared pieces of the fuzz targets (`fuzz_targets/*.rs`, run by `run.sh`).
//!
//! * [`Counting`]: a global allocator that counts live bytes, so a target can assert that a
//!   parser's memory is bounded ([`measure`]); libFuzzer's own `-malloc_limit_mb` needs a
//!   sanitizer's malloc hooks, which a stable toolchain build does not have.
//! * [`Chunks`]: splits a byte stream at fuzzer-chosen points, to check that an incremental
//!   decoder gives the same result however its input arrives (a socket's partial reads).
//! * [`Unstructured`]: reads small choices off the front of the input.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting live bytes, their peak and the largest single request.
#[derive(Debug)]
pub struct Counting;

fn grew(size: usize) {
    let now = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(now, Ordering::Relaxed);
    LARGEST.fetch_max(size, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the counters
// are plain atomics and never affect what is allocated.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours, forwarded.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours, forwarded.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours, forwarded.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as ours, forwarded.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

/// What [`measure`] saw.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// Highest live heap above the level at the start, in bytes.
    pub peak: usize,
    /// Live heap at the end minus at the start (what the closure kept, e.g. in a decoder).
    pub retained: isize,
    /// Largest single allocation.
    pub largest: usize,
}

/// Run `f` and report its heap use (meaningful only in a binary whose global allocator is
/// [`Counting`]; the targets are single-threaded).
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, Memory) {
    let start = LIVE.load(Ordering::Relaxed);
    PEAK.store(start, Ordering::Relaxed);
    LARGEST.store(0, Ordering::Relaxed);
    let r = f();
    let end = LIVE.load(Ordering::Relaxed);
    let mem = Memory {
        peak: PEAK.load(Ordering::Relaxed).saturating_sub(start),
        retained: end as isize - start as isize,
        largest: LARGEST.load(Ordering::Relaxed),
    };
    (r, mem)
}

/// Small choices read off the front of the input; reads past the end give zeros.
#[derive(Debug)]
pub struct Unstructured<'a> {
    data: &'a [u8],
}

impl<'a> Unstructured<'a> {
    /// Read choices from `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Unstructured { data }
    }

    /// One byte (0 when exhausted).
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from(self.byte()) | (u16::from(self.byte()) << 8)
    }

    /// The rest of the input.
    pub fn rest(self) -> &'a [u8] {
        self.data
    }
}

/// Splits `data` into pieces whose lengths come from a tiny PRNG seeded by `seed` (1 to 64
/// bytes, sometimes the whole rest), so the same input is also fed in many small reads.
#[derive(Debug)]
pub struct Chunks<'a> {
    data: &'a [u8],
    state: u32,
}

impl<'a> Chunks<'a> {
    /// Pieces of `data` chosen by `seed`.
    pub fn new(data: &'a [u8], seed: u32) -> Self {
        Chunks {
            data,
            state: seed | 1,
        }
    }
}

impl<'a> Iterator for Chunks<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.data.is_empty() {
            return None;
        }
        // xorshift32
        self.state ^= self.state << 13;
        self.state ^= self.state >> 17;
        self.state ^= self.state << 5;
        let n = if self.state % 16 == 0 {
            self.data.len()
        } else {
            1 + (self.state as usize >> 4) % 64
        };
        let (head, tail) = self.data.split_at(n.min(self.data.len()));
        self.data = tail;
        Some(head)
    }
}

/// Input bytes as text the way a parser reading a file would get it (invalid UTF-8 makes the
/// file unreadable as a string, so such inputs are not interesting to text parsers).
pub fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}
