//! Call stacks for samples: a frame-pointer walk, and the stack bounds
//! that keep it safe.
//!
//! A sample is taken inside the allocator, where nothing may allocate or
//! take a lock that a signal or `fork` can leave held. Unwinders do both
//! (libgcc's first `_Unwind_Backtrace` may call `dl_iterate_phdr` under
//! the loader lock; glibc's `backtrace()` mallocs while loading libgcc), so
//! spanalloc walks the frame-pointer chain instead, as jemalloc's
//! `prof-frameptr`, gperftools' `generic_fp` and snmalloc do: with frame
//! pointers every frame starts with `[saved fp][return address]`, and the
//! saved fp points at the caller's record.
//!
//! # Validation
//!
//! Code built without frame pointers uses the register for anything, so
//! every step is checked before it is read. A frame record at `fp` is read
//! only if `fp` is 8-aligned and `[fp, fp + 16)` lies in the stack's
//! bounds and above the walk's own first frame (all of which is mapped:
//! a stack is contiguous from its stack pointer to its top). The walk stops
//! at a return address below 4 KiB (the end of the chain is a null), at a
//! saved fp that does not increase strictly, that jumps 128 KiB or more, or
//! that leaves the bounds, and after 64 frames. It cannot loop, fault or
//! read memory that is not the current stack.
//!
//! # The first frame
//!
//! [`walk`] calls a small assembly shim that pushes a frame record of its
//! own, so the first return address (into the function that called
//! `walk`) is right even when that function has no frame pointer. Each
//! frame after it needs its function to keep one: build with
//! `-C force-frame-pointers=yes` (Rust's std has them since 2024). A
//! function without one hides its caller, nothing worse. Only x86-64 is
//! walked; elsewhere `walk` returns no frames.
//!
//! # Stack bounds
//!
//! The caller passes the bounds of the stack it runs on: a coroutine's
//! stack (`crate::stack` knows them exactly) or the thread's, found once
//! per thread by [`thread_stack_bounds`]. `pthread_getattr_np` is no use
//! here: it reads `/proc/self/maps` with `fopen` on the main thread, and
//! `realloc`s a CPU set on every thread, so it would re-enter the
//! allocator. Instead:
//!
//! - the main thread's top is glibc's `__libc_stack_end` (the stack
//!   pointer `_start` was entered with) rounded up to its page, and its
//!   bottom is the top less `RLIMIT_STACK` (at most 128 MiB, the least gap
//!   Linux keeps below a growing stack) — no system call but `getrlimit`;
//! - any other thread's stack is the mapping that holds its stack pointer,
//!   found in `/proc/self/maps` read with raw `open`/`read` into a buffer
//!   on the stack and parsed as it streams (no line is ever stored).
//!
//! A thread whose stack pointer is not inside the bounds it is given (a
//! coroutine walked with its thread's bounds) gets no frames.

/// A return address below this is the end of a chain (or garbage).
const MIN_CODE_ADDR: usize = 4096;
/// The largest step between two frame records.
const MAX_STEP: usize = 128 << 10;
/// The deepest stack recorded.
pub const MAX_DEPTH: usize = 64;
/// The least stack size assumed below the main thread's top, and the most.
const MAIN_STACK_MAX: usize = 128 << 20;

/// The address range of a stack: `[low, high)`, growing down from `high`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct StackBounds {
    /// Lowest address of the stack.
    pub low: usize,
    /// One past its highest address.
    pub high: usize,
}

impl StackBounds {
    /// Bounds that contain nothing: a walk in them finds no frames.
    pub const EMPTY: StackBounds = StackBounds { low: 0, high: 0 };

    /// Whether `addr` lies in the stack.
    pub fn contains(&self, addr: usize) -> bool {
        self.low <= addr && addr < self.high
    }
}

/// Writes the return addresses of the current call chain into `out`,
/// innermost first, and returns how many it wrote (at most
/// `min(out.len(), 64)`). The first is the return address into the
/// function that called `walk`; `skip` drops that many from the start.
/// Reads only inside `bounds` (see the module docs); never allocates,
/// locks or faults.
#[inline(always)]
pub fn walk(bounds: StackBounds, skip: usize, out: &mut [usize]) -> usize {
    let len = out.len().min(MAX_DEPTH);
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: the shim reads only validated frame records inside
        // `bounds` and writes at most `len` words to `out`.
        unsafe { shim(out.as_mut_ptr(), len, bounds.low, bounds.high, skip) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (bounds, skip, len);
        0
    }
}

/// Pushes a frame record (so the caller's return address is in the chain
/// whatever the caller was compiled with) and walks from it.
#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
unsafe extern "sysv64" fn shim(out: *mut usize, len: usize, low: usize, high: usize, skip: usize) -> usize {
    core::arch::naked_asm!(
        "push rbp",
        "mov rbp, rsp",
        "mov r9, rbp",
        "call {walk}",
        "pop rbp",
        "ret",
        walk = sym walk_from_shim,
    )
}

/// The shim's callee: `fp` is the shim's own frame record.
#[cfg(target_arch = "x86_64")]
extern "sysv64" fn walk_from_shim(
    out: *mut usize,
    len: usize,
    low: usize,
    high: usize,
    skip: usize,
    fp: usize,
) -> usize {
    // SAFETY: `walk` passed its slice's pointer and a length within it.
    let out = unsafe { core::slice::from_raw_parts_mut(out, len) };
    // SAFETY: `fp` is the shim's frame, on the current stack; everything
    // from it up to the top of the current stack is mapped, and `chain`
    // reads nothing below `fp` or outside `low..high`.
    unsafe { chain(fp, StackBounds { low, high }, skip, out) }
}

/// Follows the frame-record chain from `fp`, validating every step.
///
/// # Safety
/// Every address in `[max(fp, bounds.low), bounds.high)` must be readable.
pub(crate) unsafe fn chain(mut fp: usize, bounds: StackBounds, mut skip: usize, out: &mut [usize]) -> usize {
    if !bounds.contains(fp) {
        return 0;
    }
    let floor = fp;
    let mut n = 0;
    while n < out.len() {
        if fp & 7 != 0 || fp < floor || fp.checked_add(16).is_none_or(|end| end > bounds.high) {
            break;
        }
        // SAFETY: [fp, fp + 16) is aligned and inside the readable range.
        let (next, ret) = unsafe { ((fp as *const usize).read_volatile(), ((fp + 8) as *const usize).read_volatile()) };
        if ret < MIN_CODE_ADDR {
            break;
        }
        if skip > 0 {
            skip -= 1;
        } else {
            out[n] = ret;
            n += 1;
        }
        if next <= fp || next - fp >= MAX_STEP {
            break;
        }
        fp = next;
    }
    n
}

// ---------------------------------------------------------------------------
// Thread stack bounds.

#[cfg(target_env = "gnu")]
unsafe extern "C" {
    /// glibc (ld.so): the stack pointer the process was entered with.
    static __libc_stack_end: *const libc::c_void;
}

/// The calling thread's stack bounds, or `None` when they cannot be found
/// (then walks on this thread record no frames). Costs a few system calls
/// (or a read of `/proc/self/maps`): call once per thread and keep the
/// result. Never allocates.
pub fn thread_stack_bounds() -> Option<StackBounds> {
    let marker = 0u8;
    let sp = core::ptr::addr_of!(marker) as usize;
    // SAFETY: getpid and gettid have no preconditions.
    let main = unsafe { libc::getpid() as i64 == libc::syscall(libc::SYS_gettid) };
    if main && let Some(b) = main_thread_bounds(sp) {
        return Some(b);
    }
    let b = mapping_containing(sp)?;
    if main {
        // The main stack grows down on demand: allow for its limit.
        return Some(StackBounds { low: b.low.min(b.high.saturating_sub(main_stack_limit())), high: b.high });
    }
    Some(b)
}

/// The main thread's bounds from `__libc_stack_end` and `RLIMIT_STACK`.
fn main_thread_bounds(sp: usize) -> Option<StackBounds> {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: glibc sets __libc_stack_end before any user code runs and
        // never changes it.
        let end = unsafe { core::ptr::addr_of!(__libc_stack_end).read() } as usize;
        let page = crate::os::page_size();
        if end <= sp {
            return None;
        }
        // The page holding `end` is mapped (argc lives there).
        let high = (end & !(page - 1)) + page;
        let low = high.saturating_sub(main_stack_limit());
        if sp < low {
            return None;
        }
        Some(StackBounds { low, high })
    }
    #[cfg(not(target_env = "gnu"))]
    {
        let _ = sp;
        None
    }
}

/// The soft stack limit, capped at 128 MiB.
fn main_stack_limit() -> usize {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: rl is a valid out-pointer.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_STACK, &mut rl) } == 0;
    if !ok || rl.rlim_cur == libc::RLIM_INFINITY {
        return MAIN_STACK_MAX;
    }
    (rl.rlim_cur as usize).clamp(64 << 10, MAIN_STACK_MAX)
}

/// The mapping of `/proc/self/maps` that holds `addr`.
pub(crate) fn mapping_containing(addr: usize) -> Option<StackBounds> {
    // SAFETY: a NUL-terminated path; the descriptor is closed below.
    let fd = unsafe { libc::open(c"/proc/self/maps".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let mut parser = MapsParser::new(addr);
    let mut buf = [0u8; 2048];
    let found = loop {
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            if crate::os::errno() == libc::EINTR {
                continue;
            }
            break None;
        }
        if n == 0 {
            break None;
        }
        if let Some(b) = parser.feed(&buf[..n as usize]) {
            break Some(b);
        }
    };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    found
}

/// A streaming parser of `/proc/self/maps` lines (`start-end perms ...`)
/// that looks for the range holding one address.
pub(crate) struct MapsParser {
    addr: usize,
    /// 0: reading start, 1: reading end, 2: skipping to the line's end.
    field: u8,
    start: usize,
    end: usize,
}

impl MapsParser {
    pub(crate) fn new(addr: usize) -> Self {
        MapsParser { addr, field: 0, start: 0, end: 0 }
    }

    /// Feeds the next bytes; returns the bounds once a line's range holds
    /// the address.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Option<StackBounds> {
        for &b in bytes {
            match (self.field, b) {
                (_, b'\n') => {
                    self.field = 0;
                    self.start = 0;
                    self.end = 0;
                }
                (0, b'-') => self.field = 1,
                (1, b' ') => {
                    self.field = 2;
                    if self.start <= self.addr && self.addr < self.end {
                        return Some(StackBounds { low: self.start, high: self.end });
                    }
                }
                (0 | 1, _) => {
                    let digit = match b {
                        b'0'..=b'9' => b - b'0',
                        b'a'..=b'f' => b - b'a' + 10,
                        _ => {
                            self.field = 2;
                            continue;
                        }
                    } as usize;
                    let v = if self.field == 0 { &mut self.start } else { &mut self.end };
                    *v = v.wrapping_shl(4) | digit;
                }
                _ => {}
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake stack: `frames` records at the given word offsets, each
    /// pointing at the next, with the given return addresses.
    fn fake_stack(words: &mut [usize], records: &[(usize, usize, usize)]) -> usize {
        let base = words.as_ptr() as usize;
        for &(at, next_at, ret) in records {
            words[at] = if next_at == usize::MAX { 0 } else { base + next_at * 8 };
            words[at + 1] = ret;
        }
        base
    }

    fn run(words: &[usize], start_word: usize, skip: usize, out: &mut [usize]) -> usize {
        let base = words.as_ptr() as usize;
        let bounds = StackBounds { low: base, high: base + words.len() * 8 };
        // SAFETY: the walk stays inside `words`.
        unsafe { chain(base + start_word * 8, bounds, skip, out) }
    }

    #[test]
    fn chain_follows_records_and_stops_at_null() {
        let mut w = vec![0usize; 64];
        fake_stack(&mut w, &[(2, 10, 0x1111), (10, 20, 0x2222), (20, usize::MAX, 0x3333)]);
        let mut out = [0; 8];
        assert_eq!(run(&w, 2, 0, &mut out), 3);
        assert_eq!(&out[..3], &[0x1111, 0x2222, 0x3333]);
        assert_eq!(run(&w, 2, 2, &mut out), 1);
        assert_eq!(out[0], 0x3333);
        // Depth is capped by the output.
        assert_eq!(run(&w, 2, 0, &mut out[..2]), 2);
    }

    #[test]
    fn chain_rejects_bad_steps() {
        let mut out = [0; 8];
        // Not increasing: 10 → 4.
        let mut w = vec![0usize; 64];
        fake_stack(&mut w, &[(2, 10, 0x1111), (10, 4, 0x2222), (4, usize::MAX, 0x3333)]);
        assert_eq!(run(&w, 2, 0, &mut out), 2);
        // Pointing at itself.
        let mut w = vec![0usize; 64];
        fake_stack(&mut w, &[(2, 2, 0x1111)]);
        assert_eq!(run(&w, 2, 0, &mut out), 1);
        // Leaving the bounds: the last record would straddle the top.
        let mut w = vec![0usize; 64];
        fake_stack(&mut w, &[(2, 63, 0x1111)]);
        assert_eq!(run(&w, 2, 0, &mut out), 1);
        // Misaligned next fp.
        let mut w = vec![0usize; 64];
        let base = fake_stack(&mut w, &[(2, 10, 0x1111)]);
        w[2] = base + 10 * 8 + 4;
        assert_eq!(run(&w, 2, 0, &mut out), 1);
        // A return address in the null page ends the chain before it.
        let mut w = vec![0usize; 64];
        fake_stack(&mut w, &[(2, 10, 0x1111), (10, 20, 0x10), (20, usize::MAX, 0x3333)]);
        assert_eq!(run(&w, 2, 0, &mut out), 1);
        // A step of 128 KiB or more.
        let mut w = vec![0usize; (MAX_STEP + 4096) / 8];
        fake_stack(&mut w, &[(2, 2 + MAX_STEP / 8, 0x1111), (2 + MAX_STEP / 8, usize::MAX, 0x2222)]);
        assert_eq!(run(&w, 2, 0, &mut out), 1);
        // A start outside the bounds finds nothing.
        let w = vec![0usize; 64];
        let base = w.as_ptr() as usize;
        let bounds = StackBounds { low: base + 64, high: base + 512 };
        assert_eq!(unsafe { chain(base, bounds, 0, &mut out) }, 0);
    }

    // A chain of three functions that keep frame pointers whatever the
    // build flags: each pushes a frame record and calls the next, passing
    // the walk's arguments through untouched; the innermost calls the
    // shim. Each return address is exactly 9 bytes into its function
    // (`push rbp` 1, `mov rbp, rsp` 3, `call rel32` 5).
    #[cfg(target_arch = "x86_64")]
    #[unsafe(naked)]
    unsafe extern "sysv64" fn chain_c(out: *mut usize, len: usize, low: usize, high: usize, skip: usize) -> usize {
        core::arch::naked_asm!("push rbp", "mov rbp, rsp", "call {f}", "pop rbp", "ret", f = sym shim)
    }

    #[cfg(target_arch = "x86_64")]
    #[unsafe(naked)]
    unsafe extern "sysv64" fn chain_b(out: *mut usize, len: usize, low: usize, high: usize, skip: usize) -> usize {
        core::arch::naked_asm!("push rbp", "mov rbp, rsp", "call {f}", "pop rbp", "ret", f = sym chain_c)
    }

    #[cfg(target_arch = "x86_64")]
    #[unsafe(naked)]
    unsafe extern "sysv64" fn chain_a(out: *mut usize, len: usize, low: usize, high: usize, skip: usize) -> usize {
        core::arch::naked_asm!("push rbp", "mov rbp, rsp", "call {f}", "pop rbp", "ret", f = sym chain_b)
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_walk_returns_the_call_chain_of_a_known_chain() {
        let bounds = thread_stack_bounds().expect("bounds");
        let mut out = [0usize; MAX_DEPTH];
        // SAFETY: the chain passes a valid buffer and its length to the shim.
        let n = unsafe { chain_a(out.as_mut_ptr(), out.len(), bounds.low, bounds.high, 0) };
        assert!(n >= 3, "{n} frames");
        assert_eq!(out[0], chain_c as *const () as usize + 9, "into chain_c");
        assert_eq!(out[1], chain_b as *const () as usize + 9, "into chain_b");
        assert_eq!(out[2], chain_a as *const () as usize + 9, "into chain_a");
        // Skipping drops from the inside.
        let n = unsafe { chain_a(out.as_mut_ptr(), out.len(), bounds.low, bounds.high, 2) };
        assert!(n >= 1);
        assert_eq!(out[0], chain_a as *const () as usize + 9);
        // The depth is the output's.
        let n = unsafe { chain_a(out.as_mut_ptr(), 2, bounds.low, bounds.high, 0) };
        assert_eq!(n, 2);
        // Bounds that do not hold the stack give nothing.
        let n = unsafe { chain_a(out.as_mut_ptr(), out.len(), 4096, 8192, 0) };
        assert_eq!(n, 0);
    }

    #[test]
    fn walk_is_bounded_and_never_longer_than_max_depth() {
        let bounds = thread_stack_bounds().expect("bounds");
        let mut big = [0usize; 2 * MAX_DEPTH];
        assert!(walk(bounds, 0, &mut big) <= MAX_DEPTH);
        assert_eq!(walk(StackBounds::EMPTY, 0, &mut big), 0);
        assert_eq!(walk(bounds, 0, &mut []), 0);
    }

    #[test]
    fn maps_parser_finds_the_range_across_chunks() {
        let text = b"55d0c0a00000-55d0c0a21000 r--p 00000000 08:01 123 /usr/bin/x\n\
                     7ffd1c000000-7ffd1c021000 rw-p 00000000 00:00 0                          [stack]\n";
        for split in [1, 7, 13, 30, 64, 90, text.len()] {
            let mut p = MapsParser::new(0x7ffd1c000010);
            let mut found = None;
            for chunk in text.chunks(split) {
                if let Some(b) = p.feed(chunk) {
                    found = Some(b);
                    break;
                }
            }
            assert_eq!(found, Some(StackBounds { low: 0x7ffd1c000000, high: 0x7ffd1c021000 }), "split {split}");
        }
        let mut p = MapsParser::new(0x1000);
        assert_eq!(p.feed(text), None);
    }

    #[test]
    fn thread_bounds_hold_the_stack_pointer_on_main_and_spawned_threads() {
        let check = || {
            let b = thread_stack_bounds().expect("bounds");
            let here = 0u8;
            let sp = &here as *const u8 as usize;
            assert!(b.contains(sp), "{b:x?} does not hold {sp:#x}");
            b
        };
        check();
        let b = std::thread::Builder::new().stack_size(256 << 10).spawn(check).unwrap().join().unwrap();
        assert!(b.high - b.low >= 256 << 10);
        // The maps path agrees with the main thread's own path on a thread
        // that is not the main one.
        std::thread::spawn(|| {
            let here = 0u8;
            let sp = &here as *const u8 as usize;
            assert_eq!(mapping_containing(sp), thread_stack_bounds());
        })
        .join()
        .unwrap();
    }
}
