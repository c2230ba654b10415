//! The data directory over the real binary: one writer at a time, and
//! stored orders that keep their meaning while the config around them
//! changes (channels added, nodes reordered, added and retired).

mod common;

use std::path::Path;
use std::time::Duration;

use common::daemon::Daemon;
use common::TempDir;
use omniroute_protocol::{Decision, Method, Order, OrderKey};

const WEB: &str = "dev-web-token";
const BERLIN: (f64, f64) = (52.52, 13.40);
/// How long a refused second start may take to exit.
const REFUSAL_TIMEOUT_S: u64 = 20;

fn order(id: &str, sku: &str, qty: u32) -> Order {
    Order {
        channel: "web".into(),
        client_order_id: id.into(),
        lat: BERLIN.0,
        lon: BERLIN.1,
        market: None,
        method: Method::Ship,
        hold_ttl_ms: Some(3_600_000),
        lines: vec![(sku.into(), qty)],
    }
}

fn key(id: &str) -> OrderKey {
    OrderKey {
        channel: "web".into(),
        client_order_id: id.into(),
    }
}

/// Runs a second daemon on `dir` to its end and returns (exit success, stderr).
async fn second_start(dir: &Path) -> (bool, String) {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_omniroute"))
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0", "--admin", "off"])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(REFUSAL_TIMEOUT_S), run)
        .await
        .expect("a second daemon on a held directory exits at once")
        .expect("the binary runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_directory_is_refused_and_the_first_loses_nothing() {
    // Proves a second serve on a held data directory exits non-zero naming the directory and
    // the holder's PID, while the first keeps serving, and a crash after it loses no order.
    let dir = TempDir::new("dir-one-writer");
    let mut first = Daemon::start(&dir.0, None, "off").await;
    let client = first.client(WEB).await;
    let Decision::Routed { order_id, .. } = client.submit(order("o-1", "SKU-1", 1)).await.unwrap()
    else {
        panic!("o-1 routes");
    };
    let (succeeded, stderr) = second_start(&dir.0).await;
    assert!(!succeeded, "the second daemon must fail: {stderr}");
    let pid = first.child.id().unwrap().to_string();
    assert!(
        stderr.contains(&pid),
        "names the holder's PID {pid}: {stderr}"
    );
    assert!(
        stderr.contains(&dir.0.display().to_string()),
        "names the directory: {stderr}"
    );
    // The first serves on, and what it answered survives its crash.
    assert_eq!(
        client.get_order(key("o-1")).await.unwrap().order_id,
        order_id
    );
    let second = client.submit(order("o-2", "SKU-2", 1)).await.unwrap();
    assert!(matches!(second, Decision::Routed { .. }), "{second:?}");
    client.close().await;
    first.child.kill().await.unwrap();
    let mut restarted = Daemon::start(&dir.0, None, "off").await;
    let client = restarted.client(WEB).await;
    assert_eq!(
        client.get_order(key("o-1")).await.unwrap().order_id,
        order_id
    );
    client.get_order(key("o-2")).await.expect("o-2 survives");
    client.close().await;
    restarted.child.kill().await.unwrap();
}
