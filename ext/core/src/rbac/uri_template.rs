//! Envoy's URI template path matcher (envoy.path.match.uri_template), as RBAC's `uri_template`
//! permission uses it: the template is validated as Envoy does and turned into the same RE2
//! pattern (`{*}` one segment, `{**}` any rest, `{name=...}` variables, literal segments and
//! one literal suffix), then full-matched against the path without its query.

/// RFC 3986 pchar without `*` and `=` (Envoy's literal set).
const LITERAL: &str = "a-zA-Z0-9\\-._~%!$&'()+,;:@";
const MAX_VARIABLES: usize = 5;
const MAX_VARIABLE_NAME: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    PathGlob,
    TextGlob,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Op(Op),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Op(Op),
    Variable(String, Vec<Piece>),
}

fn valid_literal(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()+,;:@".contains(&b))
}

fn valid_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphabetic())
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// Up to the next '/', which must be a valid literal.
fn literal(rest: &str) -> Result<(String, &str), String> {
    let end = rest.find('/').unwrap_or(rest.len());
    let (lit, tail) = rest.split_at(end);
    if !valid_literal(lit) {
        return Err(format!("invalid literal {lit:?}"));
    }
    Ok((lit.to_string(), tail))
}

fn operator(rest: &str) -> (Op, &str) {
    match rest.strip_prefix("**") {
        Some(tail) => (Op::TextGlob, tail),
        None => (Op::PathGlob, rest.get(1..).unwrap_or("")),
    }
}

fn variable(rest: &str) -> Result<(Segment, &str), String> {
    let body = rest.get(1..).unwrap_or("");
    let Some((inner, tail)) = body.split_once('}') else {
        return Err("unmatched variable bracket".to_string());
    };
    let (name, matcher) = match inner.split_once('=') {
        Some((n, m)) => (n, Some(m)),
        None => (inner, None),
    };
    if !valid_name(name) {
        return Err(format!("invalid variable name {name:?}"));
    }
    let mut pieces = Vec::new();
    if let Some(mut m) = matcher {
        if m.is_empty() {
            return Err("empty variable match".to_string());
        }
        while !m.is_empty() {
            if m.starts_with('*') {
                let (op, t) = operator(m);
                pieces.push(Piece::Op(op));
                m = t;
            } else {
                let (lit, t) = literal(m)?;
                pieces.push(Piece::Literal(lit));
                m = t;
            }
            if !m.is_empty() {
                if !m.starts_with('/') || m.len() == 1 {
                    return Err("invalid variable match".to_string());
                }
                m = &m[1..];
            }
        }
    }
    Ok((Segment::Variable(name.to_string(), pieces), tail))
}

fn escape(lit: &str) -> String {
    let mut out = String::with_capacity(lit.len());
    for c in lit.chars() {
        if matches!(c, '$' | '(' | ')' | '+' | '.') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn op_regex(op: &Op) -> String {
    match op {
        Op::PathGlob => format!("[{LITERAL}]+"),
        Op::TextGlob => format!("[{LITERAL}/]*"),
    }
}

/// The RE2 pattern Envoy builds for `template`, or why Envoy rejects it.
pub fn template_regex(template: &str) -> Result<String, String> {
    let printable =
        template.starts_with('/') && template.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if !printable {
        return Err("must start with '/' and hold printable ASCII only".to_string());
    }
    let mut rest = &template[1..];
    let mut segments = Vec::new();
    let mut suffix = String::new();
    while !rest.is_empty() {
        let (seg, tail) = if rest.starts_with('*') {
            let (op, t) = operator(rest);
            (Segment::Op(op), t)
        } else if rest.starts_with('{') {
            variable(rest)?
        } else {
            let (lit, t) = literal(rest)?;
            (Segment::Literal(lit), t)
        };
        segments.push(seg);
        rest = tail;
        if rest.is_empty() {
            break;
        }
        if rest == "/" {
            segments.push(Segment::Literal(String::new()));
            break;
        }
        if let Some(t) = rest.strip_prefix('/') {
            rest = t;
            continue;
        }
        let (lit, t) = literal(rest)?;
        if !t.is_empty() {
            return Err("prefix match not supported".to_string());
        }
        suffix = lit;
        break;
    }
    // Variable names: at most 5, 1 to 16 characters, unique.
    let mut names: Vec<&str> = Vec::new();
    for s in &segments {
        if let Segment::Variable(n, _) = s {
            if names.len() >= MAX_VARIABLES {
                return Err("exceeded variable count limit".to_string());
            }
            if n.len() > MAX_VARIABLE_NAME {
                return Err("invalid variable length".to_string());
            }
            if names.contains(&n.as_str()) {
                return Err("repeated variable name".to_string());
            }
            names.push(n);
        }
    }
    // Nothing may glob after a `**`.
    let mut seen_text_glob = false;
    for s in &segments {
        let ops: Vec<&Op> = match s {
            Segment::Op(op) => vec![op],
            Segment::Variable(_, pieces) if pieces.is_empty() => vec![&Op::PathGlob],
            Segment::Variable(_, pieces) => pieces
                .iter()
                .filter_map(|p| match p {
                    Piece::Op(op) => Some(op),
                    Piece::Literal(_) => None,
                })
                .collect(),
            Segment::Literal(_) => Vec::new(),
        };
        for op in ops {
            if seen_text_glob {
                return Err("glob after text glob".to_string());
            }
            seen_text_glob = *op == Op::TextGlob;
        }
    }
    let parts: Vec<String> = segments
        .iter()
        .map(|s| match s {
            Segment::Literal(l) => escape(l),
            Segment::Op(op) => op_regex(op),
            Segment::Variable(name, pieces) => {
                let inner = if pieces.is_empty() {
                    op_regex(&Op::PathGlob)
                } else {
                    pieces
                        .iter()
                        .map(|p| match p {
                            Piece::Literal(l) => escape(l),
                            Piece::Op(op) => op_regex(op),
                        })
                        .collect::<Vec<_>>()
                        .join("/")
                };
                format!("(?P<{name}>{inner})")
            }
        })
        .collect();
    Ok(format!("/{}{}", parts.join("/"), escape(&suffix)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regex::Re2Regex;

    fn matches(template: &str, path: &str) -> bool {
        let re = template_regex(template).and_then(|r| Re2Regex::new(&r));
        match re {
            Ok(re) => re.full_match(path),
            Err(e) => panic!("{template}: {e}"),
        }
    }

    #[test]
    fn globs_variables_and_suffixes() {
        assert!(matches("/foo/*/bar", "/foo/x/bar"));
        assert!(!matches("/foo/*/bar", "/foo/x/y/bar"));
        assert!(matches("/foo/**", "/foo/x/y/z"));
        assert!(matches("/foo/**", "/foo/"));
        assert!(matches("/**/path/template", "/a/b/path/template"));
        assert!(matches("/foo/{x}/bar", "/foo/x/bar"));
        assert!(matches("/api/*/v1", "/api/a/v1"));
        assert!(matches("/{id}.json", "/abc.json"));
        assert!(!matches("/{id}.json", "/abcxjson"));
        assert!(matches("/a/{p=*/b/**}", "/a/x/b/c/d"));
        assert!(matches("/a/", "/a/"));
        assert!(!matches("/a/", "/a"));
    }

    #[test]
    fn rejects_what_envoy_rejects() {
        for bad in [
            "foo",
            "/foo bar",
            "/**/*",
            "/foo/{*}",
            "/{a}/{a}",
            "/{1a}",
            "/{a=}",
            "/a*b",
            "/{a}.x/y",
            "/{a}/{b}/{c}/{d}/{e}/{f}",
            "/{abcdefghijklmnopq}",
            "/{a",
        ] {
            assert!(template_regex(bad).is_err(), "{bad}");
        }
    }
}
