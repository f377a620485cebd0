//! The global allocator: one static [`Heap`] and a cache per thread.
//!
//! `SpanAlloc` is a unit struct; its `GlobalAlloc` methods find the calling
//! thread's cache in a thread-local and call the mcache fast paths with the
//! static heap.
//!
//! # The thread-local cache
//!
//! The cache is a `const`-initialised thread-local with no destructor, so
//! reaching it is one TLS-relative address: no lazy initialisation, no
//! "already destroyed" state, no allocation, usable from any thread
//! (including threads std did not create) and during any thread-local
//! destructor. A fresh cache has empty windows, so its first allocation
//! takes the refill slow path, which [`activate`]s it:
//!
//! - the first activation in the process creates a pthread key whose
//!   destructor flushes a thread's cache at exit, and registers `fork`
//!   handlers;
//! - the cache's counters join the heap's registry (for `stats()`), and the
//!   key is set for the thread.
//!
//! At thread exit the key destructor runs after Rust's own thread-local
//! destructors (glibc calls C++-style TLS destructors first), gives every
//! span back, and marks the cache `Exited`. A thread that still allocates
//! after that (another key's destructor, say) goes through the heap's
//! shared fallback cache.
//!
//! # fork
//!
//! The prepare handler takes every lock of the heap (and of the stack
//! pools); the parent and the child release them after `fork`. The child
//! thus starts with a consistent heap; the caches of the threads that do not
//! exist in the child keep their spans, which are simply never reused.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::{Cell, UnsafeCell};
use core::ptr;

use crate::heap::Heap;
use crate::mcache::{CacheCore, CacheStats, Mode};
use crate::stack::StackCache;
use crate::stats::Stats;
use crate::sync::unmodelled::{AtomicUsize, Ordering};

/// The heap behind [`SpanAlloc`].
pub(crate) static HEAP: Heap = Heap::new();

/// One thread's caches (objects and stacks) and their counters.
struct ThreadCache {
    core: UnsafeCell<CacheCore>,
    stats: CacheStats,
    stacks: UnsafeCell<StackCache>,
    /// Set-up done for this thread (`REGISTERED`, `EXIT_HOOK`).
    flags: Cell<u8>,
    /// An alternate signal stack spanalloc installed for the thread.
    altstack: Cell<usize>,
}

/// The thread's counters are on the heap's registry.
const REGISTERED: u8 = 1;
/// The thread-exit key is set for the thread.
const EXIT_HOOK: u8 = 2;
/// The thread's stack set-up (alternate signal stack) is done.
const STACK_SETUP: u8 = 4;

thread_local! {
    static CACHE: ThreadCache = const {
        ThreadCache {
            core: UnsafeCell::new(CacheCore::new(Mode::ThreadFresh)),
            stats: CacheStats::new(),
            stacks: UnsafeCell::new(StackCache::new()),
            flags: Cell::new(0),
            altstack: Cell::new(0),
        }
    };
}

/// The calling thread's cache. The closure is trivial on purpose: the
/// thread-local access then inlines to one TLS-relative address wherever the
/// allocator is inlined, instead of a call through the key's accessor.
#[inline(always)]
fn thread_cache() -> *const ThreadCache {
    CACHE.with(|tc| tc as *const ThreadCache)
}

/// Runs `f` on the calling thread's cache.
#[inline(always)]
fn with_cache<R>(f: impl FnOnce(&mut CacheCore, &CacheStats) -> R) -> R {
    let tc = thread_cache();
    // SAFETY: the cache lives as long as its thread; only this thread
    // reaches it, and the allocator never re-enters itself, so this is the
    // only reference.
    unsafe { f(&mut *(*tc).core.get(), &(*tc).stats) }
}

/// spanalloc as Rust's global allocator:
///
/// ```
/// #[global_allocator]
/// static A: spanalloc::SpanAlloc = spanalloc::SpanAlloc;
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct SpanAlloc;

// SAFETY: the mcache and mheap return blocks of at least the layout's size
// and alignment, disjoint from every other live block, or null.
unsafe impl GlobalAlloc for SpanAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        with_cache(|c, s| c.alloc(&HEAP, s, layout.size(), layout.align()))
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: GlobalAlloc's contract: ptr came from us with this layout.
        with_cache(|c, s| unsafe { c.dealloc(&HEAP, s, ptr, layout.size(), layout.align()) })
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        with_cache(|c, s| c.alloc_zeroed(&HEAP, s, layout.size(), layout.align()))
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: GlobalAlloc's contract, forwarded.
        with_cache(|c, s| unsafe { c.realloc(&HEAP, s, ptr, layout.size(), layout.align(), new_size) })
    }
}

/// Gives memory back to the OS now: flushes the calling thread's cache,
/// returns every empty span to the mheap and releases every free page
/// (`MADV_DONTNEED`). Without this call the same happens gradually, a
/// scavenger tick after memory was freed.
pub fn release() {
    with_cache(|c, stats| {
        if c.mode == Mode::ThreadActive {
            c.flush(&HEAP);
            c.publish(stats);
        }
    });
    HEAP.release();
}

/// A snapshot of the global allocator's statistics (see [`Stats`]).
pub fn stats() -> Stats {
    let mut s = HEAP.stats();
    s.stacks = crate::stack::stats(s.stacks.cached);
    s
}

/// Runs `f` on the calling thread's stack cache, setting the thread up on
/// first use (exit hook, alternate signal stack) and publishing the number
/// of stacks it holds.
#[inline(always)]
pub(crate) fn with_stack_cache<R>(f: impl FnOnce(&mut StackCache) -> R) -> R {
    let tc = thread_cache();
    // SAFETY: the cache lives as long as its thread and only this thread
    // reaches it; the stack pools never re-enter the stack cache.
    let tc = unsafe { &*tc };
    if tc.flags.get() & STACK_SETUP == 0 {
        stack_thread_setup(tc);
    }
    // SAFETY: as above, this is the only reference to the stack cache.
    let stacks = unsafe { &mut *tc.stacks.get() };
    let r = f(stacks);
    tc.stats.stacks_cached.set(stacks.len() as u64);
    r
}

// ---------------------------------------------------------------------------
// Thread registration, thread exit and fork.

/// 0: not set up; 1: being set up; 2: ready; 3: no thread-exit key.
static HOOKS: AtomicUsize = AtomicUsize::new(0);
/// The pthread key whose destructor flushes a thread's cache.
static KEY: AtomicUsize = AtomicUsize::new(0);

/// The first stack operation of a thread: its exit hook and its overflow
/// handler's alternate stack.
#[cold]
#[inline(never)]
fn stack_thread_setup(tc: &ThreadCache) {
    register_thread(tc);
    tc.altstack.set(crate::stack::thread_setup());
    tc.flags.set(tc.flags.get() | STACK_SETUP);
}

/// Sets up a thread's cache on its first refill.
pub(crate) fn activate(heap: &Heap, core: &mut CacheCore, _stats: &CacheStats) {
    core.mode = Mode::ThreadActive;
    core.index = heap.take_index();
    if ptr::eq(heap, &HEAP) {
        // SAFETY: the thread's cache outlives this call.
        register_thread(unsafe { &*thread_cache() });
    }
}

/// Puts the thread's counters on the heap's registry and sets its exit
/// hook, once.
fn register_thread(tc: &ThreadCache) {
    let flags = tc.flags.get();
    if flags & REGISTERED == 0 {
        // SAFETY: the counters live in this thread's TLS until the key
        // destructor unregisters them.
        unsafe { HEAP.register(&tc.stats) };
        tc.flags.set(tc.flags.get() | REGISTERED);
    }
    if flags & EXIT_HOOK == 0 && process_hooks() == 2 {
        // SAFETY: the key exists; the value is this thread's cache.
        unsafe {
            libc::pthread_setspecific(KEY.load(Ordering::Relaxed) as libc::pthread_key_t, ptr::from_ref(tc).cast())
        };
        tc.flags.set(tc.flags.get() | EXIT_HOOK);
    }
}

/// Creates the thread-exit key and the fork handlers, once per process.
fn process_hooks() -> usize {
    loop {
        match HOOKS.compare_exchange(0, 1, Ordering::Acquire, Ordering::Acquire) {
            Ok(_) => break,
            Err(1) => {
                // SAFETY: sched_yield has no preconditions.
                unsafe { libc::sched_yield() };
            }
            Err(done) => return done,
        }
    }
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: `thread_exit` matches the destructor signature.
    let ok = unsafe { libc::pthread_key_create(&mut key, Some(thread_exit)) } == 0;
    KEY.store(key as usize, Ordering::Relaxed);
    // SAFETY: the handlers are plain functions valid for the whole process.
    unsafe { libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child)) };
    let state = if ok { 2 } else { 3 };
    HOOKS.store(state, Ordering::Release);
    state
}

/// The key destructor: gives a dying thread's spans back.
unsafe extern "C" fn thread_exit(arg: *mut libc::c_void) {
    // SAFETY: the key's value is the exiting thread's own cache, alive
    // until the thread is gone.
    let tc = unsafe { &*(arg as *const ThreadCache) };
    let core = unsafe { &mut *tc.core.get() };
    if core.mode == Mode::ThreadActive {
        core.flush(&HEAP);
        core.publish(&tc.stats);
        HEAP.give_index(core.index);
        core.index = 0;
    }
    core.mode = Mode::Exited;
    // SAFETY: the thread is exiting; nothing else reaches its stack cache.
    crate::stack::POOLS.flush(unsafe { &mut *tc.stacks.get() });
    tc.stats.stacks_cached.set(0);
    crate::stack::thread_teardown(tc.altstack.replace(0));
    if tc.flags.get() & REGISTERED != 0 {
        HEAP.unregister(&tc.stats);
    }
    tc.flags.set(0);
}

extern "C" fn fork_prepare() {
    crate::stack::for_each_lock(|l| l.lock());
    HEAP.for_each_lock(|l| l.lock());
}

extern "C" fn fork_parent() {
    // SAFETY: fork_prepare took these locks on this thread.
    HEAP.for_each_lock(|l| unsafe { l.unlock() });
    crate::stack::for_each_lock(|l| unsafe { l.unlock() });
}

extern "C" fn fork_child() {
    // SAFETY: the child's only thread inherited the locks fork_prepare took.
    HEAP.for_each_lock(|l| unsafe { l.unlock() });
    crate::stack::for_each_lock(|l| unsafe { l.unlock() });
}
