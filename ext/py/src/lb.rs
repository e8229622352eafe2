//! `meshcore._core.lb`: the load balancers' host hash and hash tables (logic in meshcore_core::lb).

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use meshcore_core::lb;

/// The stable 64-bit hash of `data` (BLAKE2b, 8-byte digest, little-endian).
#[pyfunction]
fn hash64(data: &[u8]) -> u64 {
    lb::hash64(data)
}

/// The ring of `hosts` (`(address:port, weight)`) for about `size` points: (point hashes
/// ascending, the host index of each point).
#[pyfunction]
fn ring_table(
    py: Python<'_>,
    hosts: Vec<(String, u64)>,
    size: u64,
) -> PyResult<(Vec<u64>, Vec<u32>)> {
    let keys: Vec<(&str, u64)> = hosts.iter().map(|(k, w)| (k.as_str(), *w)).collect();
    py.detach(|| lb::ring(&keys, size))
        .map_err(|e| PyValueError::new_err(format!("ring hash: {e}")))
}

/// Maglev's lookup table of `size` host indices for `hosts` (`(address:port, weight)`).
#[pyfunction]
fn maglev_table(py: Python<'_>, hosts: Vec<(String, u64)>, size: u64) -> PyResult<Vec<u32>> {
    let keys: Vec<(&str, u64)> = hosts.iter().map(|(k, w)| (k.as_str(), *w)).collect();
    py.detach(|| lb::maglev(&keys, size))
        .map_err(|e| PyValueError::new_err(format!("maglev: {e}")))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(hash64, m)?)?;
    m.add_function(wrap_pyfunction!(ring_table, m)?)?;
    m.add_function(wrap_pyfunction!(maglev_table, m)?)?;
    Ok(())
}
