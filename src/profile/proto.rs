//! Protocol buffers, by hand: the encoder the pprof writer uses and the
//! decoder the tests read its output with.
//!
//! A protobuf message is a sequence of fields, each a key (field number
//! and wire type, as a varint) and a value: a varint (wire type 0), eight
//! little-endian bytes (1), a length-prefixed byte string (2: strings,
//! nested messages, packed repeated scalars) or four bytes (5). A pprof
//! profile needs varints, byte strings and nested messages, nothing else.
//! Go's runtime writes its profiles with an encoder of the same size
//! (`runtime/pprof/protobuf.go`); no code generator, no dependency.
//!
//! Nested messages are encoded into a scratch buffer and then copied with
//! their length in front: profiles are small (kilobytes to a few
//! megabytes) and the writer runs outside every allocator lock, where it
//! may allocate freely.

/// Wire type of varints.
pub const VARINT: u8 = 0;
/// Wire type of eight fixed bytes.
pub const FIXED64: u8 = 1;
/// Wire type of length-delimited values.
pub const BYTES: u8 = 2;
/// Wire type of four fixed bytes.
pub const FIXED32: u8 = 5;

/// A protobuf message being written.
#[derive(Default, Debug)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    /// An empty message.
    pub fn new() -> Self {
        Encoder { buf: Vec::new() }
    }

    /// The encoded bytes.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u8) {
        self.varint((u64::from(field) << 3) | u64::from(wire));
    }

    /// A `uint64` field (omitted when 0, proto3's default).
    pub fn uint64(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.key(field, VARINT);
            self.varint(v);
        }
    }

    /// An `int64` field (omitted when 0; negative values take ten bytes).
    pub fn int64(&mut self, field: u32, v: i64) {
        self.uint64(field, v as u64);
    }

    /// A `bool` field (omitted when false).
    pub fn bool(&mut self, field: u32, v: bool) {
        self.uint64(field, v as u64);
    }

    /// A `bytes` or `string` field, written even when empty (a repeated
    /// string's empty element must be kept).
    pub fn bytes(&mut self, field: u32, v: &[u8]) {
        self.key(field, BYTES);
        self.varint(v.len() as u64);
        self.buf.extend_from_slice(v);
    }

    /// A packed repeated `uint64`/`int64` field (omitted when empty).
    pub fn packed(&mut self, field: u32, vs: impl IntoIterator<Item = u64>) {
        let mut inner = Encoder::new();
        for v in vs {
            inner.varint(v);
        }
        if !inner.buf.is_empty() {
            self.bytes(field, &inner.buf);
        }
    }

    /// A nested message, written by `f`.
    pub fn message(&mut self, field: u32, f: impl FnOnce(&mut Encoder)) {
        let mut inner = Encoder::new();
        f(&mut inner);
        self.bytes(field, &inner.buf);
    }
}

/// A field's value as read from the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value<'a> {
    /// Wire type 0.
    Varint(u64),
    /// Wire type 1.
    Fixed64(u64),
    /// Wire type 2: a string, a nested message or a packed field.
    Bytes(&'a [u8]),
    /// Wire type 5.
    Fixed32(u32),
}

/// Why a message could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The input ends inside a field.
    Truncated,
    /// A varint longer than ten bytes.
    LongVarint,
    /// A wire type protobuf does not have (or the deprecated groups).
    WireType(u8),
    /// Field number 0.
    FieldZero,
}

/// The fields of one message, in order.
#[derive(Clone, Debug)]
pub struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    /// Reads the fields of `msg`.
    pub fn new(msg: &'a [u8]) -> Self {
        Fields { rest: msg }
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&b, rest) = self.rest.split_first().ok_or(DecodeError::Truncated)?;
            self.rest = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(DecodeError::LongVarint)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn field(&mut self) -> Result<(u32, Value<'a>), DecodeError> {
        let key = self.varint()?;
        let field = (key >> 3) as u32;
        if field == 0 {
            return Err(DecodeError::FieldZero);
        }
        let value = match (key & 7) as u8 {
            VARINT => Value::Varint(self.varint()?),
            FIXED64 => Value::Fixed64(u64::from_le_bytes(self.take(8)?.try_into().expect("eight bytes"))),
            BYTES => {
                let n = self.varint()?;
                Value::Bytes(self.take(usize::try_from(n).map_err(|_| DecodeError::Truncated)?)?)
            }
            FIXED32 => Value::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().expect("four bytes"))),
            w => return Err(DecodeError::WireType(w)),
        };
        Ok((field, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Value<'a>), DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let r = self.field();
        if r.is_err() {
            self.rest = &[];
        }
        Some(r)
    }
}

/// The values of a repeated integer field, packed or not: appends what one
/// occurrence holds to `out`.
pub fn repeated_u64(v: Value<'_>, out: &mut Vec<u64>) -> Result<(), DecodeError> {
    match v {
        Value::Varint(x) | Value::Fixed64(x) => out.push(x),
        Value::Fixed32(x) => out.push(u64::from(x)),
        Value::Bytes(b) => {
            let mut f = Fields { rest: b };
            while !f.rest.is_empty() {
                out.push(f.varint()?);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_every_length() {
        let values = [0u64, 1, 127, 128, 300, 16383, 16384, u32::MAX as u64, 1 << 56, u64::MAX];
        let mut e = Encoder::new();
        for (i, &v) in values.iter().enumerate() {
            e.key(i as u32 + 1, VARINT);
            e.varint(v);
        }
        let bytes = e.finish();
        let got: Vec<_> = Fields::new(&bytes).map(|f| f.unwrap()).collect();
        for (i, &v) in values.iter().enumerate() {
            assert_eq!(got[i], (i as u32 + 1, Value::Varint(v)));
        }
        // The known encoding of 300 (protobuf's own example).
        let mut e = Encoder::new();
        e.uint64(1, 300);
        assert_eq!(e.finish(), [0x08, 0xac, 0x02]);
    }

    #[test]
    fn messages_strings_and_packed_fields_round_trip() {
        let mut e = Encoder::new();
        e.bytes(6, b"");
        e.bytes(6, b"alloc_space");
        e.message(1, |m| {
            m.int64(1, 5);
            m.int64(2, -1);
        });
        e.packed(2, [1, 2, 300]);
        e.uint64(3, 0); // omitted
        e.bool(4, true);
        let bytes = e.finish();
        let f: Vec<_> = Fields::new(&bytes).map(|f| f.unwrap()).collect();
        assert_eq!(f.len(), 5);
        assert_eq!(f[0], (6, Value::Bytes(b"")));
        assert_eq!(f[1], (6, Value::Bytes(b"alloc_space")));
        let Value::Bytes(inner) = f[2].1 else { panic!() };
        let inner: Vec<_> = Fields::new(inner).map(|f| f.unwrap()).collect();
        assert_eq!(inner, [(1, Value::Varint(5)), (2, Value::Varint(u64::MAX))]);
        let mut ids = Vec::new();
        repeated_u64(f[3].1, &mut ids).unwrap();
        repeated_u64(Value::Varint(7), &mut ids).unwrap();
        assert_eq!(ids, [1, 2, 300, 7]);
        assert_eq!(f[4], (4, Value::Varint(1)));
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        assert_eq!(Fields::new(&[0x0a, 5, 1]).next(), Some(Err(DecodeError::Truncated)));
        assert_eq!(Fields::new(&[0x08]).next(), Some(Err(DecodeError::Truncated)));
        assert_eq!(Fields::new(&[0x08; 12]).next().unwrap(), Ok((1, Value::Varint(8))));
        assert_eq!(
            Fields::new(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]).next(),
            Some(Err(DecodeError::LongVarint))
        );
        assert_eq!(Fields::new(&[0x0b]).next(), Some(Err(DecodeError::WireType(3))));
        assert_eq!(Fields::new(&[0x00, 0x00]).next(), Some(Err(DecodeError::FieldZero)));
        let mut f = Fields::new(&[0x0b, 0x08, 0x01]);
        assert!(f.next().unwrap().is_err());
        assert!(f.next().is_none(), "stops after an error");
        let mut out = Vec::new();
        assert_eq!(repeated_u64(Value::Bytes(&[0x80]), &mut out), Err(DecodeError::Truncated));
        assert_eq!(
            Fields::new(&[0x0d, 1, 0, 0, 0, 0x09, 2, 0, 0, 0, 0, 0, 0, 0]).map(|f| f.unwrap()).collect::<Vec<_>>(),
            [(1, Value::Fixed32(1)), (1, Value::Fixed64(2))]
        );
    }
}
