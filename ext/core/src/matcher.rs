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

/// Envoy's default cap on the size of a compiled RE2 program
/// (runtime `re2.max_program_size.error_level`).
pub const ENVOY_MAX_PROGRAM_SIZE: u64 = 100;

/// A lower bound on the number of instructions RE2 compiles `pattern` into (`None` when the
/// pattern is beyond what regex-syntax parses), calibrated on the sizes Envoy 1.40 reports:
/// every byte of a literal and every class costs at least one instruction, a capture two,
/// `^` and `\b` one (`$` none, a leading `^` none, and a repeated assertion counts once); `x{n,m}` is n copies of
/// x plus m-n optional copies that cost one more each, `x+` one more than x, `x*` as much as
/// x; an alternation costs the sum of its branches when they begin with distinct literal
/// bytes (nothing for RE2 to factor out) and its largest branch otherwise. Every program holds
/// a fail and a match instruction, plus a two-instruction `.*?` loop unless anchored at its
/// start. Being a lower bound, it never rejects a regex Envoy accepts.
pub fn re2_program_size_lower_bound(pattern: &str) -> Option<u64> {
    use regex_syntax::hir::{Hir, HirKind, Look};
    fn first_byte(h: &Hir) -> Option<u8> {
        match h.kind() {
            HirKind::Literal(l) => l.0.first().copied(),
            HirKind::Concat(v) => v.first().and_then(first_byte),
            _ => None,
        }
    }
    fn bound(h: &Hir) -> u64 {
        match h.kind() {
            HirKind::Empty => 0,
            HirKind::Look(l) => match l {
                Look::Start
                | Look::StartLF
                | Look::WordAscii
                | Look::WordAsciiNegate
                | Look::WordUnicode
                | Look::WordUnicodeNegate => 1,
                _ => 0,
            },
            HirKind::Literal(l) => l.0.len() as u64,
            HirKind::Class(_) => 1,
            HirKind::Repetition(r) => {
                let b = bound(&r.sub);
                if matches!(r.sub.kind(), HirKind::Look(_) | HirKind::Empty) {
                    return b;
                }
                let n = u64::from(r.min);
                match r.max {
                    None if n == 0 => b,
                    None => n.saturating_mul(b).saturating_add(1),
                    Some(m) => n
                        .saturating_mul(b)
                        .saturating_add(u64::from(m).saturating_sub(n).saturating_mul(b + 1)),
                }
            }
            HirKind::Capture(c) => bound(&c.sub).saturating_add(2),
            HirKind::Concat(v) => v.iter().map(bound).fold(0, u64::saturating_add),
            HirKind::Alternation(v) => {
                let mut firsts: Vec<Option<u8>> = v.iter().map(first_byte).collect();
                let all_literal = firsts.iter().all(Option::is_some);
                firsts.sort_unstable();
                firsts.dedup();
                if all_literal && firsts.len() == v.len() {
                    v.iter().map(bound).fold(0, u64::saturating_add)
                } else {
                    v.iter().map(bound).max().unwrap_or(0)
                }
            }
        }
    }
    fn anchored_start(h: &Hir) -> bool {
        match h.kind() {
            HirKind::Look(Look::Start) => true,
            HirKind::Concat(v) => v.first().is_some_and(anchored_start),
            HirKind::Capture(c) => anchored_start(&c.sub),
            _ => false,
        }
    }
    let hir = regex_syntax::ParserBuilder::new()
        .build()
        .parse(pattern)
        .ok()?;
    // A leading `^` becomes RE2's anchor flag, not an instruction: it was counted as one
    // above, so the anchored overhead is one less (checked against Envoy 1.40: "^[a-z]{98}"
    // is 100, "^[a-z]{99}" is 101).
    let overhead = if anchored_start(&hir) { 1 } else { 4 };
    Some(bound(&hir).saturating_add(overhead))
}

/// Compiles an RE2 pattern found at `path` (the `regex` field itself), with Envoy's limits.
pub fn compile_regex(pattern: &str, path: &str, err: &mut CoreError) -> Option<Re2Regex> {
    if pattern.is_empty() {
        err.invalid(path, "must not be empty");
        return None;
    }
    match Re2Regex::new(pattern) {
        Ok(r) => {
            let limit = err.max_program_size.unwrap_or(ENVOY_MAX_PROGRAM_SIZE);
            if let Some(size) = re2_program_size_lower_bound(pattern) {
                if size > limit {
                    err.invalid(
                        path,
                        format!(
                            "RE2 program size of at least {size} > the max program size of \
                             {limit} (Envoy's runtime re2.max_program_size.error_level)"
                        ),
                    );
                    return None;
                }
            }
            Some(r)
        }
        Err(e) => {
            err.invalid(path, e);
            None
        }
    }
}

/// What a compiled header matcher tests on the (joined) header value.
#[derive(Debug, Clone)]
pub enum HeaderTest {
    /// present_match, or no specifier at all: compares presence (a missing header counts as
    /// present when treated as empty) with the flag.
    Present(bool),
    /// The legacy empty exact_match: any value matches, and a missing header follows the
    /// usual missing-header rule (observed on Envoy 1.40).
    Any,
    Range(i64, i64),
    Value(CompiledString),
}

/// The request-line pseudo-headers, named once at compile time so that a match on them does
/// not compare (or even load) the header name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PseudoHeader {
    Method,
    Path,
    Authority,
    Scheme,
}

impl PseudoHeader {
    pub fn of(name: &str) -> Option<Self> {
        match name {
            ":method" => Some(Self::Method),
            ":path" => Some(Self::Path),
            ":authority" => Some(Self::Authority),
            ":scheme" => Some(Self::Scheme),
            _ => None,
        }
    }
}

/// A compiled envoy.config.route.v3.HeaderMatcher.
#[derive(Debug, Clone)]
pub struct CompiledHeader {
    /// Lower case, as Envoy stores header names.
    pub name: String,
    /// `name` when it is a request-line pseudo-header.
    pub pseudo: Option<PseudoHeader>,
    pub test: HeaderTest,
    pub invert: bool,
    pub treat_missing_as_empty: bool,
}

/// absl::SimpleAtoi for int64: ASCII whitespace around, an optional sign, decimal digits,
/// no overflow.
pub fn simple_atoi(s: &str) -> Option<i64> {
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
            err.invalid(join_path(path, "name"), "must not contain NUL, CR or LF");
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
            Some(HeaderSpecifier::Exact(v)) if v.is_empty() => Some(HeaderTest::Any),
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
        let name = m.name.to_ascii_lowercase();
        Some(Self {
            pseudo: PseudoHeader::of(&name),
            name,
            test: test?,
            invert: m.invert_match,
            treat_missing_as_empty: m.treat_missing_header_as_empty,
        })
    }

    /// The test on one (present) header value, before `invert_match`; presence tests are
    /// the caller's (RBAC shares this: its pseudo-headers may be absent).
    pub fn test_value(&self, value: &str) -> bool {
        match &self.test {
            HeaderTest::Present(_) | HeaderTest::Any => true,
            HeaderTest::Range(s, e) => simple_atoi(value).is_some_and(|v| v >= *s && v < *e),
            HeaderTest::Value(m) => m.matches(value),
        }
    }

    /// Envoy's HeaderUtility::matchHeaders for one matcher: a repeated header matches when
    /// any one of its values does (then `invert_match` applies to that answer).
    pub fn matches(&self, req: &Request<'_>) -> bool {
        if let HeaderTest::Present(want) = self.test {
            let present = self.treat_missing_as_empty || req.has_header(&self.name);
            return (present == want) != self.invert;
        }
        let mut present = false;
        let mut hit = false;
        for v in req.header_values(&self.name) {
            present = true;
            if self.test_value(v) {
                hit = true;
                break;
            }
        }
        if !present {
            if !self.treat_missing_as_empty {
                // Missing header: no match, inverted or not (the known trap).
                return false;
            }
            hit = self.test_value("");
        }
        hit != self.invert
    }

    pub fn describe(&self) -> String {
        let what = match &self.test {
            HeaderTest::Present(true) | HeaderTest::Any => "present".to_string(),
            HeaderTest::Present(false) => "absent".to_string(),
            HeaderTest::Range(s, e) => format!("in range [{s}, {e})"),
            HeaderTest::Value(m) => m.describe(),
        };
        let inv = if self.invert { "not " } else { "" };
        format!("header {:?} {inv}{what}", self.name)
    }
}

/// Envoy's non-strict HTTP_HEADER_NAME rule (what it accepts in a HeaderMatcher): no NUL,
/// CR or LF. Envoy 1.40 accepts "x y", so we must too.
fn valid_header_name(name: &str) -> bool {
    !name.contains(['\0', '\r', '\n'])
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
        // No specifier means present; missing-as-empty counts as present (Envoy 1.40).
        assert!(!header(None, false, false).matches(&req));
        assert!(header(None, true, false).matches(&req));
        assert!(header(None, false, true).matches(&req));
        assert!(!header(None, true, true).matches(&req));
        // present_match compares presence with the flag.
        assert!(header(Some(HeaderSpecifier::Present(false)), false, false).matches(&req));
        assert!(header(Some(HeaderSpecifier::Present(true)), true, false).matches(&req));
        // An empty exact_match matches any value but never a missing header, inverted or not.
        let empty = || Some(HeaderSpecifier::Exact(String::new()));
        assert!(!header(empty(), true, false).matches(&req));
        let h = [("x-a", "10")];
        let with = Request {
            headers: &h,
            ..Request::default()
        };
        assert!(header(empty(), false, false).matches(&with));
    }

    #[test]
    fn program_size_lower_bound_matches_envoys_figures() {
        // Envoy 1.40 reports exactly these sizes.
        let size = re2_program_size_lower_bound;
        assert_eq!(size("[a-z]{1000}"), Some(1004));
        assert_eq!(size("(a|b|c|d|e|f|g|h|i|j){100}"), Some(304));
        assert_eq!(size("((a{100}){10})"), Some(1026));
        assert_eq!(size("^[a-z]{98}"), Some(100));
        assert_eq!(size("^[a-z]{99}"), Some(101));
        assert_eq!(size("[a-z]{97}$"), Some(101));
        assert_eq!(size(r"\b[a-z]{97}"), Some(102));
        assert_eq!(size("(?m)^[a-z]{97}"), Some(102));
        assert_eq!(size("a*[a-z]{97}"), Some(102));
        for (suffix, cost) in [
            ("a?", 2),
            ("a*", 1),
            ("a+", 2),
            ("(?:a){0,5}", 10),
            ("(?:a){2,5}", 8),
            ("(?:a){2,}", 3),
            ("(?:ab|cd)", 4),
            ("(a|bc)", 5),
            ("(?:ab|cd|ef)", 6),
            ("(?:$){3}", 0),
            ("(?:^){3}", 1),
            ("(?:ab)?", 3),
            ("(?:ab)*", 2),
            ("(?:ab){0,3}", 9),
            (r"\b\b", 2),
        ] {
            assert_eq!(
                size(&format!("[a-z]{{97}}{suffix}")),
                Some(101 + cost),
                "{suffix}"
            );
        }
        assert!(re2_program_size_lower_bound(r"/api/v\d+/users/[^/]+").is_some_and(|s| s < 30));
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
