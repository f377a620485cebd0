//! `fork` while another thread is inside the stack module's one-time set-up
//! (the overflow handler's install, which the first stack operation of the
//! process runs): the forked child must be able to make stacks, not spin
//! forever on a set-up it inherited half done.
//!
//! The set-up runs once per process, so each round needs a process in which
//! it is still ahead: a child of the test binary that has made no stack
//! forks a fresh copy of itself per round. In the copy, one thread makes
//! the first stack while the main thread forks a grandchild that makes a
//! stack too and exits; a grandchild that has not exited after 5 s hangs,
//! and is killed and counted.
//!
//! The set-up takes a microsecond or two, and `fork` copies the process's
//! memory at one moment some way into the call (60-200 us here), so the
//! race must be aimed: the racing thread starts from a `fork` prepare
//! handler of the round's own and waits a delay first, and the rounds sweep
//! the delay from 0 to 200 us in steps of a fifth of a microsecond. With
//! the set-up unguarded, some 5 rounds in 1000 hang on this machine.

#[global_allocator]
static A: spanalloc::SpanAlloc = spanalloc::SpanAlloc;

use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use spanalloc::stack::Stack;
use support::{printed, run_child};

mod support;

const CASE_VAR: &str = "SPANALLOC_STACK_FORK_CASE";
/// Rounds, each a fork racing the set-up.
const ROUNDS: usize = 1000;
/// A grandchild that has not exited by then hangs.
const GRANDCHILD_TIMEOUT: Duration = Duration::from_secs(1);
/// The delays the rounds sweep.
const DELAYS: Duration = Duration::from_micros(200);

/// How a round ended (its process's exit code).
const DONE: i32 = 10;
const HUNG: i32 = 12;
const FAILED: i32 = 13;

/// Set by the racing thread once it waits for [`GO`].
static READY: AtomicUsize = AtomicUsize::new(0);
/// Set by the round's own `fork` prepare handler: the racing thread starts.
static GO: AtomicUsize = AtomicUsize::new(0);

/// Runs first among the prepare handlers (they run in reverse order of
/// registration, and spanalloc registered its own long before), so the
/// racing thread starts as `fork` begins.
extern "C" fn release_the_racer() {
    GO.store(1, Ordering::Release);
}

/// The exit status of `pid`, or `None` if it has not exited by `timeout`
/// (then it is killed).
fn wait_for(pid: libc::pid_t, timeout: Duration) -> Option<libc::c_int> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc == pid {
            return Some(status);
        }
        if rc < 0 || Instant::now() > deadline {
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return None;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Reads a byte of every page of the process's code. A fresh copy of a
/// process has none of it mapped yet, and while `fork` copies the address
/// space a thread that faults a page in waits for the copy to end: the
/// racing thread would then always run the set-up after the copy, and
/// never race it.
fn map_in_code() {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 6 || !fields[1].starts_with("r-x") || !fields[5].starts_with('/') {
            continue;
        }
        let (lo, hi) = fields[0].split_once('-').unwrap();
        let (lo, hi) = (usize::from_str_radix(lo, 16).unwrap(), usize::from_str_radix(hi, 16).unwrap());
        for page in (lo..hi).step_by(4096) {
            unsafe { std::ptr::read_volatile(page as *const u8) };
        }
    }
}

/// One round, in a fresh copy of a process that has made no stack yet.
fn round(delay: Duration) -> i32 {
    map_in_code();
    // Written once here, so the racing thread's writes need no page fault.
    for flag in [&READY, &GO] {
        flag.store(0, Ordering::Relaxed);
    }
    let racer = std::thread::spawn(move || {
        // This thread's allocator set-up is done before the race: only the
        // stack set-up is left for it.
        std::hint::black_box(Box::new(0u64));
        READY.store(1, Ordering::Release);
        while GO.load(Ordering::Acquire) == 0 {
            std::hint::spin_loop();
        }
        let start = Instant::now();
        while start.elapsed() < delay {
            std::hint::spin_loop();
        }
        drop(Stack::new(16 << 10).unwrap());
    });
    unsafe { libc::pthread_atfork(Some(release_the_racer), None, None) };
    while READY.load(Ordering::Acquire) == 0 {
        std::hint::spin_loop();
    }
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // The grandchild: one thread, whatever the fork caught.
        let ok = Stack::new(16 << 10).is_ok();
        unsafe { libc::_exit(if ok { DONE } else { FAILED }) };
    }
    let code = match wait_for(pid, GRANDCHILD_TIMEOUT) {
        Some(status) if libc::WIFEXITED(status) => libc::WEXITSTATUS(status),
        Some(_) => FAILED,
        None => HUNG,
    };
    racer.join().unwrap();
    code
}

#[test]
fn child_entry() {
    let Ok(case) = std::env::var(CASE_VAR) else { return };
    assert_eq!(case, "fork-during-setup");
    let (mut hung, mut failed) = (0, 0);
    for r in 0..ROUNDS {
        let delay = DELAYS * r as u32 / ROUNDS as u32;
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let code = round(delay);
            unsafe { libc::_exit(code) };
        }
        let code = match wait_for(pid, 2 * GRANDCHILD_TIMEOUT) {
            Some(status) if libc::WIFEXITED(status) => libc::WEXITSTATUS(status),
            _ => FAILED,
        };
        match code {
            DONE => {}
            HUNG => hung += 1,
            _ => failed += 1,
        }
    }
    println!("\nrounds {ROUNDS} hung {hung} failed {failed}");
}

#[test]
fn a_fork_during_the_first_stack_set_up_leaves_a_child_that_can_make_stacks() {
    let out = run_child(CASE_VAR, "fork-during-setup");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the child died: {:?}\n{stderr}", out.status.signal());
    let result = printed(&out, "rounds ");
    assert_eq!(result, format!("{ROUNDS} hung 0 failed 0"), "{stderr}");
}
