//! Envoy's RBAC engine: envoy.config.rbac.v3.RBAC (and the HTTP filter config that carries
//! enforced and shadow rules) compiled into an indexed table.
//!
//! Semantics are Envoy 1.40's (`source/extensions/filters/common/rbac`): a policy matches when
//! any permission and any principal match; policies are tried in name order (Envoy keeps them
//! in a `std::map`), and the first match is the effective policy. ALLOW allows on a match,
//! DENY denies on a match, LOG always allows. Shadow rules are evaluated and reported, never
//! enforced.

mod index;
#[cfg(test)]
mod tests;

use std::net::IpAddr;

use crate::error::{join_path, CoreError};
use crate::matcher::{CompiledHeader, CompiledString, HeaderTest, PseudoHeader};
use crate::proto::matcher::StringMatcher;
use crate::proto::rbac::{
    decode_rbac, decode_rbac_filter, CidrRange, Policy, Rbac, Rule, ValueMatcher,
};

use crate::matcher::ENVOY_MAX_PROGRAM_SIZE;
use index::Index;

/// One request and its connection, as Envoy's RBAC filter sees them. `None` (or empty) means
/// the attribute is absent, and a rule that needs it does not match.
#[derive(Debug, Clone, Copy, Default)]
pub struct Attributes<'a> {
    pub method: Option<&'a str>,
    pub path: Option<&'a str>,
    pub authority: Option<&'a str>,
    pub scheme: Option<&'a str>,
    /// Regular headers in arrival order; names in any case, repeated names allowed.
    pub headers: &'a [(&'a str, &'a str)],
    pub source_ip: Option<IpAddr>,
    pub direct_remote_ip: Option<IpAddr>,
    pub remote_ip: Option<IpAddr>,
    pub destination_ip: Option<IpAddr>,
    pub destination_port: Option<u16>,
    /// Whether the connection is TLS (with or without a client certificate).
    pub tls: bool,
    pub uri_sans: &'a [&'a str],
    pub dns_sans: &'a [&'a str],
    /// The peer certificate's subject; Envoy sees "" without a client certificate.
    pub subject: &'a str,
    /// SNI; Envoy matches "" when the client sent none.
    pub sni: &'a str,
    /// Dynamic metadata: a struct of filter name -> struct (None: no metadata at all).
    pub metadata: Option<&'a MetaValue>,
}

/// A google.protobuf.Value as metadata holds it.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    Null,
    Number(f64),
    String(String),
    Bool(bool),
    Struct(std::collections::BTreeMap<String, MetaValue>),
    List(Vec<MetaValue>),
}

/// A compiled envoy.type.matcher.v3.ValueMatcher (Envoy's Matchers::ValueMatcher).
#[derive(Debug, Clone)]
pub enum ValueTest {
    Null,
    DoubleRange(f64, f64),
    DoubleExact(f64),
    String(CompiledString),
    Bool(bool),
    Present(bool),
    List(Box<ValueTest>),
    Or(Vec<ValueTest>),
}

impl ValueTest {
    fn compile(m: &ValueMatcher, path: &str, err: &mut CoreError) -> Option<Self> {
        Some(match m {
            ValueMatcher::Null => Self::Null,
            ValueMatcher::DoubleRange(s, e) => Self::DoubleRange(*s, *e),
            ValueMatcher::DoubleExact(v) => Self::DoubleExact(*v),
            ValueMatcher::DoubleUnset => {
                err.invalid(
                    join_path(path, "double_match"),
                    "range or exact is required",
                );
                return None;
            }
            ValueMatcher::String(sm) => {
                Self::String(compile_string(sm, &join_path(path, "string_match"), err)?)
            }
            ValueMatcher::Bool(b) => Self::Bool(*b),
            ValueMatcher::Present(b) => Self::Present(*b),
            ValueMatcher::List(None) => {
                err.invalid(join_path(path, "list_match.one_of"), "is required");
                return None;
            }
            ValueMatcher::List(Some(inner)) => Self::List(Box::new(Self::compile(
                inner,
                &join_path(path, "list_match.one_of"),
                err,
            )?)),
            ValueMatcher::Or(ms) => {
                let p = join_path(path, "or_match");
                if ms.len() < 2 {
                    // Envoy's validation: value_matchers min_items 2.
                    err.invalid(
                        join_path(&p, "value_matchers"),
                        "must have at least 2 items",
                    );
                    return None;
                }
                let mut out = Vec::with_capacity(ms.len());
                for (i, m) in ms.iter().enumerate() {
                    out.push(Self::compile(m, &format!("{p}.value_matchers[{i}]"), err)?);
                }
                Self::Or(out)
            }
        })
    }

    /// `v` None: the path led nowhere (Envoy's default Value, whose kind is not set).
    fn matches(&self, v: Option<&MetaValue>) -> bool {
        match (self, v) {
            (Self::Null, Some(MetaValue::Null)) => true,
            (Self::DoubleRange(s, e), Some(MetaValue::Number(n))) => s <= n && n < e,
            (Self::DoubleExact(x), Some(MetaValue::Number(n))) => x == n,
            (Self::String(m), Some(MetaValue::String(s))) => m.matches(s),
            (Self::Bool(b), Some(MetaValue::Bool(x))) => b == x,
            (Self::Present(p), v) => *p && v.is_some(),
            (Self::List(m), Some(MetaValue::List(items))) => {
                items.iter().any(|i| m.matches(Some(i)))
            }
            (Self::Or(ms), v) => ms.iter().any(|m| m.matches(v)),
            _ => false,
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Null => "null".to_string(),
            Self::DoubleRange(s, e) => format!("number in [{s}, {e})"),
            Self::DoubleExact(x) => format!("number {x}"),
            Self::String(m) => m.describe(),
            Self::Bool(b) => format!("bool {b}"),
            Self::Present(p) => format!("present {p}"),
            Self::List(m) => format!("list with one {}", m.describe()),
            Self::Or(ms) => ms
                .iter()
                .map(Self::describe)
                .collect::<Vec<_>>()
                .join(" or "),
        }
    }
}

/// A compiled envoy.type.matcher.v3.MetadataMatcher.
#[derive(Debug, Clone)]
pub struct CompiledMetadata {
    pub filter: String,
    pub path: Vec<String>,
    pub value: ValueTest,
    pub invert: bool,
}

impl CompiledMetadata {
    /// Envoy's Matchers::MetadataMatcher::match over the request's dynamic metadata.
    fn matches(&self, metadata: Option<&MetaValue>) -> bool {
        fn struct_get<'m>(v: Option<&'m MetaValue>, key: &str) -> Option<&'m MetaValue> {
            match v {
                Some(MetaValue::Struct(m)) => m.get(key),
                _ => None,
            }
        }
        let mut v = struct_get(metadata, &self.filter);
        for key in &self.path {
            v = struct_get(v, key);
        }
        self.value.matches(v) != self.invert
    }
}

impl<'a> Attributes<'a> {
    /// The value of a request-line pseudo-header, when the request has it.
    pub fn pseudo(&self, p: PseudoHeader) -> Option<&'a str> {
        match p {
            PseudoHeader::Method => self.method,
            PseudoHeader::Path => self.path,
            PseudoHeader::Authority => self.authority,
            PseudoHeader::Scheme => self.scheme,
        }
    }

    /// Calls `f` with every value of the header `h` matches, pseudo-headers included.
    pub fn for_each_value_of(&self, h: &CompiledHeader, f: impl FnMut(&str)) {
        if let Some(v) = h.pseudo.and_then(|p| self.pseudo(p)) {
            let mut f = f;
            f(v);
            return;
        }
        self.for_each_header_value(&h.name, f);
    }

    /// Calls `f` with every value of header `name` (lower case), pseudo-headers included.
    pub fn for_each_header_value(&self, name: &str, mut f: impl FnMut(&str)) {
        if let Some(v) = PseudoHeader::of(name).and_then(|p| self.pseudo(p)) {
            f(v);
            return;
        }
        for (n, v) in self.headers {
            if n.eq_ignore_ascii_case(name) {
                f(v);
            }
        }
    }

    /// The path without query and fragment (what url_path matches).
    pub fn url_path(&self) -> Option<&'a str> {
        self.path.map(|p| {
            let end = query_start(p.as_bytes()).unwrap_or(p.len());
            // '?' and '#' are ASCII, so `end` is a char boundary.
            p.get(..end).unwrap_or(p)
        })
    }
}

/// The position of the first '?' or '#' in `s`.
fn query_start(s: &[u8]) -> Option<usize> {
    crate::request::find_either(s, b'?', b'#')
}

/// Envoy 1.40's header matching in RBAC: each value of a repeated header is tested on its
/// own and any match counts (values are not joined with ","), then invert_match applies. A
/// missing header matches only a present_match that expects absence (or, inverted, presence),
/// unless treat_missing_header_as_empty makes it "".
fn header_matches(h: &CompiledHeader, a: &Attributes<'_>) -> bool {
    if let HeaderTest::Present(want) = h.test {
        // treat_missing_header_as_empty makes a missing header present (as "").
        let mut present = h.treat_missing_as_empty;
        a.for_each_value_of(h, |_| present = true);
        return (present == want) != h.invert;
    }
    let mut seen = false;
    let mut hit = false;
    a.for_each_value_of(h, |v| {
        seen = true;
        hit = hit || h.test_value(v);
    });
    if !seen {
        if !h.treat_missing_as_empty {
            return false;
        }
        hit = h.test_value("");
    }
    hit != h.invert
}

/// A CIDR block with the address already masked, as Envoy's CidrRange stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cidr {
    V4 { net: u32, mask: u32, len: u8 },
    V6 { net: u128, mask: u128, len: u8 },
}

impl Cidr {
    fn compile(c: &CidrRange, path: &str, err: &mut CoreError) -> Option<Self> {
        let Ok(ip) = c.address_prefix.parse::<IpAddr>() else {
            err.invalid(
                join_path(path, "address_prefix"),
                format!("{:?} is not an IP address", c.address_prefix),
            );
            return None;
        };
        match ip {
            IpAddr::V4(a) => {
                let Ok(len) = u8::try_from(c.prefix_len).map_err(|_| ()).and_then(|l| {
                    if l <= 32 {
                        Ok(l)
                    } else {
                        Err(())
                    }
                }) else {
                    err.invalid(join_path(path, "prefix_len"), "must be at most 32 for IPv4");
                    return None;
                };
                let mask = if len == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(len))
                };
                Some(Self::V4 {
                    net: u32::from(a) & mask,
                    mask,
                    len,
                })
            }
            IpAddr::V6(a) => {
                let Ok(len) = u8::try_from(c.prefix_len).map_err(|_| ()).and_then(|l| {
                    if l <= 128 {
                        Ok(l)
                    } else {
                        Err(())
                    }
                }) else {
                    err.invalid(
                        join_path(path, "prefix_len"),
                        "must be at most 128 for IPv6",
                    );
                    return None;
                };
                let mask = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(len))
                };
                Some(Self::V6 {
                    net: u128::from(a) & mask,
                    mask,
                    len,
                })
            }
        }
    }

    /// Envoy's CidrRange::isInRange: same IP version, and the masked bits equal.
    pub fn contains(&self, ip: Option<IpAddr>) -> bool {
        match (self, ip) {
            (Self::V4 { net, mask, .. }, Some(IpAddr::V4(a))) => u32::from(a) & mask == *net,
            (Self::V6 { net, mask, .. }, Some(IpAddr::V6(a))) => u128::from(a) & mask == *net,
            _ => false,
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::V4 { net, len, .. } => format!("{}/{len}", std::net::Ipv4Addr::from(*net)),
            Self::V6 { net, len, .. } => format!("{}/{len}", std::net::Ipv6Addr::from(*net)),
        }
    }
}

/// A compiled permission rule or principal identifier.
#[derive(Debug, Clone)]
pub enum Matcher {
    Any,
    And(Vec<Matcher>),
    Or(Vec<Matcher>),
    Not(Box<Matcher>),
    Header(CompiledHeader),
    UrlPath(CompiledString),
    DestinationIp(Cidr),
    DestinationPort(u32),
    DestinationPortRange(i32, i32),
    RequestedServerName(CompiledString),
    Authenticated(Option<CompiledString>),
    SourceIp(Cidr),
    DirectRemoteIp(Cidr),
    RemoteIp(Cidr),
    Metadata(CompiledMetadata),
    /// A URI template, compiled to Envoy's RE2 pattern (the template kept for `explain`).
    UriTemplate(String, Box<crate::regex::Re2Regex>),
}

fn compile_string(m: &StringMatcher, path: &str, err: &mut CoreError) -> Option<CompiledString> {
    CompiledString::compile(m, path, err)
}

impl Matcher {
    /// `principal` tells the oneof apart, for field paths (`and_ids.ids[0]` vs
    /// `and_rules.rules[0]`).
    fn compile(rule: &Rule, path: &str, principal: bool, err: &mut CoreError) -> Option<Self> {
        Some(match rule {
            Rule::Any(true) => Self::Any,
            Rule::Any(false) => {
                // Envoy's validation: `any` must be true.
                err.invalid(join_path(path, "any"), "must be true");
                return None;
            }
            Rule::And(rules) | Rule::Or(rules) => {
                let field = match (rule, principal) {
                    (Rule::And(_), false) => "and_rules.rules",
                    (Rule::And(_), true) => "and_ids.ids",
                    (_, false) => "or_rules.rules",
                    (_, true) => "or_ids.ids",
                };
                let mut out = Vec::with_capacity(rules.len());
                for (i, r) in rules.iter().enumerate() {
                    if let Some(m) =
                        Self::compile(r, &format!("{path}.{field}[{i}]"), principal, err)
                    {
                        out.push(m);
                    }
                }
                if out.len() != rules.len() {
                    return None;
                }
                if out.len() == 1 {
                    // A one-rule and/or is that rule: one pointer hop less per decision.
                    return out.pop();
                }
                if matches!(rule, Rule::And(_)) {
                    Self::And(out)
                } else {
                    Self::Or(out)
                }
            }
            Rule::Not(inner) => {
                let field = if principal { "not_id" } else { "not_rule" };
                Self::Not(Box::new(Self::compile(
                    inner,
                    &join_path(path, field),
                    principal,
                    err,
                )?))
            }
            // An empty (deprecated) exact_match compiles to "any value", as in Envoy.
            Rule::Header(h) => {
                Self::Header(CompiledHeader::compile(h, &join_path(path, "header"), err)?)
            }
            Rule::UrlPath(None) => {
                err.invalid(join_path(path, "url_path.path"), "is required");
                return None;
            }
            Rule::UrlPath(Some(m)) => {
                Self::UrlPath(compile_string(m, &join_path(path, "url_path.path"), err)?)
            }
            Rule::DestinationIp(c) => {
                Self::DestinationIp(Cidr::compile(c, &join_path(path, "destination_ip"), err)?)
            }
            Rule::DestinationPort(p) => {
                if *p > 65535 {
                    err.invalid(join_path(path, "destination_port"), "must be at most 65535");
                    return None;
                }
                Self::DestinationPort(*p)
            }
            Rule::DestinationPortRange(s, e) => {
                let p = join_path(path, "destination_port_range");
                // Envoy's PortRangeMatcher constructor checks.
                if !(0..=65536).contains(s) {
                    err.invalid(&p, format!("range start {s} is out of bounds"));
                    return None;
                }
                if !(0..=65536).contains(e) {
                    err.invalid(&p, format!("range end {e} is out of bounds"));
                    return None;
                }
                if s >= e {
                    err.invalid(
                        &p,
                        format!("range start {s} cannot be greater or equal than range end {e}"),
                    );
                    return None;
                }
                Self::DestinationPortRange(*s, *e)
            }
            Rule::RequestedServerName(m) => Self::RequestedServerName(compile_string(
                m,
                &join_path(path, "requested_server_name"),
                err,
            )?),
            Rule::Authenticated(None) => Self::Authenticated(None),
            Rule::Authenticated(Some(m)) => Self::Authenticated(Some(compile_string(
                m,
                &join_path(path, "authenticated.principal_name"),
                err,
            )?)),
            Rule::SourceIp(c) => {
                Self::SourceIp(Cidr::compile(c, &join_path(path, "source_ip"), err)?)
            }
            Rule::DirectRemoteIp(c) => {
                Self::DirectRemoteIp(Cidr::compile(c, &join_path(path, "direct_remote_ip"), err)?)
            }
            Rule::RemoteIp(c) => {
                Self::RemoteIp(Cidr::compile(c, &join_path(path, "remote_ip"), err)?)
            }
            Rule::UriTemplate(t) => {
                // The route engine's URI template matcher: one implementation, checked
                // against Envoy by both differential tests.
                use crate::route::uri_template::{compile, TemplateError};
                let p = join_path(path, "uri_template.typed_config.path_template");
                match compile(t) {
                    Ok(re) => Self::UriTemplate(t.clone(), Box::new(re)),
                    Err(TemplateError::Invalid(e)) => {
                        err.invalid(p, format!("{t:?}: {e}"));
                        return None;
                    }
                    Err(TemplateError::Unsupported(e)) => {
                        err.unsupported(p, format!("{t:?}: {e}"));
                        return None;
                    }
                }
            }
            Rule::Metadata(m) => {
                let p = join_path(path, "metadata");
                if m.filter.is_empty() {
                    err.invalid(join_path(&p, "filter"), "must not be empty");
                }
                if m.path.is_empty() {
                    err.invalid(join_path(&p, "path"), "must have at least 1 item");
                }
                if m.path.iter().any(String::is_empty) {
                    err.invalid(join_path(&p, "path"), "keys must not be empty");
                }
                let Some(v) = &m.value else {
                    err.invalid(join_path(&p, "value"), "is required");
                    return None;
                };
                let value = ValueTest::compile(v, &join_path(&p, "value"), err)?;
                if m.filter.is_empty() || m.path.is_empty() || m.path.iter().any(String::is_empty) {
                    return None;
                }
                Self::Metadata(CompiledMetadata {
                    filter: m.filter.clone(),
                    path: m.path.clone(),
                    value,
                    invert: m.invert,
                })
            }
            // Already reported while decoding.
            Rule::Unset | Rule::Unsupported => return None,
        })
    }

    /// Envoy's Matcher::matches for this rule.
    pub fn matches(&self, a: &Attributes<'_>) -> bool {
        match self {
            Self::Any => true,
            Self::And(ms) => ms.iter().all(|m| m.matches(a)),
            Self::Or(ms) => ms.iter().any(|m| m.matches(a)),
            Self::Not(m) => !m.matches(a),
            Self::Header(h) => header_matches(h, a),
            Self::UrlPath(m) => a.url_path().is_some_and(|p| m.matches(p)),
            Self::DestinationIp(c) => c.contains(a.destination_ip),
            Self::DestinationPort(p) => a.destination_port.is_some_and(|d| u32::from(d) == *p),
            Self::DestinationPortRange(s, e) => a
                .destination_port
                .is_some_and(|d| *s <= i32::from(d) && i32::from(d) < *e),
            Self::RequestedServerName(m) => m.matches(a.sni),
            Self::Authenticated(name) => {
                if !a.tls {
                    return false;
                }
                let Some(m) = name else {
                    return true;
                };
                // URI SANs, then DNS SANs, then the subject (Envoy's AuthenticatedMatcher).
                a.uri_sans.iter().any(|s| m.matches(s))
                    || a.dns_sans.iter().any(|s| m.matches(s))
                    || m.matches(a.subject)
            }
            Self::SourceIp(c) => c.contains(a.source_ip),
            Self::DirectRemoteIp(c) => c.contains(a.direct_remote_ip),
            Self::RemoteIp(c) => c.contains(a.remote_ip),
            Self::Metadata(m) => m.matches(a.metadata),
            Self::UriTemplate(_, re) => a.url_path().is_some_and(|p| re.full_match(p)),
        }
    }

    /// A short description, for `explain`.
    pub fn describe(&self) -> String {
        let list = |ms: &[Matcher], op: &str| {
            let parts: Vec<String> = ms.iter().map(Matcher::describe).collect();
            format!("({})", parts.join(op))
        };
        match self {
            Self::Any => "any".to_string(),
            Self::And(ms) => list(ms, " and "),
            Self::Or(ms) => list(ms, " or "),
            Self::Not(m) => format!("not {}", m.describe()),
            Self::Header(h) => h.describe(),
            Self::UrlPath(m) => format!("url_path {}", m.describe()),
            Self::DestinationIp(c) => format!("destination_ip {}", c.describe()),
            Self::DestinationPort(p) => format!("destination_port {p}"),
            Self::DestinationPortRange(s, e) => format!("destination_port in [{s}, {e})"),
            Self::RequestedServerName(m) => format!("requested_server_name {}", m.describe()),
            Self::Authenticated(None) => "authenticated (any TLS connection)".to_string(),
            Self::Authenticated(Some(m)) => format!("authenticated principal {}", m.describe()),
            Self::SourceIp(c) => format!("source_ip {}", c.describe()),
            Self::DirectRemoteIp(c) => format!("direct_remote_ip {}", c.describe()),
            Self::RemoteIp(c) => format!("remote_ip {}", c.describe()),
            Self::UriTemplate(t, _) => format!("uri_template {t:?}"),
            Self::Metadata(m) => format!(
                "{}metadata {}{} {}",
                if m.invert { "not " } else { "" },
                m.filter,
                m.path.iter().map(|k| format!(".{k}")).collect::<String>(),
                m.value.describe()
            ),
        }
    }
}

/// The RBAC action, as in envoy.config.rbac.v3.RBAC.Action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
    Log,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Self::Allow => "ALLOW",
            Self::Deny => "DENY",
            Self::Log => "LOG",
        }
    }
}

/// A policy's permissions or principals. Istio's policies have one of each: kept inline in
/// the policy then, one pointer (and likely cache miss) less per decision.
#[derive(Debug, Clone)]
pub enum Matchers {
    One([Matcher; 1]),
    Many(Vec<Matcher>),
}

impl From<Vec<Matcher>> for Matchers {
    fn from(mut v: Vec<Matcher>) -> Self {
        match (v.pop(), v.is_empty()) {
            (Some(m), true) => Self::One([m]),
            (Some(m), false) => {
                v.push(m);
                Self::Many(v)
            }
            (None, _) => Self::Many(v),
        }
    }
}

impl std::ops::Deref for Matchers {
    type Target = [Matcher];

    fn deref(&self) -> &[Matcher] {
        match self {
            Self::One(m) => m,
            Self::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    pub name: String,
    pub permissions: Matchers,
    pub principals: Matchers,
}

impl CompiledPolicy {
    /// Index of the first matching permission and principal, when the policy matches.
    fn matched(&self, a: &Attributes<'_>) -> Option<(usize, usize)> {
        let perm = self.permissions.iter().position(|m| m.matches(a))?;
        let princ = self.principals.iter().position(|m| m.matches(a))?;
        Some((perm, princ))
    }

    pub fn matches(&self, a: &Attributes<'_>) -> bool {
        self.permissions.iter().any(|m| m.matches(a))
            && self.principals.iter().any(|m| m.matches(a))
    }
}

/// One RBAC engine (enforced or shadow): its action and policies in name order.
#[derive(Debug, Clone)]
pub struct Engine {
    pub action: Action,
    pub policies: Vec<CompiledPolicy>,
    index: Index,
}

/// What one engine decides: allowed, and the effective policy (index into `policies`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineDecision {
    pub allowed: bool,
    pub policy: Option<usize>,
}

/// Why one policy matched or not, for `explain`.
#[derive(Debug, Clone)]
pub struct PolicyExplanation {
    pub policy: usize,
    /// (permission index, principal index) of the first that matched.
    pub matched: Option<(usize, usize)>,
    pub reason: String,
}

impl Engine {
    fn compile(rbac: &Rbac, path: &str, err: &mut CoreError) -> Option<Self> {
        let action = match rbac.action {
            0 => Action::Allow,
            1 => Action::Deny,
            _ => Action::Log,
        };
        let before = err.errors.len();
        let mut policies = Vec::with_capacity(rbac.policies.len());
        // BTreeMap iteration is byte-wise name order, the order of Envoy's std::map.
        for (name, p) in &rbac.policies {
            if let Some(c) = compile_policy(
                name,
                p,
                &join_path(path, &format!("policies[{name:?}]")),
                err,
            ) {
                policies.push(c);
            }
        }
        if err.errors.len() != before {
            return None;
        }
        let index = Index::build(&policies);
        Some(Self {
            action,
            policies,
            index,
        })
    }

    /// The first matching policy in name order.
    pub fn first_match(&self, a: &Attributes<'_>) -> Option<usize> {
        self.index.first_match(&self.policies, a)
    }

    /// Envoy's RoleBasedAccessControlEngineImpl::handleAction.
    pub fn decide(&self, a: &Attributes<'_>) -> EngineDecision {
        let policy = self.first_match(a);
        let allowed = match self.action {
            Action::Allow => policy.is_some(),
            Action::Deny => policy.is_none(),
            Action::Log => true,
        };
        EngineDecision { allowed, policy }
    }

    /// Every policy in name order with why it matched or not (no index: all are evaluated).
    pub fn explain(&self, a: &Attributes<'_>) -> Vec<PolicyExplanation> {
        self.policies
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let perm = p.permissions.iter().position(|m| m.matches(a));
                let princ = p.principals.iter().position(|m| m.matches(a));
                let reason = match (perm, princ) {
                    (Some(x), Some(y)) => format!(
                        "permissions[{x}] {} and principals[{y}] {} match",
                        p.permissions[x].describe(),
                        p.principals[y].describe()
                    ),
                    (None, _) => format!(
                        "no permission matches: {}",
                        p.permissions
                            .iter()
                            .enumerate()
                            .map(|(j, m)| format!("permissions[{j}] {}", m.describe()))
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                    (Some(_), None) => format!(
                        "no principal matches: {}",
                        p.principals
                            .iter()
                            .enumerate()
                            .map(|(j, m)| format!("principals[{j}] {}", m.describe()))
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                };
                PolicyExplanation {
                    policy: i,
                    matched: p.matched(a),
                    reason,
                }
            })
            .collect()
    }

    /// How many policies the index left for a full check (for tests and benchmarks).
    pub fn candidates(&self, a: &Attributes<'_>) -> usize {
        self.index.candidates(a).len()
    }
}

fn compile_policy(
    name: &str,
    p: &Policy,
    path: &str,
    err: &mut CoreError,
) -> Option<CompiledPolicy> {
    let before = err.errors.len();
    let mut permissions = Vec::with_capacity(p.permissions.len());
    for (i, r) in p.permissions.iter().enumerate() {
        if let Some(m) = Matcher::compile(r, &format!("{path}.permissions[{i}]"), false, err) {
            permissions.push(m);
        }
    }
    let mut principals = Vec::with_capacity(p.principals.len());
    for (i, r) in p.principals.iter().enumerate() {
        if let Some(m) = Matcher::compile(r, &format!("{path}.principals[{i}]"), true, err) {
            principals.push(m);
        }
    }
    if err.errors.len() != before {
        return None;
    }
    Some(CompiledPolicy {
        name: name.to_string(),
        permissions: Matchers::from(permissions),
        principals: Matchers::from(principals),
    })
}

/// Envoy's network filter refuses header rules anywhere in a permission or principal (there
/// are no headers on a TCP connection); other HTTP rules are accepted and never match.
fn no_header_rules(rule: &Rule, path: &str, principal: bool, err: &mut CoreError) {
    match rule {
        Rule::Header(_) => err.invalid(
            join_path(path, "header"),
            "header rules are not supported by the RBAC network filter",
        ),
        Rule::And(rs) | Rule::Or(rs) => {
            let field = match (rule, principal) {
                (Rule::And(_), false) => "and_rules.rules",
                (Rule::And(_), true) => "and_ids.ids",
                (_, false) => "or_rules.rules",
                (_, true) => "or_ids.ids",
            };
            for (i, r) in rs.iter().enumerate() {
                no_header_rules(r, &format!("{path}.{field}[{i}]"), principal, err);
            }
        }
        Rule::Not(r) => {
            let field = if principal { "not_id" } else { "not_rule" };
            no_header_rules(r, &join_path(path, field), principal, err);
        }
        _ => {}
    }
}

/// The decision of the RBAC HTTP filter: enforced, and shadow (None without shadow rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub policy: Option<usize>,
    pub shadow_allowed: Option<bool>,
    pub shadow_policy: Option<usize>,
}

/// A compiled RBAC filter config: enforced rules and shadow rules.
#[derive(Debug, Clone)]
pub struct CompiledRbac {
    /// None: the filter has no rules and allows everything.
    pub rules: Option<Engine>,
    pub shadow_rules: Option<Engine>,
    pub rules_stat_prefix: String,
    pub shadow_rules_stat_prefix: String,
    /// The network (TCP) filter: it sees no HTTP request, so HTTP attributes are dropped.
    pub network: bool,
}

/// Which RBAC message a buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RbacMessage {
    /// envoy.extensions.filters.http.rbac.v3.RBAC (enforced and shadow rules).
    HttpFilter,
    /// envoy.extensions.filters.network.rbac.v3.RBAC (the TCP filter: no HTTP attributes).
    NetworkFilter,
    /// envoy.config.rbac.v3.RBAC (enforced rules, no shadow).
    Rbac,
}

impl CompiledRbac {
    /// Compiles envoy.extensions.filters.network.rbac.v3.RBAC bytes (the TCP filter).
    pub fn from_network_filter_bytes(buf: &[u8]) -> Result<Self, CoreError> {
        Self::compile(buf, RbacMessage::NetworkFilter, ENVOY_MAX_PROGRAM_SIZE)
    }

    /// Compiles envoy.extensions.filters.http.rbac.v3.RBAC bytes.
    pub fn from_filter_bytes(buf: &[u8]) -> Result<Self, CoreError> {
        Self::compile(buf, RbacMessage::HttpFilter, ENVOY_MAX_PROGRAM_SIZE)
    }

    /// Compiles envoy.config.rbac.v3.RBAC bytes (enforced rules, no shadow).
    pub fn from_rbac_bytes(buf: &[u8]) -> Result<Self, CoreError> {
        Self::compile(buf, RbacMessage::Rbac, ENVOY_MAX_PROGRAM_SIZE)
    }

    /// Compiles `message` from its bytes; regexes may compile to at most `max_program_size`
    /// RE2 instructions (Envoy's runtime `re2.max_program_size.error_level`, 100 by default).
    pub fn compile(
        buf: &[u8],
        message: RbacMessage,
        max_program_size: u64,
    ) -> Result<Self, CoreError> {
        let mut err = CoreError::with_max_program_size(max_program_size);
        // Field paths: the filters nest their RBAC messages in `rules` / `shadow_rules`.
        let (f, rules_path) = match message {
            RbacMessage::HttpFilter => (decode_rbac_filter(buf, &mut err), "rules"),
            RbacMessage::NetworkFilter => {
                let f = crate::proto::rbac::decode_network_rbac_filter(buf, &mut err);
                for (name, r) in [("rules", &f.rules), ("shadow_rules", &f.shadow_rules)] {
                    for (policy, p) in r.iter().flat_map(|r| &r.policies) {
                        let at = format!("{name}.policies[{policy:?}]");
                        for (i, rule) in p.permissions.iter().enumerate() {
                            let path = format!("{at}.permissions[{i}]");
                            no_header_rules(rule, &path, false, &mut err);
                        }
                        for (i, rule) in p.principals.iter().enumerate() {
                            let path = format!("{at}.principals[{i}]");
                            no_header_rules(rule, &path, true, &mut err);
                        }
                    }
                }
                (f, "rules")
            }
            RbacMessage::Rbac => {
                let rules = Some(decode_rbac(buf, "", &mut err));
                let f = crate::proto::rbac::RbacFilter {
                    rules,
                    ..Default::default()
                };
                (f, "")
            }
        };
        if !err.is_empty() {
            return Err(err);
        }
        let rules = f
            .rules
            .as_ref()
            .and_then(|r| Engine::compile(r, rules_path, &mut err));
        let shadow_rules = f
            .shadow_rules
            .as_ref()
            .and_then(|r| Engine::compile(r, "shadow_rules", &mut err));
        err.into_result(Self {
            rules,
            shadow_rules,
            rules_stat_prefix: f.rules_stat_prefix,
            shadow_rules_stat_prefix: f.shadow_rules_stat_prefix,
            network: message == RbacMessage::NetworkFilter,
        })
    }

    pub fn evaluate(&self, a: &Attributes<'_>) -> Decision {
        if self.network {
            // Envoy's network filter matches against an empty header map.
            let tcp = Attributes {
                method: None,
                path: None,
                authority: None,
                scheme: None,
                headers: &[],
                ..*a
            };
            return self.evaluate_attributes(&tcp);
        }
        self.evaluate_attributes(a)
    }

    fn evaluate_attributes(&self, a: &Attributes<'_>) -> Decision {
        let (allowed, policy) = match &self.rules {
            Some(e) => {
                let d = e.decide(a);
                (d.allowed, d.policy)
            }
            None => (true, None),
        };
        let (shadow_allowed, shadow_policy) = match &self.shadow_rules {
            Some(e) => {
                let d = e.decide(a);
                (Some(d.allowed), d.policy)
            }
            None => (None, None),
        };
        Decision {
            allowed,
            policy,
            shadow_allowed,
            shadow_policy,
        }
    }

    /// The enforced policy's name for a decision.
    pub fn policy_name(&self, d: &Decision) -> Option<&str> {
        let e = self.rules.as_ref()?;
        e.policies.get(d.policy?).map(|p| p.name.as_str())
    }

    pub fn shadow_policy_name(&self, d: &Decision) -> Option<&str> {
        let e = self.shadow_rules.as_ref()?;
        e.policies.get(d.shadow_policy?).map(|p| p.name.as_str())
    }
}
