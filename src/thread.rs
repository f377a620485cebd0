//! The process's threads: the static heap, each thread's cache, its set-up
//! on first use, its flush at thread exit, and `fork`.
//!
//! # The thread-local cache
//!
//! The cache is a `const`-initialised thread-local with no destructor, so
//! reaching it is one TLS-relative address: no lazy initialisation, no
//! "already destroyed" state, no allocation, usable from any thread
//! (including threads std did not create) and during any thread-local
//! destructor. A fresh cache is all zeros (`Mode::ThreadFresh`, every stack
//! both empty and full), so its first allocation or free takes a slow path,
//! which [`activate`]s it:
//!
//! - the cache gets an index and its stacks' slot array (`CacheCore::attach`);
//! - its counters join the heap's registry (for `stats()`), and the
//!   thread-exit key is set for the thread.
//!
//! The process's own set-up (the thread-exit key and the `fork` handlers)
//! runs from a load-time constructor, before `main` and before any thread
//! can race it, and again lazily if the constructor did not run (a library
//! loaded by hand).
//!
//! At thread exit the key destructor runs after Rust's own thread-local
//! destructors (glibc calls C++-style TLS destructors first), gives every
//! object and span back, and marks the cache `Exited`. A thread that still
//! allocates after that (another key's destructor, say) goes through the
//! shared fallback cache, behind a lock.
//!
//! # fork
//!
//! The prepare handler takes every lock of the heap, of the cache indices,
//! of the fallback cache and of the stack pools; the parent and the child
//! release them after `fork`. The child thus starts with a consistent heap;
//! the caches of the threads that do not exist in the child keep their
//! spans, which are simply never reused.

use core::cell::{Cell, UnsafeCell};
use core::ptr;

use crate::heap::Heap;
use crate::index;
use crate::mcache::{CacheCore, Host, Mode};
use crate::stack::StackCache;
use crate::stats::CacheStats;
use crate::sync::Mutex;
use crate::sync::unmodelled::{AtomicUsize, Ordering};

/// The heap behind [`crate::SpanAlloc`].
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

/// The host of a thread's cache: the static heap, the thread's counters.
pub(crate) struct ThreadHost {
    tc: *const ThreadCache,
}

impl Host for ThreadHost {
    #[inline(always)]
    fn heap(&self) -> &Heap {
        &HEAP
    }

    #[inline(always)]
    fn stats(&self) -> &CacheStats {
        // SAFETY: the thread's cache outlives the call.
        unsafe { &(*self.tc).stats }
    }

    fn activate(&self, core: &mut CacheCore) {
        // SAFETY: as above.
        activate(unsafe { &*self.tc }, core);
    }

    fn fallback_alloc(&self, size: usize, align: usize, zero: bool) -> *mut u8 {
        let mut fb = FALLBACK.lock();
        if zero { fb.alloc_zeroed(&FallbackHost, size, align) } else { fb.alloc(&FallbackHost, size, align) }
    }

    fn fallback_dealloc(&self, addr: usize, size: usize, align: usize) {
        // SAFETY: the caller's contract, forwarded.
        unsafe { FALLBACK.lock().dealloc(&FallbackHost, addr as *mut u8, size, align) }
    }
}

/// Runs `f` on the calling thread's cache.
#[inline(always)]
pub(crate) fn with_cache<R>(f: impl FnOnce(&mut CacheCore, &ThreadHost) -> R) -> R {
    let tc = thread_cache();
    // SAFETY: the cache lives as long as its thread; only this thread
    // reaches it, and the allocator never re-enters itself (set-up routes
    // nested calls to the fallback), so this is the only reference.
    unsafe { f(&mut *(*tc).core.get(), &ThreadHost { tc }) }
}

/// Gives the calling thread's cached objects and spans back to the heap
/// (`release()`).
pub(crate) fn flush_current() {
    with_cache(|c, host| {
        if c.mode == Mode::ThreadActive {
            c.flush(&HEAP);
            c.publish(host.stats());
        }
    });
}

// ---------------------------------------------------------------------------
// The fallback cache.

/// The cache threads use after their own was flushed at exit (and when a
/// cache cannot be set up).
static FALLBACK: Mutex<CacheCore> = Mutex::new(CacheCore::new(Mode::ThreadFresh));
static FALLBACK_STATS: CacheStats = CacheStats::new();

struct FallbackHost;

impl Host for FallbackHost {
    fn heap(&self) -> &Heap {
        &HEAP
    }

    fn stats(&self) -> &CacheStats {
        &FALLBACK_STATS
    }

    fn activate(&self, core: &mut CacheCore) {
        if core.attach() {
            core.mode = Mode::Explicit;
            // SAFETY: a static lives forever.
            unsafe { HEAP.register(&FALLBACK_STATS) };
        }
    }

    fn fallback_alloc(&self, _size: usize, _align: usize, _zero: bool) -> *mut u8 {
        ptr::null_mut()
    }

    fn fallback_dealloc(&self, addr: usize, _size: usize, _align: usize) {
        crate::report::fatal_resource_at("a free through the fallback cache (no memory for its slots)", addr);
    }
}

// ---------------------------------------------------------------------------
// Stacks.

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

/// The first stack operation of a thread: its exit hook and its overflow
/// handler's alternate stack.
#[cold]
#[inline(never)]
fn stack_thread_setup(tc: &ThreadCache) {
    register_thread(tc);
    tc.altstack.set(crate::stack::thread_setup());
    tc.flags.set(tc.flags.get() | STACK_SETUP);
}

// ---------------------------------------------------------------------------
// Thread registration, thread exit and fork.

/// 0: not set up; 1: being set up; 2: ready; 3: no thread-exit key.
static HOOKS: AtomicUsize = AtomicUsize::new(0);
/// The pthread key whose destructor flushes a thread's cache.
static KEY: AtomicUsize = AtomicUsize::new(0);

/// Sets up a thread's cache on its first slow path.
fn activate(tc: &ThreadCache, core: &mut CacheCore) {
    if !core.attach() {
        return; // stays fresh: the fallback serves it
    }
    // Anything the set-up below allocates (glibc's `pthread_setspecific`
    // may, for high keys) goes to the fallback cache, not to this one.
    core.mode = Mode::Exited;
    register_thread(tc);
    core.mode = Mode::ThreadActive;
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

/// The process's set-up at load time, before any thread can race it.
extern "C" fn at_load() {
    process_hooks();
}

#[used]
#[unsafe(link_section = ".init_array")]
static AT_LOAD: extern "C" fn() = at_load;

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

/// The key destructor: gives a dying thread's objects and spans back.
unsafe extern "C" fn thread_exit(arg: *mut libc::c_void) {
    // SAFETY: the key's value is the exiting thread's own cache, alive
    // until the thread is gone.
    let tc = unsafe { &*(arg as *const ThreadCache) };
    let core = unsafe { &mut *tc.core.get() };
    if core.mode == Mode::ThreadActive {
        core.flush(&HEAP);
        core.publish(&tc.stats);
        core.detach();
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

/// Every lock `fork` must hold, in order: what a thread may hold while it
/// takes another comes first.
fn fork_locks(lock: bool) {
    let raw = |l: &crate::sync::RawLock| {
        if lock {
            l.lock()
        } else {
            // SAFETY: fork_prepare took these locks on this thread.
            unsafe { l.unlock() }
        }
    };
    let spin = |l: &crate::sync::unmodelled::SpinLock| {
        if lock {
            l.lock()
        } else {
            // SAFETY: as above.
            unsafe { l.unlock() }
        }
    };
    crate::stack::for_each_lock(raw);
    raw(FALLBACK.raw());
    HEAP.for_each_lock(raw);
    spin(index::lock_for_fork());
    spin(crate::mcache::slot_lock_for_fork());
}

extern "C" fn fork_prepare() {
    fork_locks(true);
}

extern "C" fn fork_parent() {
    fork_locks(false);
}

extern "C" fn fork_child() {
    fork_locks(false);
}
