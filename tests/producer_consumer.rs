//! One thread allocates, another frees, millions of times: every free is a
//! cross-thread free, and the heap must stay bounded (the objects go back
//! to the spans they came from and are reused there).

#[global_allocator]
static A: spanalloc::SpanAlloc = spanalloc::SpanAlloc;

use std::sync::mpsc;
use std::thread;

#[test]
fn producer_consumer_memory_stays_bounded() {
    const OBJECTS: usize = 3_000_000;
    let (tx, rx) = mpsc::sync_channel::<Vec<Box<[u64; 8]>>>(64);
    let producer = thread::spawn(move || {
        let mut batch = Vec::with_capacity(256);
        for i in 0..OBJECTS {
            batch.push(Box::new([i as u64; 8]));
            if batch.len() == 256 {
                tx.send(std::mem::replace(&mut batch, Vec::with_capacity(256))).unwrap();
            }
        }
        tx.send(batch).unwrap();
    });
    let consumer = thread::spawn(move || {
        let mut seen = 0usize;
        for batch in rx {
            for b in batch {
                assert_eq!(b[7], b[0]);
                seen += 1;
            }
        }
        seen
    });
    producer.join().unwrap();
    assert_eq!(consumer.join().unwrap(), OBJECTS);
    // 3 million 64-byte objects went through; at most a few batches were
    // alive at once, so the heap must hold a few megabytes, not 192 MB.
    let s = spanalloc::stats();
    assert!(s.heap_sys < 32 << 20, "heap grew to {} bytes:\n{s}", s.heap_sys);
}
