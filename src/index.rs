//! Cache indices: every live mcache, in any heap of the process, has an
//! index of its own, and the page tags of the spans it holds name it (see
//! [`crate::arena::cache_tag`]). So a free finds out that the object is
//! its own cache's with one compare, and a pointer from another heap or
//! another cache never matches.
//!
//! Indices run from 1 to [`MAX_TAG_INDEX`]; a cache gives its index back
//! when it is dropped (or its thread exits), and the next cache reuses it.
//! Given-back indices form a free list threaded through a table of `u32`
//! links reserved once (64 MiB of address space, touched only as far as
//! indices were used), so any number of them can be free at once.
//!
//! The pool's lock is held for a few instructions and never while calling
//! anything; the `fork` handlers take it so that a child never inherits it
//! held.

use crate::arena::MAX_TAG_INDEX;
use crate::os;
use crate::sync::unmodelled::{AtomicPtr, Ordering, SpinLock};

struct Pool {
    /// Indices never handed out start here.
    next: u32,
    /// The most recently given-back index (0: none).
    free: u32,
}

static LOCK: SpinLock = SpinLock::new();
/// Under `LOCK`.
static mut POOL: Pool = Pool { next: 1, free: 0 };
/// `LINKS[i]`: the free index after `i` on the free list.
static LINKS: AtomicPtr<u32> = AtomicPtr::new(core::ptr::null_mut());

fn links() -> Option<*mut u32> {
    let t = LINKS.load(Ordering::Acquire);
    if !t.is_null() {
        return Some(t);
    }
    let bytes = (MAX_TAG_INDEX as usize + 1) * size_of::<u32>();
    let fresh = os::map(bytes)?.cast::<u32>();
    match LINKS.compare_exchange(core::ptr::null_mut(), fresh, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => Some(fresh),
        Err(other) => {
            os::unmap(fresh.cast(), bytes);
            Some(other)
        }
    }
}

/// An index for a new cache, distinct from every live cache's; 0 when the
/// kernel refuses the table or every index is taken.
pub(crate) fn take() -> u32 {
    let Some(links) = links() else {
        return 0;
    };
    LOCK.lock();
    // SAFETY: POOL is only touched under LOCK; the link table holds an
    // entry for every index.
    let index = unsafe {
        let pool = &mut *core::ptr::addr_of_mut!(POOL);
        if pool.free != 0 {
            let i = pool.free;
            pool.free = *links.add(i as usize);
            i
        } else if pool.next <= MAX_TAG_INDEX {
            pool.next += 1;
            pool.next - 1
        } else {
            0
        }
    };
    // SAFETY: taken above.
    unsafe { LOCK.unlock() };
    index
}

/// Gives back the index of a cache that is gone (0 is ignored).
pub(crate) fn give(index: u32) {
    if index == 0 {
        return;
    }
    let Some(links) = links() else {
        return;
    };
    LOCK.lock();
    // SAFETY: under LOCK; index <= MAX_TAG_INDEX has an entry.
    unsafe {
        let pool = &mut *core::ptr::addr_of_mut!(POOL);
        *links.add(index as usize) = pool.free;
        pool.free = index;
        LOCK.unlock();
    }
}

/// The pool's lock, for `fork`.
#[cfg(not(loom))]
pub(crate) fn lock_for_fork() -> &'static SpinLock {
    &LOCK
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn indices_are_distinct_and_any_number_can_be_given_back_and_reused() {
        let taken: Vec<u32> = (0..5000).map(|_| take()).collect();
        assert!(taken.iter().all(|&i| i != 0));
        let mut sorted = taken.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), taken.len(), "an index handed out twice");
        // More than any fixed-size free list would hold.
        for &i in &taken {
            give(i);
        }
        let again: Vec<u32> = (0..5000).map(|_| take()).collect();
        let mut a = again.clone();
        a.sort();
        a.dedup();
        assert_eq!(a.len(), again.len(), "an index handed out twice");
        // Other tests take and give indices meanwhile; most come back.
        let reused = again.iter().filter(|i| sorted.binary_search(i).is_ok()).count();
        assert!(reused > 4000, "given-back indices are reused before new ones ({reused} of 5000)");
        for &i in &again {
            give(i);
        }
    }
}
