//! spanalloc works in the corners of a process's life: before `main`, in
//! thread-local and pthread-key destructors (after the thread's cache was
//! flushed), on threads std did not create, and in the child of a `fork`
//! taken while other threads were allocating.

#[global_allocator]
static A: spanalloc::SpanAlloc = spanalloc::SpanAlloc;

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;

static BEFORE_MAIN: AtomicUsize = AtomicUsize::new(0);

extern "C" fn before_main() {
    let v: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
    let total: usize = v.iter().map(String::len).sum();
    BEFORE_MAIN.store(total, Ordering::SeqCst);
}

#[used]
#[unsafe(link_section = ".init_array")]
static INIT: extern "C" fn() = before_main;

#[test]
fn allocates_before_main() {
    assert_eq!(BEFORE_MAIN.load(Ordering::SeqCst), 10 + 90 * 2 + 900 * 3);
}

struct AllocatesOnDrop(Vec<String>);

impl Drop for AllocatesOnDrop {
    fn drop(&mut self) {
        let more: Vec<Box<[u8; 200]>> = (0..100).map(|i| Box::new([i as u8; 200])).collect();
        self.0.extend(more.iter().map(|b| b[0].to_string()));
        assert_eq!(self.0.len(), 200);
        DROPS.fetch_add(1, Ordering::SeqCst);
    }
}

static DROPS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static ON_EXIT: RefCell<AllocatesOnDrop> = const { RefCell::new(AllocatesOnDrop(Vec::new())) };
}

#[test]
fn thread_local_destructors_allocate_and_free() {
    let before = DROPS.load(Ordering::SeqCst);
    let handles: Vec<_> = (0..32)
        .map(|i| {
            thread::spawn(move || {
                ON_EXIT.with(|d| d.borrow_mut().0.extend((0..100).map(|j| format!("{i}/{j}"))));
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    // join() may return before the last destructors finished.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while DROPS.load(Ordering::SeqCst) < before + 32 && std::time::Instant::now() < deadline {
        thread::yield_now();
    }
    assert!(DROPS.load(Ordering::SeqCst) >= before + 32);
}

static KEY_DTOR_RAN: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C" fn key_destructor(arg: *mut libc::c_void) {
    // Runs after spanalloc's own key destructor flushed this thread's cache
    // (this key was created later), so these allocations take the fallback.
    let boxed = unsafe { Box::from_raw(arg as *mut Vec<String>) };
    let mut v = *boxed;
    v.extend((0..500).map(|i| format!("late {i}")));
    let bytes: Vec<Vec<u8>> = (0..50).map(|i| vec![i as u8; 5000]).collect();
    assert_eq!(v.len(), 600);
    assert_eq!(bytes[49][4999], 49);
    KEY_DTOR_RAN.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn allocates_in_a_pthread_key_destructor_after_the_cache_was_flushed() {
    let mut key: libc::pthread_key_t = 0;
    assert_eq!(unsafe { libc::pthread_key_create(&mut key, Some(key_destructor)) }, 0);
    let handles: Vec<_> = (0..8)
        .map(|_| {
            thread::spawn(move || {
                let v: Vec<String> = (0..100).map(|i| i.to_string()).collect();
                let raw = Box::into_raw(Box::new(v));
                unsafe { libc::pthread_setspecific(key, raw.cast()) };
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while KEY_DTOR_RAN.load(Ordering::SeqCst) < 8 && std::time::Instant::now() < deadline {
        thread::yield_now();
    }
    assert_eq!(KEY_DTOR_RAN.load(Ordering::SeqCst), 8);
}

extern "C" fn raw_thread(arg: *mut libc::c_void) -> *mut libc::c_void {
    let seed = arg as usize;
    let mut v: Vec<Vec<u64>> = Vec::new();
    for i in 0..10_000 {
        v.push(vec![(seed + i) as u64; i % 100 + 1]);
        if i % 3 == 0 {
            v.swap_remove(i % v.len());
        }
    }
    let sum: u64 = v.iter().map(|x| x[0]).sum();
    Box::into_raw(Box::new(sum)).cast()
}

#[test]
fn threads_not_created_by_std() {
    let mut ids = Vec::new();
    for seed in 0..16usize {
        let mut t: libc::pthread_t = 0;
        let rc = unsafe { libc::pthread_create(&mut t, std::ptr::null(), raw_thread, seed as *mut _) };
        assert_eq!(rc, 0);
        ids.push(t);
    }
    for t in ids {
        let mut out: *mut libc::c_void = std::ptr::null_mut();
        assert_eq!(unsafe { libc::pthread_join(t, &mut out) }, 0);
        let sum = unsafe { Box::from_raw(out as *mut u64) };
        assert!(*sum > 0);
    }
}

#[test]
fn fork_from_a_multithreaded_program_leaves_a_working_heap_in_the_child() {
    let stop = Arc::new(AtomicBool::new(false));
    let busy: Vec<_> = (0..4)
        .map(|t| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut keep = Vec::new();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    keep.push(vec![t as u8; (i % 40_000) + 1]);
                    if keep.len() > 200 {
                        keep.drain(..100);
                    }
                    i += 1;
                }
            })
        })
        .collect();
    for round in 0..30 {
        thread::sleep(std::time::Duration::from_millis(2));
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // The child: only this thread exists. Allocate a lot, of every
            // kind, then leave without running destructors.
            let strings: Vec<String> = (0..20_000).map(|i| format!("child {round} {i}")).collect();
            let big: Vec<Vec<u8>> = (0..20).map(|i| vec![i as u8; 200_000 + i]).collect();
            let ok = strings.len() == 20_000 && big[19][200_018] == 19;
            drop(strings);
            drop(big);
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child {round} status {status:#x}");
    }
    stop.store(true, Ordering::Relaxed);
    for b in busy {
        b.join().unwrap();
    }
}

/// Waits up to `secs` for child `pid`; kills it and returns `None` if it is
/// still running then.
fn wait_with_timeout(pid: libc::pid_t, secs: u64) -> Option<libc::c_int> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let mut status = 0;
        let got = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if got == pid {
            return Some(status);
        }
        if std::time::Instant::now() > deadline {
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return None;
        }
        thread::sleep(std::time::Duration::from_millis(2));
    }
}

#[test]
fn fork_while_other_threads_hold_an_explicit_heaps_locks_leaves_it_working_in_the_child() {
    // A heap of the program's own, busy on two threads that take its
    // mcentral and mheap locks all the time (refills, flushes, large
    // objects, release).
    let heap: &'static spanalloc::Heap = Box::leak(Box::new(spanalloc::Heap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let busy: Vec<_> = (0..2)
        .map(|t| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut cache = heap.cache();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let size = [48, 1000, 5000, 40_000, 300_000][(i + t) % 5];
                    let l = std::alloc::Layout::from_size_align(size, 8).unwrap();
                    let ptrs: Vec<*mut u8> = (0..20).map(|_| cache.alloc(l)).collect();
                    for p in ptrs {
                        unsafe { cache.dealloc(p, l) };
                    }
                    cache.flush();
                    if i.is_multiple_of(7) {
                        heap.release();
                    }
                    i += 1;
                }
            })
        })
        .collect();
    let mut hung = 0;
    for _ in 0..300 {
        if hung > 0 {
            break;
        }
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // The child uses the same heap: every lock it needs must be free.
            let mut cache = heap.cache();
            let ok = (0..5).all(|k| {
                let l = std::alloc::Layout::from_size_align([48, 1000, 5000, 40_000, 300_000][k], 8).unwrap();
                let p = cache.alloc(l);
                let fine = !p.is_null();
                unsafe { cache.dealloc(p, l) };
                fine
            });
            drop(cache);
            heap.release();
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        match wait_with_timeout(pid, 10) {
            Some(status) => {
                assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child status {status:#x}")
            }
            None => hung += 1,
        }
    }
    stop.store(true, Ordering::Relaxed);
    for b in busy {
        b.join().unwrap();
    }
    assert_eq!(hung, 0, "a child hung on a lock of the explicit heap");
}
