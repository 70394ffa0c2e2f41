//! The load generator of `lbx-relay bench`: pre-built HTTP/1.1 requests written on raw keep-alive
//! connections by threads of its own, answers parsed with `httparse`. It is lean so that the
//! ceiling it measures is the server's, not its own (checked against `wrk` on the bare handler).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One load: request `n` goes to `addrs[n % addrs.len()]`.
pub struct Load {
    pub addrs: Vec<SocketAddr>,
    /// Complete HTTP/1.1 requests (head and body), each sent once.
    pub requests: Arc<Vec<Vec<u8>>>,
    pub connections: usize,
    pub threads: usize,
    /// Requests per second in total; `None` sends as fast as the connections allow.
    pub rate: Option<f64>,
    /// Without `rate`: stop sending after this long even if requests are left. With `rate`, every
    /// request is due within the duration already; one sent late (a busy machine) is still sent,
    /// and its ack latency counts from its due time.
    pub duration: Option<Duration>,
}

/// What the generator shares with whoever watches it run.
pub struct Progress {
    pub start: Instant,
    /// Microseconds since `start` at which request `n` was written (0: not yet).
    pub sent_at: Vec<AtomicU64>,
    /// Ack latency of request `n` in microseconds, as in [`Totals::ack`] (0: not answered yet).
    pub ack_us: Vec<AtomicU64>,
    /// Requests answered 200 so far.
    pub accepted: AtomicUsize,
    /// Requests answered otherwise, or not at all.
    pub errors: AtomicUsize,
}

impl Progress {
    pub fn new(n: usize) -> Progress {
        Progress {
            start: Instant::now(),
            sent_at: (0..n).map(|_| AtomicU64::new(0)).collect(),
            ack_us: (0..n).map(|_| AtomicU64::new(0)).collect(),
            accepted: AtomicUsize::new(0),
            errors: AtomicUsize::new(0),
        }
    }

    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}

pub struct Totals {
    /// Ack latency in µs: from the request's due time under `rate` (so a generator or server that
    /// falls behind shows in it), else from the write.
    pub ack: Histogram<u64>,
    /// Requests written.
    pub sent: usize,
    pub elapsed: Duration,
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("static histogram bounds are valid")
}

/// A POST of `body` to `path`, as bytes ready to write.
pub fn post(path: &str, host: &str, body: &[u8]) -> Vec<u8> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut request = Vec::with_capacity(head.len() + body.len());
    request.extend_from_slice(head.as_bytes());
    request.extend_from_slice(body);
    request
}

struct Shared {
    load: Load,
    progress: Arc<Progress>,
    next: AtomicUsize,
    deadline: Option<Instant>,
}

/// Runs the load on `load.threads` threads of its own (blocking the caller until it is done).
pub fn run(load: Load, progress: Arc<Progress>) -> anyhow::Result<Totals> {
    anyhow::ensure!(!load.addrs.is_empty(), "no target address");
    anyhow::ensure!(load.connections > 0 && load.threads > 0, "connections and threads must be at least 1");
    let threads = load.threads.min(load.connections);
    let started = Instant::now();
    let deadline = load.duration.filter(|_| load.rate.is_none()).map(|d| started + d);
    let shared = Arc::new(Shared { deadline, load, progress, next: AtomicUsize::new(0) });
    let mut handles = Vec::new();
    for t in 0..threads {
        let shared = shared.clone();
        let connections = shared.load.connections / threads + usize::from(t < shared.load.connections % threads);
        let handle = std::thread::Builder::new()
            .name(format!("bench-load-{t}"))
            .spawn(move || -> anyhow::Result<Histogram<u64>> {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                rt.block_on(async move {
                    let mut tasks = tokio::task::JoinSet::new();
                    for _ in 0..connections {
                        tasks.spawn(connection(shared.clone(), started));
                    }
                    let mut ack = histogram();
                    while let Some(h) = tasks.join_next().await {
                        ack.add(h?)?;
                    }
                    Ok(ack)
                })
            })
            .context("starting a load thread")?;
        handles.push(handle);
    }
    let mut ack = histogram();
    for handle in handles {
        let h = handle.join().map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
        ack.add(h)?;
    }
    let sent = shared.next.load(Ordering::Relaxed).min(shared.load.requests.len());
    Ok(Totals { ack, sent, elapsed: started.elapsed() })
}

/// One keep-alive connection per target, sending the next request as soon as the last is answered.
async fn connection(shared: Arc<Shared>, started: Instant) -> Histogram<u64> {
    let load = &shared.load;
    let mut hist = histogram();
    let mut streams: Vec<Option<TcpStream>> = load.addrs.iter().map(|_| None).collect();
    let mut buf = Vec::with_capacity(4096);
    loop {
        if shared.deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let n = shared.next.fetch_add(1, Ordering::Relaxed);
        let Some(request) = load.requests.get(n) else { break };
        let due = load.rate.map(|rate| started + Duration::from_secs_f64(n as f64 / rate));
        if let Some(due) = due {
            tokio::time::sleep_until(due.into()).await;
        }
        let written = Instant::now();
        shared.progress.sent_at[n].store(shared.progress.now_us().max(1), Ordering::Relaxed);
        let slot = &mut streams[n % load.addrs.len()];
        let ok = exchange(slot, load.addrs[n % load.addrs.len()], request, &mut buf).await;
        let took = due.unwrap_or(written).elapsed().as_micros().max(1) as u64;
        let _ = hist.record(took);
        shared.progress.ack_us[n].store(took, Ordering::Relaxed);
        if ok {
            shared.progress.accepted.fetch_add(1, Ordering::Relaxed);
        } else {
            shared.progress.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    hist
}

/// Writes one request and reads its answer; true when it was a 200. The connection is dropped
/// (and made again next time) after any error or a `Connection: close`.
async fn exchange(slot: &mut Option<TcpStream>, addr: SocketAddr, request: &[u8], buf: &mut Vec<u8>) -> bool {
    if slot.is_none() {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                *slot = Some(s);
            }
            Err(_) => return false,
        }
    }
    let Some(stream) = slot.as_mut() else { return false };
    match answer(stream, request, buf).await {
        Some((status, keep)) => {
            if !keep {
                *slot = None;
            }
            status == 200
        }
        None => {
            *slot = None;
            false
        }
    }
}

/// The status and whether the connection stays open, or `None` when the exchange broke.
async fn answer(stream: &mut TcpStream, request: &[u8], buf: &mut Vec<u8>) -> Option<(u16, bool)> {
    stream.write_all(request).await.ok()?;
    buf.clear();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head) = response.parse(buf).ok()? {
            let status = response.code?;
            let mut length = 0usize;
            let mut keep = true;
            for h in response.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    length = std::str::from_utf8(h.value).ok()?.trim().parse().ok()?;
                } else if h.name.eq_ignore_ascii_case("connection") && h.value.eq_ignore_ascii_case(b"close") {
                    keep = false;
                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    return None; // not sent by the servers measured here; drop the connection
                }
            }
            while buf.len() < head + length {
                if read_more(stream, buf).await? == 0 {
                    return None;
                }
            }
            return Some((status, keep));
        }
        if read_more(stream, buf).await? == 0 {
            return None;
        }
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    let len = buf.len();
    buf.resize(len + 4096, 0);
    let read = stream.read(&mut buf[len..]).await;
    buf.truncate(len + *read.as_ref().ok().unwrap_or(&0));
    read.ok()
}
