//! Misuse that spanalloc can detect ends the process with a report that
//! names spanalloc, the fault and the address. Each case runs in a child
//! process (this test binary again, told which case by an environment
//! variable), and the parent checks how the child died and what it said.

#[global_allocator]
static A: spanalloc::SpanAlloc = spanalloc::SpanAlloc;

use std::alloc::{GlobalAlloc, Layout};
use support::{abort_report, printed, run_child};

mod support;

const CASE_VAR: &str = "SPANALLOC_MISUSE_CASE";

/// Runs `case` in a child and checks that it aborted with a report that
/// says `fault` and names the address the child said it would misuse.
fn expect_abort(case: &str, fault: &str) {
    let out = run_child(CASE_VAR, case);
    let addr = printed(&out, "misuse at ");
    let line = abort_report(case, &out, "spanalloc: fatal:");
    assert!(line.contains(fault), "{case}: report {line:?} does not say {fault:?}");
    assert!(line.contains(&addr), "{case}: report {line:?} does not name address {addr}");
}

fn announce(p: *mut u8) {
    println!("\nmisuse at {:#x}", p as usize);
    use std::io::Write;
    std::io::stdout().flush().unwrap();
}

/// The child side: performs the misuse named by the environment.
#[test]
fn child_entry() {
    let Ok(case) = std::env::var(CASE_VAR) else { return };
    let small = Layout::from_size_align(64, 8).unwrap();
    let large = Layout::from_size_align(100_000, 8).unwrap();
    let very_large = Layout::from_size_align(3 << 20, 8).unwrap();
    unsafe {
        match case.as_str() {
            "double-free-lifo" => {
                let p = A.alloc(small);
                announce(p);
                A.dealloc(p, small);
                A.dealloc(p, small);
            }
            "double-free-other-window" => {
                // Free an object twice after its window was left behind.
                let ptrs: Vec<*mut u8> = (0..300).map(|_| A.alloc(small)).collect();
                announce(ptrs[3]);
                A.dealloc(ptrs[3], small);
                A.dealloc(ptrs[3], small);
            }
            "double-free-remote" => {
                let p = A.alloc(small) as usize;
                announce(p as *mut u8);
                std::thread::spawn(move || {
                    A.dealloc(p as *mut u8, small);
                    A.dealloc(p as *mut u8, small);
                })
                .join()
                .ok();
            }
            "double-free-large" => {
                // The first free leaves it in the thread's large-object cache.
                let p = A.alloc(large);
                announce(p);
                A.dealloc(p, large);
                A.dealloc(p, large);
            }
            "double-free-large-other-thread" => {
                let p = A.alloc(large) as usize;
                announce(p as *mut u8);
                A.dealloc(p as *mut u8, large);
                std::thread::spawn(move || A.dealloc(p as *mut u8, large)).join().ok();
            }
            "double-free-very-large" => {
                // Too big to keep: the first free gives its pages back.
                let p = A.alloc(very_large);
                announce(p);
                A.dealloc(p, very_large);
                A.dealloc(p, very_large);
            }
            "foreign-pointer" => {
                let p = libc::malloc(64) as *mut u8;
                announce(p);
                A.dealloc(p, small);
            }
            "stack-pointer" => {
                let mut local = [0u8; 64];
                let p = local.as_mut_ptr();
                announce(p);
                A.dealloc(p, small);
            }
            "interior-pointer" => {
                let p = A.alloc(small).add(8);
                announce(p);
                A.dealloc(p, small);
            }
            "wrong-layout" => {
                let p = A.alloc(small);
                announce(p);
                A.dealloc(p, Layout::from_size_align(512, 8).unwrap());
            }
            other => panic!("unknown case {other}"),
        }
    }
    println!("misuse went unnoticed");
    std::process::exit(3);
}

#[test]
fn double_free_of_a_small_object_aborts_with_its_address() {
    expect_abort("double-free-lifo", "double free of");
}

#[test]
fn double_free_outside_the_current_window_aborts() {
    expect_abort("double-free-other-window", "double free of");
}

#[test]
fn double_free_from_another_thread_aborts() {
    expect_abort("double-free-remote", "double free of");
}

#[test]
fn double_free_of_a_large_object_aborts() {
    expect_abort("double-free-large", "double free of");
}

#[test]
fn double_free_of_a_large_object_from_another_thread_aborts() {
    expect_abort("double-free-large-other-thread", "double free of");
}

#[test]
fn double_free_of_a_large_object_whose_pages_went_back_aborts() {
    expect_abort("double-free-very-large", "did not allocate");
}

#[test]
fn free_of_a_malloc_pointer_aborts() {
    expect_abort("foreign-pointer", "did not allocate");
}

#[test]
fn free_of_a_stack_pointer_aborts() {
    expect_abort("stack-pointer", "did not allocate");
}

#[test]
fn free_of_an_interior_pointer_aborts() {
    expect_abort("interior-pointer", "not the start of an object");
}

#[test]
fn free_with_the_layout_of_another_class_aborts() {
    expect_abort("wrong-layout", "does not match the allocation");
}
