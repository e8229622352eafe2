//! PyO3 glue for meshcore-core: conversions and error mapping only, no logic of its own.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use meshcore_core::Re2Regex;

mod columns;
mod errors;
mod rbac;
mod route;
mod xds;
mod yaml;

/// Raises ValueError (one line, naming the problem) when `pattern` is not valid RE2 as Envoy
/// compiles it.
#[pyfunction]
fn check_regex(pattern: &str) -> PyResult<()> {
    Re2Regex::new(pattern)
        .map(|_| ())
        .map_err(PyValueError::new_err)
}

/// RE2::FullMatch(text, pattern) with Envoy's dialect (for tests and tools; hot paths compile once).
#[pyfunction]
fn regex_full_match(pattern: &str, text: &str) -> PyResult<bool> {
    let re = Re2Regex::new(pattern).map_err(PyValueError::new_err)?;
    Ok(re.full_match(text))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(check_regex, m)?)?;
    m.add_function(wrap_pyfunction!(regex_full_match, m)?)?;
    m.add_function(wrap_pyfunction!(yaml::parse_yaml, m)?)?;
    m.add("YAML_MAX_DEPTH", meshcore_core::yaml::MAX_DEPTH)?;
    m.add_class::<yaml::PyYamlDocument>()?;
    m.add_class::<xds::PyResourceStore>()?;
    m.add_class::<xds::PySnapshot>()?;
    m.add_class::<xds::PyFleet>()?;
    m.add_class::<route::RouteTable>()?;
    m.add_class::<route::RouteMatch>()?;
    m.add_class::<rbac::RbacEngine>()?;
    m.add_class::<rbac::RbacDecision>()?;
    Ok(())
}
