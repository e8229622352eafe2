//! CoreError -> meshcore.errors.ConfigError / UnsupportedFeatureError, one ConfigProblem per
//! problem, each keeping its proto field path.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use meshcore_core::{CoreError, FieldErrorKind};

fn build(py: Python<'_>, err: &CoreError) -> PyResult<PyErr> {
    let module = py.import("meshcore.errors")?;
    let problem = module.getattr("ConfigProblem")?;
    let class = if err.only_unsupported() {
        module.getattr("UnsupportedFeatureError")?
    } else {
        module.getattr("ConfigError")?
    };
    let mut problems = Vec::with_capacity(err.errors.len());
    for e in &err.errors {
        let kw = PyDict::new(py);
        kw.set_item("path", &e.path)?;
        let msg = match e.kind {
            FieldErrorKind::Invalid => e.message.clone(),
            FieldErrorKind::Unsupported => format!("unsupported: {}", e.message),
        };
        problems.push(problem.call((msg,), Some(&kw))?);
    }
    let exc = class.call1((problems,))?;
    Ok(PyErr::from_value(exc))
}

/// The Python exception for `err` (or the error met while building it).
pub fn core_error_to_py(py: Python<'_>, err: &CoreError) -> PyErr {
    match build(py, err) {
        Ok(e) => e,
        Err(e) => e,
    }
}
