//! Compiled string and header matchers with Envoy's semantics, shared by routes and RBAC.

use crate::error::{join_path, CoreError};
use crate::proto::matcher::{HeaderMatcher, HeaderSpecifier, StringMatcher, StringPattern};
use crate::regex::Re2Regex;
use crate::request::Request;

/// A compiled envoy.type.matcher.v3.StringMatcher.
#[derive(Debug, Clone)]
pub enum CompiledString {
    Exact {
        value: String,
        ignore_case: bool,
    },
    Prefix {
        value: String,
        ignore_case: bool,
    },
    Suffix {
        value: String,
        ignore_case: bool,
    },
    /// `value` is lower-cased up front when ignoring case.
    Contains {
        value: String,
        ignore_case: bool,
    },
    Regex(Box<Re2Regex>),
}

fn starts_with_ignore_case(s: &str, p: &str) -> bool {
    s.len() >= p.len() && s.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
}

fn ends_with_ignore_case(s: &str, p: &str) -> bool {
    s.len() >= p.len() && s.as_bytes()[s.len() - p.len()..].eq_ignore_ascii_case(p.as_bytes())
}

impl CompiledString {
    /// Compiles `m` (found at `path`), collecting problems in `err`.
    pub fn compile(m: &StringMatcher, path: &str, err: &mut CoreError) -> Option<Self> {
        let non_empty = |field: &str, v: &str, err: &mut CoreError| {
            if v.is_empty() {
                err.invalid(join_path(path, field), "must not be empty");
            }
        };
        let ic = m.ignore_case;
        Some(match &m.pattern {
            None => {
                err.invalid(
                    path,
                    "one of exact, prefix, suffix, safe_regex, contains is required",
                );
                return None;
            }
            Some(StringPattern::Exact(v)) => Self::Exact {
                value: v.clone(),
                ignore_case: ic,
            },
            Some(StringPattern::Prefix(v)) => {
                non_empty("prefix", v, err);
                Self::Prefix {
                    value: v.clone(),
                    ignore_case: ic,
                }
            }
            Some(StringPattern::Suffix(v)) => {
                non_empty("suffix", v, err);
                Self::Suffix {
                    value: v.clone(),
                    ignore_case: ic,
                }
            }
            Some(StringPattern::Contains(v)) => {
                non_empty("contains", v, err);
                Self::Contains {
                    value: if ic {
                        v.to_ascii_lowercase()
                    } else {
                        v.clone()
                    },
                    ignore_case: ic,
                }
            }
            Some(StringPattern::SafeRegex(r)) => {
                if ic {
                    // Envoy rejects the combination rather than silently ignoring the flag.
                    err.invalid(
                        join_path(path, "ignore_case"),
                        "ignore_case has no effect for safe_regex",
                    );
                }
                Self::Regex(Box::new(compile_regex(
                    &r.regex,
                    &join_path(path, "safe_regex.regex"),
                    err,
                )?))
            }
        })
    }

    pub fn matches(&self, s: &str) -> bool {
        match self {
            Self::Exact { value, ignore_case } => {
                if *ignore_case {
                    value.eq_ignore_ascii_case(s)
                } else {
                    value == s
                }
            }
            Self::Prefix { value, ignore_case } => {
                if *ignore_case {
                    starts_with_ignore_case(s, value)
                } else {
                    s.starts_with(value.as_str())
                }
            }
            Self::Suffix { value, ignore_case } => {
                if *ignore_case {
                    ends_with_ignore_case(s, value)
                } else {
                    s.ends_with(value.as_str())
                }
            }
            Self::Contains { value, ignore_case } => {
                if *ignore_case {
                    s.to_ascii_lowercase().contains(value.as_str())
                } else {
                    s.contains(value.as_str())
                }
            }
            Self::Regex(r) => r.full_match(s),
        }
    }

    /// A short human description, for `explain`.
    pub fn describe(&self) -> String {
        let ic = |b: &bool| if *b { " (ignore case)" } else { "" };
        match self {
            Self::Exact { value, ignore_case } => format!("exact {value:?}{}", ic(ignore_case)),
            Self::Prefix { value, ignore_case } => format!("prefix {value:?}{}", ic(ignore_case)),
            Self::Suffix { value, ignore_case } => format!("suffix {value:?}{}", ic(ignore_case)),
            Self::Contains { value, ignore_case } => {
                format!("contains {value:?}{}", ic(ignore_case))
            }
            Self::Regex(r) => format!("regex {:?}", r.pattern()),
        }
    }
}

/// Compiles an RE2 pattern found at `path` (the `regex` field itself).
pub fn compile_regex(pattern: &str, path: &str, err: &mut CoreError) -> Option<Re2Regex> {
    if pattern.is_empty() {
        err.invalid(path, "must not be empty");
        return None;
    }
    match Re2Regex::new(pattern) {
        Ok(r) => Some(r),
        Err(e) => {
            err.invalid(path, e);
            None
        }
    }
}

/// What a compiled header matcher tests on the (joined) header value.
#[derive(Debug, Clone)]
pub enum HeaderTest {
    /// present_match, or no specifier at all (Envoy treats that as "present").
    Present(bool),
    Range(i64, i64),
    Value(CompiledString),
}

/// A compiled envoy.config.route.v3.HeaderMatcher.
#[derive(Debug, Clone)]
pub struct CompiledHeader {
    /// Lower case, as Envoy stores header names.
    pub name: String,
    pub test: HeaderTest,
    pub invert: bool,
    pub treat_missing_as_empty: bool,
}

/// absl::SimpleAtoi for int64: ASCII whitespace around, an optional sign, decimal digits,
/// no overflow.
fn simple_atoi(s: &str) -> Option<i64> {
    let t = s.trim_matches(|c: char| c.is_ascii_whitespace());
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut v: i64 = 0;
    for b in digits.bytes() {
        let d = i64::from(b - b'0');
        v = v.checked_mul(10)?;
        v = if neg {
            v.checked_sub(d)?
        } else {
            v.checked_add(d)?
        };
    }
    Some(v)
}

impl CompiledHeader {
    pub fn compile(m: &HeaderMatcher, path: &str, err: &mut CoreError) -> Option<Self> {
        let before = err.errors.len();
        if m.name.is_empty() {
            err.invalid(join_path(path, "name"), "must not be empty");
        } else if !valid_header_name(&m.name) {
            err.invalid(join_path(path, "name"), "is not a valid HTTP header name");
        }
        let sm = |pattern: StringPattern| StringMatcher {
            pattern: Some(pattern),
            ignore_case: false,
        };
        let value = |m: StringMatcher, field: &str, err: &mut CoreError| {
            CompiledString::compile(&m, &join_path(path, field), err).map(HeaderTest::Value)
        };
        let test = match &m.specifier {
            None => Some(HeaderTest::Present(true)),
            Some(HeaderSpecifier::Present(p)) => Some(HeaderTest::Present(*p)),
            Some(HeaderSpecifier::Range(s, e)) => Some(HeaderTest::Range(*s, *e)),
            Some(HeaderSpecifier::Exact(v)) => {
                value(sm(StringPattern::Exact(v.clone())), "exact_match", err)
            }
            Some(HeaderSpecifier::Prefix(v)) => {
                if v.is_empty() {
                    err.invalid(join_path(path, "prefix_match"), "must not be empty");
                }
                Some(HeaderTest::Value(CompiledString::Prefix {
                    value: v.clone(),
                    ignore_case: false,
                }))
            }
            Some(HeaderSpecifier::Suffix(v)) => {
                if v.is_empty() {
                    err.invalid(join_path(path, "suffix_match"), "must not be empty");
                }
                Some(HeaderTest::Value(CompiledString::Suffix {
                    value: v.clone(),
                    ignore_case: false,
                }))
            }
            Some(HeaderSpecifier::Contains(v)) => {
                if v.is_empty() {
                    err.invalid(join_path(path, "contains_match"), "must not be empty");
                }
                Some(HeaderTest::Value(CompiledString::Contains {
                    value: v.clone(),
                    ignore_case: false,
                }))
            }
            Some(HeaderSpecifier::SafeRegex(r)) => {
                compile_regex(&r.regex, &join_path(path, "safe_regex_match.regex"), err)
                    .map(|r| HeaderTest::Value(CompiledString::Regex(Box::new(r))))
            }
            Some(HeaderSpecifier::StringMatch(s)) => value(s.clone(), "string_match", err),
        };
        if err.errors.len() != before {
            return None;
        }
        Some(Self {
            name: m.name.to_ascii_lowercase(),
            test: test?,
            invert: m.invert_match,
            treat_missing_as_empty: m.treat_missing_header_as_empty,
        })
    }

    /// Envoy's HeaderUtility::matchHeaders for one matcher.
    pub fn matches(&self, req: &Request<'_>) -> bool {
        if let HeaderTest::Present(want) = self.test {
            let present = req.has_header(&self.name);
            return (present == want) != self.invert;
        }
        let value = req.header(&self.name);
        let Some(value) = value.or_else(|| {
            self.treat_missing_as_empty
                .then_some(std::borrow::Cow::Borrowed(""))
        }) else {
            // Missing header: no match, inverted or not (the known trap).
            return false;
        };
        let hit = match &self.test {
            HeaderTest::Present(_) => true,
            HeaderTest::Range(s, e) => simple_atoi(&value).is_some_and(|v| v >= *s && v < *e),
            HeaderTest::Value(m) => m.matches(&value),
        };
        hit != self.invert
    }

    pub fn describe(&self) -> String {
        let what = match &self.test {
            HeaderTest::Present(true) => "present".to_string(),
            HeaderTest::Present(false) => "absent".to_string(),
            HeaderTest::Range(s, e) => format!("in range [{s}, {e})"),
            HeaderTest::Value(m) => m.describe(),
        };
        let inv = if self.invert { "not " } else { "" };
        format!("header {:?} {inv}{what}", self.name)
    }
}

/// RFC 7230 token characters (Envoy's HTTP_HEADER_NAME check, non-strict, also allows the
/// leading ':' of pseudo-headers).
fn valid_header_name(name: &str) -> bool {
    let body = name.strip_prefix(':').unwrap_or(name);
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl CompiledHeader {
    /// The matcher's test on one header value, before invert_match. RBAC matches each value
    /// of a repeated header on its own (Envoy 1.40 does: a value of "1,2" and two values
    /// "1" and "2" are different requests there).
    pub fn test_value(&self, value: &str) -> bool {
        match &self.test {
            HeaderTest::Present(p) => *p,
            HeaderTest::Range(s, e) => simple_atoi(value).is_some_and(|v| v >= *s && v < *e),
            HeaderTest::Value(m) => m.matches(value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(spec: Option<HeaderSpecifier>, invert: bool, missing_empty: bool) -> CompiledHeader {
        let m = HeaderMatcher {
            name: "X-A".into(),
            specifier: spec,
            invert_match: invert,
            treat_missing_header_as_empty: missing_empty,
        };
        let mut err = CoreError::new();
        let c = CompiledHeader::compile(&m, "h", &mut err);
        assert!(err.is_empty(), "{err}");
        c.expect("compiles")
    }

    #[test]
    fn inverted_matcher_does_not_match_missing_header_unless_treated_as_empty() {
        let none: [(&str, &str); 0] = [];
        let req = Request {
            headers: &none,
            ..Request::default()
        };
        let exact = || Some(HeaderSpecifier::Exact("v".into()));
        assert!(!header(exact(), true, false).matches(&req));
        assert!(header(exact(), true, true).matches(&req));
        assert!(!header(exact(), false, true).matches(&req));
        assert!(!header(None, false, false).matches(&req));
        assert!(header(None, true, false).matches(&req));
    }

    #[test]
    fn range_uses_simple_atoi() {
        let h = [("x-a", " 42 ")];
        let req = Request {
            headers: &h,
            ..Request::default()
        };
        assert!(header(Some(HeaderSpecifier::Range(0, 43)), false, false).matches(&req));
        assert!(!header(Some(HeaderSpecifier::Range(0, 42)), false, false).matches(&req));
        assert_eq!(simple_atoi("+7"), Some(7));
        assert_eq!(simple_atoi("-"), None);
        assert_eq!(simple_atoi("99999999999999999999"), None);
    }
}
