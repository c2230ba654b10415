//! The generator end to end: it starts its own daemon, runs the flash-sale
//! scenario open loop, and audits the stock.

#[test]
fn flash_sale_runs_to_completion_with_a_clean_audit() {
    // Proves a short flash-sale run sends the scheduled orders, writes the JSON summary,
    // and audits 0 oversold units and 0 missing orders against a real daemon.
    let json = std::env::temp_dir().join(format!("omniroute-loadtest-{}.json", std::process::id()));
    let hlog = std::env::temp_dir().join(format!("omniroute-loadtest-{}.hlog", std::process::id()));
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/flash-sale.toml");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_omniroute-loadtest"))
        .args([
            "--spawn-server",
            "--rate",
            "4000",
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--connections",
            "2",
            "--scenario",
            scenario,
            "--json",
        ])
        .arg(&json)
        .arg("--hlog")
        .arg(&hlog)
        .output()
        .expect("the generator runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let log = std::fs::read_to_string(&hlog).unwrap_or_default();
    let _ = std::fs::remove_file(&hlog);
    assert!(
        log.lines().any(|l| l.contains(",HISTF")),
        "no interval in the HDR log:\n{log}"
    );
    assert!(
        output.status.success(),
        "generator failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    assert_eq!(summary["requests"], 4000, "{summary}");
    assert_eq!(summary["oversold_units"], 0);
    assert_eq!(summary["missing_orders"], 0);
    assert_eq!(summary["errors"], 0);
    let routed = summary["outcomes"]["routed"].as_u64().unwrap_or(0);
    let short = summary["outcomes"]["short"].as_u64().unwrap_or(0);
    assert_eq!(
        routed + short,
        4000,
        "only routed and short answers in a flash sale: {summary}"
    );
    assert!(routed > 0 && short > 0, "{summary}");
    assert!(stdout.contains("oversold_units=0"));
}

#[test]
fn omnichannel_mix_runs_to_completion_with_a_clean_audit() {
    // Proves the omnichannel scenario (Zipf SKUs, 1-5 lines, mixed methods) runs against a real
    // daemon and audits 0 oversold units against the ATP read before the run, and 0 missing orders.
    let json = std::env::temp_dir().join(format!(
        "omniroute-loadtest-mix-{}.json",
        std::process::id()
    ));
    let scenario = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scenarios/omnichannel-mix.toml"
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_omniroute-loadtest"))
        .args([
            "--spawn-server",
            "--rate",
            "3000",
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--scenario",
            scenario,
            "--json",
        ])
        .arg(&json)
        .output()
        .expect("the generator runs");
    assert!(
        output.status.success(),
        "generator failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    assert_eq!(summary["requests"], 3000, "{summary}");
    assert_eq!(summary["oversold_units"], 0);
    assert_eq!(summary["missing_orders"], 0);
    assert!(
        summary["outcomes"]["routed"].as_u64().unwrap_or(0) > 1000,
        "{summary}"
    );
}
