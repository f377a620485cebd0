//! corosensei coroutines on spanalloc stacks: thousands suspended at once,
//! each costing about one resident page, all resumed to completion; and a
//! coroutine that overflows its stack is reported as such (in a child
//! process), while other faults go to the handler that was there before.

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
    let stack = Stack::new(16 << 10).unwrap();
    println!("\nstack {:#x}-{:#x}", stack.bottom(), stack.top());
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    let mut c = Coroutine::with_stack(stack, |_: &corosensei::Yielder<(), ()>, ()| recurse(0));
    let _ = c.resume(());
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
fn other_faults_go_to_the_previous_handler() {
    let out = run_child(CASE_VAR, "other-fault");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGSEGV), "{stderr}");
    assert!(!stderr.contains("spanalloc"), "{stderr}");
}
