//! The heap profile file is what pprof expects: a synthetic snapshot whose
//! stacks lie in functions of this test binary is written with
//! `write_pprof`, decompressed with `gzip -dc`, read back with the
//! decoder, and given to `go tool pprof`, whose `-raw` dump must show the
//! four sample types and the values, and whose `-top` must name the
//! functions. Without `go` (Debian: `apt-get install golang-go`) the pprof
//! part is skipped with a message.

#[global_allocator]
static A: spanalloc::SpanAlloc = spanalloc::SpanAlloc;

use std::path::{Path, PathBuf};
use std::process::Command;

use spanalloc::profile::{self, Dropped, OVERFLOW_FRAME, Profile, StackRecord, decode};

#[inline(never)]
fn heap_site_alpha(n: u64) -> u64 {
    (0..n).map(|i| std::hint::black_box(i * 3)).sum()
}

#[inline(never)]
fn heap_site_beta(n: u64) -> u64 {
    (0..n).map(|i| std::hint::black_box(i ^ 5)).sum()
}

#[inline(never)]
fn heap_site_caller(n: u64) -> u64 {
    heap_site_alpha(n) + heap_site_beta(n)
}

/// A return address inside `f` (its first byte after the call would be;
/// pprof looks up the address minus one, which is then `f`'s start).
fn inside(f: fn(u64) -> u64) -> usize {
    f as usize + 1
}

fn synthetic() -> Profile {
    std::hint::black_box(heap_site_caller(3));
    let caller = inside(heap_site_caller);
    Profile {
        rate: 512 << 10,
        time_nanos: 1,
        records: vec![
            StackRecord {
                frames: vec![inside(heap_site_alpha), caller],
                alloc_objects: 4000,
                alloc_bytes: 4000 * 96,
                inuse_objects: 1000,
                inuse_bytes: 96_000,
                object_size: Some(96),
                samples: 12,
                live_samples: 3,
                overflow: false,
            },
            StackRecord {
                frames: vec![inside(heap_site_beta), caller],
                alloc_objects: 10,
                alloc_bytes: 10 << 20,
                inuse_objects: 7,
                inuse_bytes: 7 << 20,
                object_size: Some(1 << 20),
                samples: 10,
                live_samples: 7,
                overflow: false,
            },
            StackRecord { overflow: true, alloc_objects: 5, alloc_bytes: 500, samples: 1, ..Default::default() },
        ],
        mappings: profile::current_mappings(),
        dropped: Dropped::default(),
    }
}

fn temp_file(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("spanalloc-profile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn write_file(p: &Profile, path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    p.write_pprof(&mut f).unwrap();
}

#[test]
fn the_file_is_gzip_of_a_profile_the_decoder_accepts() {
    let p = synthetic();
    let path = temp_file("decode.pb.gz");
    write_file(&p, &path);
    let out = Command::new("gzip").arg("-dc").arg(&path).output().unwrap();
    assert!(out.status.success(), "gzip -dc: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, p.to_pprof());
    let d = decode::decode(&out.stdout).expect("a valid profile");
    assert_eq!(d.column("inuse_space"), [96_000, 7 << 20, 0]);
    assert_eq!(d.column("alloc_objects"), [4000, 10, 5]);
    assert_eq!(d.period, 512 << 10);
    assert!(
        d.mappings[0].filename.ends_with(&*std::env::current_exe().unwrap().file_name().unwrap().to_string_lossy())
    );
    std::fs::remove_file(path).ok();
}

/// `go tool pprof` with the given arguments, or `None` when Go is absent.
fn pprof(args: &[&str]) -> Option<String> {
    let out =
        match Command::new("go").arg("tool").arg("pprof").args(args).env("PPROF_TMPDIR", std::env::temp_dir()).output()
        {
            Ok(out) => out,
            Err(_) => {
                eprintln!(
                    "skipped: `go` not found (Debian: apt-get install golang-go); the pprof format check did not run"
                );
                return None;
            }
        };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "go tool pprof {args:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    Some(stdout)
}

#[test]
fn go_tool_pprof_reads_the_profile_and_names_the_functions() {
    let p = synthetic();
    let path = temp_file("pprof.pb.gz");
    write_file(&p, &path);
    let exe = std::env::current_exe().unwrap();
    let (exe, file) = (exe.to_str().unwrap(), path.to_str().unwrap());
    let Some(raw) = pprof(&["-raw", exe, file]) else { return };
    for ty in ["alloc_objects/count", "alloc_space/bytes", "inuse_objects/count", "inuse_space/bytes"] {
        assert!(raw.contains(ty), "-raw lacks {ty}:\n{raw}");
    }
    assert!(raw.contains("PeriodType: space bytes"), "{raw}");
    assert!(raw.contains("Period: 524288"), "{raw}");
    // The values as written, unscaled: pprof scales only legacy formats.
    let words: Vec<&str> = raw.split_whitespace().collect();
    assert!(words.windows(4).any(|w| w == ["4000", "384000", "1000", "96000:"]), "{raw}");
    assert!(words.windows(4).any(|w| w == ["10", "10485760", "7", "7340032:"]), "{raw}");
    assert!(raw.contains("bytes:[96 bytes]"), "the size label: {raw}");
    for f in ["heap_site_alpha", "heap_site_beta", "heap_site_caller"] {
        assert!(raw.contains(f), "-raw does not name {f}:\n{raw}");
    }

    let top = pprof(&["-top", "-sample_index=inuse_space", exe, file]).unwrap();
    let line = |name: &str| {
        top.lines().find(|l| l.contains(name)).unwrap_or_else(|| panic!("-top lacks {name}:\n{top}")).to_string()
    };
    assert!(line("heap_site_beta").contains("7168kB"), "{top}");
    assert!(line("heap_site_alpha").contains("93.75kB"), "{top}");
    assert!(top.contains("Type: inuse_space"), "{top}");

    let top = pprof(&["-top", "-nodefraction=0", "-sample_index=alloc_objects", exe, file]).unwrap();
    assert!(line_of(&top, "heap_site_alpha").contains("4000"), "{top}");
    assert!(line_of(&top, OVERFLOW_FRAME).contains('5'), "the overflow record shows under its own name:\n{top}");
    std::fs::remove_file(path).ok();
}

fn line_of(text: &str, name: &str) -> String {
    text.lines().find(|l| l.contains(name)).unwrap_or_else(|| panic!("no {name}:\n{text}")).to_string()
}

#[test]
fn a_profile_of_samples_taken_here_names_this_function() {
    // The real path, short of the allocator's hook: samples recorded from
    // this test with `record` (so their stacks come from the walk), written
    // by `write_pprof`, read by pprof. The walk's first frame is exact in
    // any build; deeper ones need frame pointers, so only the leaf is
    // checked.
    profile::set_rate(1);
    let mut s = profile::Sampler::with_seed(1);
    let base = 0x6a00_0000_0000usize;
    let mut addrs = Vec::new();
    for i in 0..10 {
        if s.charge(256)
            && let Some(sample) = s.sampled(256)
        {
            recording_site(sample, base + i * 256);
            addrs.push(base + i * 256);
        }
    }
    profile::set_rate(0);
    assert_eq!(addrs.len(), 10);
    let path = temp_file("record.pb.gz");
    let mut f = std::fs::File::create(&path).unwrap();
    profile::write_pprof(&mut f).unwrap();
    drop(f);
    for a in addrs {
        assert!(profile::unrecord(a));
    }
    let exe = std::env::current_exe().unwrap();
    // In bytes: at rate 1 the process's own allocations meanwhile are in the
    // profile too, and pprof would pick the unit from the total.
    let Some(top) =
        pprof(&["-top", "-unit=B", "-sample_index=alloc_space", exe.to_str().unwrap(), path.to_str().unwrap()])
    else {
        return;
    };
    assert!(line_of(&top, "recording_site").contains("2560B"), "{top}");
    std::fs::remove_file(path).ok();
}

#[inline(never)]
fn recording_site(sample: profile::Sample, addr: usize) {
    // skip 0: the first frame is the call site inside this function.
    profile::record(sample, addr, 0, None);
    std::hint::black_box(addr);
}
