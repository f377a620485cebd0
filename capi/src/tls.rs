//! The thread's own C-layer state, reached in the initial-exec TLS model.
//!
//! A `thread_local!` in a shared object compiles, on stable Rust, to the
//! general-dynamic model: every access calls `__tls_get_addr`, and after a
//! `dlopen` of any module with TLS, the first such call in each older thread
//! takes glibc's slow path, which grows the thread's DTV with `malloc` and
//! frees stale entries with `free` — that is, it re-enters us. The state
//! here is instead a block in `.tbss` (declared with `global_asm!`) reached
//! by one `@GOTTPOFF` load from the GOT plus the thread pointer at `fs:0`:
//! no call, no lazy allocation, valid from the thread's first instruction.
//! The linker turns the reference into an `R_X86_64_TPOFF64` relocation and
//! marks the library `STATIC_TLS`, so it lives in the static TLS block that
//! ld.so sets up before any code runs: the library must be preloaded or
//! linked at link time, never `dlopen`ed.
//!
//! `.tbss` is zero-filled, so [`ThreadState`] is valid when all its bits are
//! zero; it has no destructor.
//!
//! Off x86-64 the block is a `const` `thread_local!` (general-dynamic, with
//! the hazard above).

use core::cell::Cell;

/// Deferred frees a thread can hold (see [`crate::nested`]).
pub(crate) const DEFERRED: usize = 30;

/// One thread's state. All-zero is the fresh state.
#[repr(C, align(64))]
pub(crate) struct ThreadState {
    /// Low 16 bits: how deep this thread is inside spanalloc's entry
    /// points. Above them: `DEFERRED_ONE` times the number of frees that
    /// were deferred. Zero means "not inside, nothing deferred", so leaving
    /// the outermost call takes one comparison.
    pub(crate) word: Cell<usize>,
    /// Frees that came while the thread was already inside spanalloc.
    pub(crate) deferred: [Cell<usize>; DEFERRED],
    /// Deferred frees dropped because `deferred` was full (leaked).
    pub(crate) dropped: Cell<usize>,
}

/// The depth part of [`ThreadState::word`].
pub(crate) const DEPTH_MASK: usize = 0xffff;
/// One deferred free in [`ThreadState::word`].
pub(crate) const DEFERRED_ONE: usize = 1 << 16;

const _: () = assert!(core::mem::size_of::<ThreadState>() == 256);

#[cfg(target_arch = "x86_64")]
core::arch::global_asm!(
    ".pushsection .tbss,\"awT\",@nobits",
    ".p2align 6",
    // Global for the other codegen units, hidden from the dynamic table.
    ".globl spanalloc_c_thread_state",
    ".hidden spanalloc_c_thread_state",
    ".type spanalloc_c_thread_state,@object",
    ".size spanalloc_c_thread_state, {size}",
    "spanalloc_c_thread_state:",
    ".skip {size}",
    ".popsection",
    size = const core::mem::size_of::<ThreadState>(),
);

/// The calling thread's state: the thread pointer plus the block's offset
/// from it, which the GOT holds (one load, one add; no call).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn state() -> &'static ThreadState {
    let p: *const ThreadState;
    // SAFETY: `fs:0` holds the thread pointer (the TCB's self pointer) on
    // x86-64 Linux, and the GOT entry holds the block's (negative) offset
    // from it; the sum is this thread's block, alive as long as the thread.
    // `pure` + `readonly`: the result depends only on the thread, so the
    // compiler may reuse it within a function.
    unsafe {
        core::arch::asm!(
            "mov {p}, qword ptr fs:[0]",
            "add {p}, qword ptr [rip + spanalloc_c_thread_state@GOTTPOFF]",
            p = out(reg) p,
            options(pure, readonly, nostack),
        );
        &*p
    }
}

#[cfg(not(target_arch = "x86_64"))]
std::thread_local! {
    static STATE: ThreadState = const {
        ThreadState {
            word: Cell::new(0),
            deferred: [const { Cell::new(0) }; DEFERRED],
            dropped: Cell::new(0),
        }
    };
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
pub(crate) fn state() -> &'static ThreadState {
    // SAFETY: the block lives as long as the thread; only this thread
    // reaches it (the 'static is never handed to another thread).
    STATE.with(|s| unsafe { &*(s as *const ThreadState) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_thread_has_its_own_zeroed_block() {
        let mine = state() as *const ThreadState as usize;
        assert_eq!(mine % 64, 0);
        state().dropped.set(7);
        let handles: Vec<_> = (0..4)
            .map(|i| {
                std::thread::spawn(move || {
                    let s = state();
                    assert_eq!(s.word.get(), 0, "fresh block is zero");
                    assert_eq!(s.dropped.get(), 0);
                    assert!(s.deferred.iter().all(|d| d.get() == 0));
                    s.dropped.set(100 + i);
                    std::thread::yield_now();
                    assert_eq!(state().dropped.get(), 100 + i);
                    s as *const ThreadState as usize
                })
            })
            .collect();
        let addrs: Vec<usize> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        for a in &addrs {
            assert_ne!(*a, mine);
        }
        assert_eq!(state().dropped.get(), 7);
        state().dropped.set(0);
    }
}
