//! schemathesis, an independent OpenAPI fuzzer, against the real daemon's
//! gateway with docs/openapi.json: every check it has, every route, with
//! the daemon's node names, SKUs, channel and orders to reach real state
//! (tests/schemathesis/schemathesis.toml). Any failure or error it reports
//! is a disagreement between the document and the server.
//!
//! Needs `schemathesis` on the PATH (`python3 -m pip install schemathesis`;
//! `.ci/run` installs it). Without it the test says so on stderr and passes,
//! unless `CI` is set, where it fails.

mod common;

use std::time::Duration;

use common::daemon::Daemon;
use common::*;

/// Test cases schemathesis generates per operation and phase, unless
/// `OMNIROUTE_FUZZ_EXAMPLES` says otherwise (a long run: 1000).
const EXAMPLES_PER_OPERATION: u32 = 100;

/// schemathesis's own time budget (`--max-time`), in s: it stops by itself
/// when it is spent, and fuzzes and runs stateful sequences until then, so
/// a run takes about this long (some 8 000 requests on two cores).
const FUZZ_BUDGET_S: u64 = 120;

/// Past this the run is killed and the test fails, in s: the budget plus
/// schemathesis's start and report.
const FUZZ_TIMEOUT_S: u64 = FUZZ_BUDGET_S + 120;

/// The fixed seed, so that a failure reproduces.
const SEED: &str = "35";

/// The operations docs/openapi.json has: schemathesis must test each one.
const OPERATIONS: usize = omniroute::http::ROUTES.len();

fn schemathesis_installed() -> bool {
    std::process::Command::new("schemathesis")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success())
}

/// A POST to the gateway with the admin token: the status.
async fn post(http: std::net::SocketAddr, path: &str, body: String) -> u16 {
    let url = format!("http://{http}{path}");
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(20)))
            .build()
            .into();
        agent
            .post(&url)
            .header("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
            .header("Content-Type", "application/json")
            .send(&body)
            .expect("the gateway answers")
            .status()
            .as_u16()
    })
    .await
    .unwrap()
}

/// The orders the fuzzer's dictionary names: one confirmed at ST-1 (ship,
/// return and reject find its units), one held.
async fn seed_orders(http: std::net::SocketAddr) {
    for id in ["fuzz-confirmed", "fuzz-held"] {
        let order = format!(
            r#"{{"channel":"web","id":"{id}","lines":[{{"sku":"SKU-1","qty":1}}],"ship_to":{{"lat":50.0,"lon":10.0}}}}"#
        );
        assert_eq!(post(http, "/v1/orders", order).await, 200, "{id} is routed");
    }
    let confirm = "/v1/orders/web/fuzz-confirmed/confirm";
    assert_eq!(post(http, confirm, String::new()).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_disagreement_between_the_document_and_the_gateway() {
    // Proves schemathesis, with all its checks, reaches every route of docs/openapi.json on
    // the live gateway and reports no failure and no error of any kind.
    if !schemathesis_installed() {
        let why = "schemathesis is not installed (python3 -m pip install schemathesis)";
        assert!(std::env::var_os("CI").is_none(), "{why}");
        eprintln!("SKIPPED: {why}; docs/openapi.json was not fuzzed");
        return;
    }
    let dir = TempDir::new("openapi-fuzz");
    let config = web_config_file(&dir);
    let mut daemon = Daemon::start(&dir.0.join("data"), Some(&config), "off").await;
    seed_orders(daemon.http).await;
    let examples: u32 = std::env::var("OMNIROUTE_FUZZ_EXAMPLES")
        .map(|n| n.parse().expect("OMNIROUTE_FUZZ_EXAMPLES is a count"))
        .unwrap_or(EXAMPLES_PER_OPERATION);
    // A long run gets time in proportion.
    let budget_s = FUZZ_BUDGET_S * u64::from(examples.div_ceil(EXAMPLES_PER_OPERATION));
    let root = env!("CARGO_MANIFEST_DIR");
    // One worker: with two, hypothesis parses lambdas' source with `ast` in two threads, and
    // CPython before 3.11.8 and 3.12.2 can then fail with "AST constructor recursion depth
    // mismatch" (python/cpython#106905), an error of the fuzzer's own, not a finding.
    let mut run = tokio::process::Command::new("schemathesis");
    run.current_dir(&dir.0)
        .arg("--config-file")
        .arg(format!("{root}/tests/schemathesis/schemathesis.toml"))
        .arg("--no-color")
        .arg("run")
        .arg(format!("{root}/docs/openapi.json"))
        .args(["--url", &format!("http://{}", daemon.http)])
        .args(["-H", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
        .args(["--checks", "all", "--seed", SEED, "--workers", "1"])
        .args(["--max-examples", &examples.to_string()])
        .args(["--max-time", &budget_s.to_string()])
        .args(["--request-timeout", "10", "--generation-database", "none"])
        .kill_on_drop(true);
    let started = std::time::Instant::now();
    let timeout_s = budget_s + FUZZ_TIMEOUT_S - FUZZ_BUDGET_S;
    let out = tokio::time::timeout(Duration::from_secs(timeout_s), run.output())
        .await
        .unwrap_or_else(|_| panic!("schemathesis ran past {timeout_s} s"))
        .expect("schemathesis runs");
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "schemathesis took {:.0} s:\n{report}",
        started.elapsed().as_secs_f64()
    );
    assert!(daemon.terminate().await.success());
    assert!(
        out.status.success(),
        "schemathesis found disagreements (above)"
    );
    assert!(
        report.contains(&format!("Tested: {OPERATIONS}")),
        "schemathesis did not test all {OPERATIONS} operations"
    );
}
