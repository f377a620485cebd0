//! Pointers spanalloc did not hand out, reaching `free`, `realloc` or
//! `malloc_usable_size`.
//!
//! They come from memory glibc allocated before the preload took over, from
//! libraries bound to glibc's malloc (`RTLD_DEEPBIND`), from programs that
//! mix allocators. The policy is read once, from `SPANALLOC_FOREIGN_FREE`,
//! with `getenv` (which does not allocate), by the library's constructor or
//! by the first call that needs it, whichever comes first:
//!
//! - unset, or `abort`: the core's report, `spanalloc: fatal: free of 0x...:
//!   spanalloc did not allocate this pointer`, and `abort()`. The check
//!   costs nothing on the fast path: the core finds no span for the pointer
//!   on the way it looks up the object's size anyway.
//! - `glibc`: every such pointer is asked about first (`raw::owns` reads
//!   only spanalloc's page tables, never the pointer); one spanalloc does not
//!   own goes to the next `free` in the lookup order (glibc's), found with
//!   `dlsym(RTLD_NEXT, ...)`; `realloc` copies it into a spanalloc block and
//!   frees it there; `malloc_usable_size` asks glibc's. The symbols are
//!   resolved by the constructor, outside any allocation; `dlsym` may
//!   itself call `malloc`, which is then an ordinary call.
//!
//! Any other value is reported on stderr and treated as `abort`.

use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use spanalloc_core::raw;

const UNKNOWN: u8 = 0;
/// Foreign pointers abort (the default).
pub(crate) const ABORT: u8 = 1;
/// Foreign pointers go to glibc.
const GLIBC: u8 = 2;

static POLICY: AtomicU8 = AtomicU8::new(UNKNOWN);
static GLIBC_FREE: AtomicUsize = AtomicUsize::new(0);
static GLIBC_USABLE: AtomicUsize = AtomicUsize::new(0);

type FreeFn = unsafe extern "C" fn(*mut libc::c_void);
type UsableFn = unsafe extern "C" fn(*mut libc::c_void) -> usize;

/// The policy; [`ABORT`] on the fast path's comparison.
#[inline(always)]
pub(crate) fn policy() -> u8 {
    POLICY.load(Ordering::Relaxed)
}

/// Reads the policy (and, for `glibc`, resolves glibc's functions), once.
pub(crate) fn init() -> u8 {
    let p = policy();
    if p != UNKNOWN {
        return p;
    }
    // SAFETY: the name is a NUL-terminated literal; getenv only reads.
    let v = unsafe { libc::getenv(c"SPANALLOC_FOREIGN_FREE".as_ptr()) };
    let chosen = if v.is_null() {
        ABORT
    } else {
        // SAFETY: getenv returned a NUL-terminated string.
        match unsafe { core::ffi::CStr::from_ptr(v) }.to_bytes() {
            b"glibc" => GLIBC,
            b"abort" | b"" => ABORT,
            _ => {
                crate::fatal::warn(
                    "SPANALLOC_FOREIGN_FREE is neither 'glibc' nor 'abort'; foreign pointers will abort",
                );
                ABORT
            }
        }
    };
    if chosen == GLIBC {
        resolve();
    }
    POLICY.store(chosen, Ordering::Relaxed);
    chosen
}

fn resolve() {
    // SAFETY: dlsym with RTLD_NEXT and NUL-terminated names.
    unsafe {
        GLIBC_FREE.store(libc::dlsym(libc::RTLD_NEXT, c"free".as_ptr()) as usize, Ordering::Relaxed);
        GLIBC_USABLE.store(libc::dlsym(libc::RTLD_NEXT, c"malloc_usable_size".as_ptr()) as usize, Ordering::Relaxed);
    }
}

/// Whether `p` (not null) is foreign and forwarding is on; the caller then
/// hands it to [`free`] / [`usable_size`] instead of the core. Call only
/// when [`policy`] is not [`ABORT`].
#[cold]
#[inline(never)]
pub(crate) fn forwards(p: *const u8) -> bool {
    init() == GLIBC && !raw::owns(p)
}

/// glibc's `free` of a foreign pointer.
pub(crate) unsafe fn free(p: *mut u8) {
    let f = GLIBC_FREE.load(Ordering::Relaxed);
    if f == 0 {
        crate::fatal::fatal("free of", p as usize, ": foreign pointer, and glibc's free was not found");
    }
    // SAFETY: a non-null value is glibc's `free`; the pointer is glibc's.
    unsafe { core::mem::transmute::<usize, FreeFn>(f)(p.cast()) }
}

/// glibc's `malloc_usable_size` of a foreign pointer.
pub(crate) unsafe fn usable_size(p: *mut u8) -> usize {
    let f = GLIBC_USABLE.load(Ordering::Relaxed);
    if f == 0 {
        crate::fatal::fatal(
            "size query of",
            p as usize,
            ": foreign pointer, and glibc's malloc_usable_size was not found",
        );
    }
    // SAFETY: a non-null value is glibc's `malloc_usable_size`.
    unsafe { core::mem::transmute::<usize, UsableFn>(f)(p.cast()) }
}
