//! Request attributes from Python, shared by `RouteTable` and `RbacEngine`: header maps, and
//! the columns of the batch calls. Strings are read once with the GIL held into borrowed
//! `&str` views (no copies of list items), so the core can then run without the GIL and
//! allocate nothing per request.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList, PyModule, PyString, PyTuple};

/// Header name/value strings kept alive while `&str` views into them are in use.
pub type HeaderObjs<'py> = Vec<(Bound<'py, PyString>, Bound<'py, PyString>)>;

/// A dict, or an iterable of (name, value) pairs (repeated names allowed), or None.
pub fn header_objs<'py>(headers: Option<&Bound<'py, PyAny>>) -> PyResult<HeaderObjs<'py>> {
    let mut out = Vec::new();
    let Some(h) = headers else {
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
        out.reserve(d.len());
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

/// Borrowed views of [`header_objs`]' strings.
pub fn header_views<'a>(objs: &'a HeaderObjs<'_>) -> PyResult<Vec<(&'a str, &'a str)>> {
    if objs.is_empty() {
        // Most calls: no headers, and no fallible collect to run.
        return Ok(Vec::new());
    }
    objs.iter()
        .map(|(k, v)| Ok((k.to_str()?, v.to_str()?)))
        .collect()
}

/// A batch column of header maps (one dict or pair list per request), or None.
pub struct HeaderColumn<'py>(Option<Vec<HeaderObjs<'py>>>);

impl<'py> HeaderColumn<'py> {
    pub fn read(col: Option<&Bound<'py, PyAny>>) -> PyResult<Self> {
        match col {
            Some(h) if !h.is_none() => {
                let mut v = Vec::new();
                for item in h.try_iter()? {
                    v.push(header_objs(Some(&item?))?);
                }
                Ok(Self(Some(v)))
            }
            _ => Ok(Self(None)),
        }
    }

    pub fn len(&self) -> Option<usize> {
        self.0.as_ref().map(Vec::len)
    }

    /// Every request's headers, flattened (no allocation per request).
    pub fn views(&self) -> PyResult<FlatViews<(&str, &str)>> {
        let mut out = FlatViews::default();
        for objs in self.0.iter().flatten() {
            out.push_list(objs.iter().map(|(k, v)| Ok((k.to_str()?, v.to_str()?))))?;
        }
        Ok(out)
    }
}

/// Per-request lists stored end to end (no allocation per request): request i's items are
/// `items[spans[i]]`; a `None` span marks a request without the attribute.
pub struct FlatViews<T> {
    items: Vec<T>,
    spans: Vec<Option<(usize, usize)>>,
}

impl<T> Default for FlatViews<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            spans: Vec::new(),
        }
    }
}

impl<T> FlatViews<T> {
    fn push_list(&mut self, list: impl IntoIterator<Item = PyResult<T>>) -> PyResult<()> {
        let start = self.items.len();
        for item in list {
            self.items.push(item?);
        }
        self.spans.push(Some((start, self.items.len())));
        Ok(())
    }

    /// Request i's items (empty when the column is absent or i has none).
    #[inline(always)]
    pub fn get(&self, i: usize) -> &[T] {
        match self.spans.get(i) {
            Some(Some((a, b))) => self.items.get(*a..*b).unwrap_or_default(),
            _ => &[],
        }
    }

    /// Whether request i has the attribute (a list, possibly empty).
    #[inline(always)]
    pub fn present(&self, i: usize) -> bool {
        matches!(self.spans.get(i), Some(Some(_)))
    }
}

/// A batch column of string lists (a list of str or None per request, e.g. URI SANs).
pub struct ListColumn<'py>(Option<Vec<Option<Vec<Bound<'py, PyString>>>>>);

impl<'py> ListColumn<'py> {
    pub fn read(col: Option<&Bound<'py, PyAny>>, what: &str) -> PyResult<Self> {
        let Some(col) = col.filter(|c| !c.is_none()) else {
            return Ok(Self(None));
        };
        let mut out = Vec::new();
        for (i, item) in col.try_iter()?.enumerate() {
            let item = item?;
            if item.is_none() {
                out.push(None);
                continue;
            }
            if item.cast::<PyString>().is_ok() {
                return Err(PyTypeError::new_err(format!(
                    "{what}[{i}] must be a list of str or None, not a str"
                )));
            }
            let mut list = Vec::new();
            for v in item.try_iter()? {
                list.push(
                    v?.cast_into::<PyString>().map_err(|_| {
                        PyTypeError::new_err(format!("{what}[{i}] must contain str"))
                    })?,
                );
            }
            out.push(Some(list));
        }
        Ok(Self(Some(out)))
    }

    pub fn len(&self) -> Option<usize> {
        self.0.as_ref().map(Vec::len)
    }

    pub fn views(&self) -> PyResult<FlatViews<&str>> {
        let mut out = FlatViews::default();
        for list in self.0.iter().flatten() {
            match list {
                None => out.spans.push(None),
                Some(l) => out.push_list(l.iter().map(|s| s.to_str()))?,
            }
        }
        Ok(out)
    }
}

/// A batch column of optional non-string values (ints, bools): None entries are absent; one
/// value (accepted by `scalar`) is broadcast to every request.
pub enum ValueColumn<T> {
    Absent,
    Scalar(Option<T>),
    Each(Vec<Option<T>>),
}

impl<T: Copy> ValueColumn<T> {
    pub fn read<'py>(
        col: Option<&Bound<'py, PyAny>>,
        what: &str,
        scalar: impl Fn(&Bound<'py, PyAny>) -> bool,
    ) -> PyResult<Self>
    where
        T: for<'a> FromPyObject<'a, 'py>,
    {
        let Some(col) = col.filter(|c| !c.is_none()) else {
            return Ok(Self::Absent);
        };
        let conv = |v: &Bound<'py, PyAny>| -> PyResult<Option<T>> {
            if v.is_none() {
                return Ok(None);
            }
            v.extract::<T>()
                .map(Some)
                .map_err(|_| PyTypeError::new_err(format!("{what}: unexpected value {v}")))
        };
        if scalar(col) {
            return Ok(Self::Scalar(conv(col)?));
        }
        // numpy arrays become lists first (one conversion, then plain ints and bools).
        let list = if col.cast::<PyList>().is_err() && col.hasattr("tolist")? {
            col.call_method0("tolist")?
        } else {
            col.clone()
        };
        let mut out = Vec::with_capacity(list.len().unwrap_or(0));
        for item in list.try_iter()? {
            out.push(conv(&item?)?);
        }
        Ok(Self::Each(out))
    }

    #[inline(always)]
    pub fn get(&self, i: usize) -> Option<T> {
        match self {
            Self::Absent => None,
            Self::Scalar(v) => *v,
            Self::Each(v) => v.get(i).copied().flatten(),
        }
    }

    pub fn len(&self) -> Option<usize> {
        match self {
            Self::Each(v) => Some(v.len()),
            _ => None,
        }
    }
}

/// A batch column of optional strings, in one of the forms callers have:
/// - a list or tuple of str (None entries are absent values): the items are borrowed;
/// - a numpy array of dtype 'S' (UTF-8 bytes, NUL-padded) or 'U' (UCS-4): the array's buffer
///   is copied once and sliced, with no Python object per item;
/// - one str for every request (a scalar), or None (absent for every request).
///
/// Anything else with `tolist()` (numpy object arrays) or iterable is read as a list.
pub enum StrColumn<'py> {
    Absent,
    Scalar(Bound<'py, PyString>),
    Items(Vec<Option<Bound<'py, PyString>>>),
    /// Fixed-width UTF-8 records (numpy 'S'), trailing NULs not part of the value.
    Bytes {
        data: Bound<'py, PyBytes>,
        width: usize,
    },
    /// Decoded numpy 'U' values: `text[ends[i-1]..ends[i]]`.
    Text {
        text: String,
        ends: Vec<usize>,
    },
}

fn numpy_kind(col: &Bound<'_, PyAny>) -> PyResult<Option<(char, usize)>> {
    // Interned names: a batch reads these on every column, and making the strings anew
    // (and hashing them) cost more than the lookups.
    let py = col.py();
    if !col.hasattr(intern!(py, "dtype"))? || !col.hasattr(intern!(py, "tobytes"))? {
        return Ok(None);
    }
    let dtype = col.getattr(intern!(py, "dtype"))?;
    let kind = dtype.getattr(intern!(py, "kind"))?;
    let kind = kind.cast::<PyString>()?.to_str()?;
    let width: usize = dtype.getattr(intern!(py, "itemsize"))?.extract()?;
    Ok(kind.chars().next().map(|k| (k, width)))
}

impl<'py> StrColumn<'py> {
    pub fn read(col: Option<&Bound<'py, PyAny>>, what: &str) -> PyResult<Self> {
        let Some(col) = col else {
            return Ok(Self::Absent);
        };
        if col.is_none() {
            return Ok(Self::Absent);
        }
        if let Ok(s) = col.cast::<PyString>() {
            return Ok(Self::Scalar(s.clone()));
        }
        let items = |list: &Bound<'py, PyAny>| -> PyResult<Self> {
            let mut out = Vec::with_capacity(list.len().unwrap_or(0));
            for (i, item) in list.try_iter()?.enumerate() {
                let item = item?;
                out.push(if item.is_none() {
                    None
                } else {
                    Some(item.cast_into::<PyString>().map_err(|_| {
                        PyTypeError::new_err(format!("{what}[{i}] must be str or None"))
                    })?)
                });
            }
            Ok(Self::Items(out))
        };
        if col.cast::<PyList>().is_ok() || col.cast::<PyTuple>().is_ok() {
            return items(col);
        }
        if let Some((kind, width)) = numpy_kind(col)? {
            let ndim: usize = col.getattr(intern!(col.py(), "ndim"))?.extract()?;
            if (kind == 'S' || kind == 'U') && ndim != 1 {
                return Err(PyValueError::new_err(format!(
                    "{what} must be a one-dimensional array"
                )));
            }
            if kind == 'S' {
                let data = col
                    .call_method0(intern!(col.py(), "tobytes"))?
                    .cast_into::<PyBytes>()?;
                return Ok(Self::Bytes { data, width });
            }
            if kind == 'U' {
                // UCS-4 in native byte order ('>U' arrays are converted first).
                let dtype = col.getattr("dtype")?;
                let native: bool = dtype.getattr("isnative")?.extract()?;
                let col = if native {
                    col.clone()
                } else {
                    col.call_method1("astype", (dtype.call_method1("newbyteorder", ("=",))?,))?
                };
                let raw = col.call_method0("tobytes")?.cast_into::<PyBytes>()?;
                return ucs4_column(raw.as_bytes(), width, what);
            }
            return items(&col.call_method0("tolist")?);
        }
        items(col)
    }

    /// The number of values (None for a scalar or an absent column).
    pub fn len(&self) -> Option<usize> {
        match self {
            Self::Absent | Self::Scalar(_) => None,
            Self::Items(v) => Some(v.len()),
            Self::Bytes { data, width } => Some(data.as_bytes().len().checked_div(*width)?),
            Self::Text { ends, .. } => Some(ends.len()),
        }
    }

    /// Borrowed views of the values.
    pub fn views(&self, what: &str) -> PyResult<Views<'_>> {
        Ok(match self {
            Self::Absent => Views::Absent,
            Self::Scalar(s) => Views::Scalar(s.to_str()?),
            Self::Items(items) => {
                let mut out = Vec::with_capacity(items.len());
                // Columns often repeat one object (["h"] * n): read each object once.
                let mut prev: Option<(&Bound<'py, PyString>, &str)> = None;
                for item in items {
                    out.push(match item {
                        None => None,
                        Some(s) => match prev {
                            Some((p, v)) if p.is(s) => Some(v),
                            _ => {
                                let v = s.to_str()?;
                                prev = Some((s, v));
                                Some(v)
                            }
                        },
                    });
                }
                Views::Each(out)
            }
            Self::Bytes { data, width } => {
                let bytes = data.as_bytes();
                let width = (*width).max(1);
                // One validation for the whole buffer (NUL padding is valid UTF-8), then
                // every record must start on a character boundary.
                let text = std::str::from_utf8(bytes)
                    .ok()
                    .filter(|t| (0..t.len()).step_by(width).all(|at| t.is_char_boundary(at)));
                match text {
                    Some(text) => Views::Fixed { text, width },
                    None => {
                        let bad = bytes
                            .chunks(width)
                            .position(|rec| std::str::from_utf8(trim_nul(rec)).is_err())
                            .unwrap_or(0);
                        return Err(PyValueError::new_err(format!(
                            "{what}[{bad}] is not valid UTF-8"
                        )));
                    }
                }
            }
            Self::Text { text, ends } => {
                let mut out = Vec::with_capacity(ends.len());
                let mut start = 0;
                for &end in ends {
                    out.push(text.get(start..end));
                    start = end;
                }
                Views::Each(out)
            }
        })
    }
}

/// The length of a numpy 'S' record without its trailing NUL padding, a word at a time from
/// the end: the highest non-zero byte of a little-endian word is the last non-NUL one. Records
/// shorter than a word are read as one zero-extended word, so the work depends on the column's
/// width alone, not on each value's length (a per-value loop mispredicted on every request).
#[inline]
fn trimmed_len(rec: &[u8]) -> usize {
    let mut end = rec.len();
    while end > 0 {
        let start = end.saturating_sub(8);
        let bytes = &rec[start..end];
        let w = match <[u8; 8]>::try_from(bytes) {
            Ok(word) => u64::from_le_bytes(word),
            Err(_) => bytes
                .iter()
                .rev()
                .fold(0u64, |w, &b| (w << 8) | u64::from(b)),
        };
        if w != 0 {
            return start + 8 - (w.leading_zeros() / 8) as usize;
        }
        end = start;
    }
    0
}

fn trim_nul(rec: &[u8]) -> &[u8] {
    &rec[..trimmed_len(rec)]
}

/// Borrowed string values of a column, by request index.
pub enum Views<'a> {
    Absent,
    Scalar(&'a str),
    Each(Vec<Option<&'a str>>),
    /// numpy 'S' records of `width` bytes, trailing NULs not part of the value.
    Fixed {
        text: &'a str,
        width: usize,
    },
}

impl<'a> Views<'a> {
    #[inline(always)]
    pub fn get(&self, i: usize) -> Option<&'a str> {
        match self {
            Self::Absent => None,
            Self::Scalar(s) => Some(s),
            Self::Each(v) => v.get(i).copied().flatten(),
            Self::Fixed { text, width } => {
                let rec = text.get(i * width..(i + 1) * width)?;
                rec.get(..trimmed_len(rec.as_bytes()))
            }
        }
    }

    /// The first request without a value, if any (for columns that must have one).
    pub fn first_missing(&self, n: usize) -> Option<usize> {
        match self {
            Self::Absent => (n > 0).then_some(0),
            Self::Scalar(_) => None,
            Self::Each(v) => v.iter().position(Option::is_none),
            Self::Fixed { .. } => None,
        }
    }
}

/// numpy 'U' records (UCS-4 code points, native order, NUL-padded) decoded to UTF-8.
fn ucs4_column<'py>(raw: &[u8], width: usize, what: &str) -> PyResult<StrColumn<'py>> {
    let mut text: Vec<u8> = Vec::with_capacity(raw.len() / 4);
    let mut ends = Vec::new();
    if width >= 4 {
        for (i, rec) in raw.chunks_exact(width).enumerate() {
            // Trailing NULs are padding: decode up to the last code point that is not NUL.
            let mut n = rec.len() / 4;
            while n > 0 && rec[4 * n - 4..4 * n] == [0u8; 4] {
                n -= 1;
            }
            for c in rec[..4 * n].chunks_exact(4) {
                let c = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
                if c < 0x80 {
                    text.push(c as u8);
                } else {
                    let ch = char::from_u32(c).ok_or_else(|| {
                        PyValueError::new_err(format!("{what}[{i}] holds an invalid code point"))
                    })?;
                    text.extend_from_slice(ch.encode_utf8(&mut [0u8; 4]).as_bytes());
                }
            }
            ends.push(text.len());
        }
    }
    // Every byte came from a char's UTF-8 encoding.
    let text = String::from_utf8(text)
        .map_err(|_| PyValueError::new_err(format!("{what}: invalid text")))?;
    Ok(StrColumn::Text { text, ends })
}

/// The common length of the columns that have one (scalars and absent columns adapt).
pub fn batch_len(lens: impl IntoIterator<Item = Option<usize>>) -> PyResult<usize> {
    let mut n: Option<usize> = None;
    for l in lens.into_iter().flatten() {
        if n.is_some_and(|n| n != l) {
            return Err(PyValueError::new_err(
                "every column must have the same length (one entry per request)",
            ));
        }
        n = Some(l);
    }
    Ok(n.unwrap_or(0))
}

/// An int32 numpy array of `values`.
pub fn int32_array<'py>(py: Python<'py>, values: &[i32]) -> PyResult<Bound<'py, PyAny>> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_ne_bytes()).collect();
    numpy_array(py, &bytes, "int32")
}

/// A numpy array of `dtype` over a copy of `bytes`.
pub fn numpy_array<'py>(py: Python<'py>, bytes: &[u8], dtype: &str) -> PyResult<Bound<'py, PyAny>> {
    // numpy is imported once (an import statement's lookup took a good part of a small batch).
    static NUMPY: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    let np = NUMPY.get_or_try_init(py, || py.import("numpy").map(Bound::unbind))?;
    let np = np.bind(py);
    let buf = pyo3::types::PyByteArray::new(py, bytes);
    np.call_method1(intern!(py, "frombuffer"), (buf, np.getattr(dtype)?))
}
