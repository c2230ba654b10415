//! The Python client, written from docs/PROTOCOL.md alone, against the real
//! server over loopback.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_routes_and_checks_orders() {
    // Proves a client in another language, built only from the protocol document,
    // pipelines orders on one stream and reads back answers the server got right.
    let dir = TempDir::new("python");
    let text = format!(
        "{}{}{}",
        channel("c", &["nearest"]),
        channel("web", &["nearest"]),
        stock(&[("SKU-1", "WH-N", 100_000)])
    );
    let (engine, server) = quic_server(&text, &dir).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python_client.py");
    let (port, ca) = (
        server.addr.port().to_string(),
        server.cert_path.display().to_string(),
    );
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args([
                script,
                "--host",
                "127.0.0.1",
                "--port",
                &port,
                "--ca",
                &ca,
                "--token",
                CHANNEL_C_TOKEN,
                "--channel",
                "c",
                "--sku",
                "SKU-1",
                "--orders",
                "300",
            ])
            .output()
            .expect("python3 runs (apt-get install python3; pip install aioquic)")
    })
    .await
    .unwrap();
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
