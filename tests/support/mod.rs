//! Helpers shared by the test binaries (and, through `#[path]`, by the
//! benchmarks and examples): a seeded random number generator, the
//! process's resident set, and running one case of a test binary in a child
//! process and reading what it printed.

#![allow(dead_code)] // each user takes what it needs

use std::process::{Command, Output};

/// The resident set of this process, in KiB, read from `/proc/self/statm`
/// into a stack buffer: no allocation, so measuring an idle program does
/// not wake its allocator.
pub fn rss_kib() -> u64 {
    let mut buf = [0u8; 128];
    // SAFETY: a NUL-terminated path; reads into a buffer of ours.
    let n = unsafe {
        let fd = libc::open(c"/proc/self/statm".as_ptr(), libc::O_RDONLY);
        assert!(fd >= 0, "/proc/self/statm");
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        n
    };
    assert!(n > 0, "/proc/self/statm");
    let resident = buf[..n as usize].split(|&b| b == b' ').nth(1).expect("statm's resident field");
    let pages: u64 = resident.iter().fold(0, |v, &d| v * 10 + u64::from(d - b'0'));
    // SAFETY: no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64 / 1024
}

/// Runs this test binary's `child_entry` test in a child process, with
/// `case` in the environment variable `var` (the child's `child_entry` does
/// nothing without it), and returns what the child did.
pub fn run_child(var: &str, case: &str) -> Output {
    Command::new(std::env::current_exe().expect("the test binary's path"))
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(var, case)
        .output()
        .expect("cannot run the test binary as a child")
}

/// The rest of the first line of the child's stdout that starts with
/// `marker` (children print `\n<marker><value>` so that the line stands
/// apart from the test harness's own output).
pub fn printed(out: &Output, marker: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(marker))
        .unwrap_or_else(|| {
            panic!(
                "the child printed no {marker:?} line; stdout: {stdout}\nstderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .trim()
        .to_string()
}

/// Runs `case` in a child (as [`run_child`]), asserts that it succeeded,
/// and returns a reader of the `key=number` fields of its line that starts
/// with `marker` (the line is echoed to stderr for a failure's message).
pub fn child_fields(var: &str, case: &str, marker: &str) -> impl Fn(&str) -> u64 {
    let out = run_child(var, case);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{case}: the child failed: {}\n{stderr}", String::from_utf8_lossy(&out.stdout));
    let line = printed(&out, marker);
    eprintln!("{case}: {line}");
    move |key: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .unwrap_or_else(|| panic!("no {key} in {line}"))
            .parse()
            .unwrap_or_else(|_| panic!("{key} in {line}"))
    }
}

/// Asserts that the child aborted with a report on stderr, a line starting
/// with `prefix`, and returns that line.
pub fn abort_report(case: &str, out: &Output, prefix: &str) -> String {
    use std::os::unix::process::ExitStatusExt;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{case}: the child was not aborted; stderr: {stderr}");
    stderr
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("{case}: no {prefix:?} report; stderr: {stderr}"))
        .to_string()
}

/// xorshift64: fast, seeded, good enough to pick sizes, slots and actions.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng((seed + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    #[inline(always)]
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `0..n`.
    #[inline(always)]
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n as u128) >> 64) as u64
    }
}
