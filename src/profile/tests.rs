//! Tests of the pieces together: the global table through the hooks, and
//! the pprof encoding read back by the decoder.

use super::*;

/// Tests that change the global rate run one at a time.
static RATE_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// One allocation of `size` at `addr` through the hooks as the allocator
/// will call them, with the stack given (so the test does not depend on
/// frame pointers). Returns whether it was recorded.
fn alloc(s: &mut Sampler, size: usize, addr: usize, frames: &[usize]) -> bool {
    if !s.charge(size) {
        return false;
    }
    match s.sampled(size) {
        Some(sample) => {
            record_frames(sample, addr, frames);
            true
        }
        None => false,
    }
}

const SITE_A: [usize; 3] = [0x5a5a_0001, 0x5a5a_0002, 0x5a5a_0003];
const SITE_B: [usize; 2] = [0x5b5b_0001, 0x5a5a_0003];
const SITE_C: [usize; 1] = [0x5c5c_0001];

fn ours<'a>(p: &'a Profile, frames: &[usize]) -> Vec<&'a StackRecord> {
    p.records.iter().filter(|r| r.frames == frames).collect()
}

#[test]
fn rate_one_through_the_hooks_is_exact_and_frees_return_to_zero() {
    let _l = RATE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    set_rate(1);
    let mut s = Sampler::with_seed(1);
    let base_a = 0x7a00_0000_0000usize;
    let base_b = 0x7b00_0000_0000usize;
    for i in 0..300 {
        assert!(alloc(&mut s, 48, base_a + i * 64, &SITE_A));
    }
    for i in 0..50 {
        assert!(alloc(&mut s, 4096, base_b + i * 4096, &SITE_B));
    }
    for i in 0..100 {
        assert!(unrecord(base_a + i * 64));
    }
    let p = snapshot();
    assert_eq!(p.rate, 1);
    let a = ours(&p, &SITE_A);
    let b = ours(&p, &SITE_B);
    assert_eq!((a.len(), b.len()), (1, 1));
    let (a, b) = (a[0], b[0]);
    assert_eq!((a.alloc_objects, a.alloc_bytes, a.inuse_objects, a.inuse_bytes), (300, 300 * 48, 200, 200 * 48));
    assert_eq!((b.alloc_objects, b.inuse_objects, b.inuse_bytes, b.object_size), (50, 50, 50 * 4096, Some(4096)));
    for i in 100..300 {
        assert!(unrecord(base_a + i * 64));
    }
    for i in 0..50 {
        assert!(unrecord(base_b + i * 4096));
    }
    assert!(!unrecord(base_b), "freed twice");
    let p = snapshot();
    let a = ours(&p, &SITE_A)[0];
    assert_eq!((a.alloc_objects, a.inuse_objects, a.inuse_bytes, a.live_samples), (300, 0, 0, 0));
    set_rate(0);
}

#[test]
fn off_records_nothing_and_the_profiler_does_not_sample_itself() {
    let _l = RATE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    set_rate(0);
    let mut s = Sampler::with_seed(3);
    for i in 0..(2 * PARKED as usize / 4096) {
        assert!(!alloc(&mut s, 4096, 0x7c00_0000_0000 + i * 4096, &SITE_C));
    }
    set_rate(1);
    {
        let _inside = Guard::enter();
        assert!(!alloc(&mut s, 64, 0x7d00_0000_0000, &SITE_C));
    }
    // Outside again, once the parked countdown runs out it samples.
    let mut recorded = false;
    for i in 0..(PARKED as usize / 4096 + 2) {
        let addr = 0x7e00_0000_0000 + i * 4096;
        if alloc(&mut s, 4096, addr, &SITE_C) {
            recorded = true;
            assert!(unrecord(addr));
        }
    }
    assert!(recorded);
    assert!(!unrecord(0x7d00_0000_0000), "the profiler's own allocation was not recorded");
    set_rate(0);
}

#[test]
fn rates_are_capped_and_reported() {
    let _l = RATE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    set_rate(u64::MAX);
    assert_eq!(rate(), MAX_RATE);
    set_rate(0);
    assert_eq!(rate(), 0);
}

#[inline(never)]
fn probe_inner(out: &mut [usize]) -> usize {
    walk(current_thread_bounds(), 0, out)
}

#[inline(never)]
fn probe_outer(out: &mut [usize]) -> usize {
    core::hint::black_box(probe_inner(out))
}

/// Whether this build keeps frame pointers in Rust functions.
fn built_with_frame_pointers() -> bool {
    let mut f = [0; 4];
    let n = probe_outer(&mut f);
    let outer = probe_outer as *const () as usize;
    n >= 2 && f[1] > outer && f[1] < outer + 512
}

#[inline(never)]
fn record_site(s: &mut Sampler, addr: usize) -> bool {
    let r = s.charge(8) && sample_slow(s, 8, addr, 0, None);
    core::hint::black_box(r)
}

#[test]
fn record_walks_from_its_callers_call_site() {
    let _l = RATE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut f = [0; 4];
    assert!(probe_inner(&mut f) >= 1);
    let inner = probe_inner as *const () as usize;
    assert!(f[0] > inner && f[0] < inner + 512, "the first frame is the call site in the caller");
    set_rate(1);
    let mut s = Sampler::with_seed(5);
    let addr = 0x7f00_0000_1000usize;
    assert!(record_site(&mut s, addr));
    let p = snapshot();
    let site = record_site as *const () as usize;
    let r: Vec<_> =
        p.records.iter().filter(|r| r.frames.first().is_some_and(|&f| f > site && f < site + 4096)).collect();
    assert_eq!(r.len(), 1, "one stack starting in record_site");
    if built_with_frame_pointers() {
        assert!(r[0].frames.len() > 3, "the walk reaches the test harness: {:x?}", r[0].frames);
    } else {
        eprintln!("built without frame pointers: only the first frame was checked (see scripts/profile-fp-tests.sh)");
    }
    assert!(unrecord(addr));
    set_rate(0);
}

#[test]
fn fork_locks_include_the_table() {
    let mut n = 0;
    for_each_lock(|l| {
        l.lock();
        // SAFETY: taken just above.
        unsafe { l.unlock() };
        n += 1;
    });
    assert_eq!(n, 1);
}

/// A synthetic profile: two stacks in this binary's text, the overflow
/// record and a stack-less record.
fn synthetic() -> Profile {
    let f = synthetic as *const () as usize;
    Profile {
        rate: 524288,
        time_nanos: 1_700_000_000_000_000_000,
        records: vec![
            StackRecord {
                frames: vec![f + 10, f + 20],
                alloc_objects: 3,
                alloc_bytes: 300,
                inuse_objects: 1,
                inuse_bytes: 100,
                object_size: Some(100),
                samples: 3,
                live_samples: 1,
                overflow: false,
            },
            StackRecord { frames: vec![f + 30, f + 20], alloc_objects: 5, alloc_bytes: 0, ..Default::default() },
            StackRecord { overflow: true, alloc_objects: 7, alloc_bytes: 70, samples: 2, ..Default::default() },
            StackRecord { inuse_objects: 2, inuse_bytes: 16, samples: 1, ..Default::default() },
        ],
        mappings: current_mappings(),
        dropped: Dropped { evicted: 4, ..Default::default() },
    }
}

#[test]
fn pprof_round_trips_through_the_decoder() {
    let p = synthetic();
    let d = decode::decode(&p.to_pprof()).expect("a valid profile");
    let types: Vec<_> = d.sample_types.iter().map(|(t, u)| format!("{t}/{u}")).collect();
    assert_eq!(types, ["alloc_objects/count", "alloc_space/bytes", "inuse_objects/count", "inuse_space/bytes"]);
    assert_eq!(d.period_type, ("space".to_string(), "bytes".to_string()));
    assert_eq!(d.period, 524288);
    assert_eq!(d.time_nanos, 1_700_000_000_000_000_000);
    assert_eq!(d.default_sample_type, "inuse_space");
    assert_eq!(d.drop_frames, DROP_FRAMES);
    assert!(d.comments.iter().any(|c| c.contains("4 stacks evicted")));
    assert_eq!(d.samples.len(), 4);
    assert_eq!(d.samples[0].values, [3, 300, 1, 100]);
    assert_eq!(d.samples[1].values, [5, 0, 0, 0], "zeros keep their place");
    assert_eq!(d.samples[0].num_labels, [("bytes".to_string(), 100, "bytes".to_string())]);
    assert!(d.samples[1].num_labels.is_empty());
    // Location ids run from 1 in order; the shared caller frame is one
    // location; addresses are return addresses minus one.
    assert_eq!(d.location_order, (1..=d.locations.len() as u64).collect::<Vec<_>>());
    assert_eq!(d.samples[0].location_ids[1], d.samples[1].location_ids[1]);
    let f = synthetic as *const () as usize as u64;
    let leaf = &d.locations[&d.samples[0].location_ids[0]];
    assert_eq!(leaf.address, f + 9);
    // It lies in the main program's mapping, mapping 1.
    assert_eq!(leaf.mapping_id, 1);
    let m = &d.mappings[0];
    assert!(m.start <= leaf.address && leaf.address < m.limit);
    assert_eq!(m.filename, std::fs::read_link("/proc/self/exe").unwrap().to_string_lossy());
    assert!(!m.build_id.is_empty());
    // The synthetic frames name themselves.
    let name = |s: &decode::Sample| {
        let l = &d.locations[&s.location_ids[0]];
        d.functions[&l.function_ids[0]].clone()
    };
    assert_eq!(name(&d.samples[2]), OVERFLOW_FRAME);
    assert_eq!(name(&d.samples[3]), NO_STACK_FRAME);
    assert_eq!(d.samples[2].values, [7, 70, 0, 0]);
}

#[test]
fn write_pprof_is_gzip_of_the_message() {
    let p = synthetic();
    let mut gz = Vec::new();
    p.write_pprof(&mut gz).unwrap();
    assert_eq!(&gz[..3], &[0x1f, 0x8b, 8]);
    let mut child = std::process::Command::new("gzip")
        .arg("-dc")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &gz).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, p.to_pprof());
}

#[test]
fn an_empty_profile_is_still_valid() {
    let d = decode::decode(&Profile::default().to_pprof()).unwrap();
    assert_eq!(d.sample_types.len(), 4);
    assert!(d.samples.is_empty());
}
