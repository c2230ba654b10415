//! The Python client package (`clients/python`) against the real server
//! over loopback: its own test suite against the daemon binary, and the
//! example that uses it.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Output;

use common::daemon::Daemon;
use common::*;

/// The test network's text: channels c and web, SKU-1 deep at WH-N.
fn network() -> String {
    format!(
        "{}{}{}",
        channel("c", &["nearest"]),
        channel("web", &["nearest"]),
        stock(&[("SKU-1", "WH-N", 100_000)])
    )
}

/// Runs python3 with `args`, the package importable from the source tree
/// (CI also installs it with pip), and the server's address, certificate
/// and tokens in `OMNIROUTE_*` variables.
async fn python(addr: SocketAddr, cert: PathBuf, args: Vec<String>) -> Output {
    let package = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/python");
    let (port, ca) = (addr.port().to_string(), cert.display().to_string());
    tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(&args)
            .env("PYTHONPATH", package)
            .env("OMNIROUTE_PORT", &port)
            .env("OMNIROUTE_CA", &ca)
            .env("OMNIROUTE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("OMNIROUTE_WEB_TOKEN", CHANNEL_WEB_TOKEN)
            .env("OMNIROUTE_C_TOKEN", CHANNEL_C_TOKEN)
            .output()
            .expect("python3 runs (apt-get install python3; pip install ./clients/python)")
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_package_passes_its_tests_against_the_daemon() {
    // Proves the Python client covers the protocol: its unittest suite (pipelined submits,
    // rejections and refusals, the order lifecycle, stock and availability, node and channel
    // feeds with resume, listing pages) passes against the daemon binary.
    let dir = TempDir::new("python-tests");
    let config = dir.0.join("omniroute.toml");
    let data = dir.0.join("data");
    let text = format!("{NODES}\n{}{}", server_section(&data), network());
    std::fs::write(&config, text).unwrap();
    let mut daemon = Daemon::start(&data, Some(&config), "off").await;
    let tests = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/python/tests");
    let args = ["-m", "unittest", "discover", "-v", "-s", tests];
    let args = args.map(String::from).to_vec();
    let output = python(daemon.addr, daemon.cert.clone(), args).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "python tests failed:\n{stderr}");
    assert!(
        stderr.contains("Ran 9 tests") && stderr.contains("OK"),
        "{stderr}"
    );
    assert!(daemon.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_routes_and_checks_orders() {
    // Proves examples/python_client.py, a short use of the package, pipelines orders on one
    // connection and reads back answers the server got right.
    let dir = TempDir::new("python-example");
    let (engine, server) = quic_server(&network(), &dir).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python_client.py");
    let args = [
        script,
        "--host",
        "127.0.0.1",
        "--port",
        &server.addr.port().to_string(),
        "--ca",
        &server.cert_path.display().to_string(),
        "--token",
        CHANNEL_C_TOKEN,
        "--channel",
        "c",
        "--sku",
        "SKU-1",
        "--orders",
        "300",
    ];
    let output = python(
        server.addr,
        server.cert_path.clone(),
        args.map(String::from).to_vec(),
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "python client failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("python client: ok"), "{stdout}");
    // 300 orders of 1, 2 or 3 units: 1+2+3 repeated 100 times.
    assert_eq!(engine.cell("SKU-1", "WH-N").await.unwrap().reserved, 600);
    server.shutdown().await;
}

#[test]
fn building_the_package_leaves_its_source_tree_as_it_was() {
    // Proves `pip wheel` (as `pip install ./clients/python` builds) makes the wheel without
    // writing into the package's source tree: no build/ or *.egg-info left behind.
    let dir = TempDir::new("python-build");
    let source = dir.0.join("src");
    let copied = std::process::Command::new("cp")
        .arg("-r")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/clients/python"))
        .arg(&source)
        .status()
        .unwrap();
    assert!(copied.success());
    let files = |root: &std::path::Path| -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut todo = vec![root.to_path_buf()];
        while let Some(at) = todo.pop() {
            for entry in std::fs::read_dir(&at).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    todo.push(path.clone());
                }
                found.push(path.strip_prefix(root).unwrap().to_path_buf());
            }
        }
        found.sort();
        found
    };
    let before = files(&source);
    let wheels = dir.0.join("wheels");
    let built = std::process::Command::new("python3")
        .args(["-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir"])
        .arg(&wheels)
        .arg(&source)
        .output()
        .expect("python3 runs (apt-get install python3 python3-pip)");
    let stderr = String::from_utf8_lossy(&built.stderr);
    assert!(built.status.success(), "pip wheel failed: {stderr}");
    assert_eq!(files(&wheels).len(), 1, "one wheel: {stderr}");
    assert_eq!(
        files(&source),
        before,
        "the build wrote into the source tree"
    );
}
