//! `meshcore._core.decide.Decision`: what to do with one request, made by the core's decider
//! without running Python. It behaves as the dataclass it replaces: the same fields (read and
//! written), positional or keyword construction with the same defaults, `==` by fields, no
//! hash, the dataclass repr, and `__dataclass_fields__`, so that `dataclasses.replace`,
//! `fields` and `asdict` work on it.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString, PyTuple};
use pyo3::IntoPyObjectExt;

/// The fields in order (the dataclass's), and whether each has a default.
pub const FIELDS: [&str; 18] = [
    "direction",
    "allowed",
    "route",
    "cluster",
    "endpoint",
    "timeout",
    "retry_policy",
    "policy_id",
    "status",
    "response_flags",
    "body",
    "tls",
    "sni",
    "host_rewrite",
    "hash_key",
    "generation",
    "path",
    "set_cookies",
];

const REQUIRED: usize = 2;

/// What to do with one request.
///
/// ``status`` is set when the proxy answers by itself (Envoy's local replies): 404 no route
/// (``response_flags`` NR), 503 no cluster or no healthy endpoint (NC / UH), 403 denied by
/// RBAC, a direct response's or redirect's code; otherwise the request goes to ``endpoint`` of
/// ``cluster``, within ``timeout`` seconds (None: no limit), retried per ``retry_policy``.
/// ``tls`` is the upstream's TLS (SNI, expected SPIFFE ids) when mTLS applies to the endpoint.
/// ``path``, when set, is the path to forward: inbound, as the listener normalised it (what
/// RBAC decided on); outbound, with the route's ``prefix_rewrite`` applied. ``set_cookies``:
/// the Set-Cookie values a cookie hash policy with a ttl generated because the request had
/// none (Envoy's downstream set-cookies).
#[pyclass(module = "meshcore._core.decide", name = "Decision")]
pub struct Decision {
    #[pyo3(get, set)]
    direction: Py<PyAny>,
    #[pyo3(get, set)]
    allowed: Py<PyAny>,
    #[pyo3(get, set)]
    route: Py<PyAny>,
    #[pyo3(get, set)]
    cluster: Py<PyAny>,
    #[pyo3(get, set)]
    endpoint: Py<PyAny>,
    #[pyo3(get, set)]
    timeout: Py<PyAny>,
    #[pyo3(get, set)]
    retry_policy: Py<PyAny>,
    #[pyo3(get, set)]
    policy_id: Py<PyAny>,
    #[pyo3(get, set)]
    status: Py<PyAny>,
    #[pyo3(get, set)]
    response_flags: Py<PyAny>,
    #[pyo3(get, set)]
    body: Py<PyAny>,
    #[pyo3(get, set)]
    tls: Py<PyAny>,
    #[pyo3(get, set)]
    sni: Py<PyAny>,
    #[pyo3(get, set)]
    host_rewrite: Py<PyAny>,
    #[pyo3(get, set)]
    hash_key: Py<PyAny>,
    #[pyo3(get, set)]
    generation: Py<PyAny>,
    #[pyo3(get, set)]
    path: Py<PyAny>,
    #[pyo3(get, set)]
    set_cookies: Py<PyAny>,
}

fn default(py: Python<'_>, i: usize) -> PyResult<Py<PyAny>> {
    Ok(match FIELDS[i] {
        "response_flags" => "-".into_py_any(py)?,
        "body" => PyBytes::new(py, b"").into_any().unbind(),
        "tls" => false.into_py_any(py)?,
        "sni" | "host_rewrite" => "".into_py_any(py)?,
        "generation" => 0i32.into_py_any(py)?,
        "set_cookies" => PyTuple::empty(py).into_any().unbind(),
        _ => py.None(),
    })
}

impl Decision {
    /// From the fields in [`FIELDS`]' order.
    pub fn from_fields(fields: [Py<PyAny>; 18]) -> Self {
        let [direction, allowed, route, cluster, endpoint, timeout, retry_policy, policy_id, status, response_flags, body, tls, sni, host_rewrite, hash_key, generation, path, set_cookies] =
            fields;
        Decision {
            direction,
            allowed,
            route,
            cluster,
            endpoint,
            timeout,
            retry_policy,
            policy_id,
            status,
            response_flags,
            body,
            tls,
            sni,
            host_rewrite,
            hash_key,
            generation,
            path,
            set_cookies,
        }
    }

    fn fields(&self, py: Python<'_>) -> [Py<PyAny>; 18] {
        [
            self.direction.clone_ref(py),
            self.allowed.clone_ref(py),
            self.route.clone_ref(py),
            self.cluster.clone_ref(py),
            self.endpoint.clone_ref(py),
            self.timeout.clone_ref(py),
            self.retry_policy.clone_ref(py),
            self.policy_id.clone_ref(py),
            self.status.clone_ref(py),
            self.response_flags.clone_ref(py),
            self.body.clone_ref(py),
            self.tls.clone_ref(py),
            self.sni.clone_ref(py),
            self.host_rewrite.clone_ref(py),
            self.hash_key.clone_ref(py),
            self.generation.clone_ref(py),
            self.path.clone_ref(py),
            self.set_cookies.clone_ref(py),
        ]
    }

    fn values<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.fields(py))
    }
}

#[pymethods]
impl Decision {
    /// As the dataclass: `direction` and `allowed` required, the others defaulted (None given
    /// for a field with a default other than None takes that default).
    #[new]
    #[pyo3(signature = (direction, allowed, route=None, cluster=None, endpoint=None, timeout=None, retry_policy=None, policy_id=None, status=None, response_flags=None, body=None, tls=None, sni=None, host_rewrite=None, hash_key=None, generation=None, path=None, set_cookies=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        direction: Py<PyAny>,
        allowed: Py<PyAny>,
        route: Option<Py<PyAny>>,
        cluster: Option<Py<PyAny>>,
        endpoint: Option<Py<PyAny>>,
        timeout: Option<Py<PyAny>>,
        retry_policy: Option<Py<PyAny>>,
        policy_id: Option<Py<PyAny>>,
        status: Option<Py<PyAny>>,
        response_flags: Option<Py<PyAny>>,
        body: Option<Py<PyAny>>,
        tls: Option<Py<PyAny>>,
        sni: Option<Py<PyAny>>,
        host_rewrite: Option<Py<PyAny>>,
        hash_key: Option<Py<PyAny>>,
        generation: Option<Py<PyAny>>,
        path: Option<Py<PyAny>>,
        set_cookies: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let given = [
            route,
            cluster,
            endpoint,
            timeout,
            retry_policy,
            policy_id,
            status,
            response_flags,
            body,
            tls,
            sni,
            host_rewrite,
            hash_key,
            generation,
            path,
            set_cookies,
        ];
        let mut fields: [Py<PyAny>; 18] = std::array::from_fn(|_| py.None());
        fields[0] = direction;
        fields[1] = allowed;
        for (i, v) in given.into_iter().enumerate() {
            fields[i + REQUIRED] = match v {
                Some(v) => v,
                None => default(py, i + REQUIRED)?,
            };
        }
        Ok(Decision::from_fields(fields))
    }

    /// The dataclass fields (for `dataclasses.replace`, `fields` and `asdict`).
    #[classattr]
    fn __dataclass_fields__(py: Python<'_>) -> PyResult<Py<PyDict>> {
        let dataclasses = py.import("dataclasses")?;
        let kind = dataclasses.getattr("_FIELD")?;
        let out = PyDict::new(py);
        for (i, name) in FIELDS.iter().enumerate() {
            let f = if i < REQUIRED {
                dataclasses.call_method0("field")?
            } else {
                let kw = PyDict::new(py);
                kw.set_item("default", default(py, i)?)?;
                dataclasses.call_method("field", (), Some(&kw))?
            };
            f.setattr("name", name)?;
            f.setattr("_field_type", &kind)?;
            out.set_item(name, f)?;
        }
        Ok(out.unbind())
    }

    #[classattr]
    fn __match_args__(py: Python<'_>) -> PyResult<Py<PyTuple>> {
        Ok(PyTuple::new(py, FIELDS)?.unbind())
    }

    fn __eq__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let Ok(other) = other.cast::<Decision>() else {
            return Ok(py.NotImplemented());
        };
        let other = other.borrow();
        self.values(py)?
            .eq(other.values(py)?)
            .and_then(|b| b.into_py_any(py))
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let mut out = String::from("Decision(");
        for (i, (name, v)) in FIELDS.iter().zip(self.fields(py)).enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str(name);
            out.push('=');
            out.push_str(v.bind(py).repr()?.cast::<PyString>()?.to_str()?);
        }
        out.push(')');
        Ok(out)
    }
}
