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

/// Runs the daemon on `dir` (with `config`, or the embedded one) to its
/// end: (exit success, stderr). For starts that are refused at once.
async fn run_to_end(dir: &Path, config: Option<&Path>) -> (bool, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_omniroute"));
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    let run = command
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0", "--admin", "off", "--http", "off"])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(REFUSAL_TIMEOUT_S), run)
        .await
        .expect("a refused start exits at once")
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
    let (succeeded, stderr) = run_to_end(&dir.0, None).await;
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

const ADMIN: &str = "dev-admin-token";
/// A channel whose name sorts before every other, added after orders exist.
const CHANNEL_FIRST: &str = "\n[channels.aaa]\nrules = [\"nearest\"]\nmax_shipments = 3\n";
/// A store opened after orders exist.
const NEW_NODE: &str = "ST-DE-NEW";
const NEW_NODE_BLOCK: &str = "\n[[nodes]]\nid = \"ST-DE-NEW\"\nname = \"Berlin pop-up\"\nkind = \"store\"\nlat = 52.5\nlon = 13.4\nmarket = \"DE\"\ncapabilities = [\"ship\", \"pickup\"]\ndaily_capacity = 100\npriority = 1\ncost_base_cents = 100\ncost_per_km_cents = 0.1\nlead_time_minutes = 60\n";
/// A SKU only the new store will stock.
const NEW_SKU: &str = "SKU-POPUP";
/// SKUs the orders of these tests buy.
const SKUS: usize = 30;

/// The embedded default config, edited.
struct ConfigText(String);

impl ConfigText {
    fn default_config() -> ConfigText {
        ConfigText(omniroute::config::DEFAULT_CONFIG_TOML.to_string())
    }

    fn with(&self, extra: &str) -> ConfigText {
        ConfigText(format!("{}{extra}", self.0))
    }

    fn without(&self, part: &str) -> ConfigText {
        assert!(self.0.contains(part));
        ConfigText(self.0.replacen(part, "", 1))
    }

    /// The `[[nodes]]` entries in reverse order (they end the file).
    fn nodes_reversed(&self) -> ConfigText {
        let mut parts: Vec<&str> = self.0.split("\n[[nodes]]\n").collect();
        let head = parts.remove(0);
        parts.reverse();
        let nodes: Vec<String> = parts
            .iter()
            .map(|p| format!("\n[[nodes]]\n{}\n", p.trim_end()))
            .collect();
        ConfigText(format!("{head}{}", nodes.concat()))
    }

    fn engine(&self, shards: u32, routers: u32) -> ConfigText {
        let text = self
            .0
            .lines()
            .map(|line| {
                if line.starts_with("shards = ") {
                    format!("shards = {shards}")
                } else if line.starts_with("routers = ") {
                    format!("routers = {routers}")
                } else {
                    line.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        ConfigText(text)
    }

    fn write(&self, dir: &Path, name: &str) -> std::path::PathBuf {
        let path = dir.join(format!("config-{name}.toml"));
        std::fs::write(&path, &self.0).unwrap();
        path
    }
}

fn order_on(channel: &str, id: &str, sku: &str, qty: u32) -> Order {
    Order {
        channel: channel.into(),
        ..order(id, sku, qty)
    }
}

fn key_on(channel: &str, id: &str) -> OrderKey {
    OrderKey {
        channel: channel.into(),
        client_order_id: id.into(),
    }
}

/// An allocation as a client sees it: (sku, node, open, shipped).
type Held = (String, String, u32, u32);

/// What the directory holds, as a client sees it: every order of `keys`
/// (id, state, allocations by node name) and every SKU's ATP per node.
#[derive(Debug, PartialEq)]
struct Seen {
    orders: Vec<(u64, u8, Vec<Held>)>,
    stock: Vec<(String, Vec<(String, u32)>)>,
}

async fn seen(client: &omniroute_client::Client, keys: &[OrderKey]) -> Seen {
    let mut orders = Vec::new();
    for key in keys {
        let view = client.get_order(key.clone()).await.expect("a stored order");
        let mut allocations: Vec<_> = view
            .allocations
            .iter()
            .map(|a| (a.sku.clone(), a.node.clone(), a.open, a.shipped))
            .collect();
        allocations.sort();
        orders.push((view.order_id, view.state, allocations));
    }
    let mut stock = Vec::new();
    for sku in (1..=SKUS)
        .map(|i| format!("SKU-{i}"))
        .chain([NEW_SKU.to_string()])
    {
        // The new store's SKU is unknown until it is stocked: no nodes.
        let listed = client.availability(&sku, None).await;
        let listed = if sku == NEW_SKU {
            listed.unwrap_or_default()
        } else {
            listed.unwrap()
        };
        let mut nodes: Vec<(String, u32)> = listed.into_iter().map(|n| (n.node, n.atp)).collect();
        nodes.sort();
        stock.push((sku, nodes));
    }
    Seen { orders, stock }
}

/// Starts on `config`, checks the directory still holds `expected` and that
/// resubmitting the first order is answered with its id, changing nothing.
async fn start_and_check(
    dir: &Path,
    config: &Path,
    keys: &[OrderKey],
    expected: &Seen,
    step: &str,
) -> (Daemon, omniroute_client::Client) {
    let daemon = Daemon::start(dir, Some(config), "off").await;
    let admin = daemon.client(ADMIN).await;
    assert_eq!(&seen(&admin, keys).await, expected, "after {step}");
    let again = admin.submit(order("o-0", "SKU-1", 1)).await.unwrap();
    let Decision::Routed { order_id, .. } = again else {
        panic!("the resubmission after {step} is answered as routed: {again:?}");
    };
    assert_eq!(
        order_id, expected.orders[0].0,
        "the same order after {step}"
    );
    assert_eq!(
        &seen(&admin, keys).await,
        expected,
        "resubmitted after {step}"
    );
    (daemon, admin)
}

/// Stops `daemon` by SIGTERM (a final snapshot) or kill -9 (the journal).
async fn stop(mut daemon: Daemon, client: omniroute_client::Client, gracefully: bool) {
    client.close().await;
    if gracefully {
        let status = daemon.terminate().await;
        assert!(status.success(), "{status}");
    } else {
        daemon.child.kill().await.unwrap();
    }
}

/// The stderr of a start on `dir` with `config` that must be refused.
async fn refused_start(dir: &Path, config: &Path) -> String {
    let (succeeded, stderr) = run_to_end(dir, Some(config)).await;
    assert!(!succeeded, "the start must be refused: {stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_orders_keep_their_meaning_while_the_config_changes_around_them() {
    // Proves that across restarts on one data directory (some after a SIGTERM, some after a
    // kill -9) with a channel added that sorts first, the nodes reordered, a store added,
    // and the shard and router counts changed twice, every stored order is found with the
    // same id and allocations, a resubmission is answered with the stored order and
    // reserves nothing, and every SKU's availability is unchanged; and that the added store
    // takes stock and orders.
    let dir = TempDir::new("dir-config-changes");
    let base = ConfigText::default_config();
    let daemon = Daemon::start(&dir.0, Some(&base.write(&dir.0, "base")), "off").await;
    let admin = daemon.client(ADMIN).await;
    let mut keys = Vec::new();
    for i in 0..40 {
        let id = format!("o-{i}");
        let sku = format!("SKU-{}", 1 + i % SKUS);
        let decision = admin
            .submit(order(&id, &sku, 1 + (i % 2) as u32))
            .await
            .unwrap();
        assert!(
            matches!(decision, Decision::Routed { .. }),
            "{id}: {decision:?}"
        );
        if i % 3 == 0 {
            admin.confirm(key(&id)).await.unwrap();
        }
        keys.push(key(&id));
    }
    let mut expected = seen(&admin, &keys).await;
    stop(daemon, admin, false).await;

    let with_channel = base.with(CHANNEL_FIRST);
    let reordered = with_channel.nodes_reversed();
    for (config, name, step, gracefully) in [
        (
            &with_channel,
            "channel",
            "a channel that sorts first was added",
            true,
        ),
        (&reordered, "reordered", "the nodes were reordered", false),
    ] {
        let path = config.write(&dir.0, name);
        let (daemon, admin) = start_and_check(&dir.0, &path, &keys, &expected, step).await;
        stop(daemon, admin, gracefully).await;
    }

    let grown = reordered.with(NEW_NODE_BLOCK);
    let (daemon, admin) = start_and_check(
        &dir.0,
        &grown.write(&dir.0, "grown"),
        &keys,
        &expected,
        "a store was added",
    )
    .await;
    let set = omniroute_protocol::StockSet {
        sku: NEW_SKU.into(),
        node: NEW_NODE.into(),
        on_hand: 5,
        safety_stock: Some(0),
    };
    assert_eq!(admin.stock_set(vec![set]).await.unwrap().0, 1);
    let decision = admin.submit(order("n-1", NEW_SKU, 2)).await.unwrap();
    let Decision::Routed { allocations, .. } = &decision else {
        panic!("an order for the new store's SKU routes: {decision:?}");
    };
    assert!(
        allocations.iter().all(|a| a.node == NEW_NODE),
        "{decision:?}"
    );
    keys.push(key("n-1"));
    expected = seen(&admin, &keys).await;
    stop(daemon, admin, true).await;

    for (shards, routers, gracefully) in [(3, 2, true), (5, 3, false), (4, 4, true)] {
        let relaid = grown.engine(shards, routers);
        let (daemon, admin) = start_and_check(
            &dir.0,
            &relaid.write(&dir.0, &format!("layout-{shards}-{routers}")),
            &keys,
            &expected,
            &format!("shards and routers became {shards} and {routers}"),
        )
        .await;
        // Orders taken under the new layout are found after the next start too.
        let id = format!("l-{shards}-{routers}");
        admin.submit(order(&id, "SKU-7", 1)).await.unwrap();
        keys.push(key(&id));
        expected = seen(&admin, &keys).await;
        stop(daemon, admin, gracefully).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_or_channel_with_open_work_cannot_be_retired_and_one_without_can() {
    // Proves a start whose config drops a store that still has an open allocation and units
    // on hand, or a channel that still has an open order, is refused naming it and what it
    // has, with the directory untouched; and that once the store's order is cancelled and
    // its count is zero (and the channel's order cancelled) the same config starts, with the
    // closed orders still readable.
    let dir = TempDir::new("dir-retire");
    // The store joins after the first start, so the sample stock has none of it.
    let first = ConfigText::default_config().with(CHANNEL_FIRST);
    let daemon = Daemon::start(&dir.0, Some(&first.write(&dir.0, "first")), "off").await;
    let admin = daemon.client(ADMIN).await;
    let routed = admin
        .submit(order_on("aaa", "a-1", "SKU-2", 1))
        .await
        .unwrap();
    assert!(matches!(routed, Decision::Routed { .. }), "{routed:?}");
    stop(daemon, admin, false).await;
    let full = first.with(NEW_NODE_BLOCK);
    let full_path = full.write(&dir.0, "full");
    let daemon = Daemon::start(&dir.0, Some(&full_path), "off").await;
    let admin = daemon.client(ADMIN).await;
    let set = |on_hand| omniroute_protocol::StockSet {
        sku: NEW_SKU.into(),
        node: NEW_NODE.into(),
        on_hand,
        safety_stock: Some(0),
    };
    admin.stock_set(vec![set(5)]).await.unwrap();
    let routed = admin.submit(order("n-1", NEW_SKU, 2)).await.unwrap();
    assert!(matches!(routed, Decision::Routed { .. }), "{routed:?}");
    stop(daemon, admin, true).await;

    let no_store = full.without(NEW_NODE_BLOCK).write(&dir.0, "no-store");
    let refused = refused_start(&dir.0, &no_store).await;
    assert!(
        refused.contains("node ST-DE-NEW")
            && refused.contains("1 open allocations and 5 units on hand"),
        "{refused}"
    );
    let no_channel = full.without(CHANNEL_FIRST).write(&dir.0, "no-channel");
    let refused = refused_start(&dir.0, &no_channel).await;
    assert!(
        refused.contains("channel aaa") && refused.contains("1 open orders"),
        "{refused}"
    );

    let daemon = Daemon::start(&dir.0, Some(&full_path), "off").await;
    let admin = daemon.client(ADMIN).await;
    admin.cancel(key("n-1")).await.unwrap();
    admin.cancel(key_on("aaa", "a-1")).await.unwrap();
    admin.stock_set(vec![set(0)]).await.unwrap();
    stop(daemon, admin, false).await;

    let retired = full
        .without(NEW_NODE_BLOCK)
        .without(CHANNEL_FIRST)
        .write(&dir.0, "retired");
    let daemon = Daemon::start(&dir.0, Some(&retired), "off").await;
    let admin = daemon.client(ADMIN).await;
    let view = admin.get_order(key("n-1")).await.unwrap();
    assert!(
        view.allocations
            .iter()
            .all(|a| a.node == NEW_NODE && a.open == 0),
        "{view:?}"
    );
    let stock = admin.stock_set(vec![set(1)]).await;
    assert!(
        !matches!(stock, Ok((1, _, 0))),
        "a retired store takes no stock: {stock:?}"
    );
    stop(daemon, admin, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_of_another_format_version_is_refused_saying_what_to_do() {
    // Proves a data directory whose names file states a newer format version, or one of
    // format 0 (a layout file, no names), is refused with a message naming the version and
    // what to do, and left as it was.
    let config = ConfigText::default_config();
    let newer = TempDir::new("dir-format-newer");
    let text = format!(
        "format_version = {}\nchannels = []\nmarkets = []\nnodes = []\n",
        omniroute::schema::FORMAT_VERSION + 1
    );
    std::fs::write(newer.0.join("names.toml"), &text).unwrap();
    let refused = refused_start(&newer.0, &config.write(&newer.0, "base")).await;
    assert!(refused.contains("is newer than this build's"), "{refused}");
    assert_eq!(
        std::fs::read_to_string(newer.0.join("names.toml")).unwrap(),
        text
    );
    let older = TempDir::new("dir-format-0");
    std::fs::write(
        older.0.join("layout"),
        "shards=4\nrouters=4\nnodes=WH-DE-HAM\n",
    )
    .unwrap();
    let refused = refused_start(&older.0, &config.write(&older.0, "base")).await;
    assert!(
        refused.contains("format version 0 is older") && refused.contains("new data directory"),
        "{refused}"
    );
    assert!(!older.0.join("names.toml").exists());
}
