//! Discovery responses encoded straight from interned resources: a push copies bytes that are
//! already serialized instead of building protobuf objects per resource per proxy.
//!
//! Field numbers are those of envoy.service.discovery.v3 (DiscoveryResponse,
//! DeltaDiscoveryResponse, Resource) and google.protobuf.Any; the tests decode the output with
//! the real generated classes.

use super::ResourceRef;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// A length-delimited field (wire type 2).
fn bytes_field(out: &mut Vec<u8>, field: u32, data: &[u8]) {
    varint(out, (u64::from(field) << 3) | 2);
    varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

fn str_field(out: &mut Vec<u8>, field: u32, s: &str) {
    if !s.is_empty() {
        bytes_field(out, field, s.as_bytes());
    }
}

fn field_len(field: u32, len: usize) -> usize {
    varint_len(u64::from(field) << 3) + varint_len(len as u64) + len
}

/// google.protobuf.Any { type_url = 1; value = 2 }.
fn any_len(type_url: &str, body: &[u8]) -> usize {
    field_len(1, type_url.len()) + field_len(2, body.len())
}

fn any(out: &mut Vec<u8>, field: u32, type_url: &str, body: &[u8]) {
    varint(out, (u64::from(field) << 3) | 2);
    varint(out, any_len(type_url, body) as u64);
    str_field(out, 1, type_url);
    bytes_field(out, 2, body);
}

/// A state-of-the-world DiscoveryResponse.
pub fn encode_sotw(
    version: &str,
    type_url: &str,
    nonce: &str,
    resources: &[ResourceRef],
) -> Vec<u8> {
    let size: usize = resources
        .iter()
        .map(|r| field_len(2, any_len(type_url, &r.body)))
        .sum();
    let mut out = Vec::with_capacity(size + version.len() + type_url.len() + nonce.len() + 16);
    str_field(&mut out, 1, version);
    for r in resources {
        any(&mut out, 2, type_url, &r.body);
    }
    str_field(&mut out, 4, type_url);
    str_field(&mut out, 5, nonce);
    out
}

/// A DeltaDiscoveryResponse: each resource as Resource { version = 1; resource = 2; name = 3 }.
pub fn encode_delta(
    system_version: &str,
    type_url: &str,
    nonce: &str,
    updated: &[ResourceRef],
    removed: &[String],
) -> Vec<u8> {
    let mut out = Vec::new();
    str_field(&mut out, 1, system_version);
    for r in updated {
        let inner = field_len(1, r.version.len())
            + field_len(2, any_len(type_url, &r.body))
            + field_len(3, r.name.len());
        varint(&mut out, (2 << 3) | 2);
        varint(&mut out, inner as u64);
        str_field(&mut out, 1, &r.version);
        any(&mut out, 2, type_url, &r.body);
        str_field(&mut out, 3, &r.name);
    }
    str_field(&mut out, 4, type_url);
    str_field(&mut out, 5, nonce);
    for name in removed {
        bytes_field(&mut out, 6, name.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_match_protobuf() {
        let mut out = Vec::new();
        varint(&mut out, 300);
        assert_eq!(out, vec![0xac, 0x02]);
        assert_eq!(varint_len(300), 2);
        assert_eq!(varint_len(0), 1);
    }

    #[test]
    fn empty_strings_are_omitted_like_proto3() {
        let out = encode_sotw("", "t", "", &[]);
        assert_eq!(out, vec![0x22, 1, b't']);
    }
}
