//! The C malloc family, with glibc 2.36's semantics.
//!
//! Every entry point is a thin `extern "C"` shell around one `#[inline]`
//! body here; the `__libc_*` names and `cfree` are more shells around the
//! same bodies. A body marks the thread as inside spanalloc
//! ([`nested::enter`]), calls the core's `raw` function, and leaves; a call
//! that finds the thread already inside is served without the core (see
//! [`crate::nested`]).
//!
//! - Failure is NULL with `errno = ENOMEM` (sizes beyond `PTRDIFF_MAX`, an
//!   overflowing `calloc`/`reallocarray`/`pvalloc` product included).
//! - `free` keeps `errno` as it found it (the core may `munmap` or
//!   `madvise` on its slow path; its fast path makes no system call, so
//!   errno is saved only when a free leaves it).
//! - `malloc(0)`, `calloc(0, n)` and `realloc(NULL, 0)` return a unique
//!   object; `realloc(p, 0)` frees `p` and returns NULL, as glibc does.
//! - Alignment: 16 bytes for every request of 16 or more, 8 below; the
//!   `memalign` family rounds a non-power-of-two alignment up, as glibc
//!   2.36 does, and never gives less than `malloc` would.

use core::ffi::c_void;
use core::ptr;

use spanalloc_core::raw;

use crate::{foreign, nested};

/// The alignment C promises for `size` bytes.
#[inline(always)]
pub(crate) fn c_align(size: usize) -> usize {
    if size >= 16 { 16 } else { 8 }
}

#[inline(always)]
fn errno() -> *mut libc::c_int {
    // SAFETY: __errno_location has no preconditions and returns the
    // calling thread's errno.
    unsafe { libc::__errno_location() }
}

/// Sets `errno` to ENOMEM and returns null.
#[cold]
#[inline(never)]
pub(crate) fn enomem() -> *mut c_void {
    // SAFETY: the thread's errno.
    unsafe { *errno() = libc::ENOMEM };
    ptr::null_mut()
}

/// `malloc` without errno: null on failure.
#[inline(always)]
pub(crate) fn alloc(size: usize) -> *mut u8 {
    let nested = nested::enter();
    let p = if !nested { raw::malloc(size) } else { nested::alloc(size, c_align(size)) };
    nested::leave();
    p
}

/// `memalign` without errno, for a power-of-two `align`: at least `malloc`'s
/// alignment.
#[inline(always)]
pub(crate) fn alloc_aligned(align: usize, size: usize) -> *mut u8 {
    let align = align.max(c_align(size));
    let nested = nested::enter();
    let p = if !nested { raw::aligned_alloc(align, size) } else { nested::alloc(size, align) };
    nested::leave();
    p
}

/// The free proper (no errno care): emergency blocks are dropped, foreign
/// pointers follow the policy, nested frees are deferred.
#[inline(always)]
pub(crate) unsafe fn release(p: *mut u8) {
    if nested::is_emergency(p) {
        return nested::free(p);
    }
    if foreign::policy() != foreign::ABORT && foreign::forwards(p) {
        // SAFETY: a pointer glibc allocated.
        return unsafe { foreign::free(p) };
    }
    if !nested::enter() {
        // SAFETY: the caller's contract (the core reports misuse).
        unsafe { raw::free(p) };
    } else {
        nested::defer_free(p);
    }
    nested::leave();
}

#[inline(always)]
unsafe fn free_body(p: *mut c_void) {
    if p.is_null() {
        return;
    }
    // The core's fast path first: it makes no system call, so errno needs
    // no saving around it.
    if !nested::enter() {
        // SAFETY: the caller's contract (the core reports misuse).
        let done = unsafe { raw::free_fast(p.cast()) };
        nested::leave();
        if done {
            return;
        }
    } else {
        nested::leave();
    }
    // SAFETY: the caller's contract.
    unsafe { free_slow(p) }
}

/// The rest of a free: another thread's object, a full stack, a large or
/// foreign object, a nested call, misuse.
#[cold]
#[inline(never)]
unsafe fn free_slow(p: *mut c_void) {
    let e = errno();
    // SAFETY: the thread's errno, saved and restored around the free.
    unsafe {
        let saved = *e;
        release(p.cast());
        *e = saved;
    }
}

#[inline(always)]
fn malloc_body(size: usize) -> *mut c_void {
    let p = alloc(size);
    if p.is_null() { enomem() } else { p.cast() }
}

#[inline(always)]
fn calloc_body(n: usize, size: usize) -> *mut c_void {
    let nested = nested::enter();
    let p = if !nested {
        raw::calloc(n, size)
    } else {
        // Emergency blocks are zeroed.
        match n.checked_mul(size) {
            Some(bytes) => nested::alloc(bytes, c_align(bytes)),
            None => ptr::null_mut(),
        }
    };
    nested::leave();
    if p.is_null() { enomem() } else { p.cast() }
}

#[inline(always)]
unsafe fn realloc_body(p: *mut c_void, size: usize) -> *mut c_void {
    if p.is_null() {
        return malloc_body(size);
    }
    if size == 0 {
        // SAFETY: the caller's contract.
        unsafe { free_body(p) };
        return ptr::null_mut();
    }
    let p = p.cast::<u8>();
    // SAFETY (all branches): the caller's contract; `p` is live.
    let q = if nested::is_emergency(p) {
        let q = unsafe { move_out(p, nested::usable(p), size) };
        if !q.is_null() {
            nested::free(p);
        }
        q
    } else if foreign::policy() != foreign::ABORT && foreign::forwards(p) {
        let q = unsafe { move_out(p, foreign::usable_size(p), size) };
        if !q.is_null() {
            unsafe { foreign::free(p) };
        }
        q
    } else {
        let nested = nested::enter();
        let q = if !nested { unsafe { raw::realloc(p, size) } } else { unsafe { nested::realloc(p, size) } };
        nested::leave();
        q
    };
    if q.is_null() { enomem() } else { q.cast() }
}

/// A new spanalloc block of `size` bytes holding the first `old` bytes of
/// `p` (which the caller frees, or not).
#[cold]
unsafe fn move_out(p: *mut u8, old: usize, size: usize) -> *mut u8 {
    let q = alloc(size);
    if !q.is_null() {
        // SAFETY: both blocks are live and disjoint.
        unsafe { ptr::copy_nonoverlapping(p, q, old.min(size)) };
    }
    q
}

#[inline(always)]
unsafe fn reallocarray_body(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        // SAFETY: the caller's contract.
        Some(bytes) => unsafe { realloc_body(p, bytes) },
        None => enomem(),
    }
}

/// glibc's rounding of a `memalign` alignment: none beyond `malloc`'s for
/// up to 8, a power of two at least as large otherwise; `None` when no
/// such power exists (glibc: EINVAL).
#[inline(always)]
fn memalign_align(align: usize) -> Option<usize> {
    if align.is_power_of_two() { Some(align) } else { align.checked_next_power_of_two() }
}

#[inline(always)]
fn memalign_body(align: usize, size: usize) -> *mut c_void {
    let Some(align) = memalign_align(align) else {
        // SAFETY: the thread's errno.
        unsafe { *errno() = libc::EINVAL };
        return ptr::null_mut();
    };
    let p = alloc_aligned(align, size);
    if p.is_null() { enomem() } else { p.cast() }
}

#[inline(always)]
unsafe fn posix_memalign_body(out: *mut *mut c_void, align: usize, size: usize) -> libc::c_int {
    if align < core::mem::size_of::<*mut c_void>() || !align.is_power_of_two() {
        return libc::EINVAL;
    }
    let p = alloc_aligned(align, size);
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: the caller passes a writable `void **`.
    unsafe { *out = p.cast() };
    0
}

fn page() -> usize {
    // SAFETY: sysconf has no preconditions; it does not allocate.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as usize } else { 4096 }
}

#[inline(always)]
fn valloc_body(size: usize) -> *mut c_void {
    memalign_body(page(), size)
}

#[inline(always)]
fn pvalloc_body(size: usize) -> *mut c_void {
    let page = page();
    match size.checked_add(page - 1) {
        Some(s) => memalign_body(page, (s & !(page - 1)).max(page)),
        None => enomem(),
    }
}

#[inline(always)]
unsafe fn usable_size_body(p: *mut c_void) -> usize {
    let p = p.cast::<u8>();
    if p.is_null() {
        0
    } else if nested::is_emergency(p) {
        nested::usable(p)
    } else if foreign::policy() != foreign::ABORT && foreign::forwards(p) {
        // SAFETY: a pointer glibc allocated.
        unsafe { foreign::usable_size(p) }
    } else {
        raw::usable_size(p)
    }
}

/// `free_sized(p, size)` / `free_aligned_sized(p, align, size)` (C23). The
/// size must fit the object, or the free is reported as misuse; the object
/// is then freed as by `free`, since after a shrinking `realloc` that stayed
/// in place the size the caller holds names a smaller class than the
/// object's.
#[inline(always)]
unsafe fn free_sized_body(p: *mut c_void, size: usize) {
    if p.is_null() {
        return;
    }
    // SAFETY: the caller's contract.
    if !nested::is_emergency(p.cast()) && foreign::policy() == foreign::ABORT && size > unsafe { usable_size_body(p) } {
        crate::fatal::fatal("free_sized of", p as usize, ": the size given is larger than the object");
    }
    // SAFETY: the caller's contract.
    unsafe { free_body(p) }
}

#[inline(always)]
fn trim_body() -> libc::c_int {
    let nested = nested::enter();
    if !nested {
        raw::trim();
    }
    nested::leave();
    (!nested).into()
}

// ---------------------------------------------------------------------------
// The exports.

/// `malloc(3)`.
#[unsafe(no_mangle)]
pub extern "C" fn malloc(size: usize) -> *mut c_void {
    malloc_body(size)
}

/// `free(3)`.
///
/// # Safety
/// `p` is null or a live block from this allocator (or, with
/// `SPANALLOC_FOREIGN_FREE=glibc`, from glibc).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn free(p: *mut c_void) {
    // SAFETY: the caller's contract.
    unsafe { free_body(p) }
}

/// `calloc(3)`.
#[unsafe(no_mangle)]
pub extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    calloc_body(n, size)
}

/// `realloc(3)`.
///
/// # Safety
/// As for [`free`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: the caller's contract.
    unsafe { realloc_body(p, size) }
}

/// `reallocarray(3)`.
///
/// # Safety
/// As for [`free`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    // SAFETY: the caller's contract.
    unsafe { reallocarray_body(p, n, size) }
}

/// `posix_memalign(3)`.
///
/// # Safety
/// `out` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> libc::c_int {
    // SAFETY: the caller's contract.
    unsafe { posix_memalign_body(out, align, size) }
}

/// `aligned_alloc(3)` (glibc 2.36: any alignment, rounded up).
#[unsafe(no_mangle)]
pub extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    memalign_body(align, size)
}

/// `memalign(3)`.
#[unsafe(no_mangle)]
pub extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    memalign_body(align, size)
}

/// `valloc(3)`.
#[unsafe(no_mangle)]
pub extern "C" fn valloc(size: usize) -> *mut c_void {
    valloc_body(size)
}

/// `pvalloc(3)`.
#[unsafe(no_mangle)]
pub extern "C" fn pvalloc(size: usize) -> *mut c_void {
    pvalloc_body(size)
}

/// `malloc_usable_size(3)`.
///
/// # Safety
/// As for [`free`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    // SAFETY: the caller's contract.
    unsafe { usable_size_body(p) }
}

/// `cfree`: the old name of `free`.
///
/// # Safety
/// As for [`free`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cfree(p: *mut c_void) {
    // SAFETY: the caller's contract.
    unsafe { free_body(p) }
}

/// C23 `free_sized`.
///
/// # Safety
/// As for [`free`]; `size` is the size the block was allocated with.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn free_sized(p: *mut c_void, size: usize) {
    // SAFETY: the caller's contract.
    unsafe { free_sized_body(p, size) }
}

/// C23 `free_aligned_sized`.
///
/// # Safety
/// As for [`free_sized`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn free_aligned_sized(p: *mut c_void, _align: usize, size: usize) {
    // SAFETY: the caller's contract.
    unsafe { free_sized_body(p, size) }
}

/// `malloc_trim(3)`: gives free memory back to the OS; returns 1.
#[unsafe(no_mangle)]
pub extern "C" fn malloc_trim(_pad: usize) -> libc::c_int {
    trim_body()
}

/// glibc's `__libc_malloc`.
#[unsafe(no_mangle)]
pub extern "C" fn __libc_malloc(size: usize) -> *mut c_void {
    malloc_body(size)
}

/// glibc's `__libc_free`.
///
/// # Safety
/// As for [`free`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __libc_free(p: *mut c_void) {
    // SAFETY: the caller's contract.
    unsafe { free_body(p) }
}

/// glibc's `__libc_calloc`.
#[unsafe(no_mangle)]
pub extern "C" fn __libc_calloc(n: usize, size: usize) -> *mut c_void {
    calloc_body(n, size)
}

/// glibc's `__libc_realloc`.
///
/// # Safety
/// As for [`free`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __libc_realloc(p: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: the caller's contract.
    unsafe { realloc_body(p, size) }
}

/// glibc's `__libc_memalign`.
#[unsafe(no_mangle)]
pub extern "C" fn __libc_memalign(align: usize, size: usize) -> *mut c_void {
    memalign_body(align, size)
}

/// glibc's `__libc_valloc`.
#[unsafe(no_mangle)]
pub extern "C" fn __libc_valloc(size: usize) -> *mut c_void {
    valloc_body(size)
}

/// glibc's `__libc_pvalloc`.
#[unsafe(no_mangle)]
pub extern "C" fn __libc_pvalloc(size: usize) -> *mut c_void {
    pvalloc_body(size)
}

/// glibc's `__posix_memalign`.
///
/// # Safety
/// As for [`posix_memalign`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> libc::c_int {
    // SAFETY: the caller's contract.
    unsafe { posix_memalign_body(out, align, size) }
}
