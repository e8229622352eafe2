//! PyO3 glue for meshcore-core: conversions and error mapping only, no logic of its own.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use meshcore_core::Re2Regex;

mod ads;
mod balance;
mod columns;
mod decide;
mod decision;
mod entry;
mod errors;
mod lb;
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

/// Adds `meshcore._core.NAME`, filled by `fill`, and registers it in `sys.modules` so that
/// `import meshcore._core.NAME` and `from meshcore._core.NAME import ...` work as for a package.
fn add_submodule(
    parent: &Bound<'_, PyModule>,
    name: &str,
    fill: fn(&Bound<'_, PyModule>) -> PyResult<()>,
) -> PyResult<()> {
    let py = parent.py();
    let qualified = format!("meshcore._core.{name}");
    let sub = PyModule::new(py, name)?;
    fill(&sub)?;
    sub.setattr("__name__", &qualified)?;
    parent.add_submodule(&sub)?;
    py.import("sys")?
        .getattr("modules")?
        .set_item(qualified, &sub)?;
    Ok(())
}

/// `meshcore._core`: the regex dialect shared by routes and RBAC at the top, one submodule per
/// area (`route`, `rbac`, `xds`, `yaml`, `lb`), each with its own stub file.
#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(check_regex, m)?)?;
    m.add_function(wrap_pyfunction!(regex_full_match, m)?)?;
    add_submodule(m, "route", route::register)?;
    add_submodule(m, "rbac", rbac::register)?;
    add_submodule(m, "xds", xds::register)?;
    add_submodule(m, "yaml", yaml::register)?;
    add_submodule(m, "lb", lb::register)?;
    add_submodule(m, "decide", decide::register)?;
    add_submodule(m, "ads", ads::register)?;
    Ok(())
}
