//! Regular expressions in Envoy's dialect: Google RE2, always matched against the whole input.
//!
//! Rust's `regex` crate is close to RE2 but not identical. This module accepts exactly the RE2
//! syntax (rejecting what RE2 rejects even where Rust would accept it, such as `\<`, class set
//! operations or `(?x)`), and it gives the Perl classes and `\b` RE2's ASCII meaning where Rust
//! would use Unicode. Validation (the config webhook) and matching (route and RBAC tables) both
//! go through [`Re2Regex::new`], so they can never disagree.

use regex_syntax::ast::{
    self, AssertionKind, Ast, ClassPerl, ClassPerlKind, ClassSet, ClassSetItem, ClassUnicodeKind,
    Flag, FlagsItemKind, GroupKind, HexLiteralKind, LiteralKind, RepetitionKind, RepetitionRange,
};

/// RE2's limit on a counted repetition, and on the product of nested counted repetitions.
const RE2_MAX_REPEAT: u64 = 1000;

/// A compiled RE2-dialect regex with full-match semantics (as Envoy's `safe_regex`).
#[derive(Debug, Clone)]
pub struct Re2Regex {
    pattern: String,
    full: regex::Regex,
}

impl Re2Regex {
    /// Compiles `pattern` with RE2's syntax and semantics; the error is one line naming the problem.
    pub fn new(pattern: &str) -> Result<Self, String> {
        let translated = translate(pattern)?;
        let full = regex::RegexBuilder::new(&format!(r"\A(?:{translated})\z"))
            .size_limit(1 << 22)
            .build()
            .map_err(|e| format!("invalid regex `{pattern}`: {}", first_line(&e.to_string())))?;
        Ok(Self {
            pattern: pattern.to_string(),
            full,
        })
    }

    /// The pattern as written by the user.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// True when the whole of `text` matches (RE2::FullMatch).
    pub fn full_match(&self, text: &str) -> bool {
        self.full.is_match(text)
    }

    /// A string every full match starts with (the longest common prefix of the pattern's
    /// literal prefixes; empty when there is none), for indexes that must only ever propose
    /// candidates: the matcher itself still decides.
    pub fn literal_prefix(&self) -> String {
        use regex_syntax::hir::literal::{ExtractKind, Extractor};
        let Ok(hir) = regex_syntax::Parser::new().parse(self.full.as_str()) else {
            return String::new();
        };
        let seq = Extractor::new().kind(ExtractKind::Prefix).extract(&hir);
        let Some(lcp) = seq.longest_common_prefix() else {
            return String::new();
        };
        // A common prefix of byte strings may end inside a character.
        match std::str::from_utf8(lcp) {
            Ok(s) => s.to_string(),
            Err(e) => String::from_utf8_lossy(&lcp[..e.valid_up_to()]).into_owned(),
        }
    }
}

fn first_line(s: &str) -> &str {
    s.lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| s.lines().next().unwrap_or(s))
}

/// Checks RE2 syntax and rewrites the parts whose meaning differs into Rust syntax.
fn translate(pattern: &str) -> Result<String, String> {
    let parsed = ast::parse::ParserBuilder::new()
        .nest_limit(1000)
        .octal(false)
        .build()
        .parse(pattern)
        .map_err(|e| {
            let what = match e.kind() {
                ast::ErrorKind::UnsupportedBackreference => {
                    "backreferences are not supported by RE2".to_string()
                }
                ast::ErrorKind::UnsupportedLookAround => {
                    "look-around (look-ahead and look-behind) is not supported by RE2".to_string()
                }
                other => other.to_string(),
            };
            format!(
                "invalid regex `{pattern}`: {what} (at offset {})",
                e.span().start.offset
            )
        })?;
    let mut walker = Walker {
        pattern,
        edits: Vec::new(),
    };
    walker.ast(&parsed, 1)?;
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut at = 0;
    walker.edits.sort_by_key(|e| e.0);
    for (start, end, replacement) in walker.edits {
        out.push_str(&pattern[at..start]);
        out.push_str(&replacement);
        at = end;
    }
    out.push_str(&pattern[at..]);
    Ok(out)
}

struct Walker<'a> {
    pattern: &'a str,
    edits: Vec<(usize, usize, String)>,
}

impl Walker<'_> {
    fn reject(&self, span: &ast::Span, what: &str) -> Result<(), String> {
        Err(format!(
            "invalid regex `{}`: {what} is not supported by RE2 (at offset {})",
            self.pattern, span.start.offset
        ))
    }

    fn ast(&mut self, node: &Ast, repeat_product: u64) -> Result<(), String> {
        match node {
            Ast::Empty(_) | Ast::Dot(_) => Ok(()),
            Ast::Flags(set) => self.flags(&set.flags),
            Ast::Literal(lit) => self.literal(lit),
            Ast::Assertion(a) => match a.kind {
                AssertionKind::StartLine
                | AssertionKind::EndLine
                | AssertionKind::StartText
                | AssertionKind::EndText => Ok(()),
                AssertionKind::WordBoundary => {
                    self.edit(&a.span, r"(?-u:\b)".to_string());
                    Ok(())
                }
                AssertionKind::NotWordBoundary => {
                    self.edit(&a.span, r"(?-u:\B)".to_string());
                    Ok(())
                }
                _ => self.reject(&a.span, "this word-boundary assertion"),
            },
            Ast::ClassUnicode(u) => self.unicode_class(u),
            Ast::ClassPerl(p) => {
                let (set, negated) = perl_ascii(p);
                let caret = if negated { "^" } else { "" };
                self.edit(&p.span, format!("[{caret}{set}]"));
                Ok(())
            }
            Ast::ClassBracketed(b) => self.class_set(&b.kind),
            Ast::Repetition(r) => {
                if let Ast::Repetition(inner) = &*r.ast {
                    if inner.op.span.end.offset == r.op.span.start.offset {
                        return Err(format!(
                            "invalid regex `{}`: bad repetition operator: a repetition of a repetition such as `**` (at offset {})",
                            self.pattern, r.op.span.start.offset
                        ));
                    }
                }
                let factor = match &r.op.kind {
                    RepetitionKind::ZeroOrOne
                    | RepetitionKind::ZeroOrMore
                    | RepetitionKind::OneOrMore => 1,
                    RepetitionKind::Range(range) => {
                        let (min, max) = match *range {
                            RepetitionRange::Exactly(n) => (n, Some(n)),
                            RepetitionRange::AtLeast(n) => (n, None),
                            RepetitionRange::Bounded(m, n) => (m, Some(n)),
                        };
                        if u64::from(min) > RE2_MAX_REPEAT
                            || max.is_some_and(|m| u64::from(m) > RE2_MAX_REPEAT)
                        {
                            return Err(format!(
                                "invalid regex `{}`: bad repetition operator: counts above {RE2_MAX_REPEAT} are not allowed by RE2 (at offset {})",
                                self.pattern, r.op.span.start.offset
                            ));
                        }
                        u64::from(max.unwrap_or(min)).max(1)
                    }
                };
                let product = repeat_product.saturating_mul(factor);
                if product > RE2_MAX_REPEAT {
                    return Err(format!(
                        "invalid regex `{}`: bad repetition operator: nested repetition counts multiply to more than {RE2_MAX_REPEAT} (at offset {})",
                        self.pattern, r.op.span.start.offset
                    ));
                }
                self.ast(&r.ast, product)
            }
            Ast::Group(g) => {
                if let GroupKind::NonCapturing(flags) = &g.kind {
                    self.flags(flags)?;
                }
                self.ast(&g.ast, repeat_product)
            }
            Ast::Alternation(alt) => {
                for a in &alt.asts {
                    self.ast(a, repeat_product)?;
                }
                Ok(())
            }
            Ast::Concat(c) => {
                for a in &c.asts {
                    self.ast(a, repeat_product)?;
                }
                Ok(())
            }
        }
    }

    fn edit(&mut self, span: &ast::Span, replacement: String) {
        self.edits
            .push((span.start.offset, span.end.offset, replacement));
    }

    fn flags(&self, flags: &ast::Flags) -> Result<(), String> {
        for item in &flags.items {
            if let FlagsItemKind::Flag(flag) = &item.kind {
                match flag {
                    Flag::CaseInsensitive
                    | Flag::MultiLine
                    | Flag::DotMatchesNewLine
                    | Flag::SwapGreed => {}
                    Flag::Unicode => return self.reject(&item.span, "the flag 'u'"),
                    Flag::CRLF => return self.reject(&item.span, "the flag 'R'"),
                    Flag::IgnoreWhitespace => return self.reject(&item.span, "the flag 'x'"),
                }
            }
        }
        Ok(())
    }

    fn literal(&self, lit: &ast::Literal) -> Result<(), String> {
        match &lit.kind {
            LiteralKind::HexFixed(HexLiteralKind::X) | LiteralKind::HexBrace(HexLiteralKind::X) => {
                Ok(())
            }
            LiteralKind::HexFixed(_) | LiteralKind::HexBrace(_) => {
                self.reject(&lit.span, "the escape \\u or \\U")
            }
            LiteralKind::Octal => self.reject(&lit.span, "an octal escape"),
            _ => Ok(()),
        }
    }

    fn unicode_class(&self, u: &ast::ClassUnicode) -> Result<(), String> {
        match &u.kind {
            ClassUnicodeKind::OneLetter(_) | ClassUnicodeKind::Named(_) => Ok(()),
            ClassUnicodeKind::NamedValue { .. } => {
                self.reject(&u.span, "a Unicode class of the form name=value")
            }
        }
    }

    fn class_set(&mut self, set: &ClassSet) -> Result<(), String> {
        match set {
            ClassSet::BinaryOp(op) => {
                self.reject(&op.span, "a character class set operation (&&, --, ~~)")
            }
            ClassSet::Item(item) => self.class_item(item),
        }
    }

    fn class_item(&mut self, item: &ClassSetItem) -> Result<(), String> {
        match item {
            ClassSetItem::Empty(_) | ClassSetItem::Range(_) | ClassSetItem::Ascii(_) => Ok(()),
            ClassSetItem::Literal(lit) => self.literal(lit),
            ClassSetItem::Unicode(u) => self.unicode_class(u),
            ClassSetItem::Perl(p) => {
                let (set, negated) = perl_ascii(p);
                // Inside a class a negated Perl class becomes a nested negated class, which Rust
                // accepts; the user could not have written that nesting (rejected below).
                let text = if negated {
                    format!("[^{set}]")
                } else {
                    set.to_string()
                };
                self.edit(&p.span, text);
                Ok(())
            }
            // RE2 has no nested classes: `[a[b]]` means the class {a, [, b} followed by `]`.
            ClassSetItem::Bracketed(b) => self.reject(&b.span, "a nested character class"),
            ClassSetItem::Union(u) => {
                for i in &u.items {
                    self.class_item(i)?;
                }
                Ok(())
            }
        }
    }
}

/// RE2's ASCII-only meaning of `\d`, `\s` and `\w` (note: RE2's `\s` has no `\v`).
fn perl_ascii(p: &ClassPerl) -> (&'static str, bool) {
    let set = match p.kind {
        ClassPerlKind::Digit => "0-9",
        ClassPerlKind::Space => r"\t\n\f\r ",
        ClassPerlKind::Word => "0-9A-Za-z_",
    };
    (set, p.negated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(p: &str) -> Re2Regex {
        match Re2Regex::new(p) {
            Ok(r) => r,
            Err(e) => panic!("{p:?} should compile: {e}"),
        }
    }

    #[test]
    fn full_match_is_anchored() {
        let r = ok("/api/v[0-9]+");
        assert!(r.full_match("/api/v12"));
        assert!(!r.full_match("/api/v12/x"));
        assert!(!r.full_match("x/api/v1"));
        let alt = ok("a|b");
        assert!(alt.full_match("a"));
        assert!(!alt.full_match("ab"));
    }

    #[test]
    fn perl_classes_are_ascii_like_re2() {
        assert!(!ok(r"\d").full_match("٣")); // ARABIC-INDIC DIGIT THREE
        assert!(ok(r"\D").full_match("٣"));
        assert!(!ok(r"\w+").full_match("é"));
        assert!(ok(r"[\w.]+").full_match("a.b"));
        assert!(ok(r"[^\d]").full_match("x"));
        assert!(ok(r"[\D]").full_match("x"));
        assert!(!ok(r"[\D]").full_match("1"));
        assert!(!ok(r"\s").full_match("\u{0b}")); // RE2's \s has no vertical tab
        assert!(ok(r"\s").full_match("\t"));
        assert!(!ok(r"\s").full_match("\u{a0}"));
        assert!(ok(r"\bfoo\b.*").full_match("foo bar"));
        assert!(ok(r"é\ba").full_match("éa")); // ASCII: é is not a word character
        assert!(ok(r"\p{Greek}+").full_match("αβ"));
        assert!(ok(r".").full_match("é"));
    }

    #[test]
    fn rejects_what_re2_rejects() {
        for p in [
            r"(a)\1",
            r"(?=a)",
            r"(?!a)",
            r"(?<=a)b",
            r"\<foo\>",
            r"[a-z&&[^aeiou]]",
            r"(?x) a",
            r"\u0041",
            "a{1001}",
            "(a{100}){11}",
            "[a[bc]]",
            "(",
            "a**",
        ] {
            assert!(Re2Regex::new(p).is_err(), "{p:?} should be rejected");
        }
    }

    #[test]
    fn accepts_re2_syntax() {
        for p in [
            "(?i)abc",
            "(?s:.)",
            "(?P<x>a)(?<y>b)",
            "a{1000}",
            "(a{10}){100}",
            r"\x41\x{10FFFF}",
            "[[:alpha:]]+",
            r"\pL\p{Lu}",
            "a*?b+?",
            "(?U)a*",
            r"\.\*\+",
        ] {
            ok(p);
        }
    }

    #[test]
    fn error_is_one_line_with_offset() {
        let Err(e) = Re2Regex::new(r"(a)\1") else {
            panic!("backreference accepted")
        };
        assert!(e.contains("backreferences are not supported by RE2"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn literal_prefix_is_what_every_match_starts_with() {
        for (pattern, prefix) in [
            (r"/svc1/orders5/\d+", "/svc1/orders5/"),
            (r"(?i)/API/.*", "/"),
            (r"/u(/.*)?", "/u"),
            (r"a|b", ""),
            (r"/(api|apx)/x", "/ap"),
            (r".*", ""),
            (r"/é+x", "/é"),
        ] {
            let Ok(re) = Re2Regex::new(pattern) else {
                panic!("{pattern} should compile");
            };
            assert_eq!(re.literal_prefix(), prefix, "{pattern}");
        }
    }
}
