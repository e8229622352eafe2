//! `RbacEngine`: a compiled Envoy RBAC filter config behind a frozen Python handle.

use std::net::IpAddr;
use std::sync::Arc;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyList, PyString, PyTuple};

use meshcore_core::rbac::{Action, Decision, Engine, MetaValue};
use meshcore_core::{Attributes, CompiledRbac};

use crate::errors::core_error_to_py;

const FILTER_TYPE: &str = "envoy.extensions.filters.http.rbac.v3.RBAC";
const RBAC_TYPE: &str = "envoy.config.rbac.v3.RBAC";
const NETWORK_FILTER_TYPE: &str = "envoy.extensions.filters.network.rbac.v3.RBAC";

/// What `RbacEngine.evaluate()` returns. Policy ids are the engine's own interned strings.
#[pyclass(frozen, module = "meshcore._core")]
pub struct RbacDecision {
    allowed: bool,
    policy_id: Option<Py<PyString>>,
    shadow_allowed: Option<bool>,
    shadow_policy_id: Option<Py<PyString>>,
}

fn opt_str(py: Python<'_>, s: &Option<Py<PyString>>) -> Option<String> {
    s.as_ref()
        .and_then(|s| s.bind(py).to_str().ok().map(str::to_string))
}

#[pymethods]
impl RbacDecision {
    #[getter]
    fn allowed(&self) -> bool {
        self.allowed
    }

    #[getter]
    fn policy_id(&self, py: Python<'_>) -> Option<Py<PyString>> {
        self.policy_id.as_ref().map(|s| s.clone_ref(py))
    }

    #[getter]
    fn shadow_allowed(&self) -> Option<bool> {
        self.shadow_allowed
    }

    #[getter]
    fn shadow_policy_id(&self, py: Python<'_>) -> Option<Py<PyString>> {
        self.shadow_policy_id.as_ref().map(|s| s.clone_ref(py))
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "RbacDecision(allowed={}, policy_id={}, shadow_allowed={}, shadow_policy_id={})",
            py_bool(self.allowed),
            py_opt(opt_str(py, &self.policy_id).as_deref()),
            self.shadow_allowed.map_or("None", py_bool),
            py_opt(opt_str(py, &self.shadow_policy_id).as_deref())
        )
    }

    fn __bool__(&self) -> bool {
        self.allowed
    }

    fn __eq__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> bool {
        match other.cast::<RbacDecision>() {
            Ok(o) => {
                let o = o.get();
                self.allowed == o.allowed
                    && opt_str(py, &self.policy_id) == opt_str(py, &o.policy_id)
                    && self.shadow_allowed == o.shadow_allowed
                    && opt_str(py, &self.shadow_policy_id) == opt_str(py, &o.shadow_policy_id)
            }
            Err(_) => false,
        }
    }

    fn __hash__(&self, py: Python<'_>) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (
            self.allowed,
            opt_str(py, &self.policy_id),
            self.shadow_allowed,
            opt_str(py, &self.shadow_policy_id),
        )
            .hash(&mut h);
        h.finish()
    }
}

fn py_opt(s: Option<&str>) -> String {
    s.map_or_else(|| "None".to_string(), |s| format!("{s:?}"))
}

fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

/// The serialized config and which message it is.
fn config_bytes(
    config: &Bound<'_, PyAny>,
    message_type: Option<&str>,
) -> PyResult<(Vec<u8>, String)> {
    // google.protobuf.Any (e.g. an HttpFilter's typed_config): unpack by its type URL.
    if config.hasattr("type_url")? && config.hasattr("value")? && !config.hasattr("rules")? {
        let url: String = config.getattr("type_url")?.extract()?;
        let value = config.getattr("value")?;
        let name = url.rsplit('/').next().unwrap_or_default().to_string();
        return Ok((value.cast::<PyBytes>()?.as_bytes().to_vec(), name));
    }
    if let Ok(b) = config.cast::<PyBytes>() {
        let t = message_type.unwrap_or(FILTER_TYPE).to_string();
        return Ok((b.as_bytes().to_vec(), t));
    }
    if config.hasattr("SerializeToString")? {
        let name: String = config
            .getattr("DESCRIPTOR")?
            .getattr("full_name")?
            .extract()?;
        let b = config.call_method0("SerializeToString")?;
        return Ok((b.cast::<PyBytes>()?.as_bytes().to_vec(), name));
    }
    if let Ok(v) = config.extract::<Vec<u8>>() {
        let t = message_type.unwrap_or(FILTER_TYPE).to_string();
        return Ok((v, t));
    }
    Err(PyTypeError::new_err(
        "expected an RBAC message (with SerializeToString), a google.protobuf.Any, or bytes",
    ))
}

fn parse_ip(v: Option<&str>, what: &str) -> PyResult<Option<IpAddr>> {
    match v {
        None => Ok(None),
        Some(s) => s
            .parse::<IpAddr>()
            .map(Some)
            .map_err(|_| PyValueError::new_err(format!("{what}: {s:?} is not an IP address"))),
    }
}

/// Header name/value strings kept alive while `&str` views into them are in use.
type HeaderObjs<'py> = Vec<(Bound<'py, PyString>, Bound<'py, PyString>)>;

fn header_objs<'py>(h: Option<&Bound<'py, PyAny>>) -> PyResult<HeaderObjs<'py>> {
    let mut out = Vec::new();
    let Some(h) = h else {
        return Ok(out);
    };
    if h.is_none() {
        return Ok(out);
    }
    let pair = |k: Bound<'py, PyAny>, v: Bound<'py, PyAny>| -> PyResult<_> {
        let k = k
            .cast_into::<PyString>()
            .map_err(|_| PyTypeError::new_err("header names must be str"))?;
        let v = v
            .cast_into::<PyString>()
            .map_err(|_| PyTypeError::new_err("header values must be str"))?;
        Ok((k, v))
    };
    if let Ok(d) = h.cast::<PyDict>() {
        for (k, v) in d.iter() {
            out.push(pair(k, v)?);
        }
        return Ok(out);
    }
    for item in h.try_iter()? {
        let (k, v): (Bound<'py, PyAny>, Bound<'py, PyAny>) = item?
            .extract()
            .map_err(|_| PyTypeError::new_err("headers must be a dict or (name, value) pairs"))?;
        out.push(pair(k, v)?);
    }
    Ok(out)
}

/// One request's keyword arguments, borrowed from the caller's Python strings.
struct Args<'a> {
    method: Option<&'a str>,
    path: Option<&'a str>,
    authority: Option<&'a str>,
    scheme: Option<&'a str>,
    source_ip: Option<&'a str>,
    remote_ip: Option<&'a str>,
    direct_remote_ip: Option<&'a str>,
    destination_ip: Option<&'a str>,
    destination_port: Option<u16>,
    principal: Option<&'a str>,
    uri_sans: Option<Vec<String>>,
    dns_sans: Option<Vec<String>>,
    subject: Option<&'a str>,
    tls: Option<bool>,
    sni: Option<&'a str>,
    metadata: Option<MetaValue>,
}

/// Dynamic metadata from Python: a dict of filter name -> dict (google.protobuf.Struct's
/// shape: dicts, lists, str, numbers, bools, None).
fn meta_value(v: &Bound<'_, PyAny>, depth: usize) -> PyResult<MetaValue> {
    if depth > 64 {
        return Err(PyValueError::new_err("metadata: nested too deeply"));
    }
    if v.is_none() {
        return Ok(MetaValue::Null);
    }
    if let Ok(b) = v.cast::<PyBool>() {
        return Ok(MetaValue::Bool(b.is_true()));
    }
    if let Ok(s) = v.cast::<PyString>() {
        return Ok(MetaValue::String(s.to_str()?.to_string()));
    }
    if let Ok(d) = v.cast::<PyDict>() {
        let mut out = std::collections::BTreeMap::new();
        for (k, item) in d.iter() {
            let k = k
                .cast::<PyString>()
                .map_err(|_| PyTypeError::new_err("metadata: keys must be str"))?
                .to_str()?
                .to_string();
            out.insert(k, meta_value(&item, depth + 1)?);
        }
        return Ok(MetaValue::Struct(out));
    }
    if v.cast::<PyList>().is_ok() || v.cast::<PyTuple>().is_ok() {
        let mut out = Vec::new();
        for item in v.try_iter()? {
            out.push(meta_value(&item?, depth + 1)?);
        }
        return Ok(MetaValue::List(out));
    }
    if let Ok(n) = v.extract::<f64>() {
        return Ok(MetaValue::Number(n));
    }
    Err(PyTypeError::new_err(format!(
        "metadata: unsupported value {v} (dict, list, str, number, bool or None)"
    )))
}

/// Whether the connection is TLS: given, or implied by a peer certificate or SNI (both exist
/// only on TLS connections).
fn tls_of(tls: Option<bool>, implied: bool) -> PyResult<bool> {
    match tls {
        Some(false) if implied => Err(PyValueError::new_err(
            "tls=False contradicts principal/uri_sans/dns_sans/subject/sni",
        )),
        Some(t) => Ok(t),
        None => Ok(implied),
    }
}

/// Builds the attributes of `args` (allocating only for headers and extra SANs) and runs `f`.
fn with_attributes<R>(
    args: &Args<'_>,
    headers: Option<&Bound<'_, PyAny>>,
    f: impl FnOnce(&Attributes<'_>) -> R,
) -> PyResult<R> {
    let implied = args.principal.is_some()
        || args.uri_sans.is_some()
        || args.dns_sans.is_some()
        || args.subject.is_some()
        || args.sni.is_some();
    let tls = tls_of(args.tls, implied)?;
    let objs = header_objs(headers)?;
    let header_views: Vec<(&str, &str)> = objs
        .iter()
        .map(|(k, v)| Ok((k.to_str()?, v.to_str()?)))
        .collect::<PyResult<_>>()?;
    let mut sans: Vec<&str> = Vec::new();
    let uri_sans: &[&str] = match (&args.principal, &args.uri_sans) {
        (Some(p), None) => std::slice::from_ref(p),
        (p, more) => {
            sans.extend(p.iter().copied());
            sans.extend(more.iter().flatten().map(String::as_str));
            &sans
        }
    };
    let dns: Vec<&str> = args.dns_sans.iter().flatten().map(String::as_str).collect();
    let a = Attributes {
        method: args.method,
        path: args.path,
        authority: args.authority,
        scheme: args.scheme,
        headers: &header_views,
        source_ip: parse_ip(args.source_ip, "source_ip")?,
        direct_remote_ip: parse_ip(args.direct_remote_ip, "direct_remote_ip")?,
        remote_ip: parse_ip(args.remote_ip, "remote_ip")?,
        destination_ip: parse_ip(args.destination_ip, "destination_ip")?,
        destination_port: args.destination_port,
        tls,
        uri_sans,
        dns_sans: &dns,
        subject: args.subject.unwrap_or_default(),
        sni: args.sni.unwrap_or_default(),
        metadata: args.metadata.as_ref(),
    };
    Ok(f(&a))
}

/// A compiled Envoy RBAC filter config (immutable; swap the reference to update).
#[pyclass(frozen, module = "meshcore._core")]
pub struct RbacEngine {
    rbac: Arc<CompiledRbac>,
    /// Policy names as Python strings, made once: decisions hand out references.
    names: Vec<Py<PyString>>,
    shadow_names: Vec<Py<PyString>>,
    /// Without shadow rules a decision is fixed by its effective policy, so every possible
    /// RbacDecision is made once (index 0: no policy; i + 1: policy i) and shared.
    decisions: Vec<Py<RbacDecision>>,
}

fn names(e: Option<&Engine>) -> Vec<String> {
    e.map(|e| e.policies.iter().map(|p| p.name.clone()).collect())
        .unwrap_or_default()
}

fn engine_explain<'py>(
    py: Python<'py>,
    e: Option<&Engine>,
    a: &Attributes<'_>,
) -> PyResult<Option<Bound<'py, PyDict>>> {
    let Some(e) = e else {
        return Ok(None);
    };
    let d = PyDict::new(py);
    let dec = e.decide(a);
    d.set_item("action", e.action.name())?;
    d.set_item("allowed", dec.allowed)?;
    // How many policies the index left for a full check (the rest cannot match).
    d.set_item("candidates", e.candidates(a))?;
    d.set_item(
        "policy_id",
        dec.policy
            .and_then(|i| e.policies.get(i))
            .map(|p| p.name.as_str()),
    )?;
    let policies = PyList::empty(py);
    for x in e.explain(a) {
        let p = PyDict::new(py);
        p.set_item(
            "policy_id",
            e.policies.get(x.policy).map(|p| p.name.as_str()),
        )?;
        p.set_item("matched", x.matched.is_some())?;
        p.set_item("permission", x.matched.map(|m| m.0))?;
        p.set_item("principal", x.matched.map(|m| m.1))?;
        p.set_item("reason", x.reason)?;
        policies.append(p)?;
    }
    d.set_item("policies", policies)?;
    Ok(Some(d))
}

impl RbacEngine {
    fn shared_decision(&self, py: Python<'_>, d: &Decision) -> PyResult<Py<RbacDecision>> {
        if d.shadow_allowed.is_none() {
            let slot = d.policy.map_or(0, |i| i + 1);
            if let Some(shared) = self.decisions.get(slot) {
                // The cached decision for this policy has the same `allowed` by construction.
                if shared.get().allowed == d.allowed {
                    return Ok(shared.clone_ref(py));
                }
            }
        }
        Py::new(py, self.decision(py, d))
    }

    fn decision(&self, py: Python<'_>, d: &Decision) -> RbacDecision {
        let name = |names: &[Py<PyString>], i: Option<usize>| {
            i.and_then(|i| names.get(i)).map(|s| s.clone_ref(py))
        };
        RbacDecision {
            allowed: d.allowed,
            policy_id: name(&self.names, d.policy),
            shadow_allowed: d.shadow_allowed,
            shadow_policy_id: name(&self.shadow_names, d.shadow_policy),
        }
    }
}

/// A batch column: None, one value for every request, or one per request.
enum Column<T> {
    Absent,
    Scalar(T),
    Each(Vec<T>),
}

impl<T: Clone> Column<T> {
    fn get(&self, i: usize) -> Option<T> {
        match self {
            Self::Absent => None,
            Self::Scalar(v) => Some(v.clone()),
            Self::Each(v) => v.get(i).cloned(),
        }
    }

    fn len(&self) -> Option<usize> {
        match self {
            Self::Each(v) => Some(v.len()),
            _ => None,
        }
    }
}

/// A column of optional values (None entries are absent attributes); a str or int is a
/// scalar broadcast to every request.
fn column<'py, T>(
    col: Option<&Bound<'py, PyAny>>,
    what: &str,
    scalar: impl Fn(&Bound<'py, PyAny>) -> bool,
) -> PyResult<Column<Option<T>>>
where
    T: for<'a> FromPyObject<'a, 'py>,
{
    let Some(col) = col else {
        return Ok(Column::Absent);
    };
    if col.is_none() {
        return Ok(Column::Absent);
    }
    let conv = |v: &Bound<'py, PyAny>| -> PyResult<Option<T>> {
        if v.is_none() {
            return Ok(None);
        }
        v.extract::<T>()
            .map(Some)
            .map_err(|_| PyTypeError::new_err(format!("{what}: unexpected value {v}")))
    };
    if scalar(col) {
        return Ok(Column::Scalar(conv(col)?));
    }
    // Lists (the common case) are walked directly; anything else (numpy arrays, tuples,
    // iterables) becomes a list first.
    let list = if let Ok(l) = col.cast::<PyList>() {
        l.clone()
    } else if col.hasattr("tolist")? {
        col.call_method0("tolist")?.cast_into::<PyList>()?
    } else {
        PyList::new(col.py(), col.try_iter()?.collect::<PyResult<Vec<_>>>()?)?
    };
    let mut out = Vec::with_capacity(list.len());
    for item in list.iter() {
        out.push(conv(&item)?);
    }
    Ok(Column::Each(out))
}

/// A column of optional Python strings.
type StrCol<'py> = Column<Option<Bound<'py, PyString>>>;

/// `n` borrowed views of a string column (a scalar repeats).
fn strs<'a>(c: &'a StrCol<'_>, n: usize) -> PyResult<Vec<Option<&'a str>>> {
    (0..n)
        .map(|i| match c {
            Column::Absent => Ok(None),
            Column::Scalar(v) => v.as_ref().map(|s| s.to_str()).transpose(),
            Column::Each(v) => v
                .get(i)
                .and_then(|s| s.as_ref())
                .map(|s| s.to_str())
                .transpose(),
        })
        .collect()
}

fn is_str(v: &Bound<'_, PyAny>) -> bool {
    v.cast::<PyString>().is_ok()
}

fn is_int_or_bool(v: &Bound<'_, PyAny>) -> bool {
    v.extract::<i64>().is_ok() && !is_str(v)
}

#[pymethods]
impl RbacEngine {
    /// Compiles envoy.extensions.filters.http.rbac.v3.RBAC (enforced and shadow rules) or
    /// envoy.config.rbac.v3.RBAC: a message, a google.protobuf.Any holding one, or bytes
    /// (`message_type` names the message for bytes; the filter config by default).
    #[staticmethod]
    #[pyo3(signature = (config, *, message_type=None))]
    fn from_proto(
        py: Python<'_>,
        config: &Bound<'_, PyAny>,
        message_type: Option<&str>,
    ) -> PyResult<Self> {
        let (bytes, name) = config_bytes(config, message_type)?;
        let compiled = match name.as_str() {
            FILTER_TYPE => py.detach(|| CompiledRbac::from_filter_bytes(&bytes)),
            RBAC_TYPE => py.detach(|| CompiledRbac::from_rbac_bytes(&bytes)),
            NETWORK_FILTER_TYPE => py.detach(|| CompiledRbac::from_network_filter_bytes(&bytes)),
            other => {
                return Err(PyTypeError::new_err(format!(
                    "expected {FILTER_TYPE}, {NETWORK_FILTER_TYPE} or {RBAC_TYPE}, got {other}"
                )))
            }
        }
        .map_err(|e| core_error_to_py(py, &e))?;
        let intern = |e: Option<&Engine>| -> Vec<Py<PyString>> {
            names(e)
                .iter()
                .map(|n| PyString::new(py, n).unbind())
                .collect()
        };
        let mut engine = Self {
            names: intern(compiled.rules.as_ref()),
            shadow_names: intern(compiled.shadow_rules.as_ref()),
            rbac: Arc::new(compiled),
            decisions: Vec::new(),
        };
        if engine.rbac.shadow_rules.is_none() {
            let action = engine.rbac.rules.as_ref().map(|e| e.action);
            let mut decisions = Vec::with_capacity(engine.names.len() + 1);
            for slot in 0..=engine.names.len() {
                let policy = slot.checked_sub(1);
                let allowed = match action {
                    None | Some(Action::Log) => true,
                    Some(Action::Allow) => policy.is_some(),
                    Some(Action::Deny) => policy.is_none(),
                };
                let d = Decision {
                    allowed,
                    policy,
                    shadow_allowed: None,
                    shadow_policy: None,
                };
                decisions.push(Py::new(py, engine.decision(py, &d))?);
            }
            engine.decisions = decisions;
        }
        Ok(engine)
    }

    /// The enforced rules' action ("ALLOW", "DENY", "LOG"), None without rules.
    #[getter]
    fn action(&self) -> Option<&'static str> {
        self.rbac.rules.as_ref().map(|e| e.action.name())
    }

    #[getter]
    fn shadow_action(&self) -> Option<&'static str> {
        self.rbac.shadow_rules.as_ref().map(|e| e.action.name())
    }

    /// Enforced policy names in evaluation (name) order; `evaluate_batch` indexes it.
    #[getter]
    fn policy_ids(&self, py: Python<'_>) -> PyResult<Py<PyTuple>> {
        Ok(PyTuple::new(py, names(self.rbac.rules.as_ref()))?.unbind())
    }

    #[getter]
    fn shadow_policy_ids(&self, py: Python<'_>) -> PyResult<Py<PyTuple>> {
        Ok(PyTuple::new(py, names(self.rbac.shadow_rules.as_ref()))?.unbind())
    }

    #[getter]
    fn shadow_rules_stat_prefix(&self) -> &str {
        &self.rbac.shadow_rules_stat_prefix
    }

    /// The decision of Envoy's RBAC filter for one request. Omitted attributes are absent.
    #[pyo3(signature = (*, method=None, path=None, authority=None, headers=None, scheme=None,
        source_ip=None, remote_ip=None, direct_remote_ip=None, destination_ip=None,
        destination_port=None, principal=None, uri_sans=None, dns_sans=None, subject=None,
        tls=None, sni=None, metadata=None))]
    #[allow(clippy::too_many_arguments)]
    fn evaluate(
        &self,
        py: Python<'_>,
        method: Option<&str>,
        path: Option<&str>,
        authority: Option<&str>,
        headers: Option<&Bound<'_, PyAny>>,
        scheme: Option<&str>,
        source_ip: Option<&str>,
        remote_ip: Option<&str>,
        direct_remote_ip: Option<&str>,
        destination_ip: Option<&str>,
        destination_port: Option<u16>,
        principal: Option<&str>,
        uri_sans: Option<Vec<String>>,
        dns_sans: Option<Vec<String>>,
        subject: Option<&str>,
        tls: Option<bool>,
        sni: Option<&str>,
        metadata: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<RbacDecision>> {
        let args = Args {
            method,
            path,
            authority,
            scheme,
            source_ip,
            remote_ip,
            direct_remote_ip,
            destination_ip,
            destination_port,
            principal,
            uri_sans,
            dns_sans,
            subject,
            tls,
            sni,
            metadata: match metadata {
                Some(m) if !m.is_none() => Some(meta_value(m, 0)?),
                _ => None,
            },
        };
        let d = with_attributes(&args, headers, |a| self.rbac.evaluate(a))?;
        self.shared_decision(py, &d)
    }

    /// Which policies matched, through which permission and principal, and why the others
    /// did not (every policy is evaluated, in name order).
    #[pyo3(signature = (*, method=None, path=None, authority=None, headers=None, scheme=None,
        source_ip=None, remote_ip=None, direct_remote_ip=None, destination_ip=None,
        destination_port=None, principal=None, uri_sans=None, dns_sans=None, subject=None,
        tls=None, sni=None, metadata=None))]
    #[allow(clippy::too_many_arguments)]
    fn explain<'py>(
        &self,
        py: Python<'py>,
        method: Option<&str>,
        path: Option<&str>,
        authority: Option<&str>,
        headers: Option<&Bound<'py, PyAny>>,
        scheme: Option<&str>,
        source_ip: Option<&str>,
        remote_ip: Option<&str>,
        direct_remote_ip: Option<&str>,
        destination_ip: Option<&str>,
        destination_port: Option<u16>,
        principal: Option<&str>,
        uri_sans: Option<Vec<String>>,
        dns_sans: Option<Vec<String>>,
        subject: Option<&str>,
        tls: Option<bool>,
        sni: Option<&str>,
        metadata: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let args = Args {
            method,
            path,
            authority,
            scheme,
            source_ip,
            remote_ip,
            direct_remote_ip,
            destination_ip,
            destination_port,
            principal,
            uri_sans,
            dns_sans,
            subject,
            tls,
            sni,
            metadata: match metadata {
                Some(m) if !m.is_none() => Some(meta_value(m, 0)?),
                _ => None,
            },
        };
        with_attributes(&args, headers, |a| -> PyResult<Bound<'py, PyDict>> {
            let d = self.rbac.evaluate(a);
            let out = PyDict::new(py);
            out.set_item("allowed", d.allowed)?;
            out.set_item("policy_id", self.rbac.policy_name(&d))?;
            out.set_item("shadow_allowed", d.shadow_allowed)?;
            out.set_item("shadow_policy_id", self.rbac.shadow_policy_name(&d))?;
            out.set_item("rules", engine_explain(py, self.rbac.rules.as_ref(), a)?)?;
            out.set_item(
                "shadow_rules",
                engine_explain(py, self.rbac.shadow_rules.as_ref(), a)?,
            )?;
            Ok(out)
        })?
    }

    /// Many requests at once, the GIL released while the core works. Each argument is a
    /// column (a sequence or numpy array, None entries absent) or one value for every
    /// request. Returns numpy arrays: `allowed` (bool), `policy` (int32 index into
    /// `policy_ids`, -1 for none), `shadow_allowed` (bool; False without shadow rules) and
    /// `shadow_policy` (int32 index into `shadow_policy_ids`).
    #[pyo3(signature = (*, method=None, path=None, authority=None, headers=None,
        source_ip=None, remote_ip=None, direct_remote_ip=None, destination_ip=None,
        destination_port=None, principal=None, tls=None, sni=None))]
    #[allow(clippy::too_many_arguments)]
    fn evaluate_batch<'py>(
        &self,
        py: Python<'py>,
        method: Option<&Bound<'py, PyAny>>,
        path: Option<&Bound<'py, PyAny>>,
        authority: Option<&Bound<'py, PyAny>>,
        headers: Option<&Bound<'py, PyAny>>,
        source_ip: Option<&Bound<'py, PyAny>>,
        remote_ip: Option<&Bound<'py, PyAny>>,
        direct_remote_ip: Option<&Bound<'py, PyAny>>,
        destination_ip: Option<&Bound<'py, PyAny>>,
        destination_port: Option<&Bound<'py, PyAny>>,
        principal: Option<&Bound<'py, PyAny>>,
        tls: Option<&Bound<'py, PyAny>>,
        sni: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        // Strings stay Python objects; the core borrows views of them (no copies).
        let method: StrCol<'py> = column(method, "method", is_str)?;
        let path: StrCol<'py> = column(path, "path", is_str)?;
        let authority: StrCol<'py> = column(authority, "authority", is_str)?;
        let principal: StrCol<'py> = column(principal, "principal", is_str)?;
        let sni: StrCol<'py> = column(sni, "sni", is_str)?;
        let ips = |c: Option<&Bound<'py, PyAny>>, what: &str| -> PyResult<Column<Option<IpAddr>>> {
            Ok(match column::<Bound<'py, PyString>>(c, what, is_str)? {
                Column::Absent => Column::Absent,
                Column::Scalar(v) => {
                    Column::Scalar(parse_ip(v.as_ref().map(|s| s.to_str()).transpose()?, what)?)
                }
                Column::Each(v) => Column::Each(
                    v.iter()
                        .map(|s| parse_ip(s.as_ref().map(|s| s.to_str()).transpose()?, what))
                        .collect::<PyResult<_>>()?,
                ),
            })
        };
        let source_ip = ips(source_ip, "source_ip")?;
        let remote_ip = ips(remote_ip, "remote_ip")?;
        let direct_remote_ip = ips(direct_remote_ip, "direct_remote_ip")?;
        let destination_ip = ips(destination_ip, "destination_ip")?;
        let destination_port: Column<Option<u16>> =
            column(destination_port, "destination_port", is_int_or_bool)?;
        let tls: Column<Option<bool>> = column(tls, "tls", |v| v.extract::<bool>().is_ok())?;
        let header_objs_all: Vec<HeaderObjs<'py>> = match headers {
            Some(h) if !h.is_none() => {
                let mut v = Vec::new();
                for item in h.try_iter()? {
                    v.push(header_objs(Some(&item?))?);
                }
                v
            }
            _ => Vec::new(),
        };
        let lens = [
            method.len(),
            path.len(),
            authority.len(),
            source_ip.len(),
            remote_ip.len(),
            direct_remote_ip.len(),
            destination_ip.len(),
            destination_port.len(),
            principal.len(),
            tls.len(),
            sni.len(),
            (!header_objs_all.is_empty()).then_some(header_objs_all.len()),
        ];
        let mut n: Option<usize> = None;
        for l in lens.into_iter().flatten() {
            if n.is_some_and(|n| n != l) {
                return Err(PyValueError::new_err(
                    "every column must have one entry per request",
                ));
            }
            n = Some(l);
        }
        let n = n.unwrap_or(0);
        let (method, path) = (strs(&method, n)?, strs(&path, n)?);
        let authority = strs(&authority, n)?;
        let (principal, sni) = (strs(&principal, n)?, strs(&sni, n)?);
        let header_views: Vec<Vec<(&str, &str)>> = header_objs_all
            .iter()
            .map(|objs| {
                objs.iter()
                    .map(|(k, v)| Ok((k.to_str()?, v.to_str()?)))
                    .collect::<PyResult<_>>()
            })
            .collect::<PyResult<_>>()?;
        let mut reqs = Vec::with_capacity(n);
        for i in 0..n {
            let p = principal.get(i).and_then(|p| p.as_ref());
            let s = sni.get(i).copied().flatten();
            let t = tls_of(tls.get(i).flatten(), p.is_some() || s.is_some())
                .map_err(|e| PyValueError::new_err(format!("request {i}: {e}")))?;
            reqs.push(Attributes {
                method: method.get(i).copied().flatten(),
                path: path.get(i).copied().flatten(),
                authority: authority.get(i).copied().flatten(),
                scheme: None,
                headers: header_views.get(i).map_or(&[][..], |v| v.as_slice()),
                source_ip: source_ip.get(i).flatten(),
                direct_remote_ip: direct_remote_ip.get(i).flatten(),
                remote_ip: remote_ip.get(i).flatten(),
                destination_ip: destination_ip.get(i).flatten(),
                destination_port: destination_port.get(i).flatten(),
                tls: t,
                uri_sans: p.map_or(&[][..], std::slice::from_ref),
                dns_sans: &[],
                subject: "",
                sni: s.unwrap_or_default(),
                metadata: None,
            });
        }
        let rbac = &self.rbac;
        let (allowed, policy, shadow_allowed, shadow_policy) = py.detach(|| {
            let mut allowed = Vec::with_capacity(n);
            let mut policy = Vec::with_capacity(n * 4);
            let mut shadow_allowed = Vec::with_capacity(n);
            let mut shadow_policy = Vec::with_capacity(n * 4);
            for a in &reqs {
                let d = rbac.evaluate(a);
                allowed.push(u8::from(d.allowed));
                policy.extend_from_slice(&d.policy.map_or(-1i32, |i| i as i32).to_ne_bytes());
                shadow_allowed.push(u8::from(d.shadow_allowed.unwrap_or(false)));
                shadow_policy
                    .extend_from_slice(&d.shadow_policy.map_or(-1i32, |i| i as i32).to_ne_bytes());
            }
            (allowed, policy, shadow_allowed, shadow_policy)
        });
        let np = py.import("numpy")?;
        let arr = |b: Vec<u8>, dtype: &str| -> PyResult<Bound<'py, PyAny>> {
            let buf = pyo3::types::PyByteArray::new(py, &b);
            np.call_method1("frombuffer", (buf, np.getattr(dtype)?))
        };
        let out = PyDict::new(py);
        out.set_item("allowed", arr(allowed, "bool_")?)?;
        out.set_item("policy", arr(policy, "int32")?)?;
        out.set_item("shadow_allowed", arr(shadow_allowed, "bool_")?)?;
        out.set_item("shadow_policy", arr(shadow_policy, "int32")?)?;
        Ok(out)
    }

    fn __repr__(&self) -> String {
        let count = |e: Option<&Engine>| e.map_or(0, |e| e.policies.len());
        format!(
            "RbacEngine(action={}, policies={}, shadow_action={}, shadow_policies={})",
            py_opt(self.rbac.rules.as_ref().map(|e| e.action.name())),
            count(self.rbac.rules.as_ref()),
            py_opt(self.rbac.shadow_rules.as_ref().map(|e| e.action.name())),
            count(self.rbac.shadow_rules.as_ref()),
        )
    }
}
