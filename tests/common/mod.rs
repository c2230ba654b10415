//! Shared test fixtures: a small hand-checked network, and builders for the
//! in-memory core driver and the actor engine.
#![allow(dead_code)]

pub mod cluster;
pub mod daemon;
pub mod relay;

use std::sync::Arc;

use omniroute::config::{Config, ValidConfig};
use omniroute::core::model::{FulfilmentMethod, LineRequest, NodeIdx, OrderRequest, ShipTo};
use omniroute::core::order::OrderRecord;
use omniroute::core::sim::LocalEngine;
use omniroute::engine::{Engine, EngineSettings, Image, ManualClock};

/// Five nodes around a customer at (50.0, 10.0) in market A.
/// Distances from the customer: ST-1 11 km, ST-2 33 km, WH-N 111 km,
/// WH-S 111 km, WH-B 286 km (market B).
/// Costs for one shipment there: WH-N 500+111*1.0=611, WH-S 300+111*0.5=355,
/// ST-1 800+11*2=822, ST-2 800+33*2=866, WH-B 1000+286*1=1286.
pub const NODES: &str = r#"
[engine]
shards = 2
routers = 2
expiry_tick_ms = 0

[[nodes]]
id = "WH-N"
kind = "warehouse"
lat = 51.0
lon = 10.0
market = "A"
capabilities = ["ship"]
daily_capacity = 100000
priority = 2
cost_base_cents = 500
cost_per_km_cents = 1.0
lead_time_minutes = 1440

[[nodes]]
id = "WH-S"
kind = "warehouse"
lat = 49.0
lon = 10.0
market = "A"
capabilities = ["ship"]
daily_capacity = 100000
priority = 1
cost_base_cents = 300
cost_per_km_cents = 0.5
lead_time_minutes = 2880

[[nodes]]
id = "ST-1"
kind = "store"
lat = 50.1
lon = 10.0
market = "A"
capabilities = ["pickup", "ship_from_store", "same_day"]
daily_capacity = 100000
priority = 3
cost_base_cents = 800
cost_per_km_cents = 2.0
lead_time_minutes = 120

[[nodes]]
id = "ST-2"
kind = "store"
lat = 50.3
lon = 10.0
market = "A"
capabilities = ["pickup", "ship_from_store"]
daily_capacity = 100000
priority = 3
cost_base_cents = 800
cost_per_km_cents = 2.0
lead_time_minutes = 60

[[nodes]]
id = "WH-B"
kind = "warehouse"
lat = 50.0
lon = 14.0
market = "B"
capabilities = ["ship"]
daily_capacity = 100000
priority = 5
cost_base_cents = 1000
cost_per_km_cents = 1.0
lead_time_minutes = 1440
"#;

pub const WH_N: NodeIdx = 0;
pub const WH_S: NodeIdx = 1;
pub const ST_1: NodeIdx = 2;
pub const ST_2: NodeIdx = 3;
pub const WH_B: NodeIdx = 4;
pub const NODE_IDS: [&str; 5] = ["WH-N", "WH-S", "ST-1", "ST-2", "WH-B"];

/// A channel named `name` with the given rules and no weights, so that
/// nothing but the rules (and the node index, last) decides.
pub fn channel(name: &str, rules: &[&str]) -> String {
    let rules: Vec<String> = rules.iter().map(|r| format!("{r:?}")).collect();
    format!(
        "[channels.{name}]\nrules = [{}]\nmax_shipments = 3\n[channels.{name}.weights]\ndistance_km = 0.0\n",
        rules.join(", ")
    )
}

/// `[[stock]]` entries: (sku, node id, on_hand).
pub fn stock(entries: &[(&str, &str, u32)]) -> String {
    entries
        .iter()
        .map(|(sku, node, qty)| {
            format!("[[stock]]\nsku = {sku:?}\nnode = {node:?}\non_hand = {qty}\n")
        })
        .collect()
}

pub fn config(extra: &str) -> ValidConfig {
    let text = format!("{NODES}\n{extra}");
    Config::from_toml(&text)
        .expect("test config parses")
        .validate()
        .expect("test config validates")
}

/// The in-memory core driver over `config`, stock loaded, at time 0.
pub fn local(config: &ValidConfig) -> LocalEngine {
    omniroute::sample::local_engine(config, 0)
}

/// The actor engine over `config`, stock loaded, with a clock at `now_ms`
/// that only the test moves.
pub async fn engine(
    config: &ValidConfig,
    settings: Option<EngineSettings>,
) -> (Engine, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let settings = settings.unwrap_or_else(|| config.engine.clone());
    let engine = Engine::start(&settings, config.network.clone(), clock.clone())
        .await
        .expect("engine starts");
    engine.load_stock(&config.stock).await.expect("stock loads");
    (engine, clock)
}

/// A ship order to the customer at (50.0, 10.0) in market A.
pub fn order(channel: &str, id: &str, lines: &[(&str, u32)]) -> OrderRequest {
    OrderRequest {
        channel: channel.into(),
        client_order_id: id.into(),
        lines: lines
            .iter()
            .map(|(sku, qty)| LineRequest {
                sku: (*sku).into(),
                qty: *qty,
            })
            .collect(),
        ship_to: ShipTo {
            lat: 50.0,
            lon: 10.0,
            market: Some("A".into()),
        },
        method: FulfilmentMethod::Ship,
        hold_ttl_ms: None,
    }
}

/// Tokens of the QUIC test config.
pub const ADMIN_TOKEN: &str = "test-admin-token";
pub const CHANNEL_C_TOKEN: &str = "test-channel-c";
pub const CHANNEL_WEB_TOKEN: &str = "test-channel-web";
pub const NODE_ST1_TOKEN: &str = "test-node-st-1";

/// A `[server]` section for tests: an ephemeral port on loopback, a fresh
/// data directory, and one token per role.
pub fn server_section(data_dir: &std::path::Path) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\nmax_inflight_per_connection = 16384\n\
         [[server.tokens]]\ntoken = \"{ADMIN_TOKEN}\"\nrole = \"admin\"\n\
         [[server.tokens]]\ntoken = \"{CHANNEL_C_TOKEN}\"\nrole = \"channel:c\"\n\
         [[server.tokens]]\ntoken = \"{CHANNEL_WEB_TOKEN}\"\nrole = \"channel:web\"\n\
         [[server.tokens]]\ntoken = \"{NODE_ST1_TOKEN}\"\nrole = \"node:ST-1\"\n",
        data_dir.display().to_string()
    )
}

/// Writes the fixture network, channels web and c (nearest first) and
/// web's stock, with the test tokens, as a config file in `dir` (for the
/// daemon binary, whose data directory is `dir/data`).
pub fn web_config_file(dir: &TempDir) -> std::path::PathBuf {
    let path = dir.0.join("omniroute.toml");
    let text = format!(
        "{NODES}\n{}{}{}{}",
        server_section(&dir.0.join("data")),
        channel("web", &["nearest"]),
        channel("c", &["nearest"]),
        stock(&[
            ("SKU-1", "ST-1", 4),
            ("SKU-1", "WH-N", 6),
            ("SKU-1", "WH-S", 20)
        ])
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A fresh directory under the system temp dir, removed by the caller's
/// `TempDir` guard.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let unique = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!(
            "omniroute-test-{name}-{}-{unique}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The engine and the QUIC server over the fixture network plus `extra`.
pub async fn quic_server(extra: &str, dir: &TempDir) -> (Engine, omniroute::server::RunningServer) {
    let config = config(&format!("{}\n{extra}", server_section(&dir.0)));
    let (engine, _) = engine(&config, None).await;
    let server = omniroute::server::start(engine.clone(), &config.server)
        .await
        .expect("server starts");
    (engine, server)
}

/// A client for `server` with `token`, trusting the server's own certificate.
pub async fn client(
    server: &omniroute::server::RunningServer,
    token: &str,
) -> omniroute_client::Client {
    let trust = omniroute_client::Trust::CaFile(server.cert_path.clone());
    omniroute_client::Client::connect(server.addr, "localhost", trust, token)
        .await
        .expect("client connects")
}

/// A journal directory's segment files, oldest first (a prepared spare is
/// not one).
pub fn journal_segments(journal: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut paths: Vec<_> = std::fs::read_dir(journal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    paths.sort();
    paths
}

/// One router's book from [`snapshot_in_memory`]: the chunks it streamed.
pub struct Book {
    pub router: usize,
    pub lsn: u64,
    pub chunks: Vec<(u32, rkyv::util::AlignedVec)>,
}

impl Book {
    /// The orders, read back from the chunks in order.
    pub fn orders(&self) -> Vec<omniroute::core::order::OrderRecord> {
        self.chunks
            .iter()
            .flat_map(|(_, bytes)| {
                rkyv::from_bytes::<Vec<omniroute::core::order::OrderRecord>, rkyv::rancor::Error>(
                    bytes,
                )
                .expect("a chunk decodes")
            })
            .collect()
    }
}

/// A snapshot of `engine` kept in memory: every image, and each router's
/// book (by router) as the routers streamed it while imaging.
pub async fn snapshot_in_memory(
    engine: &Engine,
) -> (Vec<(u64, omniroute::engine::Image)>, Vec<Book>) {
    let (sink, parts) = omniroute::engine::book_channel();
    // The queue is bounded: it must be drained while the routers image.
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        while let Some(part) = parts.recv() {
            got.push(part);
        }
        got
    });
    let images: Vec<_> = engine
        .take_snapshot(sink)
        .await
        .expect("images")
        .into_iter()
        .map(|(lsn, imaged)| (lsn, imaged.settle()))
        .collect();
    let parts = reader.join().expect("book reader");
    let books = images
        .iter()
        .filter_map(|(lsn, image)| match image {
            omniroute::engine::Image::Router(router) => Some(Book {
                router: *router,
                lsn: *lsn,
                chunks: parts
                    .iter()
                    .filter(|part| part.router == *router)
                    .map(|part| (part.orders, part.bytes.clone()))
                    .collect(),
            }),
            _ => None,
        })
        .collect();
    (images, books)
}

/// Rewrites the data directory `dir` as a build of format 2 left it: each
/// journal segment's records in that format's encoding (`record_v2`), the
/// zero-filled rest of a prepared segment kept to the file's length, and
/// `names.toml` stating format 2. Snapshots and the names file were the
/// same in format 2: format 3 changed only the record's header.
pub fn downgrade_to_format_2(dir: &std::path::Path) {
    use omniroute::journal::{record, record_v2};
    for segment in journal_segments(&dir.join("journal")) {
        let bytes = std::fs::read(&segment).unwrap();
        let scan = omniroute::journal::scan_segment(&bytes, None);
        // Format 2 had no seals: the seal is left out with the header.
        assert!(
            matches!(scan.end, record::End::Clean | record::End::Sealed { .. }),
            "{}: {:?}",
            segment.display(),
            scan.end
        );
        let mut old = Vec::with_capacity(bytes.len());
        for found in &scan.records {
            record_v2::encode(
                found.kind,
                found.lsn,
                &bytes[found.payload.clone()],
                &mut old,
            );
        }
        let records_end = scan.records.last().map_or(0, |r| r.payload.end);
        if bytes.len() > records_end {
            // A prepared segment: zeros to its end, as the writer found it.
            old.resize(bytes.len(), 0);
        }
        std::fs::write(&segment, old).unwrap();
    }
    let names = dir.join("names.toml");
    let text = std::fs::read_to_string(&names).unwrap();
    let current = format!("format_version = {}\n", omniroute::schema::FORMAT_VERSION);
    assert!(text.contains(&current), "{text}");
    std::fs::write(&names, text.replacen(&current, "format_version = 2\n", 1)).unwrap();
}

/// The format version `dir`'s names file states.
pub fn format_version(dir: &std::path::Path) -> u32 {
    let text = std::fs::read_to_string(dir.join("names.toml")).unwrap();
    omniroute::schema::format_version_of(&text).unwrap()
}

/// Every actor's state (as a snapshot would hold it), for comparing two
/// recoveries: the LSN labels are left out, and each router's book is read
/// back from the chunks it streamed.
pub async fn state_of(engine: &Engine) -> (Vec<Image>, Vec<(usize, Vec<OrderRecord>)>) {
    let (images, books) = snapshot_in_memory(engine).await;
    let mut images: Vec<Image> = images.into_iter().map(|(_, image)| image).collect();
    images.sort_by_key(|image| match image {
        Image::Catalog(_) => (0, 0),
        Image::Shard(s, _) => (1, *s as usize),
        Image::Node(n, _) => (2, *n as usize),
        Image::Router(r) => (3, *r),
        Image::Feed(_) => (4, 0),
    });
    let mut books: Vec<_> = books.iter().map(|b| (b.router, b.orders())).collect();
    books.sort_by_key(|(router, _)| *router);
    (images, books)
}

/// The embedded default config with each `(from, to)` replaced once,
/// written to `dir/name`. Panics if a `from` is not in it: a test must not
/// fall back to the defaults silently when the embedded config changes.
pub fn embedded_config_with(
    dir: &std::path::Path,
    name: &str,
    replacements: &[(&str, String)],
) -> std::path::PathBuf {
    let mut text = omniroute::config::DEFAULT_CONFIG_TOML.to_string();
    for (from, to) in replacements {
        assert!(text.contains(from), "the embedded config has no {from:?}");
        text = text.replacen(from, to, 1);
    }
    let path = dir.join(name);
    std::fs::write(&path, text).expect("config written");
    path
}
