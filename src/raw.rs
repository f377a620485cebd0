//! The malloc family without a `Layout`: what `libspanalloc.so` (the C ABI
//! crate in `capi/`) exports, on the global allocator.
//!
//! C passes no size to `free` and asks for `malloc_usable_size`, so these
//! entry points find the size class from the pointer: the page tag names
//! it (see [`crate::arena`]), with no lookup. They follow C's alignment
//! rule (16 bytes for every request of 16 bytes or more, 8 below: a size
//! table of their own skips the one class that is not 16-aligned) and
//! report failure as a null pointer; `errno` is the C layer's business.
//! Misuse (a pointer spanalloc did not hand out, a double free) aborts with
//! a report, as [`crate::SpanAlloc`] does.
//!
//! Not part of the Rust API: Rust programs use `GlobalAlloc`.

use core::ptr;

use crate::mcache;
use crate::thread;

/// The alignment C promises for `size` bytes (`alignof(max_align_t)` for
/// requests that could hold it).
#[inline]
fn c_align(size: usize) -> usize {
    if size >= 16 { 16 } else { 8 }
}

/// `malloc(size)`: at least `size` bytes (a unique object for 0), aligned
/// as C requires; null when out of memory.
#[inline]
pub fn malloc(size: usize) -> *mut u8 {
    // SAFETY: one operation on this thread's cache.
    let (c, h) = unsafe { thread::current() };
    c.alloc_c(&h, size)
}

/// `calloc(n, size)`: zeroed; null on overflow of `n * size` or when out of
/// memory.
#[inline]
pub fn calloc(n: usize, size: usize) -> *mut u8 {
    let Some(bytes) = n.checked_mul(size) else {
        return ptr::null_mut();
    };
    if bytes > isize::MAX as usize {
        return ptr::null_mut();
    }
    thread::with_cache(|c, h| c.alloc_zeroed(h, bytes.max(1), c_align(bytes)))
}

/// `aligned_alloc(align, size)` for a power-of-two `align`; null when
/// `align` is not one, or when out of memory.
#[inline]
pub fn aligned_alloc(align: usize, size: usize) -> *mut u8 {
    if !align.is_power_of_two() || size > isize::MAX as usize - align {
        return ptr::null_mut();
    }
    thread::with_cache(|c, h| c.alloc(h, size.max(1), align.max(c_align(size))))
}

/// Whether `p` lies in memory spanalloc manages (any heap). Reads only
/// spanalloc's own metadata, never `p`.
pub fn owns(p: *const u8) -> bool {
    crate::arena::span_of(p as usize).is_some_and(|(_, span)| !span.is_null())
}

/// `malloc_usable_size(p)`: the bytes the object at `p` can hold (0 for
/// null). Aborts if `p` is not an object spanalloc handed out.
#[inline]
pub fn usable_size(p: *const u8) -> usize {
    if p.is_null() {
        return 0;
    }
    mcache::usable_size(p as usize)
}

/// `free(p)`; null is a no-op.
///
/// # Safety
/// `p` must be null or an object from this allocator that is still live
/// (violations spanalloc can detect abort with a report).
#[inline]
pub unsafe fn free(p: *mut u8) {
    if p.is_null() {
        return;
    }
    // SAFETY: one operation on this thread's cache.
    let (c, h) = unsafe { thread::current() };
    c.free_unsized(&h, p as usize)
}

/// The fast path of [`free`] alone: frees `p` and returns true if it is an
/// allocated small object of a span the calling thread's cache holds and
/// the cache has room for it; else does nothing and returns false (then
/// [`free`] does the rest). It makes no system call and takes no lock, so
/// a caller that must keep `errno` need not save it around this.
///
/// # Safety
/// As for [`free`].
#[inline]
pub unsafe fn free_fast(p: *mut u8) -> bool {
    // SAFETY: one operation on this thread's cache.
    let (c, h) = unsafe { thread::current() };
    c.free_unsized_fast(&h, p as usize)
}

/// `free_sized(p, size)` / `free_aligned_sized(p, align, size)`: as
/// [`free`], for a caller that states the size and alignment it allocated
/// with. The object must be able to hold that size, at that alignment (a
/// block that shrank in place by `realloc` keeps its object, so any size up
/// to the object's is accepted); anything else aborts with a report.
///
/// # Safety
/// As for [`free`].
#[inline]
pub unsafe fn free_sized(p: *mut u8, size: usize, align: usize) {
    if p.is_null() {
        return;
    }
    let usable = mcache::usable_size(p as usize);
    if size > usable || (align > 1 && !(p as usize).is_multiple_of(align)) {
        crate::report::layout_mismatch(p as usize, size, usable);
    }
    // SAFETY: the caller's contract; the size fits the object.
    unsafe { free(p) }
}

/// `realloc(p, size)` for `p` not null and `size` not zero (the C layer
/// handles those cases): in place when the size class allows, else moved
/// with its bytes; null (and `p` untouched) when out of memory.
///
/// # Safety
/// As for [`free`].
#[inline]
pub unsafe fn realloc(p: *mut u8, size: usize) -> *mut u8 {
    if size > isize::MAX as usize {
        return ptr::null_mut();
    }
    // SAFETY: forwarded from the caller.
    thread::with_cache(|c, h| unsafe { c.realloc_c(h, p as usize, size) })
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

    #[test]
    fn a_page_aligned_small_block_and_a_shrunk_block_are_freed_with_their_sizes() {
        // Aligned beyond a page: a large span of one page, freed unsized.
        let p = aligned_alloc(16 << 10, 100);
        assert_eq!(p as usize % (16 << 10), 0);
        unsafe { free(p) };
        // A block that shrank in place keeps its object; the size it was
        // shrunk to is a valid size to free it with.
        let q = malloc(100);
        let r = unsafe { realloc(q, 60) };
        assert_eq!(r, q, "shrinking by less than half stays in place");
        unsafe { free_sized(r, 60, 8) };
    }
}
