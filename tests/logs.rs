//! The daemon's logs over the real binary: human text by default, JSON
//! lines with --log-json, and a bad `[log]` section refused by name.

mod common;

use std::io::BufRead;
use std::process::{Command, Stdio};

use common::TempDir;

/// Starts the daemon with `args`, returns its first stderr line that `wanted` accepts.
fn first_log_line(dir: &TempDir, args: &[&str], wanted: impl Fn(&str) -> bool) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_omniroute"))
        .arg("--data-dir")
        .arg(&dir.0)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--http",
            "off",
        ])
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the daemon starts");
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    let mut found = None;
    // The recovery line comes before the listener; 200 lines is far beyond it.
    for line in stderr.lines().take(200) {
        let line = line.unwrap();
        if wanted(&line) {
            found = Some(line);
            break;
        }
        seen.push(line);
    }
    let _ = child.kill();
    let _ = child.wait();
    found.unwrap_or_else(|| panic!("no such line in:\n{}", seen.join("\n")))
}

#[test]
fn logs_are_text_by_default_and_json_lines_with_the_flag() {
    // Proves the daemon logs its recovery at info level by default, as text, and as one JSON
    // object per line with --log-json.
    let dir = TempDir::new("logs-text");
    let text = first_log_line(&dir, &[], |l| l.contains("recovered"));
    assert!(text.contains("INFO"), "{text}");
    assert!(!text.trim_start().starts_with('{'), "{text}");
    let dir = TempDir::new("logs-json");
    let line = first_log_line(&dir, &["--log-json"], |l| l.contains("recovered"));
    let json: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(json["level"], "INFO", "{line}");
    assert!(json["fields"]["message"]
        .as_str()
        .unwrap()
        .starts_with("recovered"));
}

#[test]
fn a_bad_log_section_is_refused_by_name() {
    // Proves an unknown log format and an unparsable level stop the daemon before it starts,
    // naming the key.
    let dir = TempDir::new("logs-bad");
    for (section, key) in [
        ("[log]\nformat = \"xml\"\n", "log.format"),
        ("[log]\nlevel = \"omniroute=loud\"\n", "log.level"),
    ] {
        let path = dir.0.join("bad.toml");
        std::fs::write(&path, section).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_omniroute"))
            .arg("--config")
            .arg(&path)
            .arg("check-config")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(key), "{stderr}");
    }
}
