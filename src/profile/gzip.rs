//! A small gzip writer (RFC 1952 around RFC 1951 deflate), for profiles.
//!
//! pprof's profile.proto says profiles on disk are gzipped. Two deflate
//! encodings are offered:
//!
//! - [`Level::Stored`]: stored blocks (at most 65,535 bytes each, with
//!   their length and its complement), no compression: the shortest valid
//!   gzip, as Go's runtime writes with `gzip0`.
//! - [`Level::Fixed`] (the default): one block with deflate's fixed
//!   Huffman codes and greedy LZ77 matches found through a hash of the
//!   next three bytes (chains capped at 32 steps, window 32 KiB). Profiles
//!   repeat addresses and field keys, so this shrinks them several times
//!   over at a few lines' cost; a dynamic-Huffman encoder would gain a
//!   little more for much more code.
//!
//! The trailer holds the CRC-32 (the reflected 0xEDB88320 polynomial,
//! table built at compile time) and the input length modulo 2^32.
//!
//! This runs when a profile is written, outside every allocator lock; it
//! allocates its output and match tables freely.

use std::io::{self, Write};

/// How to encode the deflate stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Level {
    /// Stored blocks: no compression.
    Stored,
    /// Fixed Huffman codes with LZ77 matches.
    #[default]
    Fixed,
}

const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// The CRC-32 of `data` (as gzip, zlib and PNG use).
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// Writes `data` as one gzip member.
pub fn write_gzip(out: &mut impl Write, data: &[u8], level: Level) -> io::Result<()> {
    // Magic, deflate, no flags, no mtime, no extra flags, OS unknown.
    out.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff])?;
    let body = match level {
        Level::Stored => stored(data),
        Level::Fixed => fixed(data),
    };
    out.write_all(&body)?;
    out.write_all(&crc32(data).to_le_bytes())?;
    out.write_all(&(data.len() as u32).to_le_bytes())
}

/// The gzip form of `data`, in memory.
pub fn gzip(data: &[u8], level: Level) -> Vec<u8> {
    let mut v = Vec::with_capacity(data.len() / 2 + 32);
    write_gzip(&mut v, data, level).expect("writing to a Vec cannot fail");
    v
}

/// Deflate stored blocks.
fn stored(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 65535 * 5 + 5);
    let mut chunks = data.chunks(65535).peekable();
    if chunks.peek().is_none() {
        // An empty final stored block.
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let len = chunk.len() as u16;
        // BFINAL in bit 0, BTYPE 00; the rest of the byte is padding.
        out.push(last as u8);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// Deflate's bits, least significant first.
struct Bits {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl Bits {
    fn put(&mut self, v: u32, n: u32) {
        self.acc |= u64::from(v) << self.n;
        self.n += n;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    /// A Huffman code: written most significant bit first.
    fn code(&mut self, code: u32, len: u32) {
        self.put(code.reverse_bits() >> (32 - len), len);
    }

    /// A literal/length symbol in the fixed code (RFC 1951 3.2.6).
    fn sym(&mut self, s: u32) {
        match s {
            0..=143 => self.code(0x30 + s, 8),
            144..=255 => self.code(0x190 + s - 144, 9),
            256..=279 => self.code(s - 256, 7),
            _ => self.code(0xc0 + s - 280, 8),
        }
    }

    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

const LEN_BASE: [u16; 29] =
    [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258];
const LEN_EXTRA: [u8; 29] = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0];
const DIST_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145,
    8193, 12289, 16385, 24577,
];
const DIST_EXTRA: [u8; 30] =
    [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13];

const WINDOW: usize = 32 << 10;
const MIN_MATCH: usize = 3;
const MAX_MATCH: usize = 258;
const HASH_BITS: u32 = 15;
const MAX_CHAIN: usize = 32;

/// One fixed-Huffman block with greedy LZ77 matches.
fn fixed(data: &[u8]) -> Vec<u8> {
    let mut bits = Bits { out: Vec::with_capacity(data.len() / 2 + 16), acc: 0, n: 0 };
    // BFINAL = 1, BTYPE = 01 (fixed codes).
    bits.put(1, 1);
    bits.put(1, 2);
    // head[h]: the latest position + 1 with hash h; prev[p % WINDOW]: the
    // position + 1 before p with the same hash.
    let mut head = vec![0u32; 1 << HASH_BITS];
    let mut prev = vec![0u32; WINDOW];
    let hash = |p: usize| {
        let v = u32::from(data[p]) | u32::from(data[p + 1]) << 8 | u32::from(data[p + 2]) << 16;
        (v.wrapping_mul(0x9e37_79b1) >> (32 - HASH_BITS)) as usize
    };
    let insert = |p: usize, head: &mut [u32], prev: &mut [u32]| {
        if p + MIN_MATCH <= data.len() {
            let h = hash(p);
            prev[p % WINDOW] = head[h];
            head[h] = p as u32 + 1;
        }
    };
    let mut p = 0;
    while p < data.len() {
        let (mut best_len, mut best_dist) = (0, 0);
        if p + MIN_MATCH <= data.len() {
            let limit = (data.len() - p).min(MAX_MATCH);
            let mut cand = head[hash(p)] as usize;
            let mut steps = 0;
            while cand != 0 && steps < MAX_CHAIN {
                let c = cand - 1;
                if p - c > WINDOW {
                    break;
                }
                let len = data[c..].iter().zip(&data[p..p + limit]).take_while(|(a, b)| a == b).count();
                if len > best_len {
                    (best_len, best_dist) = (len, p - c);
                    if len == limit {
                        break;
                    }
                }
                cand = prev[c % WINDOW] as usize;
                steps += 1;
            }
        }
        if best_len >= MIN_MATCH {
            let li = LEN_BASE.iter().rposition(|&b| usize::from(b) <= best_len).expect("len >= 3");
            bits.sym(257 + li as u32);
            bits.put((best_len - usize::from(LEN_BASE[li])) as u32, u32::from(LEN_EXTRA[li]));
            let di = DIST_BASE.iter().rposition(|&b| usize::from(b) <= best_dist).expect("dist >= 1");
            bits.code(di as u32, 5);
            bits.put((best_dist - usize::from(DIST_BASE[di])) as u32, u32::from(DIST_EXTRA[di]));
            for q in p..p + best_len {
                insert(q, &mut head, &mut prev);
            }
            p += best_len;
        } else {
            bits.sym(u32::from(data[p]));
            insert(p, &mut head, &mut prev);
            p += 1;
        }
    }
    bits.sym(256);
    bits.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// Inputs that exercise literals, long and short matches, distances up
    /// to the window, block boundaries and the empty case.
    fn inputs() -> Vec<Vec<u8>> {
        let mut rng = 0x1234_5678u64;
        let mut random = vec![0u8; 200_000];
        for b in &mut random {
            *b = (super::super::sampler::wyrand(&mut rng) >> 56) as u8;
        }
        let text: Vec<u8> =
            (0..5000).flat_map(|i| format!("line {i}: alloc_space inuse_space\n").into_bytes()).collect();
        let mut far = random[..40_000].to_vec();
        far.extend_from_slice(&random[..40_000]);
        vec![Vec::new(), b"a".to_vec(), b"abcabcabcabcabcabc".to_vec(), vec![0u8; 100_000], text, random, far]
    }

    fn decompress_with(cmd: &mut Command, gz: &[u8]) -> Vec<u8> {
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("spawn decompressor");
        let mut stdin = child.stdin.take().unwrap();
        let gz = gz.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&gz));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(out.status.success(), "{cmd:?} failed");
        out.stdout
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn gzip_dc_reads_both_levels() {
        for data in inputs() {
            for level in [Level::Stored, Level::Fixed] {
                let gz = gzip(&data, level);
                let back = decompress_with(Command::new("gzip").arg("-dc"), &gz);
                assert!(back == data, "{level:?}, {} bytes", data.len());
            }
        }
    }

    #[test]
    fn pythons_gzip_module_reads_both_levels() {
        if Command::new("python3").arg("-c").arg("1").status().map(|s| !s.success()).unwrap_or(true) {
            eprintln!("skipped: no python3");
            return;
        }
        let script = "import gzip,sys; sys.stdout.buffer.write(gzip.decompress(sys.stdin.buffer.read()))";
        for data in inputs() {
            for level in [Level::Stored, Level::Fixed] {
                let gz = gzip(&data, level);
                let back = decompress_with(Command::new("python3").arg("-c").arg(script), &gz);
                assert!(back == data, "{level:?}, {} bytes", data.len());
            }
        }
    }

    #[test]
    fn fixed_codes_compress_repetitive_data() {
        let text: Vec<u8> = (0..2000).flat_map(|i| format!("frame {} mapping 1\n", i % 50).into_bytes()).collect();
        let fixed = gzip(&text, Level::Fixed);
        let stored = gzip(&text, Level::Stored);
        assert!(fixed.len() * 8 < text.len(), "{} of {}", fixed.len(), text.len());
        assert_eq!(stored.len(), text.len() + 18 + 5 * text.len().div_ceil(65535));
    }
}
