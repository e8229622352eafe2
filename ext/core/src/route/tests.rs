//! Route table tests on hand-encoded RouteConfiguration bytes (the Python tests use the real
//! protobuf classes; these keep `cargo test` meaningful on its own).

use super::*;

use crate::proto::wire::test_encode::{bytes_field, varint_field};
fn msg(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}
fn direct(status: u64) -> Vec<u8> {
    bytes_field(7, &varint_field(1, status))
}
fn route(match_: Vec<u8>) -> Vec<u8> {
    msg(&[bytes_field(1, &match_), direct(200)])
}
fn vhost(name: &str, domains: &[&str], routes: &[Vec<u8>]) -> Vec<u8> {
    let mut parts = vec![bytes_field(1, name.as_bytes())];
    for d in domains {
        parts.push(bytes_field(2, d.as_bytes()));
    }
    for r in routes {
        parts.push(bytes_field(3, r));
    }
    msg(&parts)
}
fn config(vhosts: &[Vec<u8>]) -> Vec<u8> {
    msg(&vhosts.iter().map(|v| bytes_field(2, v)).collect::<Vec<_>>())
}
fn prefix(p: &str) -> Vec<u8> {
    bytes_field(1, p.as_bytes())
}
fn req<'a>(authority: &'a str, path: &'a str, headers: &'a [(&'a str, &'a str)]) -> Request<'a> {
    Request {
        authority,
        path,
        method: "GET",
        scheme: "",
        headers,
    }
}

#[test]
fn virtual_host_precedence() {
    let cfg = config(&[
        vhost("exact", &["foo.bar.com"], &[route(prefix("/"))]),
        vhost("suffix-long", &["*.bar.com"], &[route(prefix("/"))]),
        vhost("suffix-short", &["*.com"], &[route(prefix("/"))]),
        vhost("prefix", &["foo.*"], &[route(prefix("/"))]),
        vhost("default", &["*"], &[route(prefix("/"))]),
    ]);
    let t = CompiledRouteTable::from_bytes(&cfg, HcmOptions::default()).expect("compiles");
    let vh = |h: &str| {
        t.find_virtual_host(h)
            .map(|(v, _)| t.virtual_hosts[v].name.clone())
    };
    assert_eq!(vh("FOO.bar.com").as_deref(), Some("exact"));
    assert_eq!(vh("x.bar.com").as_deref(), Some("suffix-long"));
    assert_eq!(vh(".bar.com").as_deref(), Some("suffix-short"));
    assert_eq!(vh("foo.org").as_deref(), Some("prefix"));
    assert_eq!(vh("foo.bar.com:80").as_deref(), Some("prefix"));
    assert_eq!(vh("other").as_deref(), Some("default"));
}

#[test]
fn first_match_order_survives_the_index() {
    let cfg = config(&[vhost(
        "v",
        &["*"],
        &[
            route(prefix("/api/v1/")),
            route(bytes_field(2, b"/api/v1/users")),
            route(prefix("/api")),
            route(bytes_field(14, b"/static")),
            route(msg(&[bytes_field(10, &bytes_field(2, b"/re/[0-9]+"))])),
            route(prefix("")),
        ],
    )]);
    let t = CompiledRouteTable::from_bytes(&cfg, HcmOptions::default()).expect("compiles");
    let r = |p: &str| t.route(&req("h", p, &[]));
    assert_eq!(r("/api/v1/users"), Some(0));
    assert_eq!(r("/api/v1"), Some(2));
    assert_eq!(r("/apix"), Some(2));
    assert_eq!(r("/static"), Some(3));
    assert_eq!(r("/static/x?q"), Some(3));
    assert_eq!(r("/staticx"), Some(5));
    assert_eq!(r("/re/12"), Some(4));
    assert_eq!(r("/re/12?x=y"), Some(4));
    assert_eq!(r("/re/1a"), Some(5));
}

#[test]
fn every_problem_has_a_field_path() {
    let bad_regex = route(bytes_field(10, &bytes_field(2, b"(")));
    let cfg = config(&[
        vhost("a", &["x", "*"], &[bad_regex]),
        vhost(
            "b",
            &["X"],
            &[msg(&[bytes_field(1, &prefix("/")), varint_field(99, 1)])],
        ),
    ]);
    let e = CompiledRouteTable::from_bytes(&cfg, HcmOptions::default()).expect_err("rejects");
    let paths: Vec<&str> = e.errors.iter().map(|e| e.path.as_str()).collect();
    assert!(
        paths.contains(&"virtual_hosts[0].routes[0].match.safe_regex.regex"),
        "{paths:?}"
    );
    assert!(paths.contains(&"virtual_hosts[1].domains[0]"), "{paths:?}");
    assert!(
        paths.contains(&"virtual_hosts[1].routes[0].<field 99>"),
        "{paths:?}"
    );
}
