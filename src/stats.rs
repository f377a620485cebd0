//! Statistics: a snapshot of the heap, modelled on Go's `runtime.MemStats`.
//!
//! A snapshot sums the per-thread counters of every live thread cache (each
//! thread bumps its own counters with plain stores; a reader loads them
//! relaxed) and the counters the mheap and stack pools keep as they go. It
//! takes the cache registry's lock and each mcentral's lock briefly and
//! allocates nothing, so it is cheap enough to call often. Counters of
//! different threads are read one after another, so a snapshot taken while
//! other threads run is consistent only to within their activity meanwhile.

use core::fmt;
use core::ptr;

use crate::sizeclass::{CLASSES, NUM_CLASSES, PAGE_SIZE};
use crate::sync::unmodelled::Counter;

/// One class's counters in one cache: 16 bytes, so that the classes a
/// program uses share a few cache lines (only the cache's own thread
/// writes them; readers are rare).
#[repr(C)]
pub(crate) struct ClassCounters {
    pub(crate) mallocs: Counter,
    pub(crate) frees: Counter,
}

/// The counters of one cache, bumped by its thread with plain stores and
/// readable from any thread (for [`crate::Heap::stats`]).
pub(crate) struct CacheStats {
    pub(crate) classes: [ClassCounters; NUM_CLASSES],
    /// Pages of the spans the cache owns, as of its last slow path.
    pub(crate) owned_pages: Counter,
    /// Stacks in the thread's stack cache.
    pub(crate) stacks_cached: Counter,
    /// Large objects handed out from the large-object cache.
    pub(crate) large_hits: Counter,
    /// Objects and bytes in the large-object cache.
    pub(crate) large_kept: Counter,
    pub(crate) large_kept_bytes: Counter,
    /// Links in the heap's registry of thread caches (under its lock).
    pub(crate) links: core::cell::UnsafeCell<(*const CacheStats, *const CacheStats)>,
}

// SAFETY: the counters are atomics; the links are only touched under the
// registry lock.
unsafe impl Sync for CacheStats {}
unsafe impl Send for CacheStats {}

impl CacheStats {
    pub(crate) const fn new() -> Self {
        CacheStats {
            classes: [const { ClassCounters { mallocs: Counter::new(), frees: Counter::new() } }; NUM_CLASSES],
            owned_pages: Counter::new(),
            stacks_cached: Counter::new(),
            large_hits: Counter::new(),
            large_kept: Counter::new(),
            large_kept_bytes: Counter::new(),
            links: core::cell::UnsafeCell::new((ptr::null(), ptr::null())),
        }
    }
}

/// Per-size-class counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Object size of the class in bytes.
    pub size: u32,
    /// Objects allocated, ever.
    pub mallocs: u64,
    /// Objects freed, ever.
    pub frees: u64,
    /// Spans of the class held by the mcentral with some free objects.
    pub central_partial: u32,
    /// Spans of the class held by the mcentral with every object free.
    pub central_empty: u32,
    /// Spans of the class held by the mcentral with no free object.
    pub central_full: u32,
}

impl ClassStats {
    /// Objects of the class currently allocated.
    pub fn live(&self) -> u64 {
        self.mallocs.saturating_sub(self.frees)
    }
}

/// Coroutine stack figures (see [`crate::stack`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackStats {
    /// Stacks handed out and not yet dropped.
    pub in_use: u64,
    /// Stacks cached in threads or pooled, ready for reuse.
    pub cached: u64,
    /// Address space reserved for all stacks (usable part plus guards).
    pub reserved_bytes: u64,
    /// Bytes of stack memory that may be resident: the pages the stacks in
    /// use may have touched, plus what pooled stacks keep.
    pub resident_bytes: u64,
    /// Stacks created, ever.
    pub created: u64,
}

/// What the scavenger gave back to the OS, and how it is set (see the
/// README's memory section).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReleaseStats {
    /// Bytes of free heap pages given back to the OS, ever (by the decay,
    /// the background releaser and `release()`). Pages reused and released
    /// again count again.
    pub released_bytes: u64,
    /// The part of `released_bytes` the background releaser gave back.
    pub background_bytes: u64,
    /// Bytes of metadata given back, ever: page tables, object bitmaps and
    /// span records that described only free pages.
    pub metadata_bytes: u64,
    /// Release batches run (each a few `madvise` calls over a few MiB).
    pub batches: u64,
    /// `madvise` calls the kernel refused (their pages stayed as they were).
    pub failures: u64,
    /// Milliseconds since memory was last given back, if ever.
    pub since_last_ms: Option<u64>,
    /// The decay: free memory goes back after staying free about this long
    /// (`spanalloc::set_release_decay_ms`).
    pub decay_ms: u64,
    /// Whether a background thread releases this heap's memory while the
    /// program idles (`spanalloc::set_background_release`).
    pub background: bool,
}

/// A snapshot of the allocator, like Go's `runtime.MemStats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Bytes in allocated objects (small objects at their size class,
    /// large objects in whole pages). Go: `HeapAlloc`.
    pub heap_alloc: u64,
    /// Bytes in spans that are in use: small spans anywhere plus large
    /// objects, live or kept by a cache. Go: `HeapInuse`.
    pub heap_inuse: u64,
    /// Bytes held by thread caches: their small spans (Go: its per-P
    /// mcache spans) and the freed large objects they keep for reuse.
    pub cached: u64,
    /// Bytes of free pages in the heap. Go: `HeapIdle`.
    pub heap_idle: u64,
    /// Bytes of free pages given back to the OS (part of `heap_idle`). Go:
    /// `HeapReleased`.
    pub heap_released: u64,
    /// Bytes of heap address space in use: arenas as far as grown, plus huge
    /// reservations. Go: `HeapSys`.
    pub heap_sys: u64,
    /// Bytes of allocator metadata (span records, arena headers).
    pub metadata: u64,
    /// Objects allocated, ever (small and large). Go: `Mallocs`.
    pub mallocs: u64,
    /// Objects freed, ever. Go: `Frees`.
    pub frees: u64,
    /// Large objects (over 32 KiB) allocated, ever.
    pub large_mallocs: u64,
    /// Large objects freed, ever.
    pub large_frees: u64,
    /// Bytes in live large objects.
    pub large_bytes: u64,
    /// Per size class (index 0, "large", is unused).
    pub by_class: [ClassStats; NUM_CLASSES],
    /// Coroutine stacks.
    pub stacks: StackStats,
    /// What went back to the OS.
    pub release: ReleaseStats,
}

impl Default for Stats {
    fn default() -> Self {
        let mut by_class = [ClassStats::default(); NUM_CLASSES];
        for (c, s) in by_class.iter_mut().enumerate() {
            s.size = CLASSES[c].size;
        }
        Stats {
            heap_alloc: 0,
            heap_inuse: 0,
            cached: 0,
            heap_idle: 0,
            heap_released: 0,
            heap_sys: 0,
            metadata: 0,
            mallocs: 0,
            frees: 0,
            large_mallocs: 0,
            large_frees: 0,
            large_bytes: 0,
            by_class,
            stacks: StackStats::default(),
            release: ReleaseStats::default(),
        }
    }
}

impl Stats {
    /// Objects currently allocated.
    pub fn live_objects(&self) -> u64 {
        self.mallocs.saturating_sub(self.frees)
    }

    /// Fills the totals that follow from the per-class counts.
    pub(crate) fn finish(&mut self, small_pages: u64, large_span_bytes: u64) {
        let mut small_bytes = 0;
        self.mallocs = self.large_mallocs;
        self.frees = self.large_frees;
        for c in &self.by_class[1..] {
            small_bytes += c.live() * c.size as u64;
            self.mallocs += c.mallocs;
            self.frees += c.frees;
        }
        self.heap_alloc = small_bytes + self.large_bytes;
        self.heap_inuse = small_pages * PAGE_SIZE as u64 + large_span_bytes;
    }
}

/// Formats a byte count with a binary unit.
struct Bytes(u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut v = self.0 as f64;
        let mut u = 0;
        while v >= 1024.0 && u < UNITS.len() - 1 {
            v /= 1024.0;
            u += 1;
        }
        if u == 0 { write!(f, "{} B", self.0) } else { write!(f, "{v:.1} {}", UNITS[u]) }
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "spanalloc heap")?;
        writeln!(f, "  in objects   {:>12}   ({} live objects)", Bytes(self.heap_alloc), self.live_objects())?;
        writeln!(f, "  in spans     {:>12}", Bytes(self.heap_inuse))?;
        writeln!(f, "  in caches    {:>12}", Bytes(self.cached))?;
        writeln!(f, "  idle         {:>12}", Bytes(self.heap_idle))?;
        writeln!(f, "  released     {:>12}", Bytes(self.heap_released))?;
        let r = &self.release;
        write!(
            f,
            "  given back   {:>12} ever, {} by the background, {} of metadata; {} batches",
            Bytes(r.released_bytes),
            Bytes(r.background_bytes),
            Bytes(r.metadata_bytes),
            r.batches
        )?;
        if r.failures > 0 {
            write!(f, ", {} refused", r.failures)?;
        }
        match r.since_last_ms {
            Some(ms) => write!(f, "; last {ms} ms ago")?,
            None => write!(f, "; never")?,
        }
        writeln!(f, " (decay {} ms, background {})", r.decay_ms, if r.background { "on" } else { "off" })?;
        writeln!(f, "  heap sys     {:>12}", Bytes(self.heap_sys))?;
        writeln!(f, "  metadata     {:>12}", Bytes(self.metadata))?;
        writeln!(f, "  mallocs      {:>12}   frees {}", self.mallocs, self.frees)?;
        writeln!(
            f,
            "  large        {:>12}   ({} allocated, {} freed)",
            Bytes(self.large_bytes),
            self.large_mallocs,
            self.large_frees
        )?;
        let st = &self.stacks;
        writeln!(
            f,
            "  stacks       {:>12} reserved, {} resident; {} in use, {} cached, {} created",
            Bytes(st.reserved_bytes),
            Bytes(st.resident_bytes),
            st.in_use,
            st.cached,
            st.created
        )?;
        writeln!(f, "  class     size      mallocs        frees         live   partial/empty/full")?;
        for (c, s) in self.by_class.iter().enumerate().skip(1) {
            if s.mallocs == 0 && s.central_partial + s.central_empty + s.central_full == 0 {
                continue;
            }
            writeln!(
                f,
                "  {:>5} {:>8} {:>12} {:>12} {:>12}   {}/{}/{}",
                c,
                s.size,
                s.mallocs,
                s.frees,
                s.live(),
                s.central_partial,
                s.central_empty,
                s.central_full
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_printed_with_binary_units() {
        assert_eq!(format!("{}", Bytes(512)), "512 B");
        assert_eq!(format!("{}", Bytes(1536)), "1.5 KiB");
        assert_eq!(format!("{}", Bytes(3 << 30)), "3.0 GiB");
    }

    #[test]
    fn finish_sums_classes_and_large_objects() {
        let mut s = Stats::default();
        s.by_class[1].mallocs = 10;
        s.by_class[1].frees = 4;
        s.large_mallocs = 2;
        s.large_frees = 1;
        s.large_bytes = 40960;
        // Large spans: the live object and one a cache keeps.
        s.finish(3, 40960 + 16384);
        assert_eq!(s.mallocs, 12);
        assert_eq!(s.frees, 5);
        assert_eq!(s.heap_alloc, 6 * 8 + 40960);
        assert_eq!(s.heap_inuse, 3 * 8192 + 40960 + 16384);
        let text = s.to_string();
        assert!(text.contains("spanalloc heap"));
        assert!(text.contains("mallocs"));
    }
}
