//! The data plane's load-balancer state for `meshcore._core.decide` (logic in
//! meshcore_core::balance; this is conversions only): `Random` is Python's `random.Random` draw
//! for draw; `Balancer` the state of every cluster (round-robin counters, active requests, hash
//! tables, ejections), surviving config updates.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use meshcore_core::balance::{self as core, ClusterSpec, Host, Outlier, Policy, PyRandom};

pub(crate) fn locked<T>(m: &Mutex<T>) -> PyResult<MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| PyRuntimeError::new_err("load-balancer state poisoned by a panic"))
}

pub(crate) fn new_rng(seed: Option<u128>) -> PyRandom {
    seed.map_or_else(PyRandom::from_entropy, PyRandom::new)
}

/// Python's `random.Random` (MT19937), draw for draw, for the decisions' random choices.
#[pyclass(frozen, module = "meshcore._core.decide")]
pub struct Random {
    pub(crate) inner: Mutex<PyRandom>,
}

#[pymethods]
impl Random {
    #[new]
    #[pyo3(signature = (seed=None))]
    fn new(seed: Option<u128>) -> Self {
        Random {
            inner: Mutex::new(new_rng(seed)),
        }
    }

    /// Reseeds as `random.Random.seed(seed)` does (a non-negative int; None: from entropy).
    #[pyo3(signature = (seed=None))]
    fn seed(&self, seed: Option<u128>) -> PyResult<()> {
        *locked(&self.inner)? = new_rng(seed);
        Ok(())
    }

    fn randrange(&self, n: u64) -> PyResult<u64> {
        if n == 0 {
            return Err(PyValueError::new_err("empty range for randrange()"));
        }
        Ok(locked(&self.inner)?.randbelow(n))
    }

    fn random(&self) -> PyResult<f64> {
        Ok(locked(&self.inner)?.random())
    }
}

pub(crate) type OutlierTuple = (u32, u32, u32, u32, f64, f64, f64);

pub(crate) fn outlier(t: Option<OutlierTuple>) -> Option<Outlier> {
    t.map(|(c5, e5, cg, eg, base, max, pct)| Outlier {
        consecutive_5xx: c5,
        enforcing_consecutive_5xx: e5,
        consecutive_gateway_failure: cg,
        enforcing_consecutive_gateway_failure: eg,
        base_ejection_time: base,
        max_ejection_time: max,
        max_ejection_percent: pct,
    })
}

pub(crate) fn policy(name: &str) -> PyResult<Policy> {
    Policy::from_name(name).ok_or_else(|| PyValueError::new_err(format!("lb policy {name:?}")))
}

/// (name, lb_policy, outlier or None, panic_threshold, ring_size, maglev_table_size)
pub(crate) type ClusterHead = (String, String, Option<OutlierTuple>, f64, u64, u64);

pub(crate) fn cluster_spec(head: ClusterHead, hosts: Vec<Host>) -> PyResult<ClusterSpec> {
    let (name, lb_policy, od, panic_threshold, ring_size, maglev_table_size) = head;
    let uniform = ClusterSpec::uniform_weights(&hosts);
    Ok(ClusterSpec {
        name,
        policy: policy(&lb_policy)?,
        outlier: outlier(od),
        panic_threshold,
        ring_size,
        maglev_table_size,
        hosts,
        uniform,
    })
}

/// Every cluster's load-balancer state and its random source; thread-safe.
#[pyclass(frozen, module = "meshcore._core.decide")]
pub struct Balancer {
    pub(crate) inner: Mutex<core::Balancer>,
    clock: Mutex<Option<Py<PyAny>>>,
    /// A clock was set (most balancers have none: no lock to read the time source).
    has_clock: AtomicBool,
    base: Instant,
}

impl Balancer {
    /// The time ejections are measured in: the clock set with `set_clock`, or monotonic
    /// seconds. Read before the state is locked (a Python clock may switch threads).
    pub(crate) fn clock_now(&self, py: Python<'_>) -> PyResult<Option<f64>> {
        if !self.has_clock.load(Ordering::Acquire) {
            return Ok(None);
        }
        let clock = locked(&self.clock)?.as_ref().map(|c| c.clone_ref(py));
        clock.map(|c| c.call0(py)?.extract::<f64>(py)).transpose()
    }

    pub(crate) fn now_or(&self, fixed: Option<f64>) -> impl FnOnce() -> f64 + '_ {
        move || fixed.unwrap_or_else(|| self.base.elapsed().as_secs_f64())
    }
}

#[pymethods]
impl Balancer {
    #[new]
    #[pyo3(signature = (seed=None))]
    fn new(seed: Option<u128>) -> Self {
        Balancer {
            inner: Mutex::new(core::Balancer::new(new_rng(seed))),
            clock: Mutex::new(None),
            has_clock: AtomicBool::new(false),
            base: Instant::now(),
        }
    }

    /// A callable returning the time in seconds (as `time.monotonic`), or None for the
    /// built-in monotonic clock.
    fn set_clock(&self, clock: Option<Py<PyAny>>) -> PyResult<()> {
        let mut current = locked(&self.clock)?;
        self.has_clock.store(clock.is_some(), Ordering::Release);
        *current = clock;
        Ok(())
    }

    /// The current time on this balancer's clock.
    fn now(&self, py: Python<'_>) -> PyResult<f64> {
        Ok(self.now_or(self.clock_now(py)?)())
    }

    /// The index into `hosts` (`(address:port, weight)` pairs) of the endpoint to use, or
    /// None when there is none. `cluster`: (name, lb_policy, outlier detection as a tuple or
    /// None, panic_threshold, ring_size, maglev_table_size).
    #[pyo3(signature = (cluster, hosts, hash_key=None))]
    fn pick(
        &self,
        py: Python<'_>,
        cluster: ClusterHead,
        hosts: Vec<(String, u64)>,
        hash_key: Option<u64>,
    ) -> PyResult<Option<usize>> {
        let hosts = hosts
            .into_iter()
            .map(|(key, weight)| Host { key, weight })
            .collect();
        let spec = cluster_spec(cluster, hosts)?;
        let now = self.clock_now(py)?;
        Ok(locked(&self.inner)?.pick(&spec, hash_key, self.now_or(now)))
    }

    /// Counts an active request to `host` of `cluster` (least request).
    fn started(&self, cluster: &str, host: &str) -> PyResult<()> {
        locked(&self.inner)?.started(cluster, host);
        Ok(())
    }

    /// Records a request's result (`status` None: the connection failed); true when it
    /// ejected `host`.
    #[pyo3(signature = (cluster, outlier, host, status, hosts, started))]
    #[allow(clippy::too_many_arguments)]
    fn finished(
        &self,
        py: Python<'_>,
        cluster: &str,
        outlier: Option<OutlierTuple>,
        host: &str,
        status: Option<u32>,
        hosts: Vec<String>,
        started: bool,
    ) -> PyResult<bool> {
        let od = self::outlier(outlier);
        let now = if od.is_some() {
            self.clock_now(py)?
        } else {
            None
        };
        let keys: Vec<&str> = hosts.iter().map(String::as_str).collect();
        Ok(locked(&self.inner)?.finished(
            cluster,
            od.as_ref(),
            host,
            status,
            &keys,
            started,
            self.now_or(now),
        ))
    }

    /// The endpoints (`address:port`) of `cluster` ejected now, sorted.
    fn ejected(&self, py: Python<'_>, cluster: &str) -> PyResult<Vec<String>> {
        let now = self.now_or(self.clock_now(py)?)();
        Ok(locked(&self.inner)?.ejected(cluster, now))
    }
}
