//! Reports from the C layer: `spanalloc: fatal: <what> <addr><detail>` or a
//! warning, formatted on the stack and written with one `write(2)` (no
//! allocation, no lock, async-signal-safe), as the core's reports are.

/// Writes `spanalloc: fatal: <what> 0x<addr><detail>` and aborts.
#[cold]
#[inline(never)]
pub(crate) fn fatal(what: &str, addr: usize, detail: &str) -> ! {
    let mut buf = [0u8; 256];
    let mut n = 0;
    let mut put = |s: &[u8]| {
        for &b in s {
            if n < buf.len() {
                buf[n] = b;
                n += 1;
            }
        }
    };
    put(b"spanalloc: fatal: ");
    put(what.as_bytes());
    put(b" 0x");
    let mut hex = [0u8; 16];
    for (i, d) in hex.iter_mut().enumerate() {
        *d = b"0123456789abcdef"[(addr >> (60 - 4 * i)) & 0xf];
    }
    let first = hex.iter().position(|&d| d != b'0').unwrap_or(15);
    put(&hex[first..]);
    put(detail.as_bytes());
    put(b"\n");
    write_stderr(&buf[..n]);
    // SAFETY: abort has no preconditions.
    unsafe { libc::abort() }
}

/// Writes `spanalloc: <message>` to stderr.
#[cold]
pub(crate) fn warn(message: &str) {
    write_stderr(b"spanalloc: ");
    write_stderr(message.as_bytes());
    write_stderr(b"\n");
}

fn write_stderr(b: &[u8]) {
    // SAFETY: writes from a live buffer; the result is ignored on purpose
    // (there is nowhere else to report to).
    unsafe { libc::write(2, b.as_ptr().cast(), b.len()) };
}
