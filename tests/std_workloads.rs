//! Real std workloads on threads, with spanalloc as the global allocator:
//! collections, strings, channels and thousands of short-lived threads.

#[global_allocator]
static A: spanalloc::SpanAlloc = spanalloc::SpanAlloc;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::mpsc;
use std::thread;

#[test]
fn collections_and_strings_on_eight_threads() {
    let handles: Vec<_> = (0..8u64)
        .map(|t| {
            thread::spawn(move || {
                let mut words: HashMap<String, Vec<u64>> = HashMap::new();
                let mut tree = BTreeMap::new();
                let mut queue = VecDeque::new();
                for i in 0..20_000u64 {
                    let key = format!("word-{}-{}", t, i % 997);
                    words.entry(key.clone()).or_default().push(i);
                    tree.insert(i * 7 % 10_007, key.repeat((i % 5) as usize + 1));
                    queue.push_back(vec![i as u8; (i % 300) as usize]);
                    if queue.len() > 100 {
                        queue.pop_front();
                    }
                }
                let mut keys: Vec<_> = words.keys().cloned().collect();
                keys.sort();
                let set: HashSet<usize> = tree.values().map(|s| s.len()).collect();
                (keys.len(), words.values().map(Vec::len).sum::<usize>(), set.len(), queue.len())
            })
        })
        .collect();
    for h in handles {
        let (keys, total, lens, q) = h.join().unwrap();
        assert_eq!(keys, 997);
        assert_eq!(total, 20_000);
        assert!(lens > 5);
        assert_eq!(q, 100);
    }
}

#[test]
fn strings_through_channels_are_freed_by_the_receiver() {
    let (tx, rx) = mpsc::channel::<String>();
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let tx = tx.clone();
            thread::spawn(move || {
                for i in 0..50_000 {
                    tx.send(format!("{p}:{i}:{}", "x".repeat(i % 64))).unwrap();
                }
            })
        })
        .collect();
    drop(tx);
    let consumer = thread::spawn(move || {
        let mut n = 0usize;
        let mut bytes = 0usize;
        for s in rx {
            bytes += s.len();
            n += 1;
        }
        (n, bytes)
    });
    for p in producers {
        p.join().unwrap();
    }
    let (n, bytes) = consumer.join().unwrap();
    assert_eq!(n, 200_000);
    assert!(bytes > 200_000 * 10);
}

#[test]
fn ten_thousand_short_lived_threads() {
    let before = spanalloc::stats();
    for batch in 0..100 {
        let handles: Vec<_> = (0..100)
            .map(|i| {
                thread::spawn(move || {
                    let v: Vec<String> = (0..50).map(|j| format!("{batch}-{i}-{j}")).collect();
                    let b = Box::new([i as u8; 3000]);
                    v.len() + b.len()
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), 3050);
        }
    }
    // Every exited thread gave its spans back: the heap did not grow with
    // the number of threads.
    let after = spanalloc::stats();
    assert!(
        after.heap_inuse < before.heap_inuse + (64 << 20),
        "heap grew from {} to {} bytes in use",
        before.heap_inuse,
        after.heap_inuse
    );
}
