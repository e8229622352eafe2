//! Kubernetes-style multi-document YAML, parsed into a tree that remembers every node's line.
//!
//! Scalars resolve as PyYAML's YAML 1.1 resolver does (the tests compare the two), so a manifest
//! means the same thing to meshcore as to the Python tools around it. What plain YAML loaders
//! lose silently is reported instead: duplicate keys, merge keys, non-scalar keys, and alias
//! expansion beyond a budget (the "billion laughs").

use std::collections::HashMap;
use std::sync::OnceLock;

use regex::Regex;
use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A resolved YAML value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    /// An integer that does not fit in i64, as decimal digits (with sign).
    BigInt(String),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Keys in document order; duplicates are dropped (and reported).
    Map(Vec<(Node, Node)>),
}

/// A value and the 1-based line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub line: u32,
}

/// One document of a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub root: Node,
    /// 1-based line where the document starts.
    pub line: u32,
}

/// One step of a field path: a mapping key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathKey {
    Key(String),
    Index(i64),
}

/// A problem found while reading a stream: 1-based line, 1-based column (0 when unknown),
/// message, and, when it lies inside a document, which one and the field path to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlProblem {
    pub line: u32,
    pub column: u32,
    pub message: String,
    pub document: Option<usize>,
    pub path: Vec<PathKey>,
}

/// Every document that could be read and every problem found. A syntax error ends the stream
/// (documents before it are kept).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stream {
    pub documents: Vec<Document>,
    pub problems: Vec<YamlProblem>,
}

impl Document {
    /// The line to report for `path`: a field's key line, an item's own line, or the deepest
    /// existing ancestor's when the path leads nowhere.
    pub fn line_of(&self, path: &[PathKey]) -> u32 {
        let mut node = &self.root;
        let mut line = self.line;
        for key in path {
            match (&node.value, key) {
                (Value::Map(entries), _) => {
                    match entries.iter().find(|(k, _)| key_matches(&k.value, key)) {
                        Some((k, v)) => {
                            line = k.line;
                            node = v;
                        }
                        None => return line,
                    }
                }
                (Value::Seq(items), PathKey::Index(i)) => {
                    match usize::try_from(*i).ok().and_then(|i| items.get(i)) {
                        Some(item) => {
                            line = item.line;
                            node = item;
                        }
                        None => return line,
                    }
                }
                _ => return line,
            }
        }
        line
    }
}

fn key_matches(key: &Value, wanted: &PathKey) -> bool {
    match (key, wanted) {
        (Value::Str(s), PathKey::Key(w)) => s == w,
        (Value::Int(i), PathKey::Index(w)) => i == w,
        (Value::Int(i), PathKey::Key(w)) => w.parse::<i64>().ok() == Some(*i),
        (Value::Str(s), PathKey::Index(w)) => s.parse::<i64>().ok() == Some(*w),
        (Value::Bool(b), PathKey::Key(w)) => w == if *b { "True" } else { "False" },
        _ => false,
    }
}

/// Parses a whole stream. Never panics, whatever the input.
pub fn parse(text: &str) -> Stream {
    let mut builder = Builder {
        stream: Stream::default(),
        stack: Vec::new(),
        anchors: HashMap::new(),
        // Alias expansion may multiply the input; cap it well above any real manifest.
        budget: 1_000_000usize.max(text.len().saturating_mul(8)),
        doc_line: 1,
    };
    let mut parser = Parser::new_from_str(text);
    loop {
        match parser.next_token() {
            Ok((Event::StreamEnd, _)) => break,
            Ok((event, mark)) => {
                if let Err(problem) = builder.event(event, mark) {
                    builder.stream.problems.push(problem);
                    break;
                }
            }
            Err(e) => {
                let m = e.marker();
                builder.stream.problems.push(YamlProblem {
                    line: line_of(m),
                    column: col_of(m),
                    message: format!("YAML syntax error: {}", e.info()),
                    document: None,
                    path: Vec::new(),
                });
                break;
            }
        }
    }
    builder.stream
}

fn line_of(m: &Marker) -> u32 {
    u32::try_from(m.line()).unwrap_or(u32::MAX).max(1)
}

fn col_of(m: &Marker) -> u32 {
    u32::try_from(m.col()).unwrap_or(u32::MAX).saturating_add(1)
}

enum Frame {
    Seq {
        items: Vec<Node>,
        line: u32,
        anchor: usize,
    },
    Map {
        entries: Vec<(Node, Node)>,
        /// The key waiting for its value, and whether it is a plain `<<` (a merge key).
        pending_key: Option<(Node, bool)>,
        line: u32,
        anchor: usize,
    },
}

struct Builder {
    stream: Stream,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    budget: usize,
    doc_line: u32,
}

impl Builder {
    fn event(&mut self, event: Event, mark: Marker) -> Result<(), YamlProblem> {
        let line = line_of(&mark);
        match event {
            Event::DocumentStart => {
                self.doc_line = line;
                self.anchors.clear();
            }
            Event::Scalar(text, style, anchor, tag) => {
                self.spend(1, &mark)?;
                let merge = style == TScalarStyle::Plain && tag.is_none() && text == "<<";
                let node = Node {
                    value: resolve(&text, style, tag.as_ref()),
                    line,
                };
                if anchor > 0 {
                    self.anchors.insert(anchor, node.clone());
                }
                self.push(node, merge);
            }
            Event::Alias(id) => {
                let Some(node) = self.anchors.get(&id).cloned() else {
                    return Err(problem(&mark, "alias to an unknown anchor".into()));
                };
                self.spend(count_nodes(&node), &mark)?;
                // An alias is reported where it is used, not where its anchor was defined.
                self.push(Node { line, ..node }, false);
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq {
                items: Vec::new(),
                line,
                anchor,
            }),
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Map {
                entries: Vec::new(),
                pending_key: None,
                line,
                anchor,
            }),
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Frame::Seq {
                        items,
                        line,
                        anchor,
                    }) => (
                        Node {
                            value: Value::Seq(items),
                            line,
                        },
                        anchor,
                    ),
                    Some(Frame::Map {
                        entries,
                        line,
                        anchor,
                        ..
                    }) => (
                        Node {
                            value: Value::Map(entries),
                            line,
                        },
                        anchor,
                    ),
                    None => return Err(problem(&mark, "unbalanced YAML events".into())),
                };
                if anchor > 0 {
                    self.anchors.insert(anchor, node.clone());
                }
                self.push(node, false);
            }
            Event::DocumentEnd | Event::StreamStart | Event::StreamEnd | Event::Nothing => {}
        }
        Ok(())
    }

    /// The field path of the node being built (the innermost frame's pending key excluded).
    fn path(&self) -> Vec<PathKey> {
        let depth = self.stack.len().saturating_sub(1);
        self.stack[..depth]
            .iter()
            .map(|frame| match frame {
                Frame::Seq { items, .. } => {
                    PathKey::Index(i64::try_from(items.len()).unwrap_or(i64::MAX))
                }
                Frame::Map { pending_key, .. } => PathKey::Key(
                    pending_key
                        .as_ref()
                        .map_or_else(String::new, |(k, _)| key_text(&k.value)),
                ),
            })
            .collect()
    }

    fn spend(&mut self, nodes: usize, mark: &Marker) -> Result<(), YamlProblem> {
        if nodes > self.budget {
            return Err(problem(
                mark,
                "aliases expand to too many nodes (a YAML bomb?); write the values out".into(),
            ));
        }
        self.budget -= nodes;
        Ok(())
    }

    /// Adds a finished node to its parent, or ends the document when it is the root.
    fn push(&mut self, node: Node, merge: bool) {
        match self.stack.last_mut() {
            None => self.stream.documents.push(Document {
                // Where the content starts (a document's `---` line tells the user less).
                line: node.line.max(self.doc_line),
                root: node,
            }),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                pending_key,
                ..
            }) => match pending_key.take() {
                None => *pending_key = Some((node, merge)),
                Some((key, key_is_merge)) => {
                    let complaint = match &key.value {
                        _ if key_is_merge => Some(
                            "YAML merge keys (<<) are not supported; write the fields out"
                                .to_string(),
                        ),
                        Value::Seq(_) | Value::Map(_) => {
                            Some("a mapping key must be a scalar".to_string())
                        }
                        k if entries.iter().any(|(e, _)| e.value == *k) => Some(format!(
                            "duplicate key {} (YAML would keep only the last value)",
                            describe_key(k)
                        )),
                        _ => None,
                    };
                    match complaint {
                        Some(message) => {
                            let mut path = self.path();
                            path.push(PathKey::Key(key_text(&key.value)));
                            self.stream.problems.push(YamlProblem {
                                line: key.line,
                                column: 0,
                                message,
                                document: Some(self.stream.documents.len()),
                                path,
                            });
                        }
                        None => entries.push((key, node)),
                    }
                }
            },
        }
    }
}

fn key_text(k: &Value) -> String {
    match k {
        Value::Str(s) => s.clone(),
        other => describe_key(other),
    }
}

fn describe_key(k: &Value) -> String {
    match k {
        Value::Str(s) => format!("'{s}'"),
        Value::Int(i) => i.to_string(),
        Value::BigInt(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Null => "null".into(),
        Value::Seq(_) | Value::Map(_) => "(complex key)".into(),
    }
}

fn problem(mark: &Marker, message: String) -> YamlProblem {
    YamlProblem {
        line: line_of(mark),
        column: col_of(mark),
        message,
        document: None,
        path: Vec::new(),
    }
}

fn count_nodes(node: &Node) -> usize {
    match &node.value {
        Value::Seq(items) => 1 + items.iter().map(count_nodes).sum::<usize>(),
        Value::Map(entries) => {
            1 + entries
                .iter()
                .map(|(k, v)| count_nodes(k) + count_nodes(v))
                .sum::<usize>()
        }
        _ => 1,
    }
}

struct Patterns {
    int: Regex,
    float: Regex,
}

fn patterns() -> &'static Patterns {
    static P: OnceLock<Patterns> = OnceLock::new();
    P.get_or_init(|| Patterns {
        // PyYAML's YAML 1.1 implicit resolvers.
        int: Regex::new(
            r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$",
        )
        .unwrap_or_else(|_| unreachable!("constant pattern")),
        float: Regex::new(
            r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9_]+(?:[eE][-+][0-9]+)?|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        )
        .unwrap_or_else(|_| unreachable!("constant pattern")),
    })
}

fn resolve(text: &str, style: TScalarStyle, tag: Option<&Tag>) -> Value {
    if let Some(tag) = tag {
        if tag.handle == "!!" || tag.handle == "tag:yaml.org,2002:" {
            match tag.suffix.as_str() {
                "str" => return Value::Str(text.to_string()),
                "null" => return Value::Null,
                "bool" => {
                    return resolve_bool(text).map_or_else(|| Value::Str(text.into()), Value::Bool)
                }
                "int" => return resolve_int(text).unwrap_or_else(|| Value::Str(text.into())),
                "float" => {
                    return resolve_float(text)
                        .map_or_else(|| Value::Str(text.into()), Value::Float)
                }
                _ => {}
            }
        }
        // Other tags (timestamps, binary, custom): Kubernetes reads such fields as strings.
        return Value::Str(text.to_string());
    }
    if style != TScalarStyle::Plain {
        return Value::Str(text.to_string());
    }
    resolve_plain(text)
}

fn resolve_plain(text: &str) -> Value {
    let Some(first) = text.chars().next() else {
        return Value::Null;
    };
    match first {
        '~' | 'n' | 'N' if matches!(text, "~" | "null" | "Null" | "NULL") => Value::Null,
        'y' | 'Y' | 'n' | 'N' | 't' | 'T' | 'f' | 'F' | 'o' | 'O' => {
            resolve_bool(text).map_or_else(|| Value::Str(text.into()), Value::Bool)
        }
        '0'..='9' | '-' | '+' | '.' => resolve_int(text)
            .or_else(|| resolve_float(text).map(Value::Float))
            .unwrap_or_else(|| Value::Str(text.into())),
        _ => Value::Str(text.to_string()),
    }
}

fn resolve_bool(text: &str) -> Option<bool> {
    match text {
        "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => Some(true),
        "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => Some(false),
        _ => None,
    }
}

fn resolve_int(text: &str) -> Option<Value> {
    if !patterns().int.is_match(text) {
        return None;
    }
    let cleaned: String = text.chars().filter(|c| *c != '_').collect();
    let (negative, digits) = match cleaned.as_bytes().first() {
        Some(b'-') => (true, &cleaned[1..]),
        Some(b'+') => (false, &cleaned[1..]),
        _ => (false, cleaned.as_str()),
    };
    let magnitude: Option<i128> = if digits == "0" {
        Some(0)
    } else if let Some(bin) = digits.strip_prefix("0b") {
        i128::from_str_radix(bin, 2).ok()
    } else if let Some(hex) = digits.strip_prefix("0x") {
        i128::from_str_radix(hex, 16).ok()
    } else if digits.contains(':') {
        digits.split(':').try_fold(0i128, |acc, part| {
            part.parse::<i128>()
                .ok()
                .and_then(|p| acc.checked_mul(60)?.checked_add(p))
        })
    } else if let Some(oct) = digits.strip_prefix('0') {
        i128::from_str_radix(oct, 8).ok()
    } else {
        digits.parse::<i128>().ok()
    };
    match magnitude {
        Some(m) => {
            let v = if negative { -m } else { m };
            Some(i64::try_from(v).map_or_else(|_| Value::BigInt(v.to_string()), Value::Int))
        }
        // Beyond i128: keep the decimal text for Python to read (only plain decimals get here).
        None if digits.bytes().all(|b| b.is_ascii_digit()) => Some(Value::BigInt(format!(
            "{}{digits}",
            if negative { "-" } else { "" }
        ))),
        None => None,
    }
}

fn resolve_float(text: &str) -> Option<f64> {
    if !patterns().float.is_match(text) {
        return None;
    }
    let cleaned: String = text
        .chars()
        .filter(|c| *c != '_')
        .collect::<String>()
        .to_lowercase();
    let (sign, body) = match cleaned.as_bytes().first() {
        Some(b'-') => (-1.0, &cleaned[1..]),
        Some(b'+') => (1.0, &cleaned[1..]),
        _ => (1.0, cleaned.as_str()),
    };
    if body == ".inf" {
        return Some(sign * f64::INFINITY);
    }
    if body == ".nan" {
        return Some(f64::NAN);
    }
    if body.contains(':') {
        let mut value = 0.0;
        for part in body.split(':') {
            value = value * 60.0 + part.parse::<f64>().ok()?;
        }
        return Some(sign * value);
    }
    body.parse::<f64>().ok().map(|v| sign * v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Value {
        let s = parse(text);
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        match s.documents.into_iter().next() {
            Some(d) => d.root.value,
            None => Value::Null,
        }
    }

    #[test]
    fn scalars_resolve_like_pyyaml() {
        assert_eq!(one("yes"), Value::Bool(true));
        assert_eq!(one("Off"), Value::Bool(false));
        assert_eq!(one("y"), Value::Str("y".into()));
        assert_eq!(one("~"), Value::Null);
        assert_eq!(one("0x1F"), Value::Int(31));
        assert_eq!(one("017"), Value::Int(15));
        assert_eq!(one("1_000"), Value::Int(1000));
        assert_eq!(one("-0b101"), Value::Int(-5));
        assert_eq!(one("1:30"), Value::Int(90));
        assert_eq!(one("1.5"), Value::Float(1.5));
        assert_eq!(one("1e3"), Value::Str("1e3".into()));
        assert_eq!(one("'80'"), Value::Str("80".into()));
        assert_eq!(one("!!str 80"), Value::Str("80".into()));
        assert_eq!(
            one("99999999999999999999"),
            Value::BigInt("99999999999999999999".into())
        );
        assert_eq!(one("2s"), Value::Str("2s".into()));
        assert_eq!(one("-.inf"), Value::Float(f64::NEG_INFINITY));
    }

    #[test]
    fn lines_of_paths() {
        let s = parse("a: 1\nb:\n  c:\n  - x\n  - y\n---\nz: 2\n");
        assert_eq!(s.documents.len(), 2);
        let d = &s.documents[0];
        let k = |x: &str| PathKey::Key(x.into());
        assert_eq!(d.line_of(&[k("b"), k("c"), PathKey::Index(1)]), 5);
        assert_eq!(d.line_of(&[k("b"), k("c")]), 3);
        assert_eq!(d.line_of(&[k("b"), k("missing")]), 2);
        assert_eq!(s.documents[1].line, 7); // where its content starts
    }

    #[test]
    fn reports_what_yaml_loses() {
        let s = parse("a: 1\na: 2\nb: &x {k: v}\nc:\n  <<: *x\n? [1]\n: v\n");
        let lines: Vec<u32> = s.problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, vec![2, 5, 6], "{:?}", s.problems);
        assert!(s.problems[0].message.contains("duplicate key 'a'"));
        assert_eq!(s.problems[0].path, vec![PathKey::Key("a".into())]);
        assert_eq!(
            s.problems[1].path,
            vec![PathKey::Key("c".into()), PathKey::Key("<<".into())]
        );
        let s = parse("x: 1\n---\nspec:\n  list:\n  - {k: 1, k: 2}\n");
        assert_eq!(s.problems[0].document, Some(1));
        assert_eq!(
            s.problems[0].path,
            vec![
                PathKey::Key("spec".into()),
                PathKey::Key("list".into()),
                PathKey::Index(0),
                PathKey::Key("k".into())
            ]
        );
    }

    #[test]
    fn syntax_errors_keep_earlier_documents() {
        let s = parse("ok: 1\n---\nx: [1\ny: 2\n");
        assert_eq!(s.documents.len(), 1);
        assert_eq!(s.problems.len(), 1);
        assert!(s.problems[0].message.starts_with("YAML syntax error"));
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let s = parse(&text);
        assert!(s.problems.iter().any(|p| p.message.contains("YAML bomb")));
    }
}
