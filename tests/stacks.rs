//! Coroutine stacks: sizes round up to classes, stacks are reused through
//! the thread caches and pools (also when freed on another thread), reuse
//! gives memory back, guards sit below every stack, running out of memory
//! mappings is a clear error, and signals that are not overflows reach the
//! handler (or the action) that was there before spanalloc's.

#[global_allocator]
static A: spanalloc::SpanAlloc = spanalloc::SpanAlloc;

use std::collections::HashSet;
use std::os::unix::process::ExitStatusExt;

use spanalloc::stack::{Stack, StackError};

mod support;

#[test]
fn sizes_round_up_to_a_class_and_the_guard_sits_below() {
    for (asked, got) in
        [(1, 16 << 10), (16 << 10, 16 << 10), (20_000, 32 << 10), (1 << 20, 1 << 20), ((3 << 20) + 1, 4 << 20)]
    {
        let s = Stack::new(asked).unwrap();
        assert_eq!(s.size(), got, "asked {asked}");
        assert_eq!(s.top() - s.bottom(), s.size());
        assert!(s.limit() < s.bottom(), "a guard below the stack");
        assert_eq!(s.top() % 16, 0);
        // The whole usable range is writable.
        unsafe {
            (s.bottom() as *mut u8).write(1);
            ((s.top() - 1) as *mut u8).write(2);
        }
    }
    // Larger than the largest class: a mapping of its own, whole pages.
    let big = Stack::new((8 << 20) + 100).unwrap();
    assert!(big.size() >= (8 << 20) + 100);
    assert_eq!(big.size() % 4096, 0);
    unsafe { (big.bottom() as *mut u8).write(3) };
}

#[test]
fn absurd_sizes_are_an_error_not_a_crash() {
    assert!(matches!(Stack::new(usize::MAX), Err(StackError::TooLarge { .. })));
    assert!(Stack::new(isize::MAX as usize).is_err());
}

#[test]
fn stacks_are_distinct_and_reused_through_the_caches() {
    let first: Vec<Stack> = (0..200).map(|_| Stack::new(64 << 10).unwrap()).collect();
    let addrs: HashSet<usize> = first.iter().map(Stack::top).collect();
    assert_eq!(addrs.len(), 200, "a stack handed out twice");
    // Non-overlapping.
    let mut ranges: Vec<(usize, usize)> = first.iter().map(|s| (s.limit(), s.top())).collect();
    ranges.sort();
    assert!(ranges.windows(2).all(|w| w[0].1 <= w[1].0));
    drop(first);
    let again: Vec<Stack> = (0..200).map(|_| Stack::new(64 << 10).unwrap()).collect();
    let reused = again.iter().filter(|s| addrs.contains(&s.top())).count();
    assert_eq!(reused, 200, "freed stacks are reused before new ones are made");
}

#[test]
fn stacks_freed_on_another_thread_come_back() {
    // A class no other test here uses (tests run in parallel).
    let made: Vec<Stack> = (0..500).map(|_| Stack::new(128 << 10).unwrap()).collect();
    let addrs: HashSet<usize> = made.iter().map(Stack::top).collect();
    // Freed on other threads (their caches drain to the pool at exit).
    let (a, b): (Vec<_>, Vec<_>) = made.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let t1 = std::thread::spawn(move || drop(a));
    let t2 = std::thread::spawn(move || drop(b));
    t1.join().unwrap();
    t2.join().unwrap();
    let again: Vec<Stack> = (0..500).map(|_| Stack::new(128 << 10).unwrap()).collect();
    let back = again.iter().filter(|s| addrs.contains(&s.top())).count();
    assert_eq!(back, 500, "stacks came back to the pool");
}

#[test]
fn a_stack_dropped_by_a_thread_local_destructor_goes_back_to_the_pool() {
    thread_local! {
        static HELD: std::cell::RefCell<Option<Stack>> = const { std::cell::RefCell::new(None) };
    }
    // A class no other test here uses (tests run in parallel).
    let top = std::thread::spawn(|| {
        let s = Stack::new(512 << 10).unwrap();
        let top = s.top();
        HELD.with(|h| *h.borrow_mut() = Some(s));
        top
    })
    .join()
    .unwrap();
    let again: Vec<Stack> = (0..4).map(|_| Stack::new(512 << 10).unwrap()).collect();
    assert!(again.iter().any(|s| s.top() == top), "the stack dropped at thread exit was not reused");
}

#[test]
fn a_stack_dropped_after_spanalloc_flushed_the_exiting_thread_goes_back_to_the_pool() {
    // A key made after spanalloc's: glibc runs its destructor after the
    // one that flushes the thread's caches.
    unsafe extern "C" fn drop_stack(p: *mut libc::c_void) {
        drop(unsafe { Box::from_raw(p.cast::<Stack>()) });
    }
    let mut key: libc::pthread_key_t = 0;
    drop(Stack::new(16 << 10).unwrap()); // spanalloc's key exists
    assert_eq!(unsafe { libc::pthread_key_create(&mut key, Some(drop_stack)) }, 0);
    // A class no other test here uses.
    let top = std::thread::spawn(move || {
        let s = Box::new(Stack::new(2 << 20).unwrap());
        let top = s.top();
        unsafe { libc::pthread_setspecific(key, Box::into_raw(s).cast()) };
        top
    })
    .join()
    .unwrap();
    let again: Vec<Stack> = (0..4).map(|_| Stack::new(2 << 20).unwrap()).collect();
    assert!(again.iter().any(|s| s.top() == top), "the stack dropped after the flush was not reused");
}

#[test]
fn a_reused_stack_gives_back_its_touched_pages() {
    // Touch 1 MiB stacks all the way down, then free them: once they leave
    // the thread cache, at most the kept top stays resident.
    let resident = |stacks: &[Stack]| -> usize {
        let page = 4096;
        let mut n = 0;
        for s in stacks {
            let len = s.size();
            let mut vec = vec![0u8; len / page];
            unsafe { libc::mincore(s.bottom() as *mut libc::c_void, len, vec.as_mut_ptr()) };
            n += vec.iter().filter(|&&b| b & 1 != 0).count() * page;
        }
        n
    };
    let stacks: Vec<Stack> = (0..8).map(|_| Stack::new(1 << 20).unwrap()).collect();
    for s in &stacks {
        unsafe { std::ptr::write_bytes(s.bottom() as *mut u8, 7, s.size()) };
    }
    assert_eq!(resident(&stacks), 8 << 20);
    let tops: Vec<usize> = stacks.iter().map(Stack::top).collect();
    drop(stacks);
    let again: Vec<Stack> = (0..8).map(|_| Stack::new(1 << 20).unwrap()).collect();
    assert!(again.iter().all(|s| tops.contains(&s.top())));
    let kept = resident(&again);
    assert!(kept <= 8 * (16 << 10), "{kept} bytes still resident in 8 reused stacks");
    let s = spanalloc::stats();
    assert!(s.stacks.reserved_bytes >= 8 << 20);
    assert!(s.stacks.in_use >= 8);
}

const CASE_VAR: &str = "SPANALLOC_STACKS_CASE";

/// The children: each case installs what it needs, makes a stack (which
/// installs spanalloc's overflow handler over the one that was there), and
/// does what its test checks.
#[test]
fn child_entry() {
    let Ok(case) = std::env::var(CASE_VAR) else { return };
    match case.as_str() {
        "map-limit" => map_limit(),
        "chain-plain-handler" => {
            set_handler(libc::SIGSEGV, plain_handler as *const () as usize, 0);
            fault_outside_any_guard();
        }
        "chain-siginfo-handler" => {
            set_handler(libc::SIGSEGV, siginfo_handler as *const () as usize, libc::SA_SIGINFO);
            fault_outside_any_guard();
        }
        "chain-default-fault" => {
            set_handler(libc::SIGSEGV, libc::SIG_DFL, 0);
            fault_outside_any_guard();
        }
        "chain-default-sent" => {
            set_handler(libc::SIGSEGV, libc::SIG_DFL, 0);
            let _stack = Stack::new(16 << 10).unwrap();
            unsafe { libc::raise(libc::SIGSEGV) };
        }
        "chain-ignored-sent" => {
            set_handler(libc::SIGSEGV, libc::SIG_IGN, 0);
            let _stack = Stack::new(16 << 10).unwrap();
            for _ in 0..2 {
                unsafe { libc::raise(libc::SIGSEGV) };
            }
            println!("\nignored");
            std::process::exit(0);
        }
        "chain-sigbus" => {
            let _stack = Stack::new(16 << 10).unwrap();
            // A page of a mapping past the end of its (empty) file.
            let fd = unsafe { libc::memfd_create(c"empty".as_ptr(), 0) };
            let p = unsafe { libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_READ, libc::MAP_SHARED, fd, 0) };
            assert_ne!(p, libc::MAP_FAILED);
            unsafe { std::ptr::read_volatile(p as *const u8) };
        }
        other => panic!("unknown case {other}"),
    }
    println!("\nno signal");
    std::process::exit(3);
}

fn set_handler(sig: libc::c_int, handler: usize, flags: libc::c_int) {
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler;
        action.sa_flags = flags;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(libc::sigaction(sig, &action, std::ptr::null_mut()), 0);
    }
}

/// Makes a stack (so spanalloc's handler goes in over the one set), then
/// reads an address no mapping covers.
fn fault_outside_any_guard() {
    let _stack = Stack::new(16 << 10).unwrap();
    unsafe { std::ptr::read_volatile(0x10 as *const u64) };
}

/// Says it ran (async-signal-safe) and ends the process with 42.
extern "C" fn plain_handler(sig: libc::c_int) {
    let msg: &[u8] = if sig == libc::SIGSEGV { b"\nplain handler: SIGSEGV\n" } else { b"\nplain handler: ?\n" };
    unsafe {
        libc::write(1, msg.as_ptr().cast(), msg.len());
        libc::_exit(42);
    }
}

/// Says where the fault was (async-signal-safe) and ends the process with 43.
extern "C" fn siginfo_handler(_sig: libc::c_int, info: *mut libc::siginfo_t, _context: *mut libc::c_void) {
    let addr = unsafe { (*info).si_addr() } as usize;
    let msg: &[u8] =
        if addr == 0x10 { b"\nsiginfo handler: fault at 0x10\n" } else { b"\nsiginfo handler: elsewhere\n" };
    unsafe {
        libc::write(1, msg.as_ptr().cast(), msg.len());
        libc::_exit(43);
    }
}

/// Uses up the process's memory mappings, then asks for stacks: of a class
/// no thread has used yet (a new slab needs a new mapping), too large for a
/// slab (a mapping of its own), and of a class whose slab has room. Then
/// gives a few mappings back and asks again.
fn map_limit() {
    // Made before the mappings run out: a slab of this class with room.
    drop(Stack::new(16 << 10).unwrap());
    let page = 4096;
    let mut fillers: Vec<usize> = Vec::with_capacity(1 << 20);
    loop {
        // Alternate protections so neighbouring mappings cannot merge.
        let prot = if fillers.len().is_multiple_of(2) { libc::PROT_READ } else { libc::PROT_READ | libc::PROT_WRITE };
        let p = unsafe { libc::mmap(std::ptr::null_mut(), page, prot, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0) };
        if p == libc::MAP_FAILED || fillers.len() == fillers.capacity() {
            break;
        }
        fillers.push(p as usize);
    }
    let maps = fillers.len();
    let outcome = |size: usize| match Stack::new(size) {
        Err(e @ StackError::MapLimit { .. }) => format!("map limit ({e})"),
        Err(e) => format!("unexpected error {e:?}"),
        Ok(s) => {
            unsafe { ((s.top() - 1) as *mut u8).write(1) };
            "ok".to_string()
        }
    };
    println!("\nerror after {maps} mappings: {}", outcome(4 << 20));
    println!("\nbig stack at the limit: {}", outcome(16 << 20));
    println!("\nstack with room in its slab at the limit: {}", outcome(16 << 10));
    for &p in fillers.iter().rev().take(16) {
        unsafe { libc::munmap(p as *mut libc::c_void, page) };
    }
    println!("\nnew slab after the limit: {}", outcome(4 << 20));
    println!("\nbig stack after the limit: {}", outcome(16 << 20));
    std::process::exit(0);
}

#[test]
fn running_out_of_mappings_is_an_error_naming_vm_max_map_count_and_stacks_come_again_once_mappings_free_up() {
    let out = support::run_child(CASE_VAR, "map-limit");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child died: {:?}\n{stdout}", out.status.signal());
    let first = support::printed(&out, "error after ");
    assert!(first.contains("map limit") && first.contains("vm.max_map_count"), "{first}");
    let at_limit = support::printed(&out, "big stack at the limit: ");
    assert!(at_limit.starts_with("map limit") && at_limit.contains("vm.max_map_count"), "{at_limit}");
    assert_eq!(support::printed(&out, "stack with room in its slab at the limit: "), "ok");
    assert_eq!(support::printed(&out, "new slab after the limit: "), "ok");
    assert_eq!(support::printed(&out, "big stack after the limit: "), "ok");
}

/// The child's exit code, signal, stdout and stderr.
fn run_case(case: &str) -> (Option<i32>, Option<i32>, String, String) {
    let out = support::run_child(CASE_VAR, case);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("spanalloc"), "{case}: a fault outside the guards was reported as ours: {stderr}");
    (out.status.code(), out.status.signal(), stdout, stderr)
}

#[test]
fn faults_outside_the_guards_go_to_a_plain_previous_handler() {
    let (code, _, stdout, stderr) = run_case("chain-plain-handler");
    assert_eq!(code, Some(42), "{stdout}\n{stderr}");
    assert!(stdout.contains("plain handler: SIGSEGV"), "{stdout}");
}

#[test]
fn faults_outside_the_guards_go_to_a_siginfo_previous_handler_with_their_address() {
    let (code, _, stdout, stderr) = run_case("chain-siginfo-handler");
    assert_eq!(code, Some(43), "{stdout}\n{stderr}");
    assert!(stdout.contains("siginfo handler: fault at 0x10"), "{stdout}");
}

#[test]
fn faults_outside_the_guards_take_the_default_action_when_there_was_no_handler() {
    let (_, signal, stdout, stderr) = run_case("chain-default-fault");
    assert_eq!(signal, Some(libc::SIGSEGV), "{stdout}\n{stderr}");
}

#[test]
fn a_sigsegv_sent_by_raise_takes_the_default_action_when_there_was_no_handler() {
    let (_, signal, stdout, stderr) = run_case("chain-default-sent");
    assert_eq!(signal, Some(libc::SIGSEGV), "{stdout}\n{stderr}");
}

#[test]
fn a_sent_sigsegv_stays_ignored_when_it_was_ignored() {
    let (code, _, stdout, stderr) = run_case("chain-ignored-sent");
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("ignored"), "{stdout}");
}

#[test]
fn a_sigbus_outside_the_guards_goes_to_the_previous_handler() {
    let (_, signal, stdout, stderr) = run_case("chain-sigbus");
    assert_eq!(signal, Some(libc::SIGBUS), "{stdout}\n{stderr}");
}
