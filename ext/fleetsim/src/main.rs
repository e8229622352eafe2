//! `meshcore-xds-fleet TARGET NODE_FILE [OFFSET [STAGES]]`: a simulated fleet of Envoy-like
//! state-of-the-world ADS clients for the benchmarks, on one thread.
//!
//! The same contract as `bench/xds_fleet_client.py` (its Python twin, kept as the peer): each
//! line of NODE_FILE is a node id and the EDS names its proxy subscribes to; each proxy opens
//! one stream (100 per HTTP/2 connection), sends its node and names, and ACKs every response
//! with its version and nonce. On stdout: `ready ANSWERED lost LOST` once every stream of a
//! stage has its first answer or has ended; `got I:WALLTIME ...` for later answers (I counted
//! from OFFSET, batched every 5 ms); `lost I WHY` for a stream that ends while the fleet runs.
//! After each `ready` but the last the fleet waits for a line on stdin before opening the next
//! stage; after the last it runs until stdin closes.
//!
//! Why a twin: grpc's Python client spends about as much CPU receiving a push to 10,000 streams
//! as the control plane spends sending it, and on a machine of two cores the simulated proxies
//! then take half of what the control plane under test could use.

mod wire;

use std::cell::RefCell;
use std::io::{BufRead, Write};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use h2::client::SendRequest;
use http::Request;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio::task::LocalSet;

const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const STREAMS_PER_CONNECTION: usize = 100;

#[derive(Default)]
struct Fleet {
    answered: usize,
    lost: usize,
    stage_size: usize,
    stopping: bool,
    got: String,
}

struct Shared {
    fleet: RefCell<Fleet>,
    settled: Notify,
}

impl Shared {
    fn settled_now(&self) -> bool {
        let f = self.fleet.borrow();
        f.answered + f.lost >= f.stage_size
    }

    fn settle(&self) {
        if self.settled_now() {
            self.settled.notify_one();
        }
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // The parent gone: nothing to tell, the fleet ends with stdin.
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

struct Proxy {
    index: usize,
    node: String,
    names: Vec<String>,
}

/// One proxy's stream until it ends; how many responses it had, and why it ended.
async fn stream(
    target: &str,
    send: SendRequest<Bytes>,
    shared: &Shared,
    proxy: &Proxy,
    seen: &mut usize,
) -> Result<(), String> {
    let mut send = send.ready().await.map_err(|e| format!("UNAVAILABLE {e}"))?;
    let request = Request::post(format!("http://{target}{SOTW_PATH}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .map_err(|e| format!("INTERNAL {e}"))?;
    let (response, mut tx) = send
        .send_request(request, false)
        .map_err(|e| format!("UNAVAILABLE {e}"))?;
    let hello = wire::request(Some(&proxy.node), &proxy.names, b"", b"");
    tx.send_data(hello, false)
        .map_err(|e| format!("UNAVAILABLE {e}"))?;
    let response = response.await.map_err(|e| format!("UNAVAILABLE {e}"))?;
    if let Some(status) = response.headers().get("grpc-status") {
        return Err(format!("status {status:?} (trailers only)"));
    }
    let mut body = response.into_body();
    let mut pending = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| format!("UNAVAILABLE {e}"))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        for message in wire::take_frames(&mut pending, chunk) {
            let (version, nonce) = wire::response_version_nonce(&message)
                .ok_or_else(|| "INTERNAL an unreadable DiscoveryResponse".to_string())?;
            *seen += 1;
            if *seen == 1 {
                shared.fleet.borrow_mut().answered += 1;
                shared.settle();
            } else {
                let mut f = shared.fleet.borrow_mut();
                let item = format!(" {}:{:.6}", proxy.index, now());
                f.got.push_str(&item);
            }
            let ack = wire::request(None, &proxy.names, &version, &nonce);
            tx.send_data(ack, false)
                .map_err(|e| format!("UNAVAILABLE {e}"))?;
        }
    }
    let trailers = body
        .trailers()
        .await
        .map_err(|e| format!("UNAVAILABLE {e}"))?;
    match trailers.as_ref().and_then(|t| t.get("grpc-status")) {
        Some(status) if status.as_bytes() != b"0" => Err(format!("status {status:?}")),
        _ => Ok(()),
    }
}

async fn client(target: Rc<str>, send: SendRequest<Bytes>, shared: Rc<Shared>, proxy: Proxy) {
    let mut seen = 0;
    let why = match stream(&target, send, &shared, &proxy, &mut seen).await {
        Ok(()) => "EOF".to_string(),
        Err(why) => why,
    };
    if shared.fleet.borrow().stopping {
        return;
    }
    // A stream that ends while the fleet runs is lost: counted, never hidden.
    say(&format!("lost {} {why}", proxy.index));
    if seen == 0 {
        shared.fleet.borrow_mut().lost += 1;
        shared.settle();
    }
}

async fn report(shared: Rc<Shared>) {
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let got = std::mem::take(&mut shared.fleet.borrow_mut().got);
        if !got.is_empty() {
            say(&format!("got{got}"));
        }
    }
}

async fn connect(target: &str) -> Result<SendRequest<Bytes>, String> {
    let tcp = TcpStream::connect(target)
        .await
        .map_err(|e| format!("cannot connect to {target}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .handshake::<_, Bytes>(tcp)
        .await
        .map_err(|e| format!("HTTP/2 handshake with {target}: {e}"))?;
    tokio::task::spawn_local(async move {
        let _ = connection.await;
    });
    Ok(send)
}

async fn run(target: String, proxies: Vec<Proxy>, stages: usize) -> Result<(), String> {
    let (lines_tx, mut lines_rx) = mpsc::unbounded_channel::<()>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if line.is_err() || lines_tx.send(()).is_err() {
                break;
            }
        }
    });
    let target: Rc<str> = Rc::from(target);
    let mut connections = Vec::new();
    for _ in 0..proxies.len().div_ceil(STREAMS_PER_CONNECTION).max(1) {
        connections.push(connect(&target).await?);
    }
    let shared = Rc::new(Shared {
        fleet: RefCell::new(Fleet::default()),
        settled: Notify::new(),
    });
    let reporter = tokio::task::spawn_local(report(shared.clone()));
    let total = proxies.len();
    let per_stage = total.div_ceil(stages.max(1)).max(1);
    let mut proxies = proxies.into_iter().peekable();
    let mut opened = 0;
    while proxies.peek().is_some() {
        let size = per_stage.min(total - opened);
        shared.fleet.borrow_mut().stage_size = opened + size;
        for proxy in proxies.by_ref().take(size) {
            let send = connections[opened % connections.len()].clone();
            tokio::task::spawn_local(client(target.clone(), send, shared.clone(), proxy));
            opened += 1;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(900);
        while !shared.settled_now() {
            tokio::time::timeout_at(deadline, shared.settled.notified())
                .await
                .map_err(|_| "a stage did not settle in 900 s".to_string())?;
        }
        let (answered, lost) = {
            let f = shared.fleet.borrow();
            (f.answered, f.lost)
        };
        say(&format!("ready {answered} lost {lost}"));
        if opened < total {
            lines_rx.recv().await;
        }
    }
    while lines_rx.recv().await.is_some() {} // until the parent closes stdin
    shared.fleet.borrow_mut().stopping = true;
    reporter.abort();
    Ok(())
}

fn proxies(path: &str, offset: usize) -> Result<Vec<Proxy>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, line)| {
            let mut parts = line.split_whitespace().map(str::to_string);
            Proxy {
                index: offset + i,
                node: parts.next().unwrap_or_default(),
                names: parts.collect(),
            }
        })
        .collect())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: meshcore-xds-fleet TARGET NODE_FILE [OFFSET [STAGES]]");
        std::process::exit(2);
    }
    let number = |i: usize, default: usize| -> usize {
        args.get(i)
            .map_or(Some(default), |a| a.parse().ok())
            .unwrap_or_else(|| {
                eprintln!("meshcore-xds-fleet: argument {i} must be a number");
                std::process::exit(2)
            })
    };
    let (offset, stages) = (number(3, 0), number(4, 1));
    let outcome = proxies(&args[2], offset).and_then(|proxies| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("no runtime: {e}"))?;
        LocalSet::new().block_on(&runtime, run(args[1].clone(), proxies, stages))
    });
    if let Err(why) = outcome {
        eprintln!("meshcore-xds-fleet: {why}");
        std::process::exit(1);
    }
    // The streams still open end with the process.
    std::process::exit(0);
}
