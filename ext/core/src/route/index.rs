//! The per-virtual-host route index: what each route's path specifier pins down (exact paths,
//! prefix trie nodes, regex literal prefixes) as candidate lists in table order. The index only
//! proposes; `CompiledRouteTable` checks each candidate's full condition (see `mod.rs`).

use super::slots::SlotTable;
use super::{CompiledRoute, PathMatch};
use crate::fasthash::{FastMap, Ids};
use crate::request::{find_either, Request};

pub(super) const PATH_SUFFICES: u32 = 1 << 31;
/// No route (an empty candidate list).
const NONE: u32 = u32::MAX;

/// A prefix trie node while the index is built.
#[derive(Debug, Default, Clone)]
struct TrieNode {
    children: FastMap<Box<str>, u32>,
    routes: Vec<u32>,
}

/// Candidate lists for one virtual host's routes (global route indices, ascending).
///
/// An id with `PATH_SUFFICES` set is proven by the lookup that found it: the route needs
/// nothing but its (case-sensitive) path, and the key comparison (exact paths) or the trie
/// node reached (a prefix ending in '/', a path-separated prefix) shows that the path
/// matches. Such a hit never reads the route itself.
///
/// The lists are built in hash maps, then frozen by `finish` into [`SlotTable`]s: one for
/// exact paths (`[first id, floor, more]`), one for every trie node's children, keyed by
/// (parent node, segment) (`[child, first id of the child's list, length of that list]`).
#[derive(Debug, Default, Clone)]
pub(super) struct RouteIndex {
    always: Vec<u32>,
    /// While building: route ids by exact path.
    exact_ids: FastMap<Box<str>, Ids>,
    /// While building: the prefix trie.
    trie: Vec<TrieNode>,
    /// Exact path -> `[first id, floor, more]`: `more` indexes `lists` (the other ids under
    /// that path) or is `NONE`. The floor is the least id any other list (the trie's along
    /// that path, `always`) could propose for that very path; an exact id below it that
    /// needs only its path is the answer.
    exact: SlotTable,
    lists: Vec<Box<[u32]>>,
    /// (parent node, segment) -> `[child node, first id of its list or NONE, list length]`.
    children: SlotTable,
    /// Each trie node's candidate list (node 0: the root).
    nodes: Vec<Box<[u32]>>,
}

impl RouteIndex {
    fn trie_node(&mut self, segments: &[&str]) -> usize {
        if self.trie.is_empty() {
            self.trie.push(TrieNode::default());
        }
        let mut node = 0usize;
        for seg in segments {
            let next = self.trie.len() as u32;
            let child = *self.trie[node]
                .children
                .entry((*seg).into())
                .or_insert(next);
            if child == next {
                self.trie.push(TrieNode::default());
            }
            node = child as usize;
        }
        node
    }

    fn add_exact(&mut self, key: &str, id: u32) {
        match self.exact_ids.get_mut(key) {
            Some(ids) => ids.push(id),
            None => {
                self.exact_ids.insert(key.into(), Ids::One(id));
            }
        }
    }

    /// `path_suffices`: the route has no condition besides its path.
    pub(super) fn add(&mut self, id: u32, path: &PathMatch, path_suffices: bool) {
        let flagged = if path_suffices {
            id | PATH_SUFFICES
        } else {
            id
        };
        match path {
            PathMatch::Exact {
                value,
                ignore_case: false,
            } => self.add_exact(value, flagged),
            PathMatch::Prefix {
                value,
                ignore_case: false,
            } if value.starts_with('/') => {
                // Only segments followed by '/' are certain to appear whole in a matching path.
                let mut segs: Vec<&str> = value[1..].split('/').collect();
                let last = segs.pop();
                let n = self.trie_node(&segs);
                // Reaching a node below the root proves "/seg/.../seg/": the whole prefix
                // when it ends with '/'.
                let proven = last == Some("") && !segs.is_empty();
                self.trie[n].routes.push(if proven { flagged } else { id });
            }
            PathMatch::Separated {
                value,
                ignore_case: false,
            } if value.starts_with('/') => {
                self.add_exact(value, flagged);
                let segs: Vec<&str> = value[1..].split('/').collect();
                let n = self.trie_node(&segs);
                // The node is reached only when "/seg/.../seg" is followed by '/'.
                self.trie[n].routes.push(flagged);
            }
            // A regex whose every match starts with a literal "/a/b/..." is a candidate only
            // for paths under it, as a prefix route would be.
            PathMatch::Regex(r) => match r.literal_prefix().strip_prefix('/') {
                Some(lit) => {
                    let mut segs: Vec<&str> = lit.split('/').collect();
                    segs.pop();
                    let n = self.trie_node(&segs);
                    self.trie[n].routes.push(id);
                }
                None => self.always.push(id),
            },
            _ => self.always.push(id),
        }
    }

    /// Calls `f` with each non-empty trie node's candidate list along `p` (the root's
    /// first): `(first id, node)`; the node's whole list is `self.nodes[node]`.
    #[inline]
    fn walk_trie(&self, p: &str, mut f: impl FnMut(u32, u32)) {
        let Some(root) = self.nodes.first() else {
            return;
        };
        if let Some(&first) = root.first() {
            f(first, 0);
        }
        let Some(mut rest) = p.strip_prefix('/') else {
            return;
        };
        let mut node = 0u32;
        // Each segment followed by '/' ('/' is ASCII: the slices are on char boundaries).
        while let Some(end) = find_either(rest.as_bytes(), b'/', b'/') {
            let (Some(seg), Some(after)) = (rest.get(..end), rest.get(end + 1..)) else {
                break;
            };
            let Some(&[child, first, _]) = self.children.get(node, seg.as_bytes()) else {
                break;
            };
            node = child;
            if first != NONE {
                f(first, node);
            }
            rest = after;
        }
    }

    /// Once every route is added: freezes the lists into slot tables, with the floor of
    /// each exact path.
    pub(super) fn finish(&mut self) {
        let trie = std::mem::take(&mut self.trie);
        let mut children = Vec::new();
        for (parent, n) in trie.iter().enumerate() {
            for (seg, &child) in &n.children {
                let list = trie.get(child as usize).map_or(&[][..], |c| &c.routes[..]);
                let first = list.first().copied().unwrap_or(NONE);
                children.push((
                    parent as u32,
                    seg.as_bytes(),
                    [child, first, list.len() as u32],
                ));
            }
        }
        self.children = SlotTable::build(children.into_iter());
        self.nodes = trie.iter().map(|n| n.routes.clone().into()).collect();
        let exact_ids = std::mem::take(&mut self.exact_ids);
        let mut exact = Vec::with_capacity(exact_ids.len());
        for (key, ids) in &exact_ids {
            let mut floor = self.always.first().copied().unwrap_or(u32::MAX);
            self.walk_trie(key, |first, _| floor = floor.min(first & !PATH_SUFFICES));
            let ids = ids.as_slice();
            let more = if ids.len() > 1 {
                self.lists.push(ids[1..].into());
                self.lists.len() as u32 - 1
            } else {
                NONE
            };
            let first = ids.first().copied().unwrap_or(NONE);
            exact.push((0, key.as_bytes(), [first, floor, more]));
        }
        self.exact = SlotTable::build(exact.into_iter());
    }

    /// The first route (in table order) among the candidates that fully matches.
    pub(super) fn first_match(
        &self,
        routes: &[CompiledRoute],
        req: &Request<'_>,
        path: &str,
        p: &str,
    ) -> Option<u32> {
        let mut best = u32::MAX;
        // Whether `flagged` settles the scan of its list (it matched, or nothing after it
        // in the list can be better than `best`).
        let try_id = |flagged: u32, best: &mut u32| -> bool {
            let id = flagged & !PATH_SUFFICES;
            if id >= *best {
                return true;
            }
            if flagged & PATH_SUFFICES != 0
                || routes
                    .get(id as usize)
                    .is_some_and(|r| r.matches(req, path, p))
            {
                *best = id;
                return true;
            }
            false
        };
        let scan = |list: &[u32], best: &mut u32| {
            for &flagged in list {
                if try_id(flagged, best) {
                    break;
                }
            }
        };
        // The result is the least matching id over all lists, whatever their order: the
        // hashed lists first give the unindexed ones (regexes, case-insensitive paths) a bound.
        if let Some(&[first, floor, more]) = self.exact.get(0, p.as_bytes()) {
            if !try_id(first, &mut best) {
                if let Some(rest) = self.lists.get(more as usize) {
                    scan(rest, &mut best);
                }
            }
            if best < floor {
                return Some(best);
            }
        }
        self.walk_trie(p, |first, node| {
            if !try_id(first, &mut best) {
                if let Some(list) = self.nodes.get(node as usize) {
                    scan(list.get(1..).unwrap_or_default(), &mut best);
                }
            }
        });
        scan(&self.always, &mut best);
        (best != u32::MAX).then_some(best)
    }
}
