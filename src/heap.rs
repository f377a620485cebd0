//! `Heap`: the mheap and the mcentrals together, as a value.
//!
//! A `Heap` is everything spanalloc shares between threads: the page
//! allocator ([`crate::mheap`]), one [`crate::mcentral`] per size class, and
//! the registry of thread caches whose counters [`Heap::stats`] sums. The
//! global allocator is one `static` `Heap` (see `thread`); tests, loom
//! models and runtimes can make their own and allocate from it through
//! [`crate::MCache`]s (`Heap::cache`).
//!
//! The heap also decides when the scavenger runs. A tick (every third of
//! the decay, [`crate::mheap::tick_period_ms`]) gives the mcentrals' empty
//! spans back to the mheap, releases the pages that stayed free for the
//! decay and ages the others ([`Heap::tick`]). The global heap's ticks run
//! on its background releaser (`scavenger`), which sleeps while there is
//! nothing to release; [`Heap::maybe_tick`], called from the caches' slow
//! paths, only starts or wakes it. Other heaps, and the global one while
//! background release is off, tick on those slow paths instead, a few
//! batches at a time. [`Heap::release`] gives back everything at once.
//!
//! # Where a heap lives
//!
//! A `Heap` value is a pointer to its shared state ([`Shared`]), made in
//! memory of its own on first use: a `Heap` can be moved once no cache
//! borrows it, but its locks cannot, and every live heap's state is on a
//! process-wide list so that `fork` takes the locks of every heap, not only
//! the global one's (a child must not inherit a lock another thread held).
//! Only slow paths reach the heap, so the extra load costs the fast paths
//! nothing.

use core::ptr;

use crate::mcentral::MCentral;
use crate::mheap::{INLINE_BATCHES, MHeap, Releaser};
use crate::os;
use crate::sizeclass::{NUM_CLASSES, PAGE_SIZE};
use crate::stats::{CacheStats, ReleaseStats, Stats};
use crate::sync::Mutex;
use crate::sync::unmodelled::{AtomicPtr, Ordering};

/// A heap: mheap + mcentrals. See the module docs.
pub struct Heap {
    /// The shared state, made on first use (null until then).
    shared: AtomicPtr<Shared>,
    /// The background releaser that runs this heap's scavenger ticks, if it
    /// has one (the global heap: `scavenger`). Passed down when the heap is
    /// made, so this level never names the one above it.
    background: Option<&'static Background>,
}

/// What a heap asks of a background releaser (see `scavenger`), each called
/// with the heap that has it.
pub(crate) struct Background {
    /// Whether the releaser should start now (it has not, and the heap
    /// holds enough dirty free memory).
    pub(crate) wanted: fn(&'static Heap) -> bool,
    /// A tick is due (or `wanted` said yes): starts or wakes the releaser.
    /// Returns whether it runs the tick (else the caller does). With
    /// `busy`, after a tick on a slow path that found memory coming back
    /// (objects freed remotely into the mcentrals' spans, say, with no
    /// free page yet), it starts even without dirty free pages.
    pub(crate) kick: fn(&'static Heap, bool) -> bool,
    /// Whether the releaser gives the heap's memory back now.
    pub(crate) running: fn() -> bool,
    /// Whether the calling thread may start the releaser now (it holds no
    /// lock that thread creation could end up waiting for).
    pub(crate) may_start: fn() -> bool,
}

/// A heap's state: what its caches share.
pub(crate) struct Shared {
    pub(crate) mheap: MHeap,
    pub(crate) central: [MCentral; NUM_CLASSES],
    /// Thread caches whose counters `stats` reads.
    registry: Mutex<Registry>,
    /// Counters of caches that are gone.
    retired: CacheStats,
    /// Links on the list of live heaps (under `HEAPS`).
    links: core::cell::UnsafeCell<(*mut Shared, *mut Shared)>,
}

// SAFETY: everything shared is behind locks or atomics (see each level).
unsafe impl Sync for Heap {}
unsafe impl Send for Heap {}
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

impl Heap {
    /// The heap's shared state (made on first use).
    #[inline]
    pub(crate) fn shared(&self) -> &Shared {
        let p = self.shared.load(Ordering::Acquire);
        if p.is_null() {
            return self.make_shared();
        }
        // SAFETY: once made, the state lives until the heap is dropped.
        unsafe { &*p }
    }
}

// ---------------------------------------------------------------------------
// The list of live heaps.

#[cfg(not(loom))]
mod heaps {
    use super::Shared;
    use crate::sync::unmodelled::SpinLock;

    pub(super) static LOCK: SpinLock = SpinLock::new();
    /// The first live heap's state (under LOCK).
    pub(super) static mut HEAD: *mut Shared = core::ptr::null_mut();
}

impl Shared {
    /// A new state (to be placed at its final address before use).
    #[cfg_attr(loom, allow(clippy::new_ret_no_self))]
    fn new() -> Shared {
        Shared {
            mheap: MHeap::new(),
            central: new_centrals(),
            registry: Mutex::new(Registry { head: ptr::null() }),
            retired: CacheStats::new(),
            links: core::cell::UnsafeCell::new((ptr::null_mut(), ptr::null_mut())),
        }
    }
}

impl Heap {
    /// Makes the shared state on first use (racing first uses agree on one).
    #[cold]
    #[inline(never)]
    fn make_shared(&self) -> &Shared {
        let fresh = alloc_shared();
        // Listed before it is installed: a thread that finds it installed
        // may take its locks at once, and a `fork` must then take them too.
        // (Listed after, a fork while this thread waited for the list's
        // lock, which the fork holds, left a child with the state's locks
        // held by threads it does not have.)
        list_add(fresh);
        match self.shared.compare_exchange(ptr::null_mut(), fresh, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                // SAFETY: installed; lives until the heap is dropped.
                unsafe { &*fresh }
            }
            Err(other) => {
                list_remove(fresh);
                // SAFETY: never shared.
                unsafe { free_shared(fresh) };
                // SAFETY: as above.
                unsafe { &*other }
            }
        }
    }

    /// Runs `f` on every live heap, holding the list's lock across (for
    /// `fork`: `lock` takes the list's lock, `!lock` releases it).
    #[cfg(not(loom))]
    pub(crate) fn fork_lock_all(lock: bool, mut f: impl FnMut(&Shared)) {
        if lock {
            heaps::LOCK.lock();
        }
        // SAFETY: the list is only changed under its lock, which this
        // thread holds across the fork.
        let mut at = unsafe { *core::ptr::addr_of!(heaps::HEAD) };
        // SAFETY: listed states are live.
        while let Some(s) = unsafe { at.as_ref() } {
            f(s);
            at = unsafe { (*s.links.get()).1 };
        }
        if !lock {
            // SAFETY: taken by this thread's prepare handler.
            unsafe { heaps::LOCK.unlock() };
        }
    }
}

/// Memory for a heap's state, outside any heap; aborts when the kernel
/// refuses it (there is no null to return from the slow path that asks).
fn alloc_shared() -> *mut Shared {
    #[cfg(not(loom))]
    {
        let Some(p) = os::map(size_of::<Shared>()) else {
            crate::report::fatal_resource("a heap (no memory for its state)");
        };
        let p = p.cast::<Shared>();
        // SAFETY: fresh, big enough and page-aligned.
        unsafe { p.write(Shared::new()) };
        p
    }
    #[cfg(loom)]
    Box::into_raw(Box::new(Shared::new()))
}

/// # Safety
/// `p` came from `alloc_shared`, is off the list, and nothing uses it.
unsafe fn free_shared(p: *mut Shared) {
    #[cfg(not(loom))]
    // SAFETY: the caller's contract.
    unsafe {
        ptr::drop_in_place(p);
        os::unmap(p.cast(), size_of::<Shared>());
    }
    #[cfg(loom)]
    // SAFETY: the caller's contract.
    drop(unsafe { Box::from_raw(p) });
}

fn list_add(s: *mut Shared) {
    #[cfg(not(loom))]
    {
        heaps::LOCK.lock();
        // SAFETY: under the lock; listed states are live.
        unsafe {
            let head = *core::ptr::addr_of!(heaps::HEAD);
            *(*s).links.get() = (ptr::null_mut(), head);
            if let Some(h) = head.as_ref() {
                (*h.links.get()).0 = s;
            }
            *core::ptr::addr_of_mut!(heaps::HEAD) = s;
            heaps::LOCK.unlock();
        }
    }
    #[cfg(loom)]
    let _ = s;
}

fn list_remove(s: *mut Shared) {
    #[cfg(not(loom))]
    {
        heaps::LOCK.lock();
        // SAFETY: under the lock; listed states are live.
        unsafe {
            let (prev, next) = *(*s).links.get();
            match prev.as_ref() {
                Some(p) => (*p.links.get()).1 = next,
                None => *core::ptr::addr_of_mut!(heaps::HEAD) = next,
            }
            if let Some(n) = next.as_ref() {
                (*n.links.get()).0 = prev;
            }
            heaps::LOCK.unlock();
        }
    }
    #[cfg(loom)]
    let _ = s;
}

impl Drop for Heap {
    fn drop(&mut self) {
        let p = *self.shared.get_mut();
        if !p.is_null() {
            list_remove(p);
            // SAFETY: no cache can outlive the heap (they borrow it), so
            // nothing uses the state; the mheap's drop unmaps its arenas.
            unsafe { free_shared(p) };
        }
    }
}

struct Registry {
    head: *const CacheStats,
}

// SAFETY: the registry only links counters of live thread caches, touched
// under its lock.
unsafe impl Send for Registry {}

impl Heap {
    /// A new, empty heap. It reserves memory only when first used.
    #[cfg(not(loom))]
    pub const fn new() -> Heap {
        Heap { shared: AtomicPtr::new(ptr::null_mut()), background: None }
    }

    /// A new, empty heap whose scavenger ticks run on `background` (for a
    /// heap that lives in a `static`: the releaser keeps a reference).
    #[cfg(not(loom))]
    pub(crate) const fn with_background(background: &'static Background) -> Heap {
        Heap { shared: AtomicPtr::new(ptr::null_mut()), background: Some(background) }
    }

    /// A new, empty heap. Under loom its state is made at once, by the
    /// thread that makes the heap: the pointer to it is not an atomic the
    /// model sees, so a state made by a racing first use would look
    /// unsynchronised to it.
    #[cfg(loom)]
    pub fn new() -> Heap {
        let fresh = alloc_shared();
        Heap { shared: AtomicPtr::new(fresh), background: None }
    }

    /// Gives memory back to the OS now: every empty span goes back to the
    /// mheap and every free page is released with `MADV_DONTNEED` (in
    /// batches, none of them under a lock an allocation needs). Objects and
    /// spans in caches stay where they are (flush a cache first to include
    /// it).
    pub fn release(&self) {
        let sh = self.shared();
        for central in &sh.central[1..] {
            central.release_empty(&sh.mheap);
        }
        sh.mheap.scavenge(true, Releaser::Other, true, usize::MAX);
    }

    /// A snapshot of the heap's statistics.
    pub fn stats(&self) -> Stats {
        let mut s = Stats::default();
        // Large objects: the mheap counts those it hands out and gets back;
        // the caches count reuses and the freed objects they keep.
        let (mut large_hits, mut large_kept, mut large_kept_bytes) = (0, 0, 0);
        let mut add = |s: &mut Stats, cs: &CacheStats| {
            s.cached += cs.owned_pages.get() * PAGE_SIZE as u64 + cs.large_kept_bytes.get();
            large_hits += cs.large_hits.get();
            large_kept += cs.large_kept.get();
            large_kept_bytes += cs.large_kept_bytes.get();
            s.stacks.cached += cs.stacks_cached.get();
            for c in 1..NUM_CLASSES {
                s.by_class[c].mallocs += cs.classes[c].mallocs.get();
                s.by_class[c].frees += cs.classes[c].frees.get();
            }
        };
        add(&mut s, &self.shared().retired);
        {
            let reg = self.shared().registry.lock();
            let mut at = reg.head;
            // SAFETY: registered counters stay alive until they unregister,
            // which takes this lock.
            while let Some(cs) = unsafe { at.as_ref() } {
                add(&mut s, cs);
                at = unsafe { (*cs.links.get()).1 };
            }
        }
        for c in 1..NUM_CLASSES {
            let (partial, empty, full) = self.shared().central[c].counts();
            s.by_class[c].central_partial = partial as u32;
            s.by_class[c].central_empty = empty as u32;
            s.by_class[c].central_full = full as u32;
        }
        let k = &self.shared().mheap.counters;
        s.large_mallocs = k.large_allocs.get() + large_hits;
        s.large_frees = k.large_frees.get() + large_hits + large_kept;
        let large_span_bytes = k.large_bytes.get();
        s.large_bytes = large_span_bytes.saturating_sub(large_kept_bytes);
        s.heap_idle = k.free_pages.get() * PAGE_SIZE as u64;
        s.heap_released = k.released_pages.get() * PAGE_SIZE as u64;
        s.heap_sys = k.sys_pages.get() * PAGE_SIZE as u64;
        s.metadata = k.meta_bytes.get();
        let last = k.last_release_ms.get();
        s.release = ReleaseStats {
            released_bytes: k.released_total.get() * PAGE_SIZE as u64,
            background_bytes: k.released_background.get() * PAGE_SIZE as u64,
            metadata_bytes: k.meta_released.get(),
            batches: k.release_batches.get(),
            failures: k.release_failures.get(),
            since_last_ms: (last != 0).then(|| os::now_ms().saturating_sub(last)),
            decay_ms: crate::mheap::decay_ms(),
            background: self.background_running(),
        };
        s.finish(k.small_pages.get(), large_span_bytes);
        s
    }

    /// Whether a background releaser gives this heap's memory back.
    fn background_running(&self) -> bool {
        self.background.is_some_and(|b| (b.running)())
    }

    // -----------------------------------------------------------------------
    // For the caches.

    /// A large object (or any object when `zero` asks for zeroed memory
    /// and the pages may be dirty, zeroed here).
    pub(crate) fn alloc_large(&self, size: usize, align: usize, zero: bool) -> *mut u8 {
        self.maybe_tick(os::now_ms());
        let (p, needzero) = self.shared().mheap.alloc_large(size, align);
        if zero && needzero && !p.is_null() {
            // SAFETY: the object holds at least `size` writable bytes.
            unsafe { ptr::write_bytes(p, 0, size) };
        }
        p
    }

    pub(crate) fn free_large(&self, addr: usize) {
        self.shared().mheap.free_large(addr);
        self.maybe_tick(os::now_ms());
    }

    /// From the caches' slow paths: when a scavenger tick is due at `now`
    /// (`os::now_ms`), has the background releaser run it (starting it, or
    /// waking it), or runs a few batches of it here if there is none.
    #[inline]
    pub(crate) fn maybe_tick(&self, now: u64) {
        if self.shared().mheap.tick_peek(now) || self.wants_releaser() {
            self.tick_from_slow_path(now);
        }
    }

    /// After a remote free made a used-up span of an mcentral reusable
    /// (once per span): memory is coming back there, and only scavenger
    /// ticks give it on to the mheap and the OS. The frees that empty the
    /// span may all come before the next tick is due on anybody's slow
    /// path, so the background releaser must be running (and awake) to see
    /// them: this starts or wakes it.
    #[inline]
    pub(crate) fn note_central_free(&self) {
        if let Some(b) = self.background {
            (b.kick)(self.as_static(), true);
        }
    }

    /// The background releaser this heap was made with.
    pub(crate) fn background(&self) -> Option<&'static Background> {
        self.background
    }

    /// Whether this heap should get its background releaser now (not
    /// waiting for a tick: a program may free its peak between two ticks
    /// and then make no more calls).
    #[inline]
    fn wants_releaser(&self) -> bool {
        self.background.is_some_and(|b| (b.wanted)(self.as_static()))
    }

    /// A heap with a background releaser lives in a `static`
    /// ([`Heap::with_background`]).
    #[inline]
    fn as_static(&self) -> &'static Heap {
        debug_assert!(self.background.is_some());
        // SAFETY: only a heap made by `with_background` calls this, and
        // that one is a `static`.
        unsafe { &*(self as *const Heap) }
    }

    #[cold]
    fn tick_from_slow_path(&self, now: u64) {
        if self.background.is_some_and(|b| (b.kick)(self.as_static(), false)) {
            return;
        }
        if self.shared().mheap.tick_due(now) && self.tick(Releaser::Other, INLINE_BATCHES, false) > 0 {
            // Memory is coming back: the rest of it must not wait for the
            // program's next slow path.
            if let Some(b) = self.background {
                (b.kick)(self.as_static(), true);
            }
        }
    }

    /// A scavenger tick: the mcentrals' empty spans go back to the mheap,
    /// pages that stayed free for the decay go back to the OS (at most
    /// `max_batches` batches; `wait` for another releaser, or skip), and
    /// the other free pages age. Returns the free dirty pages left for
    /// later ticks plus what came back to the mcentrals (remote frees
    /// merged, spans given back): 0 when there is nothing to wait for.
    pub(crate) fn tick(&self, who: Releaser, max_batches: usize, wait: bool) -> usize {
        let sh = self.shared();
        let mut came_back = 0;
        for central in &sh.central[1..] {
            came_back += central.release_empty(&sh.mheap);
        }
        sh.mheap.scavenge(false, who, wait, max_batches);
        sh.mheap.age(wait) + came_back
    }

    /// Adds a dropped cache's counters to the heap's.
    pub(crate) fn absorb_stats(&self, stats: &CacheStats) {
        for c in 1..NUM_CLASSES {
            let (from, to) = (&stats.classes[c], &self.shared().retired.classes[c]);
            to.mallocs.add_shared(from.mallocs.get());
            to.frees.add_shared(from.frees.get());
        }
        // A dropped cache keeps no large object: only its count of reuses
        // lives on.
        self.shared().retired.large_hits.add_shared(stats.large_hits.get());
    }

    /// Puts a thread cache's counters on the registry.
    ///
    /// # Safety
    /// `stats` must stay at its address until [`Heap::unregister`].
    #[cfg(not(loom))]
    pub(crate) unsafe fn register(&self, stats: &CacheStats) {
        let mut reg = self.shared().registry.lock();
        let me = stats as *const CacheStats;
        // SAFETY: links are only touched under the registry lock.
        unsafe {
            *stats.links.get() = (ptr::null(), reg.head);
            if let Some(h) = reg.head.as_ref() {
                (*h.links.get()).0 = me;
            }
        }
        reg.head = me;
    }

    /// Takes a thread cache's counters off the registry, keeping their sums.
    #[cfg(not(loom))]
    pub(crate) fn unregister(&self, stats: &CacheStats) {
        let mut reg = self.shared().registry.lock();
        // SAFETY: links are only touched under the registry lock, and
        // registered counters are alive.
        unsafe {
            let (prev, next) = *stats.links.get();
            match prev.as_ref() {
                Some(p) => (*p.links.get()).1 = next,
                None => reg.head = next,
            }
            if let Some(n) = next.as_ref() {
                (*n.links.get()).0 = prev;
            }
            *stats.links.get() = (ptr::null(), ptr::null());
        }
        self.absorb_stats(stats);
        drop(reg);
    }
}

impl Shared {
    /// Every lock of the heap, in the order `fork` must take them.
    #[cfg(not(loom))]
    pub(crate) fn for_each_lock(&self, mut f: impl FnMut(&crate::sync::RawLock)) {
        // A releaser holds this one while it takes the others.
        f(self.mheap.release_lock_for_fork());
        for central in &self.central[1..] {
            f(central.lock_for_fork());
        }
        f(self.mheap.lock_for_fork());
        f(self.registry.raw());
    }
}

/// For whole-allocator tests (`spanalloc::test_hooks`).
#[cfg(all(feature = "test-hooks", not(loom)))]
impl Heap {
    /// Whether every lock an allocation may take (the mcentrals', the
    /// mheap's; not the release lock) can be taken within `ms`: false if
    /// the caller holds one, since these locks are held only for list and
    /// bitmap operations by anybody else.
    pub(crate) fn allocation_locks_free_within(&self, ms: u64) -> bool {
        let sh = self.shared();
        let deadline = os::now_ms() + ms;
        let free = |lock: &crate::sync::RawLock| {
            while !lock.try_lock() {
                if os::now_ms() > deadline {
                    return false;
                }
                core::hint::spin_loop();
            }
            // SAFETY: taken just above, by this thread.
            unsafe { lock.unlock() };
            true
        };
        sh.central[1..].iter().all(|c| free(c.lock_for_fork())) && free(sh.mheap.lock_for_fork())
    }
}

impl Default for Heap {
    fn default() -> Self {
        Heap::new()
    }
}

#[cfg(not(loom))]
fn new_centrals() -> [MCentral; NUM_CLASSES] {
    [const { MCentral::new() }; NUM_CLASSES]
}

#[cfg(loom)]
fn new_centrals() -> [MCentral; NUM_CLASSES] {
    core::array::from_fn(|_| MCentral::new())
}

#[cfg(all(test, not(loom)))]
mod tests {
    use core::alloc::Layout;

    use super::*;
    use crate::largecache;
    use crate::sizeclass::CLASSES;
    use crate::sizeclass::MAX_SMALL;

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 8).unwrap()
    }

    #[test]
    fn objects_of_every_class_are_distinct_aligned_and_writable() {
        let mut heap = Heap::new();
        let mut cache = heap.cache();
        for (c, &info) in CLASSES.iter().enumerate().skip(1) {
            let l = layout(info.size as usize);
            let n = info.nelems as usize * 2 + 3;
            let ptrs: Vec<*mut u8> = (0..n).map(|_| cache.alloc(l)).collect();
            let mut sorted = ptrs.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), n, "class {c}: an object was handed out twice");
            for (i, &p) in ptrs.iter().enumerate() {
                assert_eq!(p as usize % info.align as usize, 0, "class {c}");
                unsafe { p.write_bytes(i as u8, info.size as usize) };
            }
            for (i, &p) in ptrs.iter().enumerate() {
                let s = unsafe { core::slice::from_raw_parts(p, info.size as usize) };
                assert!(s.iter().all(|&b| b == i as u8), "class {c}: object {i} overwritten");
            }
            for &p in &ptrs {
                unsafe { cache.dealloc(p, l) };
            }
        }
        drop(cache);
        let s = heap.stats();
        assert_eq!(s.live_objects(), 0);
        let audit = heap.audit();
        assert_eq!(audit.allocated_objects, 0);
        assert!(audit.small_spans > 0);
    }

    #[test]
    fn lifo_reuses_the_same_object() {
        let heap = Heap::new();
        let mut cache = heap.cache();
        let l = layout(64);
        let p = cache.alloc(l);
        unsafe { cache.dealloc(p, l) };
        let q = cache.alloc(l);
        assert_eq!(p, q);
        unsafe { cache.dealloc(q, l) };
    }

    #[test]
    fn frees_through_another_cache_make_objects_reusable() {
        let mut heap = Heap::new();
        let mut a = heap.cache();
        let mut b = heap.cache();
        let l = layout(48);
        // Several rounds: a allocates, b frees everything. The heap must not
        // grow round after round.
        let mut sys_after_first = 0;
        for round in 0..50 {
            let ptrs: Vec<_> = (0..5000).map(|_| a.alloc(l)).collect();
            for p in ptrs {
                unsafe { b.dealloc(p, l) };
            }
            b.flush();
            if round == 0 {
                sys_after_first = heap.stats().heap_sys;
            }
        }
        assert_eq!(heap.stats().heap_sys, sys_after_first, "remote frees must be reused");
        drop(a);
        drop(b);
        assert_eq!(heap.stats().live_objects(), 0);
        assert_eq!(heap.audit().allocated_objects, 0);
    }

    #[test]
    fn empty_spans_go_back_to_the_mheap_and_pages_to_the_os_on_release() {
        let heap = Heap::new();
        let mut cache = heap.cache();
        let l = layout(1024);
        let ptrs: Vec<_> = (0..20_000).map(|_| cache.alloc(l)).collect();
        let before = heap.stats();
        assert!(before.heap_inuse >= 20_000 * 1024);
        for p in ptrs {
            unsafe { cache.dealloc(p, l) };
        }
        cache.flush();
        heap.release();
        let after = heap.stats();
        assert_eq!(after.heap_inuse, 0, "{after}");
        assert_eq!(after.heap_idle, after.heap_sys);
        assert_eq!(after.heap_released, after.heap_idle, "every free page released");
    }

    #[test]
    fn large_objects_take_their_own_pages_and_coalesce_when_freed() {
        let mut heap = Heap::new();
        let mut cache = heap.cache();
        let sizes = [MAX_SMALL + 1, 100_000, 1 << 20, 3 << 20];
        let ptrs: Vec<_> = sizes.iter().map(|&s| (cache.alloc(layout(s)), s)).collect();
        for &(p, s) in &ptrs {
            assert_eq!(p as usize % PAGE_SIZE, 0);
            unsafe { p.write_bytes(0xab, s) };
        }
        let s = heap.stats();
        assert_eq!(s.large_mallocs, 4);
        for &(p, s) in &ptrs {
            unsafe { cache.dealloc(p, layout(s)) };
        }
        // The cache keeps the three up to 1 MiB; the 3 MiB one went back.
        assert_eq!(heap.large_census(), (0, 3));
        cache.flush();
        assert_eq!(heap.large_census().1, 0);
        // The freed runs coalesced: one 4 MiB object fits where they were.
        let big = cache.alloc(layout(4 << 20));
        assert_eq!(big, ptrs[0].0, "first fit reuses the coalesced run");
        assert_eq!(heap.large_census().0, 1);
        unsafe { cache.dealloc(big, layout(4 << 20)) };
        assert_eq!(heap.stats().large_bytes, 0);
        drop(cache);
        assert_eq!(heap.audit().large_objects, 0);
    }

    #[test]
    fn a_freed_large_object_serves_the_next_of_its_page_count() {
        let mut heap = Heap::new();
        let mut cache = heap.cache();
        let l = layout(200_000);
        let p = cache.alloc(l);
        unsafe { cache.dealloc(p, l) };
        // Same page count (25 pages), another size: the kept object.
        let q = cache.alloc(layout(199_000));
        assert_eq!(q, p);
        // Another page count: fresh pages.
        let r = cache.alloc(layout(300_000));
        assert_ne!(r, p);
        unsafe {
            cache.dealloc(q, layout(199_000));
            cache.dealloc(r, layout(300_000));
        }
        assert_eq!(heap.large_census().1, 2);
        // At most `SLOTS` objects, the oldest given back first.
        let many: Vec<_> = (0..largecache::SLOTS + 2).map(|_| cache.alloc(layout(64 << 10))).collect();
        for &m in &many {
            unsafe { cache.dealloc(m, layout(64 << 10)) };
        }
        assert_eq!(heap.large_census().1, largecache::SLOTS);
        let again = cache.alloc(layout(64 << 10));
        assert_eq!(again, many[many.len() - 1], "the most recent first");
        unsafe { cache.dealloc(again, layout(64 << 10)) };
        drop(cache);
        // A dropped cache's counters are the heap's: 2 + 10 objects from the
        // mheap, 2 reuses, all freed.
        let s = heap.stats();
        assert_eq!(heap.audit().large_kept, 0);
        assert_eq!((s.large_mallocs, s.large_frees, s.large_bytes, s.cached), (14, 14, 0, 0));
    }

    #[test]
    fn small_realloc_stays_in_place_within_its_class_and_moves_beyond() {
        let mut heap = Heap::new();
        let mut cache = heap.cache();
        let p = cache.alloc(layout(100)); // class of 112 B
        unsafe {
            p.write_bytes(5, 100);
            let q = cache.realloc(p, layout(100), 112);
            assert_eq!(q, p, "same class: in place");
            let r = cache.realloc(q, layout(112), 97);
            assert_eq!(r, q, "shrinks within the class: in place");
            let s = cache.realloc(r, layout(97), 200);
            assert_ne!(s, r, "another class: moves");
            assert!(core::slice::from_raw_parts(s, 97).iter().all(|&b| b == 5), "the bytes move with it");
            cache.dealloc(s, layout(200));
        }
        drop(cache);
        assert_eq!(heap.audit().allocated_objects, 0);
    }

    #[test]
    fn large_realloc_grows_and_shrinks_in_place_when_pages_allow() {
        let heap = Heap::new();
        let mut cache = heap.cache();
        let l = layout(64 << 10);
        let p = cache.alloc(l);
        unsafe {
            p.write_bytes(7, 64 << 10);
            let q = cache.realloc(p, l, 256 << 10);
            assert_eq!(q, p, "the pages after it are free: grows in place");
            assert!(core::slice::from_raw_parts(q, 64 << 10).iter().all(|&b| b == 7));
            let blocker = cache.alloc(layout(64 << 10));
            let r = cache.realloc(q, layout(256 << 10), 128 << 10);
            assert_eq!(r, q, "shrinks in place");
            let s = cache.realloc(r, layout(128 << 10), 1 << 20);
            assert!(core::slice::from_raw_parts(s, 64 << 10).iter().all(|&b| b == 7));
            cache.dealloc(s, layout(1 << 20));
            cache.dealloc(blocker, layout(64 << 10));
        }
    }

    #[test]
    fn huge_objects_get_their_own_mapping_and_honour_any_alignment() {
        let heap = Heap::new();
        let mut cache = heap.cache();
        for align in [8usize, 1 << 20, 32 << 20, 64 << 20, 256 << 20] {
            let l = Layout::from_size_align(20 << 20, align).unwrap();
            let p = cache.alloc(l);
            assert!(!p.is_null());
            assert_eq!(p as usize % align, 0);
            unsafe {
                *p = 1;
                *p.add((20 << 20) - 1) = 2;
                let q = cache.realloc(p, l, 24 << 20);
                assert_eq!((*q, *q.add((20 << 20) - 1)), (1, 2));
                cache.dealloc(q, Layout::from_size_align(24 << 20, align).unwrap());
            }
        }
        assert_eq!(heap.stats().large_bytes, 0);
    }

    #[test]
    fn alloc_zeroed_skips_nothing_it_should_not() {
        let heap = Heap::new();
        let mut cache = heap.cache();
        for size in [8, 100, 4000, 40_000, 1 << 20] {
            let l = layout(size);
            // Dirty the memory, free it, and ask for zeroed memory of the
            // same size: whatever comes back must read as zero.
            let p = cache.alloc(l);
            unsafe { p.write_bytes(0xff, size) };
            unsafe { cache.dealloc(p, l) };
            let z = cache.alloc_zeroed(l);
            let s = unsafe { core::slice::from_raw_parts(z, size) };
            assert!(s.iter().all(|&b| b == 0), "size {size}");
            unsafe { cache.dealloc(z, l) };
        }
    }

    #[test]
    fn sizes_no_machine_can_serve_return_null() {
        let heap = Heap::new();
        let mut cache = heap.cache();
        let l = Layout::from_size_align(isize::MAX as usize - 4096, 8).unwrap();
        assert!(cache.alloc(l).is_null());
        assert!(cache.alloc_zeroed(l).is_null());
        let l = Layout::from_size_align(1, 1 << 62).unwrap();
        assert!(cache.alloc(l).is_null());
    }

    #[test]
    fn stats_count_mallocs_and_frees_per_class() {
        let heap = Heap::new();
        let mut cache = heap.cache();
        let l = layout(100);
        let ptrs: Vec<_> = (0..10).map(|_| cache.alloc(l)).collect();
        for p in ptrs {
            unsafe { cache.dealloc(p, l) };
        }
        drop(cache);
        let s = heap.stats();
        let c = crate::sizeclass::class_of(100, 8);
        assert_eq!((s.by_class[c].mallocs, s.by_class[c].frees), (10, 10));
        assert_eq!(s.by_class[c].size, 112);
    }
}
