//! Sampled heap profiles in pprof form, as Go's `runtime.MemProfile` and
//! `pprof.WriteHeapProfile`.
//!
//! ```no_run
//! spanalloc::profile::set_rate(512 << 10); // one sample per 512 KiB, on average
//! // ... run the workload ...
//! let mut f = std::fs::File::create("/tmp/heap.pb.gz").unwrap();
//! spanalloc::profile::write_pprof(&mut f).unwrap();
//! // go tool pprof -top ./program /tmp/heap.pb.gz
//! ```
//!
//! Profiling is off by default. With a rate of `R` bytes, allocations are
//! sampled as in Go: a mean of one sample per `R` bytes allocated, with
//! exponential gaps, so an object of `s` bytes is sampled with probability
//! `1 − e^(−s/R)` and each sample stands for `1/(1 − e^(−s/R))` objects.
//! The profile's values are those estimates: objects and bytes allocated
//! and still in use, per call stack. Rate 1 records every allocation.
//!
//! # The parts
//!
//! ```text
//!  alloc ─► Sampler::charge (per thread: sub, js) ─► Sampler::sampled (cold) ─► record: walk + table insert
//!  free of a sampled object ─► unrecord: table remove
//!  snapshot / write_pprof ─► copy the table out under its lock ─► encode (mappings, protobuf, gzip) outside it
//! ```
//!
//! - `sampler`: the per-thread countdown, the exponential gaps, the
//!   weights. Its fast path is the allocator's only cost while profiling
//!   is off (two instructions; nothing on free).
//! - `walk`: the frame-pointer stack walk and the thread stack bounds
//!   that keep it safe.
//! - `table`: live samples by address and counts by stack, in a bounded
//!   mapping outside the heap, behind one lock.
//! - `pprof`, `proto`, `gzip`, `mappings`: the snapshot type and the file.
//! - `env`: the `SPANALLOC` environment variable.
//! - `decode`: a pprof reader for tests.
//!
//! # Rules for the allocation path
//!
//! Recording a sample walks the stack and takes the table's lock: no
//! allocation, no unwinder, no lock but that one, which the `fork`
//! handlers take ([`for_each_lock`]). A thread-local "in profiler" count
//! keeps the profiler from sampling its own allocations (the snapshot's
//! and the encoder's), and the table lock is never held while anything
//! allocates or frees: a snapshot sizes its buffer first, then copies
//! under the lock.
//!
//! # Frame pointers
//!
//! Stacks are walked through frame pointers. Build the program with
//! `RUSTFLAGS="-C force-frame-pointers=yes"` (std has them already), and
//! keep symbols (`debug = "line-tables-only"`, `strip = false`) so pprof
//! can name the functions.

use core::cell::Cell;
use std::io::{self, Write};

pub mod decode;
pub mod env;
pub mod gzip;
mod mappings;
mod pprof;
pub mod proto;
mod sampler;
mod table;
mod walk;

pub use mappings::{Mapping, current_mappings};
pub use pprof::{DROP_FRAMES, NO_STACK_FRAME, OVERFLOW_FRAME, Profile, StackRecord};
pub use sampler::{MAX_RATE, PARKED, Sample, Sampler, weight};
pub use table::Dropped;
pub use walk::{MAX_DEPTH, StackBounds, thread_stack_bounds, walk};

use crate::sync::Mutex;
use crate::sync::unmodelled::{AtomicU64, AtomicUsize, Ordering};
use table::Table;

/// Live samples the table holds at most (a live heap of about 32 GiB at
/// the default rate of 512 KiB).
pub const LIVE_CAPACITY: u32 = 1 << 16;
/// Call stacks the table holds at most.
pub const STACK_CAPACITY: u32 = 1 << 12;
/// The rate Go uses, and a good one to turn profiling on with.
pub const DEFAULT_RATE: u64 = 512 << 10;

/// The sampling rate: mean bytes between samples; 0 is off.
static RATE: AtomicU64 = AtomicU64::new(0);

/// The profile table.
static TABLE: Mutex<Table> = Mutex::new(Table::new(LIVE_CAPACITY, STACK_CAPACITY));

/// Per-thread profiler state: a `const` thread-local with no destructor,
/// reachable at any time in a thread's life.
struct ThreadState {
    /// How deep this thread is inside the profiler (0: not).
    depth: Cell<u32>,
    /// The thread's stack bounds: `None` until looked up.
    bounds: Cell<Option<StackBounds>>,
}

thread_local! {
    static THREAD: ThreadState = const { ThreadState { depth: Cell::new(0), bounds: Cell::new(None) } };
}

// ---------------------------------------------------------------------------
// The rate.

/// Sets the sampling rate: a mean of one sample per `bytes` allocated
/// (capped at 1 TiB); 0 turns profiling off, 1 records every allocation.
/// The calling thread follows at once; other threads at their next refill
/// from a span (or within their current sampling gap, or 4 MiB of
/// allocation while profiling was off, whichever comes first).
pub fn set_rate(bytes: u64) {
    RATE.store(bytes.min(MAX_RATE), Ordering::Relaxed);
    let hook = REARM.load(Ordering::Acquire);
    if hook != 0 {
        // SAFETY: only `fn()` addresses are stored there.
        unsafe { core::mem::transmute::<usize, fn()>(hook)() };
    }
}

/// What re-arms the calling thread's countdown (the thread layer's, which
/// holds the countdowns), as a function address.
static REARM: AtomicUsize = AtomicUsize::new(0);

/// Registers the function [`set_rate`] calls to re-arm the calling thread.
pub(crate) fn set_rearm_hook(f: fn()) {
    REARM.store(f as usize, Ordering::Release);
}

/// The sampling rate (0: off).
#[inline]
pub fn rate() -> u64 {
    RATE.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------------------
// The allocator's hooks.

/// Whether the calling thread is inside the profiler (its allocations are
/// not sampled).
///
/// Out of line and cold on purpose: in a shared object this thread-local
/// is reached through `__tls_get_addr`, which may call `malloc` (glibc
/// grows a thread's TLS vector lazily after a `dlopen`), so it must run
/// only when a sample is taken, never hoisted into the paths around it.
#[cold]
#[inline(never)]
pub(crate) fn in_profiler() -> bool {
    THREAD.with(|t| t.depth.get() != 0)
}

/// Marks the calling thread as inside the profiler while it lives.
pub(crate) struct Guard(());

impl Guard {
    pub(crate) fn enter() -> Guard {
        THREAD.with(|t| t.depth.set(t.depth.get() + 1));
        Guard(())
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        THREAD.with(|t| t.depth.set(t.depth.get() - 1));
    }
}

/// Finds the spanalloc stack (a coroutine's) holding an address: set by
/// `stack` when a thread first uses one; 0 until then.
static STACK_LOOKUP: AtomicUsize = AtomicUsize::new(0);

/// Lets the stack walk find the bounds of the coroutine stack it runs on.
pub(crate) fn set_stack_lookup(f: fn(usize) -> Option<(usize, usize)>) {
    STACK_LOOKUP.store(f as usize, Ordering::Release);
}

/// The bounds of the stack the caller runs on: its thread's, or the
/// spanalloc coroutine stack holding its stack pointer. The thread's are
/// looked up (and kept) only from the thread's own stack, never from a
/// coroutine's.
#[inline(never)]
pub fn current_bounds() -> StackBounds {
    let here = 0u8;
    let sp = core::hint::black_box(&here) as *const u8 as usize;
    if let Some(t) = THREAD.with(|t| t.bounds.get())
        && t.contains(sp)
    {
        return t;
    }
    let f = STACK_LOOKUP.load(Ordering::Acquire);
    if f != 0 {
        // SAFETY: only `set_stack_lookup` stores here, a function of this
        // type.
        let f: fn(usize) -> Option<(usize, usize)> = unsafe { core::mem::transmute(f) };
        if let Some((low, high)) = f(sp) {
            return StackBounds { low, high };
        }
    }
    current_thread_bounds()
}

/// The calling thread's stack bounds, looked up on the first call and
/// kept in a thread-local ([`StackBounds::EMPTY`] if they cannot be
/// found).
pub fn current_thread_bounds() -> StackBounds {
    THREAD.with(|t| match t.bounds.get() {
        Some(b) => b,
        None => {
            let b = thread_stack_bounds().unwrap_or(StackBounds::EMPTY);
            t.bounds.set(Some(b));
            b
        }
    })
}

/// Records the sampled object at `addr`: walks the stack and adds it to
/// the table.
///
/// Inlined, so the first frame is the call site in the function that
/// calls `record` (exact whatever the build flags; the frames above it
/// need frame pointers); `skip` drops that many frames from the start.
/// `bounds` is the stack the caller runs on; `None` means the one that
/// holds its stack pointer: its thread's, or a spanalloc coroutine stack. Takes the
/// table lock; never allocates. Does nothing inside the profiler.
#[doc(hidden)]
#[inline(always)]
pub fn record(sample: Sample, addr: usize, skip: usize, bounds: Option<StackBounds>) {
    if in_profiler() {
        return;
    }
    let bounds = bounds.unwrap_or_else(current_bounds);
    let mut frames = [0usize; MAX_DEPTH];
    let n = walk(bounds, skip, &mut frames);
    record_frames(sample, addr, &frames[..n]);
}

/// [`record`] with the stack given (innermost first; at most 64 frames
/// are kept), for callers that walked it themselves, and for tests.
#[doc(hidden)]
#[inline(never)]
pub fn record_frames(sample: Sample, addr: usize, frames: &[usize]) {
    let _guard = Guard::enter();
    TABLE.lock().insert(addr, sample, frames);
}

/// The sampled object at `addr` was freed: drops its record. Returns
/// whether `addr` was a recorded sample. Takes the table lock; never
/// allocates. Call it only for objects known to be sampled (a free must
/// not probe the table otherwise).
#[doc(hidden)]
#[inline(never)]
pub fn unrecord(addr: usize) -> bool {
    TABLE.lock().remove(addr)
}

/// The whole slow path for an allocator that samples after allocating:
/// after [`Sampler::charge`] returned true for an object of `size` bytes
/// now at `addr`, decide and record (the stack as for [`record`]: from
/// the call site in the caller, less `skip` frames). Returns whether the
/// object was recorded.
#[doc(hidden)]
#[inline(always)]
pub fn sample_slow(sampler: &mut Sampler, size: usize, addr: usize, skip: usize, bounds: Option<StackBounds>) -> bool {
    match sampler.sampled(size) {
        Some(s) => {
            record(s, addr, skip, bounds);
            true
        }
        None => false,
    }
}

/// The profile table's lock, for `fork` (take it in the prepare handler,
/// release it in both the parent and the child).
pub(crate) fn for_each_lock(mut f: impl FnMut(&crate::sync::RawLock)) {
    f(TABLE.raw());
}

/// Address space the profile table holds (0 until the first sample).
pub fn metadata_bytes() -> usize {
    TABLE.lock().mapped_bytes()
}

/// Live samples in the table.
pub fn live_samples() -> u64 {
    u64::from(TABLE.lock().live_samples())
}

// ---------------------------------------------------------------------------
// Snapshots and profiles.

/// A snapshot of the heap profile: per call stack, the estimated objects
/// and bytes allocated and still in use (as Go's `runtime.MemProfile`),
/// with the process's mappings.
pub fn snapshot() -> Profile {
    let _guard = Guard::enter();
    let (counts, dropped) = loop {
        // Size the buffer without the lock held: allocating under it could
        // free a sampled object, whose free takes the lock.
        let n = TABLE.lock().stack_count();
        let mut v = Vec::with_capacity(n + 16);
        let t = TABLE.lock();
        if t.copy_out(&mut v) {
            break (v, t.dropped());
        }
    };
    let records = counts
        .iter()
        .filter(|c| c.samples > 0)
        .map(|c| StackRecord {
            frames: c.frames[..c.depth as usize].to_vec(),
            alloc_objects: c.alloc_objects.round() as u64,
            alloc_bytes: c.alloc_bytes.round() as u64,
            inuse_objects: c.inuse_objects.round() as u64,
            inuse_bytes: c.inuse_bytes.round() as u64,
            object_size: c.size,
            samples: c.samples,
            live_samples: u64::from(c.live),
            overflow: c.overflow,
        })
        .collect();
    let time_nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    Profile { rate: rate(), time_nanos, records, mappings: current_mappings(), dropped }
}

/// Writes the current heap profile in pprof form (gzipped protobuf), for
/// `go tool pprof` and other pprof readers.
pub fn write_pprof(out: &mut impl Write) -> io::Result<()> {
    snapshot().write_pprof(out)
}

/// Applies `profile_rate` from `SPANALLOC` (see [`env`]), if it was given.
pub fn apply_env() {
    if let Some(r) = env::config().profile_rate {
        set_rate(r);
    }
}

/// Writes the heap profile to `profile_path` from `SPANALLOC`, if it was
/// given (for an exit hook). Returns whether a profile was written.
pub fn write_configured_profile() -> io::Result<bool> {
    let Some(path) = env::config().profile_path() else { return Ok(false) };
    use std::os::unix::ffi::OsStrExt;
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(path));
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    write_pprof(&mut f)?;
    f.flush()?;
    Ok(true)
}

#[cfg(test)]
mod tests;
