//! Everything spanalloc asks of the operating system, in one place.
//!
//! The rest of the allocator reads as pure logic over address ranges; this
//! module turns its requests into `mmap`, `munmap`, `mremap`, `madvise`,
//! `mprotect`, `futex`, `clock_gettime`, `write` and `pthread_create`
//! calls. Failures come back as `None` / `false` / an errno, never as a
//! panic: the caller turns them into a null allocation or a
//! stack error.
//!
//! Nothing here allocates, and everything may be called from any thread
//! (the stderr writer is also async-signal-safe). The one exception is
//! [`spawn_thread`]: glibc's `pthread_create` allocates the new thread's
//! TLS vector with `calloc` (see there).
//!
//! # The kernel's page size
//!
//! Runtime pages are 8 KiB; the kernel's may be 4, 16 or 64 KiB.
//! [`release_pages`] behaves as `madvise(MADV_DONTNEED)` does on such a
//! kernel: a start that is not on a kernel page fails with `EINVAL`, and a
//! length is rounded up to whole kernel pages, which the kernel zeroes. The
//! unit tests make the allocator see a larger page than this machine's
//! ([`pretend_page_size`]): then `release_pages` enforces the larger
//! granularity on top of the real kernel's, which is exactly what such a
//! kernel would do with the same calls.

use core::ptr;

// The operating system sits below the modelled synchronization: its atomics
// are the machine's.
#[cfg(not(loom))]
use core::sync::atomic::AtomicU32;
use core::sync::atomic::{AtomicUsize, Ordering};

/// `madvise` advice that installs guard pages without new mappings
/// (Linux 6.13 and later).
const MADV_GUARD_INSTALL: libc::c_int = 102;
/// Removes guard pages installed with `MADV_GUARD_INSTALL`.
const MADV_GUARD_REMOVE: libc::c_int = 103;

/// The kernel's page size, read once.
///
/// A plain atomic, not a `spin::Once`: threads that race to the first call
/// each ask `sysconf` and store the same answer, so there is no "being
/// computed" state for a thread to wait on, and none that a `fork` (or a
/// signal handler interrupting the first call) could find half done.
pub(crate) fn page_size() -> usize {
    #[cfg(all(test, not(loom)))]
    {
        let pretended = PRETENDED_PAGE.with(|p| p.get());
        if pretended != 0 {
            return pretended;
        }
    }
    #[cfg(all(feature = "test-hooks", not(loom)))]
    {
        let pretended = hooks::PAGE.load(Ordering::Relaxed);
        if pretended != 0 {
            return pretended;
        }
    }
    static PAGE: AtomicUsize = AtomicUsize::new(0);
    let cached = PAGE.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    // SAFETY: sysconf has no preconditions.
    let got = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let size = if got > 0 { got as usize } else { 4096 };
    PAGE.store(size, Ordering::Relaxed);
    size
}

/// Reserves `len` bytes of zeroed, lazily committed address space, placed
/// by the kernel. Returns `None` when the kernel refuses.
pub(crate) fn map(len: usize) -> Option<*mut u8> {
    // SAFETY: an anonymous private mapping at a kernel-chosen address
    // touches no existing memory.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED { None } else { Some(p.cast()) }
}

/// Reserves `len` bytes aligned to `align` (a power of two at least the OS
/// page size) by over-reserving and trimming both ends.
pub(crate) fn map_aligned(len: usize, align: usize) -> Option<*mut u8> {
    let padded = len.checked_add(align)?;
    let raw = map(padded)? as usize;
    let start = (raw + align - 1) & !(align - 1);
    let head = start - raw;
    let tail = padded - head - len;
    if head > 0 {
        unmap(raw as *mut u8, head);
    }
    if tail > 0 {
        unmap((start + len) as *mut u8, tail);
    }
    Some(start as *mut u8)
}

/// Returns a reservation (or a page-aligned part of one) to the kernel.
pub(crate) fn unmap(addr: *mut u8, len: usize) {
    // SAFETY: callers pass ranges they reserved with `map` and no longer use.
    unsafe {
        libc::munmap(addr.cast(), len);
    }
}

/// Grows a mapping in place (never moving it). Returns whether it grew.
pub(crate) fn grow_in_place(addr: *mut u8, old_len: usize, new_len: usize) -> bool {
    // SAFETY: without MREMAP_MAYMOVE the kernel either extends the mapping
    // into free address space right after it or fails; nothing else moves.
    let p = unsafe { libc::mremap(addr.cast(), old_len, new_len, 0) };
    p != libc::MAP_FAILED
}

/// Gives the pages of a range back to the kernel: they read as zero
/// afterwards and no longer count towards the resident set. Where the
/// result matters (memory then counted as zeroed), use [`release_pages`].
pub(crate) fn release(addr: *mut u8, len: usize) {
    let _ = release_pages(addr, len);
}

/// `madvise(MADV_DONTNEED)` over `[addr, addr + len)`, as the kernel does
/// it: `addr` must be on a kernel page ([`page_size`]), else `EINVAL` and
/// nothing happens; `len` is rounded up to whole kernel pages, all of which
/// read as zero afterwards. So the caller must own every byte up to the
/// next kernel page boundary after `addr + len`.
pub(crate) fn release_pages(addr: *mut u8, len: usize) -> Result<(), i32> {
    if len == 0 {
        return Ok(());
    }
    let page = page_size();
    if !(addr as usize).is_multiple_of(page) {
        return Err(libc::EINVAL);
    }
    let Some(len) = len.checked_next_multiple_of(page) else {
        return Err(libc::EINVAL);
    };
    #[cfg(all(test, not(loom)))]
    if let Some(f) = RELEASE_HOOK.with(|h| h.get())
        && !f(addr as usize, len)
    {
        return Err(libc::EAGAIN);
    }
    #[cfg(all(feature = "test-hooks", not(loom)))]
    if !hooks::allow(addr as usize, len) {
        return Err(libc::EAGAIN);
    }
    // SAFETY: callers pass ranges of their own that hold no live data, up
    // to the next kernel page boundary.
    let rc = unsafe { libc::madvise(addr.cast(), len, libc::MADV_DONTNEED) };
    if rc == 0 { Ok(()) } else { Err(errno()) }
}

/// A test's look at each release (see [`set_release_hook`]).
#[cfg(all(test, not(loom)))]
type ReleaseHook = fn(usize, usize) -> bool;

#[cfg(all(test, not(loom)))]
std::thread_local! {
    /// A page size this thread's calls see instead of the kernel's (0: none).
    static PRETENDED_PAGE: core::cell::Cell<usize> = const { core::cell::Cell::new(0) };
    /// Called with each range [`release_pages`] is about to release; false
    /// makes the call fail as if the kernel refused.
    static RELEASE_HOOK: core::cell::Cell<Option<ReleaseHook>> = const { core::cell::Cell::new(None) };
}

/// Makes [`page_size`] (and so [`release_pages`]) on the calling thread
/// answer `size` (a power of two at least the real page size; 0 undoes
/// it), as on a kernel with larger pages. Tests only.
#[cfg(all(test, not(loom)))]
pub(crate) fn pretend_page_size(size: usize) {
    PRETENDED_PAGE.with(|p| p.set(size));
}

/// Has `f` called with every range the calling thread is about to release
/// (`None` removes it); where `f` says false, the release fails with
/// `EAGAIN` instead. Tests only.
#[cfg(all(test, not(loom)))]
pub(crate) fn set_release_hook(f: Option<ReleaseHook>) {
    RELEASE_HOOK.with(|h| h.set(f));
}

/// The same two hooks, process-wide, for whole-allocator tests (the
/// `test-hooks` feature; `spanalloc::test_hooks`): the background releaser
/// releases on a thread of its own.
#[cfg(all(feature = "test-hooks", not(loom)))]
pub(crate) mod hooks {
    use core::sync::atomic::{AtomicUsize, Ordering};

    /// The page size every thread sees (0: the kernel's).
    pub(crate) static PAGE: AtomicUsize = AtomicUsize::new(0);
    /// A `fn(usize, usize) -> bool` called before each release (0: none).
    pub(crate) static RELEASE: AtomicUsize = AtomicUsize::new(0);

    pub(super) fn allow(addr: usize, len: usize) -> bool {
        let f = RELEASE.load(Ordering::Acquire);
        if f == 0 {
            return true;
        }
        // SAFETY: only `set_release_hook` stores here, a `fn(usize, usize) -> bool`.
        let f: fn(usize, usize) -> bool = unsafe { core::mem::transmute(f) };
        f(addr, len)
    }

    /// Makes [`super::page_size`] answer `size` on every thread (0 undoes it).
    pub(crate) fn pretend_page_size(size: usize) {
        PAGE.store(size, Ordering::Relaxed);
    }

    /// Has `f` called before every release on any thread; where it says
    /// false, the release fails as if the kernel refused.
    pub(crate) fn set_release_hook(f: Option<fn(usize, usize) -> bool>) {
        RELEASE.store(f.map_or(0, |f| f as usize), Ordering::Release);
    }
}

/// Asks the kernel not to back the range with transparent huge pages.
pub(crate) fn no_huge_pages(addr: *mut u8, len: usize) {
    // SAFETY: advice only; the range is the caller's own mapping.
    unsafe {
        libc::madvise(addr.cast(), len, libc::MADV_NOHUGEPAGE);
    }
}

/// How a guard region was installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GuardKind {
    /// `MADV_GUARD_INSTALL`: no new mapping.
    Madvise,
    /// `mprotect(PROT_NONE)`: splits the mapping (two more map entries).
    Mprotect,
}

/// Whether the kernel accepted `MADV_GUARD_INSTALL`: 0 unknown, 1 yes, 2 no.
///
/// A plain atomic, not a `spin::Once`, for the reason `page_size` gives:
/// the probe is the guard call itself, racing probes get the same answer
/// from the same kernel, and storing it twice is harmless; a thread never
/// waits for another's probe.
static GUARD_MADVISE: AtomicUsize = AtomicUsize::new(0);

/// Makes `[addr, addr + len)` fault on any access. Uses
/// `MADV_GUARD_INSTALL` where the kernel has it, else `mprotect`.
/// On failure returns the errno (`ENOMEM` when the process is out of
/// memory-map entries, see `vm.max_map_count`).
pub(crate) fn guard(addr: *mut u8, len: usize) -> Result<GuardKind, i32> {
    if GUARD_MADVISE.load(Ordering::Relaxed) != 2 {
        // SAFETY: advice on the caller's own private anonymous mapping.
        let rc = unsafe { libc::madvise(addr.cast(), len, MADV_GUARD_INSTALL) };
        if rc == 0 {
            GUARD_MADVISE.store(1, Ordering::Relaxed);
            return Ok(GuardKind::Madvise);
        }
        let err = errno();
        if err != libc::EINVAL {
            return Err(err);
        }
        GUARD_MADVISE.store(2, Ordering::Relaxed);
    }
    // SAFETY: the range is the caller's own mapping and holds no live data.
    let rc = unsafe { libc::mprotect(addr.cast(), len, libc::PROT_NONE) };
    if rc == 0 { Ok(GuardKind::Mprotect) } else { Err(errno()) }
}

/// Removes a guard installed by [`guard`], making the range read-write
/// again. Returns whether it could.
pub(crate) fn unguard(addr: *mut u8, len: usize) -> bool {
    if GUARD_MADVISE.load(Ordering::Relaxed) == 1 {
        // SAFETY: advice on the caller's own mapping.
        if unsafe { libc::madvise(addr.cast(), len, MADV_GUARD_REMOVE) } == 0 {
            return true;
        }
    }
    // SAFETY: the range is the caller's own mapping.
    unsafe { libc::mprotect(addr.cast(), len, libc::PROT_READ | libc::PROT_WRITE) == 0 }
}

/// Forces later guards to use `mprotect` (tests of the fallback path).
#[cfg(all(test, not(loom)))]
pub(crate) fn force_mprotect_guards() {
    GUARD_MADVISE.store(2, Ordering::Relaxed);
}

/// The calling thread's `errno`.
pub(crate) fn errno() -> i32 {
    // SAFETY: __errno_location always returns the thread's errno slot.
    unsafe { *libc::__errno_location() }
}

/// Sleeps while `*word == expected` (or until woken or interrupted).
#[cfg(not(loom))]
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32) {
    futex_wait_for(word, expected, ptr::null());
}

/// Wakes one thread sleeping in [`futex_wait`] on `word`.
#[cfg(not(loom))]
pub(crate) fn futex_wake_one(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE only reads the address as a key.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG, 1);
    }
}

/// Sleeps while `*word == expected`, at most `ms` milliseconds (or until
/// woken or interrupted).
#[cfg(not(loom))]
pub(crate) fn futex_wait_ms(word: &AtomicU32, expected: u32, ms: u64) {
    let timeout = libc::timespec { tv_sec: (ms / 1000) as libc::time_t, tv_nsec: ((ms % 1000) * 1_000_000) as _ };
    futex_wait_for(word, expected, &timeout);
}

/// `FUTEX_WAIT` with a relative `timeout` (null: none).
#[cfg(not(loom))]
fn futex_wait_for(word: &AtomicU32, expected: u32, timeout: *const libc::timespec) {
    // SAFETY: FUTEX_WAIT reads the word atomically and sleeps; the word and
    // the timeout (if any) are valid for the duration of the call.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG, expected, timeout);
    }
}

/// Starts a detached thread that runs `entry(arg)` on a stack of `size`
/// bytes mapped here, with a guard page below it and every signal blocked
/// (no signal handler ever runs on it). Returns the stack's mapping
/// (address, length), for a forked child to unmap, or `None` when the
/// kernel or the C library refuses.
///
/// glibc's `pthread_create` places the new thread's descriptor and static
/// TLS at the top of the given stack, and allocates its TLS vector (a few
/// hundred bytes) with `calloc`. Under a Rust program's global allocator
/// that is the C library's malloc; under `libspanalloc.so` it is
/// spanalloc's, entered again from inside it, which the C layer serves from
/// its emergency region without the core. The caller must hold no
/// spanalloc lock (glibc takes its own locks inside).
#[cfg(not(loom))]
pub(crate) fn spawn_thread(
    entry: extern "C" fn(*mut libc::c_void) -> *mut libc::c_void,
    arg: *mut libc::c_void,
    size: usize,
) -> Option<(usize, usize)> {
    let page = page_size();
    let size = size.next_multiple_of(page);
    let base = map(size + page)?;
    no_huge_pages(base, size + page);
    let _ = guard(base, page);
    // SAFETY: the attribute object, the signal sets and the thread id are
    // locals; the stack is a fresh mapping of ours that nothing else uses.
    unsafe {
        let mut attr: libc::pthread_attr_t = core::mem::zeroed();
        if libc::pthread_attr_init(&mut attr) != 0 {
            unmap(base, size + page);
            return None;
        }
        let mut ok = libc::pthread_attr_setstack(&mut attr, base.add(page).cast(), size) == 0
            && libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED) == 0;
        if ok {
            let mut all: libc::sigset_t = core::mem::zeroed();
            let mut old: libc::sigset_t = core::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            let mut tid: libc::pthread_t = 0;
            ok = libc::pthread_create(&mut tid, &attr, entry, arg) == 0;
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, ptr::null_mut());
        }
        libc::pthread_attr_destroy(&mut attr);
        if !ok {
            unmap(base, size + page);
            return None;
        }
    }
    Some((base as usize, size + page))
}

/// Names the calling thread (`name`: at most 15 bytes and a NUL).
#[cfg(not(loom))]
pub(crate) fn set_thread_name(name: &core::ffi::CStr) {
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, name.as_ptr());
    }
}

/// Under loom time stands still, so models stay deterministic (and the
/// scavenger runs only when a model calls `release`).
#[cfg(loom)]
pub(crate) fn now_ms() -> u64 {
    0
}

/// The first deadline of a periodic task (tick, trim): at once in a normal
/// build, never under loom.
pub(crate) const FIRST_DEADLINE: u64 = if cfg!(loom) { u64::MAX } else { 0 };

/// Milliseconds on a coarse monotonic clock (a vDSO read, no syscall).
#[cfg(not(loom))]
pub(crate) fn now_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out-pointer.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts);
    }
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Writes all of `bytes` to standard error (async-signal-safe).
pub(crate) fn write_stderr(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            if n < 0 && errno() == libc::EINTR {
                continue;
            }
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

/// Ends the process with `SIGABRT`, running no Rust code on the way.
pub(crate) fn abort() -> ! {
    // SAFETY: abort has no preconditions and does not return.
    unsafe { libc::abort() }
}

/// The calling process's id.
pub(crate) fn pid() -> usize {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() as usize }
}

/// The number of the calling thread (for reports).
pub(crate) fn thread_id() -> u64 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as u64 }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// The permissions `/proc/self/maps` gives the mapping holding `addr`.
    fn perms(addr: usize) -> String {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        for line in maps.lines() {
            let (range, rest) = line.split_once(' ').unwrap();
            let (lo, hi) = range.split_once('-').unwrap();
            let (lo, hi) = (usize::from_str_radix(lo, 16).unwrap(), usize::from_str_radix(hi, 16).unwrap());
            if (lo..hi).contains(&addr) {
                return rest[..4].to_string();
            }
        }
        panic!("{addr:#x} not mapped")
    }

    #[test]
    fn guards_fall_back_to_mprotect_which_splits_the_mapping() {
        let page = page_size();
        let map = map(3 * page).unwrap();
        force_mprotect_guards();
        assert_eq!(guard(unsafe { map.add(page) }, page), Ok(GuardKind::Mprotect));
        assert_eq!(perms(map as usize + page), "---p");
        assert_eq!(perms(map as usize), "rw-p");
        // And back, as huge objects do when they grow.
        assert!(unguard(unsafe { map.add(page) }, page));
        assert_eq!(perms(map as usize + page), "rw-p");
        unmap(map, 3 * page);
    }
}
