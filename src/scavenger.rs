//! The background releaser: the global heap's free memory goes back to the
//! OS while the program idles (Go's `bgscavenge`, jemalloc's background
//! thread, mimalloc's purge delay).
//!
//! Without it, memory would go back only while the program keeps calling
//! the allocator: the scavenger's ticks would run from its slow paths, and
//! a program that frees a peak and then waits (a server between requests, a
//! tool in its last phase) would keep the peak resident. So the global heap
//! has one thread of its own that runs the ticks ([`crate::Heap`]'s `tick`:
//! the mcentrals' empty spans back to the mheap, pages free for the decay
//! back to the OS, the rest aged), a third of the decay apart.
//!
//! # Its life
//!
//! - **Started lazily**, from an allocation's or a free's slow path, once
//!   the heap holds at least [`START_PAGES`] of dirty free pages, or once
//!   memory comes back to the mcentrals of a heap of at least twice that
//!   (see "Parked owners" below): a small program never gets the thread. It is a raw `pthread_create` with a stack
//!   mapped here and every signal blocked (`os::spawn_thread`): no Rust
//!   `std::thread` (which allocates through the allocator being called),
//!   and never while the calling thread holds one of the allocator's locks
//!   (the fallback and profile caches' locks are the ones a slow path may
//!   hold: `thread` says so through `may_start`), since `pthread_create`
//!   takes locks of the C library. `libspanalloc.so` turns background
//!   release off at load: there the C library itself calls `malloc` and
//!   `free` while holding the locks thread creation needs.
//! - **Asleep when there is nothing to do.** After a tick that leaves no
//!   dirty page to wait for, it parks on a futex in the mheap
//!   (`MHeap::park`); a free of pages wakes it (one relaxed load on the
//!   free path while it runs, a `FUTEX_WAKE` only when it sleeps), and so
//!   does a slow path once a tick is due (for empty spans that reached an
//!   mcentral without the mheap seeing them). Between ticks it naps with a
//!   timeout.
//! - **Never in the way.** It allocates nothing, holds no lock across a
//!   system call (the mheap's batches, see `mheap`), and never waits for a
//!   lock an allocation holds for longer than a list operation.
//! - **Restarted in a forked child**, lazily: the child has no such thread,
//!   so `thread`'s child handler forgets it ([`after_fork_child`]) and the
//!   child's first due tick with enough dirty memory starts one. `fork`
//!   takes the release lock first, so no batch of pages is out in the
//!   child.
//! - **Turned off** with `spanalloc::set_background_release(false)`: the thread
//!   sleeps, and the slow paths tick again (a few batches at a time).
//!   Turned on again, it wakes (or starts, if there is memory to give
//!   back), so no further allocator call is needed. [`set_release_decay_ms`]
//!   sets the decay.
//!
//! # Parked owners
//!
//! Objects freed by another thread land in their span's remote bitmap (see
//! `mspan`), whoever owns the span. A thread that allocated a lot and then
//! blocks for good (a producer whose consumer frees everything) must not
//! strand them. The design keeps the ownership protocol as it is and does
//! not take spans away from a cache (its fast path touches its spans with
//! plain loads and stores, so only the owner may hand them over):
//!
//! - A cache hands its used-up spans to the mcentral a few at a time as it
//!   allocates (`mcache`'s refill), so of a producer's peak all but its
//!   last few spans per class are the mcentral's by the time it blocks.
//! - The first remote free into such a span queues it on the mcentral's
//!   notify stack and calls `Heap::note_central_free`, which starts or
//!   wakes this thread: the frees that follow may all come before anybody's
//!   next slow path.
//! - Each tick merges the mcentrals' remote frees and gives wholly free
//!   spans to the mheap (`MCentral::release_empty`), and the thread keeps
//!   ticking while anything comes back that way; it parks only after a tick
//!   that found nothing. A consumer that resumes after it parked wakes it
//!   from its free slow path once a tick is due.
//!
//! So the remotely freed objects are reusable by any thread at once (the
//! mcentral lists the spans), and released after the decay, or at once by
//! `release()`. What a parked cache itself holds stays with it: per class
//! its stack, its current span and at most the hold budget of spans (about
//! 1 MiB), plus its large-object cache. That is bounded, whatever the
//! peak was, and goes back when the thread runs again or exits.
//!
//! Heaps other than the global one (`Heap::new()`) have no background
//! releaser; their ticks run on their caches' slow paths. Under loom there
//! is no thread at all: time stands still and the models call `release`.

use core::ffi::c_void;
use core::ptr;

use crate::heap::{Background, Heap};
use crate::mheap::{self, MHeap, Releaser, SLEEP_NAPPING, SLEEP_OFF, SLEEP_PARKED};
use crate::os;
use crate::sizeclass::PAGE_SIZE;
use crate::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicUsize, Ordering};

/// What the global heap is made with (`Heap::with_background`): its slow
/// paths start, wake or ask this module through these. `may_start` says
/// whether the calling thread may create a thread now: not while it holds
/// a lock of the level above (a cache behind a lock), since
/// `pthread_create` may wait for a lock of the C library whose holder
/// waits for that one.
pub(crate) const fn background(may_start: fn() -> bool) -> Background {
    Background { wanted, kick, running, may_start }
}

/// The thread's stack: its frames take a few KiB; glibc puts the thread's
/// descriptor and static TLS at the top. Untouched pages cost nothing.
const STACK: usize = 256 << 10;
/// Dirty free pages that make a slow path start the thread (4 MiB).
pub(crate) const START_PAGES: u64 = ((4 << 20) / PAGE_SIZE) as u64;

/// Background release wanted (on unless the program turns it off).
static ENABLED: AtomicBool = AtomicBool::new(true);

const NOT_STARTED: u32 = 0;
const STARTING: u32 = 1;
const RUNNING: u32 = 2;
/// The thread could not be created: the slow paths tick from then on.
const FAILED: u32 = 3;
static STATE: AtomicU32 = AtomicU32::new(NOT_STARTED);
/// The heap the thread serves (set before it starts; null until then).
static SERVED: AtomicPtr<Heap> = AtomicPtr::new(ptr::null_mut());
/// The thread's stack mapping, for a forked child to unmap.
static STACK_MAP: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];

/// Turns background release on or off (`spanalloc::set_background_release`,
/// for `heap`, the global heap). Turned on with enough dirty memory and no
/// thread yet, it starts the thread: the program may make no allocator
/// call after this one.
pub(crate) fn set_background(heap: &'static Heap, on: bool) {
    ENABLED.store(on, Ordering::SeqCst);
    if let Some(mh) = served() {
        for state in [SLEEP_OFF, SLEEP_NAPPING, SLEEP_PARKED] {
            mh.wake(state);
        }
    } else if on && (wanted(heap) || big_enough(heap)) && heap.background().is_some_and(|b| (b.may_start)()) {
        start(heap);
    }
}

/// Sets the decay in milliseconds (default 500; at least 3): free memory
/// goes back to the OS once it has stayed free between one and four
/// thirds of this long. A short decay keeps the resident set small; a long
/// one spares a program that frees and reallocates the page faults of
/// touching released memory again. It applies to every heap, the global
/// allocator's and those made with [`crate::Heap::new`].
pub fn set_release_decay_ms(ms: u64) {
    mheap::set_decay_ms(ms);
    if let Some(mh) = served() {
        mh.wake(SLEEP_NAPPING);
    }
}

/// The decay in milliseconds (see [`set_release_decay_ms`]).
pub fn release_decay_ms() -> u64 {
    mheap::decay_ms()
}

/// The mheap of the heap the running thread serves.
fn served() -> Option<&'static MHeap> {
    if STATE.load(Ordering::Acquire) != RUNNING {
        return None;
    }
    // SAFETY: set to a `static` heap before the thread started.
    let heap = unsafe { SERVED.load(Ordering::Acquire).as_ref() }?;
    Some(&heap.shared().mheap)
}

/// Whether the background thread gives its heap's memory back.
fn running() -> bool {
    ENABLED.load(Ordering::Relaxed) && STATE.load(Ordering::Acquire) == RUNNING
}

/// Whether `heap` should get its background releaser now: it has not
/// started, and the heap holds enough dirty memory.
#[inline]
fn wanted(heap: &'static Heap) -> bool {
    STATE.load(Ordering::Relaxed) == NOT_STARTED && ENABLED.load(Ordering::Relaxed) && {
        let k = &heap.shared().mheap.counters;
        k.free_pages.get().saturating_sub(k.released_pages.get()) >= START_PAGES
    }
}

/// From a slow path of `heap`'s caches, when a tick is due: starts the
/// background releaser if the heap holds enough dirty memory (or, `busy`,
/// memory is coming back to its mcentrals), or wakes it if it sleeps.
/// Returns whether the releaser does the tick (else the caller does).
fn kick(heap: &'static Heap, busy: bool) -> bool {
    if !ENABLED.load(Ordering::Relaxed) {
        return false;
    }
    match STATE.load(Ordering::Acquire) {
        RUNNING => {
            heap.shared().mheap.wake(SLEEP_PARKED);
            true
        }
        NOT_STARTED => {
            (wanted(heap) || busy && big_enough(heap))
                && heap.background().is_some_and(|b| (b.may_start)())
                && start(heap)
        }
        _ => false,
    }
}

/// Whether `heap` has grown past twice [`START_PAGES`]: a small program
/// never gets the thread, whatever comes back to its mcentrals.
fn big_enough(heap: &'static Heap) -> bool {
    heap.shared().mheap.counters.sys_pages.get() >= 2 * START_PAGES
}

/// Starts the thread (one caller wins; the others tick themselves).
#[cold]
fn start(heap: &'static Heap) -> bool {
    if STATE.compare_exchange(NOT_STARTED, STARTING, Ordering::AcqRel, Ordering::Relaxed).is_err() {
        return false;
    }
    let heap = ptr::from_ref(heap).cast_mut();
    SERVED.store(heap, Ordering::Release);
    match os::spawn_thread(releaser, heap.cast(), STACK) {
        Some((base, len)) => {
            STACK_MAP[0].store(base, Ordering::Relaxed);
            STACK_MAP[1].store(len, Ordering::Relaxed);
            STATE.store(RUNNING, Ordering::Release);
            true
        }
        None => {
            STATE.store(FAILED, Ordering::Release);
            false
        }
    }
}

/// The thread: a tick whenever one is due, asleep in between.
extern "C" fn releaser(heap: *mut c_void) -> *mut c_void {
    os::set_thread_name(c"spanalloc-bg");
    // SAFETY: `start` passes a `static` heap.
    let heap = unsafe { &*heap.cast::<Heap>() };
    let mh = &heap.shared().mheap;
    loop {
        if !ENABLED.load(Ordering::SeqCst) {
            mh.doze(SLEEP_OFF, 0, || !ENABLED.load(Ordering::SeqCst));
            continue;
        }
        let seq = mh.put_seq();
        if mh.tick_due(os::now_ms()) {
            let waiting = heap.tick(Releaser::Background, usize::MAX, true);
            // Nothing left to wait for, and nothing came back to the
            // mcentrals since the last tick: sleep until pages are freed
            // (or a slow path finds a tick due: remote frees into the
            // mcentrals' spans wake it that way).
            if waiting == 0 && mh.park(seq) {
                continue;
            }
        }
        let ms = mh.until_next_tick(os::now_ms()).max(1);
        mh.doze(SLEEP_NAPPING, ms, || ENABLED.load(Ordering::SeqCst));
    }
}

/// In a forked child (from `thread`'s child handler): the thread does not
/// exist here. Forget it and unmap its stack; the child starts its own when
/// it needs one.
pub(crate) fn after_fork_child() {
    if STATE.load(Ordering::Acquire) == NOT_STARTED {
        return;
    }
    let (base, len) = (STACK_MAP[0].swap(0, Ordering::Relaxed), STACK_MAP[1].swap(0, Ordering::Relaxed));
    if base != 0 {
        os::unmap(base as *mut u8, len);
    }
    // SAFETY: null, or the `static` heap `start` stored.
    if let Some(heap) = unsafe { SERVED.load(Ordering::Acquire).as_ref() } {
        heap.shared().mheap.forget_sleeper();
    }
    STATE.store(NOT_STARTED, Ordering::Release);
}
