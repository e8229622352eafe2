//! xDS snapshots: resources as content-addressed bytes, shared between proxies, with diffs whose
//! cost follows the change rather than the mesh.
//!
//! A [`Snapshot`] is one proxy's view: for each type URL, an ordered persistent map from resource
//! name to an interned resource. Snapshots derived from one another with
//! [`Snapshot::with_changes`] share structure, so a fleet of proxies that see mostly the same
//! clusters and endpoints costs little more memory than one proxy, and a change touches only the
//! paths it changes. Identical resources (same name and bytes) are stored once by the
//! [`ResourceStore`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};

use imbl::OrdMap;

pub mod wire;
use xxhash_rust::xxh3::xxh3_128;

/// One resource: its name, content version (a hash of its bytes) and serialized protobuf.
#[derive(Debug, PartialEq, Eq)]
pub struct Resource {
    pub name: String,
    pub version: String,
    pub body: Vec<u8>,
    hash: u128,
}

pub type ResourceRef = Arc<Resource>;

/// A resource to upsert (`Some`) or remove (`None`), by name.
pub type Change = (String, Option<ResourceRef>);

/// Interns resources so that identical ones are held once, however many proxies see them.
#[derive(Debug, Default)]
pub struct ResourceStore {
    interned: Mutex<HashMap<(u128, String), Weak<Resource>>>,
}

impl ResourceStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// The shared copy of (name, body).
    pub fn intern(&self, name: &str, body: Vec<u8>) -> ResourceRef {
        let hash = xxh3_128(&body);
        let key = (hash, name.to_string());
        // A poisoned lock only means another thread panicked mid-insert; the map is still a
        // valid cache (entries are weak and re-checked), so keep going.
        let mut map = self.interned.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = map.get(&key).and_then(Weak::upgrade) {
            if existing.body == body {
                return existing;
            }
        }
        let resource = Arc::new(Resource {
            name: name.to_string(),
            version: format!("{hash:032x}"),
            body,
            hash,
        });
        map.insert(key, Arc::downgrade(&resource));
        // Drop entries whose resources are gone, now and then, so the index stays small.
        if map.len() > 1024 && map.len().is_power_of_two() {
            map.retain(|_, weak| weak.strong_count() > 0);
        }
        resource
    }

    /// Number of distinct live resources.
    pub fn len(&self) -> usize {
        let map = self.interned.lock().unwrap_or_else(|e| e.into_inner());
        map.values().filter(|w| w.strong_count() > 0).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The resources of one type, with an order-independent aggregate version kept up to date in
/// O(1) per change (for SotW `version_info`).
#[derive(Debug, Clone, Default)]
struct TypeSet {
    map: OrdMap<String, ResourceRef>,
    aggregate: u128,
}

fn mix(r: &Resource) -> u128 {
    // Name and content both matter: renaming a resource changes the type's version.
    xxh3_128(r.name.as_bytes()) ^ r.hash.rotate_left(17)
}

impl TypeSet {
    /// Inserts or replaces; false when the very same interned resource was already there.
    fn insert(&mut self, r: ResourceRef) -> bool {
        if self
            .map
            .get(&r.name)
            .is_some_and(|old| Arc::ptr_eq(old, &r))
        {
            return false;
        }
        let m = mix(&r);
        match self.map.insert(r.name.clone(), r) {
            Some(old) => self.aggregate ^= mix(&old) ^ m,
            None => self.aggregate ^= m,
        }
        true
    }

    fn remove(&mut self, name: &str) -> bool {
        match self.map.remove(name) {
            Some(old) => {
                self.aggregate ^= mix(&old);
                true
            }
            None => false,
        }
    }
}

/// What a proxy must be sent for one type: resources to (re)send and names to remove.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Delta {
    pub updated: Vec<ResourceRef>,
    pub removed: Vec<String>,
}

/// The few type URLs of a snapshot, in a small vector: cloning one is one allocation, and
/// lookups compare a handful of keys (far cheaper than a map for five entries).
#[derive(Debug, Clone, Default)]
struct TypeMap(Vec<(Arc<str>, TypeSet)>);

impl TypeMap {
    fn get(&self, type_url: &str) -> Option<&TypeSet> {
        self.0
            .iter()
            .find(|(k, _)| &**k == type_url)
            .map(|(_, v)| v)
    }

    fn entry(&mut self, type_url: &str) -> &mut TypeSet {
        let at = match self.0.iter().position(|(k, _)| &**k == type_url) {
            Some(at) => at,
            None => {
                self.0.push((Arc::from(type_url), TypeSet::default()));
                self.0.len() - 1
            }
        };
        &mut self.0[at].1
    }

    fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| &**k)
    }

    fn values(&self) -> impl Iterator<Item = &TypeSet> {
        self.0.iter().map(|(_, v)| v)
    }
}

/// One proxy's resources, by type URL. Cheap to clone (persistent maps).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    types: TypeMap,
}

impl Snapshot {
    /// Builds a snapshot from (type URL, name, bytes) triples; later duplicates of a name win.
    pub fn build<I>(store: &ResourceStore, resources: I) -> Self
    where
        I: IntoIterator<Item = (String, String, Vec<u8>)>,
    {
        let mut snapshot = Snapshot::default();
        for (type_url, name, body) in resources {
            let r = store.intern(&name, body);
            snapshot.types.entry(&type_url).insert(r);
        }
        snapshot
    }

    /// A new snapshot with `changes` applied to one type (`None` removes), sharing everything
    /// else with `self`; also returns the names whose content actually changed.
    pub fn with_changes<I>(
        &self,
        store: &ResourceStore,
        type_url: &str,
        changes: I,
    ) -> (Self, Vec<String>)
    where
        I: IntoIterator<Item = (String, Option<Vec<u8>>)>,
    {
        let interned: Vec<Change> = changes
            .into_iter()
            .map(|(name, body)| {
                let r = body.map(|b| store.intern(&name, b));
                (name, r)
            })
            .collect();
        self.with_interned(type_url, &interned)
    }

    /// [`Snapshot::with_changes`] with resources already interned: applying one change to a
    /// whole fleet interns it once and then costs a persistent-map insert per proxy.
    pub fn with_interned(&self, type_url: &str, changes: &[Change]) -> (Self, Vec<String>) {
        let mut next = self.clone();
        let set = next.types.entry(type_url);
        let mut changed = Vec::new();
        for (name, resource) in changes {
            let did = match resource {
                Some(r) => set.insert(r.clone()),
                None => set.remove(name),
            };
            if did {
                changed.push(name.clone());
            }
        }
        (next, changed)
    }

    /// A new snapshot whose `type_url` resources are exactly `other`'s (shared, not copied).
    pub fn with_type_from(&self, other: &Snapshot, type_url: &str) -> Self {
        let mut next = self.clone();
        *next.types.entry(type_url) = other.types.get(type_url).cloned().unwrap_or_default();
        next
    }

    /// The type's aggregate version ("" when the type has no resources).
    pub fn version(&self, type_url: &str) -> String {
        match self.types.get(type_url) {
            Some(set) if !set.map.is_empty() => format!("{:032x}", set.aggregate),
            _ => String::new(),
        }
    }

    /// The resources of `type_url`: all of them (`None`), or those of `names` that exist, in
    /// name order.
    pub fn select(&self, type_url: &str, names: Option<&[String]>) -> Vec<ResourceRef> {
        let Some(set) = self.types.get(type_url) else {
            return Vec::new();
        };
        match names {
            None => set.map.values().cloned().collect(),
            Some(names) => {
                let mut sorted: Vec<&String> = names.iter().collect();
                sorted.sort();
                sorted.dedup();
                sorted
                    .into_iter()
                    .filter_map(|n| set.map.get(n.as_str()).cloned())
                    .collect()
            }
        }
    }

    pub fn get(&self, type_url: &str, name: &str) -> Option<&ResourceRef> {
        self.types.get(type_url).and_then(|s| s.map.get(name))
    }

    pub fn names(&self, type_url: &str) -> Vec<String> {
        self.types
            .get(type_url)
            .map(|s| s.map.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub fn len(&self, type_url: &str) -> usize {
        self.types.get(type_url).map_or(0, |s| s.map.len())
    }

    pub fn type_urls(&self) -> Vec<String> {
        let mut urls: Vec<String> = self.types.keys().map(str::to_string).collect();
        urls.sort();
        urls
    }

    pub fn is_empty(&self) -> bool {
        self.types.values().all(|s| s.map.is_empty())
    }

    /// What a client that holds `known` (name -> version) must receive so that its view of the
    /// subscribed names (`None`: all, the wildcard) equals this snapshot's. Names it subscribed
    /// to that do not exist come back in `removed` (delta xDS: they do not exist).
    pub fn diff(
        &self,
        type_url: &str,
        known: &HashMap<String, String>,
        subscribed: Option<&HashSet<String>>,
    ) -> Delta {
        let empty = TypeSet::default();
        let set = self.types.get(type_url).unwrap_or(&empty);
        let mut delta = Delta::default();
        let wanted = |name: &str| subscribed.is_none_or(|s| s.contains(name));
        match subscribed {
            // Explicit names: work follows the subscription, not the type's size.
            Some(names) => {
                let mut sorted: Vec<&String> = names.iter().collect();
                sorted.sort();
                for name in sorted {
                    match set.map.get(name.as_str()) {
                        Some(r) if known.get(name.as_str()) != Some(&r.version) => {
                            delta.updated.push(r.clone())
                        }
                        Some(_) => {}
                        None => delta.removed.push(name.clone()),
                    }
                }
            }
            None => {
                for (name, r) in set.map.iter() {
                    if known.get(name.as_str()) != Some(&r.version) {
                        delta.updated.push(r.clone());
                    }
                }
                let mut gone: Vec<String> = known
                    .keys()
                    .filter(|n| !set.map.contains_key(n.as_str()) && wanted(n))
                    .cloned()
                    .collect();
                gone.sort();
                delta.removed = gone;
            }
        }
        delta
    }

    /// Names of `type_url` that differ between `older` and `self` (changed or added, then
    /// removed). Shared subtrees of the persistent maps are skipped, so the cost follows the
    /// change when one snapshot was derived from the other.
    pub fn changed_since(&self, older: &Snapshot, type_url: &str) -> (Vec<String>, Vec<String>) {
        let empty = TypeSet::default();
        let new = self.types.get(type_url).unwrap_or(&empty);
        let old = older.types.get(type_url).unwrap_or(&empty);
        let mut changed = Vec::new();
        let mut removed = Vec::new();
        for item in old.map.diff(&new.map) {
            match item {
                imbl::ordmap::DiffItem::Add(k, _) => changed.push(k.clone()),
                imbl::ordmap::DiffItem::Update {
                    old: (k, a),
                    new: (_, b),
                } => {
                    if !Arc::ptr_eq(a, b) {
                        changed.push(k.clone());
                    }
                }
                imbl::ordmap::DiffItem::Remove(k, _) => removed.push(k.clone()),
            }
        }
        (changed, removed)
    }
}

/// The snapshots of a fleet of proxies by node id, updated in place.
#[derive(Debug, Default)]
pub struct Fleet {
    snapshots: HashMap<String, Snapshot>,
}

impl Fleet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set(&mut self, node_id: &str, snapshot: Snapshot) {
        self.snapshots.insert(node_id.to_string(), snapshot);
    }

    pub fn get(&self, node_id: &str) -> Option<&Snapshot> {
        self.snapshots.get(node_id)
    }

    pub fn remove(&mut self, node_id: &str) -> bool {
        self.snapshots.remove(node_id).is_some()
    }

    pub fn nodes(&self) -> Vec<String> {
        let mut nodes: Vec<String> = self.snapshots.keys().cloned().collect();
        nodes.sort();
        nodes
    }

    pub fn len(&self) -> usize {
        self.snapshots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.snapshots.is_empty()
    }

    /// Applies `changes` of one type to the proxies holding any of the names (or to `nodes`),
    /// returning the ids of those whose view changed, sorted. Proxies that share the same
    /// persistent map for the type (endpoints seen by the whole fleet) share the result: the
    /// work is one map update per distinct map, then a pointer swap per proxy. With `nodes`,
    /// only those are looked up (one hash lookup each, not a pass over the fleet).
    pub fn apply(
        &mut self,
        type_url: &str,
        changes: &[Change],
        nodes: Option<&[String]>,
    ) -> Vec<String> {
        let mut memo = Memo::default();
        let mut changed_nodes = Vec::new();
        match nodes {
            Some(ids) => {
                for id in ids {
                    if let Some(snap) = self.snapshots.get_mut(id.as_str()) {
                        if apply_one(snap, type_url, changes, &mut memo) {
                            changed_nodes.push(id.clone());
                        }
                    }
                }
                changed_nodes.sort_unstable();
                changed_nodes.dedup();
            }
            None => {
                for (id, snap) in self.snapshots.iter_mut() {
                    let holds = snap.types.get(type_url).is_some_and(|t| {
                        changes
                            .iter()
                            .any(|(name, _)| t.map.contains_key(name.as_str()))
                    });
                    if holds && apply_one(snap, type_url, changes, &mut memo) {
                        changed_nodes.push(id.clone());
                    }
                }
                changed_nodes.sort_unstable();
            }
        }
        changed_nodes
    }
}

/// The sets a [`Fleet::apply`] updated (old set, new set, whether it changed), found by the
/// old set's aggregate version, then by identity: proxies holding the same set share the
/// result, and a proxy whose set is its own (its own resources merged in) costs one lookup.
#[derive(Default)]
struct Memo(HashMap<u128, Vec<(TypeSet, TypeSet, bool)>>);

/// Applies `changes` to one proxy's set of `type_url`, sharing the result with the proxies
/// that held the same set; true when it changed.
fn apply_one(snap: &mut Snapshot, type_url: &str, changes: &[Change], memo: &mut Memo) -> bool {
    let set = snap.types.entry(type_url);
    let seen = memo.0.entry(set.aggregate).or_default();
    let hit = seen.iter().find(|(old, _, _)| old.map.ptr_eq(&set.map));
    let (new_set, did) = match hit {
        Some((_, new_set, did)) => (new_set.clone(), *did),
        None => {
            let old = set.clone();
            let mut new_set = set.clone();
            let mut did = false;
            for (name, resource) in changes {
                did |= match resource {
                    Some(r) => new_set.insert(r.clone()),
                    None => new_set.remove(name),
                };
            }
            seen.push((old, new_set.clone(), did));
            (new_set, did)
        }
    };
    if did {
        *set = new_set;
    }
    did
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

    fn snap(store: &ResourceStore, items: &[(&str, &[u8])]) -> Snapshot {
        Snapshot::build(
            store,
            items
                .iter()
                .map(|(n, b)| (C.to_string(), n.to_string(), b.to_vec())),
        )
    }

    #[test]
    fn identical_resources_are_stored_once() {
        let store = ResourceStore::new();
        let a = snap(&store, &[("x", b"1"), ("y", b"2")]);
        let b = snap(&store, &[("x", b"1"), ("y", b"3")]);
        assert!(Arc::ptr_eq(
            a.get(C, "x").expect("present"),
            b.get(C, "x").expect("present")
        ));
        assert_eq!(store.len(), 3);
        drop(a);
        drop(b);
        assert_eq!(store.len(), 0);
    }

    #[test]
    fn versions_follow_content_not_order() {
        let store = ResourceStore::new();
        let a = snap(&store, &[("x", b"1"), ("y", b"2")]);
        let b = snap(&store, &[("y", b"2"), ("x", b"1")]);
        assert_eq!(a.version(C), b.version(C));
        let c = snap(&store, &[("x", b"1"), ("y", b"changed")]);
        assert_ne!(a.version(C), c.version(C));
        assert_eq!(Snapshot::default().version(C), "");
        let (d, changed) = c.with_changes(&store, C, [("y".to_string(), Some(b"2".to_vec()))]);
        assert_eq!(changed, vec!["y".to_string()]);
        assert_eq!(d.version(C), a.version(C));
    }

    #[test]
    fn diff_against_what_the_client_has() {
        let store = ResourceStore::new();
        let s = snap(&store, &[("a", b"1"), ("b", b"2"), ("c", b"3")]);
        let mut known: HashMap<String, String> = HashMap::new();
        known.insert(
            "a".into(),
            s.get(C, "a").map(|r| r.version.clone()).unwrap_or_default(),
        );
        known.insert("b".into(), "stale".into());
        known.insert("gone".into(), "v".into());
        let d = s.diff(C, &known, None);
        let names: Vec<&str> = d.updated.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, vec!["b", "c"]);
        assert_eq!(d.removed, vec!["gone".to_string()]);
        let sub: HashSet<String> = ["a", "missing"].iter().map(|s| s.to_string()).collect();
        let d = s.diff(C, &known, Some(&sub));
        assert!(d.updated.is_empty());
        assert_eq!(d.removed, vec!["missing".to_string()]);
    }

    #[test]
    fn changes_share_structure_and_diff_cheaply() {
        let store = ResourceStore::new();
        let items: Vec<(String, String, Vec<u8>)> = (0..10_000)
            .map(|i| {
                (
                    C.to_string(),
                    format!("cluster-{i:05}"),
                    format!("body {i}").into_bytes(),
                )
            })
            .collect();
        let base = Snapshot::build(&store, items);
        let (next, changed) = base.with_changes(
            &store,
            C,
            [
                ("cluster-00042".to_string(), Some(b"new".to_vec())),
                ("cluster-00043".to_string(), None),
                ("cluster-00044".to_string(), Some(b"body 44".to_vec())), // unchanged
            ],
        );
        assert_eq!(
            changed,
            vec!["cluster-00042".to_string(), "cluster-00043".to_string()]
        );
        let (ch, rm) = next.changed_since(&base, C);
        assert_eq!(ch, vec!["cluster-00042".to_string()]);
        assert_eq!(rm, vec!["cluster-00043".to_string()]);
        assert_eq!(next.len(C), 9_999);
        assert_eq!(base.len(C), 10_000);
    }

    #[test]
    fn fleet_updates_holders_in_place_and_shares_results() {
        let store = ResourceStore::new();
        let base = snap(&store, &[("a", b"1"), ("b", b"2")]);
        let mut fleet = Fleet::new();
        for i in 0..100 {
            fleet.set(&format!("p{i:03}"), base.clone());
        }
        let (other, _) = base.with_changes(&store, C, [("a".to_string(), None)]);
        fleet.set("zz-without-a", other);
        let change: Vec<Change> = vec![("a".to_string(), Some(store.intern("a", b"new".to_vec())))];
        let changed = fleet.apply(C, &change, None);
        assert_eq!(changed.len(), 100); // not the proxy that does not hold "a"
        let p0 = fleet.get("p000").expect("present");
        let p1 = fleet.get("p001").expect("present");
        assert_eq!(
            p0.get(C, "a").map(|r| r.body.clone()),
            Some(b"new".to_vec())
        );
        assert!(p0
            .types
            .get(C)
            .expect("type")
            .map
            .ptr_eq(&p1.types.get(C).expect("type").map));
        assert!(fleet.apply(C, &change, None).is_empty()); // already applied: nothing to push
        let only = ["zz-without-a".to_string(), "not-connected".to_string()];
        assert_eq!(
            fleet.apply(C, &change, Some(&only)),
            vec!["zz-without-a".to_string()]
        );
    }
}
