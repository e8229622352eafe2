//! `meshcore._core.decide.Decide`: `DataPlane.decide` entered without a Python frame. A data
//! plane binds one's `decide` method as its `decide` attribute; a call reads the current config, finds the core's
//! `Decider` compiled for it (kept here, compiled through the plane on a new config) and
//! decides in the core, calling the plane's general path only for what the core does not
//! cover. Conversions and dispatch only: the decisions are `Decider`'s.

use std::sync::Mutex;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyWeakrefMethods, PyWeakrefReference};

use crate::balance::locked;
use crate::decide::Decider;

/// `DataPlane.decide` of one data plane (same arguments, same decisions).
#[pyclass(frozen, module = "meshcore._core.decide")]
pub struct Decide {
    /// What holds the current config (`.config`, replaced whole on every update).
    source: Py<PyAny>,
    /// The data plane, weakly (it holds this object): its general path and the compiler.
    plane: Py<PyWeakrefReference>,
    /// The config the decider was compiled for, and the decider.
    compiled: Mutex<Option<(Py<PyAny>, Py<Decider>)>>,
}

impl Decide {
    /// The data plane, while it lives.
    fn plane<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.plane
            .bind(py)
            .upgrade()
            .ok_or_else(|| PyRuntimeError::new_err("decide: the data plane is gone"))
    }

    /// The core's decider for `cfg`: the one kept when `cfg` is its config, else what the
    /// plane's `_core(cfg)` compiles (kept unless None: the plane decides `cfg` in Python).
    fn decider<'py>(
        &self,
        py: Python<'py>,
        cfg: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, Decider>>> {
        if let Some((c, d)) = locked(&self.compiled)?.as_ref() {
            if c.is(cfg) {
                return Ok(Some(d.bind(py).clone()));
            }
        }
        // The lock is not held while Python runs (it may switch threads).
        let d = self.plane(py)?.call_method1(intern!(py, "_core"), (cfg,))?;
        if d.is_none() {
            return Ok(None);
        }
        let d = d.cast_into::<Decider>()?;
        *locked(&self.compiled)? = Some((cfg.clone().unbind(), d.clone().unbind()));
        Ok(Some(d))
    }
}

#[pymethods]
impl Decide {
    /// `source` holds the current config as `.config`; `plane` is a weak reference to the data
    /// plane (`_core(cfg)`: the decider or None; `_outbound`/`_inbound`: the general path).
    #[new]
    fn new(source: Py<PyAny>, plane: Py<PyWeakrefReference>) -> Self {
        Decide {
            source,
            plane,
            compiled: Mutex::new(None),
        }
    }

    /// Envoy's decision for one request: `DataPlane.decide` (same arguments, same decisions;
    /// a data plane's `decide` attribute is this method, bound).
    #[pyo3(signature = (*, direction="outbound", method="GET", authority, path, headers=None,
        port=None, source_ip=None, principal=None, tls=None, config=None))]
    #[allow(clippy::too_many_arguments)]
    fn decide<'py>(
        &self,
        py: Python<'py>,
        direction: &str,
        method: &str,
        authority: &str,
        path: &str,
        headers: Option<&Bound<'py, PyAny>>,
        port: Option<u16>,
        source_ip: Option<&str>,
        principal: Option<&str>,
        tls: Option<bool>,
        config: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let outbound = match direction {
            "outbound" => true,
            "inbound" => false,
            _ => {
                return Err(PyValueError::new_err(format!(
                    "direction must be 'outbound' or 'inbound', not {}",
                    direction.into_pyobject(py)?.repr()?
                )))
            }
        };
        // One read: the whole decision uses this config.
        let cfg = match config {
            Some(c) => c,
            None => self.source.bind(py).getattr(intern!(py, "config"))?,
        };
        if let Some(d) = self.decider(py, &cfg)? {
            let d = d.get();
            let made = if outbound {
                d.outbound(py, authority, path, method, headers, port, source_ip)?
            } else {
                d.inbound(
                    py, authority, path, method, headers, port, source_ip, principal, tls,
                )?
            };
            if let Some(made) = made {
                return Ok(made);
            }
        }
        let plane = self.plane(py)?;
        let general = if outbound {
            plane.call_method1(
                intern!(py, "_outbound"),
                (cfg, method, authority, path, headers, port, source_ip),
            )?
        } else {
            plane.call_method1(
                intern!(py, "_inbound"),
                (
                    cfg, method, authority, path, headers, port, source_ip, principal, tls,
                ),
            )?
        };
        Ok(general.unbind())
    }

    /// The config the kept decider was compiled for, and the decider (None before the first
    /// decision the core made).
    #[getter]
    fn compiled(&self, py: Python<'_>) -> PyResult<Option<(Py<PyAny>, Py<Decider>)>> {
        Ok(locked(&self.compiled)?
            .as_ref()
            .map(|(c, d)| (c.clone_ref(py), d.clone_ref(py))))
    }
}
