//! `libspanalloc.so`: spanalloc as the `malloc` of C and C++ programs.
//!
//! ```sh
//! cargo build --release --workspace
//! LD_PRELOAD=$PWD/target/release/libspanalloc.so prog args...
//! ```
//!
//! or link it (`-L target/release -lspanalloc`, listed before the C++
//! runtime). It exports the malloc family glibc programs call (`malloc`,
//! `free`, `calloc`, `realloc`, `reallocarray`, `posix_memalign`,
//! `aligned_alloc`, `memalign`, `valloc`, `pvalloc`, `malloc_usable_size`,
//! `cfree`, `malloc_trim`, C23 `free_sized` and `free_aligned_sized`, the
//! `__libc_*` aliases) and the C++ `operator new` / `operator delete` set.
//! The Rust crate `spanalloc` itself exports none of these: only this
//! library does, so a Rust program that uses spanalloc keeps its C malloc.
//!
//! # What may call what
//!
//! ```text
//!  C / C++ caller ─► malloc.rs / cxx.rs ─► nested::enter ─► spanalloc::raw (the core)
//!                                               │ already inside? ─► emergency region / deferred free
//!                         foreign pointer? ─► foreign.rs (abort, or glibc's free)
//! ```
//!
//! - `malloc.rs`: the C entry points, glibc's semantics, `errno`.
//! - `cxx.rs`: the C++ operators; a failed throwing `new` continues in
//!   libstdc++'s, which throws `std::bad_alloc`.
//! - `nested.rs`: calls that arrive while the thread is already inside
//!   (glibc's TLS bookkeeping, signal handlers).
//! - `tls.rs`: the thread's state here, in the initial-exec TLS model.
//! - `foreign.rs`: the policy for pointers spanalloc did not allocate.
//! - `fatal.rs`: reports.
//!
//! Nothing on these paths allocates through Rust, panics, calls a glibc
//! function that allocates, or takes a lock of its own. Rust code in the
//! library allocates through spanalloc directly (the `#[global_allocator]`
//! below), never through the exported `malloc`.

#![allow(clippy::missing_safety_doc)]

mod cxx;
mod fatal;
mod foreign;
mod malloc;
mod nested;
mod tls;

#[global_allocator]
static A: spanalloc_core::SpanAlloc = spanalloc_core::SpanAlloc;

/// Runs when the library is loaded: reads the foreign-pointer policy (and
/// resolves glibc's functions if it forwards) and registers the fork
/// guard, before the program's own code runs. The entry points do not depend on it: each initialises what
/// it needs on first use, since other libraries' constructors may allocate
/// before this one runs.
extern "C" fn at_load() {
    foreign::init();
    // No background releaser here: the C library calls malloc and free
    // while it holds locks of its own that thread creation takes (the stack
    // cache's, when a thread exits or is joined; the loader's), so the core
    // must never create its thread from inside a call. Free memory goes
    // back on the allocator's slow paths and at malloc_trim instead.
    spanalloc_core::set_background_release(false);
    // The core registers its fork handlers (which take every heap lock) on
    // its first allocation; ours, registered after them, run around them:
    // prepare handlers run in reverse order of registration, the others in
    // order. While the core holds its locks for a fork, the forking thread
    // then counts as inside spanalloc, so a signal handler that allocates
    // meanwhile is served as a nested call instead of waiting for a lock
    // its own thread holds.
    // SAFETY: a block from malloc, freed once.
    unsafe { malloc::release(malloc::alloc(1)) };
    // SAFETY: plain functions valid for the whole process; this runs
    // outside any allocation, so pthread_atfork may allocate.
    unsafe { libc::pthread_atfork(Some(fork_enter), Some(fork_leave), Some(fork_leave)) };
}

extern "C" fn fork_enter() {
    nested::enter();
}

extern "C" fn fork_leave() {
    nested::leave();
}

/// How many calls arrived while their thread was already inside spanalloc
/// (served by the emergency region or deferred). Not part of the malloc
/// API: tests read it to show that such calls happen and are survived.
#[unsafe(no_mangle)]
pub extern "C" fn spanalloc_nested_calls() -> usize {
    nested::nested_calls()
}

#[used]
#[unsafe(link_section = ".init_array")]
static AT_LOAD: extern "C" fn() = at_load;
