#[global_allocator]
static A: spanalloc::SpanAlloc = spanalloc::SpanAlloc;

#[test]
fn vec_and_strings() {
    let mut v = Vec::new();
    for i in 0..100_000u64 {
        v.push(i);
    }
    let s: Vec<String> = (0..10_000).map(|i| format!("item {i}")).collect();
    assert_eq!(v.iter().sum::<u64>(), 99_999 * 100_000 / 2);
    assert_eq!(s[9999], "item 9999");
    let m: std::collections::HashMap<u32, String> = (0..10000).map(|i| (i, i.to_string())).collect();
    assert_eq!(m[&777], "777");
    println!("{}", spanalloc::stats());
}

#[test]
fn threads() {
    let hs: Vec<_> = (0..8).map(|t| std::thread::spawn(move || {
        let mut v: Vec<Box<[u8]>> = Vec::new();
        for i in 0..20000usize { v.push(vec![t as u8; i % 3000 + 1].into_boxed_slice()); if i % 7 == 0 { v.swap_remove(i % v.len()); } }
        v.len()
    })).collect();
    for h in hs { h.join().unwrap(); }
}
