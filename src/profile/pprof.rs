//! The snapshot type and its pprof encoding.
//!
//! A [`Profile`] is what [`super::snapshot`] copies out of the profile
//! table: one [`StackRecord`] per call stack with its unbiased counts (as
//! Go's `runtime.MemProfileRecord`), the loaded objects, the rate and what
//! the table had to drop. [`Profile::to_pprof`] turns it into a pprof
//! `Profile` message (google/pprof's `proto/profile.proto`):
//!
//! - `sample_type`: Go's heap vocabulary, `alloc_objects/count`,
//!   `alloc_space/bytes`, `inuse_objects/count`, `inuse_space/bytes`;
//!   `default_sample_type` is `inuse_space`, `period_type` `space/bytes`,
//!   `period` the rate. Values are already unbiased ("unsampled", as
//!   profile.proto asks), so pprof must not scale them again.
//! - one `sample` per stack: its locations leaf first, the four values,
//!   and a numeric label `bytes` with the object size when all its samples
//!   had one size (Go's buckets are per stack and size; ours are per
//!   stack, weighed per sample).
//! - `location`s numbered from 1, one per distinct return address, at the
//!   address minus one (inside the call instruction, as TCMalloc and
//!   jemalloc_pprof write), with the id of the mapping that holds it.
//! - `mapping`s from [`super::mappings`], main program first.
//! - samples with no stack (the table's overflow record, and walks that
//!   found no frame) get one synthetic location whose function names why.
//! - `drop_frames` names the allocator's own functions, so pprof hides
//!   whatever the frame skip left of them.
//!
//! Encoding allocates; it runs outside every allocator lock.

use std::collections::HashMap;
use std::io::{self, Write};

use super::gzip::{self, Level};
use super::mappings::Mapping;
use super::proto::Encoder;
use super::table::Dropped;

/// Functions pprof drops from the leaf end of every stack (a regular
/// expression matched against whole function names).
pub const DROP_FRAMES: &str = "spanalloc::.*|<spanalloc::.*|__rust_alloc.*|__rust_realloc|__rust_dealloc|__rdl_.*|__rg_.*|alloc::alloc::.*|malloc|calloc|realloc|free|aligned_alloc|posix_memalign";

/// The function name of samples whose stack the table could not keep.
pub const OVERFLOW_FRAME: &str = "[spanalloc: stack not kept, table full]";
/// The function name of samples whose walk found no frame.
pub const NO_STACK_FRAME: &str = "[spanalloc: no stack]";

/// One call stack and its unbiased counts.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct StackRecord {
    /// Return addresses, innermost first (empty for the overflow record).
    pub frames: Vec<usize>,
    /// Objects allocated here, estimated.
    pub alloc_objects: u64,
    /// Bytes allocated here, estimated.
    pub alloc_bytes: u64,
    /// Objects allocated here and not yet freed, estimated.
    pub inuse_objects: u64,
    /// Their bytes, estimated.
    pub inuse_bytes: u64,
    /// The object size, when every sample here had the same.
    pub object_size: Option<u64>,
    /// Samples taken here.
    pub samples: u64,
    /// Of which still allocated.
    pub live_samples: u64,
    /// The record of samples whose stacks the table could not keep.
    pub overflow: bool,
}

/// A heap profile: what the sampled objects say about the heap.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Profile {
    /// The sampling rate when the snapshot was taken (0: off).
    pub rate: u64,
    /// When the snapshot was taken, in nanoseconds since the Unix epoch.
    pub time_nanos: i64,
    /// One record per call stack.
    pub records: Vec<StackRecord>,
    /// The process's loaded objects.
    pub mappings: Vec<Mapping>,
    /// What the table could not keep.
    pub dropped: Dropped,
}

impl Profile {
    /// Sum of `inuse_bytes` over all records.
    pub fn inuse_bytes(&self) -> u64 {
        self.records.iter().map(|r| r.inuse_bytes).sum()
    }

    /// Sum of `alloc_bytes` over all records.
    pub fn alloc_bytes(&self) -> u64 {
        self.records.iter().map(|r| r.alloc_bytes).sum()
    }

    /// Writes the profile in pprof form, gzipped.
    pub fn write_pprof(&self, out: &mut impl Write) -> io::Result<()> {
        let _guard = super::Guard::enter();
        gzip::write_gzip(out, &self.to_pprof(), Level::Fixed)
    }

    /// The profile as an uncompressed pprof `Profile` message.
    pub fn to_pprof(&self) -> Vec<u8> {
        let _guard = super::Guard::enter();
        Builder::default().build(self)
    }
}

/// Field numbers of profile.proto.
mod field {
    pub const SAMPLE_TYPE: u32 = 1;
    pub const SAMPLE: u32 = 2;
    pub const MAPPING: u32 = 3;
    pub const LOCATION: u32 = 4;
    pub const FUNCTION: u32 = 5;
    pub const STRING_TABLE: u32 = 6;
    pub const DROP_FRAMES: u32 = 7;
    pub const TIME_NANOS: u32 = 9;
    pub const PERIOD_TYPE: u32 = 11;
    pub const PERIOD: u32 = 12;
    pub const COMMENT: u32 = 13;
    pub const DEFAULT_SAMPLE_TYPE: u32 = 14;
}

#[derive(Default)]
struct Builder {
    strings: Vec<String>,
    string_ids: HashMap<String, u64>,
    out: Encoder,
    locations: HashMap<u64, u64>,
    next_location: u64,
    next_function: u64,
    synthetic: HashMap<&'static str, u64>,
}

impl Builder {
    fn intern(&mut self, s: &str) -> u64 {
        if self.strings.is_empty() {
            self.strings.push(String::new());
            self.string_ids.insert(String::new(), 0);
        }
        if let Some(&id) = self.string_ids.get(s) {
            return id;
        }
        let id = self.strings.len() as u64;
        self.strings.push(s.to_string());
        self.string_ids.insert(s.to_string(), id);
        id
    }

    fn value_type(&mut self, field: u32, ty: &str, unit: &str) {
        let (t, u) = (self.intern(ty), self.intern(unit));
        self.out.message(field, |m| {
            m.uint64(1, t);
            m.uint64(2, u);
        });
    }

    /// The location of a return address, added on first use.
    fn location(&mut self, ret: usize, mappings: &[Mapping]) -> u64 {
        let addr = (ret as u64).wrapping_sub(1);
        if let Some(&id) = self.locations.get(&addr) {
            return id;
        }
        self.next_location += 1;
        let id = self.next_location;
        let mapping = mappings.iter().position(|m| m.contains(addr)).map_or(0, |i| i as u64 + 1);
        self.out.message(field::LOCATION, |m| {
            m.uint64(1, id);
            m.uint64(2, mapping);
            m.uint64(3, addr);
        });
        self.locations.insert(addr, id);
        id
    }

    /// A location with one line in a function called `name`.
    fn synthetic_location(&mut self, name: &'static str) -> u64 {
        if let Some(&id) = self.synthetic.get(name) {
            return id;
        }
        let s = self.intern(name);
        self.next_function += 1;
        let function = self.next_function;
        self.out.message(field::FUNCTION, |m| {
            m.uint64(1, function);
            m.uint64(2, s);
            m.uint64(3, s);
        });
        self.next_location += 1;
        let id = self.next_location;
        self.out.message(field::LOCATION, |m| {
            m.uint64(1, id);
            m.message(4, |line| line.uint64(1, function));
        });
        self.synthetic.insert(name, id);
        id
    }

    fn build(mut self, p: &Profile) -> Vec<u8> {
        self.intern("");
        for (ty, unit) in
            [("alloc_objects", "count"), ("alloc_space", "bytes"), ("inuse_objects", "count"), ("inuse_space", "bytes")]
        {
            self.value_type(field::SAMPLE_TYPE, ty, unit);
        }
        for (i, m) in p.mappings.iter().enumerate() {
            let (file, id) = (self.intern(&m.path), self.intern(&m.build_id));
            self.out.message(field::MAPPING, |e| {
                e.uint64(1, i as u64 + 1);
                e.uint64(2, m.start);
                e.uint64(3, m.limit);
                e.uint64(4, m.offset);
                e.uint64(5, file);
                e.uint64(6, id);
            });
        }
        let bytes_key = self.intern("bytes");
        for r in &p.records {
            let ids: Vec<u64> = if r.overflow {
                vec![self.synthetic_location(OVERFLOW_FRAME)]
            } else if r.frames.is_empty() {
                vec![self.synthetic_location(NO_STACK_FRAME)]
            } else {
                r.frames.iter().map(|&f| self.location(f, &p.mappings)).collect()
            };
            self.out.message(field::SAMPLE, |s| {
                s.packed(1, ids.iter().copied());
                // Packed explicitly: a zero must keep its place.
                s.packed(2, [r.alloc_objects, r.alloc_bytes, r.inuse_objects, r.inuse_bytes]);
                if let Some(size) = r.object_size {
                    s.message(3, |l| {
                        l.uint64(1, bytes_key);
                        l.int64(3, size as i64);
                        l.uint64(4, bytes_key);
                    });
                }
            });
        }
        let (space, bytes) = (self.intern("space"), self.intern("bytes"));
        self.out.message(field::PERIOD_TYPE, |m| {
            m.uint64(1, space);
            m.uint64(2, bytes);
        });
        self.out.int64(field::PERIOD, p.rate as i64);
        self.out.int64(field::TIME_NANOS, p.time_nanos);
        let drop = self.intern(DROP_FRAMES);
        self.out.uint64(field::DROP_FRAMES, drop);
        let default = self.intern("inuse_space");
        self.out.uint64(field::DEFAULT_SAMPLE_TYPE, default);
        let d = p.dropped;
        let mut comments = vec![format!("spanalloc heap profile, sampling rate {} bytes", p.rate)];
        if d != Dropped::default() {
            comments.push(format!(
                "spanalloc profile table: {} samples without a live record, {} stacks evicted, {} samples overflowed, {} lost unmapped, {} replaced",
                d.live_full, d.evicted, d.overflowed, d.unmapped, d.replaced
            ));
        }
        for c in comments {
            let id = self.intern(&c);
            self.out.uint64(field::COMMENT, id);
        }
        let mut out = self.out;
        for s in &self.strings {
            out.bytes(field::STRING_TABLE, s.as_bytes());
        }
        out.finish()
    }
}
