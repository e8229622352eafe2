//! YAML streams for Python: plain values plus a handle that maps field paths to lines.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyInt, PyList};

use meshcore_core::yaml::{self, Document, PathKey, Value};

/// The node tree of one YAML document, kept to answer `line_of(path)` for error messages.
#[pyclass(frozen, module = "meshcore._core.yaml", name = "YamlDocument")]
pub struct PyYamlDocument {
    doc: Document,
}

#[pymethods]
impl PyYamlDocument {
    /// 1-based line where the document starts.
    #[getter]
    fn line(&self) -> u32 {
        self.doc.line
    }

    /// The line of the field at `path` (keys and indexes); the nearest existing ancestor's
    /// line when the field is absent.
    fn line_of(&self, path: &Bound<'_, PyAny>) -> PyResult<u32> {
        let mut keys = Vec::new();
        for item in path.try_iter()? {
            let item = item?;
            if let Ok(i) = item.extract::<i64>() {
                keys.push(PathKey::Index(i));
            } else {
                keys.push(PathKey::Key(item.str()?.to_string()));
            }
        }
        Ok(self.doc.line_of(&keys))
    }
}

type Problem = (u32, u32, String, Option<usize>, Vec<Py<PyAny>>);
type Parsed = (Vec<(Py<PyAny>, Py<PyYamlDocument>)>, Vec<Problem>);

/// Parses a multi-document YAML stream:
/// ([(value, YamlDocument)], [(line, column, message, document index or None, field path)]).
#[pyfunction]
pub fn parse_yaml(py: Python<'_>, text: String) -> PyResult<Parsed> {
    let stream = py.detach(move || yaml::parse(&text));
    let mut docs = Vec::with_capacity(stream.documents.len());
    let mut convert = Converter { py, made: 0 };
    for doc in stream.documents {
        let value = convert.value(&doc.root.value)?;
        docs.push((value, Py::new(py, PyYamlDocument { doc })?));
    }
    let mut problems = Vec::with_capacity(stream.problems.len());
    for p in stream.problems {
        let path = p
            .path
            .iter()
            .map(|k| -> PyResult<Py<PyAny>> {
                Ok(match k {
                    PathKey::Key(s) => s.into_pyobject(py)?.into_any().unbind(),
                    PathKey::Index(i) => i.into_pyobject(py)?.into_any().unbind(),
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        problems.push((p.line, p.column, p.message, p.document, path));
    }
    Ok((docs, problems))
}

/// Python objects made between two releases of the GIL while converting: often enough that
/// other threads (the control plane's event loop, during a reload in its worker thread) are
/// never kept waiting by a large stream (50 MB is millions of objects, seconds of work), rarely
/// enough to cost nothing.
const OBJECTS_PER_GIL_RELEASE: u32 = 4096;

struct Converter<'py> {
    py: Python<'py>,
    made: u32,
}

impl Converter<'_> {
    fn value(&mut self, value: &Value) -> PyResult<Py<PyAny>> {
        self.made += 1;
        if self.made >= OBJECTS_PER_GIL_RELEASE {
            self.made = 0;
            self.py.detach(|| ());
        }
        let py = self.py;
        Ok(match value {
            Value::Null => py.None(),
            Value::Bool(b) => b.into_pyobject(py)?.to_owned().into_any().unbind(),
            Value::Int(i) => i.into_pyobject(py)?.into_any().unbind(),
            Value::BigInt(s) => py.get_type::<PyInt>().call1((s.as_str(),))?.unbind(),
            Value::Float(f) => f.into_pyobject(py)?.into_any().unbind(),
            Value::Str(s) => s.into_pyobject(py)?.into_any().unbind(),
            Value::Seq(items) => {
                let list = PyList::empty(py);
                for item in items {
                    list.append(self.value(&item.value)?)?;
                }
                list.into_any().unbind()
            }
            Value::Map(entries) => {
                let dict = PyDict::new(py);
                for (k, v) in entries {
                    dict.set_item(self.value(&k.value)?, self.value(&v.value)?)?;
                }
                dict.into_any().unbind()
            }
        })
    }
}

/// Fills `meshcore._core.yaml`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(parse_yaml, m)?)?;
    m.add("YAML_MAX_DEPTH", yaml::MAX_DEPTH)?;
    m.add_class::<PyYamlDocument>()?;
    Ok(())
}
