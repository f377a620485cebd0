//! The malloc family without a `Layout`: what `libspanalloc.so` (the C ABI
//! crate in `capi/`) exports, on the global allocator.
//!
//! C passes no size to `free` and asks for `malloc_usable_size`, so these
//! entry points find the size class from the pointer. They follow C's
//! alignment rule (16 bytes for every request of 16 bytes or more, 8 below)
//! and report failure as a null pointer; `errno` is the C layer's business.
//! Misuse (a pointer spanalloc did not hand out, a double free) aborts with
//! a report, as [`crate::SpanAlloc`] does.
//!
//! Not part of the Rust API: Rust programs use `GlobalAlloc`.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr;

use crate::SpanAlloc;
use crate::arena;
use crate::mspan::SpanKind;
use crate::sizeclass::{MAX_SMALL, PAGE_SIZE};

/// The alignment C promises for `size` bytes (`alignof(max_align_t)` for
/// requests that could hold it).
#[inline]
fn c_align(size: usize) -> usize {
    if size >= 16 { 16 } else { 8 }
}

/// `malloc(size)`: at least `size` bytes (a unique object for 0), aligned
/// as C requires; null when out of memory.
pub fn malloc(size: usize) -> *mut u8 {
    aligned_alloc(c_align(size), size)
}

/// `calloc(n, size)`: zeroed; null on overflow of `n * size` or when out of
/// memory.
pub fn calloc(n: usize, size: usize) -> *mut u8 {
    let Some(bytes) = n.checked_mul(size) else {
        return ptr::null_mut();
    };
    let Ok(layout) = Layout::from_size_align(bytes.max(1), c_align(bytes)) else {
        return ptr::null_mut();
    };
    // SAFETY: the layout has a non-zero size.
    unsafe { SpanAlloc.alloc_zeroed(layout) }
}

/// `aligned_alloc(align, size)` for a power-of-two `align`; null when
/// `align` is not one, or when out of memory.
pub fn aligned_alloc(align: usize, size: usize) -> *mut u8 {
    let Ok(layout) = Layout::from_size_align(size.max(1), align.max(8)) else {
        return ptr::null_mut();
    };
    // SAFETY: the layout has a non-zero size.
    unsafe { SpanAlloc.alloc(layout) }
}

/// Whether `p` lies in memory spanalloc manages (any heap). Reads only
/// spanalloc's own metadata, never `p`.
pub fn owns(p: *const u8) -> bool {
    arena::span_of(p as usize).is_some_and(|(_, span)| !span.is_null())
}

/// `malloc_usable_size(p)`: the bytes the object at `p` can hold (0 for
/// null). Aborts if `p` is not an object spanalloc handed out.
pub fn usable_size(p: *const u8) -> usize {
    if p.is_null() {
        return 0;
    }
    let (size, _) = object_layout(p as usize);
    size
}

/// The size and alignment to free the object at `addr` with.
fn object_layout(addr: usize) -> (usize, usize) {
    let Some((_, span)) = arena::span_of(addr) else {
        crate::report::invalid_free(addr);
    };
    // SAFETY: a non-null page entry points at a live span record.
    let Some(span) = (unsafe { span.as_ref() }) else {
        crate::report::invalid_free(addr);
    };
    match span.kind {
        SpanKind::Small => (span.elem_size as usize, 8),
        SpanKind::Large if span.base == addr => (span.npages * PAGE_SIZE, 8),
        _ => crate::report::invalid_free(addr),
    }
}

/// `free(p)`; null is a no-op.
///
/// # Safety
/// `p` must be null or an object from this allocator that is still live
/// (violations spanalloc can detect abort with a report).
pub unsafe fn free(p: *mut u8) {
    if p.is_null() {
        return;
    }
    let (size, align) = object_layout(p as usize);
    let size = if size > MAX_SMALL { MAX_SMALL + 1 } else { size };
    // SAFETY: the layout names the object's own size class.
    unsafe { SpanAlloc.dealloc(p, Layout::from_size_align_unchecked(size, align)) }
}

/// `free_sized(p, size)` / `free_aligned_sized(p, align, size)`: as
/// [`free`], but the caller states the size it allocated; a size of another
/// size class aborts with a report.
///
/// # Safety
/// As for [`free`].
pub unsafe fn free_sized(p: *mut u8, size: usize, align: usize) {
    if p.is_null() {
        return;
    }
    let Ok(layout) = Layout::from_size_align(size.max(1), align.max(c_align(size))) else {
        crate::report::invalid_free(p as usize);
    };
    // SAFETY: the caller's contract; a wrong size is detected and reported.
    unsafe { SpanAlloc.dealloc(p, layout) }
}

/// `realloc(p, size)` for `p` not null and `size` not zero (the C layer
/// handles those cases): in place when the size class allows, else moved
/// with its bytes; null (and `p` untouched) when out of memory.
///
/// # Safety
/// As for [`free`].
pub unsafe fn realloc(p: *mut u8, size: usize) -> *mut u8 {
    let (old, _) = object_layout(p as usize);
    if size <= old && (size < 16 || (p as usize).is_multiple_of(16)) && (old <= MAX_SMALL || size > MAX_SMALL) {
        return p;
    }
    let new = malloc(size);
    if !new.is_null() {
        // SAFETY: both objects are live and distinct.
        unsafe {
            ptr::copy_nonoverlapping(p, new, old.min(size));
            free(p);
        }
    }
    new
}

/// `malloc_trim`: gives free memory back to the OS now.
pub fn trim() {
    crate::release();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_objects_are_aligned_sized_and_freed_without_a_layout() {
        for size in [0usize, 1, 8, 15, 16, 17, 24, 100, 4096, 40_000, 1 << 20] {
            let p = malloc(size);
            assert!(!p.is_null());
            assert_eq!(p as usize % c_align(size), 0, "size {size}");
            let usable = usable_size(p);
            assert!(usable >= size.max(1));
            unsafe { p.write_bytes(0xa5, usable) };
            assert!(owns(p));
            let q = unsafe { realloc(p, size + 100) };
            assert!(unsafe { core::slice::from_raw_parts(q, size) }.iter().all(|&b| b == 0xa5));
            unsafe { free(q) };
        }
        assert_eq!(usable_size(ptr::null()), 0);
        assert!(calloc(usize::MAX, 2).is_null());
        let z = calloc(10, 10);
        assert!(unsafe { core::slice::from_raw_parts(z, 100) }.iter().all(|&b| b == 0));
        unsafe { free_sized(z, 100, 16) };
    }
}
