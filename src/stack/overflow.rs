//! Stack overflow reports: a coroutine that runs off the end of its stack
//! hits the guard below it, and the process says which stack overflowed.
//!
//! A `SIGSEGV` / `SIGBUS` handler, installed once per process with the
//! first stack, looks up the faulting address among the guards of every
//! slab (and of every stack too large for a slab). On a guard it writes
//!
//! ```text
//! spanalloc: fatal: coroutine stack overflow: fault at 0x... in the guard of the stack 0x...-0x... (16 KiB)
//! ```
//!
//! and aborts. Any other fault, and any `SIGSEGV` / `SIGBUS` another
//! process or `raise` sent, goes to the handler that was installed before
//! (std's own stack-overflow handler, a debugger's, or the default action or
//! `SIG_IGN`), unchanged.
//!
//! The handler runs on the thread's alternate signal stack (the coroutine's
//! own stack is exhausted). std gives its threads one; for a thread that has
//! none, spanalloc installs one when the thread first makes or drops a
//! stack, starts or resumes a corosensei coroutine on one, or calls
//! `stack::prepare_thread`, and frees it when the thread exits.
//!
//! Everything the handler touches is async-signal-safe: a fixed table of
//! guard regions read with atomic loads, `write(2)`, `sigaction(2)`,
//! `raise(3)` and `abort(3)`. Nothing here allocates.
//!
//! # Implementation
//!
//! The table is a static array of entries, each a region (base, length,
//! slot stride, guard and stack size) and a sequence word, like a seqlock:
//! the handler may read an entry at any moment, on any thread, while
//! another thread rewrites it. A slab's entry is written once; a stack with
//! a mapping of its own frees its entry when it is dropped, and the next
//! such stack may reuse it. Whoever writes an entry owns it: a new entry by
//! taking the next index, a freed one by one CAS of its sequence word from
//! `FREE` to `WRITING`. The writer stores the fields, then clears `WRITING`
//! and advances the generation. The handler reads the sequence word, the
//! fields, and the sequence word again, and uses the fields only if the
//! word was the same both times and neither free nor being written;
//! otherwise it reads again a few times and then passes over the entry
//! (it never waits: the writer may be the very thread it interrupted). A
//! free entry, or one being written, names no stack anything runs on, so
//! passing over it loses no report.
//!
//! The install is a `spin::Once` taken under a lock of its own, which the
//! `fork` handlers take with the stack pools' locks: a fork waits for an
//! install under way, so no child inherits one half done (it would spin on
//! it forever).

#![cfg_attr(loom, allow(dead_code))]

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::ptr;

use crate::os;
use crate::report::Line;
#[cfg(not(loom))]
use crate::sync::RawLock;
use crate::sync::unmodelled::{AtomicUsize, Ordering};

/// Regions the handler knows: slabs, and stacks with a mapping of their own.
const REGIONS: usize = 1 << 16;

/// One region, guarded by its sequence word `seq` (see the module docs):
/// `len == 0` is an entry never written.
struct Region {
    /// [`WRITING`] and [`FREE`] flags, and a generation counted in
    /// [`STEP`]s that every change of the entry advances.
    seq: AtomicUsize,
    base: AtomicUsize,
    len: AtomicUsize,
    /// Bytes per slot (guard + stack); never 0 in a written entry.
    stride: AtomicUsize,
    guard: AtomicUsize,
    stack: AtomicUsize,
}

/// `seq` flag: a writer owns the entry and is rewriting its fields.
const WRITING: usize = 1;
/// `seq` flag: the entry describes nothing and may be reused.
const FREE: usize = 2;
/// `seq`'s generation unit.
const STEP: usize = 4;
/// Times the handler rereads an entry that changed under it before it
/// passes over the entry.
const READ_TRIES: usize = 4;

static TABLE: [Region; REGIONS] = [const {
    Region {
        seq: AtomicUsize::new(0),
        base: AtomicUsize::new(0),
        len: AtomicUsize::new(0),
        stride: AtomicUsize::new(0),
        guard: AtomicUsize::new(0),
        stack: AtomicUsize::new(0),
    }
}; REGIONS];
/// Entries ever used (the handler scans this many).
static USED: AtomicUsize = AtomicUsize::new(0);

/// What an entry said at one moment.
#[derive(Clone, Copy)]
struct Snapshot {
    base: usize,
    len: usize,
    stride: usize,
    guard: usize,
    stack: usize,
}

/// Registers a slab: `len` bytes from `base` in slots of `stride` bytes,
/// each a `guard`-byte guard below a `stack`-byte stack.
pub(crate) fn register_slab(base: usize, len: usize, stride: usize, guard: usize, stack: usize) {
    if let Some(i) = new_entry() {
        write_entry(i, 0, Snapshot { base, len, stride, guard, stack });
    }
    // With the table full, overflows there still fault, unreported.
}

/// Registers a stack with a mapping of its own; returns its entry (or
/// `usize::MAX` when the table is full) for [`unregister`].
pub(crate) fn register_single(base: usize, guard: usize, stack: usize) -> usize {
    let snapshot = Snapshot { base, len: guard + stack, stride: guard + stack, guard, stack };
    // Reuse an entry `unregister` freed: claiming it (FREE to WRITING) is
    // one CAS, so two registrations cannot take the same entry.
    let scan = USED.load(Ordering::Acquire).min(REGIONS);
    for (i, e) in TABLE[..scan].iter().enumerate() {
        let seq = e.seq.load(Ordering::Relaxed);
        if seq & (FREE | WRITING) == FREE
            && e.seq.compare_exchange(seq, (seq & !FREE) | WRITING, Ordering::Acquire, Ordering::Relaxed).is_ok()
        {
            write_entry(i, seq & !FREE, snapshot);
            return i;
        }
    }
    match new_entry() {
        Some(i) => {
            write_entry(i, 0, snapshot);
            i
        }
        None => usize::MAX,
    }
}

/// Forgets a stack registered with [`register_single`].
pub(crate) fn unregister(entry: usize) {
    if let Some(e) = TABLE.get(entry) {
        // The caller owns the entry: no one else changes `seq` now.
        let seq = e.seq.load(Ordering::Relaxed);
        e.seq.store((seq + STEP) | FREE, Ordering::Release);
    }
}

/// Takes an entry never used, or `None` when the table is full.
fn new_entry() -> Option<usize> {
    let i = USED.fetch_add(1, Ordering::AcqRel);
    if i >= REGIONS {
        USED.store(REGIONS, Ordering::Release);
        return None;
    }
    Some(i)
}

/// Rewrites entry `i`, which the caller owns (a new entry, or one it
/// claimed); `seq` is the entry's sequence word before, flags clear.
fn write_entry(i: usize, seq: usize, s: Snapshot) {
    debug_assert!(s.stride != 0 && s.guard <= s.stride && s.len != 0);
    let e = &TABLE[i];
    e.seq.store(seq | WRITING, Ordering::Relaxed);
    // Release stores: a reader that sees any of them sees WRITING (or a
    // later `seq`) when it reads `seq` again, and discards what it read.
    e.base.store(s.base, Ordering::Release);
    e.len.store(s.len, Ordering::Release);
    e.stride.store(s.stride, Ordering::Release);
    e.guard.store(s.guard, Ordering::Release);
    e.stack.store(s.stack, Ordering::Release);
    e.seq.store(seq + STEP, Ordering::Release);
}

/// Entry `e` as one writer left it, or `None` while it is free, being
/// rewritten, or changing faster than the handler can read it. Lock-free
/// and wait-free: a handler that interrupted the entry's writer on its own
/// thread reads `WRITING` and moves on.
fn read_entry(e: &Region) -> Option<Snapshot> {
    for _ in 0..READ_TRIES {
        let seq = e.seq.load(Ordering::Acquire);
        if seq & (WRITING | FREE) != 0 {
            // A free entry names no stack; one being written names a slab
            // or stack not handed out yet.
            return None;
        }
        let s = Snapshot {
            base: e.base.load(Ordering::Acquire),
            len: e.len.load(Ordering::Acquire),
            stride: e.stride.load(Ordering::Acquire),
            guard: e.guard.load(Ordering::Acquire),
            stack: e.stack.load(Ordering::Acquire),
        };
        if e.seq.load(Ordering::Relaxed) == seq {
            return Some(s);
        }
    }
    None
}

/// The registered slot holding `addr`: its start and what its entry says.
/// Async-signal-safe: atomic loads only, no division by anything that can
/// be zero.
fn slot_of(addr: usize) -> Option<(usize, Snapshot)> {
    let used = USED.load(Ordering::Acquire).min(REGIONS);
    for e in &TABLE[..used] {
        let Some(s) = read_entry(e) else { continue };
        if s.len == 0 || s.stride == 0 || addr < s.base || addr - s.base >= s.len {
            continue;
        }
        return Some((s.base + (addr - s.base) / s.stride * s.stride, s));
    }
    None
}

/// If `addr` lies in the guard of a registered stack, that stack's usable
/// range (lowest, highest). Async-signal-safe, as [`slot_of`].
pub(crate) fn guard_hit(addr: usize) -> Option<(usize, usize)> {
    let (slot, s) = slot_of(addr)?;
    let low = slot + s.guard;
    (addr - slot < s.guard).then_some((low, low + s.stack))
}

/// If `addr` lies in the usable part of a registered stack, that stack's
/// range (lowest, highest): the heap profile's stack walk on a coroutine.
/// Lock-free, as [`slot_of`].
pub(crate) fn stack_at(addr: usize) -> Option<(usize, usize)> {
    let (slot, s) = slot_of(addr)?;
    let low = slot + s.guard;
    (addr >= low && addr - low < s.stack).then_some((low, low + s.stack))
}

// ---------------------------------------------------------------------------
// The handler.

/// The handlers that were installed before ours.
struct Previous(UnsafeCell<[MaybeUninit<libc::sigaction>; 2]>);

// SAFETY: written once, by the one thread that installs the handler, before
// our handler is installed (the `sigaction` call that installs it orders
// the writes before any delivery of the signal), then only read.
unsafe impl Sync for Previous {}

static PREVIOUS: Previous = Previous(UnsafeCell::new([MaybeUninit::uninit(); 2]));
const SIGNALS: [libc::c_int; 2] = [libc::SIGSEGV, libc::SIGBUS];

/// The handler's installation, done once per process.
#[cfg(not(loom))]
static INSTALLED: crate::sync::Once = crate::sync::Once::new();
/// Held while the handler is installed. `fork`'s prepare handler takes it
/// too (it is one of the locks [`for_each_lock`] yields), so a fork waits
/// for an install under way, and no child starts with `INSTALLED` half
/// done: a `spin::Once` left "running" by a thread that does not exist in
/// the child would make every stack operation there spin forever.
#[cfg(not(loom))]
static INSTALL_LOCK: RawLock = RawLock::new();

/// Installs the handler, once per process.
#[cfg(not(loom))]
#[inline]
pub(crate) fn install() {
    if !INSTALLED.is_completed() {
        install_slow();
    }
}

#[cfg(not(loom))]
#[cold]
#[inline(never)]
fn install_slow() {
    INSTALL_LOCK.lock();
    // Under the lock no other thread is inside `call_once`, so it never
    // spins; a thread that comes second finds the work done.
    INSTALLED.call_once(install_handlers);
    // SAFETY: this thread took the lock above.
    unsafe { INSTALL_LOCK.unlock() };
}

/// The lock of the handler's installation, for `fork`. It nests in no
/// other lock and no other lock nests in it.
#[cfg(not(loom))]
pub(crate) fn for_each_lock(mut f: impl FnMut(&RawLock)) {
    f(&INSTALL_LOCK);
}

#[cfg(not(loom))]
fn install_handlers() {
    for (k, &sig) in SIGNALS.iter().enumerate() {
        // SAFETY: PREVIOUS is ours to write (see its Sync impl); a zeroed
        // sigaction is valid, and we fill in the fields used.
        unsafe {
            // Saved before ours goes in: from then on our handler may run on
            // any thread and hand a fault on to this one.
            let previous = (*PREVIOUS.0.get())[k].as_mut_ptr();
            libc::sigaction(sig, ptr::null(), previous);
            let mut action: libc::sigaction = core::mem::zeroed();
            action.sa_sigaction = handler as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, ptr::null_mut());
        }
    }
}

extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    // A signal another process (or `raise`, `kill`) sent has a code of 0 or
    // below and no fault address; only a fault can be an overflow.
    let fault = code > 0;
    if fault && let Some((low, high)) = guard_hit(addr) {
        report_overflow(addr, low, high);
    }
    // Not ours: hand it on as if we were not here.
    let k = if sig == libc::SIGSEGV { 0 } else { 1 };
    // SAFETY: PREVIOUS was filled before the handler was installed.
    let previous = unsafe { (*PREVIOUS.0.get())[k].assume_init_ref() };
    let target = previous.sa_sigaction;
    if target == libc::SIG_IGN && !fault {
        // Ignored, as it would have been.
    } else if target == libc::SIG_DFL || target == libc::SIG_IGN {
        // The default action, which the kernel also takes for a fault whose
        // signal is ignored. Restore it; then a fault returns and its
        // instruction faults again, and a sent signal is sent again (it is
        // blocked until this handler returns).
        // SAFETY: resetting a signal's action and raising a signal are
        // async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = core::mem::zeroed();
            action.sa_sigaction = libc::SIG_DFL;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, ptr::null_mut());
            if !fault {
                libc::raise(sig);
            }
        }
    } else if previous.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: an SA_SIGINFO handler takes these three arguments.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { core::mem::transmute(target) };
        f(sig, info, context);
    } else {
        // SAFETY: a plain handler takes the signal number.
        let f: extern "C" fn(libc::c_int) = unsafe { core::mem::transmute(target) };
        f(sig);
    }
}

/// Writes the overflow report and aborts.
fn report_overflow(addr: usize, low: usize, high: usize) -> ! {
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
    os::abort()
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

    /// Sets a flag when dropped, even by a panic.
    struct SetOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

    impl Drop for SetOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[test]
    fn lookups_racing_the_reuse_of_an_entry_never_divide_by_zero_nor_name_a_wrong_stack() {
        use std::sync::atomic::AtomicBool;
        use std::time::{Duration, Instant};
        // Two big stacks (fake, far from anything mapped) registered and
        // unregistered in turn, so each takes the entry the other freed.
        let guard = 4096;
        let stacks = [(0x7e20_0000_0000, 64 << 10), (0x7e30_0000_0000, 192 << 10)];
        let done = AtomicBool::new(false);
        let (mut hits, mut lookups) = ([0u64; 2], 0u64);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    for &(base, size) in &stacks {
                        let e = register_single(base, guard, size);
                        unregister(e);
                    }
                }
            });
            let _stop = SetOnDrop(&done);
            let deadline = Instant::now() + Duration::from_millis(1500);
            while Instant::now() < deadline {
                for _ in 0..1000 {
                    for (k, &(base, size)) in stacks.iter().enumerate() {
                        let expected = (base + guard, base + guard + size);
                        for addr in [base, base + 8, base + guard / 2, base + guard - 1] {
                            lookups += 1;
                            match guard_hit(addr) {
                                None => {}
                                Some(got) => {
                                    assert_eq!(got, expected, "{addr:#x} named a wrong stack");
                                    hits[k] += 1;
                                }
                            }
                        }
                        for addr in [base + guard, base + guard + size / 2, base + guard + size - 1, base - 1] {
                            lookups += 1;
                            assert_eq!(guard_hit(addr), None, "{addr:#x} is outside the guard");
                        }
                    }
                }
            }
        });
        eprintln!("{lookups} lookups, {hits:?} guard hits");
        assert!(hits[0] > 0 && hits[1] > 0, "the lookups never found a registered stack: {hits:?}");
    }
}
