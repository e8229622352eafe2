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
        if name.starts_with(':') {
            return self.header(name).is_some();
        }
        self.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }
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
    }
}
