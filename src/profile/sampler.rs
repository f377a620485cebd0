//! The sampling decision: a per-thread byte countdown with exponential gaps.
//!
//! Go samples one allocation per `MemProfileRate` bytes on average: each
//! mcache keeps `nextSample`, the bytes left before the next sample, drawn
//! from an exponential distribution (`nextSample`, `fastexprand` in Go's
//! `malloc.go`). Sample points then form a Poisson process over the bytes
//! a thread allocates, and an allocation of `s` bytes holds at least one of
//! them with probability `1 − e^(−s/R)`, independently of every other
//! allocation. Weighing a sampled object by the inverse of that probability
//! (Go's `scaleHeapSample`) makes every sum over samples an unbiased
//! estimate of the sum over all objects.
//!
//! [`Sampler`] is that countdown. Its fast path, [`Sampler::charge`], is a
//! subtraction and a sign test: `sub size, [next]; js cold`. Only when the
//! count goes below zero does [`Sampler::sampled`] run, which decides, draws
//! the next gap and hands back a [`Sample`] with the object's weight.
//!
//! # Off, on, and rate changes
//!
//! There is no "profiling on?" test on the fast path. While profiling is
//! off the countdown is *parked* at [`PARKED`] bytes, so the slow path runs
//! once per 4 MiB a thread allocates, sees the rate is still 0 and parks
//! again (jemalloc re-checks at least every 4 MiB the same way). A fresh
//! sampler starts at 0: its first allocation takes the slow path and arms
//! it with the current rate. After `set_rate` a thread thus notices within
//! its current gap or parking; [`Sampler::refresh`] lets a refill path
//! notice at once.
//!
//! Each gap remembers the rate it was drawn with, and a sample is weighed
//! by that rate, not by whatever the rate is when the gap runs out
//! (TCMalloc does the same): changing the rate never biases a sample.
//! Rate 1 means every allocation, with weight exactly 1 (the gap is 0, so
//! every allocation of at least one byte takes the slow path).
//!
//! # The exponential draw, without floating point
//!
//! A gap is `⌊−ln(U)·R⌋` for a uniform `U` in (0, 1]. As Go's `fastexprand`,
//! `U = q / 2^26` with `q` uniform in `1..=2^26`, and `−ln(U) = −log2(U)·ln 2`.
//! Here `log2` is computed in 32.32 fixed point by repeated squaring of
//! the mantissa (exact to 32 bits, no table, no `f64`), and the product
//! with `ln 2` and the rate is taken in 128-bit integers. Nothing can be
//! NaN, infinite or out of range: the largest gap is `26·ln 2·R ≈ 18·R`,
//! and rates are capped at [`MAX_RATE`] (1 TiB), so gaps fit an `i64`.
//!
//! The uniform bits come from wyrand (one 64×64→128 multiply per draw),
//! seeded per thread on first use from the thread's id, a stack address,
//! the clock and a process-wide counter. Tests seed it explicitly.
//!
//! Nothing here allocates, locks or panics.

use crate::sync::unmodelled::{AtomicU64, Ordering};

/// Bytes a parked (profiling off) countdown waits before looking at the
/// rate again.
pub const PARKED: i64 = 4 << 20;

/// The largest sampling rate (mean gap in bytes); larger rates are capped.
pub const MAX_RATE: u64 = 1 << 40;

/// Bits of uniform randomness per gap (as Go's `randomBitCount`).
const RANDOM_BITS: u32 = 26;

/// `ln 2` in 0.32 fixed point.
const LN2_Q32: u128 = 0xb172_17f8;

/// A per-thread sampling countdown.
///
/// The fast path touches only `next`; the other fields are read on the
/// slow path.
#[derive(Debug, Clone)]
#[repr(C)]
pub struct Sampler {
    /// Bytes left before the next sample point. The allocation that takes
    /// it below zero holds the point.
    next: i64,
    /// The rate the current gap was drawn with; 0 while parked or not yet
    /// armed.
    drawn_with: u64,
    /// wyrand state; 0 until seeded.
    rng: u64,
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler::new()
    }
}

/// A sampled allocation: its size and how many objects it stands for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// The size the allocation was charged with.
    pub size: u64,
    /// `1 / (1 − e^(−size/rate))` for the rate its gap was drawn with; 1 at
    /// rate 1.
    pub weight: f64,
}

impl Sampler {
    /// A sampler that takes the slow path on its first allocation, where it
    /// arms itself with the current rate (or parks).
    pub const fn new() -> Self {
        Sampler { next: 0, drawn_with: 0, rng: 0 }
    }

    /// A sampler with a fixed seed (tests, reproducible runs).
    pub const fn with_seed(seed: u64) -> Self {
        Sampler { next: 0, drawn_with: 0, rng: seed | 1 }
    }

    /// Charges an allocation of `size` bytes. Returns true when the
    /// countdown ran out: the caller must then call [`Sampler::sampled`].
    ///
    /// Two instructions when inlined: a subtraction from memory and a
    /// jump on the sign.
    #[inline(always)]
    pub fn charge(&mut self, size: usize) -> bool {
        self.next = self.next.wrapping_sub(size as i64);
        self.next < 0
    }

    /// The bytes left before the next sample point (negative after a
    /// `charge` that returned true).
    #[inline]
    pub fn remaining(&self) -> i64 {
        self.next
    }

    /// The slow path after [`Sampler::charge`] returned true for an
    /// allocation of `size` bytes. Re-arms (or parks) the countdown, and
    /// returns the sample when this allocation is to be recorded: it held a
    /// sample point, profiling is on, and the thread is not inside the
    /// profiler.
    #[cold]
    #[inline(never)]
    pub fn sampled(&mut self, size: usize) -> Option<Sample> {
        self.sampled_at(size, super::rate(), super::in_profiler())
    }

    /// [`Sampler::sampled`] with the rate and the in-profiler flag given.
    pub(crate) fn sampled_at(&mut self, size: usize, rate: u64, in_profiler: bool) -> Option<Sample> {
        let hit_rate = if self.drawn_with != 0 {
            self.drawn_with
        } else {
            // Parked or fresh: the sample process starts now, and this
            // allocation is its first.
            if rate == 0 {
                self.park();
                return None;
            }
            self.arm(rate);
            self.next = self.next.wrapping_sub(size as i64);
            if self.next >= 0 {
                return None;
            }
            rate
        };
        // The gap drawn with `hit_rate` ran out inside this allocation.
        if rate == 0 {
            self.park();
            return None;
        }
        self.arm(rate);
        if in_profiler {
            return None;
        }
        Some(Sample { size: size as u64, weight: weight(size as u64, hit_rate) })
    }

    /// Re-arms the countdown if the rate changed since its gap was drawn
    /// (for slow paths that run often enough, like a refill). One load and
    /// a compare when nothing changed.
    #[inline]
    pub fn refresh(&mut self) {
        let rate = super::rate();
        if rate != self.drawn_with {
            self.refresh_to(rate);
        }
    }

    #[cold]
    fn refresh_to(&mut self, rate: u64) {
        if rate == 0 { self.park() } else { self.arm(rate) }
    }

    fn park(&mut self) {
        self.next = PARKED;
        self.drawn_with = 0;
    }

    /// Draws a fresh gap with mean `rate`.
    fn arm(&mut self, rate: u64) {
        let rate = rate.min(MAX_RATE);
        self.next = if rate == 1 { 0 } else { exp_gap(self.uniform_q(), rate) as i64 };
        self.drawn_with = rate;
    }

    /// A fresh exponential gap in bytes with mean `rate` (0 at rate 1),
    /// from this sampler's random numbers: for countdowns kept elsewhere
    /// (the allocator's per-class object countdowns: `⌊gap / size⌋`
    /// objects of `size` bytes go unsampled before the next sampled one,
    /// which makes each allocation a sample with probability exactly
    /// `1 − e^(−size/rate)`).
    pub(crate) fn draw_gap(&mut self, rate: u64) -> u64 {
        if rate <= 1 { 0 } else { exp_gap(self.uniform_q(), rate) }
    }

    /// A uniform integer in `1..=2^RANDOM_BITS`.
    fn uniform_q(&mut self) -> u64 {
        if self.rng == 0 {
            self.rng = fresh_seed(self as *const Sampler as u64);
        }
        (wyrand(&mut self.rng) >> (64 - RANDOM_BITS)) + 1
    }
}

/// One step of wyrand.
#[inline]
pub(crate) fn wyrand(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0xa076_1d64_78bd_642f);
    let t = (*state as u128).wrapping_mul((*state ^ 0xe703_7ed1_a0b4_28db) as u128);
    ((t >> 64) as u64) ^ (t as u64)
}

/// splitmix64's finaliser: spreads the bits of a poor seed.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A seed for a thread's sampler, never 0.
#[cold]
fn fresh_seed(salt: u64) -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let clock = (ts.tv_sec as u64).wrapping_mul(1_000_000_007) ^ ts.tv_nsec as u64;
    mix(salt ^ mix(clock ^ mix(n ^ crate::os::thread_id()))) | 1
}

/// `log2(q)` in 32.32 fixed point, for `q >= 1`: the integer part from
/// the leading zeros, then one fractional bit per squaring of the
/// mantissa.
pub(crate) fn log2_q32(q: u64) -> u64 {
    debug_assert!((1..1 << 32).contains(&q));
    let e = 63 - q.leading_zeros() as u64;
    // The mantissa q / 2^e in [1, 2), as 1.31 fixed point.
    let mut m = (q << 31) >> e;
    let mut frac = 0u64;
    for bit in (0..32).rev() {
        // m < 2^32, so m * m < 2^64.
        m = (m * m) >> 31;
        if m >= 1 << 32 {
            m >>= 1;
            frac |= 1 << bit;
        }
    }
    (e << 32) | frac
}

/// An exponential gap with mean `rate` from the uniform `q` in
/// `1..=2^26`: `G = ⌊−log2(q / 2^26)·ln 2·rate⌋`.
///
/// No `+ 1` (Go adds one and samples when the count reaches zero): here an
/// allocation of `s` bytes is sampled when the count goes *below* zero,
/// that is when `G < s`, which for the floor of an exponential `E` is
/// `E < s`: probability `1 − e^(−s/R)` exactly, the weight's assumption.
/// A gap of `G + 1` would sample with `1 − e^(−(s−1)/R)`, 6% too seldom
/// for 16-byte objects.
pub(crate) fn exp_gap(q: u64, rate: u64) -> u64 {
    let neg_log2 = ((RANDOM_BITS as u64) << 32).saturating_sub(log2_q32(q)) as u128;
    // < 2^37 · 2^32 · 2^40 = 2^109: no overflow.
    ((neg_log2 * LN2_Q32 * rate.min(MAX_RATE) as u128) >> 64) as u64
}

/// How many objects of `size` bytes one sample stands for at `rate`:
/// `1 / (1 − e^(−size/rate))`, computed with `expm1` so that small
/// `size/rate` loses no precision; exactly 1 at rate 1.
pub fn weight(size: u64, rate: u64) -> f64 {
    if rate <= 1 {
        return 1.0;
    }
    let x = size.max(1) as f64 / rate as f64;
    1.0 / -(-x).exp_m1()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log2_is_exact_on_powers_of_two_and_close_elsewhere() {
        for e in 0..32 {
            assert_eq!(log2_q32(1 << e), (e as u64) << 32);
        }
        for q in [3u64, 5, 1000, 12345, (1 << 26) - 1, 1 << 26] {
            let got = log2_q32(q) as f64 / 4294967296.0;
            assert!((got - (q as f64).log2()).abs() < 1e-8, "log2({q}) = {got}");
        }
    }

    #[test]
    fn gaps_have_the_exponential_extremes() {
        // q = 2^26 is U = 1: the shortest gap.
        assert_eq!(exp_gap(1 << 26, 512 << 10), 0);
        // q = 1 is the longest: 26·ln 2 ≈ 18.02 rates.
        let longest = exp_gap(1, 512 << 10) as f64 / (512 << 10) as f64;
        assert!((longest - 26.0 * 2f64.ln()).abs() < 1e-5, "{longest}");
        // The cap keeps the longest gap of the largest rate in an i64.
        assert!(exp_gap(1, u64::MAX) < i64::MAX as u64);
    }

    #[test]
    fn exponential_gap_mean_is_the_rate() {
        for (seed, rate) in [(1u64, 512u64 << 10), (2, 16 << 10), (3, 100)] {
            let mut s = seed;
            let n = 200_000;
            let (mut sum, mut sq) = (0f64, 0f64);
            for _ in 0..n {
                let g = exp_gap((wyrand(&mut s) >> 38) + 1, rate) as f64;
                sum += g;
                sq += g * g;
            }
            let mean = sum / n as f64;
            let sd = (sq / n as f64 - mean * mean).sqrt();
            // The standard error of the mean is rate/√n ≈ 0.22%; the
            // exponential's s.d. equals its mean.
            assert!((mean / rate as f64 - 1.0).abs() < 0.02, "rate {rate}: mean {mean}");
            assert!((sd / rate as f64 - 1.0).abs() < 0.05, "rate {rate}: sd {sd}");
        }
    }

    #[test]
    fn weight_is_the_inverse_sampling_probability() {
        assert_eq!(weight(16, 1), 1.0);
        assert_eq!(weight(1 << 20, 1), 1.0);
        // HEAP-PROFILING's figures at 512 KiB: 16 B is weighed ×32768.5.
        let r = 512 << 10;
        assert!((weight(16, r) - 32768.5).abs() < 0.01);
        assert!((1.0 / weight(4096, r) - 0.00778).abs() < 1e-5);
        assert!((1.0 / weight(1 << 20, r) - 0.8647).abs() < 1e-4);
        // Huge objects are always sampled, weight → 1.
        assert!((weight(1 << 40, r) - 1.0).abs() < 1e-12);
        // No precision lost for tiny size/rate (1 − e^(−x) would cancel).
        assert!((weight(1, MAX_RATE) / MAX_RATE as f64 - 1.0).abs() < 1e-9);
        assert!(weight(0, r).is_finite());
    }

    #[test]
    fn rate_one_samples_every_allocation_with_weight_one() {
        let mut s = Sampler::with_seed(7);
        for size in [1usize, 8, 24, 4096, 1 << 20] {
            assert!(s.charge(size));
            assert_eq!(s.sampled_at(size, 1, false), Some(Sample { size: size as u64, weight: 1.0 }));
        }
    }

    #[test]
    fn off_parks_and_notices_the_rate_within_the_parking() {
        let mut s = Sampler::with_seed(9);
        // Fresh: the first allocation takes the slow path and parks.
        assert!(s.charge(64));
        assert_eq!(s.sampled_at(64, 0, false), None);
        assert_eq!(s.remaining(), PARKED);
        // Parked: one slow path per 4 MiB.
        let mut slow = 0;
        for _ in 0..=(PARKED / 64) {
            if s.charge(64) {
                slow += 1;
                assert_eq!(s.sampled_at(64, 0, false), None);
            }
        }
        assert_eq!(slow, 1);
        // The next slow path after the rate is set arms the countdown.
        while !s.charge(64) {}
        let _ = s.sampled_at(64, 1, false);
        assert_eq!(s.drawn_with, 1);
    }

    #[test]
    fn samples_are_weighed_by_the_rate_their_gap_was_drawn_with() {
        let mut s = Sampler::with_seed(11);
        let old = 1 << 20;
        while !s.charge(4096) {}
        let _ = s.sampled_at(4096, old, false);
        assert_eq!(s.drawn_with, old);
        // The gap drawn at 1 MiB runs out after the rate became 16 KiB.
        let sample = loop {
            if s.charge(4096) {
                break s.sampled_at(4096, 16 << 10, false);
            }
        };
        assert_eq!(sample.unwrap().weight, weight(4096, old));
        assert_eq!(s.drawn_with, 16 << 10);
        // Inside the profiler nothing is recorded, but the gap is redrawn.
        let again = loop {
            if s.charge(4096) {
                break s.sampled_at(4096, 16 << 10, true);
            }
        };
        assert_eq!(again, None);
        assert!(s.remaining() > 0);
    }

    #[test]
    fn sampled_fraction_matches_the_probability() {
        // At R = 16 KiB, 256 B objects are sampled with p = 1 − e^(−1/64).
        let rate = 16 << 10;
        let mut s = Sampler::with_seed(5);
        let n = 400_000u64;
        let mut hits = 0u64;
        let mut est = 0f64;
        for _ in 0..n {
            if s.charge(256)
                && let Some(x) = s.sampled_at(256, rate, false)
            {
                hits += 1;
                est += x.weight;
            }
        }
        let p = 1.0 - (-256f64 / rate as f64).exp();
        let expected = n as f64 * p;
        // ≈ 6,200 expected samples: 1.3% relative s.d.; allow 6%.
        assert!((hits as f64 / expected - 1.0).abs() < 0.06, "{hits} vs {expected}");
        assert!((est / n as f64 - 1.0).abs() < 0.06, "estimated {est} objects of {n}");
    }
}
