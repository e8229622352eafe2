//! Request attributes shared by the route table and RBAC.
//!
//! Borrowed, not owned: the Python glue hands us `&str` views into the caller's strings, so a
//! decision allocates nothing unless a header is repeated (Envoy joins repeated values).

use std::borrow::Cow;

/// One HTTP request as the router sees it (after the connection manager's normalisation).
#[derive(Debug, Clone, Copy, Default)]
pub struct Request<'a> {
    /// `:authority` (the Host header in HTTP/1.1), possibly with a port.
    pub authority: &'a str,
    /// `:path`, with the query string if any.
    pub path: &'a str,
    /// `:method`.
    pub method: &'a str,
    /// `:scheme`; empty means "http".
    pub scheme: &'a str,
    /// Regular headers in arrival order; names in any case, repeated names allowed.
    pub headers: &'a [(&'a str, &'a str)],
}

impl<'a> Request<'a> {
    /// Every value of header `name` (lower case), joined with "," as Envoy's
    /// `getAllOfHeaderAsString` does; `None` when absent. Pseudo-headers come from the request
    /// line fields.
    pub fn header(&self, name: &str) -> Option<Cow<'a, str>> {
        // Envoy keeps HTTP/1's Host as :authority, and a lookup of "host" finds it.
        let name = if name.eq_ignore_ascii_case("host") {
            ":authority"
        } else {
            name
        };
        if let Some(pseudo) = name.strip_prefix(':') {
            return match pseudo {
                "authority" => Some(Cow::Borrowed(self.authority)),
                "path" => Some(Cow::Borrowed(self.path)),
                "method" => Some(Cow::Borrowed(self.method)),
                "scheme" => Some(Cow::Borrowed(if self.scheme.is_empty() {
                    "http"
                } else {
                    self.scheme
                })),
                _ => None,
            };
        }
        let mut found: Option<Cow<'a, str>> = None;
        for (n, v) in self.headers {
            if n.eq_ignore_ascii_case(name) {
                found = Some(match found {
                    None => Cow::Borrowed(*v),
                    Some(prev) => {
                        let mut s = prev.into_owned();
                        s.push(',');
                        s.push_str(v);
                        Cow::Owned(s)
                    }
                });
            }
        }
        found
    }

    /// Each value of header `name` (lower case), in arrival order; pseudo-headers come from
    /// the request line fields.
    pub fn header_values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a str> + 's {
        let name = if name.eq_ignore_ascii_case("host") {
            ":authority"
        } else {
            name
        };
        let pseudo = if name.starts_with(':') {
            match self.header(name) {
                Some(std::borrow::Cow::Borrowed(v)) => Some(v),
                _ => None,
            }
        } else {
            None
        };
        let regular = (!name.starts_with(':'))
            .then_some(self.headers.iter())
            .into_iter()
            .flatten()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v);
        pseudo.into_iter().chain(regular)
    }

    /// Whether header `name` is present at all.
    pub fn has_header(&self, name: &str) -> bool {
        if name.starts_with(':') || name.eq_ignore_ascii_case("host") {
            return self.header(name).is_some();
        }
        self.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }
}

/// The position of the first byte `a` or `b` in `s`, a word at a time (every decision on a
/// path scans it, for '?' and '#'). A byte equal to `a` becomes a zero byte of `w ^ (LO * a)`;
/// the classic zero-byte test marks it with its high bit, exactly for the lowest such byte
/// (borrows only run upward).
pub fn find_either(s: &[u8], a: u8, b: u8) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let zero_bytes = |v: u64| v.wrapping_sub(LO) & !v & HI;
    let mut words = s.chunks_exact(8);
    let mut at = 0;
    for c in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let w = u64::from_le_bytes(w);
        let hit = zero_bytes(w ^ (LO * u64::from(a))) | zero_bytes(w ^ (LO * u64::from(b)));
        if hit != 0 {
            return Some(at + (hit.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let rest = words.remainder();
    rest.iter().position(|&c| c == a || c == b).map(|i| at + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_headers_join_with_commas() {
        let headers = [("X-A", "1"), ("x-b", "2"), ("x-a", "3")];
        let r = Request {
            headers: &headers,
            ..Request::default()
        };
        assert_eq!(r.header("x-a").as_deref(), Some("1,3"));
        assert_eq!(r.header("x-b").as_deref(), Some("2"));
        assert_eq!(r.header("x-c"), None);
        assert_eq!(r.header(":scheme").as_deref(), Some("http"));
        let r = Request {
            authority: "a.com",
            ..r
        };
        assert_eq!(r.header("host").as_deref(), Some("a.com"));
        assert!(r.has_header("Host"));
    }
}
