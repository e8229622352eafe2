//! Compiled Envoy route tables: RouteConfiguration bytes in, first-match decisions out.
//!
//! Virtual hosts are found through hash maps (exact domains, then suffix and prefix wildcards
//! grouped by length, longest first). Within a virtual host, routes are indexed by what their
//! path specifier pins down (exact paths in a hash map, case-sensitive prefixes in a trie of
//! path segments); the index only proposes candidates, in table order, and the full route
//! condition is always checked, so the first-match order of Envoy is kept.

mod index;
pub mod normalize;
mod slots;
pub mod uri_template;

use std::borrow::Cow;
use std::collections::HashMap;

use crate::error::{join_path, CoreError};
use crate::fasthash::FastMap;
use crate::matcher::{compile_regex, CompiledHeader, CompiledString};
use crate::proto::route::{
    decode_route_configuration, Action, PathSpecifier, QuerySpecifier, RouteMatch,
};
use crate::regex::Re2Regex;
use crate::request::Request;
use index::{RouteIndex, PATH_SUFFICES};
use normalize::{normalize_host, normalize_path, path_for_matching, port_start};
pub use normalize::{EscapedSlashes, HcmOptions};

/// How a route's path is tested (already validated).
#[derive(Debug, Clone)]
pub enum PathMatch {
    Prefix {
        value: String,
        ignore_case: bool,
    },
    Exact {
        value: String,
        ignore_case: bool,
    },
    Regex(Box<Re2Regex>),
    Separated {
        value: String,
        ignore_case: bool,
    },
    /// A URI template, translated to a regex; the template is kept for explanations.
    Template(Box<Re2Regex>, String),
}

impl PathMatch {
    fn matches(&self, p: &str) -> bool {
        let eq = |a: &str, b: &str, ic: bool| {
            if ic {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        };
        match self {
            Self::Prefix { value, ignore_case } => {
                p.len() >= value.len()
                    && p.is_char_boundary(value.len())
                    && eq(&p[..value.len()], value, *ignore_case)
            }
            Self::Exact { value, ignore_case } => eq(p, value, *ignore_case),
            Self::Regex(r) | Self::Template(r, _) => r.full_match(p),
            Self::Separated { value, ignore_case } => {
                let n = value.len();
                p.len() >= n
                    && (p.len() == n || p.as_bytes()[n] == b'/')
                    && p.is_char_boundary(n)
                    && eq(&p[..n], value, *ignore_case)
            }
        }
    }

    fn describe(&self) -> String {
        let ic = |b: &bool| if *b { " (case-insensitive)" } else { "" };
        match self {
            Self::Prefix { value, ignore_case } => format!("prefix {value:?}{}", ic(ignore_case)),
            Self::Exact { value, ignore_case } => format!("path {value:?}{}", ic(ignore_case)),
            Self::Regex(r) => format!("safe_regex {:?}", r.pattern()),
            Self::Template(_, t) => format!("path_template {t:?}"),
            Self::Separated { value, ignore_case } => {
                format!("path_separated_prefix {value:?}{}", ic(ignore_case))
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct CompiledQuery {
    pub name: String,
    /// None: present; Some(Err(b)): present_match b; Some(Ok(m)): the first value matches m.
    pub test: Option<Result<CompiledString, bool>>,
}

impl CompiledQuery {
    fn matches(&self, query: &str) -> bool {
        // Envoy keeps the first value of a repeated key and does not percent-decode.
        let value = query
            .split('&')
            .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
            .find(|(k, _)| *k == self.name)
            .map(|(_, v)| v);
        match (&self.test, value) {
            // present_match: false matches exactly when the parameter is absent.
            (Some(Err(present)), None) => !*present,
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(Err(present)), Some(_)) => *present,
            (Some(Ok(m)), Some(v)) => m.matches(v),
        }
    }

    fn describe(&self) -> String {
        match &self.test {
            None | Some(Err(true)) => format!("query parameter {:?} present", self.name),
            Some(Err(false)) => format!("query parameter {:?} present_match false", self.name),
            Some(Ok(m)) => format!("query parameter {:?} {}", self.name, m.describe()),
        }
    }
}

/// One compiled route.
#[derive(Debug, Clone)]
pub struct CompiledRoute {
    pub name: String,
    pub virtual_host: usize,
    pub path: PathMatch,
    pub headers: Vec<CompiledHeader>,
    pub query: Vec<CompiledQuery>,
    pub grpc: bool,
    /// runtime_fraction at 0%: the route never matches.
    pub never: bool,
    pub action: Option<Action>,
    /// The serialized Route message.
    pub proto: Vec<u8>,
}

/// Why a route did not match (or `None` when it did).
fn route_failure(r: &CompiledRoute, req: &Request<'_>, path: &str, p: &str) -> Option<String> {
    let p = r.path_input(path, p);
    if !r.path.matches(p) {
        return Some(format!("{} does not match {p:?}", r.path.describe()));
    }
    for h in &r.headers {
        if !h.matches(req) {
            return Some(format!("{} failed", h.describe()));
        }
    }
    if !r.query.is_empty() {
        let q = path.find('?').map_or("", |i| &path[i + 1..]);
        for m in &r.query {
            if !m.matches(q) {
                return Some(format!("{} failed", m.describe()));
            }
        }
    }
    if r.grpc && !is_grpc(req) {
        return Some("grpc: content-type is not application/grpc".to_string());
    }
    if r.never {
        return Some("runtime_fraction is 0%".to_string());
    }
    None
}

fn is_grpc(req: &Request<'_>) -> bool {
    req.header("content-type").is_some_and(|ct| {
        ct.strip_prefix("application/grpc")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('+'))
    })
}

impl CompiledRoute {
    /// URI templates match the path without its query, path parameters and all (Envoy 1.40).
    fn path_input<'p>(&self, path: &'p str, p: &'p str) -> &'p str {
        if matches!(self.path, PathMatch::Template(..)) {
            path_for_matching(path)
        } else {
            p
        }
    }

    /// `p` is `path` as path matchers see it (see `matching_path`).
    fn matches(&self, req: &Request<'_>, path: &str, p: &str) -> bool {
        if self.never || !self.path.matches(self.path_input(path, p)) {
            return false;
        }
        self.headers.iter().all(|h| h.matches(req))
            && (self.query.is_empty() || {
                let q = path.find('?').map_or("", |i| &path[i + 1..]);
                self.query.iter().all(|m| m.matches(q))
            })
            && (!self.grpc || is_grpc(req))
    }
}

/// One compiled virtual host.
#[derive(Debug, Clone)]
pub struct CompiledVirtualHost {
    pub name: String,
    pub domains: Vec<String>,
    /// Global indices of its routes: `first_route .. first_route + route_count`.
    pub first_route: usize,
    pub route_count: usize,
    index: RouteIndex,
}

/// How the virtual host was chosen, for `explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostChoice {
    Exact(String),
    Suffix(String),
    Prefix(String),
    Default,
}

/// The domain key a virtual host was found by (borrowed from the table).
enum HostKey<'t> {
    Exact(&'t str),
    /// The suffix after '*'.
    Suffix(&'t str),
    /// The prefix before '*'.
    Prefix(&'t str),
    Default,
}

impl HostKey<'_> {
    fn choice(&self) -> HostChoice {
        match self {
            Self::Exact(d) => HostChoice::Exact((*d).to_string()),
            Self::Suffix(d) => HostChoice::Suffix(format!("*{d}")),
            Self::Prefix(d) => HostChoice::Prefix(format!("{d}*")),
            Self::Default => HostChoice::Default,
        }
    }
}

/// A compiled RouteConfiguration.
#[derive(Debug, Clone)]
pub struct CompiledRouteTable {
    pub name: String,
    pub virtual_hosts: Vec<CompiledVirtualHost>,
    pub routes: Vec<CompiledRoute>,
    pub options: HcmOptions,
    pub ignore_port_in_host_matching: bool,
    pub ignore_path_parameters_in_path_matching: bool,
    /// vhost_header (lower case): virtual hosts are chosen by this header's first value.
    pub vhost_header: Option<String>,
    exact: FastMap<Box<str>, u32>,
    /// (wildcard key length, key -> vhost), longest first. Suffix keys keep their leading
    /// character after the '*' (".foo.com"), prefix keys their trailing one ("foo.").
    suffixes: Vec<(usize, FastMap<Box<str>, u32>)>,
    prefixes: Vec<(usize, FastMap<Box<str>, u32>)>,
    default: Option<u32>,
}

/// The result of explaining one request.
#[derive(Debug, Clone)]
pub struct Explanation {
    pub authority: String,
    pub path: Option<String>,
    pub virtual_host: Option<usize>,
    pub host_choice: Option<HostChoice>,
    /// (global route index, failure reason or None for the match), in order up to the match.
    pub routes: Vec<(usize, Option<String>)>,
    pub route: Option<usize>,
}

fn valid_path_separated_prefix(p: &str) -> bool {
    // ^[^?#]+[^?#/]$
    !p.is_empty() && !p.contains(['?', '#']) && !p.ends_with('/')
}

fn compile_match(m: &RouteMatch, path: &str, err: &mut CoreError) -> Option<(PathMatch, bool)> {
    let ic = !m.case_sensitive.unwrap_or(true);
    let pm = match &m.path_specifier {
        None => {
            err.invalid(
                path,
                "a path specifier (prefix, path, safe_regex, path_separated_prefix) is required",
            );
            return None;
        }
        Some(PathSpecifier::Prefix(v)) => PathMatch::Prefix {
            value: v.clone(),
            ignore_case: ic,
        },
        Some(PathSpecifier::Path(v)) => PathMatch::Exact {
            value: v.clone(),
            ignore_case: ic,
        },
        Some(PathSpecifier::PathSeparatedPrefix(v)) => {
            if !valid_path_separated_prefix(v) {
                err.invalid(
                    join_path(path, "path_separated_prefix"),
                    "must not be empty, contain '?' or '#', or end with '/'",
                );
            }
            PathMatch::Separated {
                value: v.clone(),
                ignore_case: ic,
            }
        }
        Some(PathSpecifier::UriTemplate(t)) => {
            let at = join_path(path, "path_match_policy.typed_config.path_template");
            match uri_template::compile(t) {
                Ok(r) => PathMatch::Template(Box::new(r), t.clone()),
                Err(uri_template::TemplateError::Invalid(e)) => {
                    err.invalid(at, e);
                    return None;
                }
                Err(uri_template::TemplateError::Unsupported(e)) => {
                    err.unsupported(at, e);
                    return None;
                }
            }
        }
        Some(PathSpecifier::SafeRegex(r)) => PathMatch::Regex(Box::new(compile_regex(
            &r.regex,
            &join_path(path, "safe_regex.regex"),
            err,
        )?)),
    };
    let never = match m.runtime_fraction {
        None => false,
        Some((num, den)) => {
            let denominator: u32 = match den {
                0 => 100,
                1 => 10_000,
                2 => 1_000_000,
                _ => {
                    err.invalid(
                        join_path(path, "runtime_fraction.default_value.denominator"),
                        format!("unknown denominator {den}"),
                    );
                    return None;
                }
            };
            if num == 0 {
                true
            } else if num >= denominator {
                false
            } else {
                err.unsupported(
                    join_path(path, "runtime_fraction"),
                    "only 0% and 100% runtime fractions are supported (others are random)",
                );
                return None;
            }
        }
    };
    Some((pm, never))
}

impl CompiledRouteTable {
    /// Decodes and compiles a serialized RouteConfiguration; every problem is reported.
    pub fn from_bytes(buf: &[u8], options: HcmOptions) -> Result<Self, CoreError> {
        Self::compile(buf, options, crate::matcher::ENVOY_MAX_PROGRAM_SIZE)
    }

    /// As [`from_bytes`](Self::from_bytes), with regexes allowed up to `max_program_size`
    /// RE2 instructions (Envoy's runtime `re2.max_program_size.error_level`, 100 by default).
    pub fn compile(
        buf: &[u8],
        options: HcmOptions,
        max_program_size: u64,
    ) -> Result<Self, CoreError> {
        let mut err = CoreError::with_max_program_size(max_program_size);
        let config = decode_route_configuration(buf, &mut err);
        let mut table = CompiledRouteTable {
            name: config.name.clone(),
            virtual_hosts: Vec::with_capacity(config.virtual_hosts.len()),
            routes: Vec::new(),
            options,
            ignore_port_in_host_matching: config.ignore_port_in_host_matching,
            ignore_path_parameters_in_path_matching: config.ignore_path_parameters_in_path_matching,
            vhost_header: (!config.vhost_header.is_empty())
                .then(|| config.vhost_header.to_ascii_lowercase()),
            exact: FastMap::default(),
            suffixes: Vec::new(),
            prefixes: Vec::new(),
            default: None,
        };
        let mut suffixes: HashMap<usize, FastMap<Box<str>, u32>> = HashMap::new();
        let mut prefixes: HashMap<usize, FastMap<Box<str>, u32>> = HashMap::new();
        for (vi, vh) in config.virtual_hosts.iter().enumerate() {
            let vpath = format!("virtual_hosts[{vi}]");
            if vh.name.is_empty() {
                err.invalid(join_path(&vpath, "name"), "must not be empty");
            }
            if vh.domains.is_empty() {
                err.invalid(
                    join_path(&vpath, "domains"),
                    "at least one domain is required",
                );
            }
            let v = vi as u32;
            for (di, d) in vh.domains.iter().enumerate() {
                let dpath = format!("{vpath}.domains[{di}]");
                let lower = d.to_ascii_lowercase();
                let dup = if lower == "*" {
                    let dup = table.default.is_some();
                    if dup {
                        err.invalid(&dpath, "only a single wildcard domain \"*\" is permitted");
                    }
                    table.default = Some(v);
                    false
                } else if let Some(key) = lower.strip_prefix('*') {
                    suffixes
                        .entry(key.len())
                        .or_default()
                        .insert(key.into(), v)
                        .is_some()
                } else if let Some(key) = lower.strip_suffix('*') {
                    prefixes
                        .entry(key.len())
                        .or_default()
                        .insert(key.into(), v)
                        .is_some()
                } else {
                    table.exact.insert(lower.as_str().into(), v).is_some()
                };
                if dup {
                    err.invalid(
                        &dpath,
                        format!("duplicate domain {lower:?}: domains must be unique across virtual hosts"),
                    );
                }
            }
            let first_route = table.routes.len();
            let mut index = RouteIndex::default();
            for (ri, r) in vh.routes.iter().enumerate() {
                let rpath = format!("{vpath}.routes[{ri}]");
                let before = err.errors.len();
                if r.action.is_none() {
                    err.invalid(
                        &rpath,
                        "an action (route, redirect, direct_response, ...) is required",
                    );
                }
                if let Some(Action {
                    kind: crate::proto::route::ActionKind::DirectResponse(d),
                    ..
                }) = &r.action
                {
                    if !(200..600).contains(&d.status) {
                        err.invalid(
                            join_path(&rpath, "direct_response.status"),
                            "must be in [200, 600)",
                        );
                    }
                }
                let Some(m) = &r.route_match else {
                    err.invalid(join_path(&rpath, "match"), "is required");
                    continue;
                };
                let mpath = join_path(&rpath, "match");
                let compiled = compile_match(m, &mpath, &mut err);
                let headers: Vec<CompiledHeader> = m
                    .headers
                    .iter()
                    .enumerate()
                    .filter_map(|(hi, h)| {
                        CompiledHeader::compile(h, &format!("{mpath}.headers[{hi}]"), &mut err)
                    })
                    .collect();
                let mut query = Vec::with_capacity(m.query_parameters.len());
                for (qi, q) in m.query_parameters.iter().enumerate() {
                    let qpath = format!("{mpath}.query_parameters[{qi}]");
                    if q.name.is_empty() || q.name.len() > 1024 {
                        err.invalid(join_path(&qpath, "name"), "must be 1 to 1024 bytes long");
                    }
                    let test = match &q.specifier {
                        None => None,
                        Some(QuerySpecifier::Present(b)) => Some(Err(*b)),
                        Some(QuerySpecifier::StringMatch(s)) => {
                            CompiledString::compile(s, &join_path(&qpath, "string_match"), &mut err)
                                .map(Ok)
                        }
                    };
                    query.push(CompiledQuery {
                        name: q.name.clone(),
                        test,
                    });
                }
                if err.errors.len() != before {
                    continue;
                }
                let Some((path, never)) = compiled else {
                    continue;
                };
                let id = match u32::try_from(table.routes.len()) {
                    Ok(id) if id < PATH_SUFFICES => id,
                    _ => {
                        err.invalid(&rpath, "more than 2^31 routes");
                        continue;
                    }
                };
                if !never {
                    let path_suffices = headers.is_empty() && query.is_empty() && !m.grpc;
                    index.add(id, &path, path_suffices);
                }
                table.routes.push(CompiledRoute {
                    name: r.name.clone(),
                    virtual_host: vi,
                    path,
                    headers,
                    query,
                    grpc: m.grpc,
                    never,
                    action: r.action.clone(),
                    proto: r.proto.clone(),
                });
            }
            index.finish();
            table.virtual_hosts.push(CompiledVirtualHost {
                name: vh.name.clone(),
                domains: vh.domains.clone(),
                first_route,
                route_count: table.routes.len() - first_route,
                index,
            });
        }
        let mut s: Vec<_> = suffixes.into_iter().collect();
        s.sort_by_key(|e| std::cmp::Reverse(e.0));
        table.suffixes = s;
        let mut p: Vec<_> = prefixes.into_iter().collect();
        p.sort_by_key(|e| std::cmp::Reverse(e.0));
        table.prefixes = p;
        err.into_result(table)
    }

    /// The virtual host for a request whose :authority is already normalised: by
    /// `vhost_header` when the configuration names one (its first value; no header, no
    /// virtual host), else by the authority. Checked against Envoy 1.40, including that a
    /// table with only "*" needs no header.
    pub fn select_virtual_host(
        &self,
        authority: &str,
        req: &Request<'_>,
    ) -> Option<(usize, HostChoice)> {
        self.select(authority, req).map(|(v, k)| (v, k.choice()))
    }

    fn select(&self, authority: &str, req: &Request<'_>) -> Option<(usize, HostKey<'_>)> {
        if let Some(h) = &self.vhost_header {
            if !self.only_default() {
                return self.lookup_host(req.header_values(h).next()?);
            }
        }
        self.lookup_host(authority)
    }

    fn only_default(&self) -> bool {
        self.exact.is_empty() && self.suffixes.is_empty() && self.prefixes.is_empty()
    }

    /// Envoy's RouteMatcher::findVirtualHost on a host value (authority or vhost_header).
    pub fn find_virtual_host(&self, authority: &str) -> Option<(usize, HostChoice)> {
        self.lookup_host(authority).map(|(v, k)| (v, k.choice()))
    }

    /// As `find_virtual_host`, naming the matched domain by the table's own key (no
    /// allocation on the request path).
    fn lookup_host(&self, authority: &str) -> Option<(usize, HostKey<'_>)> {
        // Only a "*" virtual host: no need to look at the authority (Envoy's fast path too).
        if self.only_default() {
            return self.default.map(|v| (v as usize, HostKey::Default));
        }
        let mut host = authority;
        if self.ignore_port_in_host_matching {
            if let Some(p) = port_start(host) {
                host = &host[..p];
            }
        }
        // Domains are kept in lower case, so a hit on the host as given means it was in lower
        // case already (the usual request: no scan for upper case letters).
        if let Some((k, &v)) = self.exact.get_key_value(host) {
            return Some((v as usize, HostKey::Exact(k)));
        }
        let lower: Cow<'_, str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        };
        let host = lower.as_ref();
        if matches!(lower, Cow::Owned(_)) {
            if let Some((k, &v)) = self.exact.get_key_value(host) {
                return Some((v as usize, HostKey::Exact(k)));
            }
        }
        // The wildcard must cover at least one character ("*.foo.com" does not match ".foo.com").
        for (len, map) in &self.suffixes {
            if *len >= host.len() {
                continue;
            }
            let start = host.len() - len;
            if !host.is_char_boundary(start) {
                continue;
            }
            if let Some((k, &v)) = map.get_key_value(&host[start..]) {
                return Some((v as usize, HostKey::Suffix(k)));
            }
        }
        for (len, map) in &self.prefixes {
            if *len >= host.len() || !host.is_char_boundary(*len) {
                continue;
            }
            if let Some((k, &v)) = map.get_key_value(&host[..*len]) {
                return Some((v as usize, HostKey::Prefix(k)));
            }
        }
        self.default.map(|v| (v as usize, HostKey::Default))
    }

    /// The index (into `routes`) of the route Envoy would choose, or `None` (404, or a
    /// path the connection manager rejects).
    pub fn route(&self, req: &Request<'_>) -> Option<usize> {
        self.route_with(req, &self.options)
    }

    /// As [`route`](Self::route) with connection-manager options given per call.
    pub fn route_with(&self, req: &Request<'_>, o: &HcmOptions) -> Option<usize> {
        let path = normalize_path(req.path, o)?;
        self.route_normalized(req, o, &path)
    }

    /// As [`route`](Self::route) for a caller that found the path unchanged by the
    /// connection manager (`normalize::unchanged_by_normalisation` with this table's
    /// `merge_slashes`): the path is not scanned again.
    pub fn route_unchanged(&self, req: &Request<'_>) -> Option<usize> {
        self.route_normalized(req, &self.options, req.path)
    }

    fn route_normalized(&self, req: &Request<'_>, o: &HcmOptions, path: &str) -> Option<usize> {
        let authority = normalize_host(req.authority, o);
        let (vi, _) = self.select(authority, req)?;
        let vh = self.virtual_hosts.get(vi)?;
        let seen = Request {
            authority,
            path,
            ..*req
        };
        vh.index
            .first_match(&self.routes, &seen, path, &self.matching_path(path))
            .map(|i| i as usize)
    }

    /// What path matchers compare: no query string, and with
    /// ignore_path_parameters_in_path_matching no `;parameters` in any segment (each runs to
    /// the next '/'; checked against Envoy 1.40). URI templates see the path without this.
    fn matching_path<'p>(&self, path: &'p str) -> Cow<'p, str> {
        let p = path_for_matching(path);
        if !self.ignore_path_parameters_in_path_matching || !p.contains(';') {
            return Cow::Borrowed(p);
        }
        let mut out = String::with_capacity(p.len());
        for (i, seg) in p.split('/').enumerate() {
            if i > 0 {
                out.push('/');
            }
            out.push_str(seg.split(';').next().unwrap_or(""));
        }
        Cow::Owned(out)
    }

    /// The decision with its reasons: the virtual host and why, then every route of that
    /// virtual host up to the match with the condition that failed.
    pub fn explain(&self, req: &Request<'_>, o: &HcmOptions) -> Explanation {
        let authority = normalize_host(req.authority, o);
        let mut out = Explanation {
            authority: authority.to_string(),
            path: None,
            virtual_host: None,
            host_choice: None,
            routes: Vec::new(),
            route: None,
        };
        let Some((vi, choice)) = self.select_virtual_host(authority, req) else {
            return out;
        };
        out.virtual_host = Some(vi);
        out.host_choice = Some(choice);
        let Some(path) = normalize_path(req.path, o) else {
            return out;
        };
        out.path = Some(path.to_string());
        let seen = Request {
            authority,
            path: &path,
            ..*req
        };
        let Some(vh) = self.virtual_hosts.get(vi) else {
            return out;
        };
        for id in vh.first_route..vh.first_route + vh.route_count {
            let Some(r) = self.routes.get(id) else { break };
            let why = route_failure(r, &seen, &path, &self.matching_path(&path));
            let hit = why.is_none();
            out.routes.push((id, why));
            if hit {
                out.route = Some(id);
                break;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
