//! The config file: parsed from TOML, then `validate`d into the engine's
//! settings, the network and the initial stock. Every bad setting becomes
//! one message naming its key, before anything starts.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rand::{Rng, SeedableRng};
use serde::Deserialize;

use crate::core::book::MAX_ROUTERS;
use crate::core::geo::GeoPoint;
use crate::core::model::{Capabilities, NodeKind};
use crate::core::network::{Channel, Network};
use crate::core::policy::{Filters, OnShort, Policy, Rule, Weights};
use crate::engine::{EngineSettings, StockUpdate};
use crate::journal::Durability;
use crate::store::{StoreSettings, MAX_FAULT_LINGER_MS};

/// Smallest journal segment the config accepts: smaller ones would mean a
/// new file (and a directory fsync) every few commits.
pub const MIN_SEGMENT_BYTES: u64 = 1 << 20;
use crate::http::HttpLimits;
use crate::limits::{
    MAX_HOLD_TTL_MS, MAX_HTTP_CONNECTIONS, MAX_HTTP_SHUTDOWN_GRACE_MS, MAX_HTTP_TIMEOUT_MS,
    MAX_ID_BYTES, MAX_NODES, MAX_ORDER_RETENTION_MS, MAX_RULES, MAX_SHIPMENTS_PER_ORDER, MAX_SKUS,
    MIN_HTTP_TIMEOUT_MS,
};
use crate::server::{Role, ServerSettings, MAX_CONNECTIONS, MAX_WORKER_THREADS};

mod cluster;
pub use cluster::{
    ClusterConfig, ClusterSettings, ReplicaConfig, DEFAULT_LAGGARD_HOLD_ENTRIES,
    DEFAULT_LOG_HOLD_ENTRIES, MAX_REPLICAS,
};

/// The config the daemon runs on when given none: a sample network of 60
/// nodes in four markets and 10 000 generated SKUs.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../config/default.toml");

/// Shards beyond this gain nothing on any machine we target and cost memory.
pub const MAX_SHARDS: u32 = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("config does not parse: {0}")]
    Parse(String),
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub engine: EngineConfig,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub journal: JournalConfig,
    #[serde(default)]
    pub orders: OrdersConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub nodes: Vec<NodeConfig>,
    #[serde(default)]
    pub channels: BTreeMap<String, ChannelConfig>,
    #[serde(default)]
    pub stock: Vec<StockConfig>,
    pub sample_stock: Option<SampleStockConfig>,
    /// Replication: this replica and its peers (none: a single node).
    pub cluster: Option<ClusterConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    pub shards: u32,
    pub routers: u32,
    pub max_skus: usize,
    pub max_inflight: u32,
    pub expiry_tick_ms: u64,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        let d = EngineSettings::default();
        EngineConfig {
            shards: d.shards,
            routers: d.routers,
            max_skus: d.max_skus,
            max_inflight: d.max_inflight,
            expiry_tick_ms: d.expiry_tick_ms,
        }
    }
}

/// `[orders]`: how long closed orders are kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrdersConfig {
    /// A closed order (shipped, cancelled, expired) stays in memory this
    /// long, and a resubmission of its key gets its decision; after it,
    /// the order is archived and its key is free.
    pub retention_ms: u64,
}

impl Default for OrdersConfig {
    fn default() -> OrdersConfig {
        OrdersConfig {
            retention_ms: crate::limits::DEFAULT_ORDER_RETENTION_MS,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter: a level ("info") or directives
    /// ("warn,omniroute=debug"). `RUST_LOG`, when set, wins.
    pub level: String,
    /// "human" (default) or "json" (one JSON object per line).
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            level: "info".into(),
            format: "human".into(),
        }
    }
}

/// How the daemon logs, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    pub level: String,
    pub json: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    /// "fsync" (default): answered after the fsync that covers the change.
    /// "none": answered after the write only, for benchmarks.
    pub durability: String,
    pub segment_bytes: u64,
    pub snapshot_interval_ms: u64,
    pub snapshot_every_records: u64,
    /// Keep segments a snapshot has passed (for `omniroute replay`).
    pub keep_segments: bool,
    /// After a storage fault, answer `Unavailable` and 503 this long, then stop.
    pub fault_linger_ms: u64,
    /// Rejected orders journaled as demand (for `omniroute replay`) per
    /// second at most; past it they are only counted.
    pub max_demand_orders_per_s: u64,
}

impl Default for JournalConfig {
    fn default() -> JournalConfig {
        let d = StoreSettings::default();
        JournalConfig {
            durability: "fsync".into(),
            segment_bytes: d.segment_bytes,
            snapshot_interval_ms: d.snapshot_interval_ms,
            snapshot_every_records: d.snapshot_every_records,
            keep_segments: d.keep_segments,
            fault_linger_ms: d.fault_linger_ms,
            max_demand_orders_per_s: crate::limits::DEFAULT_MAX_DEMAND_ORDERS_PER_S,
        }
    }
}

/// `[admin]`: the HTTP port of metrics, health and policy reload. It
/// takes `[http]`'s timeouts and grace.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address to bind, or "off".
    pub listen: String,
    /// Connections served at once; the next ones get a 503.
    pub max_connections: usize,
}

impl Default for AdminConfig {
    fn default() -> AdminConfig {
        AdminConfig {
            listen: DEFAULT_ADMIN_LISTEN.into(),
            max_connections: DEFAULT_ADMIN_MAX_CONNECTIONS,
        }
    }
}

/// A scraper, an orchestrator's probes and an operator's curl need a few
/// connections; 64 leave room for many of each and bound what a runaway
/// script can hold.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 64;

pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";

/// `[http]`: the HTTP/JSON gateway's port, and the bounds of every
/// client of both HTTP ports (see [`HttpLimits`] for the defaults' reasons).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address to bind, or "off" (the default: a config turns it on).
    pub listen: String,
    /// Gateway connections served at once; the next ones get a 503.
    pub max_connections: usize,
    /// A request head must be whole this long after its first byte.
    pub header_read_timeout_ms: u64,
    /// A request body must be whole this long after its head (else 408).
    pub body_read_timeout_ms: u64,
    /// A connection on which no byte moves either way is closed after this.
    pub idle_timeout_ms: u64,
    /// A stop closes the connections still open after this.
    pub shutdown_grace_ms: u64,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        let d = HttpLimits::default();
        HttpConfig {
            listen: "off".into(),
            max_connections: d.max_connections,
            header_read_timeout_ms: d.header_read_timeout_ms,
            body_read_timeout_ms: d.body_read_timeout_ms,
            idle_timeout_ms: d.idle_timeout_ms,
            shutdown_grace_ms: d.shutdown_grace_ms,
        }
    }
}

/// A listen setting (admin, HTTP) that is neither an address nor "off".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an address like 127.0.0.1:9090, or \"off\"")]
pub struct BadListen(pub String);

/// Parses a listen setting (admin, HTTP): an address, or "off".
pub fn parse_listen(text: &str) -> Result<Option<std::net::SocketAddr>, BadListen> {
    if text == "off" {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| BadListen(text.to_string()))
}

/// A config file as the daemon read it at start: a reload reads the path
/// again and names what changed since this text.
#[derive(Clone)]
pub struct ConfigSource {
    pub path: PathBuf,
    pub text: String,
}

/// What a reload puts in force, validated with the whole file: the
/// network with the channels' routing policies (resolved, in the file's
/// order; the policies also as TOML for the journal) and the token table.
pub struct Policies {
    pub network: Network,
    pub toml: String,
    pub tokens: Vec<(String, Role)>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the QUIC endpoint binds.
    pub listen: String,
    /// Where the self-signed certificate (and, later, the journal) live.
    pub data_dir: String,
    pub cert_path: Option<String>,
    pub key_path: Option<String>,
    pub max_connections: usize,
    pub max_inflight_per_connection: usize,
    pub max_streams_per_connection: u32,
    /// Threads of the async runtime (ingress, actors, gateway); 0: one
    /// fewer than the CPUs, at least one, so that the journal writer and
    /// the kernel's network work keep a core.
    pub worker_threads: usize,
    pub tokens: Vec<TokenConfig>,
    // ---- Before authentication (see `limits`: the QUIC ingress) ----
    /// A connection without a successful `Hello` this long after it
    /// arrived is closed with `NO_HELLO`.
    pub hello_timeout_ms: u64,
    /// Connections without a successful `Hello` served at once, counted
    /// apart from `max_connections` so that they never crowd out clients
    /// with tokens; one more closes the oldest of them.
    pub max_unauthenticated_connections: usize,
    // ---- end: before authentication ----
}

/// The data directory when neither the config nor `--data-dir` names one,
/// relative to the daemon's working directory.
pub const DEFAULT_DATA_DIR: &str = "omniroute-data";

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            listen: "127.0.0.1:4433".into(),
            data_dir: DEFAULT_DATA_DIR.into(),
            cert_path: None,
            key_path: None,
            max_connections: 1024,
            max_inflight_per_connection: 16_384,
            max_streams_per_connection: 256,
            worker_threads: 0,
            tokens: Vec::new(),
            hello_timeout_ms: DEFAULT_HELLO_TIMEOUT_MS,
            max_unauthenticated_connections: 1024,
        }
    }
}

/// `server.hello_timeout_ms` by default: ten round trips of a slow mobile
/// link and a TLS handshake, several times what an honest client needs.
pub const DEFAULT_HELLO_TIMEOUT_MS: u64 = 10_000;

/// The longest `server.hello_timeout_ms`: the transport's idle timeout,
/// which would close a silent connection anyway.
pub const MAX_HELLO_TIMEOUT_MS: u64 = 60_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub token: String,
    /// `admin`, `channel:<name>` or `node:<id>`.
    pub role: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub kind: String,
    pub lat: f64,
    pub lon: f64,
    pub market: String,
    pub capabilities: Vec<String>,
    pub daily_capacity: u32,
    #[serde(default = "default_priority")]
    pub priority: u32,
    #[serde(default)]
    pub cost_base_cents: u32,
    #[serde(default)]
    pub cost_per_km_cents: f64,
    #[serde(default)]
    pub lead_time_minutes: u32,
    #[serde(default = "default_true")]
    pub online: bool,
}

fn default_priority() -> u32 {
    100
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    pub rules: Vec<String>,
    #[serde(default = "default_max_shipments")]
    pub max_shipments: u8,
    #[serde(default = "default_on_short")]
    pub on_short: String,
    #[serde(default = "default_hold_ttl_ms")]
    pub hold_ttl_ms: u64,
    #[serde(default)]
    pub filters: FiltersConfig,
    #[serde(default)]
    pub weights: WeightsConfig,
}

fn default_max_shipments() -> u8 {
    3
}

fn default_on_short() -> String {
    "reject".into()
}

fn default_hold_ttl_ms() -> u64 {
    15 * 60 * 1000
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FiltersConfig {
    pub same_market: bool,
    pub max_distance_km: Option<f64>,
    pub same_day_max_km: f64,
    pub pickup_alternatives: bool,
}

impl Default for FiltersConfig {
    fn default() -> FiltersConfig {
        FiltersConfig {
            same_market: false,
            max_distance_km: None,
            same_day_max_km: 50.0,
            pickup_alternatives: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WeightsConfig {
    pub distance_km: f64,
    pub cost_cents: f64,
    pub lead_time_minutes: f64,
}

impl Default for WeightsConfig {
    fn default() -> WeightsConfig {
        WeightsConfig {
            distance_km: 1.0,
            cost_cents: 0.0,
            lead_time_minutes: 0.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StockConfig {
    pub sku: String,
    pub node: String,
    pub on_hand: u32,
    #[serde(default)]
    pub safety_stock: u32,
}

/// Generated stock for demos and benchmarks: every SKU `prefix1..=prefixN`
/// stocked at a random share of the nodes, reproducible from the seed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleStockConfig {
    pub skus: usize,
    #[serde(default = "default_sku_prefix")]
    pub sku_prefix: String,
    #[serde(default)]
    pub seed: u64,
}

fn default_sku_prefix() -> String {
    "SKU-".into()
}

/// A validated config, ready to start an engine with.
#[derive(Debug, Clone)]
pub struct ValidConfig {
    /// The admin HTTP port; None when "off".
    pub admin: Option<std::net::SocketAddr>,
    /// The HTTP/JSON gateway's port; None when "off".
    pub http: Option<std::net::SocketAddr>,
    /// How the gateway bounds its clients.
    pub http_limits: HttpLimits,
    /// How the admin port bounds its clients.
    pub admin_limits: HttpLimits,
    pub engine: EngineSettings,
    pub server: ServerSettings,
    pub store: StoreSettings,
    pub log: LogSettings,
    pub network: Network,
    pub stock: Vec<StockUpdate>,
    /// This replica's cluster; None: a single node.
    pub cluster: Option<ClusterSettings>,
}

impl ValidConfig {
    /// Adds `units` to every stocked cell, keeping which nodes stock what:
    /// benchmarks measure routing, not running dry.
    pub fn deepen_stock(&mut self, units: u32) {
        for update in &mut self.stock {
            if let StockUpdate::Set { on_hand, .. } = update {
                *on_hand = on_hand.saturating_add(units);
            }
        }
    }
}

impl Config {
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// The embedded default config.
    pub fn default_config() -> Config {
        Config::from_toml(DEFAULT_CONFIG_TOML).expect("the embedded default config parses")
    }

    /// Validates the whole config and returns its routing policies, for a
    /// reload: a file broken anywhere is refused as a whole.
    pub fn policies(&self) -> Result<Policies, ConfigError> {
        let valid = self.validate()?;
        #[derive(serde::Serialize)]
        struct PolicyFile<'a> {
            channels: &'a BTreeMap<String, ChannelConfig>,
        }
        let toml = toml::to_string(&PolicyFile {
            channels: &self.channels,
        })
        .map_err(|e| ConfigError::Parse(e.to_string()))?;
        Ok(Policies {
            network: valid.network,
            toml,
            tokens: valid.server.tokens.table().to_vec(),
        })
    }

    /// Checks every setting and resolves names to indices.
    pub fn validate(&self) -> Result<ValidConfig, ConfigError> {
        // First: its errors should not hide behind a network's.
        let log = self.validate_log()?;
        let admin =
            parse_listen(&self.admin.listen).map_err(|m| invalid("admin.listen", m.to_string()))?;
        let http =
            parse_listen(&self.http.listen).map_err(|m| invalid("http.listen", m.to_string()))?;
        let (http_limits, admin_limits) = self.validate_http()?;
        let engine = self.validate_engine()?;
        let (nodes, markets) = self.validate_nodes()?;
        let mut channels = Vec::new();
        if self.channels.is_empty() {
            return Err(invalid(
                "channels",
                "at least one channel with a routing policy is needed",
            ));
        }
        for (name, channel) in &self.channels {
            channels.push(Channel {
                name: name.clone(),
                policy: validate_policy(&format!("channels.{name}"), channel)?,
                retired: false,
            });
        }
        let network = Network::new(nodes, markets, channels);
        let stock = self.validate_stock(&network, engine.max_skus)?;
        let server = self.validate_server(&network)?;
        let store = self.validate_journal()?;
        let cluster = match &self.cluster {
            Some(cluster) => {
                if store.durability != Durability::Fsync {
                    return Err(invalid(
                        "journal.durability",
                        "a replica acknowledges an entry only once it is fsynced: \"fsync\" is required with [cluster]",
                    ));
                }
                Some(cluster.validate()?)
            }
            None => None,
        };
        Ok(ValidConfig {
            cluster,
            admin,
            http,
            http_limits,
            admin_limits,
            log,
            engine,
            server,
            store,
            network,
            stock,
        })
    }

    fn validate_log(&self) -> Result<LogSettings, ConfigError> {
        let l = &self.log;
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&l.level) {
            return Err(invalid(
                "log.level",
                format!("{:?} is not a level or filter like \"info\": {e}", l.level),
            ));
        }
        let json = match l.format.as_str() {
            "human" => false,
            "json" => true,
            other => {
                return Err(invalid(
                    "log.format",
                    format!("{other:?} is not \"human\" or \"json\""),
                ))
            }
        };
        Ok(LogSettings {
            level: l.level.clone(),
            json,
        })
    }

    /// The limits of the gateway and of the admin port.
    fn validate_http(&self) -> Result<(HttpLimits, HttpLimits), ConfigError> {
        let h = &self.http;
        let connections = |key: &str, n: usize| {
            if n == 0 || n > MAX_HTTP_CONNECTIONS {
                return Err(invalid(
                    key,
                    format!("must be 1..={MAX_HTTP_CONNECTIONS}, got {n}"),
                ));
            }
            Ok(n)
        };
        let timeout = |key: &str, ms: u64, max: u64| {
            if !(MIN_HTTP_TIMEOUT_MS..=max).contains(&ms) {
                return Err(invalid(
                    key,
                    format!("must be {MIN_HTTP_TIMEOUT_MS}..={max} ms, got {ms}"),
                ));
            }
            Ok(ms)
        };
        let gateway = HttpLimits {
            max_connections: connections("http.max_connections", h.max_connections)?,
            max_refusals_in_flight: crate::limits::MAX_HTTP_REFUSALS_IN_FLIGHT,
            header_read_timeout_ms: timeout(
                "http.header_read_timeout_ms",
                h.header_read_timeout_ms,
                MAX_HTTP_TIMEOUT_MS,
            )?,
            body_read_timeout_ms: timeout(
                "http.body_read_timeout_ms",
                h.body_read_timeout_ms,
                MAX_HTTP_TIMEOUT_MS,
            )?,
            idle_timeout_ms: timeout(
                "http.idle_timeout_ms",
                h.idle_timeout_ms,
                MAX_HTTP_TIMEOUT_MS,
            )?,
            shutdown_grace_ms: timeout(
                "http.shutdown_grace_ms",
                h.shutdown_grace_ms,
                MAX_HTTP_SHUTDOWN_GRACE_MS,
            )?,
        };
        let admin = HttpLimits {
            max_connections: connections("admin.max_connections", self.admin.max_connections)?,
            ..gateway.clone()
        };
        Ok((gateway, admin))
    }

    fn validate_journal(&self) -> Result<StoreSettings, ConfigError> {
        let j = &self.journal;
        let durability = match j.durability.as_str() {
            "fsync" => Durability::Fsync,
            "none" => Durability::None,
            other => {
                return Err(invalid(
                    "journal.durability",
                    format!("{other:?} is not \"fsync\" or \"none\""),
                ))
            }
        };
        if j.segment_bytes < MIN_SEGMENT_BYTES {
            return Err(invalid(
                "journal.segment_bytes",
                format!(
                    "must be at least {MIN_SEGMENT_BYTES}, got {}",
                    j.segment_bytes
                ),
            ));
        }
        if j.fault_linger_ms > MAX_FAULT_LINGER_MS {
            return Err(invalid(
                "journal.fault_linger_ms",
                format!(
                    "must be at most {MAX_FAULT_LINGER_MS}, got {}",
                    j.fault_linger_ms
                ),
            ));
        }
        Ok(StoreSettings {
            durability,
            segment_bytes: j.segment_bytes,
            snapshot_interval_ms: j.snapshot_interval_ms,
            snapshot_every_records: j.snapshot_every_records,
            keep_segments: j.keep_segments,
            fault_linger_ms: j.fault_linger_ms,
        })
    }

    fn validate_server(&self, network: &Network) -> Result<ServerSettings, ConfigError> {
        let s = &self.server;
        let listen = s.listen.parse().map_err(|_| {
            invalid(
                "server.listen",
                format!("{:?} is not an address like 127.0.0.1:4433", s.listen),
            )
        })?;
        let cert = match (&s.cert_path, &s.key_path) {
            (Some(cert), Some(key)) => Some((cert.into(), key.into())),
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "server.cert_path",
                    "cert_path and key_path go together",
                ))
            }
        };
        if s.max_connections == 0 || s.max_connections > MAX_CONNECTIONS {
            return Err(invalid(
                "server.max_connections",
                format!("must be 1..={MAX_CONNECTIONS}"),
            ));
        }
        if s.max_inflight_per_connection == 0 {
            return Err(invalid(
                "server.max_inflight_per_connection",
                "must be at least 1",
            ));
        }
        if s.max_streams_per_connection == 0 {
            return Err(invalid(
                "server.max_streams_per_connection",
                "must be at least 1",
            ));
        }
        self.validate_before_hello()?;
        if s.worker_threads > MAX_WORKER_THREADS {
            return Err(invalid(
                "server.worker_threads",
                format!("must be 0 (one fewer than the CPUs) to {MAX_WORKER_THREADS}"),
            ));
        }
        let mut tokens = Vec::new();
        for (i, t) in s.tokens.iter().enumerate() {
            if t.token.len() < 8 || t.token.len() > omniroute_protocol::MAX_TOKEN_BYTES {
                return Err(invalid(
                    format!("server.tokens[{i}].token"),
                    "must be 8..=256 bytes",
                ));
            }
            if tokens.iter().any(|(known, _)| *known == t.token) {
                return Err(invalid(
                    format!("server.tokens[{i}].token"),
                    "is used by an earlier entry",
                ));
            }
            let role = Role::parse(&t.role).ok_or_else(|| {
                invalid(
                    format!("server.tokens[{i}].role"),
                    format!("{:?} is not admin, channel:<name> or node:<id>", t.role),
                )
            })?;
            match &role {
                Role::Channel(name) if network.channel_idx(name).is_none() => {
                    return Err(invalid(
                        format!("server.tokens[{i}].role"),
                        format!("unknown channel {name:?}"),
                    ));
                }
                Role::Node(id) if network.node_idx(id).is_none() => {
                    return Err(invalid(
                        format!("server.tokens[{i}].role"),
                        format!("unknown node {id:?}"),
                    ));
                }
                _ => {}
            }
            tokens.push((t.token.clone(), role));
        }
        Ok(ServerSettings {
            listen,
            data_dir: s.data_dir.clone().into(),
            cert,
            tokens: std::sync::Arc::new(crate::server::Tokens::new(tokens)),
            max_connections: s.max_connections,
            max_inflight_per_connection: s.max_inflight_per_connection,
            max_streams_per_connection: s.max_streams_per_connection,
            worker_threads: match s.worker_threads {
                0 => std::thread::available_parallelism()
                    .map_or(1, |n| n.get().saturating_sub(1))
                    .max(1),
                n => n,
            },
            hello_timeout_ms: s.hello_timeout_ms,
            max_unauthenticated_connections: s.max_unauthenticated_connections,
        })
    }

    /// The `[server]` keys that bound connections without a `Hello`.
    fn validate_before_hello(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        if s.hello_timeout_ms == 0 || s.hello_timeout_ms > MAX_HELLO_TIMEOUT_MS {
            return Err(invalid(
                "server.hello_timeout_ms",
                format!("must be 1..={MAX_HELLO_TIMEOUT_MS}"),
            ));
        }
        if s.max_unauthenticated_connections == 0
            || s.max_unauthenticated_connections > MAX_CONNECTIONS
        {
            return Err(invalid(
                "server.max_unauthenticated_connections",
                format!("must be 1..={MAX_CONNECTIONS}"),
            ));
        }
        Ok(())
    }

    fn validate_engine(&self) -> Result<EngineSettings, ConfigError> {
        let e = &self.engine;
        if e.shards == 0 || e.shards > MAX_SHARDS {
            return Err(invalid(
                "engine.shards",
                format!("must be 1..={MAX_SHARDS}, got {}", e.shards),
            ));
        }
        if e.routers == 0 || e.routers as usize > MAX_ROUTERS {
            return Err(invalid(
                "engine.routers",
                format!("must be 1..={MAX_ROUTERS}, got {}", e.routers),
            ));
        }
        if e.max_skus == 0 || e.max_skus > MAX_SKUS {
            return Err(invalid(
                "engine.max_skus",
                format!("must be 1..={MAX_SKUS}, got {}", e.max_skus),
            ));
        }
        if e.max_inflight == 0 {
            return Err(invalid("engine.max_inflight", "must be at least 1"));
        }
        let retention_ms = self.orders.retention_ms;
        if retention_ms > MAX_ORDER_RETENTION_MS {
            return Err(invalid(
                "orders.retention_ms",
                format!("must be at most {MAX_ORDER_RETENTION_MS} (30 days), got {retention_ms}"),
            ));
        }
        Ok(EngineSettings {
            shards: e.shards,
            routers: e.routers,
            max_skus: e.max_skus,
            max_inflight: e.max_inflight,
            expiry_tick_ms: e.expiry_tick_ms,
            order_retention_ms: retention_ms,
            max_demand_orders_per_s: self.journal.max_demand_orders_per_s,
        })
    }

    fn validate_nodes(&self) -> Result<(Vec<crate::core::model::Node>, Vec<String>), ConfigError> {
        if self.nodes.is_empty() {
            return Err(invalid("nodes", "at least one fulfillment node is needed"));
        }
        if self.nodes.len() > MAX_NODES {
            return Err(invalid(
                "nodes",
                format!("at most {MAX_NODES} nodes, got {}", self.nodes.len()),
            ));
        }
        let mut markets: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut nodes = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let key = |field: &str| format!("nodes[{i}].{field}");
            if n.id.is_empty() || n.id.len() > MAX_ID_BYTES {
                return Err(invalid(
                    key("id"),
                    format!("must be 1..={MAX_ID_BYTES} bytes"),
                ));
            }
            if !seen.insert(n.id.as_str()) {
                return Err(invalid(
                    key("id"),
                    format!("{:?} is used by an earlier node", n.id),
                ));
            }
            let kind: NodeKind = NodeKind::deserialize(toml::Value::String(n.kind.clone()))
                .map_err(|_| {
                    invalid(
                        key("kind"),
                        format!(
                            "unknown kind {:?}; use warehouse, store, 3pl or dark_store",
                            n.kind
                        ),
                    )
                })?;
            let location = GeoPoint::new(n.lat, n.lon)
                .ok_or_else(|| invalid(key("lat"), "lat must be -90..=90 and lon -180..=180"))?;
            if n.market.is_empty() {
                return Err(invalid(key("market"), "must not be empty"));
            }
            let market = match markets.iter().position(|m| *m == n.market) {
                Some(m) => m,
                None => {
                    markets.push(n.market.clone());
                    markets.len() - 1
                }
            };
            let mut capabilities = Capabilities::default();
            for (c, name) in n.capabilities.iter().enumerate() {
                let capability = Capabilities::from_name(name)
                    .ok_or_else(|| invalid(format!("nodes[{i}].capabilities[{c}]"), format!("unknown capability {name:?}; use ship, pickup, same_day or ship_from_store")))?;
                capabilities = capabilities.union(capability);
            }
            if n.capabilities.is_empty() {
                return Err(invalid(
                    key("capabilities"),
                    "a node needs at least one capability",
                ));
            }
            if n.daily_capacity == 0 {
                return Err(invalid(
                    key("daily_capacity"),
                    "must be at least 1 allocation per day",
                ));
            }
            if !n.cost_per_km_cents.is_finite() || n.cost_per_km_cents < 0.0 {
                return Err(invalid(
                    key("cost_per_km_cents"),
                    "must be a finite number >= 0",
                ));
            }
            nodes.push(crate::core::model::Node {
                id: n.id.clone(),
                name: if n.name.is_empty() {
                    n.id.clone()
                } else {
                    n.name.clone()
                },
                kind,
                location,
                market: market as u16,
                capabilities,
                daily_capacity: n.daily_capacity,
                priority: n.priority,
                cost_base_cents: n.cost_base_cents,
                cost_per_km_cents: n.cost_per_km_cents,
                lead_time_minutes: n.lead_time_minutes,
                online: n.online,
                retired: false,
            });
        }
        Ok((nodes, markets))
    }

    fn validate_stock(
        &self,
        network: &Network,
        max_skus: usize,
    ) -> Result<Vec<StockUpdate>, ConfigError> {
        let mut updates = Vec::new();
        for (i, s) in self.stock.iter().enumerate() {
            if s.sku.is_empty() || s.sku.len() > MAX_ID_BYTES {
                return Err(invalid(
                    format!("stock[{i}].sku"),
                    format!("must be 1..={MAX_ID_BYTES} bytes"),
                ));
            }
            for (field, units) in [("on_hand", s.on_hand), ("safety_stock", s.safety_stock)] {
                if units > crate::limits::MAX_ON_HAND_UNITS {
                    return Err(invalid(
                        format!("stock[{i}].{field}"),
                        format!("must be at most {}", crate::limits::MAX_ON_HAND_UNITS),
                    ));
                }
            }
            if network.node_idx(&s.node).is_none() {
                return Err(invalid(
                    format!("stock[{i}].node"),
                    format!("unknown node {:?}", s.node),
                ));
            }
            updates.push(StockUpdate::Set {
                sku: s.sku.clone(),
                node: s.node.clone(),
                on_hand: s.on_hand,
                safety_stock: Some(s.safety_stock),
            });
        }
        if let Some(sample) = &self.sample_stock {
            if sample.skus == 0 || sample.skus + self.stock.len() > max_skus {
                return Err(invalid(
                    "sample_stock.skus",
                    format!("must be 1..=engine.max_skus ({max_skus}) less the [[stock]] entries"),
                ));
            }
            updates.extend(generate_sample_stock(sample, network));
        }
        Ok(updates)
    }
}

/// The channels of `network` with the policies of a policy file: its
/// `[channels.NAME]` tables (a whole config file will do; its other
/// sections are not read). Channels the file does not name keep theirs.
pub fn policies_from_toml(text: &str, network: &Network) -> Result<Vec<Channel>, ConfigError> {
    #[derive(Deserialize)]
    struct PolicyFile {
        #[serde(default)]
        channels: BTreeMap<String, ChannelConfig>,
        #[serde(flatten)]
        _rest: toml::Table,
    }
    let file: PolicyFile = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
    if file.channels.is_empty() {
        return Err(invalid(
            "channels",
            "the policy file has no [channels.NAME] table",
        ));
    }
    if let Some(name) = file
        .channels
        .keys()
        .find(|name| network.channel_idx(name).is_none())
    {
        return Err(invalid(
            format!("channels.{name}"),
            "no such channel in the recorded network",
        ));
    }
    network
        .channels
        .iter()
        .map(|channel| {
            Ok(Channel {
                name: channel.name.clone(),
                policy: match file.channels.get(&channel.name) {
                    Some(config) => validate_policy(&format!("channels.{}", channel.name), config)?,
                    None => channel.policy.clone(),
                },
                retired: channel.retired,
            })
        })
        .collect()
}

fn validate_policy(key: &str, channel: &ChannelConfig) -> Result<Policy, ConfigError> {
    let mut rules = Vec::new();
    if channel.rules.len() > MAX_RULES {
        return Err(invalid(
            format!("{key}.rules"),
            format!("at most {MAX_RULES} rules"),
        ));
    }
    for (i, name) in channel.rules.iter().enumerate() {
        let rule: Rule = Rule::deserialize(toml::Value::String(name.clone())).map_err(|_| {
            invalid(
                format!("{key}.rules[{i}]"),
                format!("unknown rule {name:?}; use pickup_at_selected_store, same_market, fewest_shipments, nearest, cheapest, fastest, node_priority, most_stock or least_loaded"),
            )
        })?;
        if rules.contains(&rule) {
            return Err(invalid(
                format!("{key}.rules[{i}]"),
                format!("rule {name:?} is listed twice"),
            ));
        }
        rules.push(rule);
    }
    if channel.max_shipments == 0 || channel.max_shipments > MAX_SHIPMENTS_PER_ORDER {
        return Err(invalid(
            format!("{key}.max_shipments"),
            format!("must be 1..={MAX_SHIPMENTS_PER_ORDER}"),
        ));
    }
    let on_short = match channel.on_short.as_str() {
        "reject" => OnShort::Reject,
        "partial" => OnShort::Partial,
        other => {
            return Err(invalid(
                format!("{key}.on_short"),
                format!("unknown value {other:?}; use reject or partial"),
            ))
        }
    };
    if channel.hold_ttl_ms == 0 || channel.hold_ttl_ms > MAX_HOLD_TTL_MS {
        return Err(invalid(
            format!("{key}.hold_ttl_ms"),
            format!("must be 1..={MAX_HOLD_TTL_MS}"),
        ));
    }
    let f = &channel.filters;
    if f.max_distance_km
        .is_some_and(|d| !d.is_finite() || d <= 0.0)
    {
        return Err(invalid(
            format!("{key}.filters.max_distance_km"),
            "must be a finite distance > 0",
        ));
    }
    if !f.same_day_max_km.is_finite() || f.same_day_max_km <= 0.0 {
        return Err(invalid(
            format!("{key}.filters.same_day_max_km"),
            "must be a finite distance > 0",
        ));
    }
    let w = &channel.weights;
    for (name, value) in [
        ("distance_km", w.distance_km),
        ("cost_cents", w.cost_cents),
        ("lead_time_minutes", w.lead_time_minutes),
    ] {
        if !value.is_finite() || value < 0.0 {
            return Err(invalid(
                format!("{key}.weights.{name}"),
                "must be a finite number >= 0",
            ));
        }
    }
    Ok(Policy {
        rules,
        filters: Filters {
            same_market: f.same_market,
            max_distance_km: f.max_distance_km,
            same_day_max_km: f.same_day_max_km,
            pickup_alternatives: f.pickup_alternatives,
        },
        weights: Weights {
            distance_km: w.distance_km,
            cost_cents: w.cost_cents,
            lead_time_minutes: w.lead_time_minutes,
        },
        max_shipments: channel.max_shipments,
        on_short,
        hold_ttl_ms: channel.hold_ttl_ms,
    })
}

/// Stocks each SKU at a share of the nodes that depends on the node's kind:
/// warehouses carry most of the range in depth, stores a little of it.
fn generate_sample_stock(sample: &SampleStockConfig, network: &Network) -> Vec<StockUpdate> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(sample.seed);
    let mut updates = Vec::new();
    for i in 1..=sample.skus {
        let sku = format!("{}{i}", sample.sku_prefix);
        for node in &network.nodes {
            let (share, low, high) = match node.kind {
                NodeKind::Warehouse => (0.85, 20, 400),
                NodeKind::ThirdPartyLogistics => (0.6, 50, 800),
                NodeKind::DarkStore => (0.35, 2, 40),
                NodeKind::Store => (0.25, 1, 15),
            };
            if rng.random_bool(share) {
                let on_hand = rng.random_range(low..=high);
                updates.push(StockUpdate::Set {
                    sku: sku.clone(),
                    node: node.id.clone(),
                    on_hand,
                    safety_stock: Some(0),
                });
            }
        }
    }
    updates
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_config_is_valid() {
        // Proves the config a newcomer runs on validates and holds the sample network it promises.
        let valid = Config::default_config()
            .validate()
            .expect("default config validates");
        assert!(
            (55..=65).contains(&valid.network.nodes.len()),
            "{} nodes",
            valid.network.nodes.len()
        );
        assert!(valid.network.markets.len() >= 3);
        assert!(valid
            .network
            .nodes
            .iter()
            .any(|n| n.kind == NodeKind::ThirdPartyLogistics));
        let skus: std::collections::HashSet<&str> = valid
            .stock
            .iter()
            .map(|u| match u {
                StockUpdate::Set { sku, .. } | StockUpdate::Adjust { sku, .. } => sku.as_str(),
            })
            .collect();
        assert_eq!(skus.len(), 10_000);
    }

    #[test]
    fn http_limits_name_their_key_and_the_admin_port_shares_the_timeouts() {
        // Proves each HTTP knob out of its range is refused naming its key, and that the admin
        // port takes the gateway's timeouts and grace with its own connection cap.
        let cases = [
            ("max_connections = 0", "http.max_connections"),
            ("header_read_timeout_ms = 99", "http.header_read_timeout_ms"),
            (
                "body_read_timeout_ms = 3600001",
                "http.body_read_timeout_ms",
            ),
            ("idle_timeout_ms = 0", "http.idle_timeout_ms"),
            ("shutdown_grace_ms = 10001", "http.shutdown_grace_ms"),
        ];
        for (extra, key) in cases {
            let mut config = Config::default_config();
            let table = format!("[http]\n{extra}\n");
            let parsed: Config = Config::from_toml(&table).unwrap();
            config.http = HttpConfig {
                listen: config.http.listen.clone(),
                ..parsed.http
            };
            match config.validate() {
                Err(ConfigError::Invalid { key: named, .. }) => assert_eq!(named, key),
                other => panic!("{extra}: {other:?}"),
            }
        }
        let mut config = Config::default_config();
        config.admin.max_connections = 0;
        assert!(matches!(
            config.validate(),
            Err(ConfigError::Invalid { key, .. }) if key == "admin.max_connections"
        ));
        config.admin.max_connections = 3;
        config.http.idle_timeout_ms = 2_000;
        let valid = config.validate().unwrap();
        assert_eq!(valid.admin_limits.max_connections, 3);
        assert_eq!(valid.admin_limits.idle_timeout_ms, 2_000);
        assert_eq!(valid.http_limits.max_connections, 1024);
    }
}
