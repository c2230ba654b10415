//! The data directory is the daemon user's alone: every directory the
//! store and the journal create is 0700 and every file 0600, and a data
//! directory made wider by hand is narrowed at start, with a log line.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::daemon::Daemon;
use common::*;
use omniroute_protocol::{Decision, Method, Order};

fn order(id: &str) -> Order {
    Order {
        channel: "web".into(),
        client_order_id: id.into(),
        lat: 50.0,
        lon: 10.0,
        market: None,
        method: Method::Ship,
        hold_ttl_ms: None,
        lines: vec![("SKU-1".into(), 1)],
    }
}

/// Every directory and file under `dir` (symlinks not followed), with its
/// permission bits.
fn modes(dir: &Path, found: &mut Vec<(std::path::PathBuf, bool, u32)>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = std::fs::symlink_metadata(entry.path()).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            found.push((entry.path(), true, mode));
            modes(&entry.path(), found);
        } else if meta.is_file() {
            found.push((entry.path(), false, mode));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_is_owner_only_after_a_start_orders_and_a_stop() {
    // Proves that a data directory created 0755 by hand is narrowed to 0700 at start (and the
    // log says so), and that after orders and a stop (journal segments, the spare segment,
    // snapshots, names, lock) every directory inside is 0700 and every file 0600.
    let dir = TempDir::new("private-dir");
    let config = web_config_file(&dir);
    let data = dir.0.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut daemon = Daemon::start(&data, Some(&config), "off").await;
    daemon.log_line_with("narrowed to 700").await;
    let client = daemon.client(CHANNEL_WEB_TOKEN).await;
    for i in 0..5 {
        let decision = client.submit(order(&format!("p-{i}"))).await.unwrap();
        assert!(matches!(decision, Decision::Routed { .. }), "{decision:?}");
    }
    assert!(daemon.terminate().await.success());

    let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the data directory");
    let mut found = Vec::new();
    modes(&data, &mut found);
    let names: Vec<String> = found
        .iter()
        .map(|(path, _, _)| path.strip_prefix(&data).unwrap().display().to_string())
        .collect();
    for wanted in ["lock", "names.toml", "journal"] {
        assert!(names.iter().any(|n| n == wanted), "{wanted} in {names:?}");
    }
    assert!(names.iter().any(|n| n.ends_with(".wal")), "{names:?}");
    assert!(names.iter().any(|n| n.ends_with(".snap")), "{names:?}");
    for (path, is_dir, mode) in found {
        // The self-signed certificate is public by nature: clients pin a copy of it.
        if path.file_name().is_some_and(|n| n == "cert.pem") {
            continue;
        }
        let wanted = if is_dir { 0o700 } else { 0o600 };
        assert_eq!(mode, wanted, "{} is {mode:o}", path.display());
    }
}
