//! Stack overflow reports: a coroutine that runs off the end of its stack
//! hits the guard below it, and the process says which stack overflowed.
//!
//! A `SIGSEGV` / `SIGBUS` handler, installed with the first stack, looks up
//! the faulting address among the guards of every slab (and of every stack
//! too large for a slab). On a guard it writes
//!
//! ```text
//! spanalloc: fatal: coroutine stack overflow: fault at 0x... in the guard of the stack 0x...-0x... (16 KiB)
//! ```
//!
//! and aborts. Any other fault goes to the handler that was installed before
//! (std's own stack-overflow handler, a debugger's, or the default action),
//! unchanged.
//!
//! The handler runs on the thread's alternate signal stack (the coroutine's
//! own stack is exhausted). std gives its threads one; for a thread that has
//! none, spanalloc installs one when the thread first takes a stack, and
//! frees it when the thread exits.
//!
//! Everything the handler touches is async-signal-safe: a fixed table of
//! guard regions read with atomic loads, `write(2)`, `sigaction(2)` and
//! `abort(3)`. Nothing here allocates.

#![cfg_attr(loom, allow(dead_code))]

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::ptr;

use crate::os;
use crate::report::Line;
use crate::sync::unmodelled::{AtomicUsize, Ordering};

/// Regions the handler knows: slabs, and stacks with a mapping of their own.
const REGIONS: usize = 1 << 16;

/// One region: `len == 0` is an unused entry.
struct Region {
    base: AtomicUsize,
    len: AtomicUsize,
    stride: AtomicUsize,
    guard: AtomicUsize,
    stack: AtomicUsize,
}

static TABLE: [Region; REGIONS] = [const {
    Region {
        base: AtomicUsize::new(0),
        len: AtomicUsize::new(0),
        stride: AtomicUsize::new(0),
        guard: AtomicUsize::new(0),
        stack: AtomicUsize::new(0),
    }
}; REGIONS];
/// Entries ever used (the handler scans this many).
static USED: AtomicUsize = AtomicUsize::new(0);

/// Registers a slab: `len` bytes from `base` in slots of `stride` bytes,
/// each a `guard`-byte guard below a `stack`-byte stack.
pub(crate) fn register_slab(base: usize, len: usize, stride: usize, guard: usize, stack: usize) {
    let i = USED.fetch_add(1, Ordering::AcqRel);
    if i >= REGIONS {
        USED.store(REGIONS, Ordering::Release);
        return; // Unreported overflows still fault.
    }
    write_entry(i, base, len, stride, guard, stack);
}

/// Registers a stack with a mapping of its own; returns its entry (or
/// `usize::MAX` when the table is full) for [`unregister`].
pub(crate) fn register_single(base: usize, guard: usize, stack: usize) -> usize {
    // Reuse an entry `unregister` marked free (its `stride` is usize::MAX),
    // else take a new one.
    let scan = USED.load(Ordering::Acquire).min(REGIONS);
    for (i, e) in TABLE[..scan].iter().enumerate() {
        if e.len.load(Ordering::Relaxed) == 0
            && e.stride.compare_exchange(usize::MAX, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok()
        {
            write_entry(i, base, guard + stack, guard + stack, guard, stack);
            return i;
        }
    }
    let i = USED.fetch_add(1, Ordering::AcqRel);
    if i >= REGIONS {
        USED.store(REGIONS, Ordering::Release);
        return usize::MAX;
    }
    write_entry(i, base, guard + stack, guard + stack, guard, stack);
    i
}

/// Forgets a stack registered with [`register_single`].
pub(crate) fn unregister(entry: usize) {
    if entry < REGIONS {
        TABLE[entry].len.store(0, Ordering::Release);
        // Marks the entry reusable.
        TABLE[entry].stride.store(usize::MAX, Ordering::Release);
    }
}

fn write_entry(i: usize, base: usize, len: usize, stride: usize, guard: usize, stack: usize) {
    let e = &TABLE[i];
    e.base.store(base, Ordering::Relaxed);
    e.stride.store(stride, Ordering::Relaxed);
    e.guard.store(guard, Ordering::Relaxed);
    e.stack.store(stack, Ordering::Relaxed);
    // `len` last: a reader that sees it sees the rest.
    e.len.store(len, Ordering::Release);
}

/// If `addr` lies in the guard of a registered stack, that stack's usable
/// range (lowest, highest).
pub(crate) fn guard_hit(addr: usize) -> Option<(usize, usize)> {
    let used = USED.load(Ordering::Acquire).min(REGIONS);
    for e in &TABLE[..used] {
        let len = e.len.load(Ordering::Acquire);
        let base = e.base.load(Ordering::Relaxed);
        if len == 0 || addr < base || addr >= base + len {
            continue;
        }
        let stride = e.stride.load(Ordering::Relaxed);
        let guard = e.guard.load(Ordering::Relaxed);
        let slot = base + (addr - base) / stride * stride;
        if addr < slot + guard {
            let low = slot + guard;
            return Some((low, low + e.stack.load(Ordering::Relaxed)));
        }
        return None;
    }
    None
}

// ---------------------------------------------------------------------------
// The handler.

/// The handlers that were installed before ours.
struct Previous(UnsafeCell<[MaybeUninit<libc::sigaction>; 2]>);

// SAFETY: written once, before our handler is installed (under INSTALL's
// claim), then only read.
unsafe impl Sync for Previous {}

static PREVIOUS: Previous = Previous(UnsafeCell::new([MaybeUninit::uninit(); 2]));
/// 0: not installed; 1: installing; 2: installed.
static INSTALL: AtomicUsize = AtomicUsize::new(0);
const SIGNALS: [libc::c_int; 2] = [libc::SIGSEGV, libc::SIGBUS];

/// Installs the handler, once per process.
pub(crate) fn install() {
    if INSTALL.load(Ordering::Acquire) == 2 {
        return;
    }
    if INSTALL.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire).is_err() {
        while INSTALL.load(Ordering::Acquire) != 2 {
            // SAFETY: sched_yield has no preconditions.
            unsafe { libc::sched_yield() };
        }
        return;
    }
    for (k, &sig) in SIGNALS.iter().enumerate() {
        // SAFETY: a zeroed sigaction is valid; we fill in the fields used.
        unsafe {
            let mut action: libc::sigaction = core::mem::zeroed();
            action.sa_sigaction = handler as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            let previous = (*PREVIOUS.0.get())[k].as_mut_ptr();
            libc::sigaction(sig, &action, previous);
        }
    }
    INSTALL.store(2, Ordering::Release);
}

extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    if let Some((low, high)) = guard_hit(addr) {
        let mut line = Line::new();
        line.str("spanalloc: fatal: coroutine stack overflow: fault at ")
            .hex(addr)
            .str(" in the guard of the stack ")
            .hex(low)
            .str("-")
            .hex(high)
            .str(" (")
            .dec(((high - low) >> 10) as u64)
            .str(" KiB; thread ")
            .dec(os::thread_id())
            .str(")");
        line.emit();
        os::abort();
    }
    // Not ours: hand it on as if we were not here.
    let k = if sig == libc::SIGSEGV { 0 } else { 1 };
    // SAFETY: PREVIOUS was filled before the handler was installed.
    let previous = unsafe { (*PREVIOUS.0.get())[k].assume_init_ref() };
    let target = previous.sa_sigaction;
    if previous.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: an SA_SIGINFO handler takes these three arguments.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { core::mem::transmute(target) };
        f(sig, info, context);
    } else if target == libc::SIG_DFL || target == libc::SIG_IGN {
        // Restore the default action and return: the faulting instruction
        // runs again and the kernel does what it would have done.
        // SAFETY: resetting a signal's action is async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = core::mem::zeroed();
            action.sa_sigaction = libc::SIG_DFL;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, ptr::null_mut());
        }
    } else {
        // SAFETY: a plain handler takes the signal number.
        let f: extern "C" fn(libc::c_int) = unsafe { core::mem::transmute(target) };
        f(sig);
    }
}

// ---------------------------------------------------------------------------
// Alternate signal stacks.

/// Bytes of an alternate signal stack spanalloc installs.
const ALT_STACK: usize = 64 << 10;

/// Gives the calling thread an alternate signal stack if it has none.
/// Returns the mapping to free at thread exit (0 if none was installed).
pub(crate) fn ensure_altstack() -> usize {
    // SAFETY: querying the current alternate stack has no preconditions.
    let mut current: libc::stack_t = unsafe { core::mem::zeroed() };
    unsafe { libc::sigaltstack(ptr::null(), &mut current) };
    if current.ss_flags & libc::SS_DISABLE == 0 {
        return 0;
    }
    let guard = os::page_size();
    let Some(map) = os::map(ALT_STACK + guard) else {
        return 0;
    };
    let _ = os::guard(map, guard);
    let stack = libc::stack_t { ss_sp: (map as usize + guard) as *mut libc::c_void, ss_flags: 0, ss_size: ALT_STACK };
    // SAFETY: the stack is ours and mapped.
    if unsafe { libc::sigaltstack(&stack, ptr::null_mut()) } != 0 {
        os::unmap(map, ALT_STACK + guard);
        return 0;
    }
    map as usize
}

/// Removes and frees an alternate stack [`ensure_altstack`] installed.
pub(crate) fn free_altstack(map: usize) {
    if map == 0 {
        return;
    }
    let disable = libc::stack_t { ss_sp: ptr::null_mut(), ss_flags: libc::SS_DISABLE, ss_size: 0 };
    // SAFETY: disabling the calling thread's alternate stack.
    unsafe { libc::sigaltstack(&disable, ptr::null_mut()) };
    os::unmap(map as *mut u8, ALT_STACK + os::page_size());
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn guard_hits_name_the_stack_above_the_guard() {
        // A fake slab far from anything mapped: three slots of 4 KiB guard
        // and 16 KiB stack.
        let base = 0x7e00_0000_0000;
        register_slab(base, 3 * 20480, 20480, 4096, 16384);
        assert_eq!(guard_hit(base), Some((base + 4096, base + 20480)));
        assert_eq!(guard_hit(base + 20480 + 100), Some((base + 20480 + 4096, base + 40960)));
        assert_eq!(guard_hit(base + 4096), None, "the stack itself");
        assert_eq!(guard_hit(base + 3 * 20480), None, "past the slab");
        let e = register_single(0x7e10_0000_0000, 4096, 65536);
        assert_eq!(guard_hit(0x7e10_0000_0010), Some((0x7e10_0000_1000, 0x7e10_0001_1000)));
        unregister(e);
        assert_eq!(guard_hit(0x7e10_0000_0010), None);
    }
}
