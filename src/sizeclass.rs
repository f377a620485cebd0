//! Size classes: Go's table, and the O(1) map from a `Layout` to a class.
//!
//! Small objects (up to [`MAX_SMALL`] bytes) are rounded up to one of 67
//! classes; each class has a fixed object size and a span size chosen (by
//! Go's `mksizeclasses.go`) so the span's tail waste stays under 1/8. Class
//! 0 means "large": a span of its own straight from the mheap.
//!
//! The lookup is two small byte tables, as in Go: one indexed by
//! `(size + 7) / 8` up to 1 KiB, one by `(size + 127) / 128` up to 32 KiB.
//!
//! Alignment: the objects of a span sit at `base + i * size` with `base`
//! page-aligned, so a class serves an alignment only up to the largest power
//! of two dividing its size (capped at the page). Every class serves 8; for
//! larger alignments [`class_of`] moves to the first class that is both big
//! and aligned enough, and above the page size the request is large.
//!
//! Everything here is `const`: the tables are computed at compile time and
//! checked with compile-time assertions.

/// log2 of the runtime page size.
pub const PAGE_SHIFT: usize = 13;
/// The runtime page: the unit the mheap allocates in (not the OS page).
pub const PAGE_SIZE: usize = 1 << PAGE_SHIFT;
/// The largest size served from a size class.
pub const MAX_SMALL: usize = 32 << 10;
/// Number of classes, including class 0 ("large").
pub const NUM_CLASSES: usize = 68;

/// Object sizes, from Go's `sizeclasses.go`.
const SIZES: [u32; NUM_CLASSES] = [
    0, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240, 256, 288, 320, 352, 384, 416, 448,
    480, 512, 576, 640, 704, 768, 896, 1024, 1152, 1280, 1408, 1536, 1792, 2048, 2304, 2688, 3072, 3200, 3456, 4096,
    4864, 5376, 6144, 6528, 6784, 6912, 8192, 9472, 9728, 10240, 10880, 12288, 13568, 14336, 16384, 18432, 19072,
    20480, 21760, 24576, 27264, 28672, 32768,
];

/// Pages per span, from Go's `sizeclasses.go`.
const PAGES: [u8; NUM_CLASSES] = [
    0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 1, 2,
    1, 2, 1, 3, 2, 3, 1, 3, 2, 3, 4, 5, 6, 1, 7, 6, 5, 4, 3, 5, 7, 2, 9, 7, 5, 8, 3, 10, 7, 4,
];

/// What the allocator needs to know about one size class.
#[derive(Clone, Copy, Debug)]
pub struct ClassInfo {
    /// Object size in bytes.
    pub size: u32,
    /// Runtime pages per span.
    pub pages: u32,
    /// Objects per span.
    pub nelems: u32,
    /// The largest alignment every object of the class has.
    pub align: u32,
    /// `ceil(2^32 / size)`: `(offset * div_magic) >> 32 == offset / size`
    /// for every offset inside a span (checked by a test).
    pub div_magic: u32,
    /// `ceil(2^64 / size)`: for an offset `n` below 2^32, the high half of
    /// the 128-bit product `n * div_mul` is `n / size`, and the low half is
    /// below `div_mul` exactly when `size` divides `n` (Lemire, Kaser and
    /// Kurz, "Faster Remainder by Direct Computation", 2019).
    pub div_mul: u64,
}

const fn build_classes() -> [ClassInfo; NUM_CLASSES] {
    let mut out = [ClassInfo { size: 0, pages: 0, nelems: 0, align: 0, div_magic: 0, div_mul: 0 }; NUM_CLASSES];
    let mut c = 1;
    while c < NUM_CLASSES {
        let size = SIZES[c];
        let pages = PAGES[c] as u32;
        let span = pages * PAGE_SIZE as u32;
        let pow2 = 1u32 << size.trailing_zeros();
        let align = if pow2 < PAGE_SIZE as u32 { pow2 } else { PAGE_SIZE as u32 };
        out[c] = ClassInfo {
            size,
            pages,
            nelems: span / size,
            align,
            div_magic: (u32::MAX / size).wrapping_add(1),
            div_mul: (u64::MAX / size as u64).wrapping_add(1),
        };
        c += 1;
    }
    out
}

/// The class table, indexed by class.
pub static CLASSES: [ClassInfo; NUM_CLASSES] = build_classes();

/// The same table as a constant, for compile-time checks and other tables.
pub(crate) const CLASSES_CONST: [ClassInfo; NUM_CLASSES] = build_classes();

/// The class of every size up to [`MAX_SMALL`], indexed by `(size + 7) / 8`:
/// one 4 KiB table, one load. (Go uses two smaller tables and a branch; a
/// single table keeps the fast path to one compare and one load.)
static CLASS_BY_WORD: [u8; MAX_SMALL / 8 + 1] = build_lookup();

const fn build_lookup() -> [u8; MAX_SMALL / 8 + 1] {
    let mut table = [0u8; MAX_SMALL / 8 + 1];
    let mut i = 0;
    let mut c = 1;
    while i < table.len() {
        while (SIZES[c] as usize) < i * 8 {
            c += 1;
        }
        table[i] = c as u8;
        i += 1;
    }
    table
}

/// The class of every size up to [`MAX_SMALL`] for C's `malloc`, indexed by
/// `(size + 7) / 8`: as [`CLASS_BY_WORD`], but a request of 16 bytes or
/// more never gets the one class of that size that is not 16-aligned (24
/// bytes): C promises `alignof(max_align_t)`, 16, for such requests.
static C_CLASS_BY_WORD: [u8; MAX_SMALL / 8 + 1] = build_c_lookup();

const fn build_c_lookup() -> [u8; MAX_SMALL / 8 + 1] {
    let mut table = build_lookup();
    let mut i = 0;
    while i < table.len() {
        let c = table[i] as usize;
        if i * 8 > 16 && !SIZES[c].is_multiple_of(16) {
            table[i] = (c + 1) as u8;
        }
        i += 1;
    }
    table
}

/// The class of `size` (at most [`MAX_SMALL`]) for C's `malloc`: 16-aligned
/// for 16 bytes or more, 8-aligned below.
#[inline(always)]
pub(crate) fn c_class(size: usize) -> usize {
    debug_assert!(size <= MAX_SMALL);
    // SAFETY: size <= MAX_SMALL makes the index at most MAX_SMALL / 8.
    unsafe { *C_CLASS_BY_WORD.get_unchecked((size + 7) >> 3) as usize }
}

/// The class of `size`, which must be at most [`MAX_SMALL`], at the
/// alignment every class has (8).
#[inline(always)]
pub(crate) fn small_class(size: usize) -> usize {
    debug_assert!(size <= MAX_SMALL);
    // SAFETY: size <= MAX_SMALL makes the index at most MAX_SMALL / 8.
    unsafe { *CLASS_BY_WORD.get_unchecked((size + 7) >> 3) as usize }
}

/// The class serving `size` bytes at alignment `align`, or 0 when the
/// request must be a large object.
#[inline(always)]
pub fn class_of(size: usize, align: usize) -> usize {
    if size <= MAX_SMALL && align <= 8 { small_class(size) } else { class_of_aligned(size, align) }
}

/// [`class_of`] for alignments above 8: round the size up to the
/// alignment, then step up to the first class whose objects are all
/// aligned enough.
#[inline]
fn class_of_aligned(size: usize, align: usize) -> usize {
    if align > PAGE_SIZE || size > MAX_SMALL {
        return 0;
    }
    let rounded = (size + align - 1) & !(align - 1);
    if rounded > MAX_SMALL {
        return 0;
    }
    let mut c = small_class(rounded);
    while (CLASSES[c].align as usize) < align {
        c += 1;
        if c == NUM_CLASSES {
            return 0;
        }
    }
    c
}

/// Number of 64-bit words a bitmap over `nelems` objects needs.
pub const fn bitmap_words(nelems: u32) -> usize {
    (nelems as usize).div_ceil(64)
}

/// The most objects any span holds (class 1: 1024 objects of 8 bytes).
pub const MAX_NELEMS: u32 = PAGE_SIZE as u32 / 8;

// The C table's one change: 17..=24 bytes go to 32, the next class.
static_assertions::const_assert_eq!(SIZES[3], 24);
static_assertions::const_assert_eq!(SIZES[4] % 16, 0);

// The fast paths rely on these.
static_assertions::const_assert_eq!(SIZES[NUM_CLASSES - 1] as usize, MAX_SMALL);
static_assertions::const_assert_eq!(CLASSES_CONST[1].nelems, MAX_NELEMS);
static_assertions::const_assert!(MAX_NELEMS < (1 << 16));
const _: () = {
    // Sizes strictly increase, every class is 8-aligned, spans are small.
    let mut c = 2;
    while c < NUM_CLASSES {
        assert!(SIZES[c] > SIZES[c - 1]);
        assert!(SIZES[c].is_multiple_of(8));
        assert!(PAGES[c] >= 1 && PAGES[c] <= 10);
        // Tail waste of every span is at most 1/8 of the span.
        let span = PAGES[c] as u32 * PAGE_SIZE as u32;
        assert!((span % SIZES[c]) * 8 <= span);
        c += 1;
    }
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_wastes_at_most_an_eighth_of_its_span() {
        for (c, &info) in CLASSES.iter().enumerate().skip(1) {
            let span = info.pages * PAGE_SIZE as u32;
            let tail = span - info.nelems * info.size;
            assert!(tail * 8 <= span, "class {c}: tail {tail} of {span}");
            assert!(info.nelems >= 1);
        }
    }

    #[test]
    fn table_matches_go_sizeclasses_csv() {
        let csv = include_str!("../tests/data/go-sizeclasses.csv");
        let mut rows = 0;
        for line in csv.lines().skip(1) {
            let f: Vec<&str> = line.split(',').collect();
            let c: usize = f[0].parse().unwrap();
            let info = CLASSES[c];
            assert_eq!(info.size, f[1].parse::<u32>().unwrap(), "class {c} size");
            assert_eq!(info.pages, f[3].parse::<u32>().unwrap(), "class {c} pages");
            assert_eq!(info.nelems, f[4].parse::<u32>().unwrap(), "class {c} objects");
            assert_eq!(info.align, f[7].parse::<u32>().unwrap(), "class {c} align");
            rows += 1;
        }
        assert_eq!(rows, NUM_CLASSES - 1);
    }

    #[test]
    fn the_c_lookup_gives_16_byte_alignment_to_every_request_of_16_bytes_or_more() {
        for size in 0..=MAX_SMALL {
            let c = c_class(size);
            let info = CLASSES[c];
            assert!(info.size as usize >= size.max(1), "size {size}");
            if size >= 16 {
                assert_eq!(info.size % 16, 0, "size {size} got class {c} of {} bytes", info.size);
            }
            // The smallest class that does so.
            assert!(c == 1 || CLASSES[c - 1].size < size as u32 || (size >= 16 && !CLASSES[c - 1].size.is_multiple_of(16)));
        }
    }

    #[test]
    fn lookup_returns_smallest_class_that_fits_for_every_size() {
        for size in 0..=MAX_SMALL {
            let c = class_of(size, 1);
            assert!(c >= 1, "size {size}");
            assert!(CLASSES[c].size as usize >= size, "size {size} -> class {c}");
            assert!(c == 1 || (CLASSES[c - 1].size as usize) < size, "size {size} -> class {c} not smallest");
        }
        assert_eq!(class_of(MAX_SMALL + 1, 8), 0);
        assert_eq!(class_of(usize::MAX / 2, 8), 0);
    }

    #[test]
    fn aligned_lookup_returns_a_class_whose_objects_are_aligned() {
        let mut align = 16;
        while align <= 2 * PAGE_SIZE {
            for size in (1..=MAX_SMALL).step_by(7) {
                let c = class_of(size, align);
                if c == 0 {
                    assert!(align > PAGE_SIZE || size > MAX_SMALL || CLASSES[NUM_CLASSES - 1].size < size as u32);
                    continue;
                }
                let info = CLASSES[c];
                assert!(info.size as usize >= size);
                assert_eq!(info.size as usize % align.min(PAGE_SIZE), 0, "size {size} align {align}");
                assert!(info.align as usize >= align);
            }
            align *= 2;
        }
    }

    #[test]
    fn div_mul_divides_and_tests_divisibility_for_every_window_offset() {
        for (c, &info) in CLASSES.iter().enumerate().skip(1) {
            let size = info.size as u64;
            for off in 0..64 * size + 1 {
                let prod = off as u128 * info.div_mul as u128;
                assert_eq!((prod >> 64) as u64, off / size, "class {c} offset {off}");
                assert_eq!((prod as u64) < info.div_mul, off % size == 0, "class {c} offset {off}");
            }
        }
    }

    #[test]
    fn div_magic_divides_exactly_for_every_offset_in_a_span() {
        for (c, &info) in CLASSES.iter().enumerate().skip(1) {
            let span = (info.pages as u64) * PAGE_SIZE as u64;
            for off in 0..span {
                let q = (off * info.div_magic as u64) >> 32;
                assert_eq!(q, off / info.size as u64, "class {c} offset {off}");
            }
        }
    }
}
