//! A reader of pprof `Profile` messages, for tests: it turns the bytes
//! [`super::Profile::to_pprof`] writes back into plain structures, with
//! string-table indices resolved, so a test can check what pprof will see.
//!
//! It reads the fields spanalloc writes and skips the others; it checks
//! what a strict reader would refuse (string indices in range, location ids
//! non-zero and unique, samples referring to locations that exist).

use std::collections::HashMap;

use super::proto::{DecodeError, Fields, Value, repeated_u64};

/// A decoded sample.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// Location ids, leaf first.
    pub location_ids: Vec<u64>,
    /// One value per sample type.
    pub values: Vec<i64>,
    /// Numeric labels: (key, value, unit).
    pub num_labels: Vec<(String, i64, String)>,
}

/// A decoded location.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Location {
    /// Its id.
    pub id: u64,
    /// The mapping it lies in (0: none).
    pub mapping_id: u64,
    /// Its address.
    pub address: u64,
    /// The function ids of its lines.
    pub function_ids: Vec<u64>,
}

/// A decoded mapping.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mapping {
    /// Its id.
    pub id: u64,
    /// Start address.
    pub start: u64,
    /// Limit address.
    pub limit: u64,
    /// File offset.
    pub offset: u64,
    /// File name.
    pub filename: String,
    /// Build ID.
    pub build_id: String,
}

/// A decoded profile.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decoded {
    /// The string table.
    pub strings: Vec<String>,
    /// (type, unit) per sample type.
    pub sample_types: Vec<(String, String)>,
    /// The samples.
    pub samples: Vec<Sample>,
    /// Locations by id.
    pub locations: HashMap<u64, Location>,
    /// Location ids in the order they were written.
    pub location_order: Vec<u64>,
    /// Function names by id.
    pub functions: HashMap<u64, String>,
    /// The mappings, in order.
    pub mappings: Vec<Mapping>,
    /// (type, unit) of the period.
    pub period_type: (String, String),
    /// The period.
    pub period: i64,
    /// `time_nanos`.
    pub time_nanos: i64,
    /// The drop-frames expression.
    pub drop_frames: String,
    /// The default sample type.
    pub default_sample_type: String,
    /// Comments.
    pub comments: Vec<String>,
}

/// Why a profile could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The protobuf framing is broken.
    Wire(DecodeError),
    /// The message is well-formed protobuf but not a valid profile.
    Invalid(String),
}

impl From<DecodeError> for Error {
    fn from(e: DecodeError) -> Self {
        Error::Wire(e)
    }
}

fn bytes<'a>(v: Value<'a>) -> Result<&'a [u8], Error> {
    match v {
        Value::Bytes(b) => Ok(b),
        other => Err(Error::Invalid(format!("expected bytes, got {other:?}"))),
    }
}

fn int(v: Value<'_>) -> Result<u64, Error> {
    match v {
        Value::Varint(x) => Ok(x),
        other => Err(Error::Invalid(format!("expected a varint, got {other:?}"))),
    }
}

/// Decodes an uncompressed pprof `Profile` message.
pub fn decode(msg: &[u8]) -> Result<Decoded, Error> {
    // Strings first: every other field refers to them.
    let mut strings = Vec::new();
    for f in Fields::new(msg) {
        let (n, v) = f?;
        if n == 6 {
            strings.push(String::from_utf8(bytes(v)?.to_vec()).map_err(|_| Error::Invalid("string not UTF-8".into()))?);
        }
    }
    if strings.first().map(String::as_str) != Some("") {
        return Err(Error::Invalid("string_table[0] must be empty".into()));
    }
    let s = |i: u64| {
        strings.get(i as usize).cloned().ok_or_else(|| Error::Invalid(format!("string index {i} out of range")))
    };
    let value_type = |b: &[u8]| -> Result<(String, String), Error> {
        let (mut t, mut u) = (0, 0);
        for f in Fields::new(b) {
            match f? {
                (1, v) => t = int(v)?,
                (2, v) => u = int(v)?,
                _ => {}
            }
        }
        Ok((s(t)?, s(u)?))
    };
    let mut d = Decoded::default();
    for f in Fields::new(msg) {
        let (n, v) = f?;
        match n {
            1 => d.sample_types.push(value_type(bytes(v)?)?),
            2 => {
                let mut smp = Sample::default();
                for f in Fields::new(bytes(v)?) {
                    match f? {
                        (1, v) => repeated_u64(v, &mut smp.location_ids)?,
                        (2, v) => {
                            let mut vals = Vec::new();
                            repeated_u64(v, &mut vals)?;
                            smp.values.extend(vals.into_iter().map(|x| x as i64));
                        }
                        (3, v) => {
                            let (mut key, mut num, mut unit) = (0, 0, 0);
                            for f in Fields::new(bytes(v)?) {
                                match f? {
                                    (1, v) => key = int(v)?,
                                    (3, v) => num = int(v)?,
                                    (4, v) => unit = int(v)?,
                                    _ => {}
                                }
                            }
                            smp.num_labels.push((s(key)?, num as i64, s(unit)?));
                        }
                        _ => {}
                    }
                }
                d.samples.push(smp);
            }
            3 => {
                let mut m = Mapping::default();
                for f in Fields::new(bytes(v)?) {
                    match f? {
                        (1, v) => m.id = int(v)?,
                        (2, v) => m.start = int(v)?,
                        (3, v) => m.limit = int(v)?,
                        (4, v) => m.offset = int(v)?,
                        (5, v) => m.filename = s(int(v)?)?,
                        (6, v) => m.build_id = s(int(v)?)?,
                        _ => {}
                    }
                }
                d.mappings.push(m);
            }
            4 => {
                let mut l = Location::default();
                for f in Fields::new(bytes(v)?) {
                    match f? {
                        (1, v) => l.id = int(v)?,
                        (2, v) => l.mapping_id = int(v)?,
                        (3, v) => l.address = int(v)?,
                        (4, v) => {
                            for f in Fields::new(bytes(v)?) {
                                if let (1, v) = f? {
                                    l.function_ids.push(int(v)?);
                                }
                            }
                        }
                        _ => {}
                    }
                }
                if l.id == 0 || d.locations.contains_key(&l.id) {
                    return Err(Error::Invalid(format!("location id {} is zero or repeated", l.id)));
                }
                d.location_order.push(l.id);
                d.locations.insert(l.id, l);
            }
            5 => {
                let (mut id, mut name) = (0, 0);
                for f in Fields::new(bytes(v)?) {
                    match f? {
                        (1, v) => id = int(v)?,
                        (2, v) => name = int(v)?,
                        _ => {}
                    }
                }
                d.functions.insert(id, s(name)?);
            }
            7 => d.drop_frames = s(int(v)?)?,
            9 => d.time_nanos = int(v)? as i64,
            11 => d.period_type = value_type(bytes(v)?)?,
            12 => d.period = int(v)? as i64,
            13 => {
                let mut ids = Vec::new();
                repeated_u64(v, &mut ids)?;
                for i in ids {
                    d.comments.push(s(i)?);
                }
            }
            14 => d.default_sample_type = s(int(v)?)?,
            _ => {}
        }
    }
    for smp in &d.samples {
        if smp.values.len() != d.sample_types.len() {
            return Err(Error::Invalid("a sample's value count differs from the sample types'".into()));
        }
        if let Some(id) = smp.location_ids.iter().find(|id| !d.locations.contains_key(id)) {
            return Err(Error::Invalid(format!("a sample refers to missing location {id}")));
        }
    }
    for l in d.locations.values() {
        if l.mapping_id != 0 && !d.mappings.iter().any(|m| m.id == l.mapping_id) {
            return Err(Error::Invalid(format!("location {} refers to missing mapping {}", l.id, l.mapping_id)));
        }
        if let Some(f) = l.function_ids.iter().find(|f| !d.functions.contains_key(f)) {
            return Err(Error::Invalid(format!("location {} refers to missing function {f}", l.id)));
        }
    }
    d.strings = strings;
    Ok(d)
}

impl Decoded {
    /// The values of the sample type named `ty`, per sample.
    pub fn column(&self, ty: &str) -> Vec<i64> {
        let i = self.sample_types.iter().position(|(t, _)| t == ty).expect("sample type");
        self.samples.iter().map(|s| s.values[i]).collect()
    }
}
