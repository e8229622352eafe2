//! `RbacEngine`: a compiled Envoy RBAC filter config behind a frozen Python handle.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyList, PyString, PyTuple};

use meshcore_core::rbac::{Action, Decision, Engine, MetaValue, RbacMessage};
use meshcore_core::{Attributes, CompiledRbac};

use crate::columns::{
    batch_len, header_objs, header_views, int32_array, numpy_array, FlatViews, HeaderColumn,
    ListColumn, StrColumn, ValueColumn, Views,
};
use crate::errors::core_error_to_py;

const FILTER_TYPE: &str = "envoy.extensions.filters.http.rbac.v3.RBAC";
const RBAC_TYPE: &str = "envoy.config.rbac.v3.RBAC";
const NETWORK_FILTER_TYPE: &str = "envoy.extensions.filters.network.rbac.v3.RBAC";

/// What `RbacEngine.evaluate()` returns. Policy ids are the engine's own interned strings.
#[pyclass(frozen, module = "meshcore._core.rbac")]
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

/// An attribute that cannot be what it claims (the error stays small on the hot path; the
/// message is made only when raised).
#[derive(Debug, Clone, Copy)]
enum BadField {
    Ip(&'static str),
    TlsContradiction,
}

fn parse_ip(v: Option<&str>, what: &'static str) -> Result<Option<IpAddr>, BadField> {
    match v {
        None => Ok(None),
        Some(s) => s
            .parse::<IpAddr>()
            .map(Some)
            .map_err(|_| BadField::Ip(what)),
    }
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
fn tls_of(tls: Option<bool>, implied: bool) -> Result<bool, BadField> {
    match tls {
        Some(false) if implied => Err(BadField::TlsContradiction),
        Some(t) => Ok(t),
        None => Ok(implied),
    }
}

/// One request's scalar attributes as Python gave them (strings borrowed): the one place that
/// maps the keyword arguments (or batch columns) to the core's [`Attributes`].
#[derive(Default, Clone, Copy)]
struct Fields<'a> {
    method: Option<&'a str>,
    path: Option<&'a str>,
    authority: Option<&'a str>,
    scheme: Option<&'a str>,
    source_ip: Option<&'a str>,
    remote_ip: Option<&'a str>,
    direct_remote_ip: Option<&'a str>,
    destination_ip: Option<&'a str>,
    destination_port: Option<u16>,
    subject: Option<&'a str>,
    sni: Option<&'a str>,
    tls: Option<bool>,
    /// A peer certificate was described (principal, uri_sans, dns_sans or subject given).
    cert: bool,
}

impl<'a> Fields<'a> {
    /// The error for a [`BadField`] of these fields.
    fn error(&self, bad: BadField) -> PyErr {
        PyValueError::new_err(self.message(bad))
    }

    fn message(&self, bad: BadField) -> String {
        match bad {
            BadField::Ip(what) => {
                let v = match what {
                    "source_ip" => self.source_ip,
                    "remote_ip" => self.remote_ip,
                    "direct_remote_ip" => self.direct_remote_ip,
                    _ => self.destination_ip,
                };
                format!("{what}: {:?} is not an IP address", v.unwrap_or_default())
            }
            BadField::TlsContradiction => {
                "tls=False contradicts principal/uri_sans/dns_sans/subject/sni".to_string()
            }
        }
    }

    /// Runs `f` on the core's attributes of these fields (built in place: the struct is
    /// large, and moving it out of a `Result` cost more than the decision on small engines).
    #[inline(always)]
    fn with_attributes<R>(
        &self,
        headers: &'a [(&'a str, &'a str)],
        uri_sans: &'a [&'a str],
        dns_sans: &'a [&'a str],
        metadata: Option<&'a MetaValue>,
        f: impl FnOnce(&Attributes<'a>) -> R,
    ) -> Result<R, BadField> {
        let a = Attributes {
            method: self.method,
            path: self.path,
            authority: self.authority,
            scheme: self.scheme,
            headers,
            source_ip: parse_ip(self.source_ip, "source_ip")?,
            direct_remote_ip: parse_ip(self.direct_remote_ip, "direct_remote_ip")?,
            remote_ip: parse_ip(self.remote_ip, "remote_ip")?,
            destination_ip: parse_ip(self.destination_ip, "destination_ip")?,
            destination_port: self.destination_port,
            tls: tls_of(self.tls, self.cert || self.sni.is_some())?,
            uri_sans,
            dns_sans,
            subject: self.subject.unwrap_or_default(),
            sni: self.sni.unwrap_or_default(),
            metadata,
        };
        Ok(f(&a))
    }
}

/// The URI SANs Envoy matches: `principal` (the common case, no allocation) then `more`.
fn all_uri_sans<'a>(
    principal: &'a Option<&'a str>,
    more: Option<&'a [String]>,
) -> Cow<'a, [&'a str]> {
    match (principal, more) {
        (Some(p), None) => Cow::Borrowed(std::slice::from_ref(p)),
        (None, None) => Cow::Borrowed(&[]),
        (p, more) => Cow::Owned(
            p.iter()
                .copied()
                .chain(more.into_iter().flatten().map(String::as_str))
                .collect(),
        ),
    }
}

fn metadata_arg(metadata: Option<&Bound<'_, PyAny>>) -> PyResult<Option<MetaValue>> {
    match metadata {
        Some(m) if !m.is_none() => Ok(Some(meta_value(m, 0)?)),
        _ => Ok(None),
    }
}

/// A compiled Envoy RBAC filter config (immutable; swap the reference to update).
#[pyclass(frozen, module = "meshcore._core.rbac")]
pub struct RbacEngine {
    pub(crate) rbac: Arc<CompiledRbac>,
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

fn is_int_or_bool(v: &Bound<'_, PyAny>) -> bool {
    v.extract::<i64>().is_ok() && v.cast::<PyString>().is_err()
}

/// The string attributes of a batch, in [`Batch::read`]'s order.
const STR_COLUMNS: [&str; 11] = [
    "method",
    "path",
    "authority",
    "scheme",
    "source_ip",
    "remote_ip",
    "direct_remote_ip",
    "destination_ip",
    "principal",
    "subject",
    "sni",
];

/// The other attributes of a batch, in [`Batch::read`]'s order.
const OTHER_COLUMNS: [&str; 6] = [
    "headers",
    "uri_sans",
    "dns_sans",
    "destination_port",
    "tls",
    "metadata",
];

/// Every attribute of a batch of requests as read from Python (strings stay Python objects
/// or one numpy buffer; the core borrows views of them).
struct Batch<'py> {
    strs: Vec<StrColumn<'py>>,
    headers: HeaderColumn<'py>,
    uri: ListColumn<'py>,
    dns: ListColumn<'py>,
    port: ValueColumn<u16>,
    tls: ValueColumn<bool>,
    meta: Option<Vec<Option<MetaValue>>>,
    n: usize,
}

impl<'py> Batch<'py> {
    /// `strs` in [`STR_COLUMNS`] order, `other` in [`OTHER_COLUMNS`] order; `n` fixes the
    /// number of requests (else the columns' common length).
    fn read(
        strs: [Option<&Bound<'py, PyAny>>; 11],
        other: [Option<&Bound<'py, PyAny>>; 6],
        n: Option<usize>,
    ) -> PyResult<Self> {
        let [headers, uri_sans, dns_sans, port, tls, metadata] = other;
        let strs = strs
            .iter()
            .zip(STR_COLUMNS)
            .map(|(c, what)| StrColumn::read(*c, what))
            .collect::<PyResult<Vec<_>>>()?;
        let headers = HeaderColumn::read(headers)?;
        let uri = ListColumn::read(uri_sans, "uri_sans")?;
        let dns = ListColumn::read(dns_sans, "dns_sans")?;
        let port = ValueColumn::<u16>::read(port, "destination_port", is_int_or_bool)?;
        let tls = ValueColumn::<bool>::read(tls, "tls", |v| v.cast::<PyBool>().is_ok())?;
        let meta: Option<Vec<Option<MetaValue>>> = match metadata {
            Some(m) if !m.is_none() => Some(
                m.try_iter()?
                    .map(|v| metadata_arg(Some(&v?)))
                    .collect::<PyResult<_>>()?,
            ),
            _ => None,
        };
        let lens = strs
            .iter()
            .map(StrColumn::len)
            .chain([headers.len(), uri.len(), dns.len(), port.len(), tls.len()])
            .chain([meta.as_ref().map(Vec::len)]);
        let n = batch_len(lens.chain([n]))?;
        Ok(Self {
            strs,
            headers,
            uri,
            dns,
            port,
            tls,
            meta,
            n,
        })
    }

    fn views(&self) -> PyResult<BatchViews<'_>> {
        let strs = self
            .strs
            .iter()
            .zip(STR_COLUMNS)
            .map(|(c, what)| c.views(what))
            .collect::<PyResult<Vec<_>>>()?;
        let strs = <[Views<'_>; 11]>::try_from(strs)
            .map_err(|_| PyValueError::new_err("internal: column count"))?;
        Ok(BatchViews {
            strs,
            headers: self.headers.views()?,
            uri: self.uri.views()?,
            dns: self.dns.views()?,
            port: &self.port,
            tls: &self.tls,
            meta: self.meta.as_deref(),
            n: self.n,
        })
    }
}

/// Borrowed views of a [`Batch`]: what the core reads, without the GIL.
struct BatchViews<'a> {
    strs: [Views<'a>; 11],
    headers: FlatViews<(&'a str, &'a str)>,
    uri: FlatViews<&'a str>,
    dns: FlatViews<&'a str>,
    port: &'a ValueColumn<u16>,
    tls: &'a ValueColumn<bool>,
    meta: Option<&'a [Option<MetaValue>]>,
    n: usize,
}

impl BatchViews<'_> {
    /// Calls `f` with each request's attributes, in order; a bad value stops with an error
    /// naming the request.
    fn each(&self, mut f: impl FnMut(usize, &Attributes<'_>)) -> PyResult<()> {
        let [method, path, authority, scheme, source_ip, remote_ip, direct_remote_ip, destination_ip, principal, subject, sni] =
            &self.strs;
        let mut sans: Vec<&str> = Vec::new();
        for i in 0..self.n {
            // URI SANs as Envoy sees them: the principal, then the other URI SANs.
            let p = principal.get(i);
            let more = self.uri.get(i);
            let one;
            let uri_sans: &[&str] = match p {
                None => more,
                Some(p) if more.is_empty() => {
                    one = [p];
                    &one
                }
                Some(p) => {
                    sans.clear();
                    sans.push(p);
                    sans.extend_from_slice(more);
                    &sans
                }
            };
            let fields = Fields {
                method: method.get(i),
                path: path.get(i),
                authority: authority.get(i),
                scheme: scheme.get(i),
                source_ip: source_ip.get(i),
                remote_ip: remote_ip.get(i),
                direct_remote_ip: direct_remote_ip.get(i),
                destination_ip: destination_ip.get(i),
                destination_port: self.port.get(i),
                subject: subject.get(i),
                sni: sni.get(i),
                tls: self.tls.get(i),
                cert: p.is_some()
                    || self.uri.present(i)
                    || self.dns.present(i)
                    || subject.get(i).is_some(),
            };
            let meta = self.meta.and_then(|m| m.get(i)).and_then(Option::as_ref);
            fields
                .with_attributes(self.headers.get(i), uri_sans, self.dns.get(i), meta, |a| {
                    f(i, a)
                })
                .map_err(|e| {
                    PyValueError::new_err(format!("request {i}: {}", fields.message(e)))
                })?;
        }
        Ok(())
    }
}

#[pymethods]
impl RbacEngine {
    /// Compiles envoy.extensions.filters.http.rbac.v3.RBAC (enforced and shadow rules) or
    /// envoy.config.rbac.v3.RBAC: a message, a google.protobuf.Any holding one, or bytes
    /// (`message_type` names the message for bytes; the filter config by default).
    /// `max_program_size` is the RE2 program size regexes may reach (Envoy's runtime
    /// `re2.max_program_size.error_level`: 100 by default; meshcore's bootstrap sets 32768).
    #[staticmethod]
    #[pyo3(signature = (config, *, message_type=None, max_program_size=100))]
    fn from_proto(
        py: Python<'_>,
        config: &Bound<'_, PyAny>,
        message_type: Option<&str>,
        max_program_size: u64,
    ) -> PyResult<Self> {
        let (bytes, name) = config_bytes(config, message_type)?;
        let message = match name.as_str() {
            FILTER_TYPE => RbacMessage::HttpFilter,
            RBAC_TYPE => RbacMessage::Rbac,
            NETWORK_FILTER_TYPE => RbacMessage::NetworkFilter,
            other => {
                return Err(PyTypeError::new_err(format!(
                    "expected {FILTER_TYPE}, {NETWORK_FILTER_TYPE} or {RBAC_TYPE}, got {other}"
                )))
            }
        };
        let compiled = py
            .detach(|| CompiledRbac::compile(&bytes, message, max_program_size))
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
    /// (Keyword-only: PyO3 finds each keyword by scanning this list, so the attributes most
    /// calls give come first.)
    #[pyo3(signature = (*, method=None, path=None, principal=None, authority=None,
        headers=None, scheme=None, source_ip=None, remote_ip=None, direct_remote_ip=None,
        destination_ip=None, destination_port=None, uri_sans=None, dns_sans=None, subject=None,
        tls=None, sni=None, metadata=None))]
    #[allow(clippy::too_many_arguments)]
    fn evaluate(
        &self,
        py: Python<'_>,
        method: Option<&str>,
        path: Option<&str>,
        principal: Option<&str>,
        authority: Option<&str>,
        headers: Option<&Bound<'_, PyAny>>,
        scheme: Option<&str>,
        source_ip: Option<&str>,
        remote_ip: Option<&str>,
        direct_remote_ip: Option<&str>,
        destination_ip: Option<&str>,
        destination_port: Option<u16>,
        uri_sans: Option<Vec<String>>,
        dns_sans: Option<Vec<String>>,
        subject: Option<&str>,
        tls: Option<bool>,
        sni: Option<&str>,
        metadata: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<RbacDecision>> {
        let meta = metadata_arg(metadata)?;
        let objs = header_objs(headers)?;
        let header_views = header_views(&objs)?;
        let uri = all_uri_sans(&principal, uri_sans.as_deref());
        let dns: Vec<&str> = dns_sans.iter().flatten().map(String::as_str).collect();
        let f = Fields {
            method,
            path,
            authority,
            scheme,
            source_ip,
            remote_ip,
            direct_remote_ip,
            destination_ip,
            destination_port,
            subject,
            sni,
            tls,
            // As the batch form reads it: a field given (even an empty SAN list) describes
            // a peer certificate.
            cert: principal.is_some()
                || uri_sans.is_some()
                || dns_sans.is_some()
                || subject.is_some(),
        };
        let d = f
            .with_attributes(&header_views, &uri, &dns, meta.as_ref(), |a| {
                self.rbac.evaluate(a)
            })
            .map_err(|e| f.error(e))?;
        self.shared_decision(py, &d)
    }

    /// Which policies matched, through which permission and principal, and why the others
    /// did not (every policy is evaluated, in name order). Takes evaluate()'s keyword
    /// arguments; they are read as a batch of one request.
    #[pyo3(signature = (**request))]
    fn explain<'py>(
        &self,
        py: Python<'py>,
        request: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let empty = PyDict::new(py);
        let request = request.unwrap_or(&empty);
        for key in request.keys() {
            let key: String = key.extract()?;
            if !STR_COLUMNS.contains(&key.as_str()) && !OTHER_COLUMNS.contains(&key.as_str()) {
                return Err(PyTypeError::new_err(format!(
                    "explain() got an unexpected keyword argument '{key}'"
                )));
            }
        }
        let get = |k: &str| request.get_item(k).ok().flatten().filter(|v| !v.is_none());
        let strs = STR_COLUMNS.map(get);
        // Per-request attributes (lists, dicts) become one-entry columns; the rest are
        // scalars, which a batch broadcasts.
        let other = OTHER_COLUMNS.map(|k| {
            let v = get(k)?;
            if matches!(k, "headers" | "uri_sans" | "dns_sans" | "metadata") {
                PyList::new(py, [v]).ok().map(Bound::into_any)
            } else {
                Some(v)
            }
        });
        let batch = Batch::read(
            strs.each_ref().map(Option::as_ref),
            other.each_ref().map(Option::as_ref),
            Some(1),
        )?;
        let mut out = None;
        batch.views()?.each(|_, a| {
            out = Some((|| -> PyResult<Bound<'py, PyDict>> {
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
            })());
        })?;
        out.unwrap_or_else(|| Err(PyValueError::new_err("internal: no request")))
    }

    /// Many requests at once, the GIL released while the core works. Every attribute of
    /// `evaluate()` is a column: a list, tuple or numpy array with one entry per request (None
    /// entries absent; string columns may be numpy 'S'/'U' arrays, the fastest form), or one
    /// value for every request; `headers` is one dict or pair list per request, `uri_sans` and
    /// `dns_sans` one list of str (or None) per request, `metadata` one dict (or None) per
    /// request. Returns numpy arrays: `allowed` (bool), `policy` (int32 index into
    /// `policy_ids`, -1 for none), `shadow_allowed` (bool; False without shadow rules) and
    /// `shadow_policy` (int32 index into `shadow_policy_ids`).
    #[pyo3(signature = (*, method=None, path=None, authority=None, headers=None, scheme=None,
        source_ip=None, remote_ip=None, direct_remote_ip=None, destination_ip=None,
        destination_port=None, principal=None, uri_sans=None, dns_sans=None, subject=None,
        tls=None, sni=None, metadata=None))]
    #[allow(clippy::too_many_arguments)]
    fn evaluate_batch<'py>(
        &self,
        py: Python<'py>,
        method: Option<&Bound<'py, PyAny>>,
        path: Option<&Bound<'py, PyAny>>,
        authority: Option<&Bound<'py, PyAny>>,
        headers: Option<&Bound<'py, PyAny>>,
        scheme: Option<&Bound<'py, PyAny>>,
        source_ip: Option<&Bound<'py, PyAny>>,
        remote_ip: Option<&Bound<'py, PyAny>>,
        direct_remote_ip: Option<&Bound<'py, PyAny>>,
        destination_ip: Option<&Bound<'py, PyAny>>,
        destination_port: Option<&Bound<'py, PyAny>>,
        principal: Option<&Bound<'py, PyAny>>,
        uri_sans: Option<&Bound<'py, PyAny>>,
        dns_sans: Option<&Bound<'py, PyAny>>,
        subject: Option<&Bound<'py, PyAny>>,
        tls: Option<&Bound<'py, PyAny>>,
        sni: Option<&Bound<'py, PyAny>>,
        metadata: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let batch = Batch::read(
            [
                method,
                path,
                authority,
                scheme,
                source_ip,
                remote_ip,
                direct_remote_ip,
                destination_ip,
                principal,
                subject,
                sni,
            ],
            [headers, uri_sans, dns_sans, destination_port, tls, metadata],
            None,
        )?;
        let views = batch.views()?;
        let rbac = &self.rbac;
        // Written straight into the output columns (no per-request record kept).
        let index = |p: Option<usize>| p.map_or(-1i32, |i| i as i32);
        let mut allowed: Vec<u8> = Vec::with_capacity(batch.n);
        let mut policy: Vec<i32> = Vec::with_capacity(batch.n);
        let mut shadow_allowed: Vec<u8> = Vec::with_capacity(batch.n);
        let mut shadow_policy: Vec<i32> = Vec::with_capacity(batch.n);
        py.detach(|| {
            views.each(|_, a| {
                let d = rbac.evaluate(a);
                allowed.push(u8::from(d.allowed));
                policy.push(index(d.policy));
                shadow_allowed.push(u8::from(d.shadow_allowed.unwrap_or(false)));
                shadow_policy.push(index(d.shadow_policy));
            })
        })?;
        let out = PyDict::new(py);
        out.set_item("allowed", numpy_array(py, &allowed, "bool_")?)?;
        out.set_item("policy", int32_array(py, &policy)?)?;
        out.set_item("shadow_allowed", numpy_array(py, &shadow_allowed, "bool_")?)?;
        out.set_item("shadow_policy", int32_array(py, &shadow_policy)?)?;
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

/// Fills `meshcore._core.rbac`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<RbacEngine>()?;
    m.add_class::<RbacDecision>()?;
    Ok(())
}
