//! Decoders for envoy.config.rbac.v3.RBAC and the RBAC HTTP filter config
//! (envoy.extensions.filters.http.rbac.v3.RBAC).
//!
//! Every field number is decoded, knowingly passed through (stat prefixes and audit logging
//! change no decision), or reported unsupported: a dropped rule could let someone in.

use super::matcher::{decode_header_matcher, decode_string_matcher, HeaderMatcher, StringMatcher};
use super::wire::{field_path, index_path, unknown_field, walk, Field, Value};
use crate::error::CoreError;

/// envoy.config.core.v3.CidrRange.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrRange {
    pub address_prefix: String,
    pub prefix_len: u32,
}

/// A Permission's rule or a Principal's identifier (the two oneofs share most shapes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    And(Vec<Rule>),
    Or(Vec<Rule>),
    Not(Box<Rule>),
    Any(bool),
    Header(HeaderMatcher),
    /// url_path: envoy.type.matcher.v3.PathMatcher's `path` (None when unset).
    UrlPath(Option<StringMatcher>),
    DestinationIp(CidrRange),
    DestinationPort(u32),
    DestinationPortRange(i32, i32),
    RequestedServerName(StringMatcher),
    /// authenticated: principal_name when set.
    Authenticated(Option<StringMatcher>),
    SourceIp(CidrRange),
    DirectRemoteIp(CidrRange),
    RemoteIp(CidrRange),
    /// uri_template: the path_template of its UriTemplateMatchConfig.
    UriTemplate(String),
    /// metadata: matched against the request's dynamic metadata.
    Metadata(MetadataMatcher),
    /// The oneof was empty (Envoy's validation rejects it).
    Unset,
    /// A field we recognise but do not implement (already reported as unsupported).
    Unsupported,
}

const URI_TEMPLATE_TYPE: &str =
    "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig";

/// A TypedExtensionConfig holding a UriTemplateMatchConfig: its path_template. Any other
/// extension is unsupported (reported, None).
fn decode_uri_template(buf: &[u8], path: &str, err: &mut CoreError) -> Option<String> {
    let mut type_url = String::new();
    let mut value: &[u8] = &[];
    let tc = field_path(path, "typed_config");
    walk(buf, path, err, |n, v, err| match n {
        1 => {
            let _ = Field::at(&field_path(path, "name"), v).string(err);
        }
        2 => {
            let b = Field::at(&tc, v).bytes(err);
            walk(b, &tc, err, |n, v, err| match n {
                1 => type_url = Field::at(&tc, v).string(err),
                2 => value = Field::at(&tc, v).bytes(err),
                _ => unknown_field(err, &tc, "Any", n),
            });
        }
        _ => unknown_field(err, path, "TypedExtensionConfig", n),
    });
    if type_url != URI_TEMPLATE_TYPE {
        err.unsupported(
            field_path(&tc, "type_url"),
            format!("uri_template extension {type_url:?} is not supported"),
        );
        return None;
    }
    let mut template = String::new();
    walk(value, &tc, err, |n, v, err| match n {
        1 => template = Field::at(&field_path(&tc, "path_template"), v).string(err),
        _ => unknown_field(err, &tc, "UriTemplateMatchConfig", n),
    });
    Some(template)
}

/// envoy.type.matcher.v3.MetadataMatcher.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetadataMatcher {
    pub filter: String,
    pub path: Vec<String>,
    pub value: Option<ValueMatcher>,
    pub invert: bool,
}

// Doubles compare by value; NaN never occurs in a decoded config we accept.
impl Eq for MetadataMatcher {}

/// envoy.type.matcher.v3.ValueMatcher.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueMatcher {
    Null,
    /// [start, end) range, or exact.
    DoubleRange(f64, f64),
    DoubleExact(f64),
    /// DoubleMatcher with neither range nor exact (Envoy rejects it).
    DoubleUnset,
    String(StringMatcher),
    Bool(bool),
    Present(bool),
    /// list_match.one_of (None when unset).
    List(Option<Box<ValueMatcher>>),
    Or(Vec<ValueMatcher>),
}

fn f64_of(value: super::wire::Value<'_>, path: &str, err: &mut CoreError) -> f64 {
    match value {
        super::wire::Value::Fixed64(bits) => f64::from_bits(bits),
        _ => {
            err.invalid(path, "malformed protobuf: expected fixed64 wire type");
            0.0
        }
    }
}

fn decode_value_matcher(buf: &[u8], path: &str, err: &mut CoreError) -> Option<ValueMatcher> {
    let mut out = None;
    walk(buf, path, err, |n, value, err| {
        let sub = |name: &str, err: &mut CoreError| -> (String, &[u8]) {
            let p = field_path(path, name);
            let b = Field::at(&p, value).bytes(err);
            (p, b)
        };
        out = match n {
            1 => Some(ValueMatcher::Null),
            2 => {
                let (p, b) = sub("double_match", err);
                let mut m = ValueMatcher::DoubleUnset;
                walk(b, &p, err, |n, value, err| match n {
                    1 => {
                        let rp = field_path(&p, "range");
                        let rb = Field::at(&rp, value).bytes(err);
                        let (mut start, mut end) = (0.0, 0.0);
                        walk(rb, &rp, err, |n, value, err| match n {
                            1 => start = f64_of(value, &rp, err),
                            2 => end = f64_of(value, &rp, err),
                            _ => unknown_field(err, &rp, "DoubleRange", n),
                        });
                        m = ValueMatcher::DoubleRange(start, end);
                    }
                    2 => m = ValueMatcher::DoubleExact(f64_of(value, &p, err)),
                    _ => unknown_field(err, &p, "DoubleMatcher", n),
                });
                Some(m)
            }
            3 => {
                let (p, b) = sub("string_match", err);
                Some(ValueMatcher::String(decode_string_matcher(b, &p, err)))
            }
            4 => Some(ValueMatcher::Bool(
                Field::at(&field_path(path, "bool_match"), value).bool(err),
            )),
            5 => Some(ValueMatcher::Present(
                Field::at(&field_path(path, "present_match"), value).bool(err),
            )),
            6 => {
                let (p, b) = sub("list_match", err);
                let mut one_of = None;
                walk(b, &p, err, |n, value, err| match n {
                    1 => {
                        let op = field_path(&p, "one_of");
                        let ob = Field::at(&op, value).bytes(err);
                        one_of = decode_value_matcher(ob, &op, err).map(Box::new);
                    }
                    _ => unknown_field(err, &p, "ListMatcher", n),
                });
                Some(ValueMatcher::List(one_of))
            }
            7 => {
                let (p, b) = sub("or_match", err);
                let mut ms = Vec::new();
                walk(b, &p, err, |n, value, err| match n {
                    1 => {
                        let ip = index_path(&p, "value_matchers", ms.len());
                        let ib = Field::at(&ip, value).bytes(err);
                        if let Some(m) = decode_value_matcher(ib, &ip, err) {
                            ms.push(m);
                        }
                    }
                    _ => unknown_field(err, &p, "OrMatcher", n),
                });
                Some(ValueMatcher::Or(ms))
            }
            _ => {
                unknown_field(err, path, "ValueMatcher", n);
                out.take()
            }
        };
    });
    if out.is_none() {
        err.invalid(path, "one of null_match, double_match, string_match, bool_match, present_match, list_match, or_match is required");
    }
    out
}

fn decode_metadata_matcher(buf: &[u8], path: &str, err: &mut CoreError) -> MetadataMatcher {
    let mut out = MetadataMatcher::default();
    walk(buf, path, err, |n, value, err| match n {
        1 => out.filter = Field::at(&field_path(path, "filter"), value).string(err),
        2 => {
            let p = index_path(path, "path", out.path.len());
            let b = Field::at(&p, value).bytes(err);
            let mut key = String::new();
            walk(b, &p, err, |n, value, err| match n {
                1 => key = Field::at(&p, value).string(err),
                _ => unknown_field(err, &p, "PathSegment", n),
            });
            out.path.push(key);
        }
        3 => {
            let p = field_path(path, "value");
            let b = Field::at(&p, value).bytes(err);
            out.value = decode_value_matcher(b, &p, err);
        }
        4 => out.invert = Field::at(&field_path(path, "invert"), value).bool(err),
        _ => unknown_field(err, path, "MetadataMatcher", n),
    });
    out
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub permissions: Vec<Rule>,
    pub principals: Vec<Rule>,
}

/// envoy.config.rbac.v3.RBAC: `action` as its enum number (0 ALLOW, 1 DENY, 2 LOG).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rbac {
    pub action: i32,
    /// By name; the map's last entry for a name wins, as protobuf map decoding does.
    pub policies: std::collections::BTreeMap<String, Policy>,
}

/// envoy.extensions.filters.http.rbac.v3.RBAC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RbacFilter {
    pub rules: Option<Rbac>,
    pub shadow_rules: Option<Rbac>,
    pub rules_stat_prefix: String,
    pub shadow_rules_stat_prefix: String,
}

pub fn decode_cidr(buf: &[u8], path: &str, err: &mut CoreError) -> CidrRange {
    let mut out = CidrRange::default();
    walk(buf, path, err, |n, value, err| match n {
        1 => out.address_prefix = Field::at(&field_path(path, "address_prefix"), value).string(err),
        2 => {
            // google.protobuf.UInt32Value: its field 1.
            let p = field_path(path, "prefix_len");
            let b = Field::at(&p, value).bytes(err);
            walk(b, &p, err, |n, value, err| match n {
                1 => out.prefix_len = Field::at(&field_path(&p, "value"), value).u32(err),
                _ => unknown_field(err, &p, "UInt32Value", n),
            });
        }
        _ => unknown_field(err, path, "CidrRange", n),
    });
    out
}

fn decode_int32_range(buf: &[u8], path: &str, err: &mut CoreError) -> (i32, i32) {
    let (mut start, mut end) = (0i32, 0i32);
    walk(buf, path, err, |n, value, err| match n {
        1 => start = Field { path, value }.i32(err),
        2 => end = Field { path, value }.i32(err),
        _ => unknown_field(err, path, "Int32Range", n),
    });
    (start, end)
}

/// A message whose only field (number `number`, named `name`) is a StringMatcher:
/// PathMatcher's `path`, Principal.Authenticated's `principal_name`.
fn decode_string_matcher_field(
    buf: &[u8],
    path: &str,
    err: &mut CoreError,
    (number, name, message): (u32, &str, &str),
) -> Option<StringMatcher> {
    let mut out = None;
    walk(buf, path, err, |n, value, err| {
        if n == number {
            let p = field_path(path, name);
            let b = Field::at(&p, value).bytes(err);
            out = Some(decode_string_matcher(b, &p, err));
        } else {
            unknown_field(err, path, message, n);
        }
    });
    out
}

fn decode_path_matcher(buf: &[u8], path: &str, err: &mut CoreError) -> Option<StringMatcher> {
    decode_string_matcher_field(buf, path, err, (1, "path", "PathMatcher"))
}

fn decode_authenticated(buf: &[u8], path: &str, err: &mut CoreError) -> Option<StringMatcher> {
    decode_string_matcher_field(
        buf,
        path,
        err,
        (2, "principal_name", "Principal.Authenticated"),
    )
}

/// Which oneof a Rule comes from: their field numbers differ.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Permission,
    Principal,
}

fn decode_set(buf: &[u8], path: &str, kind: Kind, err: &mut CoreError) -> Vec<Rule> {
    let (name, msg) = match kind {
        Kind::Permission => ("rules", "Permission.Set"),
        Kind::Principal => ("ids", "Principal.Set"),
    };
    let mut out = Vec::new();
    walk(buf, path, err, |n, value, err| match n {
        1 => {
            let p = index_path(path, name, out.len());
            let b = Field::at(&p, value).bytes(err);
            out.push(decode_rule(b, &p, kind, err));
        }
        _ => unknown_field(err, path, msg, n),
    });
    if out.is_empty() {
        // Envoy's validation: min_items 1.
        err.invalid(field_path(path, name), "must have at least 1 item");
    }
    out
}

fn decode_rule(buf: &[u8], path: &str, kind: Kind, err: &mut CoreError) -> Rule {
    let mut out = Rule::Unset;
    walk(buf, path, err, |n, value, err| {
        let sub = |name: &str, err: &mut CoreError| -> (String, &[u8]) {
            let p = field_path(path, name);
            let b = Field::at(&p, value).bytes(err);
            (p, b)
        };
        let unsupported = |name: &str, why: &str, err: &mut CoreError| {
            err.unsupported(field_path(path, name), why.to_string());
            Rule::Unsupported
        };
        out = match (kind, n) {
            (Kind::Permission, 1) => {
                let (p, b) = sub("and_rules", err);
                Rule::And(decode_set(b, &p, kind, err))
            }
            (Kind::Permission, 2) => {
                let (p, b) = sub("or_rules", err);
                Rule::Or(decode_set(b, &p, kind, err))
            }
            (Kind::Principal, 1) => {
                let (p, b) = sub("and_ids", err);
                Rule::And(decode_set(b, &p, kind, err))
            }
            (Kind::Principal, 2) => {
                let (p, b) = sub("or_ids", err);
                Rule::Or(decode_set(b, &p, kind, err))
            }
            (_, 3) => {
                let v = Field::at(&field_path(path, "any"), value).bool(err);
                Rule::Any(v)
            }
            (Kind::Permission, 4) | (Kind::Principal, 6) => {
                let (p, b) = sub("header", err);
                Rule::Header(decode_header_matcher(b, &p, err))
            }
            (Kind::Permission, 10) | (Kind::Principal, 9) => {
                let (p, b) = sub("url_path", err);
                Rule::UrlPath(decode_path_matcher(b, &p, err))
            }
            (Kind::Permission, 8) => {
                let (p, b) = sub("not_rule", err);
                Rule::Not(Box::new(decode_rule(b, &p, kind, err)))
            }
            (Kind::Principal, 8) => {
                let (p, b) = sub("not_id", err);
                Rule::Not(Box::new(decode_rule(b, &p, kind, err)))
            }
            (Kind::Permission, 5) => {
                let (p, b) = sub("destination_ip", err);
                Rule::DestinationIp(decode_cidr(b, &p, err))
            }
            (Kind::Permission, 6) => {
                let v = Field::at(&field_path(path, "destination_port"), value).u32(err);
                Rule::DestinationPort(v)
            }
            (Kind::Permission, 11) => {
                let (p, b) = sub("destination_port_range", err);
                let (s, e) = decode_int32_range(b, &p, err);
                Rule::DestinationPortRange(s, e)
            }
            (Kind::Permission, 9) => {
                let (p, b) = sub("requested_server_name", err);
                Rule::RequestedServerName(decode_string_matcher(b, &p, err))
            }
            (Kind::Principal, 4) => {
                let (p, b) = sub("authenticated", err);
                Rule::Authenticated(decode_authenticated(b, &p, err))
            }
            (Kind::Principal, 5) => {
                let (p, b) = sub("source_ip", err);
                Rule::SourceIp(decode_cidr(b, &p, err))
            }
            (Kind::Principal, 10) => {
                let (p, b) = sub("direct_remote_ip", err);
                Rule::DirectRemoteIp(decode_cidr(b, &p, err))
            }
            (Kind::Principal, 11) => {
                let (p, b) = sub("remote_ip", err);
                Rule::RemoteIp(decode_cidr(b, &p, err))
            }
            (_, 7) => {
                let (p, b) = sub("metadata", err);
                Rule::Metadata(decode_metadata_matcher(b, &p, err))
            }
            (Kind::Permission, 14) | (Kind::Principal, 13) => unsupported(
                "sourced_metadata",
                "sourced_metadata matchers are not supported",
                err,
            ),
            (Kind::Permission, 12) => unsupported(
                "matcher",
                "permission matcher extensions are not supported",
                err,
            ),
            (Kind::Permission, 13) => {
                let (p, b) = sub("uri_template", err);
                match decode_uri_template(b, &p, err) {
                    Some(t) => Rule::UriTemplate(t),
                    None => Rule::Unsupported,
                }
            }
            (Kind::Principal, 12) => unsupported(
                "filter_state",
                "filter_state principals are not supported",
                err,
            ),
            (Kind::Principal, 14) => unsupported(
                "custom",
                "custom principal extensions are not supported",
                err,
            ),
            _ => {
                let msg = match kind {
                    Kind::Permission => "Permission",
                    Kind::Principal => "Principal",
                };
                unknown_field(err, path, msg, n);
                Rule::Unsupported
            }
        };
    });
    if out == Rule::Unset {
        let which = match kind {
            Kind::Permission => "permission rule is required (and_rules, or_rules, any, ...)",
            Kind::Principal => "principal identifier is required (and_ids, or_ids, any, ...)",
        };
        err.invalid(path, which);
    }
    out
}

fn decode_policy(buf: &[u8], path: &str, err: &mut CoreError) -> Policy {
    let mut out = Policy::default();
    walk(buf, path, err, |n, value, err| match n {
        1 => {
            let p = index_path(path, "permissions", out.permissions.len());
            let b = Field::at(&p, value).bytes(err);
            out.permissions
                .push(decode_rule(b, &p, Kind::Permission, err));
        }
        2 => {
            let p = index_path(path, "principals", out.principals.len());
            let b = Field::at(&p, value).bytes(err);
            out.principals
                .push(decode_rule(b, &p, Kind::Principal, err));
        }
        3 => err.unsupported(
            field_path(path, "condition"),
            "CEL conditions are not supported",
        ),
        4 => err.unsupported(
            field_path(path, "checked_condition"),
            "CEL conditions are not supported",
        ),
        // cel_config only tunes how a condition is evaluated; without a condition it changes
        // nothing, and a condition is already reported above.
        5 => {}
        _ => unknown_field(err, path, "Policy", n),
    });
    if out.permissions.is_empty() {
        err.invalid(field_path(path, "permissions"), "must have at least 1 item");
    }
    if out.principals.is_empty() {
        err.invalid(field_path(path, "principals"), "must have at least 1 item");
    }
    out
}

/// Decodes envoy.config.rbac.v3.RBAC.
pub fn decode_rbac(buf: &[u8], path: &str, err: &mut CoreError) -> Rbac {
    let mut out = Rbac::default();
    walk(buf, path, err, |n, value, err| match n {
        1 => out.action = Field::at(&field_path(path, "action"), value).i32(err),
        2 => {
            let p = field_path(path, "policies");
            let entry = Field::at(&p, value).bytes(err);
            let mut key = String::new();
            let mut policy: &[u8] = &[];
            walk(entry, &p, err, |n, value, err| match n {
                1 => key = Field::at(&p, value).string(err),
                2 => policy = Field::at(&p, value).bytes(err),
                _ => unknown_field(err, &p, "policies entry", n),
            });
            let pp = format!("{p}[{key:?}]");
            let decoded = decode_policy(policy, &pp, err);
            out.policies.insert(key, decoded);
        }
        // Audit logging writes logs; it never changes a decision.
        3 => {}
        _ => unknown_field(err, path, "RBAC", n),
    });
    if !(0..=2).contains(&out.action) {
        err.invalid(
            field_path(path, "action"),
            format!("unknown action {}", out.action),
        );
    }
    out
}

/// The RBAC message of a filter's `rules` or `shadow_rules` field.
fn rules_field(name: &str, value: Value<'_>, err: &mut CoreError) -> Option<Rbac> {
    Some(decode_rbac(Field::at(name, value).bytes(err), name, err))
}

/// Decodes envoy.extensions.filters.http.rbac.v3.RBAC.
pub fn decode_rbac_filter(buf: &[u8], err: &mut CoreError) -> RbacFilter {
    let mut out = RbacFilter::default();
    walk(buf, "", err, |n, value, err| {
        let s = |name: &str, err: &mut CoreError| Field::at(name, value).string(err);
        match n {
            1 => out.rules = rules_field("rules", value, err),
            2 => out.shadow_rules = rules_field("shadow_rules", value, err),
            3 => out.shadow_rules_stat_prefix = s("shadow_rules_stat_prefix", err),
            6 => out.rules_stat_prefix = s("rules_stat_prefix", err),
            // Per-rule stats count decisions; they do not make them.
            7 => {
                let _ = Field::at("track_per_rule_stats", value).bool(err);
            }
            4 => err.unsupported("matcher", "the unified matcher API is not supported"),
            5 => err.unsupported("shadow_matcher", "the unified matcher API is not supported"),
            _ => unknown_field(err, "", "RBAC filter", n),
        }
    });
    out
}

/// Decodes envoy.extensions.filters.network.rbac.v3.RBAC (the TCP filter): the same rules;
/// `stat_prefix`, `enforcement_type` (when the decision is re-taken) and `delay_deny` (when a
/// denial closes the connection) change no decision.
pub fn decode_network_rbac_filter(buf: &[u8], err: &mut CoreError) -> RbacFilter {
    let mut out = RbacFilter::default();
    walk(buf, "", err, |n, value, err| match n {
        1 => out.rules = rules_field("rules", value, err),
        2 => out.shadow_rules = rules_field("shadow_rules", value, err),
        3 => out.rules_stat_prefix = Field::at("stat_prefix", value).string(err),
        4 => {
            let _ = Field::at("enforcement_type", value).varint(err);
        }
        5 => {
            out.shadow_rules_stat_prefix = Field::at("shadow_rules_stat_prefix", value).string(err)
        }
        8 => {
            let _ = Field::at("delay_deny", value).bytes(err);
        }
        6 => err.unsupported("matcher", "the unified matcher API is not supported"),
        7 => err.unsupported("shadow_matcher", "the unified matcher API is not supported"),
        _ => unknown_field(err, "", "network RBAC filter", n),
    });
    out
}
