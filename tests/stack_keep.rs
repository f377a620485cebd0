//! `stack::set_resident_keep` takes any value: `usize::MAX` (or anything at
//! least a stack's size) keeps every touched page of a pooled stack, 0 keeps
//! none, and an odd size keeps whole pages at the stack's top. Both ways a
//! stack gives pages back are checked: dropping a large one (over 256 KiB,
//! released at once) and a small one leaving a thread's cache (released
//! when the cache drains to the pool).
//!
//! The keep is a process-wide setting, so these cases live in a test binary
//! of their own and run one after another.

#[global_allocator]
static A: spanalloc::SpanAlloc = spanalloc::SpanAlloc;

use spanalloc::stack::{self, Stack};

const PAGE: usize = 4096;

/// Resident bytes of the stack's usable range, and whether they are all at
/// its top (a kept part is the top of the stack, where it starts running).
fn resident(s: &Stack) -> (usize, bool) {
    let mut vec = vec![0u8; s.size() / PAGE];
    let rc = unsafe { libc::mincore(s.bottom() as *mut libc::c_void, s.size(), vec.as_mut_ptr()) };
    assert_eq!(rc, 0);
    let n = vec.iter().filter(|&&b| b & 1 != 0).count();
    let at_top = vec[vec.len() - n..].iter().all(|&b| b & 1 != 0);
    (n * PAGE, at_top)
}

fn touch_all(s: &Stack) {
    unsafe { std::ptr::write_bytes(s.bottom() as *mut u8, 0x5a, s.size()) };
}

/// What a stack of `size` bytes should keep with `keep` set.
fn expected(keep: usize, size: usize) -> usize {
    keep.checked_next_multiple_of(PAGE).unwrap_or(usize::MAX).min(size)
}

/// A 1 MiB stack, touched and dropped on this thread, comes back from this
/// thread's cache keeping what `keep` says.
fn large_stack_dropped(keep: usize) {
    let s = Stack::new(1 << 20).unwrap();
    touch_all(&s);
    let top = s.top();
    drop(s);
    let s = Stack::new(1 << 20).unwrap();
    assert_eq!(s.top(), top, "the stack just dropped comes back first");
    let (bytes, at_top) = resident(&s);
    assert_eq!(bytes, expected(keep, s.size()), "keep {keep}: resident bytes of a dropped 1 MiB stack");
    assert!(at_top, "keep {keep}: the kept pages are the stack's top");
}

/// A 64 KiB stack, touched and dropped on a thread that then exits (its
/// cache drains to the pool), is taken back from the pool here keeping what
/// `keep` says.
fn small_stack_drained(keep: usize) {
    let top = std::thread::spawn(|| {
        let s = Stack::new(64 << 10).unwrap();
        touch_all(&s);
        s.top()
    })
    .join()
    .expect("the thread that dropped the stack panicked");
    let taken: Vec<Stack> = (0..8).map(|_| Stack::new(64 << 10).unwrap()).collect();
    let s = taken.iter().find(|s| s.top() == top).expect("the drained stack is back in the pool");
    let (bytes, at_top) = resident(s);
    assert_eq!(bytes, expected(keep, s.size()), "keep {keep}: resident bytes of a drained 64 KiB stack");
    assert!(at_top, "keep {keep}: the kept pages are the stack's top");
}

#[test]
fn any_resident_keep_is_accepted_and_max_keeps_every_page() {
    for keep in [usize::MAX, 0, 5000, usize::MAX - PAGE, (3 << 20) + 1, 16 << 10] {
        stack::set_resident_keep(keep);
        large_stack_dropped(keep);
        small_stack_drained(keep);
    }
}
