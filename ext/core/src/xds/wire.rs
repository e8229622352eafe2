//! Discovery responses encoded straight from interned resources: a push copies bytes that are
//! already serialized instead of building protobuf objects per resource per proxy.
//!
//! Field numbers are those of envoy.service.discovery.v3 (DiscoveryResponse,
//! DeltaDiscoveryResponse, Resource) and google.protobuf.Any; the tests decode the output with
//! the real generated classes.

use std::time::Duration;

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

/// envoy.service.discovery.v3.Resource, the wrapper that carries a TTL.
pub const RESOURCE_TYPE: &str = "type.googleapis.com/envoy.service.discovery.v3.Resource";

/// google.protobuf.Duration { seconds = 1; nanos = 2 } of a TTL.
fn duration_len(ttl: Duration) -> usize {
    let mut n = 0;
    if ttl.as_secs() != 0 {
        n += 1 + varint_len(ttl.as_secs());
    }
    if ttl.subsec_nanos() != 0 {
        n += 1 + varint_len(u64::from(ttl.subsec_nanos()));
    }
    n
}

fn duration(out: &mut Vec<u8>, field: u32, ttl: Duration) {
    varint(out, (u64::from(field) << 3) | 2);
    varint(out, duration_len(ttl) as u64);
    if ttl.as_secs() != 0 {
        varint(out, 1 << 3);
        varint(out, ttl.as_secs());
    }
    if ttl.subsec_nanos() != 0 {
        varint(out, 2 << 3);
        varint(out, u64::from(ttl.subsec_nanos()));
    }
}

/// The fields of a Resource { version = 1; resource = 2 (Any); name = 3; ttl = 6 }, in field
/// order as protobuf's deterministic serialization writes them; `body` None: a heartbeat (no
/// resource, only what refreshes the TTL).
fn resource_len(
    version: &str,
    type_url: &str,
    body: Option<&[u8]>,
    name: &str,
    ttl: Option<Duration>,
) -> usize {
    let nonempty = |s: &str| {
        if s.is_empty() {
            0
        } else {
            field_len(1, s.len())
        }
    };
    nonempty(version)
        + body.map_or(0, |b| field_len(2, any_len(type_url, b)))
        + nonempty(name)
        + ttl.map_or(0, |t| field_len(6, duration_len(t)))
}

fn resource(
    out: &mut Vec<u8>,
    field: u32,
    version: &str,
    type_url: &str,
    body: Option<&[u8]>,
    name: &str,
    ttl: Option<Duration>,
) {
    varint(out, (u64::from(field) << 3) | 2);
    varint(out, resource_len(version, type_url, body, name, ttl) as u64);
    str_field(out, 1, version);
    if let Some(body) = body {
        any(out, 2, type_url, body);
    }
    str_field(out, 3, name);
    if let Some(ttl) = ttl {
        duration(out, 6, ttl);
    }
}

/// An Any of [`RESOURCE_TYPE`] holding `r` in a Resource.
fn wrapped_len(version: &str, type_url: &str, r: &ResourceRef, ttl: Option<Duration>) -> usize {
    let inner = resource_len(version, type_url, Some(&r.body), &r.name, ttl);
    field_len(1, RESOURCE_TYPE.len()) + field_len(2, inner)
}

/// A state-of-the-world DiscoveryResponse. With a TTL each resource goes in a Resource wrapper
/// (as an Any of [`RESOURCE_TYPE`]) carrying its name, the type's version and the TTL.
pub fn encode_sotw(
    version: &str,
    type_url: &str,
    nonce: &str,
    resources: &[ResourceRef],
    ttl: Option<Duration>,
) -> Vec<u8> {
    let mut out = encode_sotw_body(version, type_url, resources, ttl);
    str_field(&mut out, 5, nonce);
    out
}

/// [`encode_sotw`] without the nonce, its last field: the part of a response that every proxy
/// sent the same resources shares (the nonce is appended per stream).
pub fn encode_sotw_body(
    version: &str,
    type_url: &str,
    resources: &[ResourceRef],
    ttl: Option<Duration>,
) -> Vec<u8> {
    let size: usize = resources
        .iter()
        .map(|r| match ttl {
            None => field_len(2, any_len(type_url, &r.body)),
            Some(_) => field_len(2, wrapped_len(version, type_url, r, ttl)),
        })
        .sum();
    let mut out = Vec::with_capacity(size + version.len() + type_url.len() + 64);
    str_field(&mut out, 1, version);
    for r in resources {
        match ttl {
            None => any(&mut out, 2, type_url, &r.body),
            Some(_) => {
                varint(&mut out, (2 << 3) | 2);
                varint(&mut out, wrapped_len(version, type_url, r, ttl) as u64);
                str_field(&mut out, 1, RESOURCE_TYPE);
                resource(&mut out, 2, version, type_url, Some(&r.body), &r.name, ttl);
            }
        }
    }
    str_field(&mut out, 4, type_url);
    out
}

/// A SotW heartbeat: for each name a Resource with the name, `version` and the TTL but no
/// resource (Envoy then keeps what it holds and refreshes its TTL).
pub fn encode_sotw_heartbeat(
    version: &str,
    type_url: &str,
    nonce: &str,
    names: &[String],
    ttl: Duration,
) -> Vec<u8> {
    let mut out = Vec::new();
    str_field(&mut out, 1, version);
    for name in names {
        let inner = resource_len(version, type_url, None, name, Some(ttl));
        varint(&mut out, (2 << 3) | 2);
        varint(
            &mut out,
            (field_len(1, RESOURCE_TYPE.len()) + field_len(2, inner)) as u64,
        );
        str_field(&mut out, 1, RESOURCE_TYPE);
        resource(&mut out, 2, version, type_url, None, name, Some(ttl));
    }
    str_field(&mut out, 4, type_url);
    str_field(&mut out, 5, nonce);
    out
}

/// A DeltaDiscoveryResponse: each resource as Resource { version = 1; resource = 2; name = 3;
/// ttl = 6 (when given) }.
pub fn encode_delta(
    system_version: &str,
    type_url: &str,
    nonce: &str,
    updated: &[ResourceRef],
    removed: &[String],
    ttl: Option<Duration>,
) -> Vec<u8> {
    let mut out = Vec::new();
    str_field(&mut out, 1, system_version);
    for r in updated {
        resource(
            &mut out,
            2,
            &r.version,
            type_url,
            Some(&r.body),
            &r.name,
            ttl,
        );
    }
    str_field(&mut out, 4, type_url);
    str_field(&mut out, 5, nonce);
    for name in removed {
        bytes_field(&mut out, 6, name.as_bytes());
    }
    out
}

/// A delta heartbeat: Resources with a name, version and TTL but no resource.
pub fn encode_delta_heartbeat(
    system_version: &str,
    type_url: &str,
    nonce: &str,
    held: &[(String, String)],
    ttl: Duration,
) -> Vec<u8> {
    let mut out = Vec::new();
    str_field(&mut out, 1, system_version);
    for (name, version) in held {
        resource(&mut out, 2, version, type_url, None, name, Some(ttl));
    }
    str_field(&mut out, 4, type_url);
    str_field(&mut out, 5, nonce);
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
        let out = encode_sotw("", "t", "", &[], None);
        assert_eq!(out, vec![0x22, 1, b't']);
    }

    #[test]
    fn durations_encode_seconds_then_nanos() {
        let mut out = Vec::new();
        duration(&mut out, 6, Duration::new(2, 500));
        assert_eq!(out, vec![0x32, 5, 0x08, 2, 0x10, 0xf4, 0x03]);
        let mut zero = Vec::new();
        duration(&mut zero, 6, Duration::ZERO);
        assert_eq!(zero, vec![0x32, 0]);
    }

    #[test]
    fn sotw_body_is_the_response_without_its_nonce() {
        let body = encode_sotw_body("v", "t", &[], None);
        let mut full = body.clone();
        str_field(&mut full, 5, "n");
        assert_eq!(encode_sotw("v", "t", "n", &[], None), full);
    }
}
