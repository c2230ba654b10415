//! The generator against a cluster it starts: three replicas on loopback,
//! the leader SIGKILLed during the run, the orders following the leader.

#[test]
fn a_cluster_run_with_a_leader_killed_loses_no_answered_order() {
    // Proves a short flash-sale run against three spawned replicas, with the leader SIGKILLed
    // and restarted on its directory once, answers every order it sends (the orders the
    // killed leader left undecided are decided by the next one), times the failover, audits
    // 0 lost orders and 0 oversold units against the final leader, and leaves no replica
    // running and no directory behind.
    let json = std::env::temp_dir().join(format!(
        "omniroute-loadtest-cluster-{}.json",
        std::process::id()
    ));
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_omniroute-loadtest"))
        .current_dir(std::env::temp_dir())
        .args([
            "--spawn-cluster",
            "3",
            "--kill-leader-every",
            "4s",
            "--rate",
            "200",
            "--duration",
            "7s",
            "--warmup",
            "0s",
            "--connections",
            "2",
            "--scenario",
            "flash-sale",
            "--json",
        ])
        .arg(&json)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the generator runs");
    let pid = child.id();
    let output = child.wait_with_output().expect("the generator ends");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "generator failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    assert_eq!(summary["measured"]["requests"], 1400, "{summary}");
    assert_eq!(summary["measured"]["errors"], 0, "{stdout}");
    assert_eq!(summary["whole_run"]["oversold_units"], 0, "{stdout}");
    assert_eq!(summary["whole_run"]["missing_orders"], 0, "{stdout}");
    let cluster = &summary["cluster"];
    assert_eq!(cluster["replicas"].as_array().map(Vec::len), Some(3));
    assert_eq!(cluster["lost_orders"], 0, "{stdout}");
    assert_eq!(cluster["replicas_equal"], true, "{stdout}");
    let first = &cluster["failovers"][0];
    assert!(
        first["failover_ms"].as_f64().is_some_and(|ms| ms > 0.0),
        "a failover timed: {stdout}"
    );
    assert!(stdout.contains("failover_p50_ms="), "{stdout}");
    // Nothing of the cluster is left: its directory (named by the generator's pid) is gone,
    // and so is every process that ran in it.
    let dir = std::env::temp_dir().join(format!("omniroute-loadtest-cluster-{pid}"));
    assert!(!dir.exists(), "{} left behind", dir.display());
    let dir = dir.display().to_string();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains(&dir),
            "a replica still runs: {}",
            entry.path().display()
        );
    }
}
