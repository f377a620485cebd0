//! The C++ `operator new` / `operator delete` set (Itanium names).
//!
//! libstdc++'s operators call `malloc` and `free`, so a program would work
//! without these; they save that extra call, and the sized deletes hand
//! the core the object's size, which it checks (a wrong size is reported:
//! `spanalloc: fatal: free of 0x...: layout size ...`).
//!
//! **Failure.** A throwing `new` that fails must call the
//! `std::new_handler` in a loop and finally throw `std::bad_alloc`, and
//! Rust cannot throw a C++ exception. So each `new` here is a small naked
//! function: it calls the Rust fast path, returns its block if there is
//! one, and otherwise *jumps* (no frame of ours left on the stack) to the
//! operator of the same name that comes next in the symbol lookup order —
//! libstdc++'s, found once with `dlsym(RTLD_NEXT, ...)` on the first
//! failure, never on the allocation path. libstdc++'s operator then runs
//! the handler loop over our `malloc` and throws, or for the `nothrow`
//! forms returns null. If no such operator exists, the failure is reported
//! and the process aborts.

use core::ffi::c_void;
use core::sync::atomic::{AtomicUsize, Ordering};

use spanalloc_core::raw;

use crate::malloc::{alloc, alloc_aligned, c_align, release};
use crate::{foreign, nested};

/// The `new` operators, in the order of [`NEXT`].
const NAMES: [&core::ffi::CStr; 8] = [
    c"_Znwm",
    c"_Znam",
    c"_ZnwmRKSt9nothrow_t",
    c"_ZnamRKSt9nothrow_t",
    c"_ZnwmSt11align_val_t",
    c"_ZnamSt11align_val_t",
    c"_ZnwmSt11align_val_tRKSt9nothrow_t",
    c"_ZnamSt11align_val_tRKSt9nothrow_t",
];

/// The next definition of each `new` (0: not resolved yet).
static NEXT: [AtomicUsize; 8] = [const { AtomicUsize::new(0) }; 8];

/// Fast path of `new(size)` (the second and third arguments are ignored).
extern "C" fn new_plain(size: usize) -> *mut u8 {
    alloc(size)
}

/// Fast path of `new(size, align_val_t)`.
extern "C" fn new_aligned(size: usize, align: usize) -> *mut u8 {
    alloc_aligned(align, size)
}

/// Where a failed `new` continues: the next definition of operator
/// `NAMES[which]`, or [`no_next_new`].
extern "C" fn next_new(which: usize) -> usize {
    let cached = NEXT[which].load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    let name = NAMES[which].as_ptr();
    // SAFETY: dlsym with a NUL-terminated name; this runs outside any
    // allocation, so dlsym may allocate.
    let mut f = unsafe { libc::dlsym(libc::RTLD_NEXT, name) } as usize;
    if f == 0 {
        // Linked at link time after libstdc++: the default scope finds
        // libstdc++'s unless ours comes first.
        // SAFETY: as above.
        let any = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name) } as usize;
        let ours = [
            _Znwm as *const () as usize,
            _Znam as *const () as usize,
            _ZnwmRKSt9nothrow_t as *const () as usize,
            _ZnamRKSt9nothrow_t as *const () as usize,
        ];
        let ours_aligned = [
            _ZnwmSt11align_val_t as *const () as usize,
            _ZnamSt11align_val_t as *const () as usize,
            _ZnwmSt11align_val_tRKSt9nothrow_t as *const () as usize,
            _ZnamSt11align_val_tRKSt9nothrow_t as *const () as usize,
        ];
        if !ours.contains(&any) && !ours_aligned.contains(&any) {
            f = any;
        }
    }
    if f == 0 {
        f = no_next_new as *const () as usize;
    }
    NEXT[which].store(f, Ordering::Relaxed);
    f
}

/// A failed `new` with no libstdc++ to throw `bad_alloc`.
extern "C" fn no_next_new(size: usize) -> ! {
    crate::fatal::fatal(
        "operator new of",
        size,
        " bytes (hex): out of memory, and no C++ runtime's operator new to throw std::bad_alloc",
    )
}

/// Defines operator `new` `$name`: try `$fast`, else jump to the next
/// definition of `NAMES[$which]` with the arguments intact.
macro_rules! operator_new {
    ($name:ident, $fast:ident, $which:expr) => {
        #[doc = concat!("C++ `", stringify!($name), "`.")]
        ///
        /// # Safety
        /// Called by C++ code with the operator's own arguments.
        #[unsafe(naked)]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name() {
            // Three pushes keep the stack 16-byte aligned for the calls
            // (entry is 8 mod 16) and save every argument of every form.
            core::arch::naked_asm!(
                "push rdi",
                "push rsi",
                "push rdx",
                "call {fast}",
                "test rax, rax",
                "jz 2f",
                "add rsp, 24",
                "ret",
                "2:",
                "mov edi, {which}",
                "call {next}",
                "pop rdx",
                "pop rsi",
                "pop rdi",
                "jmp rax",
                fast = sym $fast,
                next = sym next_new,
                which = const $which,
            )
        }
    };
}

operator_new!(_Znwm, new_plain, 0);
operator_new!(_Znam, new_plain, 1);
operator_new!(_ZnwmRKSt9nothrow_t, new_plain, 2);
operator_new!(_ZnamRKSt9nothrow_t, new_plain, 3);
operator_new!(_ZnwmSt11align_val_t, new_aligned, 4);
operator_new!(_ZnamSt11align_val_t, new_aligned, 5);
operator_new!(_ZnwmSt11align_val_tRKSt9nothrow_t, new_aligned, 6);
operator_new!(_ZnamSt11align_val_tRKSt9nothrow_t, new_aligned, 7);

/// An unsized `delete`.
#[inline(always)]
unsafe fn delete(p: *mut c_void) {
    if !p.is_null() {
        // SAFETY: the caller's contract.
        unsafe { release(p.cast()) }
    }
}

/// A sized `delete`: the core checks `size` against the object's class.
#[inline(always)]
unsafe fn delete_sized(p: *mut c_void, size: usize, align: usize) {
    let p = p.cast::<u8>();
    if p.is_null() {
        return;
    }
    if nested::is_emergency(p) {
        return nested::free(p);
    }
    if foreign::policy() != foreign::ABORT && foreign::forwards(p) {
        // SAFETY: a pointer glibc allocated.
        return unsafe { foreign::free(p) };
    }
    if !nested::enter() {
        // SAFETY: `new` allocated `p` with this size and alignment (both
        // paths round the alignment as `alloc_aligned` does).
        unsafe { raw::free_sized(p, size, align.max(c_align(size))) };
    } else {
        nested::defer_free(p);
    }
    nested::leave();
}

macro_rules! operator_delete {
    ($($name:ident($($arg:ident: $ty:ty),*) => $body:expr;)*) => {$(
        #[doc = concat!("C++ `", stringify!($name), "`.")]
        ///
        /// # Safety
        /// Called by C++ code with a pointer from the matching `new`.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name($($arg: $ty),*) {
            // SAFETY: the caller's contract.
            unsafe { $body }
        }
    )*};
}

operator_delete! {
    _ZdlPv(p: *mut c_void) => delete(p);
    _ZdaPv(p: *mut c_void) => delete(p);
    _ZdlPvRKSt9nothrow_t(p: *mut c_void, _nt: *const c_void) => delete(p);
    _ZdaPvRKSt9nothrow_t(p: *mut c_void, _nt: *const c_void) => delete(p);
    _ZdlPvSt11align_val_t(p: *mut c_void, _al: usize) => delete(p);
    _ZdaPvSt11align_val_t(p: *mut c_void, _al: usize) => delete(p);
    _ZdlPvSt11align_val_tRKSt9nothrow_t(p: *mut c_void, _al: usize, _nt: *const c_void) => delete(p);
    _ZdaPvSt11align_val_tRKSt9nothrow_t(p: *mut c_void, _al: usize, _nt: *const c_void) => delete(p);
    _ZdlPvm(p: *mut c_void, size: usize) => delete_sized(p, size, 0);
    _ZdaPvm(p: *mut c_void, size: usize) => delete_sized(p, size, 0);
    _ZdlPvmSt11align_val_t(p: *mut c_void, size: usize, al: usize) => delete_sized(p, size, al);
    _ZdaPvmSt11align_val_t(p: *mut c_void, size: usize, al: usize) => delete_sized(p, size, al);
}
