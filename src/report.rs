//! Fatal reports: misuse that spanalloc detects ends the process with a
//! message that names spanalloc, the fault and the address.
//!
//! Freeing a pointer spanalloc did not hand out, freeing an object twice,
//! freeing with a layout of another size class, and running off the end of a
//! coroutine stack are not recoverable: the heap would be corrupt if we went
//! on. Each report is formatted into a buffer on the stack, written to
//! stderr with one `write(2)` (no allocation, no locks, async-signal-safe)
//! and followed by `abort()`.

use crate::os;

/// A fixed-capacity text buffer on the stack.
pub(crate) struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    pub(crate) const fn new() -> Self {
        Line { buf: [0; 256], len: 0 }
    }

    pub(crate) fn str(&mut self, s: &str) -> &mut Self {
        for &b in s.as_bytes() {
            self.byte(b);
        }
        self
    }

    fn byte(&mut self, b: u8) {
        if self.len < self.buf.len() {
            self.buf[self.len] = b;
            self.len += 1;
        }
    }

    pub(crate) fn hex(&mut self, v: usize) -> &mut Self {
        self.str("0x");
        let mut digits = [0u8; 16];
        for (i, d) in digits.iter_mut().enumerate() {
            let nib = (v >> (60 - 4 * i)) & 0xf;
            *d = b"0123456789abcdef"[nib];
        }
        // Skip leading zeros but keep at least one digit.
        let first = digits.iter().position(|&d| d != b'0').unwrap_or(15);
        for &d in &digits[first..] {
            self.byte(d);
        }
        self
    }

    pub(crate) fn dec(&mut self, mut v: u64) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut n = 0;
        loop {
            digits[n] = b'0' + (v % 10) as u8;
            n += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        while n > 0 {
            n -= 1;
            self.byte(digits[n]);
        }
        self
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Writes the line (plus a newline) to stderr.
    pub(crate) fn emit(&mut self) {
        self.str("\n");
        os::write_stderr(self.as_bytes());
    }
}

/// Writes `spanalloc: fatal: <what> <addr><detail>` and aborts.
#[cold]
#[inline(never)]
fn fatal(what: &str, addr: usize, detail: impl FnOnce(&mut Line)) -> ! {
    let mut line = Line::new();
    line.str("spanalloc: fatal: ").str(what).str(" ").hex(addr);
    detail(&mut line);
    line.str(" (thread ").dec(os::thread_id()).str(")");
    line.emit();
    os::abort()
}

/// An object freed twice.
#[cold]
pub(crate) fn double_free(addr: usize, size: usize) -> ! {
    fatal("double free of", addr, |l| {
        l.str(": object of ").dec(size as u64).str(" bytes is already free");
    })
}

/// A pointer spanalloc never handed out (or whose pages are free again).
#[cold]
pub(crate) fn invalid_free(addr: usize) -> ! {
    fatal("free of", addr, |l| {
        l.str(": spanalloc did not allocate this pointer (foreign pointer, or already freed)");
    })
}

/// A pointer inside a span that is not the start of an object.
#[cold]
pub(crate) fn interior_free(addr: usize, size: usize) -> ! {
    fatal("free of", addr, |l| {
        l.str(": not the start of an object (objects here are ").dec(size as u64).str(" bytes)");
    })
}

/// A free whose layout names another size than the allocation had.
#[cold]
pub(crate) fn layout_mismatch(addr: usize, given: usize, actual: usize) -> ! {
    fatal("free of", addr, |l| {
        l.str(": layout size ")
            .dec(given as u64)
            .str(" does not match the allocation (size class of ")
            .dec(actual as u64)
            .str(" bytes)");
    })
}

/// A pointer handed to a heap other than the one that allocated it.
#[cold]
pub(crate) fn wrong_heap(addr: usize) -> ! {
    fatal("free of", addr, |l| {
        l.str(": the pointer belongs to another spanalloc heap");
    })
}

/// A resource the allocator needs for bookkeeping is exhausted (cache
/// indices, or memory for a cache's slots): there is no null to return.
#[cold]
pub(crate) fn fatal_resource(what: &str) -> ! {
    let mut line = Line::new();
    line.str("spanalloc: fatal: cannot set up ").str(what);
    line.str(" (thread ").dec(os::thread_id()).str(")");
    line.emit();
    os::abort()
}

/// As [`fatal_resource`], for an operation on `addr`.
#[cold]
#[cfg(not(loom))]
pub(crate) fn fatal_resource_at(what: &str, addr: usize) -> ! {
    fatal("cannot set up", addr, |l| {
        l.str(" for ").str(what);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_formats_hex_and_decimal() {
        let mut l = Line::new();
        l.str("a ").hex(0xdead_beef).str(" ").dec(0).str(" ").dec(1234567).str(" ").hex(0);
        assert_eq!(l.as_bytes(), b"a 0xdeadbeef 0 1234567 0x0");
    }

    #[test]
    fn line_truncates_instead_of_overflowing() {
        let mut l = Line::new();
        for _ in 0..100 {
            l.str("0123456789");
        }
        assert_eq!(l.as_bytes().len(), 256);
    }
}
