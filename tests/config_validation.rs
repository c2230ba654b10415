//! `Config::validate` turns each bad setting into one message naming its key.

mod common;

use omniroute::config::{Config, ConfigError};

fn error_for(extra: &str) -> ConfigError {
    let text = format!("{}\n{extra}", common::NODES);
    match Config::from_toml(&text) {
        Err(e) => e,
        Ok(config) => config.validate().expect_err("config should be refused"),
    }
}

fn key_of(error: &ConfigError) -> &str {
    match error {
        ConfigError::Invalid { key, .. } => key,
        ConfigError::Parse(message) => {
            panic!("expected a validation error, got parse error {message}")
        }
    }
}

#[test]
fn each_bad_setting_names_its_key() {
    // Proves a bad value anywhere is reported with the exact key that holds it.
    let cases = [
        (
            "[channels.web]\nrules = [\"nearst\"]\n",
            "channels.web.rules[0]",
        ),
        (
            "[channels.web]\nrules = [\"nearest\", \"nearest\"]\n",
            "channels.web.rules[1]",
        ),
        (
            "[channels.web]\nrules = []\nmax_shipments = 0\n",
            "channels.web.max_shipments",
        ),
        (
            "[channels.web]\nrules = []\non_short = \"maybe\"\n",
            "channels.web.on_short",
        ),
        (
            "[channels.web]\nrules = []\nhold_ttl_ms = 0\n",
            "channels.web.hold_ttl_ms",
        ),
        (
            "[channels.web]\nrules = []\n[channels.web.filters]\nmax_distance_km = -5.0\n",
            "channels.web.filters.max_distance_km",
        ),
        (
            "[channels.web]\nrules = []\n[channels.web.weights]\ncost_cents = -1.0\n",
            "channels.web.weights.cost_cents",
        ),
        (
            "[channels.web]\nrules = []\n[[stock]]\nsku = \"A\"\nnode = \"NOPE\"\non_hand = 1\n",
            "stock[0].node",
        ),
        ("", "channels"),
    ];
    for (extra, key) in cases {
        let error = error_for(extra);
        assert_eq!(key_of(&error), key, "{error}");
        assert!(
            error.to_string().contains(key),
            "message {error} should name {key}"
        );
    }
}

#[test]
fn bad_nodes_and_engine_sizes_name_their_key() {
    // Proves node and engine settings are checked one by one with the key named.
    let base = common::NODES
        .replace("expiry_tick_ms = 0", "expiry_tick_ms = 0\nshards = 0")
        .replacen("shards = 2\n", "", 1);
    let text = format!("{base}\n[channels.web]\nrules = []\n");
    assert_eq!(
        key_of(&Config::from_toml(&text).unwrap().validate().unwrap_err()),
        "engine.shards"
    );
    let channel = "[channels.web]\nrules = []\n";
    let node_cases = [
        ("lat = 51.0", "lat = 95.0", "nodes[0].lat"),
        ("kind = \"store\"", "kind = \"shop\"", "nodes[2].kind"),
        (
            "capabilities = [\"ship\"]",
            "capabilities = [\"fly\"]",
            "nodes[0].capabilities[0]",
        ),
        (
            "daily_capacity = 100000",
            "daily_capacity = 0",
            "nodes[0].daily_capacity",
        ),
        ("id = \"WH-S\"", "id = \"WH-N\"", "nodes[1].id"),
    ];
    for (from, to, key) in node_cases {
        let text = format!("{}\n{channel}", common::NODES.replacen(from, to, 1));
        let error = Config::from_toml(&text).unwrap().validate().unwrap_err();
        assert_eq!(key_of(&error), key, "{error}");
    }
}

#[test]
fn unknown_keys_are_refused_at_parse() {
    // Proves a misspelt key is an error rather than silently ignored.
    let error = Config::from_toml("[engine]\nshardz = 4\n").unwrap_err();
    assert!(
        matches!(&error, ConfigError::Parse(m) if m.contains("shardz")),
        "{error}"
    );
}
