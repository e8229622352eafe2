//! The policy index: evaluation must not scan every policy.
//!
//! For each policy we derive a necessary condition: a set of literals ("method is GET",
//! "url path starts with /api", "a principal string equals spiffe://...") at least one of
//! which holds whenever the policy matches. A request then only needs the policies whose
//! literal it satisfies (found by hash or trie lookup) plus those without a usable condition,
//! checked fully in name order. The condition is only a filter: the full check decides, so
//! the index can never change a decision.

use super::{Attributes, CompiledPolicy, Matcher};
use crate::matcher::{CompiledString, HeaderTest};

use crate::fasthash::{hash_of, HashKeyMap, Ids};

/// Policy ids by the hash of a literal. The literal itself is not kept: a hash collision only
/// adds a candidate, which the full check rejects (and a lookup saves a string comparison and
/// its cache miss).
type LiteralMap = HashKeyMap<Ids>;

fn add(map: &mut LiteralMap, key: &str, id: u32) {
    match map.get_mut(&hash_of(key)) {
        Some(ids) => ids.push(id),
        None => {
            map.insert(hash_of(key), Ids::One(id));
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Literal {
    Method(String),
    PathPrefix(String),
    /// Equal to one of the URI SANs, DNS SANs or the subject (on a TLS connection).
    Principal(String),
}

impl Literal {
    /// How selective a literal usually is (higher is better): methods are few, principals many.
    fn rank(&self) -> u8 {
        match self {
            Self::Method(_) => 1,
            Self::PathPrefix(_) => 2,
            Self::Principal(_) => 3,
        }
    }
}

/// A disjunction of literals; None means "no usable condition" (always a candidate).
type Condition = Option<Vec<Literal>>;

fn score(c: &[Literal]) -> (u8, std::cmp::Reverse<usize>) {
    let rank = c.iter().map(Literal::rank).min().unwrap_or(0);
    (rank, std::cmp::Reverse(c.len()))
}

/// The better of two necessary conditions (both hold, so either may be used).
fn best(a: Condition, b: Condition) -> Condition {
    match (a, b) {
        (None, x) | (x, None) => x,
        (Some(a), Some(b)) => Some(if score(&b) > score(&a) { b } else { a }),
    }
}

fn any_of(ms: &[Matcher]) -> Condition {
    let mut out = Vec::new();
    for m in ms {
        out.extend(condition(m)?);
    }
    // An empty disjunction would mean "never"; keep such a policy as always-checked instead.
    (!out.is_empty()).then_some(out)
}

fn condition(m: &Matcher) -> Condition {
    match m {
        Matcher::And(ms) => ms.iter().map(condition).fold(None, best),
        Matcher::Or(ms) => any_of(ms),
        Matcher::Header(h) if h.name == ":method" && !h.invert => match &h.test {
            HeaderTest::Value(CompiledString::Exact {
                value,
                ignore_case: false,
            }) => Some(vec![Literal::Method(value.clone())]),
            _ => None,
        },
        Matcher::UrlPath(
            CompiledString::Exact {
                value,
                ignore_case: false,
            }
            | CompiledString::Prefix {
                value,
                ignore_case: false,
            },
        ) => Some(vec![Literal::PathPrefix(value.clone())]),
        Matcher::Authenticated(Some(CompiledString::Exact {
            value,
            ignore_case: false,
        })) => Some(vec![Literal::Principal(value.clone())]),
        _ => None,
    }
}

/// One trie node: children sorted by byte (byte, node id), and the policies ending here.
type TrieNode = (Vec<(u8, u32)>, Vec<u32>);

/// A byte trie of path prefixes; each node lists the policies whose prefix ends there.
#[derive(Debug, Clone, Default)]
struct Trie {
    nodes: Vec<TrieNode>,
}

impl Trie {
    fn insert(&mut self, key: &str, policy: u32) {
        if self.nodes.is_empty() {
            self.nodes.push(Default::default());
        }
        let mut at = 0usize;
        for b in key.bytes() {
            let next = match self.nodes[at].0.binary_search_by_key(&b, |c| c.0) {
                Ok(i) => self.nodes[at].0[i].1 as usize,
                Err(i) => {
                    let id = self.nodes.len();
                    self.nodes.push(Default::default());
                    self.nodes[at].0.insert(i, (b, id as u32));
                    id
                }
            };
            at = next;
        }
        self.nodes[at].1.push(policy);
    }

    fn collect<'x>(&'x self, key: &str, out: &mut Slices<'x>) {
        let Some(mut node) = self.nodes.first() else {
            return;
        };
        out.push(&node.1);
        for b in key.bytes() {
            let Ok(i) = node.0.binary_search_by_key(&b, |c| c.0) else {
                return;
            };
            let Some(next) = self.nodes.get(node.0[i].1 as usize) else {
                return;
            };
            node = next;
            out.push(&node.1);
        }
    }
}

/// The candidate lists of one request: each ascending (policy ids were pushed in name
/// order), merged on the fly, so a decision allocates nothing.
struct Slices<'x> {
    lists: [&'x [u32]; MAX_SLICES],
    len: usize,
    overflow: Vec<&'x [u32]>,
}

const MAX_SLICES: usize = 8;

impl<'x> Slices<'x> {
    fn new() -> Self {
        Self {
            lists: [&[]; MAX_SLICES],
            len: 0,
            overflow: Vec::new(),
        }
    }

    fn push(&mut self, s: &'x [u32]) {
        if s.is_empty() {
            return;
        }
        if self.len < MAX_SLICES {
            self.lists[self.len] = s;
            self.len += 1;
        } else {
            self.overflow.push(s);
        }
    }

    /// Calls `f` on every candidate once, in ascending order, until it returns true.
    fn find(&mut self, mut f: impl FnMut(u32) -> bool) -> Option<u32> {
        if self.len == 1 {
            // One list (the usual case: one literal matched): no merge needed.
            return self.lists[0].iter().copied().find(|&i| f(i));
        }
        let mut all: Vec<&'x [u32]>;
        let lists: &mut [&'x [u32]] = if self.overflow.is_empty() {
            &mut self.lists[..self.len]
        } else {
            all = self.lists[..self.len].to_vec();
            all.append(&mut self.overflow);
            &mut all
        };
        loop {
            let min = lists.iter().filter_map(|s| s.first().copied()).min()?;
            if f(min) {
                return Some(min);
            }
            for s in lists.iter_mut() {
                if s.first() == Some(&min) {
                    *s = &s[1..];
                }
            }
        }
    }
}

#[derive(Debug, Clone, Default)]
pub(super) struct Index {
    /// Policies without a usable condition: always checked.
    always: Vec<u32>,
    method: LiteralMap,
    principal: LiteralMap,
    /// Whether some policy requires a principal equal to "" (then an absent subject counts).
    empty_principal: bool,
    path: Trie,
    /// With few policies a plain scan is as fast; the index is skipped.
    scan: bool,
    len: u32,
}

const SCAN_BELOW: usize = 8;

impl Index {
    pub(super) fn build(policies: &[CompiledPolicy]) -> Self {
        let mut ix = Self {
            scan: policies.len() < SCAN_BELOW,
            len: policies.len() as u32,
            ..Self::default()
        };
        if ix.scan {
            return ix;
        }
        for (i, p) in policies.iter().enumerate() {
            let id = i as u32;
            let cond = best(any_of(&p.permissions), any_of(&p.principals));
            let Some(lits) = cond else {
                ix.always.push(id);
                continue;
            };
            for lit in lits {
                if lit == Literal::Principal(String::new()) {
                    ix.empty_principal = true;
                }
                match lit {
                    Literal::Method(m) => add(&mut ix.method, &m, id),
                    Literal::Principal(s) => add(&mut ix.principal, &s, id),
                    Literal::PathPrefix(p) => ix.path.insert(&p, id),
                }
            }
        }
        ix
    }

    /// Fills `out` (made by the caller: moving the struct out cost a copy per decision).
    fn slices<'x>(&'x self, a: &Attributes<'_>, out: &mut Slices<'x>) {
        out.push(&self.always);
        if !self.method.is_empty() {
            if let Some(v) = a.method.and_then(|m| self.method.get(&hash_of(m))) {
                out.push(v.as_slice());
            }
        }
        if !self.principal.is_empty() && a.tls {
            for s in a.uri_sans.iter().chain(a.dns_sans).chain([&a.subject]) {
                if s.is_empty() && !self.empty_principal {
                    continue;
                }
                if let Some(v) = self.principal.get(&hash_of(s)) {
                    out.push(v.as_slice());
                }
            }
        }
        // (No path literal at all: the path is not even scanned for its query.)
        if !self.path.nodes.is_empty() {
            if let Some(p) = a.url_path() {
                self.path.collect(p, out);
            }
        }
    }

    /// The policies that may match, ascending (name order), without duplicates.
    pub(super) fn candidates(&self, a: &Attributes<'_>) -> Vec<u32> {
        if self.scan {
            return (0..self.len).collect();
        }
        let mut out = Vec::new();
        let mut slices = Slices::new();
        self.slices(a, &mut slices);
        slices.find(|i| {
            out.push(i);
            false
        });
        out
    }

    pub(super) fn first_match(
        &self,
        policies: &[CompiledPolicy],
        a: &Attributes<'_>,
    ) -> Option<usize> {
        if self.scan {
            return policies.iter().position(|p| p.matches(a));
        }
        let mut slices = Slices::new();
        self.slices(a, &mut slices);
        slices
            .find(|i| policies.get(i as usize).is_some_and(|p| p.matches(a)))
            .map(|i| i as usize)
    }
}
