//! The two messages the fleet speaks, on the wire: a `DiscoveryRequest` encoded and the two
//! fields of a `DiscoveryResponse` it needs (version_info, nonce) read, plus gRPC's framing.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Endpoints, the type every simulated proxy subscribes to.
pub const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

fn put_varint(out: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

fn put_field(out: &mut BytesMut, number: u32, data: &[u8]) {
    put_varint(out, u64::from(number << 3 | 2));
    put_varint(out, data.len() as u64);
    out.put_slice(data);
}

/// A `DiscoveryRequest` (envoy.service.discovery.v3) in a gRPC frame: version_info (1), node
/// (2, its id only) on the first request, resource_names (3), type_url (4), response_nonce (5).
pub fn request(node: Option<&str>, names: &[String], version: &[u8], nonce: &[u8]) -> Bytes {
    // The frame's 5-byte prefix first, its length filled in once the message is written.
    let mut msg = BytesMut::with_capacity(512);
    msg.put_bytes(0, 5);
    if !version.is_empty() {
        put_field(&mut msg, 1, version);
    }
    if let Some(id) = node {
        let mut node_msg = BytesMut::new();
        put_field(&mut node_msg, 1, id.as_bytes());
        put_field(&mut msg, 2, &node_msg);
    }
    for name in names {
        put_field(&mut msg, 3, name.as_bytes());
    }
    put_field(&mut msg, 4, EDS.as_bytes());
    if !nonce.is_empty() {
        put_field(&mut msg, 5, nonce);
    }
    let len = (msg.len() - 5) as u32;
    msg[1..5].copy_from_slice(&len.to_be_bytes());
    msg.freeze()
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.first()?;
        buf.advance(1);
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(value);
        }
    }
    None
}

/// (version_info, nonce) of an encoded `DiscoveryResponse`; None when it does not parse.
pub fn response_version_nonce(mut buf: &[u8]) -> Option<(Bytes, Bytes)> {
    let (mut version, mut nonce) = (Bytes::new(), Bytes::new());
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        match key & 7 {
            0 => {
                varint(&mut buf)?;
            }
            1 => buf = buf.get(8..)?,
            5 => buf = buf.get(4..)?,
            2 => {
                let len = usize::try_from(varint(&mut buf)?).ok()?;
                let data = buf.get(..len)?;
                match key >> 3 {
                    1 => version = Bytes::copy_from_slice(data),
                    5 => nonce = Bytes::copy_from_slice(data),
                    _ => {}
                }
                buf = &buf[len..];
            }
            _ => return None,
        }
    }
    Some((version, nonce))
}

/// The gRPC messages (length-prefixed, uncompressed) whole in `chunk` after what `pending`
/// held; what is left of a message is kept in `pending`. A chunk that starts with a message
/// (the usual case) is sliced, not copied.
pub fn take_frames(pending: &mut BytesMut, chunk: Bytes) -> Vec<Bytes> {
    let mut data = if pending.is_empty() {
        chunk
    } else {
        pending.extend_from_slice(&chunk);
        pending.split().freeze()
    };
    let mut out = Vec::new();
    while data.len() >= 5 {
        let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
        if data.len() < 5 + len {
            break;
        }
        data.advance(5);
        out.push(data.split_to(len));
    }
    pending.extend_from_slice(&data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_frames_and_its_fields_read_back() {
        let names = vec!["a".to_string(), "bc".to_string()];
        let data = request(Some("node-1"), &names, b"v1", b"n-7");
        let mut pending = BytesMut::new();
        let got = take_frames(&mut pending, data);
        assert_eq!(got.len(), 1);
        assert!(pending.is_empty());
        // version_info and response_nonce sit at the response's numbers 1 and 5 as well.
        let (version, nonce) = response_version_nonce(&got[0]).expect("parses");
        assert_eq!(&version[..], b"v1");
        assert_eq!(&nonce[..], b"n-7");
    }

    #[test]
    fn chunks_split_anywhere_give_the_same_messages() {
        let one = request(Some("a"), &["x".to_string()], b"1", b"n1");
        let two = request(None, &[], b"22", b"n2");
        let stream: Vec<u8> = [&one[..], &two[..]].concat();
        for cut in 0..=stream.len() {
            let mut pending = BytesMut::new();
            let mut got = take_frames(&mut pending, Bytes::copy_from_slice(&stream[..cut]));
            got.extend(take_frames(
                &mut pending,
                Bytes::copy_from_slice(&stream[cut..]),
            ));
            assert!(pending.is_empty(), "cut at {cut}");
            assert_eq!(got, vec![one.slice(5..), two.slice(5..)], "cut at {cut}");
        }
    }

    #[test]
    fn a_partial_frame_waits() {
        let data = request(None, &[], b"", b"");
        let mut pending = BytesMut::new();
        assert!(take_frames(&mut pending, data.slice(..data.len() - 1)).is_empty());
        assert_eq!(pending.len(), data.len() - 1);
    }

    #[test]
    fn other_wire_types_are_skipped() {
        // canary (3, varint) and an unknown fixed64 before the nonce.
        let msg = [0x18, 0x01, 0x41, 0, 0, 0, 0, 0, 0, 0, 0, 0x2a, 0x01, b'x'];
        let (version, nonce) = response_version_nonce(&msg).expect("parses");
        assert!(version.is_empty());
        assert_eq!(&nonce[..], b"x");
        assert!(response_version_nonce(&[0x0b]).is_none());
    }
}
