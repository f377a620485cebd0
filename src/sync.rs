//! Every lock, atomic and `UnsafeCell` the allocator uses.
//!
//! spanalloc is written once and model-checked as it ships: under
//! `--cfg loom` this module re-exports loom's atomics, cell and mutex, so the
//! `loom-tests/` crate explores the interleavings of the real mheap, mcentral
//! and mcache code. In a normal build it re-exports `core`'s atomics and
//! provides [`Mutex`], a small futex lock that never allocates.
//!
//! # Implementation
//!
//! - [`atomic`] is `core::sync::atomic` or `loom::sync::atomic`.
//! - [`UnsafeCell`] has loom's `with` / `with_mut` closure API in both
//!   builds; under loom every access is checked for causality, so two
//!   parties that both believe they own a span are caught.
//! - [`Mutex`] is [`RawLock`] plus the data it guards. `RawLock` spins a
//!   little, then sleeps on a futex; its uncontended path is one
//!   compare-and-swap to lock and one swap to unlock. Under loom the
//!   allocator's `Mutex` is `loom::sync::Mutex` (a spinning lock would make
//!   a model explode), and `RawLock` itself is model-checked on its own with
//!   loom's atomics and `yield_now` standing in for the futex.
//! - [`unmodelled`] holds the few atomics loom need not see: statistics
//!   counters and the process-wide arena registry. They never order other
//!   memory, so leaving them out of the model loses no interleaving that
//!   matters, and it lets them live in `static`s.
//!
//! Nothing here allocates, panics or unwinds.

#[cfg(not(loom))]
pub(crate) use core::sync::atomic;

#[cfg(loom)]
pub(crate) use loom::sync::atomic;
/// One-time initialisation that never allocates (`spin`'s).
#[cfg(not(loom))]
pub(crate) use spin::Once;

use atomic::{AtomicU32, Ordering};

/// Atomics outside the model: counters and registries that order nothing.
pub(crate) mod unmodelled {
    pub(crate) use core::sync::atomic::{AtomicPtr, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};

    /// A statistics counter written by one thread and read by any.
    ///
    /// The writer adds with a relaxed load and store (no read-modify-write:
    /// on x86-64 this is a plain `add` to memory), readers load relaxed.
    #[derive(Debug)]
    #[repr(transparent)]
    pub(crate) struct Counter(AtomicU64);

    impl Counter {
        pub(crate) const fn new() -> Self {
            Counter(AtomicU64::new(0))
        }

        /// Adds `n`; only the one thread that owns the counter may call this.
        #[inline(always)]
        pub(crate) fn bump(&self, n: u64) {
            self.0.store(self.0.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
        }

        /// Sets the value; only the one thread that owns the counter may
        /// call this.
        #[inline]
        pub(crate) fn set(&self, v: u64) {
            self.0.store(v, Ordering::Relaxed);
        }

        #[inline]
        pub(crate) fn get(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }

        /// Adds `n` from any thread (a read-modify-write; for shared totals).
        #[inline]
        pub(crate) fn add_shared(&self, n: u64) {
            self.0.fetch_add(n, Ordering::Relaxed);
        }

        #[inline]
        pub(crate) fn sub_shared(&self, n: u64) {
            self.0.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// A spin lock for critical sections of a few instructions that call
    /// nothing (the cache-index pool). Outside the model: nothing inside it
    /// is a point where loom could switch threads.
    #[derive(Debug)]
    pub(crate) struct SpinLock(core::sync::atomic::AtomicBool);

    impl SpinLock {
        pub(crate) const fn new() -> Self {
            SpinLock(core::sync::atomic::AtomicBool::new(false))
        }

        pub(crate) fn lock(&self) {
            while self.0.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
                while self.0.load(Ordering::Relaxed) {
                    core::hint::spin_loop();
                }
            }
        }

        /// # Safety
        /// The caller holds the lock (or, after `fork`, holds it on behalf
        /// of the thread that took it in the prepare handler).
        pub(crate) unsafe fn unlock(&self) {
            self.0.store(false, Ordering::Release);
        }
    }
}

// ---------------------------------------------------------------------------
// UnsafeCell with loom's closure API.

#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;

/// `core::cell::UnsafeCell` with the `with` / `with_mut` API of loom's.
#[cfg(not(loom))]
#[derive(Debug)]
#[repr(transparent)]
pub(crate) struct UnsafeCell<T>(core::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(data: T) -> Self {
        UnsafeCell(core::cell::UnsafeCell::new(data))
    }

    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

// ---------------------------------------------------------------------------
// The lock.

const UNLOCKED: u32 = 0;
const LOCKED: u32 = 1;
/// Locked, and a thread may be sleeping on the futex: unlock must wake.
const CONTENDED: u32 = 2;
/// Spins before sleeping. Critical sections are short (list pushes, a
/// bitmap scan), so a brief spin usually wins; sleeping keeps a descheduled
/// holder from costing other threads a whole time slice on a small machine.
const SPINS: u32 = if cfg!(loom) { 2 } else { 100 };
/// The lock's orderings (relaxed in the "lock_relaxed" mutant, which its
/// loom model must catch).
#[cfg(not(spanalloc_mutant = "lock_relaxed"))]
const ACQUIRE: Ordering = Ordering::Acquire;
#[cfg(not(spanalloc_mutant = "lock_relaxed"))]
const RELEASE: Ordering = Ordering::Release;
#[cfg(spanalloc_mutant = "lock_relaxed")]
const ACQUIRE: Ordering = Ordering::Relaxed;
#[cfg(spanalloc_mutant = "lock_relaxed")]
const RELEASE: Ordering = Ordering::Relaxed;

/// A futex lock in one `u32` (under loom: loom's atomics and `yield_now`).
///
/// States: 0 unlocked, 1 locked, 2 locked with possible sleepers. The
/// algorithm is the three-state mutex from Drepper's "Futexes Are Tricky".
#[derive(Debug)]
pub struct RawLock {
    state: AtomicU32,
}

impl RawLock {
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Self {
        RawLock { state: AtomicU32::new(UNLOCKED) }
    }

    /// A new, unlocked lock.
    #[cfg(loom)]
    pub fn new() -> Self {
        RawLock { state: AtomicU32::new(UNLOCKED) }
    }

    /// Takes the lock, spinning briefly and then sleeping.
    #[inline]
    pub fn lock(&self) {
        if self.state.compare_exchange(UNLOCKED, LOCKED, ACQUIRE, Ordering::Relaxed).is_err() {
            self.lock_contended();
        }
    }

    /// Takes the lock if it is free.
    #[inline]
    pub fn try_lock(&self) -> bool {
        self.state.compare_exchange(UNLOCKED, LOCKED, ACQUIRE, Ordering::Relaxed).is_ok()
    }

    #[cold]
    fn lock_contended(&self) {
        for _ in 0..SPINS {
            if self.state.load(Ordering::Relaxed) == UNLOCKED && self.try_lock() {
                return;
            }
            spin_hint();
        }
        // From here on we may sleep, so whoever unlocks must wake us.
        while self.state.swap(CONTENDED, ACQUIRE) != UNLOCKED {
            wait(&self.state, CONTENDED);
        }
    }

    /// Releases the lock.
    ///
    /// # Safety
    /// The calling thread must hold the lock (or, after `fork`, hold it on
    /// behalf of the thread that took it in the prepare handler).
    #[inline]
    pub unsafe fn unlock(&self) {
        if self.state.swap(UNLOCKED, RELEASE) == CONTENDED {
            wake_one(&self.state);
        }
    }
}

/// A point where a model may switch threads (used by mutants).
#[cfg(loom)]
#[allow(dead_code)]
pub(crate) fn spin_point() {
    loom::thread::yield_now();
}

#[cfg(not(loom))]
#[inline(always)]
fn spin_hint() {
    core::hint::spin_loop();
}

#[cfg(loom)]
fn spin_hint() {
    loom::thread::yield_now();
}

#[cfg(not(loom))]
fn wait(state: &AtomicU32, expected: u32) {
    crate::os::futex_wait(state, expected);
}

#[cfg(loom)]
fn wait(state: &AtomicU32, expected: u32) {
    // loom has no futex: yield until the word changes.
    while state.load(Ordering::Relaxed) == expected {
        loom::thread::yield_now();
    }
}

#[cfg(not(loom))]
fn wake_one(state: &AtomicU32) {
    crate::os::futex_wake_one(state);
}

#[cfg(loom)]
fn wake_one(_state: &AtomicU32) {}

/// A lock and the data it guards.
#[cfg(not(loom))]
pub(crate) struct Mutex<T> {
    raw: RawLock,
    data: core::cell::UnsafeCell<T>,
}

// SAFETY: the lock serialises every access to `data`.
#[cfg(not(loom))]
unsafe impl<T: Send> Sync for Mutex<T> {}
#[cfg(not(loom))]
unsafe impl<T: Send> Send for Mutex<T> {}

#[cfg(not(loom))]
impl<T> Mutex<T> {
    pub(crate) const fn new(data: T) -> Self {
        Mutex { raw: RawLock::new(), data: core::cell::UnsafeCell::new(data) }
    }

    #[inline]
    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        self.raw.lock();
        MutexGuard { mutex: self }
    }

    /// The lock itself, for `fork` handlers that must hold it across calls.
    pub(crate) fn raw(&self) -> &RawLock {
        &self.raw
    }
}

/// Holds a [`Mutex`] locked; unlocks when dropped.
#[cfg(not(loom))]
pub(crate) struct MutexGuard<'a, T> {
    mutex: &'a Mutex<T>,
}

#[cfg(not(loom))]
impl<T> core::ops::Deref for MutexGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock.
        unsafe { &*self.mutex.data.get() }
    }
}

#[cfg(not(loom))]
impl<T> core::ops::DerefMut for MutexGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard holds the lock, so this is the only reference.
        unsafe { &mut *self.mutex.data.get() }
    }
}

#[cfg(not(loom))]
impl<T> Drop for MutexGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: the guard holds the lock.
        unsafe { self.mutex.raw.unlock() }
    }
}

/// Under loom the allocator's locks are loom's own mutex.
#[cfg(loom)]
#[derive(Debug)]
pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

#[cfg(loom)]
pub(crate) type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

#[cfg(loom)]
impl<T> Mutex<T> {
    pub(crate) fn new(data: T) -> Self {
        Mutex(loom::sync::Mutex::new(data))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        // loom's mutex poisons only if a model thread panicked, and then the
        // model has already failed.
        match self.0.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// Under loom, `const fn` constructors cannot build loom's types; this
/// macro writes a constructor that is `const` in normal builds only.
macro_rules! const_fn_unless_loom {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty $body:block) => {
        #[cfg(not(loom))]
        $(#[$attr])*
        $vis const fn $name($($arg: $ty),*) -> $ret $body
        #[cfg(loom)]
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) -> $ret $body
    };
}
pub(crate) use const_fn_unless_loom;
