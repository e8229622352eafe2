//! Decoders for envoy.config.route.v3.RouteConfiguration and the messages it contains.
//!
//! Every field number of each message is listed: decoded (it changes the route decision or the
//! action we report), passed through (it changes neither; the message's bytes stay available
//! to the caller), or reported unsupported.

use super::matcher::{
    decode_header_matcher, decode_regex_matcher, decode_string_matcher, HeaderMatcher,
    RegexMatcher, StringMatcher,
};
use super::wire::{field_path, index_path, unknown_field, walk, Field, Value};
use crate::error::CoreError;

#[derive(Debug, Clone, Default)]
pub struct RouteConfiguration {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
    pub ignore_port_in_host_matching: bool,
    pub ignore_path_parameters_in_path_matching: bool,
    /// Empty: virtual hosts are chosen by :authority.
    pub vhost_header: String,
}

#[derive(Debug, Clone, Default)]
pub struct VirtualHost {
    pub name: String,
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, Default)]
pub struct Route {
    pub name: String,
    pub route_match: Option<RouteMatch>,
    pub action: Option<Action>,
    /// The serialized Route message, so that what we pass through stays available.
    pub proto: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSpecifier {
    Prefix(String),
    Path(String),
    SafeRegex(RegexMatcher),
    PathSeparatedPrefix(String),
    /// path_match_policy with the URI template matcher: the path_template.
    UriTemplate(String),
}

#[derive(Debug, Clone, Default)]
pub struct RouteMatch {
    pub path_specifier: Option<PathSpecifier>,
    pub case_sensitive: Option<bool>,
    pub headers: Vec<HeaderMatcher>,
    pub query_parameters: Vec<QueryParameterMatcher>,
    pub grpc: bool,
    /// (numerator, denominator enum) of runtime_fraction.default_value.
    pub runtime_fraction: Option<(u32, i32)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuerySpecifier {
    StringMatch(StringMatcher),
    Present(bool),
}

#[derive(Debug, Clone, Default)]
pub struct QueryParameterMatcher {
    pub name: String,
    pub specifier: Option<QuerySpecifier>,
}

/// A protobuf Duration in seconds (what Python callers want).
pub type Seconds = f64;

#[derive(Debug, Clone, Default)]
pub struct RouteAction {
    pub cluster: Option<String>,
    pub cluster_header: Option<String>,
    pub weighted_clusters: Vec<(String, u32)>,
    pub timeout: Option<Seconds>,
    pub idle_timeout: Option<Seconds>,
    pub prefix_rewrite: Option<String>,
    pub host_rewrite_literal: Option<String>,
    pub retry_on: Option<String>,
    pub num_retries: Option<u32>,
    pub per_try_timeout: Option<Seconds>,
    /// The rest of retry_policy, when it is present.
    pub retry: Option<RetryPolicy>,
    pub hash_policies: Vec<HashPolicy>,
}

/// What a RetryPolicy says beyond retry_on, num_retries and per_try_timeout.
#[derive(Debug, Clone, Default)]
pub struct RetryPolicy {
    pub retriable_status_codes: Vec<u32>,
    /// The names of retry_host_predicate entries, in order.
    pub retry_host_predicates: Vec<String>,
    pub host_selection_retry_max_attempts: i64,
}

/// Which request property a RouteAction.HashPolicy hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKind {
    Header(String),
    Cookie(String),
    /// connection_properties, with its source_ip flag.
    ConnectionProperties(bool),
    QueryParameter(String),
    FilterState(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashPolicy {
    /// None when the policy names no specifier.
    pub kind: Option<HashKind>,
    pub terminal: bool,
    /// A cookie policy's `ttl` in whole seconds (Envoy's cast): when set, Envoy generates the
    /// cookie when the request has none.
    pub cookie_ttl: Option<i64>,
    /// A cookie policy's `path` and `attributes` (name, value), for the generated cookie.
    pub cookie_path: String,
    pub cookie_attributes: Vec<(String, String)>,
    /// Whether a header policy has a `regex_rewrite`.
    pub header_regex_rewrite: bool,
}

#[derive(Debug, Clone, Default)]
pub struct RedirectAction {
    pub scheme_redirect: Option<String>,
    pub host_redirect: Option<String>,
    pub port_redirect: Option<u32>,
    pub path_redirect: Option<String>,
    pub prefix_rewrite: Option<String>,
    pub response_code: i32,
    pub strip_query: bool,
}

#[derive(Debug, Clone, Default)]
pub struct DirectResponseAction {
    pub status: u32,
    /// inline_bytes or inline_string
    pub body: Option<Vec<u8>>,
}

#[derive(Debug, Clone)]
pub enum ActionKind {
    Route(RouteAction),
    Redirect(RedirectAction),
    DirectResponse(DirectResponseAction),
    FilterAction,
    NonForwardingAction,
}

#[derive(Debug, Clone)]
pub struct Action {
    pub kind: ActionKind,
    /// The serialized action message (RouteAction, RedirectAction, ...), complete.
    pub proto: Vec<u8>,
}

pub fn decode_route_configuration(buf: &[u8], err: &mut CoreError) -> RouteConfiguration {
    let mut out = RouteConfiguration::default();
    let path = "";
    walk(buf, path, err, |n, value, err| match n {
        1 => out.name = Field::at("name", value).string(err),
        2 => {
            let p = index_path(path, "virtual_hosts", out.virtual_hosts.len());
            let b = Field::at(&p, value).bytes(err);
            out.virtual_hosts.push(decode_virtual_host(b, &p, err));
        }
        9 => err.unsupported("vhds", "VHDS (on-demand virtual hosts) is not supported"),
        14 => {
            out.ignore_port_in_host_matching =
                Field::at("ignore_port_in_host_matching", value).bool(err)
        }
        15 => {
            out.ignore_path_parameters_in_path_matching =
                Field::at("ignore_path_parameters_in_path_matching", value).bool(err)
        }
        18 => out.vhost_header = Field::at("vhost_header", value).string(err),
        12 => err.unsupported(
            "cluster_specifier_plugins",
            "cluster specifier plugins are not supported",
        ),
        // Header mutations, validation, limits, mirrors, per-filter config and metadata do not
        // change which route is chosen; they pass through.
        3 | 4 | 5 | 6 | 7 | 8 | 10 | 11 | 13 | 16 | 17 => {}
        _ => unknown_field(err, path, "RouteConfiguration", n),
    });
    out
}

fn decode_virtual_host(buf: &[u8], path: &str, err: &mut CoreError) -> VirtualHost {
    let mut out = VirtualHost::default();
    walk(buf, path, err, |n, value, err| match n {
        1 => out.name = Field::at(&field_path(path, "name"), value).string(err),
        2 => {
            let p = index_path(path, "domains", out.domains.len());
            out.domains.push(Field::at(&p, value).string(err));
        }
        3 => {
            let p = index_path(path, "routes", out.routes.len());
            let b = Field::at(&p, value).bytes(err);
            out.routes.push(decode_route(b, &p, err));
        }
        21 => err.unsupported(
            field_path(path, "matcher"),
            "the generic matching tree (VirtualHost.matcher) is not supported",
        ),
        4 => {
            let p = field_path(path, "require_tls");
            if (Field { path: &p, value }).i32(err) != 0 {
                err.unsupported(p, "require_tls is not supported");
            }
        }
        // Virtual clusters (stats), rate limits, header mutations, CORS, per-filter config,
        // retry/hedge policies, buffer limits, mirrors and metadata do not change the route.
        5..=20 | 22..=25 => {}
        _ => unknown_field(err, path, "VirtualHost", n),
    });
    out
}

fn decode_route(buf: &[u8], path: &str, err: &mut CoreError) -> Route {
    let mut out = Route {
        proto: buf.to_vec(),
        ..Route::default()
    };
    walk(buf, path, err, |n, value, err| {
        let action = |kind: &str, err: &mut CoreError| -> (String, Vec<u8>) {
            let p = field_path(path, kind);
            let b = Field::at(&p, value).bytes(err).to_vec();
            (p, b)
        };
        match n {
            14 => out.name = Field::at(&field_path(path, "name"), value).string(err),
            1 => {
                let p = field_path(path, "match");
                let b = Field::at(&p, value).bytes(err);
                out.route_match = Some(decode_route_match(b, &p, err));
            }
            2 => {
                let (p, b) = action("route", err);
                let kind = ActionKind::Route(decode_route_action(&b, &p, err));
                out.action = Some(Action { kind, proto: b });
            }
            3 => {
                let (p, b) = action("redirect", err);
                let kind = ActionKind::Redirect(decode_redirect(&b, &p, err));
                out.action = Some(Action { kind, proto: b });
            }
            7 => {
                let (p, b) = action("direct_response", err);
                let kind = ActionKind::DirectResponse(decode_direct_response(&b, &p, err));
                out.action = Some(Action { kind, proto: b });
            }
            17 => {
                let (_, b) = action("filter_action", err);
                out.action = Some(Action {
                    kind: ActionKind::FilterAction,
                    proto: b,
                });
            }
            18 => {
                let (_, b) = action("non_forwarding_action", err);
                out.action = Some(Action {
                    kind: ActionKind::NonForwardingAction,
                    proto: b,
                });
            }
            // metadata, decorator, per-filter config, header mutations, tracing, limits and
            // stat_prefix do not change the route decision.
            4 | 5 | 9 | 10 | 11 | 12 | 13 | 15 | 16 | 19 | 20 => {}
            _ => unknown_field(err, path, "Route", n),
        }
    });
    out
}

fn decode_route_match(buf: &[u8], path: &str, err: &mut CoreError) -> RouteMatch {
    let mut out = RouteMatch::default();
    walk(buf, path, err, |n, value, err| {
        let p = |name: &str| field_path(path, name);
        match n {
            1 => {
                let s = Field::at(&p("prefix"), value).string(err);
                out.path_specifier = Some(PathSpecifier::Prefix(s));
            }
            2 => {
                let s = Field::at(&p("path"), value).string(err);
                out.path_specifier = Some(PathSpecifier::Path(s));
            }
            10 => {
                let fp = p("safe_regex");
                let b = Field::at(&fp, value).bytes(err);
                out.path_specifier =
                    Some(PathSpecifier::SafeRegex(decode_regex_matcher(b, &fp, err)));
            }
            14 => {
                let s = Field::at(&p("path_separated_prefix"), value).string(err);
                out.path_specifier = Some(PathSpecifier::PathSeparatedPrefix(s));
            }
            12 => err.unsupported(p("connect_matcher"), "connect_matcher is not supported"),
            15 => {
                let fp = p("path_match_policy");
                let b = Field::at(&fp, value).bytes(err);
                if let Some(t) = decode_uri_template_policy(b, &fp, err) {
                    out.path_specifier = Some(PathSpecifier::UriTemplate(t));
                }
            }
            4 => {
                let fp = p("case_sensitive");
                let b = Field::at(&fp, value).bytes(err);
                out.case_sensitive = Some(decode_bool_value(b, &fp, err));
            }
            9 => {
                let fp = p("runtime_fraction");
                let b = Field::at(&fp, value).bytes(err);
                out.runtime_fraction = Some(decode_runtime_fraction(b, &fp, err));
            }
            6 => {
                let fp = index_path(path, "headers", out.headers.len());
                let b = Field::at(&fp, value).bytes(err);
                out.headers.push(decode_header_matcher(b, &fp, err));
            }
            7 => {
                let fp = index_path(path, "query_parameters", out.query_parameters.len());
                let b = Field::at(&fp, value).bytes(err);
                out.query_parameters
                    .push(decode_query_parameter_matcher(b, &fp, err));
            }
            8 => {
                let fp = p("grpc");
                let b = Field::at(&fp, value).bytes(err);
                // GrpcRouteMatchOptions has no fields; anything inside is from a newer API.
                walk(b, &fp, err, |n, _, err| {
                    unknown_field(err, &fp, "GrpcRouteMatchOptions", n)
                });
                out.grpc = true;
            }
            11 => err.unsupported(p("tls_context"), "tls_context matching is not supported"),
            13 => err.unsupported(
                index_path(path, "dynamic_metadata", 0),
                "dynamic_metadata matching is not supported",
            ),
            16 => err.unsupported(
                index_path(path, "filter_state", 0),
                "filter_state matching is not supported",
            ),
            _ => unknown_field(err, path, "RouteMatch", n),
        }
    });
    out
}

const URI_TEMPLATE_MATCH: &str =
    "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig";

/// TypedExtensionConfig holding a UriTemplateMatchConfig: its path_template.
fn decode_uri_template_policy(buf: &[u8], path: &str, err: &mut CoreError) -> Option<String> {
    let mut template = None;
    let tpath = field_path(path, "typed_config");
    walk(buf, path, err, |n, value, err| match n {
        // The extension's name is informational; the type URL decides.
        1 => {}
        2 => {
            let b = Field::at(&tpath, value).bytes(err);
            let (mut type_url, mut inner) = (String::new(), Vec::new());
            walk(b, &tpath, err, |n, value, err| match n {
                1 => type_url = Field::at(&tpath, value).string(err),
                2 => inner = Field::at(&tpath, value).bytes(err).to_vec(),
                _ => unknown_field(err, &tpath, "Any", n),
            });
            if type_url != URI_TEMPLATE_MATCH {
                err.unsupported(
                    &tpath,
                    format!("path matcher extension {type_url:?} is not supported"),
                );
                return;
            }
            let mut t = String::new();
            walk(&inner, &tpath, err, |n, value, err| match n {
                1 => t = Field::at(&field_path(&tpath, "path_template"), value).string(err),
                _ => unknown_field(err, &tpath, "UriTemplateMatchConfig", n),
            });
            template = Some(t);
        }
        _ => unknown_field(err, path, "TypedExtensionConfig", n),
    });
    if template.is_none() {
        err.invalid(&tpath, "is required");
    }
    template
}

fn decode_bool_value(buf: &[u8], path: &str, err: &mut CoreError) -> bool {
    let mut out = false;
    walk(buf, path, err, |n, value, err| match n {
        1 => out = Field { path, value }.bool(err),
        _ => unknown_field(err, path, "BoolValue", n),
    });
    out
}

fn decode_u32_value(buf: &[u8], path: &str, err: &mut CoreError) -> u32 {
    let mut out = 0;
    walk(buf, path, err, |n, value, err| match n {
        1 => out = Field { path, value }.u32(err),
        _ => unknown_field(err, path, "UInt32Value", n),
    });
    out
}

fn decode_duration(buf: &[u8], path: &str, err: &mut CoreError) -> Seconds {
    let (mut s, mut ns) = (0i64, 0i32);
    walk(buf, path, err, |n, value, err| match n {
        1 => s = Field { path, value }.i64(err),
        2 => ns = Field { path, value }.i32(err),
        _ => unknown_field(err, path, "Duration", n),
    });
    s as f64 + f64::from(ns) / 1e9
}

fn decode_runtime_fraction(buf: &[u8], path: &str, err: &mut CoreError) -> (u32, i32) {
    let mut out = (0u32, 0i32);
    walk(buf, path, err, |n, value, err| match n {
        1 => {
            let p = field_path(path, "default_value");
            let b = Field::at(&p, value).bytes(err);
            walk(b, &p, err, |n, value, err| match n {
                1 => out.0 = Field::at(&p, value).u32(err),
                2 => out.1 = Field::at(&p, value).i32(err),
                _ => unknown_field(err, &p, "FractionalPercent", n),
            });
        }
        // The runtime key is looked up in Envoy's runtime, which meshcore does not have:
        // with no runtime layer configured Envoy uses the default value, as we do.
        2 => {}
        _ => unknown_field(err, path, "RuntimeFractionalPercent", n),
    });
    out
}

fn decode_query_parameter_matcher(
    buf: &[u8],
    path: &str,
    err: &mut CoreError,
) -> QueryParameterMatcher {
    let mut out = QueryParameterMatcher::default();
    walk(buf, path, err, |n, value, err| match n {
        1 => out.name = Field::at(&field_path(path, "name"), value).string(err),
        5 => {
            let p = field_path(path, "string_match");
            let b = Field::at(&p, value).bytes(err);
            out.specifier = Some(QuerySpecifier::StringMatch(decode_string_matcher(
                b, &p, err,
            )));
        }
        6 => {
            let p = field_path(path, "present_match");
            out.specifier = Some(QuerySpecifier::Present(Field::at(&p, value).bool(err)));
        }
        _ => unknown_field(err, path, "QueryParameterMatcher", n),
    });
    out
}

fn opt_string(path: &str, name: &str, value: Value<'_>, err: &mut CoreError) -> Option<String> {
    Some(Field::at(&field_path(path, name), value).string(err))
}

fn decode_route_action(buf: &[u8], path: &str, err: &mut CoreError) -> RouteAction {
    let mut out = RouteAction::default();
    walk(buf, path, err, |n, value, err| match n {
        1 => out.cluster = opt_string(path, "cluster", value, err),
        2 => out.cluster_header = opt_string(path, "cluster_header", value, err),
        3 => {
            let p = field_path(path, "weighted_clusters");
            let b = Field::at(&p, value).bytes(err);
            walk(b, &p, err, |n, value, err| {
                if n == 1 {
                    let cp = index_path(&p, "clusters", out.weighted_clusters.len());
                    let cb = Field::at(&cp, value).bytes(err);
                    let (mut name, mut weight) = (String::new(), 0u32);
                    walk(cb, &cp, err, |n, value, err| match n {
                        1 => name = Field::at(&field_path(&cp, "name"), value).string(err),
                        2 => {
                            let wp = field_path(&cp, "weight");
                            let wb = Field::at(&wp, value).bytes(err);
                            weight = decode_u32_value(wb, &wp, err);
                        }
                        // Per-cluster header mutations, metadata and host rewrite stay in the
                        // action's bytes.
                        _ => {}
                    });
                    out.weighted_clusters.push((name, weight));
                }
            });
        }
        8 => {
            let p = field_path(path, "timeout");
            let b = Field::at(&p, value).bytes(err);
            out.timeout = Some(decode_duration(b, &p, err));
        }
        24 => {
            let p = field_path(path, "idle_timeout");
            let b = Field::at(&p, value).bytes(err);
            out.idle_timeout = Some(decode_duration(b, &p, err));
        }
        5 => out.prefix_rewrite = opt_string(path, "prefix_rewrite", value, err),
        6 => out.host_rewrite_literal = opt_string(path, "host_rewrite_literal", value, err),
        9 => {
            let p = field_path(path, "retry_policy");
            let b = Field::at(&p, value).bytes(err);
            let mut retry = RetryPolicy::default();
            walk(b, &p, err, |n, value, err| match n {
                1 => out.retry_on = opt_string(&p, "retry_on", value, err),
                2 => {
                    let np = field_path(&p, "num_retries");
                    let nb = Field::at(&np, value).bytes(err);
                    out.num_retries = Some(decode_u32_value(nb, &np, err));
                }
                3 => {
                    let tp = field_path(&p, "per_try_timeout");
                    let tb = Field::at(&tp, value).bytes(err);
                    out.per_try_timeout = Some(decode_duration(tb, &tp, err));
                }
                5 => {
                    let hp = index_path(
                        &p,
                        "retry_host_predicate",
                        retry.retry_host_predicates.len(),
                    );
                    let hb = Field::at(&hp, value).bytes(err);
                    let mut name = String::new();
                    walk(hb, &hp, err, |n, value, err| {
                        if n == 1 {
                            name = Field::at(&field_path(&hp, "name"), value).string(err);
                        }
                    });
                    retry.retry_host_predicates.push(name);
                }
                6 => {
                    let hp = field_path(&p, "host_selection_retry_max_attempts");
                    retry.host_selection_retry_max_attempts = Field::at(&hp, value).i64(err);
                }
                7 => {
                    let cp = field_path(&p, "retriable_status_codes");
                    match value {
                        // Packed (what protobuf writes for repeated scalars) or one by one.
                        Value::Bytes(b) => {
                            decode_packed_u32(b, &cp, &mut retry.retriable_status_codes, err)
                        }
                        _ => retry
                            .retriable_status_codes
                            .push(Field::at(&cp, value).u32(err)),
                    }
                }
                _ => {}
            });
            out.retry = Some(retry);
        }
        15 => {
            let p = index_path(path, "hash_policy", out.hash_policies.len());
            let b = Field::at(&p, value).bytes(err);
            out.hash_policies.push(decode_hash_policy(b, &p, err));
        }
        // Everything else a RouteAction carries (other rewrites, mirrors, upgrades...)
        // acts after the route is chosen; it stays available in the action's bytes.
        _ => {}
    });
    out
}

/// A packed repeated uint32 (values over u32 are reported, as a single value would be).
fn decode_packed_u32(buf: &[u8], path: &str, out: &mut Vec<u32>, err: &mut CoreError) {
    let mut pos = 0usize;
    while pos < buf.len() {
        let mut v: u64 = 0;
        let mut done = false;
        for shift in (0..64).step_by(7) {
            let Some(&byte) = buf.get(pos) else { break };
            pos += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                done = true;
                break;
            }
        }
        if !done {
            err.invalid(path, "malformed protobuf: truncated packed varint");
            return;
        }
        out.push(Field::at(path, Value::Varint(v)).u32(err));
    }
}

fn decode_hash_policy(buf: &[u8], path: &str, err: &mut CoreError) -> HashPolicy {
    let mut out = HashPolicy {
        kind: None,
        terminal: false,
        cookie_ttl: None,
        cookie_path: String::new(),
        cookie_attributes: Vec::new(),
        header_regex_rewrite: false,
    };
    // The first string field (field 1) of a sub-message: header_name, name or key.
    let name_of = |p: &str, b: &[u8], err: &mut CoreError| -> String {
        let mut name = String::new();
        walk(b, p, err, |n, value, err| {
            if n == 1 {
                name = Field::at(p, value).string(err);
            }
        });
        name
    };
    walk(buf, path, err, |n, value, err| match n {
        1 | 2 | 5 | 6 => {
            let field = match n {
                1 => "header",
                2 => "cookie",
                5 => "query_parameter",
                _ => "filter_state",
            };
            let p = field_path(path, field);
            let b = Field::at(&p, value).bytes(err);
            let name = name_of(&p, b, err);
            if n == 1 {
                walk(b, &p, err, |m, _, _| {
                    if m == 2 {
                        out.header_regex_rewrite = true;
                    }
                });
            } else if n == 2 {
                decode_cookie_generation(b, &p, &mut out, err);
            }
            out.kind = Some(match n {
                1 => HashKind::Header(name),
                2 => HashKind::Cookie(name),
                5 => HashKind::QueryParameter(name),
                _ => HashKind::FilterState(name),
            });
        }
        3 => {
            let p = field_path(path, "connection_properties");
            let b = Field::at(&p, value).bytes(err);
            let mut source_ip = false;
            walk(b, &p, err, |n, value, err| {
                if n == 1 {
                    source_ip = Field::at(&p, value).bool(err);
                }
            });
            out.kind = Some(HashKind::ConnectionProperties(source_ip));
        }
        4 => out.terminal = Field::at(&field_path(path, "terminal"), value).bool(err),
        _ => {}
    });
    out
}

/// A cookie policy's `ttl` (Duration: whole seconds), `path` and `attributes`.
fn decode_cookie_generation(buf: &[u8], path: &str, out: &mut HashPolicy, err: &mut CoreError) {
    walk(buf, path, err, |n, value, err| match n {
        2 => {
            let p = field_path(path, "ttl");
            let b = Field::at(&p, value).bytes(err);
            let mut seconds = 0i64;
            walk(b, &p, err, |m, value, err| {
                if m == 1 {
                    seconds = Field::at(&field_path(&p, "seconds"), value).i64(err);
                }
            });
            out.cookie_ttl = Some(seconds);
        }
        3 => out.cookie_path = Field::at(&field_path(path, "path"), value).string(err),
        4 => {
            let p = index_path(path, "attributes", out.cookie_attributes.len());
            let b = Field::at(&p, value).bytes(err);
            let (mut name, mut val) = (String::new(), String::new());
            walk(b, &p, err, |m, value, err| match m {
                1 => name = Field::at(&field_path(&p, "name"), value).string(err),
                2 => val = Field::at(&field_path(&p, "value"), value).string(err),
                _ => {}
            });
            out.cookie_attributes.push((name, val));
        }
        _ => {}
    });
}

fn decode_redirect(buf: &[u8], path: &str, err: &mut CoreError) -> RedirectAction {
    let mut out = RedirectAction::default();
    walk(buf, path, err, |n, value, err| match n {
        4 => {
            if (Field {
                path: &field_path(path, "https_redirect"),
                value,
            })
            .bool(err)
            {
                out.scheme_redirect = Some("https".to_string());
            }
        }
        7 => out.scheme_redirect = opt_string(path, "scheme_redirect", value, err),
        1 => out.host_redirect = opt_string(path, "host_redirect", value, err),
        8 => {
            out.port_redirect = Some(Field::at(&field_path(path, "port_redirect"), value).u32(err))
        }
        2 => out.path_redirect = opt_string(path, "path_redirect", value, err),
        5 => out.prefix_rewrite = opt_string(path, "prefix_rewrite", value, err),
        3 => out.response_code = Field::at(&field_path(path, "response_code"), value).i32(err),
        6 => out.strip_query = Field::at(&field_path(path, "strip_query"), value).bool(err),
        // regex_rewrite stays in the action's bytes.
        9 => {}
        _ => unknown_field(err, path, "RedirectAction", n),
    });
    out
}

fn decode_direct_response(buf: &[u8], path: &str, err: &mut CoreError) -> DirectResponseAction {
    let mut out = DirectResponseAction::default();
    walk(buf, path, err, |n, value, err| match n {
        1 => out.status = Field::at(&field_path(path, "status"), value).u32(err),
        2 => {
            let p = field_path(path, "body");
            let b = Field::at(&p, value).bytes(err);
            walk(b, &p, err, |n, value, err| match n {
                2 | 3 => out.body = Some(Field::at(&p, value).bytes(err).to_vec()),
                // filename, environment_variable: read by the proxy, not by us.
                1 | 4 | 5 => {}
                _ => unknown_field(err, &p, "DataSource", n),
            });
        }
        // body_format shapes the body; it stays in the action's bytes.
        3 => {}
        _ => unknown_field(err, path, "DirectResponseAction", n),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::wire::test_encode::{bytes_field, varint_field};

    #[test]
    fn retry_and_hash_policies_are_decoded() {
        let mut retry = bytes_field(1, b"5xx,reset");
        retry.extend(bytes_field(5, &bytes_field(1, b"previous_hosts")));
        retry.extend(varint_field(6, 3));
        // retriable_status_codes packed (503, 409), then one more unpacked (500).
        let mut packed = Vec::new();
        crate::proto::wire::test_encode::varint(503, &mut packed);
        crate::proto::wire::test_encode::varint(409, &mut packed);
        retry.extend(bytes_field(7, &packed));
        retry.extend(varint_field(7, 500));
        let mut action = bytes_field(1, b"c");
        action.extend(bytes_field(9, &retry));
        let mut header = bytes_field(1, &bytes_field(1, b"X-User"));
        header.extend(varint_field(4, 1));
        action.extend(bytes_field(15, &header));
        action.extend(bytes_field(15, &bytes_field(3, &varint_field(1, 1))));
        action.extend(bytes_field(15, &bytes_field(6, &bytes_field(1, b"k"))));
        let mut err = CoreError::new();
        let ra = decode_route_action(&action, "route", &mut err);
        assert!(err.is_empty());
        assert_eq!(ra.retry_on.as_deref(), Some("5xx,reset"));
        let rp = ra.retry.expect("retry policy");
        assert_eq!(rp.retriable_status_codes, vec![503, 409, 500]);
        assert_eq!(rp.retry_host_predicates, vec!["previous_hosts".to_string()]);
        assert_eq!(rp.host_selection_retry_max_attempts, 3);
        let kinds: Vec<_> = ra.hash_policies.iter().map(|h| h.kind.clone()).collect();
        assert_eq!(
            kinds,
            vec![
                Some(HashKind::Header("X-User".into())),
                Some(HashKind::ConnectionProperties(true)),
                Some(HashKind::FilterState("k".into())),
            ]
        );
        assert!(ra.hash_policies[0].terminal && !ra.hash_policies[1].terminal);

        // A cookie with ttl, path and an attribute; a header with a regex_rewrite.
        let duration = varint_field(1, 3600);
        let attr = [bytes_field(1, b"SameSite"), bytes_field(2, b"Strict")].concat();
        let cookie = [
            bytes_field(1, b"session"),
            bytes_field(2, &duration),
            bytes_field(3, b"/app"),
            bytes_field(4, &attr),
        ]
        .concat();
        let header = [bytes_field(1, b"x-user"), bytes_field(2, b"\x0a\x00")].concat();
        let action = [
            bytes_field(15, &bytes_field(2, &cookie)),
            bytes_field(15, &bytes_field(1, &header)),
        ]
        .concat();
        let mut err = CoreError::new();
        let ra = decode_route_action(&action, "route", &mut err);
        assert!(err.is_empty());
        let c = &ra.hash_policies[0];
        assert_eq!(c.kind, Some(HashKind::Cookie("session".into())));
        assert_eq!(c.cookie_ttl, Some(3600));
        assert_eq!(c.cookie_path, "/app");
        assert_eq!(
            c.cookie_attributes,
            vec![("SameSite".to_string(), "Strict".to_string())]
        );
        assert!(!c.header_regex_rewrite && ra.hash_policies[1].header_regex_rewrite);
        assert_eq!(ra.hash_policies[1].cookie_ttl, None);

        let mut err = CoreError::new();
        let truncated = bytes_field(9, &bytes_field(7, &[0x80]));
        decode_route_action(&truncated, "route", &mut err);
        assert_eq!(
            err.errors[0].path,
            "route.retry_policy.retriable_status_codes"
        );
    }
}
