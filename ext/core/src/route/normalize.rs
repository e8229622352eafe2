//! What Envoy's HTTP connection manager does to `:path` and `:authority` before the router
//! sees them (ConnectionManagerUtility::maybeNormalizePath / maybeNormalizeHost).

use std::borrow::Cow;

use crate::request::find_either;

/// path_with_escaped_slashes_action values meshcore implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EscapedSlashes {
    /// KEEP_UNCHANGED, and IMPLEMENTATION_SPECIFIC_DEFAULT (Envoy's default keeps them).
    #[default]
    KeepUnchanged,
    /// UNESCAPE_AND_FORWARD: %2F and %5C (any case) become '/' and '\'.
    UnescapeAndForward,
    /// REJECT_REQUEST: a path with %2F or %5C (any case) is answered 400, never routed.
    RejectRequest,
}

/// The connection-manager options that change what the router sees.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HcmOptions {
    pub normalize_path: bool,
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
    pub strip_any_host_port: bool,
    /// strip_matching_host_port: strip the port only when it equals the listener's port.
    pub strip_matching_host_port: bool,
    pub listener_port: Option<u16>,
}

/// Envoy's HeaderUtility::getPortStart: the ':' that starts a port, skipping IPv6 literals.
pub fn port_start(host: &str) -> Option<usize> {
    let colon = host.rfind(':')?;
    match host.rfind(']') {
        Some(v6_end) if v6_end > colon => None,
        _ => Some(colon),
    }
}

/// The authority after strip_any_host_port / strip_matching_host_port.
/// Only a port that parses as a number is stripped ("a.com:" and "a.com:x" stay as they are).
pub fn normalize_host<'a>(host: &'a str, o: &HcmOptions) -> &'a str {
    if !o.strip_any_host_port && !o.strip_matching_host_port {
        return host;
    }
    let Some(p) = port_start(host) else {
        return host;
    };
    let port = crate::matcher::simple_atoi(&host[p + 1..])
        .filter(|v| (0..=i64::from(u32::MAX)).contains(v));
    match port {
        Some(_) if o.strip_any_host_port => &host[..p],
        Some(v) if o.listener_port.is_some_and(|l| i64::from(l) == v) => &host[..p],
        _ => host,
    }
}

fn split_query(path: &str) -> (&str, &str) {
    match path.find('?') {
        Some(q) => (&path[..q], &path[q..]),
        None => (path, ""),
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether the path (before any query) holds %2F or %5C, in either case.
fn has_escaped_slash(p: &str) -> bool {
    p.as_bytes().windows(3).any(|w| {
        w[0] == b'%'
            && ((w[1] == b'2' && (w[2] == b'f' || w[2] == b'F'))
                || (w[1] == b'5' && (w[2] == b'c' || w[2] == b'C')))
    })
}

fn unescape_slashes(path: &str) -> Cow<'_, str> {
    let (p, q) = split_query(path);
    let b = p.as_bytes();
    if !has_escaped_slash(p) {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let (h, l) = (b[i + 1], b[i + 2].to_ascii_lowercase());
            if h == b'2' && l == b'f' {
                out.push('/');
                i += 3;
                continue;
            }
            if h == b'5' && l == b'c' {
                out.push('\\');
                i += 3;
                continue;
            }
        }
        // Multi-byte UTF-8 is copied byte-run by byte-run via char boundaries.
        let ch_len = p[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&p[i..i + ch_len]);
        i += ch_len;
    }
    out.push_str(q);
    Cow::Owned(out)
}

/// Characters the URL path canonicaliser percent-encodes when they appear raw.
const fn needs_escape(b: u8) -> bool {
    b <= 0x20 || b >= 0x7f || matches!(b, b'"' | b'<' | b'>' | b'^' | b'`' | b'{' | b'|' | b'}')
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// normalize_path: RFC 3986 normalisation as Envoy's canonicalPath does it (escapes of
/// unreserved characters decoded, other escapes kept as written, dot segments removed).
/// `None` when Envoy rejects the path (400).
fn canonical_path(path: &str) -> Option<String> {
    let (p, q) = split_query(path);
    let b = p.as_bytes();
    let mut decoded: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            if let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                let v = h * 16 + l;
                if v == 0 {
                    return None;
                }
                if unreserved(v) {
                    decoded.push(v);
                } else {
                    decoded.extend_from_slice(&b[i..i + 3]);
                }
                i += 3;
                continue;
            }
            decoded.push(b'%');
        } else if c == b'\\' {
            // The URL canonicaliser treats a backslash as a path separator.
            decoded.push(b'/');
        } else if needs_escape(c) {
            decoded.extend_from_slice(format!("%{c:02X}").as_bytes());
        } else {
            decoded.push(c);
        }
        i += 1;
    }
    // Only ASCII remains (everything else was escaped).
    let s = String::from_utf8(decoded).ok()?;
    let body = s.strip_prefix('/')?;
    let segs: Vec<&str> = body.split('/').collect();
    let mut out: Vec<&str> = Vec::with_capacity(segs.len());
    for (n, seg) in segs.iter().enumerate() {
        let last = n + 1 == segs.len();
        match *seg {
            "." => {
                if last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if last {
                    out.push("");
                }
            }
            _ => out.push(seg),
        }
    }
    let mut res = String::with_capacity(path.len());
    res.push('/');
    res.push_str(&out.join("/"));
    res.push_str(q);
    Some(res)
}

/// merge_slashes, exactly as Envoy's PathUtil::mergeSlashes (including its edge cases).
fn merge_slashes(path: &str) -> Cow<'_, str> {
    let (p, q) = split_query(path);
    if !p.contains("//") {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    if p.starts_with('/') {
        out.push('/');
    }
    let segs: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
    out.push_str(&segs.join("/"));
    if p.ends_with('/') {
        out.push('/');
    }
    out.push_str(q);
    Cow::Owned(out)
}

/// Bytes the connection manager may change or reject (escaped or decoded by `normalize_path`,
/// '%' escapes, '\\' made '/', '#' rejected): [`unchanged_by_normalisation`]'s table.
const TOUCHED: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = needs_escape(c) || c == b'%' || c == b'\\' || c == b'#';
        b += 1;
    }
    t
};

/// True when no option of the connection manager changes or rejects `path` (no byte it
/// escapes, decodes or rejects, no dot segment, and no "//" when slashes are merged), so the
/// router sees it as given. One pass; it may say false for a path that would not change (a
/// segment such as "/.well-known"), never true for one that would.
pub fn unchanged_by_normalisation(path: &str, merge_slashes: bool) -> bool {
    let mut prev = 0u8;
    for &b in path.as_bytes() {
        if TOUCHED[usize::from(b)] || (prev == b'/' && (b == b'.' || (merge_slashes && b == b'/')))
        {
            return false;
        }
        prev = b;
    }
    true
}

/// The `:path` the router sees, or `None` when the connection manager would reject it.
pub fn normalize_path<'a>(path: &'a str, o: &HcmOptions) -> Option<Cow<'a, str>> {
    // Most requests: nothing to change, no allocation.
    if unchanged_by_normalisation(path, o.merge_slashes) {
        return Some(Cow::Borrowed(path));
    }
    normalize_path_in_full(path, o)
}

/// [`normalize_path`] without the check for a path it leaves as it is.
fn normalize_path_in_full<'a>(path: &'a str, o: &HcmOptions) -> Option<Cow<'a, str>> {
    // Envoy's connection manager rejects a path with a fragment (400) before routing.
    if find_either(path.as_bytes(), b'#', b'#').is_some() {
        return None;
    }
    let mut cur: Cow<'a, str> = Cow::Borrowed(path);
    if o.escaped_slashes == EscapedSlashes::RejectRequest && has_escaped_slash(split_query(path).0)
    {
        return None;
    }
    if o.escaped_slashes == EscapedSlashes::UnescapeAndForward {
        if let Cow::Owned(s) = unescape_slashes(&cur) {
            cur = Cow::Owned(s);
        }
    }
    if o.normalize_path && cur.starts_with('/') {
        cur = Cow::Owned(canonical_path(&cur)?);
    }
    if o.merge_slashes {
        if let Cow::Owned(s) = merge_slashes(&cur) {
            cur = Cow::Owned(s);
        }
    }
    Some(cur)
}

/// The path without query string, as the route matchers use it (a normalised path never
/// has a fragment: `normalize_path` rejects those).
pub fn path_for_matching(path: &str) -> &str {
    // This runs on every request: a word at a time.
    match find_either(path.as_bytes(), b'?', b'?') {
        Some(i) => &path[..i],
        None => path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str, normalize: bool, merge: bool) -> Option<String> {
        let o = HcmOptions {
            normalize_path: normalize,
            merge_slashes: merge,
            ..HcmOptions::default()
        };
        normalize_path(p, &o).map(Cow::into_owned)
    }

    #[test]
    fn dot_segments_and_slashes() {
        assert_eq!(norm("/a/../b", true, false).as_deref(), Some("/b"));
        assert_eq!(norm("/a/../b", false, false).as_deref(), Some("/a/../b"));
        assert_eq!(norm("//b", false, true).as_deref(), Some("/b"));
        assert_eq!(norm("//", false, true).as_deref(), Some("//"));
        assert_eq!(
            norm("/a/%2e%2E/b?x=/../", true, false).as_deref(),
            Some("/b?x=/../")
        );
        assert_eq!(norm("/%41%2f", true, false).as_deref(), Some("/A%2f"));
        assert_eq!(norm("/a/..", true, false).as_deref(), Some("/"));
        assert_eq!(norm("/..", true, false).as_deref(), Some("/"));
        assert_eq!(norm("/a%00", true, false), None);
        assert_eq!(norm("/a#f", false, false), None);
        assert_eq!(norm("/a\\b|^", true, false).as_deref(), Some("/a/b%7C%5E"));
    }

    /// Every path over an alphabet of the characters normalisation treats specially, up to 5
    /// characters: when the quick check says a path is unchanged, the full normalisation
    /// leaves it unchanged under every combination of options.
    #[test]
    fn unchanged_paths_are_unchanged_in_full() {
        let alphabet = ['/', '.', 'a', '%', '2', 'f', '#', '?', '\\', ' ', '|', 'é'];
        let mut paths = vec![String::new()];
        let mut all = Vec::new();
        for _ in 0..5 {
            let mut next = Vec::new();
            for p in &paths {
                for c in alphabet {
                    let mut q = p.clone();
                    q.push(c);
                    next.push(q);
                }
            }
            all.extend(next.iter().cloned());
            paths = next;
        }
        let mut unchanged = 0;
        for p in all
            .iter()
            .map(|p| format!("/{p}"))
            .chain(all.iter().cloned())
        {
            for merge in [false, true] {
                if !unchanged_by_normalisation(&p, merge) {
                    continue;
                }
                unchanged += 1;
                for normalize in [false, true] {
                    for escaped in [
                        EscapedSlashes::KeepUnchanged,
                        EscapedSlashes::UnescapeAndForward,
                        EscapedSlashes::RejectRequest,
                    ] {
                        let o = HcmOptions {
                            normalize_path: normalize,
                            merge_slashes: merge,
                            escaped_slashes: escaped,
                            ..HcmOptions::default()
                        };
                        assert_eq!(normalize_path_in_full(&p, &o).as_deref(), Some(p.as_str()));
                    }
                }
            }
        }
        assert!(unchanged > 1000);
    }

    #[test]
    fn hosts() {
        let any = HcmOptions {
            strip_any_host_port: true,
            ..HcmOptions::default()
        };
        assert_eq!(normalize_host("a.com:80", &any), "a.com");
        assert_eq!(normalize_host("[::1]", &any), "[::1]");
        assert_eq!(normalize_host("[::1]:8", &any), "[::1]");
        assert_eq!(normalize_host("a.com:", &any), "a.com:");
        assert_eq!(normalize_host("a.com:x", &any), "a.com:x");
        let matching = HcmOptions {
            strip_matching_host_port: true,
            listener_port: Some(80),
            ..HcmOptions::default()
        };
        assert_eq!(normalize_host("a.com:80", &matching), "a.com");
        assert_eq!(normalize_host("a.com:81", &matching), "a.com:81");
    }

    #[test]
    fn escaped_slashes() {
        let o = HcmOptions {
            escaped_slashes: EscapedSlashes::UnescapeAndForward,
            ..HcmOptions::default()
        };
        assert_eq!(
            normalize_path("/a%2Fb%5cc?q=%2F", &o).as_deref(),
            Some("/a/b\\c?q=%2F")
        );
    }
}
