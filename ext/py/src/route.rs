//! `RouteTable`: a compiled Envoy RouteConfiguration behind a frozen Python handle.

use std::sync::Arc;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use meshcore_core::proto::route::{ActionKind, HashKind};
use meshcore_core::route::PathMatch;
use meshcore_core::route::{Explanation, HostChoice};
use meshcore_core::{CompiledRouteTable, EscapedSlashes, HcmOptions, Request};

use crate::columns::{batch_len, header_objs, header_views, int32_array, HeaderColumn, StrColumn};
use crate::errors::core_error_to_py;

/// One route of a table, and what `RouteTable.route()` returns when it matches.
#[pyclass(frozen, module = "meshcore._core.route")]
pub struct RouteMatch {
    #[pyo3(get)]
    name: String,
    #[pyo3(get)]
    virtual_host: String,
    #[pyo3(get)]
    route_index: usize,
    #[pyo3(get)]
    virtual_host_index: usize,
    /// How the route matches the path: ("prefix" | "path" | "safe_regex" |
    /// "path_separated_prefix" | "path_template", value).
    #[pyo3(get)]
    path_match: (&'static str, String),
    action: Py<PyDict>,
    #[pyo3(get)]
    proto: Py<PyBytes>,
}

#[pymethods]
impl RouteMatch {
    /// The route's action as a new dict: `kind` ("route", "redirect", "direct_response",
    /// "filter_action", "non_forwarding_action"), the decoded fields, and `proto`, the action
    /// message's complete serialized bytes.
    #[getter]
    fn action<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.action.bind(py).copy()
    }

    fn __repr__(&self) -> String {
        format!(
            "RouteMatch(route_index={}, name={:?}, virtual_host={:?})",
            self.route_index, self.name, self.virtual_host
        )
    }
}

fn action_dict<'py>(
    py: Python<'py>,
    action: Option<&meshcore_core::proto::route::Action>,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let Some(action) = action else {
        d.set_item("kind", py.None())?;
        return Ok(d);
    };
    match &action.kind {
        ActionKind::Route(r) => {
            d.set_item("kind", "route")?;
            d.set_item("cluster", &r.cluster)?;
            d.set_item("cluster_header", &r.cluster_header)?;
            let w: Vec<(String, u32)> = r.weighted_clusters.clone();
            d.set_item("weighted_clusters", PyTuple::new(py, w)?)?;
            d.set_item("timeout", r.timeout)?;
            d.set_item("idle_timeout", r.idle_timeout)?;
            d.set_item("prefix_rewrite", &r.prefix_rewrite)?;
            d.set_item("host_rewrite_literal", &r.host_rewrite_literal)?;
            d.set_item("retry_on", &r.retry_on)?;
            d.set_item("num_retries", r.num_retries)?;
            d.set_item("per_try_timeout", r.per_try_timeout)?;
            match &r.retry {
                None => d.set_item("retry_policy", py.None())?,
                Some(rp) => {
                    let rd = PyDict::new(py);
                    rd.set_item("retry_on", &r.retry_on)?;
                    rd.set_item("num_retries", r.num_retries)?;
                    rd.set_item("per_try_timeout", r.per_try_timeout)?;
                    rd.set_item(
                        "retriable_status_codes",
                        PyTuple::new(py, &rp.retriable_status_codes)?,
                    )?;
                    rd.set_item(
                        "retry_host_predicates",
                        PyTuple::new(py, &rp.retry_host_predicates)?,
                    )?;
                    rd.set_item(
                        "host_selection_retry_max_attempts",
                        rp.host_selection_retry_max_attempts,
                    )?;
                    d.set_item("retry_policy", rd)?;
                }
            }
            let mut hashes = Vec::with_capacity(r.hash_policies.len());
            for hp in &r.hash_policies {
                let (kind, name): (Option<&str>, &str) = match &hp.kind {
                    None => (None, ""),
                    Some(HashKind::Header(n)) => (Some("header"), n),
                    Some(HashKind::Cookie(n)) => (Some("cookie"), n),
                    Some(HashKind::QueryParameter(n)) => (Some("query_parameter"), n),
                    Some(HashKind::FilterState(n)) => (Some("filter_state"), n),
                    Some(HashKind::ConnectionProperties(true)) => (Some("source_ip"), ""),
                    Some(HashKind::ConnectionProperties(false)) => {
                        (Some("connection_properties"), "")
                    }
                };
                hashes.push(
                    (
                        kind,
                        name,
                        hp.terminal,
                        hp.cookie_ttl,
                        &hp.cookie_path,
                        &hp.cookie_attributes,
                        hp.header_regex_rewrite,
                    )
                        .into_pyobject(py)?,
                );
            }
            d.set_item("hash_policy", PyTuple::new(py, hashes)?)?;
        }
        ActionKind::Redirect(r) => {
            d.set_item("kind", "redirect")?;
            d.set_item("scheme_redirect", &r.scheme_redirect)?;
            d.set_item("host_redirect", &r.host_redirect)?;
            d.set_item("port_redirect", r.port_redirect)?;
            d.set_item("path_redirect", &r.path_redirect)?;
            d.set_item("prefix_rewrite", &r.prefix_rewrite)?;
            let code = match r.response_code {
                1 => 302,
                2 => 303,
                3 => 307,
                4 => 308,
                _ => 301,
            };
            d.set_item("response_code", code)?;
            d.set_item("strip_query", r.strip_query)?;
        }
        ActionKind::DirectResponse(r) => {
            d.set_item("kind", "direct_response")?;
            d.set_item("status", r.status)?;
            d.set_item("body", r.body.as_deref().map(|b| PyBytes::new(py, b)))?;
        }
        ActionKind::FilterAction => d.set_item("kind", "filter_action")?,
        ActionKind::NonForwardingAction => d.set_item("kind", "non_forwarding_action")?,
    }
    d.set_item("proto", PyBytes::new(py, &action.proto))?;
    Ok(d)
}

/// A compiled envoy.config.route.v3.RouteConfiguration (immutable; swap the reference to update).
#[pyclass(frozen, module = "meshcore._core.route")]
pub struct RouteTable {
    pub(crate) table: Arc<CompiledRouteTable>,
    routes: Py<PyTuple>,
    matches: Vec<Py<RouteMatch>>,
}

fn config_bytes(config: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    if let Ok(b) = config.cast::<PyBytes>() {
        return Ok(b.as_bytes().to_vec());
    }
    if config.hasattr("SerializeToString")? {
        let b = config.call_method0("SerializeToString")?;
        return Ok(b.cast::<PyBytes>()?.as_bytes().to_vec());
    }
    if let Ok(v) = config.extract::<Vec<u8>>() {
        return Ok(v);
    }
    Err(PyTypeError::new_err(
        "expected a RouteConfiguration message (with SerializeToString) or its bytes",
    ))
}

fn escaped_slashes(py: Python<'_>, v: &Bound<'_, PyAny>) -> PyResult<EscapedSlashes> {
    let code: i64 = if let Ok(s) = v.extract::<String>() {
        match s.as_str() {
            "IMPLEMENTATION_SPECIFIC_DEFAULT" => 0,
            "KEEP_UNCHANGED" => 1,
            "REJECT_REQUEST" => 2,
            "UNESCAPE_AND_REDIRECT" => 3,
            "UNESCAPE_AND_FORWARD" => 4,
            _ => -1,
        }
    } else {
        v.extract::<i64>()?
    };
    match code {
        0 | 1 => Ok(EscapedSlashes::KeepUnchanged),
        4 => Ok(EscapedSlashes::UnescapeAndForward),
        2 => Ok(EscapedSlashes::RejectRequest),
        3 => {
            let mut e = meshcore_core::CoreError::new();
            e.unsupported(
                "path_with_escaped_slashes_action",
                "UNESCAPE_AND_REDIRECT answers with a redirect to another path; \
                 KEEP_UNCHANGED, REJECT_REQUEST and UNESCAPE_AND_FORWARD are supported",
            );
            Err(core_error_to_py(py, &e))
        }
        _ => Err(PyValueError::new_err(format!(
            "path_with_escaped_slashes_action: unknown value {v}"
        ))),
    }
}

/// The connection-manager options, each overriding `base` when given.
#[allow(clippy::too_many_arguments)]
fn hcm_options(
    py: Python<'_>,
    base: HcmOptions,
    normalize_path: Option<bool>,
    merge_slashes: Option<bool>,
    path_with_escaped_slashes_action: Option<&Bound<'_, PyAny>>,
    strip_matching_host_port: Option<bool>,
    strip_any_host_port: Option<bool>,
    listener_port: Option<u16>,
) -> PyResult<HcmOptions> {
    let mut o = base;
    if let Some(v) = normalize_path {
        o.normalize_path = v;
    }
    if let Some(v) = merge_slashes {
        o.merge_slashes = v;
    }
    if let Some(v) = path_with_escaped_slashes_action {
        o.escaped_slashes = escaped_slashes(py, v)?;
    }
    if let Some(v) = strip_matching_host_port {
        o.strip_matching_host_port = v;
    }
    if let Some(v) = strip_any_host_port {
        o.strip_any_host_port = v;
    }
    if listener_port.is_some() {
        o.listener_port = listener_port;
    }
    if o.strip_matching_host_port && o.strip_any_host_port {
        return Err(PyValueError::new_err(
            "strip_matching_host_port and strip_any_host_port are mutually exclusive",
        ));
    }
    Ok(o)
}

fn explanation_dict<'py>(
    py: Python<'py>,
    table: &CompiledRouteTable,
    e: &Explanation,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("authority", &e.authority)?;
    d.set_item("path", &e.path)?;
    let vh = e.virtual_host.and_then(|v| table.virtual_hosts.get(v));
    d.set_item("virtual_host", vh.map(|v| v.name.as_str()))?;
    let why = match &e.host_choice {
        None => format!("no virtual host matches {:?} (404)", e.authority),
        Some(HostChoice::Exact(d)) => format!("exact domain {d:?}"),
        Some(HostChoice::Suffix(d)) => format!("longest suffix wildcard {d:?}"),
        Some(HostChoice::Prefix(d)) => format!("longest prefix wildcard {d:?}"),
        Some(HostChoice::Default) => "wildcard domain \"*\"".to_string(),
    };
    d.set_item("virtual_host_reason", why)?;
    if e.virtual_host.is_some() && e.path.is_none() {
        d.set_item(
            "path_rejected",
            "the connection manager answers 400 before routing (a '#' fragment, %00 under \
             normalize_path, or %2F/%5C under REJECT_REQUEST)",
        )?;
    }
    let routes = PyList::empty(py);
    for (id, reason) in &e.routes {
        let r = PyDict::new(py);
        r.set_item("route_index", id)?;
        r.set_item("name", table.routes.get(*id).map(|r| r.name.as_str()))?;
        r.set_item("matched", reason.is_none())?;
        r.set_item("reason", reason)?;
        routes.append(r)?;
    }
    d.set_item("routes", routes)?;
    d.set_item("route_index", e.route)?;
    Ok(d)
}

#[pymethods]
impl RouteTable {
    /// Compiles a RouteConfiguration (message or bytes). The keyword options are the
    /// HttpConnectionManager settings that change what the router sees, and
    /// `max_program_size`, the RE2 program size regexes may reach (Envoy's runtime
    /// `re2.max_program_size.error_level`: 100 by default; meshcore's bootstrap sets 32768).
    #[staticmethod]
    #[pyo3(signature = (config, *, normalize_path=false, merge_slashes=false,
        path_with_escaped_slashes_action=None, strip_matching_host_port=false,
        strip_any_host_port=false, listener_port=None, max_program_size=100))]
    #[allow(clippy::too_many_arguments)]
    fn from_proto(
        py: Python<'_>,
        config: &Bound<'_, PyAny>,
        normalize_path: bool,
        merge_slashes: bool,
        path_with_escaped_slashes_action: Option<&Bound<'_, PyAny>>,
        strip_matching_host_port: bool,
        strip_any_host_port: bool,
        listener_port: Option<u16>,
        max_program_size: u64,
    ) -> PyResult<Self> {
        let options = hcm_options(
            py,
            HcmOptions::default(),
            Some(normalize_path),
            Some(merge_slashes),
            path_with_escaped_slashes_action,
            Some(strip_matching_host_port),
            Some(strip_any_host_port),
            listener_port,
        )?;
        let bytes = config_bytes(config)?;
        let table = py
            .detach(|| CompiledRouteTable::compile(&bytes, options, max_program_size))
            .map_err(|e| core_error_to_py(py, &e))?;
        let mut matches = Vec::with_capacity(table.routes.len());
        for (i, r) in table.routes.iter().enumerate() {
            let vh = table
                .virtual_hosts
                .get(r.virtual_host)
                .map(|v| v.name.clone())
                .unwrap_or_default();
            matches.push(Py::new(
                py,
                RouteMatch {
                    name: r.name.clone(),
                    virtual_host: vh,
                    route_index: i,
                    virtual_host_index: r.virtual_host,
                    path_match: match &r.path {
                        PathMatch::Prefix { value, .. } => ("prefix", value.clone()),
                        PathMatch::Exact { value, .. } => ("path", value.clone()),
                        PathMatch::Regex(re) => ("safe_regex", re.pattern().to_string()),
                        PathMatch::Separated { value, .. } => {
                            ("path_separated_prefix", value.clone())
                        }
                        PathMatch::Template(_, t) => ("path_template", t.clone()),
                    },
                    action: action_dict(py, r.action.as_ref())?.unbind(),
                    proto: PyBytes::new(py, &r.proto).unbind(),
                },
            )?);
        }
        let routes = PyTuple::new(py, matches.iter().map(|m| m.clone_ref(py)))?.unbind();
        Ok(Self {
            table: Arc::new(table),
            routes,
            matches,
        })
    }

    /// Every route in table order (virtual host by virtual host); `route_batch` indexes it.
    #[getter]
    fn routes(&self, py: Python<'_>) -> Py<PyTuple> {
        self.routes.clone_ref(py)
    }

    /// The RouteConfiguration's name.
    #[getter]
    fn name(&self) -> &str {
        &self.table.name
    }

    /// Virtual host names, in configuration order.
    #[getter]
    fn virtual_hosts(&self) -> Vec<String> {
        self.table
            .virtual_hosts
            .iter()
            .map(|v| v.name.clone())
            .collect()
    }

    fn __len__(&self) -> usize {
        self.matches.len()
    }

    /// The route Envoy would choose for this request, or None (Envoy answers 404).
    #[pyo3(signature = (authority, path, method="GET", headers=None, *, scheme="http",
        normalize_path=None, merge_slashes=None, path_with_escaped_slashes_action=None,
        strip_matching_host_port=None, strip_any_host_port=None, listener_port=None))]
    #[allow(clippy::too_many_arguments)]
    fn route(
        &self,
        py: Python<'_>,
        authority: &str,
        path: &str,
        method: &str,
        headers: Option<&Bound<'_, PyAny>>,
        scheme: &str,
        normalize_path: Option<bool>,
        merge_slashes: Option<bool>,
        path_with_escaped_slashes_action: Option<&Bound<'_, PyAny>>,
        strip_matching_host_port: Option<bool>,
        strip_any_host_port: Option<bool>,
        listener_port: Option<u16>,
    ) -> PyResult<Option<Py<RouteMatch>>> {
        let objs = header_objs(headers)?;
        let views = header_views(&objs)?;
        let req = Request {
            authority,
            path,
            method,
            scheme,
            headers: &views,
        };
        let overridden = normalize_path.is_some()
            || merge_slashes.is_some()
            || path_with_escaped_slashes_action.is_some()
            || strip_matching_host_port.is_some()
            || strip_any_host_port.is_some()
            || listener_port.is_some();
        let hit = if overridden {
            let o = hcm_options(
                py,
                self.table.options,
                normalize_path,
                merge_slashes,
                path_with_escaped_slashes_action,
                strip_matching_host_port,
                strip_any_host_port,
                listener_port,
            )?;
            self.table.route_with(&req, &o)
        } else {
            self.table.route(&req)
        };
        Ok(hit
            .and_then(|i| self.matches.get(i))
            .map(|m| m.clone_ref(py)))
    }

    /// Routes many requests at once (the GIL is released while the core works): an int32
    /// numpy array of indices into `routes`, -1 where no route matches. `authorities`,
    /// `paths` and `methods` are each a list or tuple of str, a numpy array of dtype 'S' or
    /// 'U' (the fastest form: no Python object per request), or one str for every request;
    /// `headers` one dict or pair list per request.
    #[pyo3(signature = (authorities, paths, methods=None, headers=None))]
    fn route_batch<'py>(
        &self,
        py: Python<'py>,
        authorities: &Bound<'py, PyAny>,
        paths: &Bound<'py, PyAny>,
        methods: Option<&Bound<'py, PyAny>>,
        headers: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let paths = StrColumn::read(Some(paths), "paths")?;
        let authorities = StrColumn::read(Some(authorities), "authorities")?;
        let methods = StrColumn::read(methods, "methods")?;
        let headers = HeaderColumn::read(headers)?;
        let n = batch_len([paths.len(), authorities.len(), methods.len(), headers.len()])?;
        let paths = paths.views("paths")?;
        let authorities = authorities.views("authorities")?;
        let methods = methods.views("methods")?;
        let headers = headers.views()?;
        for (col, what) in [(&paths, "paths"), (&authorities, "authorities")] {
            if let Some(i) = col.first_missing(n) {
                return Err(PyTypeError::new_err(format!("{what}[{i}] must be str")));
            }
        }
        let table = &self.table;
        let out: Vec<i32> = py.detach(|| {
            (0..n)
                .map(|i| {
                    let req = Request {
                        authority: authorities.get(i).unwrap_or_default(),
                        path: paths.get(i).unwrap_or_default(),
                        method: methods.get(i).unwrap_or("GET"),
                        scheme: "http",
                        headers: headers.get(i),
                    };
                    table.route(&req).map_or(-1, |i| i as i32)
                })
                .collect()
        });
        int32_array(py, &out)
    }

    /// The decision with its reasons: the virtual host and why, and for each route of that
    /// virtual host up to the match, the condition that failed.
    #[pyo3(signature = (authority, path, method="GET", headers=None, *, scheme="http",
        normalize_path=None, merge_slashes=None, path_with_escaped_slashes_action=None,
        strip_matching_host_port=None, strip_any_host_port=None, listener_port=None))]
    #[allow(clippy::too_many_arguments)]
    fn explain<'py>(
        &self,
        py: Python<'py>,
        authority: &str,
        path: &str,
        method: &str,
        headers: Option<&Bound<'py, PyAny>>,
        scheme: &str,
        normalize_path: Option<bool>,
        merge_slashes: Option<bool>,
        path_with_escaped_slashes_action: Option<&Bound<'py, PyAny>>,
        strip_matching_host_port: Option<bool>,
        strip_any_host_port: Option<bool>,
        listener_port: Option<u16>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let objs = header_objs(headers)?;
        let views = header_views(&objs)?;
        let req = Request {
            authority,
            path,
            method,
            scheme,
            headers: &views,
        };
        let o = hcm_options(
            py,
            self.table.options,
            normalize_path,
            merge_slashes,
            path_with_escaped_slashes_action,
            strip_matching_host_port,
            strip_any_host_port,
            listener_port,
        )?;
        let e = self.table.explain(&req, &o);
        explanation_dict(py, &self.table, &e)
    }

    fn __repr__(&self) -> String {
        format!(
            "RouteTable(name={:?}, virtual_hosts={}, routes={})",
            self.table.name,
            self.table.virtual_hosts.len(),
            self.matches.len()
        )
    }
}

/// Fills `meshcore._core.route`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<RouteTable>()?;
    m.add_class::<RouteMatch>()?;
    Ok(())
}
