//! spanalloc's knobs from the environment: one variable, `SPANALLOC`.
//!
//! As Go's `GODEBUG`, jemalloc's `MALLOC_CONF` and mimalloc's `MIMALLOC_*`,
//! settings come from the environment so that a program can be profiled
//! or tuned without being rebuilt:
//!
//! ```text
//! SPANALLOC=profile_rate=512k,profile_path=/tmp/heap.pb.gz,stats_at_exit=1,decay_ms=500
//! ```
//!
//! | key | value | meaning |
//! |---|---|---|
//! | `profile_rate` | bytes, `k`/`m`/`g` suffixes (×1024) | mean bytes between heap-profile samples; 0 is off (the default), 1 samples every allocation |
//! | `profile_path` | a path, at most 255 bytes | write a heap profile (pprof, gzipped) there at exit |
//! | `stats_at_exit` | `1`/`0`, `true`/`false`, `yes`/`no`, `on`/`off` | print [`crate::stats`] to stderr at exit |
//! | `decay_ms` | milliseconds | how long free pages stay before the scavenger returns them |
//!
//! Items are separated by commas; an empty item (`a=1,,b=2`, a trailing
//! comma) is skipped. When a key is given twice the last value wins, with
//! a warning. Anything malformed (an unknown key, a missing `=`, a value
//! that is not a number or overflows 64 bits, a path too long) is
//! reported in one line on stderr that names spanalloc, and that item is
//! ignored; the others still apply. Nothing here can abort the process.
//!
//! The variable is read once, on first use of [`config`], with
//! `getenv` and parsed into a fixed [`Config`]: no allocation, so it can
//! run inside the allocator's first allocation, before `main`.

use core::cell::UnsafeCell;
use core::ffi::CStr;

use crate::report::Line;
use crate::sync::unmodelled::{AtomicUsize, Ordering};

/// The variable's name.
pub const VAR: &CStr = c"SPANALLOC";

/// The longest `profile_path`, in bytes.
pub const PATH_CAPACITY: usize = 255;

/// The settings of `SPANALLOC`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// `profile_rate`: mean bytes between samples (0: off).
    pub profile_rate: Option<u64>,
    /// `stats_at_exit`.
    pub stats_at_exit: bool,
    /// `decay_ms`.
    pub decay_ms: Option<u64>,
    path: [u8; PATH_CAPACITY],
    path_len: u8,
}

impl Default for Config {
    fn default() -> Self {
        Config::new()
    }
}

impl Config {
    /// Nothing set.
    pub const fn new() -> Self {
        Config { profile_rate: None, stats_at_exit: false, decay_ms: None, path: [0; PATH_CAPACITY], path_len: 0 }
    }

    /// `profile_path`, if given.
    pub fn profile_path(&self) -> Option<&[u8]> {
        (self.path_len > 0).then(|| &self.path[..usize::from(self.path_len)])
    }
}

/// What was wrong with an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The key is not one of spanalloc's.
    UnknownKey,
    /// The item has no `=`.
    MissingEquals,
    /// The value is not a number (or a boolean, for `stats_at_exit`).
    NotANumber,
    /// The number does not fit 64 bits.
    Overflow,
    /// The path is empty or longer than [`PATH_CAPACITY`].
    BadPath,
    /// The key was given before; this later value is used.
    Repeated,
}

impl Problem {
    fn says(self) -> &'static str {
        match self {
            Problem::UnknownKey => "unknown key (known: profile_rate, profile_path, stats_at_exit, decay_ms)",
            Problem::MissingEquals => "no '=' (items are key=value, separated by commas)",
            Problem::NotANumber => "the value is not a number (bytes may end in k, m or g; booleans are 1/0)",
            Problem::Overflow => "the number does not fit 64 bits",
            Problem::BadPath => "the path is empty or longer than 255 bytes",
            Problem::Repeated => "the key was given twice; the last value is used",
        }
    }

    /// Whether the item is ignored (rather than applied with a warning).
    pub fn ignored(self) -> bool {
        self != Problem::Repeated
    }
}

/// Parses the value of `SPANALLOC`, calling `warn` for each malformed item.
pub fn parse(s: &[u8], warn: &mut impl FnMut(&[u8], Problem)) -> Config {
    let mut c = Config::new();
    let mut seen = 0u8;
    for item in s.split(|&b| b == b',') {
        if item.is_empty() {
            continue;
        }
        let Some(eq) = item.iter().position(|&b| b == b'=') else {
            warn(item, Problem::MissingEquals);
            continue;
        };
        let (key, value) = (&item[..eq], &item[eq + 1..]);
        let bit = match key {
            b"profile_rate" => 1,
            b"profile_path" => 2,
            b"stats_at_exit" => 4,
            b"decay_ms" => 8,
            _ => {
                warn(item, Problem::UnknownKey);
                continue;
            }
        };
        let applied = match bit {
            1 => number(value, true).map(|v| c.profile_rate = Some(v)),
            2 => {
                if value.is_empty() || value.len() > PATH_CAPACITY || value.contains(&0) {
                    Err(Problem::BadPath)
                } else {
                    c.path[..value.len()].copy_from_slice(value);
                    c.path_len = value.len() as u8;
                    Ok(())
                }
            }
            4 => boolean(value).map(|v| c.stats_at_exit = v),
            _ => number(value, false).map(|v| c.decay_ms = Some(v)),
        };
        match applied {
            Err(p) => warn(item, p),
            Ok(()) if seen & bit != 0 => warn(item, Problem::Repeated),
            Ok(()) => seen |= bit,
        }
    }
    c
}

/// A decimal number, with a binary `k`/`m`/`g` suffix where `suffixes`.
fn number(v: &[u8], suffixes: bool) -> Result<u64, Problem> {
    let (digits, scale) = match v.last() {
        Some(b'k' | b'K') if suffixes => (&v[..v.len() - 1], 1u64 << 10),
        Some(b'm' | b'M') if suffixes => (&v[..v.len() - 1], 1 << 20),
        Some(b'g' | b'G') if suffixes => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(Problem::NotANumber);
    }
    let mut n = 0u64;
    for &d in digits {
        n = n.checked_mul(10).and_then(|n| n.checked_add(u64::from(d - b'0'))).ok_or(Problem::Overflow)?;
    }
    n.checked_mul(scale).ok_or(Problem::Overflow)
}

fn boolean(v: &[u8]) -> Result<bool, Problem> {
    match v {
        b"1" | b"true" | b"yes" | b"on" => Ok(true),
        b"0" | b"false" | b"no" | b"off" => Ok(false),
        _ => Err(Problem::NotANumber),
    }
}

/// The warning line for a malformed item.
fn warning(item: &[u8], problem: Problem) -> Line {
    let mut line = Line::new();
    line.str("spanalloc: ").str(if problem.ignored() { "ignoring " } else { "" }).str("SPANALLOC item: ");
    line.str(problem.says()).str(": '");
    let shown = &item[..item.len().min(80)];
    line.str(core::str::from_utf8(shown).unwrap_or("(not UTF-8)")).str("'");
    line
}

/// Writes one warning line to stderr.
fn report(item: &[u8], problem: Problem) {
    warning(item, problem).emit();
}

/// The configuration, read from the environment on first use.
struct Once {
    /// 0: not read; 1: being read; 2: ready.
    state: AtomicUsize,
    config: UnsafeCell<Config>,
}

// SAFETY: `config` is written once, by the thread that moved `state` from
// 0 to 1, before it publishes 2 with release ordering; readers read it only
// after seeing 2 with acquire ordering.
unsafe impl Sync for Once {}

static CONFIG: Once = Once { state: AtomicUsize::new(0), config: UnsafeCell::new(Config::new()) };

/// The settings of `SPANALLOC`, read and checked on the first call
/// (malformed items are reported on stderr then, once).
pub fn config() -> &'static Config {
    loop {
        match CONFIG.state.compare_exchange(0, 1, Ordering::Acquire, Ordering::Acquire) {
            Ok(_) => break,
            // SAFETY: state 2 publishes the finished config.
            Err(2) => return unsafe { &*CONFIG.config.get() },
            Err(_) => {
                // SAFETY: sched_yield has no preconditions.
                unsafe { libc::sched_yield() };
            }
        }
    }
    // SAFETY: getenv returns null or a NUL-terminated string that lives as
    // long as the environment is not changed.
    let raw = unsafe { libc::getenv(VAR.as_ptr()) };
    let c = if raw.is_null() {
        Config::new()
    } else {
        // SAFETY: as above.
        parse(unsafe { CStr::from_ptr(raw) }.to_bytes(), &mut report)
    };
    // SAFETY: only this thread (state 1) writes; no reader yet.
    unsafe { *CONFIG.config.get() = c };
    CONFIG.state.store(2, Ordering::Release);
    // SAFETY: as in the state-2 arm.
    unsafe { &*CONFIG.config.get() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(s: &str) -> (Config, Vec<(String, Problem)>) {
        let mut w = Vec::new();
        let c = parse(s.as_bytes(), &mut |item, p| w.push((String::from_utf8_lossy(item).into_owned(), p)));
        (c, w)
    }

    #[test]
    fn good_values_are_applied() {
        let (c, w) = run("profile_rate=524288,profile_path=/tmp/heap.pb.gz,stats_at_exit=1,decay_ms=500");
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.profile_rate, Some(524288));
        assert_eq!(c.profile_path(), Some(&b"/tmp/heap.pb.gz"[..]));
        assert!(c.stats_at_exit);
        assert_eq!(c.decay_ms, Some(500));
        assert_eq!(run("profile_rate=512k").0.profile_rate, Some(512 << 10));
        assert_eq!(run("profile_rate=2M").0.profile_rate, Some(2 << 20));
        assert_eq!(run("profile_rate=1g").0.profile_rate, Some(1 << 30));
        assert_eq!(run("profile_rate=0").0.profile_rate, Some(0));
        assert!(!run("stats_at_exit=off").0.stats_at_exit);
        assert_eq!(run("decay_ms=0").0.decay_ms, Some(0));
    }

    #[test]
    fn empty_and_unset_mean_defaults_without_warnings() {
        assert_eq!(run(""), (Config::new(), vec![]));
        assert_eq!(run(",,,"), (Config::new(), vec![]));
    }

    #[test]
    fn a_trailing_comma_and_empty_items_are_skipped() {
        let (c, w) = run("profile_rate=100,,decay_ms=7,");
        assert!(w.is_empty());
        assert_eq!((c.profile_rate, c.decay_ms), (Some(100), Some(7)));
    }

    #[test]
    fn malformed_items_are_reported_and_ignored_and_the_rest_applies() {
        let (c, w) =
            run("bogus=1,profile_rate,decay_ms=abc,profile_rate=99999999999999999999,profile_rate=5,decay_ms=-1");
        assert_eq!(c.profile_rate, Some(5));
        assert_eq!(c.decay_ms, None);
        let problems: Vec<_> = w.iter().map(|(i, p)| (i.as_str(), *p)).collect();
        assert_eq!(
            problems,
            [
                ("bogus=1", Problem::UnknownKey),
                ("profile_rate", Problem::MissingEquals),
                ("decay_ms=abc", Problem::NotANumber),
                ("profile_rate=99999999999999999999", Problem::Overflow),
                ("decay_ms=-1", Problem::NotANumber),
            ]
        );
    }

    #[test]
    fn numbers_at_the_edges() {
        assert_eq!(run("decay_ms=18446744073709551615").0.decay_ms, Some(u64::MAX));
        assert_eq!(run("decay_ms=18446744073709551616").1[0].1, Problem::Overflow);
        // A suffix that overflows.
        assert_eq!(run("profile_rate=17179869184g").1[0].1, Problem::Overflow);
        // Suffixes only where bytes are meant.
        assert_eq!(run("decay_ms=5k").1[0].1, Problem::NotANumber);
        for bad in [
            "profile_rate=",
            "profile_rate=k",
            "profile_rate= 5",
            "profile_rate=5 ",
            "profile_rate=0x10",
            "profile_rate=+5",
            "stats_at_exit=2",
            "stats_at_exit=",
        ] {
            assert_eq!(run(bad).1.len(), 1, "{bad}");
        }
    }

    #[test]
    fn a_repeated_key_keeps_the_last_value_with_a_warning() {
        let (c, w) = run("profile_rate=1,profile_rate=2");
        assert_eq!(c.profile_rate, Some(2));
        assert_eq!(w, [("profile_rate=2".to_string(), Problem::Repeated)]);
        // A malformed repeat leaves the first value.
        let (c, w) = run("decay_ms=3,decay_ms=x");
        assert_eq!(c.decay_ms, Some(3));
        assert_eq!(w[0].1, Problem::NotANumber);
    }

    #[test]
    fn paths_are_bounded() {
        let long = format!("profile_path={}", "a".repeat(PATH_CAPACITY));
        assert_eq!(run(&long).0.profile_path().map(<[u8]>::len), Some(PATH_CAPACITY));
        let too_long = format!("profile_path={}", "a".repeat(PATH_CAPACITY + 1));
        let (c, w) = run(&too_long);
        assert_eq!((c.profile_path(), w[0].1), (None, Problem::BadPath));
        assert_eq!(run("profile_path=").1[0].1, Problem::BadPath);
        // A path may hold '=' (only the first one separates).
        assert_eq!(run("profile_path=/tmp/a=b").0.profile_path(), Some(&b"/tmp/a=b"[..]));
    }

    #[test]
    fn warnings_fit_one_line_that_names_spanalloc() {
        let text = |l: Line| String::from_utf8(l.as_bytes().to_vec()).unwrap();
        let t = text(warning(b"bogus=1", Problem::UnknownKey));
        assert!(t.starts_with("spanalloc: ignoring SPANALLOC item: unknown key"), "{t}");
        assert!(t.ends_with("'bogus=1'") && !t.contains('\n'), "{t}");
        assert!(!text(warning(b"a=1", Problem::Repeated)).contains("ignoring"));
        // Long and non-UTF-8 items neither panic nor overflow the line.
        assert!(text(warning(&[0xff, 0xfe], Problem::UnknownKey)).contains("(not UTF-8)"));
        for p in [Problem::UnknownKey, Problem::MissingEquals, Problem::NotANumber, Problem::Overflow, Problem::BadPath]
        {
            let t = text(warning("x".repeat(1000).as_bytes(), p));
            assert!(t.len() < 256 && t.ends_with('\''), "{t}");
        }
    }
}
