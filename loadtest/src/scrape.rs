//! Reads the daemon's counters from its admin port's `/metrics` through
//! the run, for the chart's events (holds expiring, snapshots).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use omniroute_loadtest::DaemonCounters;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How often the counters are read: a few times a second, so that each
/// second of the chart has a reading in it.
const SCRAPE_EVERY_MS: u64 = 250;
/// How long one reading may take before it is skipped.
const SCRAPE_TIMEOUT_MS: u64 = 1_000;
/// The largest /metrics page read, in bytes.
const MAX_PAGE_BYTES: u64 = 4 << 20;

/// The readings taken so far, until stopped.
pub(crate) struct Scraper {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(Instant, DaemonCounters)>>,
}

impl Scraper {
    pub(crate) fn start(admin: SocketAddr) -> Scraper {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(scrape(admin, stop.clone()));
        Scraper { stop, task }
    }

    /// Stops reading; each reading with when it was taken. A daemon whose
    /// page could not be read gives none, and the chart no such events.
    pub(crate) async fn finish(self) -> Vec<(Instant, DaemonCounters)> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

async fn scrape(admin: SocketAddr, stop: Arc<AtomicBool>) -> Vec<(Instant, DaemonCounters)> {
    let mut samples = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(SCRAPE_EVERY_MS));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    while !stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        let timeout = Duration::from_millis(SCRAPE_TIMEOUT_MS);
        match tokio::time::timeout(timeout, metrics_page(admin)).await {
            Ok(Ok(page)) => samples.push((Instant::now(), DaemonCounters::parse(&page))),
            Ok(Err(e)) if !warned => {
                eprintln!("omniroute-loadtest: http://{admin}/metrics: {e}; the chart marks no snapshots or expiries then");
                warned = true;
            }
            _ => {}
        }
    }
    samples
}

/// GET /metrics over plain HTTP/1.1, the connection closed after it.
pub(crate) async fn metrics_page(admin: SocketAddr) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(admin).await?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream
        .take(MAX_PAGE_BYTES)
        .read_to_end(&mut response)
        .await?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("HTTP/1.1 200") {
        let status = head.lines().next().unwrap_or_default();
        return Err(std::io::Error::other(format!("answered {status:?}")));
    }
    Ok(body.to_string())
}
