//! A protobuf wire-format walker.
//!
//! We decode Envoy's messages by hand instead of through generated structs because a generated
//! decoder drops unknown fields without a word, and meshcore must never ignore a field that could
//! change a decision: every decoder in `proto` sees every field number present in the bytes and
//! either decodes it, knowingly passes it through, or reports it as unsupported.

use crate::error::{join_path, CoreError};

/// One field value as it appears on the wire.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

fn read_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut out: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*pos)?;
        *pos += 1;
        out |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(out);
        }
    }
    None
}

/// Calls `f(field_number, value)` for every field of the message in `buf`, in wire order.
/// Malformed bytes are reported at `path` and stop the walk (nothing after them can be trusted).
pub fn walk<'a>(
    buf: &'a [u8],
    path: &str,
    err: &mut CoreError,
    mut f: impl FnMut(u32, Value<'a>, &mut CoreError),
) {
    let mut pos = 0usize;
    while pos < buf.len() {
        let Some(key) = read_varint(buf, &mut pos) else {
            err.invalid(path, "malformed protobuf: truncated field key");
            return;
        };
        let number = key >> 3;
        if number == 0 || number > u64::from(u32::MAX >> 3) {
            err.invalid(path, "malformed protobuf: bad field number");
            return;
        }
        let number = number as u32;
        let value = match key & 7 {
            0 => match read_varint(buf, &mut pos) {
                Some(v) => Value::Varint(v),
                None => {
                    err.invalid(path, "malformed protobuf: truncated varint");
                    return;
                }
            },
            1 => match buf.get(pos..pos + 8) {
                Some(b) => {
                    pos += 8;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    Value::Fixed64(u64::from_le_bytes(a))
                }
                None => {
                    err.invalid(path, "malformed protobuf: truncated fixed64");
                    return;
                }
            },
            2 => {
                let Some(len) = read_varint(buf, &mut pos) else {
                    err.invalid(path, "malformed protobuf: truncated length");
                    return;
                };
                let end = usize::try_from(len)
                    .ok()
                    .and_then(|l| pos.checked_add(l))
                    .filter(|&e| e <= buf.len());
                let Some(end) = end else {
                    err.invalid(path, "malformed protobuf: length past the end");
                    return;
                };
                let v = Value::Bytes(&buf[pos..end]);
                pos = end;
                v
            }
            5 => match buf.get(pos..pos + 4) {
                Some(b) => {
                    pos += 4;
                    let mut a = [0u8; 4];
                    a.copy_from_slice(b);
                    Value::Fixed32(u32::from_le_bytes(a))
                }
                None => {
                    err.invalid(path, "malformed protobuf: truncated fixed32");
                    return;
                }
            },
            _ => {
                err.invalid(path, "malformed protobuf: unsupported wire type (groups)");
                return;
            }
        };
        f(number, value, err);
    }
}

/// Typed access to a field value, reporting a wire-type mismatch at the field's path.
pub struct Field<'a, 'p> {
    pub path: &'p str,
    pub value: Value<'a>,
}

impl<'a, 'p> Field<'a, 'p> {
    /// The field at `path` holding `value`.
    pub fn at(path: &'p str, value: Value<'a>) -> Self {
        Self { path, value }
    }
}

impl<'a> Field<'a, '_> {
    fn mismatch(&self, err: &mut CoreError, want: &str) {
        err.invalid(
            self.path,
            format!("malformed protobuf: expected {want} wire type"),
        );
    }

    pub fn bytes(&self, err: &mut CoreError) -> &'a [u8] {
        match self.value {
            Value::Bytes(b) => b,
            _ => {
                self.mismatch(err, "length-delimited");
                &[]
            }
        }
    }

    pub fn string(&self, err: &mut CoreError) -> String {
        match std::str::from_utf8(self.bytes(err)) {
            Ok(s) => s.to_string(),
            Err(_) => {
                err.invalid(self.path, "string field is not valid UTF-8");
                String::new()
            }
        }
    }

    pub fn varint(&self, err: &mut CoreError) -> u64 {
        match self.value {
            Value::Varint(v) => v,
            _ => {
                self.mismatch(err, "varint");
                0
            }
        }
    }

    pub fn bool(&self, err: &mut CoreError) -> bool {
        self.varint(err) != 0
    }

    pub fn u32(&self, err: &mut CoreError) -> u32 {
        // uint32 on the wire is a varint whose value is truncated to 32 bits by every decoder.
        self.varint(err) as u32
    }

    pub fn i32(&self, err: &mut CoreError) -> i32 {
        self.varint(err) as i32
    }

    pub fn i64(&self, err: &mut CoreError) -> i64 {
        self.varint(err) as i64
    }
}

/// The path of a field inside the message at `path`.
pub fn field_path(path: &str, name: &str) -> String {
    join_path(path, name)
}

/// The path of the `i`-th element of a repeated field.
pub fn index_path(path: &str, name: &str, i: usize) -> String {
    format!("{}[{i}]", join_path(path, name))
}

/// Reports a field number this message's decoder does not know (newer Envoy API, or a typo in
/// hand-made bytes): never ignored, because it could change the decision.
pub fn unknown_field(err: &mut CoreError, path: &str, message: &str, number: u32) {
    err.unsupported(
        field_path(path, &format!("<field {number}>")),
        format!("unknown field number {number} in {message} is not supported by meshcore"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_fields_and_reports_truncation() {
        // field 1 varint 150, field 2 bytes "hi"
        let buf = [0x08, 0x96, 0x01, 0x12, 0x02, b'h', b'i'];
        let mut seen = Vec::new();
        let mut err = CoreError::new();
        walk(&buf, "m", &mut err, |n, v, _| seen.push((n, v)));
        assert!(err.is_empty());
        assert_eq!(seen.len(), 2);
        assert!(matches!(seen[0], (1, Value::Varint(150))));
        assert!(matches!(seen[1], (2, Value::Bytes(b"hi"))));

        let mut err = CoreError::new();
        walk(&[0x12, 0x05, b'h'], "m", &mut err, |_, _, _| {});
        assert_eq!(err.errors[0].path, "m");
    }
}

/// A minimal protobuf encoder, for tests that build configurations by hand.
#[cfg(test)]
pub mod test_encode {
    pub fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// A length-delimited field.
    pub fn bytes_field(n: u32, b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        varint(u64::from(n) << 3 | 2, &mut out);
        varint(b.len() as u64, &mut out);
        out.extend_from_slice(b);
        out
    }

    /// A varint field.
    pub fn varint_field(n: u32, v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        varint(u64::from(n) << 3, &mut out);
        varint(v, &mut out);
        out
    }
}
