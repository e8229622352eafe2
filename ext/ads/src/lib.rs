//! The ADS gRPC transport: an HTTP/2 server (h2 on a tokio runtime of its own thread) for the
//! two methods of Envoy's aggregated discovery service, carrying their messages as bytes.
//!
//! The protocol (nonces, versions, what to push) is not here: whoever embeds the server reads
//! [`Event`]s in batches (a byte on [`Server::bell`] says some are waiting) and answers with
//! [`Server::send`] (non-blocking) and [`Server::close`]. Any other method is refused with
//! UNIMPLEMENTED; a message over the receive limit ends the stream with RESOURCE_EXHAUSTED; a
//! client's cancel, reset or lost connection ends it with [`Event::Cancelled`]; a half-close
//! is told by [`Event::HalfClosed`] and the stream lives on until closed.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::server::SendResponse;
use h2::{Ping, PingPong, RecvStream, SendStream};
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

mod ack;
mod lane;
pub use ack::{plain_ack, Ack};
pub use lane::{Acked, Expect, Lane};

/// The service's two methods, as HTTP/2 paths.
pub const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
pub const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// gRPC status codes used here.
pub const OK: u32 = 0;
pub const CANCELLED: u32 = 1;
pub const INTERNAL: u32 = 13;
pub const UNIMPLEMENTED: u32 = 12;
pub const RESOURCE_EXHAUSTED: u32 = 8;

/// The server's limits and HTTP/2 settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Largest request message taken (gRPC's receive limit).
    pub max_receive_bytes: usize,
    /// Largest response message sent; a larger one ends the stream with RESOURCE_EXHAUSTED.
    pub max_send_bytes: usize,
    /// An HTTP/2 PING this often on every connection (None: never) ...
    pub keepalive_time: Option<Duration>,
    /// ... and the connection is closed when its PING is not answered within this.
    pub keepalive_timeout: Duration,
    /// The embedder's monotonic clock at bind, in seconds (the times of the [`Lane`]'s ACKs).
    pub clock: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_receive_bytes: 4 * 1024 * 1024,
            max_send_bytes: 5 * 1024 * 1024,
            keepalive_time: None,
            keepalive_timeout: Duration::from_secs(20),
            clock: 0.0,
        }
    }
}

/// Which of the two methods a stream calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Sotw = 0,
    Delta = 1,
}

/// What happened on the server's streams, in order per stream.
#[derive(Debug)]
pub enum Event {
    /// A stream of `method` opened from `peer` (as gRPC writes it: `ipv4:127.0.0.1:5000`).
    Opened {
        stream: u64,
        method: Method,
        peer: String,
    },
    /// One whole request message.
    Message { stream: u64, data: Bytes },
    /// One whole request message that is a plain ACK (see [`plain_ack`]), with its fields.
    Ack { stream: u64, ack: Ack, data: Bytes },
    /// The client will send no more messages (the stream stays open for responses).
    HalfClosed { stream: u64 },
    /// The stream is gone (cancelled, reset, connection lost, a limit, server shutdown): nothing
    /// sent to it goes anywhere.
    Cancelled { stream: u64 },
}

enum Out {
    Message(Bytes),
    Close(u32, String),
}

struct Inbox {
    events: Vec<Event>,
    notified: bool,
    bell: UnixStream,
}

struct Shared {
    inbox: Mutex<Inbox>,
    streams: Mutex<HashMap<u64, mpsc::UnboundedSender<Out>>>,
    next_stream: AtomicU64,
    config: Config,
    lane: Lane,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn push(&self, event: Event) {
        let mut inbox = locked(&self.inbox);
        inbox.events.push(event);
        if !inbox.notified {
            inbox.notified = true;
            // Non-blocking: a full socket already holds a wake-up byte.
            let _ = (&inbox.bell).write(&[1]);
        }
    }

    fn forget(&self, stream: u64) -> bool {
        locked(&self.streams).remove(&stream).is_some()
    }
}

/// A running server; dropping it shuts it down with no grace.
pub struct Server {
    shared: Arc<Shared>,
    bell: UnixStream,
    local: SocketAddr,
    stop: watch::Sender<Option<Duration>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Server {
    /// Listens on `addr` ("host:port", port 0 picks one) and serves on a thread of its own.
    pub fn bind(addr: &str, config: Config) -> io::Result<Server> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let (ring, bell) = UnixStream::pair()?;
        ring.set_nonblocking(true)?;
        bell.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            inbox: Mutex::new(Inbox {
                events: Vec::new(),
                notified: false,
                bell: ring,
            }),
            streams: Mutex::new(HashMap::new()),
            next_stream: AtomicU64::new(1),
            lane: Lane::new(config.clock),
            config,
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop, stopped) = watch::channel(None);
        let on_thread = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("meshcore-ads".into())
            .spawn(move || {
                runtime.block_on(serve(listener, Arc::clone(&on_thread), stopped));
                // Whatever is still open is gone with the runtime.
                let left: Vec<u64> = locked(&on_thread.streams).drain().map(|(k, _)| k).collect();
                for stream in left {
                    on_thread.push(Event::Cancelled { stream });
                }
            })?;
        Ok(Server {
            shared,
            bell,
            local,
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// A socket that becomes readable when events wait (for an event loop's reader).
    pub fn bell(&self) -> RawFd {
        self.bell.as_raw_fd()
    }

    /// The events since the last call, oldest first; empties the bell.
    pub fn events(&self) -> Vec<Event> {
        let mut inbox = locked(&self.shared.inbox);
        inbox.notified = false;
        let mut sink = [0u8; 64];
        while matches!((&self.bell).read(&mut sink), Ok(n) if n > 0) {}
        std::mem::take(&mut inbox.events)
    }

    /// Queues one response message; false when the stream is gone.
    pub fn send(&self, stream: u64, data: Bytes) -> bool {
        match locked(&self.shared.streams).get(&stream) {
            Some(tx) => tx.send(Out::Message(data)).is_ok(),
            None => false,
        }
    }

    /// Queues several (stream, message) pairs; how many went to live streams.
    pub fn send_many(&self, items: impl IntoIterator<Item = (u64, Bytes)>) -> usize {
        let streams = locked(&self.shared.streams);
        items
            .into_iter()
            .filter(|(stream, data)| {
                streams
                    .get(stream)
                    .is_some_and(|tx| tx.send(Out::Message(data.clone())).is_ok())
            })
            .count()
    }

    /// Ends the stream, after what was queued, with this gRPC status (0: OK) and message.
    pub fn close(&self, stream: u64, code: u32, message: &str) -> bool {
        match locked(&self.shared.streams).remove(&stream) {
            Some(tx) => tx.send(Out::Close(code, message.to_owned())).is_ok(),
            None => false,
        }
    }

    /// The plain ACKs of the steady state, taken without an event (see [`Lane`]).
    pub fn lane(&self) -> &Lane {
        &self.shared.lane
    }

    /// Streams open now.
    pub fn streams(&self) -> usize {
        locked(&self.shared.streams).len()
    }

    /// Stops taking connections, sends GOAWAY on every one, waits up to `grace` for their
    /// streams to end, then drops what is left (each told by [`Event::Cancelled`]).
    pub fn shutdown(&self, grace: Duration) {
        let _ = self.stop.send(Some(grace));
        let thread = locked(&self.thread).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown(Duration::ZERO);
    }
}

async fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<Option<Duration>>,
) {
    let Ok(listener) = TcpListener::from_std(listener) else {
        return;
    };
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((sock, peer)) = accepted {
                    let _ = sock.set_nodelay(true);
                    tokio::spawn(connection(sock, peer, Arc::clone(&shared), stop.clone()));
                }
            }
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    let grace = (*stop.borrow()).unwrap_or_default();
    let until = Instant::now() + grace;
    while Instant::now() < until && !locked(&shared.streams).is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn connection(
    sock: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<Option<Duration>>,
) {
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(1 << 20)
        .initial_connection_window_size(16 << 20)
        .max_concurrent_streams(u32::MAX)
        .max_pending_accept_reset_streams(100_000)
        .max_concurrent_reset_streams(100_000)
        .max_header_list_size(64 * 1024);
    let Ok(mut conn) = builder.handshake::<_, Bytes>(sock).await else {
        return;
    };
    let peer: Arc<str> = match peer {
        SocketAddr::V4(a) => format!("ipv4:{a}"),
        SocketAddr::V6(a) => format!("ipv6:{a}"),
    }
    .into();
    let pinger = match shared.config.keepalive_time {
        Some(every) => conn.ping_pong().map(|p| (p, every)),
        None => None,
    };
    let timeout = shared.config.keepalive_timeout;
    let alive = async move {
        match pinger {
            Some((pp, every)) => keepalive(pp, every, timeout).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(alive);
    let mut stopping = false;
    loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((req, respond))) => {
                    tokio::spawn(stream(req, respond, Arc::clone(&peer), Arc::clone(&shared)));
                }
                Some(Err(_)) | None => break,
            },
            _ = stop.changed(), if !stopping => {
                stopping = true;
                conn.graceful_shutdown();
            }
            _ = &mut alive => break,
        }
    }
}

async fn keepalive(mut pp: PingPong, every: Duration, timeout: Duration) {
    loop {
        tokio::time::sleep(every).await;
        match tokio::time::timeout(timeout, pp.ping(Ping::opaque())).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
    }
}

enum End {
    Closed,
    Cancelled,
}

async fn stream(
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    peer: Arc<str>,
    shared: Arc<Shared>,
) {
    let method = match req.uri().path() {
        SOTW_PATH => Method::Sotw,
        DELTA_PATH => Method::Delta,
        _ => {
            let _ = finish(&mut respond, None, UNIMPLEMENTED, "Method not found!");
            return;
        }
    };
    let grpc = req
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if !grpc {
        let mut resp = Response::new(());
        *resp.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        let _ = respond.send_response(resp, true);
        return;
    }
    let id = shared.next_stream.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::unbounded_channel();
    locked(&shared.streams).insert(id, tx);
    shared.push(Event::Opened {
        stream: id,
        method,
        peer: peer.to_string(),
    });
    let mut body = req.into_body();
    let mut pending = BytesMut::new();
    let mut sending: Option<SendStream<Bytes>> = None;
    let mut reading = true;
    let mut heard = false; // any request bytes yet
    let opened = Instant::now();
    let limits = &shared.config;
    let end = loop {
        tokio::select! {
            chunk = body.data(), if reading => match chunk {
                Some(Ok(chunk)) => {
                    let _ = body.flow_control().release_capacity(chunk.len());
                    heard = true;
                    pending.extend_from_slice(&chunk);
                    match messages(&mut pending, limits.max_receive_bytes) {
                        Ok(found) => {
                            for data in found {
                                let event = match plain_ack(method, &data) {
                                    // The ACK the stream waits for, taken without an event.
                                    Some(ack) if shared.lane.absorb(id, &ack) => continue,
                                    Some(ack) => Event::Ack { stream: id, ack, data },
                                    None => Event::Message { stream: id, data },
                                };
                                shared.push(event);
                            }
                        }
                        Err((code, why)) => {
                            let _ = finish(&mut respond, sending.as_mut(), code, &why);
                            break End::Cancelled;
                        }
                    }
                }
                Some(Err(_)) => break End::Cancelled,
                None => {
                    reading = false;
                    if !pending.is_empty() {
                        let why = "the client half-closed inside a message";
                        let _ = finish(&mut respond, sending.as_mut(), INTERNAL, why);
                        break End::Cancelled;
                    }
                    shared.push(Event::HalfClosed { stream: id });
                }
            },
            out = rx.recv() => match out {
                Some(Out::Message(data)) => {
                    if data.len() > limits.max_send_bytes {
                        let why = format!(
                            "Sent message larger than max ({} vs. {})",
                            data.len(),
                            limits.max_send_bytes
                        );
                        let _ = finish(&mut respond, sending.as_mut(), RESOURCE_EXHAUSTED, &why);
                        break End::Cancelled;
                    }
                    let out = match sending.as_mut() {
                        Some(out) => out,
                        None => match respond.send_response(headers(), false) {
                            Ok(out) => sending.insert(out),
                            Err(_) => break End::Cancelled,
                        },
                    };
                    let mut frame = BytesMut::with_capacity(5 + data.len());
                    frame.put_u8(0);
                    frame.put_u32(data.len() as u32);
                    frame.extend_from_slice(&data);
                    if out.send_data(frame.freeze(), false).is_err() {
                        break End::Cancelled;
                    }
                }
                Some(Out::Close(code, why)) => {
                    if reading && !heard {
                        // A stream refused at once: its client's first write would fail if
                        // the status came first (gRPC clients then report INTERNAL, not it).
                        let until = tokio::time::Instant::from_std(opened + FIRST_WRITE_WAIT);
                        match tokio::time::timeout_at(until, body.data()).await {
                            Ok(Some(Ok(chunk))) => {
                                let _ = body.flow_control().release_capacity(chunk.len());
                            }
                            Ok(None) => reading = false,
                            _ => {}
                        }
                    }
                    let _ = finish(&mut respond, sending.as_mut(), code, &why);
                    break End::Closed;
                }
                None => break End::Cancelled,
            },
        }
    };
    if shared.forget(id) || matches!(end, End::Cancelled) {
        shared.push(Event::Cancelled { stream: id });
    }
    if reading && matches!(end, End::Closed) {
        // The status is sent while the client may still be writing (a stream refused at
        // once): its messages are read and dropped for a while instead of resetting the
        // stream, so that its pending write completes and it sees the status, not INTERNAL.
        let _ = tokio::time::timeout(DRAIN_AFTER_STATUS, async {
            while let Some(Ok(chunk)) = body.data().await {
                let _ = body.flow_control().release_capacity(chunk.len());
            }
        })
        .await;
    }
}

/// How long after its opening a stream closed before its client wrote is given to write.
const FIRST_WRITE_WAIT: Duration = Duration::from_millis(500);

/// How long a closed stream's remaining request messages are read and dropped.
const DRAIN_AFTER_STATUS: Duration = Duration::from_secs(2);

/// Takes the whole messages off the front of `pending`; a status for a refused one.
fn messages(pending: &mut BytesMut, limit: usize) -> Result<Vec<Bytes>, (u32, String)> {
    let mut out = Vec::new();
    while pending.len() >= 5 {
        let compressed = pending[0];
        let len = u32::from_be_bytes([pending[1], pending[2], pending[3], pending[4]]) as usize;
        if len > limit {
            return Err((
                RESOURCE_EXHAUSTED,
                format!("Received message larger than max ({len} vs. {limit})"),
            ));
        }
        if compressed != 0 {
            return Err((
                UNIMPLEMENTED,
                "compressed messages are not supported".to_owned(),
            ));
        }
        if pending.len() < 5 + len {
            break;
        }
        pending.advance(5);
        out.push(pending.split_to(len).freeze());
    }
    Ok(out)
}

fn headers() -> Response<()> {
    let mut resp = Response::new(());
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    resp
}

fn status(code: u32, message: &str) -> HeaderMap {
    let mut map = HeaderMap::new();
    map.insert("grpc-status", HeaderValue::from(code));
    if !message.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&percent_encoded(message)) {
            map.insert("grpc-message", v);
        }
    }
    map
}

/// gRPC's encoding of grpc-message: printable ASCII but '%' as is, other bytes as %XX.
pub fn percent_encoded(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Ends the stream with a status: in the trailers after a response was sent, else in a
/// trailers-only response.
fn finish(
    respond: &mut SendResponse<Bytes>,
    sending: Option<&mut SendStream<Bytes>>,
    code: u32,
    message: &str,
) -> Result<(), h2::Error> {
    match sending {
        Some(out) => out.send_trailers(status(code, message)),
        None => {
            let mut resp = headers();
            resp.headers_mut().extend(status(code, message));
            respond.send_response(resp, true).map(|_| ())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_chunks() {
        let mut pending = BytesMut::new();
        pending.extend_from_slice(&[0, 0, 0, 0, 3, b'a', b'b']);
        assert!(messages(&mut pending, 10).expect("ok").is_empty());
        pending.extend_from_slice(&[b'c', 0, 0, 0, 0, 0]);
        let found = messages(&mut pending, 10).expect("ok");
        assert_eq!(found, vec![Bytes::from_static(b"abc"), Bytes::new()]);
        assert!(pending.is_empty());
    }

    #[test]
    fn oversized_and_compressed_refused() {
        let mut pending = BytesMut::from(&[0, 0, 0, 0, 11][..]);
        assert_eq!(
            messages(&mut pending, 10).map_err(|e| e.0),
            Err(RESOURCE_EXHAUSTED)
        );
        let mut pending = BytesMut::from(&[1, 0, 0, 0, 1, 0][..]);
        assert_eq!(
            messages(&mut pending, 10).map_err(|e| e.0),
            Err(UNIMPLEMENTED)
        );
    }

    #[test]
    fn grpc_message_encoding() {
        assert_eq!(percent_encoded("a b%\u{e9}\n"), "a b%25%C3%A9%0A");
    }
}
