//! Plain ACKs recognised on the wire, so that the protocol code can apply them without decoding
//! a protobuf message: a request that names a type and the nonce of a response, carries no node,
//! no error_detail and nothing else that changes a subscription (state of the world: only
//! version_info, resource_names, type_url, response_nonce; delta: only type_url and
//! response_nonce). Whether the nonce is the one outstanding, and whether the names are those
//! already subscribed, is the protocol code's to check: anything else goes the full path.

use bytes::Bytes;

use crate::Method;

/// The fields of a plain ACK: `names` is the resource_names fields as encoded, in order (a key
/// to compare with the request that set the subscription; empty for delta).
#[derive(Debug, PartialEq, Eq)]
pub struct Ack {
    pub type_url: String,
    pub nonce: String,
    pub version: String,
    pub names: Vec<u8>,
}

fn varint(data: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *data.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn text(raw: &[u8]) -> Option<String> {
    std::str::from_utf8(raw).ok().map(str::to_owned)
}

/// The ACK in `data` (a DiscoveryRequest or DeltaDiscoveryRequest), if it is a plain one.
pub fn plain_ack(method: Method, data: &Bytes) -> Option<Ack> {
    let (type_field, nonce_field) = match method {
        Method::Sotw => (4, 5),
        Method::Delta => (2, 6),
    };
    let mut ack = Ack {
        type_url: String::new(),
        nonce: String::new(),
        version: String::new(),
        names: Vec::new(),
    };
    let mut at = 0;
    while at < data.len() {
        let start = at;
        let key = varint(data, &mut at)?;
        if key & 7 != 2 {
            return None; // every field of a plain ACK is length-delimited
        }
        let len = usize::try_from(varint(data, &mut at)?).ok()?;
        let end = at.checked_add(len).filter(|&e| e <= data.len())?;
        let raw = &data[at..end];
        at = end;
        match (method, key >> 3) {
            (_, f) if f == type_field => ack.type_url = text(raw)?,
            (_, f) if f == nonce_field => ack.nonce = text(raw)?,
            (Method::Sotw, 1) => ack.version = text(raw)?,
            (Method::Sotw, 3) => {
                std::str::from_utf8(raw).ok()?;
                ack.names.extend_from_slice(&data[start..end]);
            }
            _ => return None,
        }
    }
    (!ack.type_url.is_empty() && !ack.nonce.is_empty()).then_some(ack)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(out: &mut Vec<u8>, number: u8, value: &[u8]) {
        out.push(number << 3 | 2);
        out.push(u8::try_from(value.len()).expect("short"));
        out.extend_from_slice(value);
    }

    #[test]
    fn sotw_ack_with_names() {
        let mut d = Vec::new();
        field(&mut d, 1, b"v1");
        field(&mut d, 3, b"a");
        field(&mut d, 3, b"b");
        field(&mut d, 4, b"T");
        field(&mut d, 5, b"1-2");
        let ack = plain_ack(Method::Sotw, &Bytes::from(d)).expect("a plain ACK");
        assert_eq!(ack.type_url, "T");
        assert_eq!(ack.nonce, "1-2");
        assert_eq!(ack.version, "v1");
        assert_eq!(ack.names, b"\x1a\x01a\x1a\x01b");
    }

    #[test]
    fn not_plain() {
        let base = |extra: &dyn Fn(&mut Vec<u8>)| {
            let mut d = Vec::new();
            field(&mut d, 4, b"T");
            field(&mut d, 5, b"n");
            extra(&mut d);
            Bytes::from(d)
        };
        // a node, an error_detail, a locator, a varint field, no nonce, bad UTF-8, truncated
        assert!(plain_ack(Method::Sotw, &base(&|d| field(d, 2, b""))).is_none());
        assert!(plain_ack(Method::Sotw, &base(&|d| field(d, 6, b""))).is_none());
        assert!(plain_ack(Method::Sotw, &base(&|d| field(d, 7, b""))).is_none());
        assert!(plain_ack(Method::Sotw, &base(&|d| d.extend_from_slice(&[8, 1]))).is_none());
        assert!(plain_ack(Method::Sotw, &base(&|d| field(d, 3, b"\xff"))).is_none());
        assert!(plain_ack(
            Method::Sotw,
            &base(&|d| d.extend_from_slice(&[26, 5, b'a']))
        )
        .is_none());
        let mut d = Vec::new();
        field(&mut d, 4, b"T");
        assert!(plain_ack(Method::Sotw, &Bytes::from(d)).is_none());
        // delta: subscribe, unsubscribe, initial versions, error_detail go the full path
        let mut d = Vec::new();
        field(&mut d, 2, b"T");
        field(&mut d, 6, b"n");
        assert!(plain_ack(Method::Delta, &Bytes::from(d.clone())).is_some());
        for f in [1, 3, 4, 5, 7, 8, 9] {
            let mut e = d.clone();
            field(&mut e, f, b"x");
            assert!(
                plain_ack(Method::Delta, &Bytes::from(e)).is_none(),
                "field {f}"
            );
        }
    }
}
