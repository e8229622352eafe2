//! xDS snapshots for Python: a resource store and immutable per-proxy snapshots.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use meshcore_core::xds::{wire, Change, Fleet, ResourceRef, ResourceStore, Snapshot};

/// Interns resources: identical (name, bytes) pairs are held once across all snapshots.
#[pyclass(frozen, module = "meshcore._core.xds", name = "ResourceStore")]
pub struct PyResourceStore {
    store: Arc<ResourceStore>,
}

#[pymethods]
impl PyResourceStore {
    #[new]
    fn new() -> Self {
        Self {
            store: Arc::new(ResourceStore::new()),
        }
    }

    /// A snapshot from {type_url: {name: serialized resource}}.
    fn snapshot(&self, py: Python<'_>, resources: &Bound<'_, PyDict>) -> PyResult<PySnapshot> {
        let mut items = Vec::new();
        for (type_url, by_name) in resources.iter() {
            let type_url: String = type_url.extract()?;
            let by_name = by_name.cast::<PyDict>()?;
            for (name, body) in by_name.iter() {
                items.push((
                    type_url.clone(),
                    name.extract::<String>()?,
                    body.extract::<Vec<u8>>()?,
                ));
            }
        }
        let store = self.store.clone();
        let inner = py.detach(move || Snapshot::build(&store, items));
        Ok(PySnapshot {
            inner,
            store: self.store.clone(),
        })
    }

    /// Distinct live resources.
    fn __len__(&self) -> usize {
        self.store.len()
    }
}

/// One proxy's resources by type URL; immutable (changes make a new snapshot sharing the rest).
#[pyclass(frozen, module = "meshcore._core.xds", name = "Snapshot")]
pub struct PySnapshot {
    inner: Snapshot,
    store: Arc<ResourceStore>,
}

type Updated = Vec<(String, String, Py<PyBytes>)>;

fn names_set(names: Option<&Bound<'_, PyAny>>) -> PyResult<Option<HashSet<String>>> {
    match names {
        Some(names) => Ok(Some(
            names
                .try_iter()?
                .map(|n| n?.extract::<String>())
                .collect::<PyResult<HashSet<String>>>()?,
        )),
        None => Ok(None),
    }
}

fn extract_changes(changes: &Bound<'_, PyDict>) -> PyResult<Vec<(String, Option<Vec<u8>>)>> {
    let mut items = Vec::with_capacity(changes.len());
    for (name, body) in changes.iter() {
        let body = if body.is_none() {
            None
        } else {
            Some(body.extract::<Vec<u8>>()?)
        };
        items.push((name.extract::<String>()?, body));
    }
    Ok(items)
}

fn updated(py: Python<'_>, rs: &[ResourceRef]) -> Updated {
    rs.iter()
        .map(|r| {
            (
                r.name.clone(),
                r.version.clone(),
                PyBytes::new(py, &r.body).unbind(),
            )
        })
        .collect()
}

#[pymethods]
impl PySnapshot {
    /// A new snapshot with {name: bytes or None (remove)} applied to one type, and the names
    /// whose content changed.
    fn with_changes(
        &self,
        py: Python<'_>,
        type_url: &str,
        changes: &Bound<'_, PyDict>,
    ) -> PyResult<(PySnapshot, Vec<String>)> {
        let items = extract_changes(changes)?;
        let (inner, changed) = py.detach(|| self.inner.with_changes(&self.store, type_url, items));
        Ok((
            PySnapshot {
                inner,
                store: self.store.clone(),
            },
            changed,
        ))
    }

    /// A new snapshot whose resources of `type_url` are `other`'s (shared, not copied).
    fn with_type_from(&self, other: &PySnapshot, type_url: &str) -> PySnapshot {
        PySnapshot {
            inner: self.inner.with_type_from(&other.inner, type_url),
            store: self.store.clone(),
        }
    }

    /// The type's aggregate version ("" when it has no resources).
    fn version(&self, type_url: &str) -> String {
        self.inner.version(type_url)
    }

    fn names(&self, type_url: &str) -> Vec<String> {
        self.inner.names(type_url)
    }

    fn type_urls(&self) -> Vec<String> {
        self.inner.type_urls()
    }

    fn count(&self, type_url: &str) -> usize {
        self.inner.len(type_url)
    }

    /// (version, bytes) of one resource, or None.
    fn resource(
        &self,
        py: Python<'_>,
        type_url: &str,
        name: &str,
    ) -> Option<(String, Py<PyBytes>)> {
        self.inner
            .get(type_url, name)
            .map(|r| (r.version.clone(), PyBytes::new(py, &r.body).unbind()))
    }

    /// What a client holding `known` ({name: version}) must get for `subscribed` names (None:
    /// all): ([(name, version, bytes)], [removed names]).
    #[pyo3(signature = (type_url, known, subscribed=None))]
    fn diff(
        &self,
        py: Python<'_>,
        type_url: &str,
        known: HashMap<String, String>,
        subscribed: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<(Updated, Vec<String>)> {
        let subscribed = match subscribed {
            Some(names) => Some(
                names
                    .try_iter()?
                    .map(|n| n?.extract::<String>())
                    .collect::<PyResult<HashSet<String>>>()?,
            ),
            None => None,
        };
        let delta = py.detach(|| self.inner.diff(type_url, &known, subscribed.as_ref()));
        Ok((updated(py, &delta.updated), delta.removed))
    }

    /// An encoded state-of-the-world DiscoveryResponse with the resources of `names` (None:
    /// all of the type) that exist: (bytes, number of resources). With `ttl` (seconds) each
    /// resource goes in a Resource wrapper with its name, `version` and the TTL.
    #[pyo3(signature = (type_url, version, nonce, names=None, ttl=None))]
    fn sotw_response(
        &self,
        py: Python<'_>,
        type_url: &str,
        version: &str,
        nonce: &str,
        names: Option<Vec<String>>,
        ttl: Option<f64>,
    ) -> PyResult<(Py<PyBytes>, usize)> {
        let ttl = ttl.map(ttl_duration).transpose()?;
        let (data, count) = py.detach(|| {
            let selected = self.inner.select(type_url, names.as_deref());
            (
                wire::encode_sotw(version, type_url, nonce, &selected, ttl),
                selected.len(),
            )
        });
        Ok((PyBytes::new(py, &data).unbind(), count))
    }

    /// A state-of-the-world heartbeat for `names`: Resources with the name, `version` and the
    /// TTL (seconds) but no resource.
    fn sotw_heartbeat(
        &self,
        py: Python<'_>,
        type_url: &str,
        version: &str,
        nonce: &str,
        names: Vec<String>,
        ttl: f64,
    ) -> PyResult<Py<PyBytes>> {
        let ttl = ttl_duration(ttl)?;
        let data = wire::encode_sotw_heartbeat(version, type_url, nonce, &names, ttl);
        Ok(PyBytes::new(py, &data).unbind())
    }

    /// A delta heartbeat for the resources of `known` ({name: version}) that the snapshot
    /// holds in that very version (in name order), or None when there is none.
    fn delta_heartbeat(
        &self,
        py: Python<'_>,
        type_url: &str,
        nonce: &str,
        known: HashMap<String, String>,
        ttl: f64,
    ) -> PyResult<Option<Py<PyBytes>>> {
        let ttl = ttl_duration(ttl)?;
        let mut held: Vec<(String, String)> = known
            .into_iter()
            .filter(|(name, version)| {
                self.inner
                    .get(type_url, name)
                    .is_some_and(|r| &r.version == version)
            })
            .collect();
        if held.is_empty() {
            return Ok(None);
        }
        held.sort();
        let data = wire::encode_delta_heartbeat(
            &self.inner.version(type_url),
            type_url,
            nonce,
            &held,
            ttl,
        );
        Ok(Some(PyBytes::new(py, &data).unbind()))
    }

    /// An encoded DeltaDiscoveryResponse bringing a client that holds `known` up to date for
    /// `subscribed` (None: all), or None when it already is: (bytes, [(name, version)] sent,
    /// [names removed]). With `ttl` (seconds) every resource carries it.
    #[pyo3(signature = (type_url, nonce, known, subscribed=None, report_missing=None, extra_removed=None, ttl=None))]
    // A Python signature with keyword defaults; a struct would only move the list.
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    fn delta_response(
        &self,
        py: Python<'_>,
        type_url: &str,
        nonce: &str,
        known: HashMap<String, String>,
        subscribed: Option<&Bound<'_, PyAny>>,
        report_missing: Option<&Bound<'_, PyAny>>,
        extra_removed: Option<Vec<String>>,
        ttl: Option<f64>,
    ) -> PyResult<Option<(Py<PyBytes>, Vec<(String, String)>, Vec<String>)>> {
        let subscribed = names_set(subscribed)?;
        let report = names_set(report_missing)?;
        let ttl = ttl.map(ttl_duration).transpose()?;
        let out = py.detach(|| {
            let mut delta = self.inner.diff(type_url, &known, subscribed.as_ref());
            // A subscribed name that does not exist is reported once, not on every push: only
            // those the client holds or has just asked about.
            delta.removed.retain(|n| {
                known.contains_key(n) || report.as_ref().is_some_and(|r| r.contains(n))
            });
            for name in extra_removed.unwrap_or_default() {
                if !delta.removed.contains(&name) {
                    delta.removed.push(name);
                }
            }
            delta.removed.sort();
            if delta.updated.is_empty() && delta.removed.is_empty() {
                return None;
            }
            let data = wire::encode_delta(
                &self.inner.version(type_url),
                type_url,
                nonce,
                &delta.updated,
                &delta.removed,
                ttl,
            );
            let sent = delta
                .updated
                .iter()
                .map(|r| (r.name.clone(), r.version.clone()))
                .collect::<Vec<_>>();
            Some((data, sent, delta.removed))
        });
        Ok(out.map(|(data, sent, removed)| (PyBytes::new(py, &data).unbind(), sent, removed)))
    }

    /// Names of `type_url` changed or added since `older`, and names removed.
    fn changed_since(
        &self,
        py: Python<'_>,
        older: &PySnapshot,
        type_url: &str,
    ) -> (Vec<String>, Vec<String>) {
        py.detach(|| self.inner.changed_since(&older.inner, type_url))
    }
}

/// A TTL in seconds as a protobuf Duration (whole nanoseconds, as protobuf's
/// Duration.FromNanoseconds keeps them).
fn ttl_duration(seconds: f64) -> PyResult<Duration> {
    if !(0.0..=315_576_000_000.0).contains(&seconds) {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "a resource TTL must be a finite number of seconds >= 0, not {seconds}"
        )));
    }
    Ok(Duration::from_nanos((seconds * 1e9) as u64))
}

/// The snapshots of a whole fleet of proxies, by node id, kept in the core so that a change
/// to many proxies costs no Python object per proxy.
#[pyclass(module = "meshcore._core.xds", name = "Fleet")]
pub struct PyFleet {
    store: Arc<ResourceStore>,
    fleet: Mutex<Fleet>,
}

impl PyFleet {
    fn lock(&self) -> std::sync::MutexGuard<'_, Fleet> {
        // A poisoned lock only means a panic elsewhere; each entry is a whole snapshot, so the
        // fleet is still consistent.
        self.fleet.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[pymethods]
impl PyFleet {
    #[new]
    fn new(store: &PyResourceStore) -> Self {
        Self {
            store: store.store.clone(),
            fleet: Mutex::new(Fleet::new()),
        }
    }

    fn set(&self, node_id: &str, snapshot: &PySnapshot) {
        self.lock().set(node_id, snapshot.inner.clone());
    }

    fn get(&self, node_id: &str) -> Option<PySnapshot> {
        self.lock().get(node_id).map(|inner| PySnapshot {
            inner: inner.clone(),
            store: self.store.clone(),
        })
    }

    fn remove(&self, node_id: &str) -> bool {
        self.lock().remove(node_id)
    }

    fn nodes(&self) -> Vec<String> {
        self.lock().nodes()
    }

    fn __len__(&self) -> usize {
        self.lock().len()
    }

    /// Applies {name: bytes or None} of one type to the proxies that hold any of those names
    /// (or to `nodes` when given, e.g. to add a resource); returns the node ids whose
    /// snapshot changed.
    #[pyo3(signature = (type_url, changes, nodes=None))]
    fn apply(
        &self,
        py: Python<'_>,
        type_url: &str,
        changes: &Bound<'_, PyDict>,
        nodes: Option<Vec<String>>,
    ) -> PyResult<Vec<String>> {
        let interned: Vec<Change> = extract_changes(changes)?
            .into_iter()
            .map(|(name, body)| {
                let r = body.map(|b| self.store.intern(&name, b));
                (name, r)
            })
            .collect();
        Ok(py.detach(|| self.lock().apply(type_url, &interned, nodes.as_deref())))
    }
}

/// Fills `meshcore._core.xds`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyResourceStore>()?;
    m.add_class::<PySnapshot>()?;
    m.add_class::<PyFleet>()?;
    Ok(())
}
