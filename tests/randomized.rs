//! A randomized whole-allocator test: over a million operations (alloc,
//! realloc, free) of 1 B to 4 MiB at mixed alignments on several threads,
//! with many objects freed on another thread than the one that allocated
//! them. Every object carries a byte pattern, written when it is allocated
//! or resized and checked in full before it is resized or freed, so any
//! overlap between live objects or any write by the allocator into a live
//! object is caught.

#[global_allocator]
static A: spanalloc::SpanAlloc = spanalloc::SpanAlloc;

use std::alloc::{GlobalAlloc, Layout};
use std::sync::{Arc, Mutex};

use support::Rng;

mod support;

const THREADS: usize = 4;
const OPS_PER_THREAD: usize = 300_000;
const MAX_LIVE: usize = 1500;

/// A live object and the byte every one of its bytes holds.
struct Obj {
    ptr: *mut u8,
    layout: Layout,
    tag: u8,
}

// SAFETY: objects are plain memory, handed whole from thread to thread.
unsafe impl Send for Obj {}

fn random_layout(rng: &mut Rng) -> Layout {
    let size = match rng.below(100) {
        0..70 => 1 + rng.below(256),
        70..90 => 257 + rng.below(32 << 10),
        90..99 => (32 << 10) + rng.below(480 << 10),
        _ => (512 << 10) + rng.below((4 << 20) - (512 << 10) + 1),
    } as usize;
    let align = match rng.below(100) {
        0..80 => 1 << rng.below(5),
        80..97 => 1 << (5 + rng.below(8)),
        _ => 1 << (13 + rng.below(9)), // up to 2 MiB
    };
    Layout::from_size_align(size, align).unwrap()
}

fn fill(obj: &Obj, from: usize) {
    // SAFETY: the object holds layout.size() bytes.
    unsafe { obj.ptr.add(from).write_bytes(obj.tag, obj.layout.size() - from) };
}

fn check(obj: &Obj, len: usize) {
    let chunk = [obj.tag; 4096];
    // SAFETY: the object holds at least `len` bytes.
    let bytes = unsafe { std::slice::from_raw_parts(obj.ptr, len) };
    for (i, part) in bytes.chunks(4096).enumerate() {
        if part != &chunk[..part.len()] {
            let at = part.iter().position(|&b| b != obj.tag).unwrap();
            panic!(
                "object {:p} ({:?}) corrupted at byte {}: {:#x} instead of {:#x}",
                obj.ptr,
                obj.layout,
                i * 4096 + at,
                part[at],
                obj.tag
            );
        }
    }
}

fn free(obj: Obj) {
    check(&obj, obj.layout.size());
    // SAFETY: allocated by A with this layout.
    unsafe { A.dealloc(obj.ptr, obj.layout) };
}

fn worker(id: usize, mailboxes: Arc<Vec<Mutex<Vec<Obj>>>>) -> u64 {
    let mut rng = Rng::new(id as u64);
    let mut live: Vec<Obj> = Vec::with_capacity(MAX_LIVE);
    let mut remote_frees = 0;
    for op in 0..OPS_PER_THREAD {
        if op % 64 == 0 {
            let inbox = std::mem::take(&mut *mailboxes[id].lock().unwrap());
            remote_frees += inbox.len() as u64;
            inbox.into_iter().for_each(free);
        }
        match rng.below(10) {
            0..5 if live.len() < MAX_LIVE => {
                let layout = random_layout(&mut rng);
                // SAFETY: non-zero size.
                let ptr = unsafe { if rng.below(8) == 0 { A.alloc_zeroed(layout) } else { A.alloc(layout) } };
                assert!(!ptr.is_null(), "allocation of {layout:?} failed");
                assert_eq!(ptr as usize % layout.align(), 0, "{layout:?} misaligned");
                let obj = Obj { ptr, layout, tag: rng.next() as u8 | 1 };
                fill(&obj, 0);
                live.push(obj);
            }
            5 if !live.is_empty() => {
                let i = rng.below(live.len() as u64) as usize;
                let obj = &mut live[i];
                let old = obj.layout.size();
                let new_size = match rng.below(3) {
                    0 => old / 2 + 1,
                    1 => old + rng.below(64) as usize,
                    _ => (old * 2).min(4 << 20),
                };
                check(obj, old);
                // SAFETY: allocated by A with obj.layout; new_size non-zero.
                let p = unsafe { A.realloc(obj.ptr, obj.layout, new_size) };
                assert!(!p.is_null());
                obj.ptr = p;
                obj.layout = Layout::from_size_align(new_size, obj.layout.align()).unwrap();
                assert_eq!(p as usize % obj.layout.align(), 0);
                check(obj, old.min(new_size));
                fill(obj, old.min(new_size));
            }
            _ if !live.is_empty() => {
                let i = rng.below(live.len() as u64) as usize;
                let obj = live.swap_remove(i);
                if rng.below(2) == 0 {
                    // Free it on another thread.
                    let to = (id + 1 + rng.below(THREADS as u64 - 1) as usize) % THREADS;
                    mailboxes[to].lock().unwrap().push(obj);
                } else {
                    free(obj);
                }
            }
            _ => {}
        }
    }
    live.into_iter().for_each(free);
    remote_frees
}

#[test]
fn a_million_random_operations_on_four_threads_keep_every_byte() {
    let mailboxes: Arc<Vec<Mutex<Vec<Obj>>>> = Arc::new((0..THREADS).map(|_| Mutex::new(Vec::new())).collect());
    let handles: Vec<_> = (0..THREADS)
        .map(|id| {
            let m = mailboxes.clone();
            std::thread::spawn(move || worker(id, m))
        })
        .collect();
    let remote: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    // Objects still in mailboxes after their owner finished.
    for m in mailboxes.iter() {
        std::mem::take(&mut *m.lock().unwrap()).into_iter().for_each(free);
    }
    assert!(remote > 100_000, "only {remote} cross-thread frees");
    let s = spanalloc::stats();
    assert!(s.mallocs >= (THREADS * OPS_PER_THREAD / 3) as u64, "{s}");
}
