//! Decoders for the matcher messages shared by routes and RBAC:
//! envoy.type.matcher.v3.{StringMatcher,RegexMatcher}, envoy.type.v3.Int64Range and
//! envoy.config.route.v3.HeaderMatcher.

use super::wire::{field_path, unknown_field, walk, Field};
use crate::error::CoreError;

/// envoy.type.matcher.v3.RegexMatcher (google_re2 is the only engine and carries nothing we use).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegexMatcher {
    pub regex: String,
}

pub fn decode_regex_matcher(buf: &[u8], path: &str, err: &mut CoreError) -> RegexMatcher {
    let mut out = RegexMatcher::default();
    walk(buf, path, err, |n, value, err| match n {
        // google_re2 (deprecated): its max_program_size is validated by Envoy only when set.
        1 => {
            let p = field_path(path, "google_re2");
            let inner = Field::at(&p, value).bytes(err);
            if !inner.is_empty() {
                err.unsupported(p, "google_re2.max_program_size is not supported");
            }
        }
        2 => out.regex = Field::at(&field_path(path, "regex"), value).string(err),
        _ => unknown_field(err, path, "RegexMatcher", n),
    });
    out
}

/// The pattern of an envoy.type.matcher.v3.StringMatcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringPattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    SafeRegex(RegexMatcher),
    Contains(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StringMatcher {
    pub pattern: Option<StringPattern>,
    pub ignore_case: bool,
}

pub fn decode_string_matcher(buf: &[u8], path: &str, err: &mut CoreError) -> StringMatcher {
    let mut out = StringMatcher::default();
    walk(buf, path, err, |n, value, err| {
        let s =
            |name: &str, err: &mut CoreError| Field::at(&field_path(path, name), value).string(err);
        match n {
            1 => out.pattern = Some(StringPattern::Exact(s("exact", err))),
            2 => out.pattern = Some(StringPattern::Prefix(s("prefix", err))),
            3 => out.pattern = Some(StringPattern::Suffix(s("suffix", err))),
            5 => {
                let p = field_path(path, "safe_regex");
                let b = Field::at(&p, value).bytes(err);
                out.pattern = Some(StringPattern::SafeRegex(decode_regex_matcher(b, &p, err)));
            }
            6 => out.ignore_case = Field::at(&field_path(path, "ignore_case"), value).bool(err),
            7 => out.pattern = Some(StringPattern::Contains(s("contains", err))),
            8 => err.unsupported(
                field_path(path, "custom"),
                "custom string matcher extensions are not supported",
            ),
            _ => unknown_field(err, path, "StringMatcher", n),
        }
    });
    out
}

/// envoy.type.v3.Int64Range: [start, end).
pub fn decode_int64_range(buf: &[u8], path: &str, err: &mut CoreError) -> (i64, i64) {
    let (mut start, mut end) = (0i64, 0i64);
    walk(buf, path, err, |n, value, err| match n {
        1 => start = Field { path, value }.i64(err),
        2 => end = Field { path, value }.i64(err),
        _ => unknown_field(err, path, "Int64Range", n),
    });
    (start, end)
}

/// How an envoy.config.route.v3.HeaderMatcher tests the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderSpecifier {
    Exact(String),
    SafeRegex(RegexMatcher),
    Range(i64, i64),
    Present(bool),
    Prefix(String),
    Suffix(String),
    Contains(String),
    StringMatch(StringMatcher),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderMatcher {
    pub name: String,
    pub specifier: Option<HeaderSpecifier>,
    pub invert_match: bool,
    pub treat_missing_header_as_empty: bool,
}

pub fn decode_header_matcher(buf: &[u8], path: &str, err: &mut CoreError) -> HeaderMatcher {
    let mut out = HeaderMatcher::default();
    walk(buf, path, err, |n, value, err| {
        let f = |name: &str| (field_path(path, name), value);
        match n {
            1 => {
                let (p, v) = f("name");
                out.name = Field::at(&p, v).string(err);
            }
            4 => {
                let (p, v) = f("exact_match");
                out.specifier = Some(HeaderSpecifier::Exact(Field::at(&p, v).string(err)));
            }
            11 => {
                let (p, v) = f("safe_regex_match");
                let b = Field::at(&p, v).bytes(err);
                out.specifier = Some(HeaderSpecifier::SafeRegex(decode_regex_matcher(b, &p, err)));
            }
            6 => {
                let (p, v) = f("range_match");
                let b = Field::at(&p, v).bytes(err);
                let (s, e) = decode_int64_range(b, &p, err);
                out.specifier = Some(HeaderSpecifier::Range(s, e));
            }
            7 => {
                let (p, v) = f("present_match");
                out.specifier = Some(HeaderSpecifier::Present(Field::at(&p, v).bool(err)));
            }
            9 => {
                let (p, v) = f("prefix_match");
                out.specifier = Some(HeaderSpecifier::Prefix(Field::at(&p, v).string(err)));
            }
            10 => {
                let (p, v) = f("suffix_match");
                out.specifier = Some(HeaderSpecifier::Suffix(Field::at(&p, v).string(err)));
            }
            12 => {
                let (p, v) = f("contains_match");
                out.specifier = Some(HeaderSpecifier::Contains(Field::at(&p, v).string(err)));
            }
            13 => {
                let (p, v) = f("string_match");
                let b = Field::at(&p, v).bytes(err);
                out.specifier = Some(HeaderSpecifier::StringMatch(decode_string_matcher(
                    b, &p, err,
                )));
            }
            8 => {
                let (p, v) = f("invert_match");
                out.invert_match = Field::at(&p, v).bool(err);
            }
            14 => {
                let (p, v) = f("treat_missing_header_as_empty");
                out.treat_missing_header_as_empty = Field::at(&p, v).bool(err);
            }
            _ => unknown_field(err, path, "HeaderMatcher", n),
        }
    });
    out
}
