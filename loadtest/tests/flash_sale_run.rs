//! The generator end to end: it starts its own daemon, runs the flash-sale
//! scenario open loop, and audits the stock.

#[test]
fn flash_sale_runs_to_completion_with_a_clean_audit() {
    // Proves a short flash-sale run, its scenario given by name from another directory,
    // sends the scheduled orders, writes the JSON summary with what ran (versions, settings,
    // per-second series, CPU per order of both sides, the percentile table, outcomes and
    // codes by name), holds a threshold it meets, and audits 0 oversold units and 0 missing
    // orders against a real daemon.
    let json = std::env::temp_dir().join(format!("omniroute-loadtest-{}.json", std::process::id()));
    let hlog = std::env::temp_dir().join(format!("omniroute-loadtest-{}.hlog", std::process::id()));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_omniroute-loadtest"))
        .current_dir(std::env::temp_dir())
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
            "flash-sale",
            "--threshold",
            "p99.99<10s",
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
    assert_eq!(summary["measured"]["requests"], 4000, "{summary}");
    assert_eq!(summary["whole_run"]["oversold_units"], 0);
    assert_eq!(summary["whole_run"]["missing_orders"], 0);
    assert_eq!(summary["measured"]["errors"], 0);
    let routed = summary["measured"]["outcomes"]["routed"]
        .as_u64()
        .unwrap_or(0);
    let short = summary["measured"]["outcomes"]["short"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(
        routed + short,
        4000,
        "only routed and short answers in a flash sale: {summary}"
    );
    assert!(routed > 0 && short > 0, "{summary}");
    assert!(stdout.contains("oversold_units=0"));
    assert!(
        stdout.contains("threshold p99.99<10s: measured"),
        "{stdout}"
    );
    let outcomes = stdout
        .lines()
        .find(|l| l.starts_with("omniroute: measured step: outcomes: "))
        .unwrap_or_default();
    assert!(
        outcomes.contains("routed ") && outcomes.contains("short "),
        "{stdout}"
    );
    for key in [
        "min_us",
        "mean_us",
        "p50_us",
        "p90_us",
        "p95_us",
        "p99_us",
        "p999_us",
        "p9999_us",
        "max_us",
        "server_cpu_us_per_order",
        "generator_cpu_us_per_order",
    ] {
        assert!(
            summary["measured"][key].as_f64().is_some_and(|v| v > 0.0),
            "{key}: {summary}"
        );
    }
    let run = &summary["run"];
    for key in [
        "timestamp",
        "loadtest_version",
        "omniroute_version",
        "scenario",
        "durability",
    ] {
        assert!(run[key].is_string(), "run.{key}: {run}");
    }
    assert_eq!(run["scenario"], "flash-sale");
    assert_eq!(
        (run["rate"].as_f64(), run["connections"].as_u64()),
        (Some(4000.0), Some(2))
    );
    assert!(run["cores"].as_u64().is_some_and(|c| c >= 1) && run["tick_us"] == 250);
    assert_eq!(run["submit_batch"], 1024);
    assert!(summary["batching"]
        .as_str()
        .unwrap()
        .contains("SubmitBatch"));
    let seconds = summary["over_time"]["seconds"].as_array().unwrap();
    assert_eq!(seconds.len(), 1, "one second for a 1 s run: {summary}");
    let answered =
        seconds[0]["routed"].as_u64().unwrap() + seconds[0]["rejected"]["short"].as_u64().unwrap();
    assert_eq!(answered, 4000, "every answer in its second: {summary}");
    assert!(seconds[0]["achieved_per_s"].as_f64().unwrap() > 0.0);
    assert!(summary["thresholds"][0]["passed"].as_bool().unwrap());
}

#[test]
fn a_missed_threshold_fails_the_run() {
    // Proves a bound the run cannot meet (p50 under 1 us) makes the generator exit 4 and
    // say which bound it missed, while the run itself is clean.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_omniroute-loadtest"))
        .args([
            "--spawn-server",
            "--rate",
            "1000",
            "--duration",
            "500ms",
            "--warmup",
            "0s",
            "--connections",
            "1",
            "--scenario",
            "flash-sale",
            "--threshold",
            "p50<1us",
            "--threshold",
            "errors<1",
        ])
        .output()
        .expect("the generator runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(4), "{stdout}");
    assert!(stdout.contains("threshold p50<1us: measured"), "{stdout}");
    assert!(stdout.contains("MISSED"), "{stdout}");
    assert!(
        stdout.contains("threshold errors<1: measured 0: held"),
        "{stdout}"
    );
    assert!(stdout.contains("oversold_units=0"), "{stdout}");
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
    assert_eq!(summary["measured"]["requests"], 3000, "{summary}");
    assert_eq!(summary["whole_run"]["oversold_units"], 0);
    assert_eq!(summary["whole_run"]["missing_orders"], 0);
    assert!(
        summary["measured"]["outcomes"]["routed"]
            .as_u64()
            .unwrap_or(0)
            > 1000,
        "{summary}"
    );
}
