//! RBAC engine tests on hand-encoded bytes (the Python tests use the real protobuf classes and
//! real Envoy; these pin the tricky cases for `cargo test` on its own).

use super::*;
use crate::error::FieldErrorKind;

use crate::proto::wire::test_encode::{bytes_field, varint_field};

// envoy.type.matcher.v3.StringMatcher
fn exact(s: &str) -> Vec<u8> {
    bytes_field(1, s.as_bytes())
}
fn prefix(s: &str) -> Vec<u8> {
    bytes_field(2, s.as_bytes())
}
// Permission / Principal leaves
fn any() -> Vec<u8> {
    varint_field(3, 1)
}
fn header_string(name: &str, sm: Vec<u8>) -> Vec<u8> {
    [bytes_field(1, name.as_bytes()), bytes_field(13, &sm)].concat()
}
fn perm_header(h: Vec<u8>) -> Vec<u8> {
    bytes_field(4, &h)
}
fn perm_url_path(sm: Vec<u8>) -> Vec<u8> {
    bytes_field(10, &bytes_field(1, &sm))
}
fn princ_authenticated(name: Option<Vec<u8>>) -> Vec<u8> {
    bytes_field(4, &name.map(|n| bytes_field(2, &n)).unwrap_or_default())
}
fn cidr(addr: &str, len: u64) -> Vec<u8> {
    [
        bytes_field(1, addr.as_bytes()),
        bytes_field(2, &varint_field(1, len)),
    ]
    .concat()
}
fn policy(perms: &[Vec<u8>], princs: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in perms {
        out.extend(bytes_field(1, p));
    }
    for p in princs {
        out.extend(bytes_field(2, p));
    }
    out
}
fn rbac(action: u64, policies: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut out = varint_field(1, action);
    for (name, p) in policies {
        out.extend(bytes_field(
            2,
            &[bytes_field(1, name.as_bytes()), bytes_field(2, p)].concat(),
        ));
    }
    out
}
fn filter(rules: Option<Vec<u8>>, shadow: Option<Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(r) = rules {
        out.extend(bytes_field(1, &r));
    }
    if let Some(s) = shadow {
        out.extend(bytes_field(2, &s));
    }
    out
}

fn compile(buf: &[u8]) -> CompiledRbac {
    match CompiledRbac::from_filter_bytes(buf) {
        Ok(c) => c,
        Err(e) => panic!("does not compile: {e}"),
    }
}

fn get(method: &'static str, path: &'static str) -> Attributes<'static> {
    Attributes {
        method: Some(method),
        path: Some(path),
        ..Attributes::default()
    }
}

#[test]
fn first_match_in_name_order_is_the_effective_policy() {
    let by_method = policy(
        &[perm_header(header_string(":method", exact("GET")))],
        &[any()],
    );
    let everything = policy(&[any()], &[any()]);
    // Byte order: "B" < "a" < "a-b" < "b".
    let c = compile(&filter(
        Some(rbac(
            1,
            &[
                ("b", everything.clone()),
                ("a-b", everything),
                ("a", by_method.clone()),
                ("B", by_method),
            ],
        )),
        None,
    ));
    let d = c.evaluate(&get("GET", "/"));
    assert!(!d.allowed);
    assert_eq!(c.policy_name(&d), Some("B"));
    let d = c.evaluate(&get("POST", "/"));
    assert_eq!(c.policy_name(&d), Some("a-b"));
    assert_eq!(d.shadow_allowed, None);
}

#[test]
fn no_rules_allows_and_empty_allow_denies() {
    let c = compile(&filter(None, Some(rbac(0, &[]))));
    let d = c.evaluate(&get("GET", "/"));
    assert!(d.allowed);
    assert_eq!(d.shadow_allowed, Some(false));
    // LOG never denies but reports the match.
    let c = compile(&filter(
        Some(rbac(2, &[("log", policy(&[any()], &[any()]))])),
        None,
    ));
    let d = c.evaluate(&get("GET", "/"));
    assert!(d.allowed);
    assert_eq!(c.policy_name(&d), Some("log"));
}

#[test]
fn authenticated_needs_tls_and_tries_uri_then_dns_then_subject() {
    let any_tls = policy(&[any()], &[princ_authenticated(None)]);
    let named = policy(&[any()], &[princ_authenticated(Some(exact("web")))]);
    let c = compile(&filter(
        Some(rbac(0, &[("any-tls", any_tls), ("named", named)])),
        None,
    ));
    let plain = get("GET", "/");
    assert!(!c.evaluate(&plain).allowed);
    let tls = Attributes { tls: true, ..plain };
    assert_eq!(c.policy_name(&c.evaluate(&tls)), Some("any-tls"));
    let only_named = compile(&filter(
        Some(rbac(
            0,
            &[(
                "n",
                policy(&[any()], &[princ_authenticated(Some(exact("web")))]),
            )],
        )),
        None,
    ));
    assert!(!only_named.evaluate(&tls).allowed);
    for (uri, dns, subject) in [
        (&["spiffe://x", "web"][..], &[][..], ""),
        (&["spiffe://x"][..], &["web"][..], ""),
        (&["spiffe://x"][..], &["dns"][..], "web"),
    ] {
        let a = Attributes {
            uri_sans: uri,
            dns_sans: dns,
            subject,
            ..tls
        };
        assert!(
            only_named.evaluate(&a).allowed,
            "{uri:?} {dns:?} {subject:?}"
        );
    }
}

#[test]
fn repeated_headers_match_value_by_value_and_empty_exact_match_is_any_value() {
    let contains_comma = policy(
        &[perm_header(header_string("x-a", bytes_field(7, b",")))],
        &[any()],
    );
    let legacy_empty = policy(
        &[perm_header(
            [bytes_field(1, b"x-b"), bytes_field(4, b"")].concat(),
        )],
        &[any()],
    );
    let c = compile(&filter(
        Some(rbac(
            0,
            &[("comma", contains_comma), ("legacy", legacy_empty)],
        )),
        None,
    ));
    let two = [("X-A", "1"), ("x-a", "2")];
    let a = Attributes {
        headers: &two,
        ..get("GET", "/")
    };
    assert!(!c.evaluate(&a).allowed, "values are not joined with ','");
    let one = [("x-a", "1,2")];
    let a = Attributes {
        headers: &one,
        ..get("GET", "/")
    };
    assert_eq!(c.policy_name(&c.evaluate(&a)), Some("comma"));
    let b = [("x-b", "anything")];
    let a = Attributes {
        headers: &b,
        ..get("GET", "/")
    };
    assert_eq!(c.policy_name(&c.evaluate(&a)), Some("legacy"));
}

#[test]
fn url_path_ignores_the_query_and_missing_attributes_do_not_match() {
    let c = compile(&filter(
        Some(rbac(
            0,
            &[("p", policy(&[perm_url_path(exact("/api"))], &[any()]))],
        )),
        None,
    ));
    assert!(c.evaluate(&get("GET", "/api?x=/y")).allowed);
    assert!(!c.evaluate(&get("GET", "/api/")).allowed);
    assert!(!c.evaluate(&Attributes::default()).allowed);
}

#[test]
fn cidr_ranges_are_masked_and_versioned() {
    let c = compile(&filter(
        Some(rbac(
            0,
            &[(
                "p",
                policy(&[any()], &[bytes_field(11, &cidr("10.1.2.3", 8))]),
            )],
        )),
        None,
    ));
    let ip = |s: &str| s.parse::<IpAddr>().ok();
    let at = |s| Attributes {
        remote_ip: ip(s),
        ..Attributes::default()
    };
    assert!(c.evaluate(&at("10.200.0.1")).allowed);
    assert!(!c.evaluate(&at("11.0.0.1")).allowed);
    assert!(!c.evaluate(&at("::ffff:10.0.0.1")).allowed);
    assert!(!c.evaluate(&Attributes::default()).allowed);
}

#[test]
fn unsupported_and_invalid_rules_name_their_field() {
    // A CEL condition: unsupported, never ignored.
    let with_condition = [policy(&[any()], &[any()]), bytes_field(3, b"")].concat();
    let err =
        CompiledRbac::from_filter_bytes(&filter(Some(rbac(0, &[("cel", with_condition)])), None))
            .err();
    let err = err.unwrap_or_default();
    assert!(err.only_unsupported(), "{err}");
    assert_eq!(err.errors[0].path, "rules.policies[\"cel\"].condition");
    // A sourced_metadata principal.
    let meta = policy(&[any()], &[bytes_field(13, b"")]);
    let err = CompiledRbac::from_filter_bytes(&filter(None, Some(rbac(0, &[("m", meta)]))))
        .err()
        .unwrap_or_default();
    assert!(err.only_unsupported(), "{err}");
    assert_eq!(
        err.errors[0].path,
        "shadow_rules.policies[\"m\"].principals[0].sourced_metadata"
    );
    // Invalid: port range and prefix length, both reported.
    let bad = policy(
        &[bytes_field(
            11,
            &[varint_field(1, 10), varint_field(2, 5)].concat(),
        )],
        &[bytes_field(5, &cidr("10.0.0.0", 33))],
    );
    let err = CompiledRbac::from_filter_bytes(&filter(Some(rbac(0, &[("bad", bad)])), None))
        .err()
        .unwrap_or_default();
    assert_eq!(err.errors.len(), 2, "{err}");
    assert!(err.errors.iter().all(|e| e.kind == FieldErrorKind::Invalid));
    assert_eq!(
        err.errors[1].path,
        "rules.policies[\"bad\"].principals[0].source_ip.prefix_len"
    );
    // Empty permissions.
    let err = CompiledRbac::from_filter_bytes(&filter(
        Some(rbac(0, &[("e", policy(&[], &[any()]))])),
        None,
    ))
    .err()
    .unwrap_or_default();
    assert_eq!(err.errors[0].path, "rules.policies[\"e\"].permissions");
}

#[test]
fn metadata_matchers_walk_the_struct_and_absent_values_match_nothing() {
    // envoy.filters.http.jwt_authn / payload / aud: a list containing "api".
    let path = |k: &str| bytes_field(2, &bytes_field(1, k.as_bytes()));
    let list_has_api = bytes_field(6, &bytes_field(1, &bytes_field(3, &exact("api"))));
    let matcher = [
        bytes_field(1, b"envoy.filters.http.jwt_authn"),
        path("payload"),
        path("aud"),
        bytes_field(3, &list_has_api),
    ]
    .concat();
    let inverted = [matcher.clone(), varint_field(4, 1)].concat();
    let c = compile(&filter(
        Some(rbac(
            0,
            &[
                ("aud", policy(&[any()], &[bytes_field(7, &matcher)])),
                ("not-aud", policy(&[any()], &[bytes_field(7, &inverted)])),
            ],
        )),
        None,
    ));
    let md = |aud: MetaValue| {
        let mut payload = std::collections::BTreeMap::new();
        payload.insert("aud".to_string(), aud);
        let mut jwt = std::collections::BTreeMap::new();
        jwt.insert("payload".to_string(), MetaValue::Struct(payload));
        let mut filters = std::collections::BTreeMap::new();
        filters.insert(
            "envoy.filters.http.jwt_authn".to_string(),
            MetaValue::Struct(jwt),
        );
        MetaValue::Struct(filters)
    };
    let with = |m: &MetaValue| {
        let a = Attributes {
            metadata: Some(m),
            ..Attributes::default()
        };
        c.policy_name(&c.evaluate(&a)).map(str::to_string)
    };
    let api = md(MetaValue::List(vec![
        MetaValue::String("web".into()),
        MetaValue::String("api".into()),
    ]));
    assert_eq!(with(&api).as_deref(), Some("aud"));
    let other = md(MetaValue::List(vec![MetaValue::String("web".into())]));
    assert_eq!(with(&other).as_deref(), Some("not-aud"));
    // A string is not a list; no metadata at all is "not set": only the inverted one matches.
    assert_eq!(
        with(&md(MetaValue::String("api".into()))).as_deref(),
        Some("not-aud")
    );
    let d = c.evaluate(&Attributes::default());
    assert_eq!(c.policy_name(&d), Some("not-aud"));
}

#[test]
fn index_agrees_with_a_full_scan() {
    // Enough policies for the index, mixing indexed and unindexed conditions.
    let methods = ["GET", "POST", "PUT"];
    let mut policies = Vec::new();
    for i in 0..60u32 {
        let m = methods[(i % 3) as usize];
        let perm = match i % 4 {
            0 => perm_header(header_string(":method", exact(m))),
            1 => perm_url_path(prefix(&format!("/p{}", i % 7))),
            2 => bytes_field(
                1,
                &[
                    bytes_field(1, &perm_header(header_string(":method", exact(m)))),
                    bytes_field(1, &perm_url_path(prefix("/p"))),
                ]
                .concat(),
            ),
            _ => bytes_field(8, &perm_header(header_string(":method", exact(m)))),
        };
        let princ = if i % 5 == 0 {
            princ_authenticated(Some(exact(&format!("sa{}", i % 4))))
        } else {
            any()
        };
        policies.push((format!("p{i:03}"), policy(&[perm], &[princ])));
    }
    let named: Vec<(&str, Vec<u8>)> = policies
        .iter()
        .map(|(n, p)| (n.as_str(), p.clone()))
        .collect();
    let c = compile(&filter(Some(rbac(0, &named)), None));
    let Some(engine) = c.rules.as_ref() else {
        panic!("rules expected");
    };
    let paths = ["/", "/p1", "/p12", "/p3/x", "/q", "/p6?a"];
    let sans = ["sa0", "sa1", "sa3", "zz"];
    for m in ["GET", "POST", "PUT", "DELETE"] {
        for p in paths {
            for (k, s) in sans.iter().enumerate() {
                let uri = [*s];
                let a = Attributes {
                    tls: k % 2 == 0,
                    uri_sans: &uri,
                    ..get(m, p)
                };
                let scan = engine.policies.iter().position(|x| x.matches(&a));
                assert_eq!(engine.first_match(&a), scan, "{m} {p} {s}");
                assert!(engine.candidates(&a) <= engine.policies.len());
            }
        }
    }
}

/// One request of the timing test: method, path and a peer certificate's URI SAN.
fn timed_request<'a>(method: &'a str, path: &'a str, uri_sans: &'a [&'a str]) -> Attributes<'a> {
    Attributes {
        method: Some(method),
        path: Some(path),
        tls: true,
        uri_sans,
        ..Attributes::default()
    }
}

/// Core-only decision time on issue 7's 1,000-rule ALLOW set (no Python): run with
/// `cargo test --release -p meshcore-core -- --ignored --nocapture core_decision_time`.
#[test]
#[ignore = "timing, not a check; see BENCHMARKS.md"]
fn core_decision_time() {
    let methods = ["GET", "POST", "PUT", "DELETE"];
    let spiffe = |r: usize| format!("spiffe://cluster.local/ns/ns{r}/sa/sa{r}");
    let n = 1000;
    let mut policies = Vec::new();
    for r in 0..n {
        let set = |inner: Vec<u8>| bytes_field(2, &bytes_field(1, &inner));
        let perm = bytes_field(
            1,
            &[
                bytes_field(
                    1,
                    &set(perm_header(header_string(":method", exact(methods[r % 4])))),
                ),
                bytes_field(1, &set(perm_url_path(prefix(&format!("/api/v{r}/"))))),
            ]
            .concat(),
        );
        let princ = bytes_field(
            1,
            &bytes_field(
                1,
                &bytes_field(
                    2,
                    &bytes_field(1, &princ_authenticated(Some(exact(&spiffe(r))))),
                ),
            ),
        );
        policies.push((
            format!("ns[foo]-policy[allow-{}]-rule[{}]", r / 10, r % 10),
            policy(&[perm], &[princ]),
        ));
    }
    let named: Vec<(&str, Vec<u8>)> = policies
        .iter()
        .map(|(n, p)| (n.as_str(), p.clone()))
        .collect();
    let bytes = filter(Some(rbac(0, &named)), None);
    let t = std::time::Instant::now();
    let c = compile(&bytes);
    let compile_time = t.elapsed();
    let reqs: Vec<(String, String, [String; 1])> = (0..1000)
        .map(|i| {
            let r = (i * 7919) % n;
            let m = methods[(r + usize::from(i % 5 == 0)) % 4].to_string();
            (
                m,
                format!("/api/v{r}/items/{i}"),
                [spiffe((r + usize::from(i % 7 == 0)) % n)],
            )
        })
        .collect();
    // The best of several passes: the machine is shared, and other work only adds time.
    let (passes, rounds) = (20, 10);
    let mut allowed = 0usize;
    let mut per = f64::INFINITY;
    for _ in 0..passes {
        let t = std::time::Instant::now();
        for _ in 0..rounds {
            for (m, p, sans) in &reqs {
                let uri: [&str; 1] = [sans[0].as_str()];
                allowed += usize::from(c.evaluate(&timed_request(m, p, &uri)).allowed);
            }
        }
        per = per.min(t.elapsed().as_nanos() as f64 / (rounds * reqs.len()) as f64);
    }
    // The same request over and over: what is left once the caches are warm.
    let (m, p, sans) = &reqs[0];
    let uri: [&str; 1] = [sans[0].as_str()];
    let a = timed_request(m, p, &uri);
    let mut hot = f64::INFINITY;
    let mut hot_allowed = 0usize;
    for _ in 0..passes {
        let t = std::time::Instant::now();
        for _ in 0..rounds * 1000 {
            hot_allowed += usize::from(
                std::hint::black_box(&c)
                    .evaluate(std::hint::black_box(&a))
                    .allowed,
            );
        }
        hot = hot.min(t.elapsed().as_nanos() as f64 / (rounds * 1000) as f64);
    }
    std::hint::black_box(hot_allowed);
    println!("core, one request repeated: {hot:.0} ns");
    println!(
        "core: {per:.0} ns per decision at {n} rules ({} allowed); compile {compile_time:?}",
        allowed / (passes * rounds)
    );
}

#[test]
fn url_path_stops_at_the_first_query_or_fragment() {
    // Every position of '?' and '#' in paths around the 8-byte words `query_start` reads.
    for len in 0..40 {
        for at in 0..=len {
            for (c, other) in [('?', '#'), ('#', '?')] {
                let mut p: String = (0..len)
                    .map(|i| char::from(b'a' + (i % 26) as u8))
                    .collect();
                if at < len {
                    p.replace_range(at..=at, &c.to_string());
                    if at + 3 < len {
                        p.replace_range(at + 3..=at + 3, &other.to_string());
                    }
                }
                let a = Attributes {
                    path: Some(&p),
                    ..Attributes::default()
                };
                let want = p.split(['?', '#']).next();
                assert_eq!(a.url_path(), want, "{p:?}");
            }
        }
    }
    // Bytes that differ from '?' and '#' by one bit, and multi-byte characters.
    let p = "/\u{bf}\u{a3}>\"\u{3f3}/é/x?y";
    let a = Attributes {
        path: Some(p),
        ..Attributes::default()
    };
    assert_eq!(a.url_path(), Some("/\u{bf}\u{a3}>\"\u{3f3}/é/x"));
}
