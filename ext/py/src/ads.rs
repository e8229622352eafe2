//! `meshcore._core.ads`: the ADS gRPC transport (meshcore_ads), its events as tuples.

use std::time::Duration;

use bytes::Bytes;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use meshcore_ads::{Acked, Config, Event, Expect, Server};

/// An ACK the lane took: (type_url, version_info, time, monotonic time).
type Taken = (String, String, f64, f64);

/// Event kinds as the first item of each tuple of `AdsTransport.events()`.
const OPENED: u8 = 0;
const MESSAGE: u8 = 1;
const HALF_CLOSED: u8 = 2;
const CANCELLED: u8 = 3;
const ACK: u8 = 4;

#[pyclass(frozen, module = "meshcore._core.ads", name = "AdsTransport")]
struct PyAdsTransport {
    server: Server,
}

#[pymethods]
impl PyAdsTransport {
    #[new]
    #[pyo3(signature = (address, *, max_receive_bytes, max_send_bytes, keepalive_time=None, keepalive_timeout=20.0, clock=0.0))]
    fn new(
        py: Python<'_>,
        address: &str,
        max_receive_bytes: usize,
        max_send_bytes: usize,
        keepalive_time: Option<f64>,
        keepalive_timeout: f64,
        clock: f64,
    ) -> PyResult<Self> {
        let seconds = |s: f64| {
            Duration::try_from_secs_f64(s)
                .map_err(|e| PyValueError::new_err(format!("keepalive: {e}")))
        };
        let config = Config {
            max_receive_bytes,
            max_send_bytes,
            keepalive_time: keepalive_time.map(seconds).transpose()?,
            keepalive_timeout: seconds(keepalive_timeout)?,
            clock,
        };
        let server = py
            .detach(|| Server::bind(address, config))
            .map_err(|e| PyOSError::new_err(format!("cannot listen on {address}: {e}")))?;
        Ok(Self { server })
    }

    /// The port listened on.
    #[getter]
    fn port(&self) -> u16 {
        self.server.local_addr().port()
    }

    /// A file descriptor that is readable while events wait.
    fn fileno(&self) -> i32 {
        self.server.bell()
    }

    /// The events since the last call: (0, stream, method (0 SotW, 1 delta), peer),
    /// (1, stream, message), (2, stream) half-closed, (3, stream) gone, and
    /// (4, stream, type_url, nonce, version_info, names, message) for a message that is a
    /// plain ACK (names: its resource_names fields as encoded, a key to compare).
    fn events<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let events = self.server.events();
        let list = PyList::empty(py);
        for event in events {
            let item = match event {
                Event::Opened {
                    stream,
                    method,
                    peer,
                } => (OPENED, stream, method as u8, peer).into_pyobject(py)?,
                Event::Message { stream, data } => {
                    (MESSAGE, stream, PyBytes::new(py, &data)).into_pyobject(py)?
                }
                Event::Ack { stream, ack, data } => (
                    ACK,
                    stream,
                    ack.type_url,
                    ack.nonce,
                    ack.version,
                    PyBytes::new(py, &ack.names),
                    PyBytes::new(py, &data),
                )
                    .into_pyobject(py)?,
                Event::HalfClosed { stream } => (HALF_CLOSED, stream).into_pyobject(py)?,
                Event::Cancelled { stream } => (CANCELLED, stream).into_pyobject(py)?,
            };
            list.append(item.cast_into::<PyTuple>()?)?;
        }
        Ok(list)
    }

    /// Queues one response message (not blocking); False when the stream is gone.
    fn send(&self, stream: u64, data: &[u8]) -> bool {
        self.server.send(stream, Bytes::copy_from_slice(data))
    }

    /// Queues (stream, message) pairs; how many went to live streams.
    fn send_many(&self, py: Python<'_>, items: Vec<(u64, Vec<u8>)>) -> usize {
        py.detach(|| {
            self.server
                .send_many(items.into_iter().map(|(s, d)| (s, Bytes::from(d))))
        })
    }

    /// Ends the stream after what was queued, with a gRPC status code (0: OK) and message.
    #[pyo3(signature = (stream, code=0, message=""))]
    fn close(&self, stream: u64, code: u32, message: &str) -> bool {
        self.server.close(stream, code, message)
    }

    /// Stream `stream` waits for the plain ACK of (type_url, nonce, names as encoded): taken
    /// without an event if it comes before the next `bump` or `settle` of the stream.
    fn expect(&self, stream: u64, type_url: String, nonce: String, names: &[u8]) {
        let expect = Expect {
            type_url,
            nonce,
            names: names.to_vec(),
        };
        self.server.lane().expect(stream, expect);
    }

    /// A snapshot is about to change: no ACK expected before now is taken any more.
    fn bump(&self) {
        self.server.lane().bump();
    }

    /// The ACKs taken for `stream` since the last call, each (type_url, version_info, time,
    /// monotonic time); what the stream waited for is no longer taken.
    fn settle(&self, stream: u64) -> Vec<Taken> {
        self.server
            .lane()
            .settle(stream)
            .into_iter()
            .map(acked)
            .collect()
    }

    /// The ACKs taken for `stream` since the last call, as `settle`; what the stream waits
    /// for, if it did not come, is still taken.
    fn taken(&self, stream: u64) -> Vec<Taken> {
        self.server
            .lane()
            .taken(stream)
            .into_iter()
            .map(acked)
            .collect()
    }

    /// Streams open now.
    fn streams(&self) -> usize {
        self.server.streams()
    }

    /// GOAWAY to every connection, up to `grace` seconds for streams to end, then the rest
    /// are dropped (each reported as gone).
    fn shutdown(&self, py: Python<'_>, grace: f64) -> PyResult<()> {
        let grace = Duration::try_from_secs_f64(grace.max(0.0))
            .map_err(|e| PyValueError::new_err(format!("grace: {e}")))?;
        py.detach(|| self.server.shutdown(grace));
        Ok(())
    }
}

fn acked(a: Acked) -> Taken {
    (a.type_url, a.version, a.wall, a.monotonic)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyAdsTransport>()?;
    m.add("OPENED", OPENED)?;
    m.add("MESSAGE", MESSAGE)?;
    m.add("HALF_CLOSED", HALF_CLOSED)?;
    m.add("CANCELLED", CANCELLED)?;
    m.add("ACK", ACK)?;
    Ok(())
}
