//! `meshcore._core.decide`: the data plane's load-balancer state and its outbound decision in
//! one call (logic in meshcore_core::balance; this is conversions only).
//!
//! `Random` is Python's `random.Random` draw for draw; `Balancer` the state of every cluster
//! (round-robin counters, active requests, hash tables, ejections), surviving config updates;
//! `Decider` one config's compiled outbound decisions, returning the data plane's `Decision`.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyInt, PyList, PyString, PyTuple};
use pyo3::IntoPyObjectExt;

use meshcore_core::balance::inbound::{
    decide_inbound, Inbound, InboundRequest, InboundSpec, Layer,
};
use meshcore_core::balance::outbound::{
    Decider as CoreDecider, HashSpec, ListenerSpec, Outbound, RouteSpec,
};
use meshcore_core::balance::{self as core, ClusterSpec, Host, Outlier, Policy, PyRandom};
use meshcore_core::Request;

use crate::columns::{batch_len, header_objs, header_views, HeaderColumn, StrColumn, ValueColumn};
use crate::decision::Decision;
use crate::rbac::RbacEngine;
use crate::route::RouteTable;

fn locked<T>(m: &Mutex<T>) -> PyResult<MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| PyRuntimeError::new_err("load-balancer state poisoned by a panic"))
}

fn new_rng(seed: Option<u128>) -> PyRandom {
    seed.map_or_else(PyRandom::from_entropy, PyRandom::new)
}

/// Python's `random.Random` (MT19937), draw for draw, for the decisions' random choices.
#[pyclass(frozen, module = "meshcore._core.decide")]
pub struct Random {
    inner: Mutex<PyRandom>,
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

type OutlierTuple = (u32, u32, u32, u32, f64, f64, f64);

fn outlier(t: Option<OutlierTuple>) -> Option<Outlier> {
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

fn policy(name: &str) -> PyResult<Policy> {
    Policy::from_name(name).ok_or_else(|| PyValueError::new_err(format!("lb policy {name:?}")))
}

/// (name, lb_policy, outlier or None, panic_threshold, ring_size, maglev_table_size)
type ClusterHead = (String, String, Option<OutlierTuple>, f64, u64, u64);

fn cluster_spec(head: ClusterHead, hosts: Vec<Host>) -> PyResult<ClusterSpec> {
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
    inner: Mutex<core::Balancer>,
    clock: Mutex<Option<Py<PyAny>>>,
    base: Instant,
}

impl Balancer {
    /// The time ejections are measured in: the clock set with `set_clock`, or monotonic
    /// seconds. Read before the state is locked (a Python clock may switch threads).
    fn clock_now(&self, py: Python<'_>) -> PyResult<Option<f64>> {
        let clock = locked(&self.clock)?.as_ref().map(|c| c.clone_ref(py));
        clock.map(|c| c.call0(py)?.extract::<f64>(py)).transpose()
    }

    fn now_or(&self, fixed: Option<f64>) -> impl FnOnce() -> f64 + '_ {
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
            base: Instant::now(),
        }
    }

    /// A callable returning the time in seconds (as `time.monotonic`), or None for the
    /// built-in monotonic clock.
    fn set_clock(&self, clock: Option<Py<PyAny>>) -> PyResult<()> {
        *locked(&self.clock)? = clock;
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

/// The Python values of a compiled route, for its `Decision`s.
struct RoutePy {
    name: Py<PyAny>,
    cluster_names: Vec<Py<PyAny>>,
    timeout: Py<PyAny>,
    retry: Py<PyAny>,
    host_rewrite: Py<PyAny>,
}

/// The Python values of a cluster: its endpoints, whether TLS applies to each, the SNI.
struct ClusterPy {
    endpoints: Vec<(Py<PyAny>, bool)>,
    sni: Py<PyAny>,
}

/// (name, [(cluster, weight)], weighted, total_weight, [(hash kind, header name, terminal)],
/// (rewrite_from, prefix_rewrite) or None, timeout, retry_policy, host_rewrite)
type RouteTuple = (
    Py<PyAny>,
    Vec<(String, u64)>,
    bool,
    u64,
    Vec<(String, String, bool)>,
    Option<(String, String)>,
    Py<PyAny>,
    Py<PyAny>,
    Py<PyAny>,
);

/// (port, route table, normalizes, merge_slashes, per route index a RouteTuple or None)
type ListenerTuple<'py> = (
    u16,
    Bound<'py, RouteTable>,
    bool,
    bool,
    Vec<Option<RouteTuple>>,
);

/// (ClusterHead fields..., [(endpoint, address:port, weight, tls)], sni)
type ClusterTuple = (
    String,
    String,
    Option<OutlierTuple>,
    f64,
    u64,
    u64,
    Vec<(Py<PyAny>, String, u64, bool)>,
    Py<PyAny>,
);

/// (port, the listener's address, STRICT, [(RBAC engine, layer, Istio policy id per policy)],
/// inbound cluster, normalizes, merge_slashes)
type InboundTuple<'py> = (
    u16,
    String,
    bool,
    Vec<(Bound<'py, RbacEngine>, String, Vec<Py<PyAny>>)>,
    Option<String>,
    bool,
    bool,
);

/// An inbound listener's Python values.
struct InboundPy {
    spec: InboundSpec,
    policy_ids: Vec<Vec<Py<PyAny>>>,
    cluster: Py<PyAny>,
}

/// One config's outbound decisions (immutable; the state lives in the shared `Balancer`).
#[pyclass(frozen, module = "meshcore._core.decide")]
pub struct Decider {
    core: CoreDecider,
    routes: HashMap<u16, Vec<Option<RoutePy>>>,
    clusters: Vec<ClusterPy>,
    cluster_index: HashMap<String, usize>,
    /// Inbound listeners by port (None: one this form does not decide).
    inbound: HashMap<u16, Option<InboundPy>>,
    balancer: Py<Balancer>,
    rng: Py<Random>,
    decision: Py<PyAny>,
    generation: Py<PyAny>,
    /// The constant fields of decisions, made once: a decision only takes references.
    consts: Consts,
}

/// Values every decision shares.
struct Consts {
    outbound: Py<PyAny>,
    yes: Py<PyAny>,
    no: Py<PyAny>,
    dash: Py<PyAny>,
    nr: Py<PyAny>,
    nc: Py<PyAny>,
    uh: Py<PyAny>,
    inbound: Py<PyAny>,
    s403: Py<PyAny>,
    s404: Py<PyAny>,
    rbac: Py<PyAny>,
    s503: Py<PyAny>,
    no_body: Py<PyAny>,
    empty: Py<PyAny>,
    no_cookies: Py<PyAny>,
}

impl Consts {
    fn new(py: Python<'_>) -> PyResult<Self> {
        let text = |s: &str| PyString::new(py, s).into_any().unbind();
        Ok(Consts {
            outbound: text("outbound"),
            yes: true.into_py_any(py)?,
            no: false.into_py_any(py)?,
            dash: text("-"),
            nr: text("NR"),
            nc: text("NC"),
            uh: text("UH"),
            inbound: text("inbound"),
            s403: 403i32.into_py_any(py)?,
            s404: 404i32.into_py_any(py)?,
            rbac: text("RBAC"),
            s503: 503i32.into_py_any(py)?,
            no_body: PyBytes::new(py, b"").into_any().unbind(),
            empty: text(""),
            no_cookies: PyTuple::empty(py).into_any().unbind(),
        })
    }
}

fn authority_port(authority: &str) -> Option<u16> {
    match authority.rsplit_once(':') {
        Some((_, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            // A port beyond u16 matches no listener: the general path answers.
            p.parse::<u16>().ok()
        }
        // Non-ASCII digits: the general path reads them as Python does.
        Some((_, p)) if !p.is_ascii() => None,
        _ => Some(80),
    }
}

#[pymethods]
impl Decider {
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        listeners: Vec<ListenerTuple<'_>>,
        clusters: Vec<ClusterTuple>,
        inbound: Vec<(u16, Option<InboundTuple<'_>>)>,
        balancer: Py<Balancer>,
        rng: Py<Random>,
        decision: Py<PyAny>,
        generation: Py<PyAny>,
    ) -> PyResult<Self> {
        let mut specs = Vec::with_capacity(clusters.len());
        let mut pys = Vec::with_capacity(clusters.len());
        let mut index = HashMap::new();
        for (name, lb_policy, od, panic, ring, maglev, eps, sni) in clusters {
            index.insert(name.clone(), specs.len());
            let hosts = eps
                .iter()
                .map(|(_, key, weight, _)| Host {
                    key: key.clone(),
                    weight: *weight,
                })
                .collect();
            specs.push(cluster_spec(
                (name, lb_policy, od, panic, ring, maglev),
                hosts,
            )?);
            pys.push(ClusterPy {
                endpoints: eps.into_iter().map(|(e, _, _, tls)| (e, tls)).collect(),
                sni,
            });
        }
        let mut core_listeners = HashMap::new();
        let mut routes_py = HashMap::new();
        for (port, table, normalizes, merge_slashes, routes) in listeners {
            let mut specs_r = Vec::with_capacity(routes.len());
            let mut pys_r = Vec::with_capacity(routes.len());
            for r in routes {
                let Some((name, cl, weighted, total, hash, rewrite, timeout, retry, host)) = r
                else {
                    specs_r.push(None);
                    pys_r.push(None);
                    continue;
                };
                let mut policies = Vec::new();
                let mut covered = true;
                for (kind, header, terminal) in hash {
                    match kind.as_str() {
                        "header" => policies.push((HashSpec::Header(header), terminal)),
                        "source_ip" => policies.push((HashSpec::SourceIp, terminal)),
                        _ => covered = false,
                    }
                }
                if !covered {
                    specs_r.push(None);
                    pys_r.push(None);
                    continue;
                }
                let cluster_names = cl
                    .iter()
                    .map(|(n, _)| PyString::new(py, n).into_any().unbind())
                    .collect();
                specs_r.push(Some(RouteSpec {
                    clusters: cl
                        .iter()
                        .map(|(n, w)| (index.get(n).copied(), *w))
                        .collect(),
                    weighted,
                    total_weight: total,
                    hash: policies,
                    rewrite,
                }));
                pys_r.push(Some(RoutePy {
                    name,
                    cluster_names,
                    timeout,
                    retry,
                    host_rewrite: host,
                }));
            }
            let spec = ListenerSpec {
                table: table.get().table.clone(),
                routes: specs_r,
                normalizes,
                merge_slashes,
            };
            core_listeners.insert(port, spec);
            routes_py.insert(port, pys_r);
        }
        let mut inbound_py = HashMap::new();
        for (port, spec) in inbound {
            let Some((lport, address, strict, stages, cluster, normalizes, merge)) = spec else {
                inbound_py.insert(port, None);
                continue;
            };
            let Ok(address) = address.parse() else {
                inbound_py.insert(port, None);
                continue;
            };
            let mut core_stages = Vec::new();
            let mut ids = Vec::new();
            let mut covered = true;
            for (engine, layer, policy_ids) in stages {
                let layer = match layer.as_str() {
                    "ALLOW" => Layer::Allow,
                    "DENY" => Layer::Deny,
                    "AUDIT" => Layer::Log,
                    "" => Layer::Skip,
                    _ => {
                        covered = false;
                        break;
                    }
                };
                core_stages.push((engine.get().rbac.clone(), layer));
                ids.push(policy_ids);
            }
            if !covered {
                inbound_py.insert(port, None);
                continue;
            }
            let cluster_obj = cluster
                .as_deref()
                .map_or_else(|| py.None(), |c| PyString::new(py, c).into_any().unbind());
            let spec = InboundSpec {
                port: lport,
                destination_ip: Some(address),
                strict,
                stages: core_stages,
                cluster: cluster.map(|c| index.get(&c).copied()),
                normalizes,
                merge_slashes: merge,
            };
            inbound_py.insert(
                port,
                Some(InboundPy {
                    spec,
                    policy_ids: ids,
                    cluster: cluster_obj,
                }),
            );
        }
        let consts = Consts::new(py)?;
        Ok(Decider {
            core: CoreDecider {
                listeners: core_listeners,
                clusters: specs,
            },
            routes: routes_py,
            clusters: pys,
            cluster_index: index,
            inbound: inbound_py,
            balancer,
            rng,
            decision,
            generation,
            consts,
        })
    }

    /// An endpoint of `cluster` by its policy (`hash_key` for ring hash and Maglev), with the
    /// shared state: None when the config has no such cluster or it has no endpoint.
    #[pyo3(signature = (cluster, hash_key=None))]
    fn pick(
        &self,
        py: Python<'_>,
        cluster: &str,
        hash_key: Option<u64>,
    ) -> PyResult<Option<Py<PyAny>>> {
        let Some(&c) = self.cluster_index.get(cluster) else {
            return Ok(None);
        };
        let balancer = self.balancer.get();
        let now = balancer.clock_now(py)?;
        let i =
            locked(&balancer.inner)?.pick(&self.core.clusters[c], hash_key, balancer.now_or(now));
        Ok(i.map(|i| self.clusters[c].endpoints[i].0.clone_ref(py)))
    }

    /// The outbound `Decision`s of many requests, in order, as a list: the core decides runs
    /// of rows with the GIL released (at one reading of the clock); a row it does not cover
    /// is passed to `general(i)` (the data plane's general path) where it falls, so the load
    /// balancers see the rows in order as with one `outbound()` call per row. Columns as
    /// `RouteTable.route_batch` reads them; `ports` ints (or None: from the authority) and
    /// `source_ips` strings, each a list, a numpy array or one value for every row.
    #[pyo3(signature = (general, authorities, paths, methods=None, headers=None, ports=None,
        source_ips=None))]
    #[allow(clippy::too_many_arguments)]
    fn outbound_batch<'py>(
        &self,
        py: Python<'py>,
        general: &Bound<'py, PyAny>,
        authorities: &Bound<'py, PyAny>,
        paths: &Bound<'py, PyAny>,
        methods: Option<&Bound<'py, PyAny>>,
        headers: Option<&Bound<'py, PyAny>>,
        ports: Option<&Bound<'py, PyAny>>,
        source_ips: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let paths = StrColumn::read(Some(paths), "paths")?;
        let authorities = StrColumn::read(Some(authorities), "authorities")?;
        let methods = StrColumn::read(methods, "methods")?;
        let source_ips = StrColumn::read(source_ips, "source_ips")?;
        let headers = HeaderColumn::read(headers)?;
        let ports: ValueColumn<u16> =
            ValueColumn::read(ports, "ports", |v| v.cast::<PyInt>().is_ok())?;
        let n = batch_len([
            paths.len(),
            authorities.len(),
            methods.len(),
            source_ips.len(),
            headers.len(),
            ports.len(),
        ])?;
        let paths = paths.views("paths")?;
        let authorities = authorities.views("authorities")?;
        let methods = methods.views("methods")?;
        let source_ips = source_ips.views("source_ips")?;
        let headers = headers.views()?;
        for (col, what) in [(&paths, "paths"), (&authorities, "authorities")] {
            if let Some(i) = col.first_missing(n) {
                return Err(PyTypeError::new_err(format!("{what}[{i}] must be str")));
            }
        }
        let balancer = self.balancer.get();
        let rng = self.rng.get();
        let now = balancer.clock_now(py)?;
        let out = PyList::empty(py);
        let mut start = 0;
        while start < n {
            // Rows start.. until one the core does not cover, without the GIL.
            let run: PyResult<Vec<(u16, Outbound)>> = py.detach(|| {
                let mut state = locked(&balancer.inner)?;
                let mut rng = locked(&rng.inner)?;
                let mut run = Vec::new();
                for i in start..n {
                    let authority = authorities.get(i).unwrap_or_default();
                    let Some(port) = ports.get(i).or_else(|| authority_port(authority)) else {
                        break;
                    };
                    let req = Request {
                        authority,
                        path: paths.get(i).unwrap_or_default(),
                        method: methods.get(i).unwrap_or("GET"),
                        scheme: "http",
                        headers: headers.get(i),
                    };
                    let o = self.core.outbound(
                        &mut state,
                        &mut rng,
                        port,
                        &req,
                        source_ips.get(i),
                        balancer.now_or(now),
                    );
                    if o == Outbound::Fallback {
                        break;
                    }
                    run.push((port, o));
                }
                Ok(run)
            });
            let run = run?;
            start += run.len();
            for (port, o) in run {
                let args = self.decision_args(py, port, o)?;
                out.append(self.make(py, args)?)?;
            }
            if start < n {
                out.append(general.call1((start,))?)?;
                start += 1;
            }
        }
        Ok(out)
    }

    /// The inbound `Decision` for one request, or None when the general path must decide it
    /// (nothing was drawn or counted then).
    #[pyo3(signature = (authority, path, method, headers, port, source_ip, principal, tls))]
    #[allow(clippy::too_many_arguments)]
    fn inbound(
        &self,
        py: Python<'_>,
        authority: &str,
        path: &str,
        method: &str,
        headers: Option<&Bound<'_, PyAny>>,
        port: Option<u16>,
        source_ip: Option<&str>,
        principal: Option<&str>,
        tls: Option<bool>,
    ) -> PyResult<Option<Py<PyAny>>> {
        let found = match port {
            None if self.inbound.len() == 1 => self.inbound.values().next(),
            None => None,
            Some(p) => self.inbound.get(&p),
        };
        let k = &self.consts;
        let own = |o: &Py<PyAny>| o.clone_ref(py);
        let mut a = self.base_args(py, &k.inbound, &k.no);
        let Some(found) = found else {
            // Fail closed: no listener, no admission.
            a[8] = own(&k.s403);
            a[9] = own(&k.nr);
            return Ok(Some(self.make(py, a)?));
        };
        let Some(lst) = found else {
            return Ok(None);
        };
        let objs = header_objs(headers)?;
        let views = header_views(&objs)?;
        let req = InboundRequest {
            method,
            path,
            authority,
            headers: &views,
            principal,
            source_ip,
            tls,
        };
        let balancer = self.balancer.get();
        let now = balancer.clock_now(py)?;
        let out = {
            let mut state = locked(&balancer.inner)?;
            decide_inbound(
                &lst.spec,
                &self.core.clusters,
                &mut state,
                &req,
                balancer.now_or(now),
            )
        };
        let policy = |stage: usize, p: Option<usize>| {
            p.and_then(|p| lst.policy_ids.get(stage)?.get(p))
                .map_or_else(|| py.None(), |o| o.clone_ref(py))
        };
        match out {
            Inbound::Fallback => return Ok(None),
            Inbound::Plaintext => a[8] = own(&k.s403),
            Inbound::Denied { stage, policy: p } => {
                a[3] = own(&lst.cluster);
                a[7] = policy(stage, p);
                a[8] = own(&k.s403);
                a[9] = own(&k.rbac);
            }
            Inbound::Allowed { by, endpoint } => {
                a[1] = own(&k.yes);
                a[7] = by.map_or_else(|| py.None(), |(s, p)| policy(s, p));
                match lst.spec.cluster {
                    None => {
                        a[8] = own(&k.s503);
                        a[9] = own(&k.nc);
                    }
                    Some(c) => {
                        a[3] = own(&lst.cluster);
                        a[16] = PyString::new(py, path).into_any().unbind();
                        match (c, endpoint) {
                            (None, _) => {
                                a[8] = own(&k.s503);
                                a[9] = own(&k.nc);
                            }
                            (Some(_), None) => {
                                a[8] = own(&k.s503);
                                a[9] = own(&k.uh);
                            }
                            (Some(c), Some(e)) => {
                                let cp = &self.clusters[c];
                                let (ep, tls) = &cp.endpoints[e];
                                a[4] = ep.clone_ref(py);
                                a[11] = own(if *tls { &k.yes } else { &k.no });
                                if *tls {
                                    a[12] = cp.sni.clone_ref(py);
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(Some(self.make(py, a)?))
    }

    /// The outbound `Decision` for one request, or None when the general path must decide
    /// it (nothing was drawn or counted then).
    #[pyo3(signature = (authority, path, method, headers, port, source_ip))]
    #[allow(clippy::too_many_arguments)]
    fn outbound(
        &self,
        py: Python<'_>,
        authority: &str,
        path: &str,
        method: &str,
        headers: Option<&Bound<'_, PyAny>>,
        port: Option<u16>,
        source_ip: Option<&str>,
    ) -> PyResult<Option<Py<PyAny>>> {
        let Some(port) = port.or_else(|| authority_port(authority)) else {
            return Ok(None);
        };
        let objs = header_objs(headers)?;
        let views = header_views(&objs)?;
        let req = Request {
            authority,
            path,
            method,
            scheme: "http",
            headers: &views,
        };
        let balancer = self.balancer.get();
        let now = balancer.clock_now(py)?;
        let out = {
            let mut state = locked(&balancer.inner)?;
            let mut rng = locked(&self.rng.get().inner)?;
            self.core.outbound(
                &mut state,
                &mut rng,
                port,
                &req,
                source_ip,
                balancer.now_or(now),
            )
        };
        if out == Outbound::Fallback {
            return Ok(None);
        }
        let args = self.decision_args(py, port, out)?;
        Ok(Some(self.make(py, args)?))
    }
}

impl Decider {
    /// The `Decision`'s fields, positionally (its dataclass order): direction, allowed, route,
    /// cluster, endpoint, timeout, retry_policy, policy_id, status, response_flags, body, tls,
    /// sni, host_rewrite, hash_key, generation, path, set_cookies.
    /// A decision of these fields: the core's `Decision` made directly, or (another class
    /// given) by calling it.
    fn make(&self, py: Python<'_>, fields: [Py<PyAny>; 18]) -> PyResult<Py<PyAny>> {
        if self.decision.is(py.get_type::<Decision>()) {
            return Ok(Py::new(py, Decision::from_fields(fields))?.into_any());
        }
        self.decision.call1(py, PyTuple::new(py, fields)?)
    }

    /// A decision's fields before the decision fills them in: the direction, whether it is
    /// allowed, and every default (`Decision`'s dataclass defaults) in field order.
    fn base_args(
        &self,
        py: Python<'_>,
        direction: &Py<PyAny>,
        allowed: &Py<PyAny>,
    ) -> [Py<PyAny>; 18] {
        let k = &self.consts;
        let own = |o: &Py<PyAny>| o.clone_ref(py);
        let mut a: [Py<PyAny>; 18] = std::array::from_fn(|_| py.None());
        a[0] = own(direction);
        a[1] = own(allowed);
        a[9] = own(&k.dash);
        a[10] = own(&k.no_body);
        a[11] = own(&k.no);
        a[12] = own(&k.empty);
        a[13] = own(&k.empty);
        a[15] = self.generation.clone_ref(py);
        a[17] = own(&k.no_cookies);
        a
    }

    fn decision_args(&self, py: Python<'_>, port: u16, out: Outbound) -> PyResult<[Py<PyAny>; 18]> {
        let none = || py.None();
        let k = &self.consts;
        let own = |o: &Py<PyAny>| o.clone_ref(py);
        let mut a = self.base_args(py, &k.outbound, &k.yes);
        match out {
            Outbound::Fallback => return Err(PyRuntimeError::new_err("decider: no decision")),
            Outbound::NoRoute => {
                a[8] = own(&k.s404);
                a[9] = own(&k.nr);
            }
            Outbound::Forward {
                route,
                choice,
                cluster,
                endpoint,
                hash_key,
                path,
            } => {
                let r = self
                    .routes
                    .get(&port)
                    .and_then(|rs| rs.get(route))
                    .and_then(Option::as_ref)
                    .ok_or_else(|| PyRuntimeError::new_err("decider: route without values"))?;
                a[2] = r.name.clone_ref(py);
                if let Some(i) = choice {
                    a[3] = r.cluster_names[i].clone_ref(py);
                    // prefix_rewrite applies once a cluster was chosen (even a missing one).
                    a[16] = path.map_or_else(|| Ok(none()), |p| p.into_py_any(py))?;
                }
                match (cluster, endpoint) {
                    (None, _) => {
                        a[8] = own(&k.s503);
                        a[9] = own(&k.nc);
                    }
                    (Some(_), None) => {
                        a[5] = r.timeout.clone_ref(py);
                        a[6] = r.retry.clone_ref(py);
                        a[8] = own(&k.s503);
                        a[9] = own(&k.uh);
                    }
                    (Some(c), Some(e)) => {
                        let cp = &self.clusters[c];
                        let (ep, tls) = &cp.endpoints[e];
                        a[4] = ep.clone_ref(py);
                        a[5] = r.timeout.clone_ref(py);
                        a[6] = r.retry.clone_ref(py);
                        a[11] = own(if *tls { &k.yes } else { &k.no });
                        if *tls {
                            a[12] = cp.sni.clone_ref(py);
                        }
                        a[13] = r.host_rewrite.clone_ref(py);
                        if let Some(key) = hash_key {
                            a[14] = key.into_py_any(py)?;
                        }
                    }
                }
            }
        }
        Ok(a)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Random>()?;
    m.add_class::<Balancer>()?;
    m.add_class::<Decider>()?;
    m.add_class::<Decision>()?;
    Ok(())
}
