//! `path_match_policy` with Envoy's URI template matcher
//! (envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig).
//!
//! Templates are translated into one RE2 pattern matched against the path without its query,
//! the way Envoy evaluates them: `*` is one non-empty path segment, `**` any number of
//! characters including '/', `{name}` / `{name=sub/pattern}` capture (we only need the match).

use crate::regex::Re2Regex;

/// Characters a template literal (and a `*` segment) may contain, per RFC 3986 pchar.
fn literal_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~%!$&'()+,;:@=".contains(c)
}

const SEGMENT: &str = r"[a-zA-Z0-9\-._~%!$&'()+,;:@=]+";
const TEXT: &str = r"[a-zA-Z0-9\-._~%!$&'()+,;:@=/]*";

fn escape_literal(s: &str, out: &mut String) {
    for c in s.chars() {
        if c.is_ascii_alphanumeric()
            || c == '/'
            || c == '~'
            || c == '%'
            || c == ','
            || c == ';'
            || c == ':'
            || c == '@'
            || c == '='
            || c == '!'
            || c == '&'
            || c == '\''
            || c == '_'
            || c == '-'
        {
            out.push(c);
        } else {
            out.push('\\');
            out.push(c);
        }
    }
}

/// Why a template was refused: Envoy rejects it too (`Invalid`), or Envoy accepts a form
/// whose meaning we have not pinned down against it (`Unsupported`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateError {
    Invalid(String),
    Unsupported(String),
}

fn invalid<T>(msg: impl Into<String>) -> Result<T, TemplateError> {
    Err(TemplateError::Invalid(msg.into()))
}

/// One `/`-separated piece of a (sub-)pattern: a literal, `*` or `**`.
fn segment_regex(seg: &str, out: &mut String) -> Result<(), TemplateError> {
    match seg {
        "*" => out.push_str(SEGMENT),
        "**" => out.push_str(TEXT),
        "" => return invalid("empty path segment (Envoy: invalid literal)"),
        lit => {
            if lit.contains('*') {
                // Envoy accepts "a*b" and "**.ts" but gives '*' inside a literal a meaning we
                // have not pinned down; refusing beats guessing.
                return Err(TemplateError::Unsupported(format!(
                    "'*' inside the literal segment {lit:?}"
                )));
            }
            if let Some(bad) = lit.chars().find(|c| !literal_char(*c)) {
                return invalid(format!("invalid character {bad:?} in literal {lit:?}"));
            }
            escape_literal(lit, out);
        }
    }
    Ok(())
}

/// Translates a path template into an anchored-by-`full_match` RE2 regex.
pub fn compile(template: &str) -> Result<Re2Regex, TemplateError> {
    let Some(body) = template.strip_prefix('/') else {
        return invalid("a path template must start with '/'");
    };
    if template.len() > 256 {
        return invalid("a path template must be at most 256 characters");
    }
    let mut out = String::from("/");
    let mut names: Vec<&str> = Vec::new();
    let mut rest = body;
    let mut first = true;
    while !rest.is_empty() {
        if !first {
            out.push('/');
        }
        first = false;
        // A segment is either a variable (possibly spanning several segments) or text up to '/'.
        if let Some(var) = rest.strip_prefix('{') {
            let Some(end) = var.find('}') else {
                return invalid("unterminated variable");
            };
            let inner = &var[..end];
            let (name, sub) = inner.split_once('=').unwrap_or((inner, "*"));
            let valid_name = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && name.len() <= 16;
            if !valid_name {
                return invalid(format!("invalid variable name {name:?}"));
            }
            if names.contains(&name) {
                return invalid(format!("repeated variable name {name:?}"));
            }
            names.push(name);
            if names.len() > 5 {
                return invalid("at most 5 variables are allowed");
            }
            out.push('(');
            for (i, seg) in sub.split('/').enumerate() {
                if i > 0 {
                    out.push('/');
                }
                segment_regex(seg, &mut out)?;
            }
            out.push(')');
            rest = &var[end + 1..];
            // A literal suffix may follow a variable ("{file=**}.ts").
            if !rest.is_empty() && !rest.starts_with('/') {
                let cut = rest.find('/').unwrap_or(rest.len());
                let suffix = &rest[..cut];
                if suffix.contains(['{', '}', '*']) {
                    return Err(TemplateError::Unsupported(format!(
                        "{suffix:?} after a variable"
                    )));
                }
                segment_regex(suffix, &mut out)?;
                rest = &rest[cut..];
            }
            if let Some(r) = rest.strip_prefix('/') {
                rest = r;
                if rest.is_empty() {
                    // A trailing '/' is literal: "/a/{x}/" matches "/a/b/".
                    out.push('/');
                }
            }
            continue;
        }
        let (seg, next) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        if seg.contains(['{', '}']) {
            return Err(TemplateError::Unsupported(format!(
                "a variable inside the segment {seg:?}"
            )));
        }
        segment_regex(seg, &mut out)?;
        if rest.contains('/') && next.is_empty() {
            // A trailing '/' is literal: "/foo/" matches "/foo/".
            out.push('/');
        }
        rest = next;
    }
    Re2Regex::new(&out).map_err(TemplateError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        let m = |t: &str, p: &str| compile(t).expect("compiles").full_match(p);
        assert!(m("/foo/{bar}", "/foo/x"));
        assert!(!m("/foo/{bar}", "/foo/x/y"));
        assert!(!m("/foo/{bar}", "/foo/"));
        assert!(m("/foo/**", "/foo/a/b"));
        assert!(m("/v/{p=a/*}/{rest=**}.ts", "/v/a/b/c/d.ts"));
        // Checked against Envoy 1.40: these are accepted, with these meanings.
        assert!(m("/foo/", "/foo/"));
        assert!(m("/", "/"));
        assert!(m("/**/a", "/x/a"));
        assert!(m("/a/{x=**}/b", "/a/x/y/b"));
        assert!(!m("/a.b", "/axb"));
        assert!(matches!(
            compile("/a*b"),
            Err(TemplateError::Unsupported(_))
        ));
        assert!(matches!(compile("/x//y"), Err(TemplateError::Invalid(_))));
        assert!(matches!(
            compile("/{a}/{a}"),
            Err(TemplateError::Invalid(_))
        ));
        assert!(matches!(compile("foo"), Err(TemplateError::Invalid(_))));
    }
}
