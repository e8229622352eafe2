//! `meshcore._core.decide`: the data plane's load-balancer state and its outbound decision in
//! one call (logic in meshcore_core::balance; this is conversions only).
//!
//! `Decider` is one config's compiled decisions, returning the data plane's `Decision`; the
//! state it picks endpoints with (`Random`, `Balancer`) is glued in `balance.rs`.

use std::sync::PoisonError;

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyInt, PyList, PyString, PyTuple};
use pyo3::IntoPyObjectExt;

use meshcore_core::balance::inbound::{
    decide_inbound, Inbound, InboundRequest, InboundSpec, Layer,
};
use meshcore_core::balance::outbound::{
    Decider as CoreDecider, HashSpec, ListenerSpec, Outbound, RouteSpec,
};
use meshcore_core::balance::Host;
use meshcore_core::fasthash::FastMap;
use meshcore_core::Request;

use crate::balance::{cluster_spec, locked, Balancer, OutlierTuple, Random};
use crate::columns::{batch_len, header_objs, header_views, HeaderColumn, StrColumn, ValueColumn};
use crate::decision::{self, Decision, Fields};
use crate::rbac::RbacEngine;
use crate::route::RouteTable;

/// The Python values of a compiled route, for its `Decision`s.
struct RoutePy {
    name: Py<PyAny>,
    cluster_names: Vec<Py<PyAny>>,
    timeout: Py<PyAny>,
    retry: Py<PyAny>,
    /// None: no rewrite (the decision's default, "").
    host_rewrite: Option<Py<PyAny>>,
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
    routes: FastMap<u16, Vec<Option<RoutePy>>>,
    clusters: Vec<ClusterPy>,
    cluster_index: FastMap<String, usize>,
    /// Inbound listeners by port (None: one this form does not decide).
    inbound: FastMap<u16, Option<InboundPy>>,
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
    nr: Py<PyAny>,
    nc: Py<PyAny>,
    uh: Py<PyAny>,
    inbound: Py<PyAny>,
    s403: Py<PyAny>,
    s404: Py<PyAny>,
    rbac: Py<PyAny>,
    s503: Py<PyAny>,
}

impl Consts {
    fn new(py: Python<'_>) -> PyResult<Self> {
        let text = |s: &str| PyString::new(py, s).into_any().unbind();
        Ok(Consts {
            outbound: text("outbound"),
            yes: true.into_py_any(py)?,
            no: false.into_py_any(py)?,
            nr: text("NR"),
            nc: text("NC"),
            uh: text("UH"),
            inbound: text("inbound"),
            s403: 403i32.into_py_any(py)?,
            s404: 404i32.into_py_any(py)?,
            rbac: text("RBAC"),
            s503: 503i32.into_py_any(py)?,
        })
    }
}

fn authority_port(authority: &str) -> Option<u16> {
    // The usual authority, "host:digits": the digits read from the end, no search.
    let b = authority.as_bytes();
    let (mut port, mut scale, mut i) = (0u64, 1u64, b.len());
    while i > 0 && b[i - 1].is_ascii_digit() && scale <= 100_000 {
        port += u64::from(b[i - 1] - b'0') * scale;
        scale *= 10;
        i -= 1;
    }
    if i < b.len() && i > 0 && b[i - 1] == b':' && scale <= 100_000 {
        // A port beyond u16 matches no listener: the general path answers.
        return u16::try_from(port).ok();
    }
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
        let mut index = FastMap::default();
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
        let mut core_listeners = FastMap::default();
        let mut routes_py = FastMap::default();
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
                    host_rewrite: host
                        .bind(py)
                        .extract::<&str>()
                        .map_or(true, |h| !h.is_empty())
                        .then_some(host),
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
        let mut inbound_py = FastMap::default();
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
                        |n| rng.randbelow(n),
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
    pub(crate) fn inbound(
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
            a[8] = Some(own(&k.s403));
            a[9] = Some(own(&k.nr));
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
            Inbound::Plaintext => a[8] = Some(own(&k.s403)),
            Inbound::Denied { stage, policy: p } => {
                a[3] = Some(own(&lst.cluster));
                a[7] = Some(policy(stage, p));
                a[8] = Some(own(&k.s403));
                a[9] = Some(own(&k.rbac));
            }
            Inbound::Allowed { by, endpoint } => {
                a[1] = Some(own(&k.yes));
                a[7] = Some(by.map_or_else(|| py.None(), |(s, p)| policy(s, p)));
                match lst.spec.cluster {
                    None => {
                        a[8] = Some(own(&k.s503));
                        a[9] = Some(own(&k.nc));
                    }
                    Some(c) => {
                        a[3] = Some(own(&lst.cluster));
                        a[16] = Some(PyString::new(py, path).into_any().unbind());
                        match (c, endpoint) {
                            (None, _) => {
                                a[8] = Some(own(&k.s503));
                                a[9] = Some(own(&k.nc));
                            }
                            (Some(_), None) => {
                                a[8] = Some(own(&k.s503));
                                a[9] = Some(own(&k.uh));
                            }
                            (Some(c), Some(e)) => {
                                let cp = &self.clusters[c];
                                let (ep, tls) = &cp.endpoints[e];
                                a[4] = Some(ep.clone_ref(py));
                                a[11] = Some(own(if *tls { &k.yes } else { &k.no }));
                                if *tls {
                                    a[12] = Some(cp.sni.clone_ref(py));
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
    pub(crate) fn outbound(
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
            // The weighted clusters' random source, locked only for a weighted route.
            let rng = &self.rng.get().inner;
            self.core.outbound(
                &mut state,
                |n| {
                    rng.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .randbelow(n)
                },
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
    /// sni, host_rewrite, hash_key, generation, path, set_cookies; None for a default.
    /// A decision of these fields: the core's `Decision` made directly, or (another class
    /// given) by calling it with every field.
    #[inline]
    fn make(&self, py: Python<'_>, fields: Fields) -> PyResult<Py<PyAny>> {
        if self.decision.is(py.get_type::<Decision>()) {
            return Ok(Py::new(py, Decision::from_fields(fields))?.into_any());
        }
        let mut all = Vec::with_capacity(fields.len());
        for (i, f) in fields.into_iter().enumerate() {
            all.push(f.unwrap_or_else(|| decision::default(py, i)));
        }
        self.decision.call1(py, PyTuple::new(py, all)?)
    }

    /// A decision's fields before the decision fills them in: the direction, whether it is
    /// allowed and the config's generation; every other field its default.
    #[inline]
    fn base_args(&self, py: Python<'_>, direction: &Py<PyAny>, allowed: &Py<PyAny>) -> Fields {
        let mut a: Fields = std::array::from_fn(|_| None);
        a[0] = Some(direction.clone_ref(py));
        a[1] = Some(allowed.clone_ref(py));
        a[15] = Some(self.generation.clone_ref(py));
        a
    }

    #[inline]
    fn decision_args(&self, py: Python<'_>, port: u16, out: Outbound) -> PyResult<Fields> {
        let k = &self.consts;
        let own = |o: &Py<PyAny>| Some(o.clone_ref(py));
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
                a[2] = own(&r.name);
                if let Some(i) = choice {
                    a[3] = own(&r.cluster_names[i]);
                    // prefix_rewrite applies once a cluster was chosen (even a missing one).
                    if let Some(p) = path {
                        a[16] = Some(p.into_py_any(py)?);
                    }
                }
                match (cluster, endpoint) {
                    (None, _) => {
                        a[8] = own(&k.s503);
                        a[9] = own(&k.nc);
                    }
                    (Some(_), None) => {
                        a[5] = own(&r.timeout);
                        a[6] = own(&r.retry);
                        a[8] = own(&k.s503);
                        a[9] = own(&k.uh);
                    }
                    (Some(c), Some(e)) => {
                        let cp = &self.clusters[c];
                        let (ep, tls) = &cp.endpoints[e];
                        a[4] = own(ep);
                        a[5] = own(&r.timeout);
                        a[6] = own(&r.retry);
                        if *tls {
                            a[11] = own(&k.yes);
                            a[12] = own(&cp.sni);
                        }
                        a[13] = r.host_rewrite.as_ref().map(|h| h.clone_ref(py));
                        if let Some(key) = hash_key {
                            a[14] = Some(key.into_py_any(py)?);
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
    m.add_class::<crate::entry::Decide>()?;
    m.add_class::<Decision>()?;
    Ok(())
}
