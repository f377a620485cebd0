//! corosensei coroutines on spanalloc stacks: thousands suspended at once,
//! each costing about one resident page, all resumed to completion; and a
//! coroutine that overflows its stack is reported as such (in a child
//! process), also on a thread std did not make that runs a stack or a
//! coroutine another thread made, while other faults go to the handler that
//! was there before.

#![cfg(feature = "corosensei")]

#[global_allocator]
static A: spanalloc::SpanAlloc = spanalloc::SpanAlloc;

use std::os::unix::process::ExitStatusExt;

use corosensei::{Coroutine, CoroutineResult};
use spanalloc::stack::Stack;
use support::{abort_report, printed, rss_kib, run_child};

mod support;

#[test]
fn thousands_of_suspended_coroutines_cost_about_a_page_each_and_all_complete() {
    const N: usize = 5_000;
    let warm: Vec<Stack> = (0..N).map(|_| Stack::new(16 << 10).unwrap()).collect();
    drop(warm); // slabs carved, guards installed: measure the coroutines only
    let mut coroutines = Vec::with_capacity(N);
    let before = rss_kib();
    for i in 0..N {
        let mut c =
            Coroutine::with_stack(Stack::new(16 << 10).unwrap(), move |y: &corosensei::Yielder<u64, u64>, x: u64| {
                let got = y.suspend(x + i as u64);
                got * 2
            });
        match c.resume(1) {
            CoroutineResult::Yield(v) => assert_eq!(v, 1 + i as u64),
            CoroutineResult::Return(_) => panic!("returned early"),
        }
        coroutines.push(c);
    }
    let per = (rss_kib() - before) as f64 * 1024.0 / N as f64;
    eprintln!("{per:.0} bytes of RSS per suspended coroutine");
    assert!(per < 6.0 * 1024.0, "{per} bytes per suspended coroutine");
    let s = spanalloc::stats();
    assert!(s.stacks.in_use >= N as u64, "{:?}", s.stacks);
    for (i, c) in coroutines.iter_mut().enumerate() {
        match c.resume(i as u64) {
            CoroutineResult::Return(v) => assert_eq!(v, 2 * i as u64),
            CoroutineResult::Yield(_) => panic!("yielded twice"),
        }
    }
    drop(coroutines);
}

#[test]
fn stacks_of_finished_coroutines_are_freed_on_another_thread_and_reused() {
    let mut cs: Vec<Coroutine<(), (), u32, Stack>> = (0..200)
        .map(|i| {
            Coroutine::with_stack(Stack::new(32 << 10).unwrap(), move |y: &corosensei::Yielder<(), ()>, ()| {
                y.suspend(());
                i
            })
        })
        .collect();
    for c in &mut cs {
        assert!(matches!(c.resume(()), CoroutineResult::Yield(())));
    }
    let mut sum = 0;
    let mut stacks = Vec::new();
    for mut c in cs {
        if let CoroutineResult::Return(v) = c.resume(()) {
            sum += v;
        }
        stacks.push(c.into_stack());
    }
    assert_eq!(sum, (0..200).sum::<u32>());
    let tops: std::collections::HashSet<usize> = stacks.iter().map(Stack::top).collect();
    std::thread::spawn(move || drop(stacks)).join().unwrap();
    let again: Vec<Stack> = (0..200).map(|_| Stack::new(32 << 10).unwrap()).collect();
    assert_eq!(again.iter().filter(|s| tops.contains(&s.top())).count(), 200);
}

const CASE_VAR: &str = "SPANALLOC_COROUTINE_CASE";

#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let frame = [depth; 64];
    std::hint::black_box(&frame);
    if depth == u64::MAX { 0 } else { recurse(depth + 1) + frame[depth as usize % 64] }
}

extern "C" fn overflow_on_a_bare_thread(_: *mut libc::c_void) -> *mut libc::c_void {
    overflow_in_a_coroutine();
    std::ptr::null_mut()
}

fn overflow_in_a_coroutine() {
    let stack = new_stack_named();
    let mut c = Coroutine::with_stack(stack, |_: &corosensei::Yielder<(), ()>, ()| recurse(0));
    let _ = c.resume(());
}

/// A stack, its range printed for the parent to find in the report.
fn new_stack_named() -> Stack {
    let stack = Stack::new(16 << 10).unwrap();
    println!("\nstack {:#x}-{:#x}", stack.bottom(), stack.top());
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    stack
}

/// Moves a value to another thread although its type is not `Send`: a
/// coroutine that has not started yet and whose closure captures nothing.
struct Unstarted<T>(T);

// SAFETY: see above; nothing in it refers to the thread that made it.
unsafe impl<T> Send for Unstarted<T> {}

/// Runs `f` on a thread made with `pthread_create`, which std has given no
/// alternate signal stack and which has done no spanalloc stack operation
/// before `f` (it checks that it has no alternate stack).
fn on_a_bare_thread(f: Box<dyn FnOnce() + Send>) {
    extern "C" fn start(arg: *mut libc::c_void) -> *mut libc::c_void {
        let f = unsafe { Box::from_raw(arg.cast::<Box<dyn FnOnce() + Send>>()) };
        let mut current: libc::stack_t = unsafe { std::mem::zeroed() };
        unsafe { libc::sigaltstack(std::ptr::null(), &mut current) };
        if current.ss_flags & libc::SS_DISABLE == 0 {
            println!("\nthe bare thread has an alternate signal stack");
            std::process::exit(4);
        }
        f();
        std::ptr::null_mut()
    }
    let arg = Box::into_raw(Box::new(f));
    let mut t: libc::pthread_t = 0;
    unsafe {
        assert_eq!(libc::pthread_create(&mut t, std::ptr::null(), start, arg.cast()), 0);
        libc::pthread_join(t, std::ptr::null_mut());
    }
}

/// Runs `entry` on `stack` with `swapcontext`, the way a runtime that
/// switches stacks itself would (no corosensei: no spanalloc code runs at
/// the switch).
fn switch_with_ucontext(stack: &Stack, entry: extern "C" fn()) {
    unsafe {
        let mut back: libc::ucontext_t = std::mem::zeroed();
        let mut on_stack: libc::ucontext_t = std::mem::zeroed();
        assert_eq!(libc::getcontext(&mut on_stack), 0);
        on_stack.uc_stack.ss_sp = stack.bottom() as *mut libc::c_void;
        on_stack.uc_stack.ss_size = stack.size();
        on_stack.uc_link = &mut back;
        libc::makecontext(&mut on_stack, entry, 0);
        assert_eq!(libc::swapcontext(&mut back, &on_stack), 0);
    }
}

extern "C" fn recurse_forever() {
    recurse(0);
}

#[test]
fn child_entry() {
    let Ok(case) = std::env::var(CASE_VAR) else { return };
    match case.as_str() {
        "overflow" => overflow_in_a_coroutine(),
        "overflow-bare-thread" => {
            // A thread std did not create: no alternate signal stack until
            // spanalloc gives it one.
            let mut t: libc::pthread_t = 0;
            unsafe {
                libc::pthread_create(&mut t, std::ptr::null(), overflow_on_a_bare_thread, std::ptr::null_mut());
                libc::pthread_join(t, std::ptr::null_mut());
            }
        }
        "overflow-stack-from-another-thread" => {
            // Made here, run by a coroutine a bare thread makes.
            let stack = new_stack_named();
            on_a_bare_thread(Box::new(move || {
                let mut c = Coroutine::with_stack(stack, |_: &corosensei::Yielder<(), ()>, ()| recurse(0));
                let _ = c.resume(());
            }));
        }
        "overflow-coroutine-from-another-thread" => {
            // Stack and coroutine made here, resumed by a bare thread.
            let c = Coroutine::with_stack(new_stack_named(), |_: &corosensei::Yielder<(), ()>, ()| recurse(0));
            let c = Unstarted(c);
            on_a_bare_thread(Box::new(move || {
                let mut c = c;
                let _ = c.0.resume(());
            }));
        }
        "overflow-own-switch" => {
            // A runtime that switches stacks itself prepares its threads.
            let stack = new_stack_named();
            on_a_bare_thread(Box::new(move || {
                spanalloc::stack::prepare_thread();
                switch_with_ucontext(&stack, recurse_forever);
            }));
        }
        "overflow-big-after-reuse" => {
            // A big stack freed on another thread frees its entry in the
            // overflow table; the next big stack takes it.
            let old = Stack::new(9 << 20).unwrap();
            std::thread::spawn(move || drop(old)).join().unwrap();
            let stack = Stack::new(10 << 20).unwrap();
            println!("\nstack {:#x}-{:#x}", stack.bottom(), stack.top());
            use std::io::Write;
            std::io::stdout().flush().unwrap();
            let mut c = Coroutine::with_stack(stack, |_: &corosensei::Yielder<(), ()>, ()| recurse(0));
            let _ = c.resume(());
        }
        "other-fault" => {
            let _stack = Stack::new(16 << 10).unwrap(); // installs the handler
            println!("\nstack 0x0-0x0");
            unsafe { std::ptr::read_volatile(16 as *const u64) };
        }
        other => panic!("unknown case {other}"),
    }
    println!("no fault");
    std::process::exit(3);
}

fn expect_overflow_report(case: &str) {
    let out = run_child(CASE_VAR, case);
    let range = printed(&out, "stack ");
    let line = abort_report(case, &out, "spanalloc: fatal: coroutine stack overflow");
    assert!(line.contains(&range), "{case}: report {line:?} does not name the stack {range}");
}

#[test]
fn an_overflowing_coroutine_is_reported_with_its_stack() {
    expect_overflow_report("overflow");
}

#[test]
fn an_overflow_on_a_thread_without_an_alternate_stack_is_reported() {
    expect_overflow_report("overflow-bare-thread");
}

#[test]
fn an_overflow_is_reported_on_a_bare_thread_running_a_stack_another_thread_made() {
    expect_overflow_report("overflow-stack-from-another-thread");
}

#[test]
fn an_overflow_is_reported_on_a_bare_thread_resuming_a_coroutine_another_thread_made() {
    expect_overflow_report("overflow-coroutine-from-another-thread");
}

#[test]
fn an_overflow_is_reported_on_a_prepared_thread_that_switches_stacks_itself() {
    expect_overflow_report("overflow-own-switch");
}

#[test]
fn an_overflow_of_a_big_stack_that_reused_a_freed_entry_names_the_new_stack() {
    expect_overflow_report("overflow-big-after-reuse");
}

#[test]
fn other_faults_go_to_the_previous_handler() {
    let out = run_child(CASE_VAR, "other-fault");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGSEGV), "{stderr}");
    assert!(!stderr.contains("spanalloc"), "{stderr}");
}

#[test]
fn a_heap_profile_sample_taken_on_a_coroutine_stack_has_its_call_stack() {
    spanalloc::profile::set_rate(1);
    // A sample on the thread's own stack first, so that the walk knows
    // the thread's bounds when the coroutine runs.
    let warm = std::hint::black_box(vec![1u8; 5000]);
    let mut c = Coroutine::with_stack(Stack::new(64 << 10).unwrap(), |_: &corosensei::Yielder<(), ()>, ()| {
        (0..100).map(|i| vec![i as u8 | 1; 2688].into_boxed_slice()).collect::<Vec<_>>()
    });
    let CoroutineResult::Return(kept) = c.resume(()) else { panic!("the coroutine yielded") };
    let p = spanalloc::profile::snapshot();
    spanalloc::profile::set_rate(0);
    // The 100 objects (and the vector) were allocated on the coroutine's
    // stack: at rate 1 each is a sample, and each sample has its stack.
    let with_frames: u64 = p.records.iter().filter(|r| !r.frames.is_empty()).map(|r| r.inuse_objects).sum();
    let without: u64 = p.records.iter().filter(|r| r.frames.is_empty()).map(|r| r.inuse_objects).sum();
    assert!(with_frames >= 100, "{with_frames} live samples with a call stack, {without} without");
    drop((kept, warm));
}
