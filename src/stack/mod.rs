//! Coroutine stacks from spanalloc: Go's stack cache and stack pools, for
//! Rust stacks that cannot move.
//!
//! Go gives every goroutine a small stack from its heap, through a per-P
//! cache per size order refilled and drained half at a time from global
//! pools (`stackcache`, `stackpool`, `stackLarge` in Go's `stack.go`), and
//! grows a stack by copying it. Rust cannot move a stack (pointers into it
//! are everywhere), so here a stack is a fixed reservation, committed page
//! by page by the kernel as it is touched, with a guard region below it
//! that faults on overflow.
//!
//! [`Stack::new`] rounds the size up to a power-of-two class (16 KiB to
//! 8 MiB; larger stacks get a mapping of their own) and takes one from the
//! calling thread's cache, which refills half at a time from the class's
//! pool (see `pool`). Dropping a stack gives it back to the dropping
//! thread's cache. Stacks live in slabs whose guards stay in place while a
//! stack is pooled, so a reused stack costs no syscall; a stack that leaves
//! a thread cache keeps at most its top [`set_resident_keep`] bytes
//! (16 KiB by default) resident and gives the pages below back with
//! `MADV_DONTNEED`. Slabs are marked `MADV_NOHUGEPAGE`: a transparent huge
//! page would turn one touched 4 KiB page into 2 MiB.
//!
//! Guards use `MADV_GUARD_INSTALL` where the kernel has it (Linux 6.13 and
//! later, detected at run time): a slab is then one memory mapping however
//! many stacks it holds, and a process can keep a million guarded stacks
//! under the default `vm.max_map_count`. Older kernels get `mprotect`
//! guards, two mappings each; when the kernel refuses more, `Stack::new`
//! returns [`StackError::MapLimit`], which names `vm.max_map_count`.
//!
//! A coroutine that overflows hits the guard, and the process reports which
//! stack overflowed, then aborts (see `overflow`). The report runs on the
//! overflowing thread's alternate signal stack, which spanalloc provides
//! where std did not: on every thread that makes or drops a stack, starts
//! or resumes a corosensei coroutine on one, or calls [`prepare_thread`]
//! (runtimes that switch stacks themselves call it on their threads).

mod overflow;
pub(crate) mod pool;

use core::fmt;

#[cfg(not(loom))]
use crate::os;
#[cfg(not(loom))]
use crate::stats::StackStats;
#[cfg(not(loom))]
use crate::sync::unmodelled::Counter;

use pool::PoolError;
pub use pool::StackCache;
#[cfg(not(loom))]
use pool::{Slot, StackPools};

#[cfg(not(loom))]
/// The stack pools behind [`Stack`].
pub(crate) static POOLS: StackPools = StackPools::new();

#[cfg(not(loom))]
/// Stacks too large for a slab: mapped and unmapped one by one.
static BIG_IN_USE: Counter = Counter::new();
#[cfg(not(loom))]
static BIG_RESERVED: Counter = Counter::new();

#[cfg(not(loom))]
/// A coroutine stack: usable memory with a guard region below it.
///
/// ```
/// let stack = spanalloc::stack::Stack::new(64 << 10).unwrap();
/// assert!(stack.size() >= 64 << 10);
/// assert_eq!(stack.top() - stack.bottom(), stack.size());
/// assert!(stack.limit() < stack.bottom());
/// ```
///
/// Stacks grow down: code runs from [`Stack::top`] towards
/// [`Stack::bottom`]; below the bottom, down to [`Stack::limit`], is the
/// guard. Dropping a stack gives it back to the dropping thread's cache.
#[derive(Debug)]
pub struct Stack {
    /// Lowest address, the guard's start.
    limit: usize,
    /// Usable bytes.
    size: usize,
    /// The slab of a pooled stack (null for a stack with its own mapping).
    slab: *mut pool::Slab,
    /// The class of a pooled stack; for one with its own mapping, its
    /// overflow-table entry.
    class_or_entry: usize,
}

#[cfg(not(loom))]
// SAFETY: a stack is plain memory owned by this handle; any thread may use
// it and drop it.
unsafe impl Send for Stack {}

/// Why [`Stack::new`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackError {
    /// The size cannot be served (it overflows the address space).
    TooLarge {
        /// The size asked for.
        size: usize,
    },
    /// The kernel refused another memory mapping (`ENOMEM` from `mmap`,
    /// `mprotect` or `madvise`): most likely the process has reached
    /// `vm.max_map_count` mappings.
    MapLimit {
        /// The errno.
        errno: i32,
    },
    /// Another failure from the kernel.
    Os {
        /// The errno.
        errno: i32,
    },
}

impl fmt::Display for StackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            StackError::TooLarge { size } => write!(f, "spanalloc: a stack of {size} bytes cannot be reserved"),
            StackError::MapLimit { errno } => write!(
                f,
                "spanalloc: the kernel refused another memory mapping for a stack (errno {errno}, ENOMEM): \
                 the process is at its vm.max_map_count limit of mappings (see /proc/sys/vm/max_map_count; \
                 raise it with `sysctl vm.max_map_count=...`, or use Linux 6.13 or later, whose \
                 MADV_GUARD_INSTALL guards need no mappings), or out of address space (ulimit -v)"
            ),
            StackError::Os { errno } => write!(f, "spanalloc: the kernel refused a stack (errno {errno})"),
        }
    }
}

impl std::error::Error for StackError {}

impl From<PoolError> for StackError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Os(errno) if errno == libc::ENOMEM => StackError::MapLimit { errno },
            PoolError::Os(errno) => StackError::Os { errno },
        }
    }
}

#[cfg(not(loom))]
/// The entry `class_or_entry` holds for a big stack with no overflow-table
/// entry.
const NO_ENTRY: usize = usize::MAX;

#[cfg(not(loom))]
impl Stack {
    /// A stack with at least `size` usable bytes (rounded up to a class:
    /// 16 KiB, 32 KiB, ... 8 MiB, or to whole pages above that).
    #[inline]
    pub fn new(size: usize) -> Result<Stack, StackError> {
        match pool::class_for(size) {
            Some(class) => {
                let slot = with_stack_cache(|cache| POOLS.take(cache, class))?;
                Ok(Stack::pooled(slot, class))
            }
            None => Stack::big(size),
        }
    }

    fn pooled(slot: Slot, class: usize) -> Stack {
        Stack { limit: slot.addr, size: pool::class_size(class), slab: slot.slab, class_or_entry: class }
    }

    /// A stack too large for a slab: a mapping of its own.
    #[cold]
    fn big(size: usize) -> Result<Stack, StackError> {
        overflow::install();
        let guard = pool::guard_size();
        let size = size.checked_next_multiple_of(os::page_size()).ok_or(StackError::TooLarge { size })?;
        let len = size.checked_add(guard).ok_or(StackError::TooLarge { size })?;
        let map = os::map(len).ok_or(StackError::from(PoolError::Os(os::errno())))?;
        os::no_huge_pages(map, len);
        if let Err(errno) = os::guard(map, guard) {
            os::unmap(map, len);
            return Err(PoolError::Os(errno).into());
        }
        let entry = overflow::register_single(map as usize, guard, size);
        BIG_IN_USE.add_shared(1);
        BIG_RESERVED.add_shared(len as u64);
        Ok(Stack { limit: map as usize, size, slab: core::ptr::null_mut(), class_or_entry: entry })
    }

    /// The highest address: where a coroutine's stack pointer starts
    /// (16-byte aligned).
    pub fn top(&self) -> usize {
        self.bottom() + self.size
    }

    /// The lowest usable address.
    pub fn bottom(&self) -> usize {
        self.limit + pool::guard_size()
    }

    /// The lowest address of the stack's reservation, guard included.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Usable bytes (at least what was asked for).
    pub fn size(&self) -> usize {
        self.size
    }
}

#[cfg(not(loom))]
impl Drop for Stack {
    #[inline]
    fn drop(&mut self) {
        if self.slab.is_null() {
            self.drop_big();
            return;
        }
        let slot = Slot { addr: self.limit, slab: self.slab };
        let class = self.class_or_entry;
        with_stack_cache(|cache| POOLS.give(cache, class, slot));
    }
}

#[cfg(not(loom))]
impl Stack {
    #[cold]
    fn drop_big(&mut self) {
        if self.class_or_entry != NO_ENTRY {
            overflow::unregister(self.class_or_entry);
        }
        let len = self.size + pool::guard_size();
        os::unmap(self.limit as *mut u8, len);
        BIG_IN_USE.sub_shared(1);
        BIG_RESERVED.sub_shared(len as u64);
    }
}

#[cfg(not(loom))]
/// Sets how many bytes at the top of a stack stay resident once it leaves a
/// thread's cache (16 KiB by default; rounded up to whole pages). The pages
/// below are given back to the OS. Any value is accepted: 0 gives every
/// page back, and a value at least a stack's size (`usize::MAX`, say) keeps
/// all of it.
pub fn set_resident_keep(bytes: usize) {
    POOLS.set_keep(bytes);
}

#[cfg(not(loom))]
/// Stack figures, for [`crate::stats`]. `cached_in_threads` is the number
/// of stacks the thread caches hold.
pub(crate) fn stats(cached_in_threads: u64) -> StackStats {
    let c = &POOLS.counters;
    let pooled = POOLS.pooled() + cached_in_threads;
    let mut resident = 0u64;
    POOLS.for_each_slab(|base, len| resident += resident_bytes(base, len));
    StackStats {
        in_use: POOLS.created().saturating_sub(pooled) + BIG_IN_USE.get(),
        cached: pooled,
        reserved_bytes: c.reserved.get() + BIG_RESERVED.get(),
        resident_bytes: resident,
        created: POOLS.created(),
    }
}

#[cfg(not(loom))]
/// Resident bytes of `[base, base + len)`, by `mincore` a chunk at a time.
fn resident_bytes(base: usize, len: usize) -> u64 {
    let page = os::page_size();
    let mut vec = [0u8; 4096];
    let mut at = base;
    let end = base + len;
    let mut resident = 0u64;
    while at < end {
        let chunk = (end - at).min(vec.len() * page);
        let pages = chunk.div_ceil(page);
        // SAFETY: the range is a mapping of ours; the vector has a byte per
        // page.
        if unsafe { libc::mincore(at as *mut libc::c_void, chunk, vec.as_mut_ptr().cast()) } == 0 {
            resident += vec[..pages].iter().filter(|&&b| b & 1 != 0).count() as u64 * page as u64;
        }
        at += chunk;
    }
    resident
}

#[cfg(not(loom))]
/// The stack module's locks, for `fork`: the overflow handler's install
/// and the stack pools'.
pub(crate) fn for_each_lock(mut f: impl FnMut(&crate::sync::RawLock)) {
    overflow::for_each_lock(&mut f);
    POOLS.for_each_lock(f);
}

#[cfg(not(loom))]
/// Makes the calling thread ready to report an overflow of any stack it
/// runs: installs the overflow handler (once per process) and gives the
/// thread an alternate signal stack if it has none, freed when the thread
/// exits. Cheap after the first call on a thread (one thread-local flag).
///
/// The overflow report needs an alternate signal stack on the thread that
/// overflows: the overflowing stack has no room left for the handler. std
/// gives its own threads one, and spanalloc gives one to every thread that
/// makes or drops a [`Stack`], and (with the `corosensei` feature) to every
/// thread that starts or resumes a coroutine on one. A runtime that
/// switches to spanalloc stacks itself, on threads that may never have done
/// any of that (a pool of workers made with `pthread_create`, say), calls
/// this on each such thread before its first switch; without it an
/// overflow there ends the process with a bare `SIGSEGV`.
#[inline]
pub fn prepare_thread() {
    with_stack_cache(|_| ());
}

#[cfg(all(feature = "corosensei", not(loom)))]
// SAFETY: the stack is at least MIN_STACK_SIZE (16 KiB) of read-write
// memory with a guard region below it; base and limit are page-aligned, so
// aligned to STACK_ALIGNMENT.
unsafe impl corosensei::stack::Stack for Stack {
    /// corosensei asks for the base on the thread that is about to switch
    /// to the stack (when a coroutine is made, and at every resume), so
    /// this is where that thread is prepared to report an overflow.
    #[inline]
    fn base(&self) -> corosensei::stack::StackPointer {
        prepare_thread();
        corosensei::stack::StackPointer::new(self.top()).expect("a stack's top is not null")
    }

    fn limit(&self) -> corosensei::stack::StackPointer {
        corosensei::stack::StackPointer::new(self.limit).expect("a stack's limit is not null")
    }
}

#[cfg(not(loom))]
/// A thread's stack state: its cache of stacks, the alternate signal stack
/// spanalloc gave it, and whether it is set up.
struct StackThread {
    cache: core::cell::UnsafeCell<StackCache>,
    altstack: core::cell::Cell<usize>,
    ready: core::cell::Cell<bool>,
}

#[cfg(not(loom))]
thread_local! {
    static STACKS: StackThread = const {
        StackThread {
            cache: core::cell::UnsafeCell::new(StackCache::new()),
            altstack: core::cell::Cell::new(0),
            ready: core::cell::Cell::new(false),
        }
    };
}

#[cfg(not(loom))]
/// Runs `f` on the calling thread's stack cache, setting the thread up on
/// first use and publishing the number of stacks it holds.
#[inline(always)]
fn with_stack_cache<R>(f: impl FnOnce(&mut StackCache) -> R) -> R {
    let st = STACKS.with(|st| st as *const StackThread);
    // SAFETY: the state lives as long as its thread and only this thread
    // reaches it; the stack pools never re-enter the stack cache.
    let st = unsafe { &*st };
    if !st.ready.get() {
        thread_setup(st);
    }
    // SAFETY: as above, this is the only reference to the stack cache.
    let cache = unsafe { &mut *st.cache.get() };
    let r = f(cache);
    crate::thread::stats_of_current().stacks_cached.set(cache.len() as u64);
    r
}

#[cfg(not(loom))]
/// A thread's first stack operation: its overflow handler (once per
/// process) and alternate signal stack, and the thread-exit hook that gives
/// its stacks back.
#[cold]
#[inline(never)]
fn thread_setup(st: &StackThread) {
    register_hooks();
    overflow::install();
    crate::profile::set_stack_lookup(overflow::stack_at);
    st.altstack.set(overflow::ensure_altstack());
    crate::thread::register_current();
    st.ready.set(true);
}

#[cfg(not(loom))]
/// Tells the thread layer about the stack module's thread-exit and fork
/// hooks. At load time, before any thread can hold a stack lock: a fork
/// whose prepare handler ran before the hooks were known would otherwise
/// let a child inherit a stack lock held (and the first stack operation
/// registers them again, harmlessly, for a library loaded by hand).
fn register_hooks() {
    crate::thread::set_hooks(crate::thread::Hooks { exit: thread_exit, fork_locks: fork_locks_hook });
}

#[cfg(not(loom))]
extern "C" fn at_load() {
    register_hooks();
}

#[cfg(not(loom))]
#[used]
#[unsafe(link_section = ".init_array")]
static AT_LOAD: extern "C" fn() = at_load;

#[cfg(not(loom))]
/// At thread exit (from the thread's exit hook): the thread's stacks go
/// back to the pools and its alternate signal stack is freed.
fn thread_exit() {
    let _ = STACKS.try_with(|st| {
        if !st.ready.replace(false) {
            return;
        }
        // SAFETY: the thread is exiting; nothing else reaches its cache.
        POOLS.flush(unsafe { &mut *st.cache.get() });
        overflow::free_altstack(st.altstack.replace(0));
    });
}

#[cfg(not(loom))]
/// The stack module's locks, taken (`lock`) or released around `fork`.
fn fork_locks_hook(lock: bool) {
    for_each_lock(|l| {
        if lock {
            l.lock()
        } else {
            // SAFETY: the prepare handler took these locks on this thread.
            unsafe { l.unlock() }
        }
    });
}
