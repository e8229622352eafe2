//! Kubernetes-style multi-document YAML, parsed into a tree that remembers every node's line.
//!
//! Scalars resolve as PyYAML's YAML 1.1 resolver does (the tests compare the two), so a manifest
//! means the same thing to meshcore as to the Python tools around it. What plain YAML loaders
//! lose silently is reported instead: duplicate keys, merge keys, non-scalar keys, and alias
//! expansion beyond a budget (the "billion laughs").
//!
//! Hostile input is refused with a problem at its line, never read in part: characters YAML
//! does not allow (a NUL would otherwise end the stream early), nesting deeper than
//! [`MAX_DEPTH`] (the tree is recursive everywhere downstream), integers longer than
//! [`MAX_INT_DIGITS`] digits. Duplicate keys are found with a hash set: linear in the number
//! of keys.

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
    /// A large mapping's keys and where they are in it: `line_of` finds a field in constant
    /// time (a problem per key of a 40,000-key mapping was quadratic to place).
    keys: Option<Box<KeyIndex>>,
}

/// Keys to entry positions (boxed in a node: most nodes have none, and stay small).
#[derive(Debug, Clone, PartialEq)]
struct KeyIndex(HashMap<KeyId, usize>);

/// Mappings with fewer entries are searched in order.
const INDEXED_MAPPING: usize = 16;

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
                    let indexed = match (&node.keys, key) {
                        (Some(keys), PathKey::Key(w)) => keys
                            .0
                            .get(&KeyId::Str(w.clone()))
                            .and_then(|&i| entries.get(i)),
                        _ => None,
                    };
                    let found = indexed
                        .or_else(|| entries.iter().find(|(k, _)| key_matches(&k.value, key)));
                    match found {
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

/// The deepest nesting of sequences and mappings (block or flow, aliases included) a stream
/// may have. Istio and Kubernetes manifests stay under 20 levels; everything that walks the
/// tree (here, the Python conversion, the validator) may recurse this deep and no deeper.
pub const MAX_DEPTH: usize = 128;

/// How many nodes alias expansion may add to a stream in all (a "billion laughs" expands a
/// few hundred bytes into billions). Real manifests rarely use aliases at all.
pub const ALIAS_BUDGET: usize = 1_000_000;

/// The longest integer (in digits) read as a number; Python itself refuses to convert
/// decimal strings of more than 4,300 digits.
pub const MAX_INT_DIGITS: usize = 1_000;

/// Parses a whole stream. Never panics, whatever the input.
pub fn parse(text: &str) -> Stream {
    // A byte order mark may start a stream (YAML 1.2, 5.2); it is not content.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if let Some(problem) = check_characters(text) {
        // Refused whole: the scanner would read a NUL as the end of the input and silently
        // drop everything after it.
        return Stream {
            documents: Vec::new(),
            problems: vec![problem],
        };
    }
    let mut builder = Builder {
        stream: Stream::default(),
        stack: Vec::new(),
        anchors: HashMap::new(),
        budget: ALIAS_BUDGET,
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
            // The scanner's own flow-level limit (256) may come first: the same problem.
            Err(e) if e.info() == "recursion limit exceeded" => {
                builder.stream.problems.push(too_deep(e.marker()));
                break;
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

/// YAML's printable characters (c-printable, YAML 1.2 5.1; the set of YAML 1.1, PyYAML and
/// libyaml too). YAML 1.2 also lets JSON-compatible quoted scalars hold DEL, C1 controls and
/// U+FFFE/U+FFFF raw; PyYAML refuses them everywhere, and meshcore resolves as PyYAML does:
/// escape them (`"\x7f"`).
fn is_printable(c: char) -> bool {
    matches!(c,
        '\t' | '\n' | '\r' | ' '..='~' | '\u{85}' | '\u{a0}'..='\u{d7ff}'
        | '\u{e000}'..='\u{fffd}' | '\u{10000}'..='\u{10ffff}')
}

/// The first character YAML forbids, as a problem at its line and column.
fn check_characters(text: &str) -> Option<YamlProblem> {
    let (offset, c) = text.char_indices().find(|&(_, c)| !is_printable(c))?;
    let (line, column) = position(text, offset);
    let escape = if c == '\0' {
        "\\0".to_string()
    } else if u32::from(c) <= 0xff {
        format!("\\x{:02x}", u32::from(c))
    } else {
        format!("\\u{:04x}", u32::from(c))
    };
    Some(YamlProblem {
        line,
        column,
        message: format!(
            "character U+{:04X} is not allowed in YAML (only printable characters, tab and line \
             breaks); inside a double-quoted string write it as the escape \"{escape}\"",
            u32::from(c)
        ),
        document: None,
        path: Vec::new(),
    })
}

/// 1-based line and column of a byte offset; line breaks as YAML counts them (LF, CR LF, CR).
fn position(text: &str, offset: usize) -> (u32, u32) {
    let before = text.get(..offset).unwrap_or(text);
    let bytes = before.as_bytes();
    let mut line = 1u32;
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let lf = b == b'\n';
        let lone_cr = b == b'\r' && bytes.get(i + 1).is_none_or(|&n| n != b'\n');
        if lf || lone_cr {
            line = line.saturating_add(1);
            start = i + 1;
        }
    }
    let column = before.get(start..).map_or(0, |rest| rest.chars().count());
    (
        line,
        u32::try_from(column).unwrap_or(u32::MAX).saturating_add(1),
    )
}

enum Frame {
    Seq {
        items: Vec<Node>,
        line: u32,
        anchor: usize,
        /// Levels of nesting below this node (0 when it holds only scalars).
        height: usize,
    },
    Map {
        entries: Vec<(Node, Node)>,
        /// The keys so far, as Python compares them, and their entries: a duplicate is found
        /// in constant time.
        keys: HashMap<KeyId, usize>,
        /// The key waiting for its value, and whether it is a plain `<<` (a merge key).
        pending_key: Option<(Node, bool)>,
        line: u32,
        anchor: usize,
        height: usize,
    },
}

/// A scalar key as Python's dict compares it (the values become a dict: `1`, `1.0` and
/// `true` are one key there, and `1` and `'1'` two).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum KeyId {
    Null,
    Int(i64),
    /// An integer beyond i64, as decimal digits (with sign).
    Big(String),
    /// A float that is not a whole number (bits; 0.0 and -0.0 are the integer 0).
    Float(u64),
    Str(String),
}

impl KeyId {
    /// None for keys that never equal another (NaN) or are refused anyway (collections).
    fn of(value: &Value) -> Option<KeyId> {
        Some(match value {
            Value::Null => KeyId::Null,
            Value::Bool(b) => KeyId::Int(i64::from(*b)),
            Value::Int(i) => KeyId::Int(*i),
            Value::BigInt(s) => KeyId::Big(s.trim_start_matches('+').to_string()),
            Value::Float(f) if f.is_nan() => return None,
            Value::Float(f) if f.is_finite() && f.fract() == 0.0 => {
                // Exact: a whole f64 below 2^63 converts without loss, and above it the
                // decimal expansion of an integral f64 is exact too.
                if f.abs() < 9_223_372_036_854_775_808.0 {
                    KeyId::Int(whole_f64_to_i64(*f))
                } else {
                    KeyId::Big(format!("{f:.0}"))
                }
            }
            Value::Float(f) => KeyId::Float(f.to_bits()),
            Value::Str(s) => KeyId::Str(s.clone()),
            Value::Seq(_) | Value::Map(_) => return None,
        })
    }
}

/// A whole f64 of magnitude below 2^63 as the same integer (exact).
#[allow(clippy::cast_possible_truncation)]
fn whole_f64_to_i64(f: f64) -> i64 {
    f as i64
}

struct Builder {
    stream: Stream,
    stack: Vec<Frame>,
    /// Each anchor's node and its height (levels of nesting below it).
    anchors: HashMap<usize, (Node, usize)>,
    /// Nodes alias expansion may still add.
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
                let merge = style == TScalarStyle::Plain && tag.is_none() && text == "<<";
                let mut value = resolve(&text, style, tag.as_ref());
                if let Value::BigInt(digits) = &value {
                    if digits.len() > MAX_INT_DIGITS {
                        let path = self.path_here();
                        self.stream.problems.push(YamlProblem {
                            line,
                            column: col_of(&mark),
                            message: format!(
                                "an integer of {} digits is too large (at most {MAX_INT_DIGITS})",
                                digits.len()
                            ),
                            document: Some(self.stream.documents.len()),
                            path,
                        });
                        value = Value::Str(text);
                    }
                }
                let node = Node {
                    value,
                    line,
                    keys: None,
                };
                if anchor > 0 {
                    self.anchors.insert(anchor, (node.clone(), 0));
                }
                self.push(node, 0, merge);
            }
            Event::Alias(id) => {
                let Some((node, height)) = self.anchors.get(&id).cloned() else {
                    return Err(problem(&mark, "alias to an unknown anchor".into()));
                };
                if self.stack.len() + height > MAX_DEPTH {
                    return Err(too_deep(&mark));
                }
                self.spend(count_nodes(&node), &mark)?;
                // An alias is reported where it is used, not where its anchor was defined.
                self.push(Node { line, ..node }, height, false);
            }
            Event::SequenceStart(anchor, _) => {
                if self.stack.len() >= MAX_DEPTH {
                    return Err(too_deep(&mark));
                }
                self.stack.push(Frame::Seq {
                    items: Vec::new(),
                    line,
                    anchor,
                    height: 0,
                });
            }
            Event::MappingStart(anchor, _) => {
                if self.stack.len() >= MAX_DEPTH {
                    return Err(too_deep(&mark));
                }
                self.stack.push(Frame::Map {
                    entries: Vec::new(),
                    keys: HashMap::new(),
                    pending_key: None,
                    line,
                    anchor,
                    height: 0,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor, height) = match self.stack.pop() {
                    Some(Frame::Seq {
                        items,
                        line,
                        anchor,
                        height,
                    }) => (
                        Node {
                            value: Value::Seq(items),
                            line,
                            keys: None,
                        },
                        anchor,
                        height + 1,
                    ),
                    Some(Frame::Map {
                        entries,
                        keys,
                        line,
                        anchor,
                        height,
                        ..
                    }) => (
                        Node {
                            value: Value::Map(entries),
                            line,
                            keys: (keys.len() >= INDEXED_MAPPING).then(|| Box::new(KeyIndex(keys))),
                        },
                        anchor,
                        height + 1,
                    ),
                    None => return Err(problem(&mark, "unbalanced YAML events".into())),
                };
                if anchor > 0 {
                    self.anchors.insert(anchor, (node.clone(), height));
                }
                self.push(node, height, false);
            }
            Event::DocumentEnd | Event::StreamStart | Event::StreamEnd | Event::Nothing => {}
        }
        Ok(())
    }

    /// The field path of the node being read now (the innermost frame's pending key included).
    fn path_here(&self) -> Vec<PathKey> {
        let mut path = self.path();
        match self.stack.last() {
            Some(Frame::Seq { items, .. }) => {
                path.push(PathKey::Index(
                    i64::try_from(items.len()).unwrap_or(i64::MAX),
                ));
            }
            Some(Frame::Map {
                pending_key: Some((k, _)),
                ..
            }) => path.push(PathKey::Key(key_text(&k.value))),
            _ => {}
        }
        path
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
                format!(
                    "aliases expand to more than {ALIAS_BUDGET} nodes (a YAML bomb?); write \
                     the values out"
                ),
            ));
        }
        self.budget -= nodes;
        Ok(())
    }

    /// Adds a finished node (`height` levels deep) to its parent, or ends the document when
    /// it is the root.
    fn push(&mut self, node: Node, height: usize, merge: bool) {
        let document = self.stream.documents.len();
        let Some(frame) = self.stack.last_mut() else {
            self.stream.documents.push(Document {
                // Where the content starts (a document's `---` line tells the user less).
                line: node.line.max(self.doc_line),
                root: node,
            });
            return;
        };
        let complaint = match frame {
            Frame::Seq {
                items, height: h, ..
            } => {
                *h = (*h).max(height);
                items.push(node);
                return;
            }
            Frame::Map {
                entries,
                keys,
                pending_key,
                height: h,
                ..
            } => {
                *h = (*h).max(height);
                let Some((key, key_is_merge)) = pending_key.take() else {
                    *pending_key = Some((node, merge));
                    return;
                };
                let complaint = match &key.value {
                    _ if key_is_merge => {
                        Some("YAML merge keys (<<) are not supported; write the fields out".into())
                    }
                    Value::Seq(_) | Value::Map(_) => Some("a mapping key must be a scalar".into()),
                    k if KeyId::of(k).is_some_and(|id| {
                        let next = entries.len();
                        *keys.entry(id).or_insert(next) != next
                    }) =>
                    {
                        Some(format!(
                            "duplicate key {} (YAML would keep only the last value)",
                            describe_key(k)
                        ))
                    }
                    _ => None,
                };
                match complaint {
                    Some(message) => (key, message),
                    None => {
                        entries.push((key, node));
                        return;
                    }
                }
            }
        };
        let (key, message) = complaint;
        let mut path = self.path();
        path.push(PathKey::Key(key_text(&key.value)));
        self.stream.problems.push(YamlProblem {
            line: key.line,
            column: 0,
            message,
            document: Some(document),
            path,
        });
    }
}

fn too_deep(mark: &Marker) -> YamlProblem {
    problem(
        mark,
        format!(
            "nesting deeper than {MAX_DEPTH} levels (sequences and mappings, aliases included)"
        ),
    )
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
    #[test]
    fn forbidden_characters_refuse_the_stream_at_their_line() {
        let s = parse("a: 1\nb: x\0y\n---\nc: 2\n");
        assert!(s.documents.is_empty());
        assert_eq!((s.problems[0].line, s.problems[0].column), (2, 5));
        assert!(s.problems[0].message.contains("U+0000"), "{:?}", s.problems);
        for bad in [
            '\u{1}', '\u{8}', '\u{b}', '\u{c}', '\u{1b}', '\u{7f}', '\u{9f}', '\u{fffe}',
        ] {
            let s = parse(&format!("a: 1\r\nb: \"x{bad}\"\n"));
            assert_eq!(s.problems.len(), 1, "{bad:?}");
            assert_eq!(s.problems[0].line, 2, "{bad:?}");
        }
        // Lone CRs are line breaks too.
        assert_eq!(parse("a: 1\rb: 2\r\u{1}").problems[0].line, 3);
        // Tabs, escapes and printable non-ASCII are fine.
        assert_eq!(one("\"a\\0\\x01\"\t"), Value::Str("a\0\u{1}".into()));
        assert_eq!(
            one("\u{85}é\u{10000}"),
            Value::Str("\u{85}é\u{10000}".into())
        );
    }

    #[test]
    fn a_leading_byte_order_mark_is_not_content() {
        let s = parse("\u{feff}a: 1\nb: 2\n");
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        let d = &s.documents[0];
        assert_eq!(d.line_of(&[PathKey::Key("b".into())]), 2);
        match &d.root.value {
            Value::Map(entries) => assert_eq!(entries[0].0.value, Value::Str("a".into())),
            other => panic!("{other:?}"),
        }
    }

    fn refused_as_too_deep(text: &str) {
        let s = parse(text);
        assert!(
            s.problems
                .iter()
                .any(|p| p.message.contains("nesting deeper")),
            "{:?}",
            s.problems
        );
    }

    #[test]
    fn nesting_has_a_limit_for_every_kind() {
        let n = 100_000;
        refused_as_too_deep(&"- ".repeat(n));
        refused_as_too_deep(&format!("{}{}", "[".repeat(n), "]".repeat(n)));
        refused_as_too_deep(&"{a: ".repeat(n));
        refused_as_too_deep(&format!("{}{}", "[{a: ".repeat(n), "}]".repeat(n)));
        let mut block = String::new();
        for i in 0..2_000 {
            block.push_str(&" ".repeat(i));
            block.push_str(if i % 2 == 0 { "k:\n" } else { "- \n" });
        }
        refused_as_too_deep(&block);
        // Exactly at the limit is fine, one more is not.
        let at = format!("{}1{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse(&at).problems.is_empty());
        refused_as_too_deep(&format!("[{at}]"));
        // Aliases cannot stack nesting beyond the limit either.
        let half = MAX_DEPTH / 2 + 1;
        let deep = format!("{}1{}", "[".repeat(half), "]".repeat(half));
        refused_as_too_deep(&format!(
            "a: &a {deep}\nb: &b {}*a{}\n",
            "[".repeat(half),
            "]".repeat(half)
        ));
    }

    #[test]
    fn duplicate_keys_compare_as_python_dict_keys() {
        let s = parse("1: a\n1.0: b\ntrue: c\n'1': d\n.nan: e\n.nan: f\n~: g\nnull: h\n");
        let lines: Vec<u32> = s.problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, vec![2, 3, 8], "{:?}", s.problems);
    }

    #[test]
    fn lines_in_large_mappings_are_found_by_key() {
        let mut text = String::from("m:\n");
        for i in 0..100 {
            text.push_str(&format!("  k{i}: {{x: {i}}}\n"));
        }
        text.push_str("  7: seven\n");
        let s = parse(&text);
        let d = &s.documents[0];
        let k = |x: &str| PathKey::Key(x.into());
        assert_eq!(d.line_of(&[k("m"), k("k42"), k("x")]), 44);
        assert_eq!(d.line_of(&[k("m"), k("7")]), 102); // an int key, by the scan
        assert_eq!(d.line_of(&[k("m"), PathKey::Index(7)]), 102);
        assert_eq!(d.line_of(&[k("m"), k("missing")]), 1);
    }

    #[test]
    fn duplicate_key_detection_is_linear() {
        let mut text = String::new();
        for i in 0..200_000 {
            text.push_str(&format!("key{i}: {i}\n"));
        }
        text.push_str("key7: again\n");
        let started = std::time::Instant::now();
        let s = parse(&text);
        assert_eq!(s.problems.len(), 1);
        assert_eq!(s.problems[0].line, 200_001);
        // Quadratic detection took minutes here; linear takes well under a second.
        assert!(started.elapsed().as_secs() < 20, "{:?}", started.elapsed());
    }

    #[test]
    fn alias_expansion_has_a_total_budget() {
        // Each alias is small, but together they would expand to 4 million nodes.
        let mut text =
            String::from("a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]\nb:\n");
        for _ in 0..250_000 {
            text.push_str("- *a\n");
        }
        let s = parse(&text);
        assert!(s.problems.iter().any(|p| p.message.contains("YAML bomb")));
    }

    #[test]
    fn enormous_integers_are_problems_at_their_path() {
        let s = parse(&format!("spec:\n  n: {}\n", "9".repeat(MAX_INT_DIGITS + 1)));
        assert_eq!(s.problems.len(), 1);
        assert_eq!(s.problems[0].line, 2);
        assert_eq!(
            s.problems[0].path,
            vec![PathKey::Key("spec".into()), PathKey::Key("n".into())]
        );
        assert_eq!(
            one(&"9".repeat(MAX_INT_DIGITS)),
            Value::BigInt("9".repeat(MAX_INT_DIGITS))
        );
    }
}
