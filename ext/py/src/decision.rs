//! `meshcore._core.decide.Decision`: what to do with one request, made by the core's decider
//! without running Python. It behaves as the dataclass it replaces: the same fields (read and
//! written), positional or keyword construction with the same defaults, `==` by fields, no
//! hash, the dataclass repr, and `__dataclass_fields__`, so that `dataclasses.replace`,
//! `fields` and `asdict` work on it.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyString, PyTuple};
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

/// A decision's fields in [`FIELDS`]' order; None stands for the field's default (most
/// fields of most decisions), so a decision holds, and releases, references only to what it
/// sets.
pub type Fields = [Option<Py<PyAny>>; 18];

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
    f: Fields,
}

/// The default of field `i` (the dataclass's): shared objects, nothing allocated.
pub(crate) fn default(py: Python<'_>, i: usize) -> Py<PyAny> {
    match FIELDS[i] {
        "response_flags" => intern!(py, "-").clone().into_any().unbind(),
        "body" => PyBytes::new(py, b"").into_any().unbind(),
        "tls" => PyBool::new(py, false).to_owned().into_any().unbind(),
        "sni" | "host_rewrite" => intern!(py, "").clone().into_any().unbind(),
        "generation" => 0i32
            .into_pyobject(py)
            .map_or_else(|_| py.None(), |v| v.into_any().unbind()),
        "set_cookies" => PyTuple::empty(py).into_any().unbind(),
        _ => py.None(),
    }
}

impl Decision {
    /// From the fields in [`FIELDS`]' order (None: the default).
    pub fn from_fields(f: Fields) -> Self {
        Decision { f }
    }

    fn field(&self, py: Python<'_>, i: usize) -> Py<PyAny> {
        match &self.f[i] {
            Some(v) => v.clone_ref(py),
            None => default(py, i),
        }
    }

    fn fields(&self, py: Python<'_>) -> [Py<PyAny>; 18] {
        std::array::from_fn(|i| self.field(py, i))
    }

    fn values<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.fields(py))
    }
}

/// The fields' getters and setters (by index into [`Fields`]), and the class's other methods.
macro_rules! decision_methods {
    ($($i:literal $get:ident $set:ident;)* { $($rest:tt)* }) => {
        #[pymethods]
        impl Decision {
            $(
                #[getter]
                fn $get(&self, py: Python<'_>) -> Py<PyAny> {
                    self.field(py, $i)
                }

                #[setter]
                fn $set(&mut self, value: Py<PyAny>) {
                    self.f[$i] = Some(value);
                }
            )*
            $($rest)*
        }
    };
}

decision_methods! {
    0 direction set_direction;
    1 allowed set_allowed;
    2 route set_route;
    3 cluster set_cluster;
    4 endpoint set_endpoint;
    5 timeout set_timeout;
    6 retry_policy set_retry_policy;
    7 policy_id set_policy_id;
    8 status set_status;
    9 response_flags set_response_flags;
    10 body set_body;
    11 tls set_tls;
    12 sni set_sni;
    13 host_rewrite set_host_rewrite;
    14 hash_key set_hash_key;
    15 generation set_generation;
    16 path set_path;
    17 set_cookies set_set_cookies;
{
    /// As the dataclass: `direction` and `allowed` required, the others defaulted (None given
    /// for a field with a default other than None takes that default).
    #[new]
    #[pyo3(signature = (direction, allowed, route=None, cluster=None, endpoint=None, timeout=None, retry_policy=None, policy_id=None, status=None, response_flags=None, body=None, tls=None, sni=None, host_rewrite=None, hash_key=None, generation=None, path=None, set_cookies=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
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
        let mut fields: Fields = std::array::from_fn(|_| None);
        fields[0] = Some(direction);
        fields[1] = Some(allowed);
        for (i, v) in given.into_iter().enumerate() {
            fields[i + REQUIRED] = v;
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
                kw.set_item("default", default(py, i))?;
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
}
