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
//! of the fallback cache, and those the stack module and the profiler
//! register (their pools, the overflow handler's install); the parent and
//! the child release them after `fork`. The child thus starts with a consistent heap;
//! the caches of the threads that do not exist in the child keep their
//! spans, which are simply never reused.

use core::cell::{Cell, UnsafeCell};
use core::ptr;

use crate::arena::TAG_CENTRAL;
use crate::heap::Heap;
use crate::index;
use crate::mcache::{CacheCore, Host, Mode};
use crate::os;
use crate::profile::{self, Sample};
use crate::stats::CacheStats;
use crate::sync::Mutex;
use crate::sync::unmodelled::{AtomicU32, AtomicUsize, Ordering};

/// The heap behind [`crate::SpanAlloc`].
pub(crate) static HEAP: Heap = Heap::with_background(&BACKGROUND);

/// The global heap's background releaser (see `scavenger`), started only
/// from a thread that holds neither the fallback cache's lock nor the
/// profile cache's: a free under either (a thread-exit destructor's, say)
/// must not create a thread, whose creation may wait for a lock of the C
/// library that its holder holds while it waits for ours.
static BACKGROUND: crate::heap::Background = crate::scavenger::background(|| {
    [FALLBACK.raw(), PROFILED.raw()].iter().all(|lock| {
        let free = lock.try_lock();
        if free {
            // SAFETY: taken just above, by this thread.
            unsafe { lock.unlock() };
        }
        free
    })
});

/// One thread's object cache and its counters.
struct ThreadCache {
    core: UnsafeCell<CacheCore>,
    stats: CacheStats,
    /// Set-up done for this thread (`REGISTERED`, `EXIT_HOOK`).
    flags: Cell<u8>,
    /// Prepare handlers this thread ran without their parent or child
    /// handler yet (see `fork_prepare`). Here, not in a thread-local of its
    /// own, so the child's handler reaches it with no lazy TLS set-up.
    fork_depth: Cell<usize>,
}

/// The thread's counters are on the heap's registry.
const REGISTERED: u8 = 1;
/// The thread-exit key is set for the thread.
const EXIT_HOOK: u8 = 2;

#[cfg(not(all(feature = "initial-exec-tls", target_arch = "x86_64")))]
thread_local! {
    static CACHE: ThreadCache = const {
        ThreadCache {
            core: UnsafeCell::new(CacheCore::new(Mode::ThreadFresh)),
            stats: CacheStats::new(),
            flags: Cell::new(0),
            fork_depth: Cell::new(0),
        }
    };
}

/// The calling thread's cache. The closure is trivial on purpose: the
/// thread-local access then inlines to one TLS-relative address wherever the
/// allocator is inlined, instead of a call through the key's accessor.
#[cfg(not(all(feature = "initial-exec-tls", target_arch = "x86_64")))]
#[inline(always)]
fn thread_cache() -> *const ThreadCache {
    CACHE.with(|tc| tc as *const ThreadCache)
}

// With the `initial-exec-tls` feature (for `libspanalloc.so`), the cache is
// a block in `.tbss` reached in the initial-exec model: in a shared object
// a `thread_local!` is general-dynamic on stable Rust, and its
// `__tls_get_addr` may call `malloc` (glibc grows a thread's TLS vector
// lazily after a `dlopen`), which would re-enter the allocator from inside
// itself. `.tbss` is zero-filled: an all-zero `ThreadCache` is a fresh one
// (`Mode::ThreadFresh` is 0, every stack empty and full, every pointer
// null). The library must then be loaded at start-up (preloaded or
// linked), not `dlopen`ed: it needs the static TLS block.
#[cfg(all(feature = "initial-exec-tls", target_arch = "x86_64"))]
core::arch::global_asm!(
    ".pushsection .tbss,\"awT\",@nobits",
    ".p2align 6",
    ".globl spanalloc_thread_cache",
    ".hidden spanalloc_thread_cache",
    ".type spanalloc_thread_cache,@object",
    ".size spanalloc_thread_cache, {size}",
    "spanalloc_thread_cache:",
    ".skip {size}",
    ".popsection",
    size = const size_of::<ThreadCache>(),
);

#[cfg(all(feature = "initial-exec-tls", target_arch = "x86_64"))]
static_assertions::const_assert!(align_of::<ThreadCache>() <= 64);

/// The calling thread's cache: the thread pointer plus the block's offset,
/// which the GOT holds (one load, one add; no call).
#[cfg(all(feature = "initial-exec-tls", target_arch = "x86_64"))]
#[inline(always)]
fn thread_cache() -> *const ThreadCache {
    let p: *const ThreadCache;
    // SAFETY: `fs:0` holds the thread pointer on x86-64 Linux, and the GOT
    // entry holds the block's offset from it: the sum is this thread's
    // block, alive as long as the thread. The result depends only on the
    // thread, so the compiler may reuse it.
    unsafe {
        core::arch::asm!(
            "mov {p}, qword ptr fs:[0]",
            "add {p}, qword ptr [rip + spanalloc_thread_cache@GOTTPOFF]",
            p = out(reg) p,
            options(pure, readonly, nostack),
        );
    }
    p
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

    fn sampled_alloc(&self, sample: Sample, size: usize, align: usize, zero: bool) -> Option<*mut u8> {
        let p = {
            let mut pc = PROFILED.lock();
            if zero { pc.alloc_zeroed(&ProfileHost, size, align) } else { pc.alloc(&ProfileHost, size, align) }
        };
        if !p.is_null() {
            profile::record(sample, p as usize, 0, None);
        }
        Some(p)
    }

    #[inline]
    fn sampled_free(&self, addr: usize, tag: u32) -> bool {
        let index = PROFILED_INDEX.load(Ordering::Relaxed);
        if index == 0 || (tag & !TAG_CENTRAL) >> 7 != index {
            return false;
        }
        free_sample(addr, tag);
        true
    }
}

/// Frees a small object the heap profile sampled (its page tag is the
/// profile cache's).
#[cold]
#[inline(never)]
fn free_sample(addr: usize, tag: u32) {
    let info = crate::sizeclass::CLASSES[crate::arena::tag_class(tag)];
    let mut pc = PROFILED.lock();
    // The record goes first: once the object is free, the profile's cache
    // may hand it to the next sample, recorded again.
    profile::unrecord(addr);
    // SAFETY: the caller checked the pointer is an object of this class (the
    // free checks it is live).
    unsafe { pc.dealloc(&ProfileHost, addr as *mut u8, info.size as usize, 8) };
}

// ---------------------------------------------------------------------------
// The heap profile's cache.

/// The cache that serves the small objects the heap profile samples, shared
/// by all threads behind a lock. Its spans carry its own index in their
/// page tags, so the free of a sample, on any thread, misses the fast path
/// (no cache's tag matches) and comes here: the record is dropped at no
/// cost to frees of other objects. It keeps every span that holds a sample.
static PROFILED: Mutex<CacheCore> = Mutex::new(CacheCore::new(Mode::ThreadFresh));
static PROFILED_STATS: CacheStats = CacheStats::new();
/// The profile cache's index (0 until its first sample).
static PROFILED_INDEX: AtomicU32 = AtomicU32::new(0);

struct ProfileHost;

impl Host for ProfileHost {
    fn heap(&self) -> &Heap {
        &HEAP
    }

    fn stats(&self) -> &CacheStats {
        &PROFILED_STATS
    }

    fn activate(&self, core: &mut CacheCore) {
        if core.attach() {
            core.mode = Mode::Explicit;
            core.keep_spans = true;
            PROFILED_INDEX.store(core.index, Ordering::Relaxed);
            // SAFETY: a static lives forever.
            unsafe { HEAP.register(&PROFILED_STATS) };
        }
    }

    fn fallback_alloc(&self, _size: usize, _align: usize, _zero: bool) -> *mut u8 {
        ptr::null_mut()
    }

    fn fallback_dealloc(&self, addr: usize, _size: usize, _align: usize) {
        crate::report::invalid_free(addr);
    }

    fn sampled_alloc(&self, _: Sample, _: usize, _: usize, _: bool) -> Option<*mut u8> {
        None
    }

    fn sampled_free(&self, _: usize, _: u32) -> bool {
        false
    }
}

/// The calling thread's cache and its host, for one allocator operation.
/// No closure: the fast paths inline into the caller whatever the
/// compiler thinks of a closure's size.
///
/// # Safety
/// The caller uses the reference for one operation, on this thread, and
/// does not reach the cache again meanwhile (the allocator never re-enters
/// itself: set-up routes nested calls to the fallback).
#[inline(always)]
pub(crate) unsafe fn current() -> (&'static mut CacheCore, ThreadHost) {
    let tc = thread_cache();
    // SAFETY: the cache lives as long as its thread; only this thread
    // reaches it, and the caller's contract makes this the only reference.
    unsafe { (&mut *(*tc).core.get(), ThreadHost { tc }) }
}

/// Runs `f` on the calling thread's cache.
#[inline(always)]
pub(crate) fn with_cache<R>(f: impl FnOnce(&mut CacheCore, &ThreadHost) -> R) -> R {
    // SAFETY: one operation, on this thread.
    let (c, h) = unsafe { current() };
    f(c, &h)
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

    fn sampled_alloc(&self, _: Sample, _: usize, _: usize, _: bool) -> Option<*mut u8> {
        None
    }

    fn sampled_free(&self, addr: usize, tag: u32) -> bool {
        ThreadHost { tc: ptr::null() }.sampled_free(addr, tag)
    }
}

// ---------------------------------------------------------------------------
// What other parts of spanalloc (the stacks, the profiler) hook into a
// thread's life, without this module knowing them.

/// A part's hooks: called at each thread's exit (after its object cache was
/// flushed), and around `fork` with `true` (take your locks) and `false`
/// (release them).
#[derive(Clone, Copy)]
pub(crate) struct Hooks {
    pub(crate) exit: fn(),
    pub(crate) fork_locks: fn(bool),
}

/// Registered hooks, as function addresses (0: an empty slot).
static EXIT_HOOKS: [AtomicUsize; 2] = [const { AtomicUsize::new(0) }; 2];
static FORK_HOOKS: [AtomicUsize; 2] = [const { AtomicUsize::new(0) }; 2];

/// Registers `hooks` (once; registering the same hooks again does nothing).
pub(crate) fn set_hooks(hooks: Hooks) {
    add_hook(&EXIT_HOOKS, hooks.exit as usize);
    add_hook(&FORK_HOOKS, hooks.fork_locks as usize);
}

fn add_hook(slots: &[AtomicUsize], f: usize) {
    for slot in slots {
        match slot.compare_exchange(0, f, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return,
            Err(existing) if existing == f => return,
            Err(_) => {}
        }
    }
    debug_assert!(false, "more thread hooks than slots");
}

/// The calling thread's counters (the stack module publishes how many
/// stacks its cache holds there). Use them at once, on this thread.
pub(crate) fn stats_of_current() -> &'static CacheStats {
    // SAFETY: the counters live as long as the thread, and the caller uses
    // the reference on it, right away.
    unsafe { &(*thread_cache()).stats }
}

/// Puts the calling thread's counters on the registry and sets its exit
/// hook, if that was not done yet (a thread that uses stacks but never
/// allocates through spanalloc).
pub(crate) fn register_current() {
    // SAFETY: the thread's cache outlives this call.
    register_thread(unsafe { &*thread_cache() });
}

// ---------------------------------------------------------------------------
// Thread registration, thread exit and fork.

/// 0: not set up; 1: being set up; 2: ready; 3: no thread-exit key.
static HOOKS: AtomicUsize = AtomicUsize::new(0);
/// The process in which the set-up under way (`HOOKS` 1) started: a forked
/// child that finds another process's set-up under way redoes it, since
/// the thread doing it does not exist in the child.
static SETUP_PID: AtomicUsize = AtomicUsize::new(0);
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

/// The process's set-up at load time, before any thread can race it: the
/// thread-exit key, the fork handlers, and what the `SPANALLOC` variable
/// asks for (see `profile::env`): the profile's rate and the release decay
/// now, and a profile or the statistics written at exit.
extern "C" fn at_load() {
    process_hooks();
    profile::set_rearm_hook(|| with_cache(|c, _| c.refresh_sampler()));
    profile::apply_env();
    let config = profile::env::config();
    if let Some(ms) = config.decay_ms {
        crate::scavenger::set_release_decay_ms(ms);
    }
    if config.stats_at_exit || config.profile_path().is_some() {
        // SAFETY: a plain function valid for the whole process.
        unsafe { libc::atexit(at_exit) };
    }
}

/// What `SPANALLOC` asks for at exit. Runs outside the allocator, so it may
/// allocate; failures are reported in one line, never a panic.
extern "C" fn at_exit() {
    let config = profile::env::config();
    if config.profile_path().is_some()
        && let Err(e) = profile::write_configured_profile()
    {
        let mut line = crate::report::Line::new();
        line.str("spanalloc: cannot write the heap profile: ").str(e.kind().to_string().as_str());
        line.emit();
    }
    if config.stats_at_exit {
        let text = crate::stats().to_string();
        crate::os::write_stderr(text.as_bytes());
    }
}

#[used]
#[unsafe(link_section = ".init_array")]
static AT_LOAD: extern "C" fn() = at_load;

/// Creates the thread-exit key and the fork handlers, once per process.
///
/// The load-time constructor runs it before any thread exists, so the
/// paths below for a racing thread matter only when the library was loaded
/// by hand into a running program.
fn process_hooks() -> usize {
    loop {
        match HOOKS.compare_exchange(0, 1, Ordering::Acquire, Ordering::Acquire) {
            Ok(_) => break,
            Err(1) => {
                let pid = SETUP_PID.load(Ordering::Acquire);
                if pid != 0 && pid != os::pid() {
                    // Forked while another thread of the parent was setting
                    // up: that thread is not here to finish. Start again
                    // (the fork handlers tolerate being registered twice).
                    let _ = HOOKS.compare_exchange(1, 0, Ordering::AcqRel, Ordering::Relaxed);
                    continue;
                }
                // SAFETY: sched_yield has no preconditions.
                unsafe { libc::sched_yield() };
            }
            Err(done) => return done,
        }
    }
    SETUP_PID.store(os::pid(), Ordering::Release);
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
    for slot in &EXIT_HOOKS {
        let f = slot.load(Ordering::Acquire);
        if f != 0 {
            // SAFETY: only `fn()` addresses are stored in the slots.
            unsafe { core::mem::transmute::<usize, fn()>(f)() };
        }
    }
    tc.stats.stacks_cached.set(0);
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
    for slot in &FORK_HOOKS {
        let f = slot.load(Ordering::Acquire);
        if f != 0 {
            // SAFETY: only `fn(bool)` addresses are stored in the slots.
            unsafe { core::mem::transmute::<usize, fn(bool)>(f)(lock) };
        }
    }
    raw(FALLBACK.raw());
    raw(PROFILED.raw());
    profile::for_each_lock(raw);
    Heap::fork_lock_all(lock, |h| h.for_each_lock(raw));
    spin(index::lock_for_fork());
    spin(crate::mcache::slot_lock_for_fork());
}

/// The calling thread's count of prepare handlers run. The handlers may be
/// registered twice (see `process_hooks`); only the outermost pair takes
/// and releases the locks. Per thread: a `fork` on another thread still
/// waits for them.
fn fork_depth() -> &'static Cell<usize> {
    // SAFETY: the thread's block lives as long as the thread, which uses
    // the reference at once.
    unsafe { &(*thread_cache()).fork_depth }
}

extern "C" fn fork_prepare() {
    let d = fork_depth();
    let depth = d.replace(d.get() + 1);
    if depth == 0 {
        fork_locks(true);
    }
}

extern "C" fn fork_parent() {
    fork_done();
}

extern "C" fn fork_child() {
    // The background releaser is not in the child: it restarts lazily.
    crate::scavenger::after_fork_child();
    fork_done();
}

fn fork_done() {
    let d = fork_depth();
    let depth = d.replace(d.get().saturating_sub(1));
    if depth == 1 {
        fork_locks(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_releaser_is_never_started_under_the_fallback_or_profile_cache_lock() {
        assert!((BACKGROUND.may_start)());
        for lock in [&FALLBACK, &PROFILED] {
            let held = lock.lock();
            assert!(!(BACKGROUND.may_start)(), "may start while a cache lock is held");
            drop(held);
        }
        assert!((BACKGROUND.may_start)());
    }

    #[test]
    fn a_child_forked_during_another_process_set_up_does_it_again_instead_of_waiting() {
        // SAFETY: the child only runs this thread's code and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // As a child inherits it when its parent forked while another
            // thread was inside the set-up: under way, in another process.
            HOOKS.store(1, Ordering::Release);
            SETUP_PID.store(1, Ordering::Release);
            let state = process_hooks();
            // The fork handlers are now registered twice; a fork must still
            // leave a heap that works.
            let grandchild = unsafe { libc::fork() };
            if grandchild == 0 {
                let l = core::alloc::Layout::from_size_align(100, 8).unwrap();
                // SAFETY: a plain allocation and its free.
                let ok = unsafe {
                    let p = core::alloc::GlobalAlloc::alloc(&crate::SpanAlloc, l);
                    core::alloc::GlobalAlloc::dealloc(&crate::SpanAlloc, p, l);
                    !p.is_null()
                };
                unsafe { libc::_exit(if ok { 0 } else { 1 }) };
            }
            let mut status = 0;
            unsafe { libc::waitpid(grandchild, &mut status, 0) };
            let ok = state == 2 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut status = 0;
        loop {
            if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
                break;
            }
            if std::time::Instant::now() > deadline {
                unsafe { libc::kill(pid, libc::SIGKILL) };
                panic!("the child spins on a set-up its parent's thread was doing");
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child status {status:#x}");
    }
}
