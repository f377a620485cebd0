//! fixalloc: the mheap's allocator for span records.
//!
//! Span records live in metadata chunks of their own (never in the heap
//! they describe, invariant 2), as Go's `mheap.spanalloc`. Records come in a
//! few sizes (the bitmap after each record depends on the size class), so
//! each chunk holds records of one *bucket* only.
//!
//! A chunk is 256 KiB aligned to its size, so a record finds its chunk by
//! masking its address. Each chunk keeps its own free list and count of
//! records in use, and records are always taken from the oldest chunk that
//! has one: the records in use pack into the first chunks, and the later
//! ones empty out. When the scavenger finds a chunk with no record in use,
//! it gives the chunk's pages back to the OS and carves it afresh later, so
//! a program that once needed a million spans does not keep their records
//! resident forever. It does so in two steps, so that the `madvise` runs
//! outside the mheap lock: [`SpanPool::take_idle`] takes such chunks out of
//! use (no record is carved from them), [`SpanPool::restore`] puts them
//! back, to be carved from their start.
//!
//! Everything here runs under the mheap lock.

use core::ptr;

use crate::mspan::{BUCKET_WORDS, Span, SpanKind, record_bytes};
use crate::os;
use crate::sync::unmodelled::Counter;

/// Bytes per chunk (and its alignment).
const CHUNK: usize = 64 << 10;
/// The header, padded so records stay 64-aligned.
const HEADER: usize = 64;
/// Bytes of a released chunk that stay resident (the page holding the
/// header), at least.
const KEEP: usize = 4096;
/// `Chunk::cursor` of a chunk taken out of use while it is released.
const TAKEN: usize = CHUNK + 1;

/// At the start of every chunk.
#[repr(C)]
struct Chunk {
    /// The next (younger) chunk of the bucket.
    next: *mut Chunk,
    /// Freed records of this chunk, linked through `Owned::next`.
    free: *mut Span,
    /// Offset of the first byte never carved into a record.
    cursor: usize,
    /// Records of this chunk in use.
    live: usize,
    /// Creation order within the bucket.
    seq: usize,
    /// How many times the chunk's records were given back to the OS and
    /// carved anew. Records start their lives from it (`Span::create`), so
    /// a record's generation never repeats even though its memory was
    /// zeroed: a freer that looks at a record after its span was retired
    /// never mistakes the record's new life for the one it freed into.
    epoch: u32,
}

/// Records of one size.
struct Bucket {
    /// Chunks, oldest first.
    chunks: *mut Chunk,
    last: *mut Chunk,
    /// No chunk before this one has a record to give.
    hint: *mut Chunk,
}

/// The span-record allocator.
pub(crate) struct SpanPool {
    buckets: [Bucket; BUCKET_WORDS.len()],
}

// SAFETY: the pool owns its chunks; it is only used under the mheap lock.
unsafe impl Send for SpanPool {}

fn chunk_of(span: *mut Span) -> *mut Chunk {
    (span as usize & !(CHUNK - 1)) as *mut Chunk
}

impl SpanPool {
    pub(crate) const fn new() -> Self {
        const EMPTY: Bucket = Bucket { chunks: ptr::null_mut(), last: ptr::null_mut(), hint: ptr::null_mut() };
        SpanPool { buckets: [EMPTY; BUCKET_WORDS.len()] }
    }

    /// A record of `bucket`, or `None` when the kernel gives no memory.
    pub(crate) fn get(&mut self, bucket: usize, meta_bytes: &Counter) -> Option<*mut Span> {
        let bytes = record_bytes(bucket);
        let b = &mut self.buckets[bucket];
        // SAFETY: listed chunks are mapped and ours; a chunk's free records
        // are unused and linked through `next`.
        unsafe {
            let mut c = if b.hint.is_null() { b.chunks } else { b.hint };
            while !c.is_null() && (*c).free.is_null() && (*c).cursor + bytes > CHUNK {
                c = (*c).next;
            }
            if c.is_null() {
                c = os::map_aligned(CHUNK, CHUNK)?.cast();
                meta_bytes.add_shared(CHUNK as u64);
                let seq = if b.last.is_null() { 0 } else { (*b.last).seq + 1 };
                c.write(Chunk { next: ptr::null_mut(), free: ptr::null_mut(), cursor: HEADER, live: 0, seq, epoch: 0 });
                if b.last.is_null() {
                    b.chunks = c;
                } else {
                    (*b.last).next = c;
                }
                b.last = c;
            }
            b.hint = c;
            (*c).live += 1;
            let head = (*c).free;
            if !head.is_null() {
                (*c).free = (*head).with_owned(|o, _| o.next);
                return Some(head);
            }
            let at = (c as usize + (*c).cursor) as *mut Span;
            (*c).cursor += bytes;
            // SAFETY: [at, at + bytes) lies in the chunk, never carved since
            // the chunk was mapped or released, and is 64-aligned.
            Some(Span::create(at, bucket, (*c).epoch))
        }
    }

    /// Takes back a record nobody refers to any more.
    pub(crate) fn put(&mut self, span: *mut Span) {
        // SAFETY: the caller gives up the record; its chunk is mapped and ours.
        unsafe {
            let s = &mut *span;
            s.kind = SpanKind::Free;
            let c = chunk_of(span);
            let head = (*c).free;
            s.with_owned(|o, _| o.next = head);
            (*c).free = span;
            (*c).live -= 1;
            let b = &mut self.buckets[s.bucket as usize];
            if b.hint.is_null() || (*c).seq < (*b.hint).seq {
                b.hint = c;
            }
        }
    }

    /// Takes up to `out.len()` chunks with no record in use, carved since
    /// they were last released, out of use (nothing is carved from them
    /// until [`SpanPool::restore`]) and writes them to `out` (address and
    /// bucket). Returns how many.
    ///
    /// Under loom it takes none: a model cannot express memory the kernel
    /// zeroes under a late reader (a freer that looks at a retired span's
    /// state), which the chunk's epoch makes harmless.
    pub(crate) fn take_idle(&mut self, out: &mut [(usize, usize)]) -> usize {
        let mut n = 0;
        if cfg!(loom) {
            return 0;
        }
        for (bucket, b) in self.buckets.iter_mut().enumerate() {
            let mut c = b.chunks;
            // SAFETY: listed chunks are mapped and ours.
            unsafe {
                while !c.is_null() && n < out.len() {
                    if (*c).live == 0 && (*c).cursor > HEADER && (*c).cursor <= CHUNK {
                        // `get` skips a chunk with no free record and no room.
                        (*c).cursor = TAKEN;
                        (*c).free = ptr::null_mut();
                        out[n] = (c as usize, bucket);
                        n += 1;
                    }
                    c = (*c).next;
                }
            }
        }
        n
    }

    /// The part of a chunk given back to the OS: all but the kernel page
    /// holding its header.
    pub(crate) fn releasable(chunk: usize) -> (usize, usize) {
        let keep = KEEP.max(os::page_size()).min(CHUNK);
        (chunk + keep, CHUNK - keep)
    }

    /// Puts back a chunk [`SpanPool::take_idle`] took, to be carved afresh
    /// from its start in a new epoch.
    pub(crate) fn restore(&mut self, (chunk, bucket): (usize, usize)) {
        let c = chunk as *mut Chunk;
        let b = &mut self.buckets[bucket];
        // SAFETY: a chunk of the bucket, taken out of use and still holding
        // no record; its header stayed resident.
        unsafe {
            debug_assert_eq!((*c).cursor, TAKEN);
            (*c).cursor = HEADER;
            (*c).epoch = (*c).epoch.wrapping_add(1);
            // It has room again: `get` must not skip it.
            if b.hint.is_null() || (*c).seq < (*b.hint).seq {
                b.hint = c;
            }
        }
    }

    /// Gives the pages of chunks with no record in use back to the OS, under
    /// the caller's lock (tests; the mheap releases outside its lock).
    /// Returns the bytes released.
    #[cfg(test)]
    pub(crate) fn release(&mut self) -> usize {
        let mut chunks = [(0, 0); 8];
        let mut released = 0;
        loop {
            let n = self.take_idle(&mut chunks);
            if n == 0 {
                return released;
            }
            for &c in &chunks[..n] {
                let (at, len) = Self::releasable(c.0);
                if os::release_pages(at as *mut u8, len).is_ok() {
                    released += len;
                }
                self.restore(c);
            }
        }
    }

    /// Unmaps every chunk (the heap is being dropped).
    pub(crate) fn unmap_all(&mut self) {
        for b in &mut self.buckets {
            let mut c = b.chunks;
            while !c.is_null() {
                // SAFETY: the chunk is ours and nothing refers to it any more.
                let next = unsafe { (*c).next };
                os::unmap(c.cast(), CHUNK);
                c = next;
            }
            *b = Bucket { chunks: ptr::null_mut(), last: ptr::null_mut(), hint: ptr::null_mut() };
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn records_are_reused_and_empty_chunks_released_and_carved_again() {
        let mut pool = SpanPool::new();
        let meta = Counter::new();
        let per_chunk = (CHUNK - HEADER) / record_bytes(2);
        let recs: Vec<_> = (0..per_chunk + 10).map(|_| pool.get(2, &meta).unwrap()).collect();
        assert_eq!(meta.get(), 2 * CHUNK as u64, "two chunks");
        let first_chunk = chunk_of(recs[0]);
        assert!(recs[..per_chunk].iter().all(|&r| chunk_of(r) == first_chunk));
        // Free the whole first chunk and one record of the second.
        for &r in &recs[..per_chunk] {
            pool.put(r);
        }
        pool.put(recs[per_chunk]);
        pool.release();
        // The oldest chunk is carved afresh first, from its start...
        let fresh = pool.get(2, &meta).unwrap();
        assert_eq!(fresh as usize, first_chunk as usize + HEADER);
        assert_eq!(unsafe { (*fresh).bucket }, 2);
        // ... and a chunk's worth of records needs no new mapping.
        let more: Vec<_> = (0..per_chunk).map(|_| pool.get(2, &meta).unwrap()).collect();
        assert_eq!(meta.get(), 2 * CHUNK as u64);
        assert!(more.contains(&recs[per_chunk]), "the second chunk's free record is reused");
        pool.unmap_all();
    }

    #[test]
    fn a_record_carved_anew_after_its_chunk_was_released_starts_a_later_life() {
        use crate::sync::atomic::Ordering;
        let mut pool = SpanPool::new();
        let meta = Counter::new();
        let r = pool.get(1, &meta).unwrap();
        unsafe { (*r).init_small(0x10000, 10) };
        let life = crate::mspan::generation(unsafe { (*r).state.load(Ordering::Relaxed) });
        pool.put(r);
        pool.release();
        let again = pool.get(1, &meta).unwrap();
        assert_eq!(again, r, "the same memory, carved anew");
        unsafe { (*again).init_small(0x10000, 10) };
        let later = crate::mspan::generation(unsafe { (*again).state.load(Ordering::Relaxed) });
        assert_ne!(later, life, "a record's life repeated after its chunk was released");
        pool.unmap_all();
    }
}
