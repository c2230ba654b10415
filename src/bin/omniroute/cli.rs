//! The client side of the `omniroute` command: talks to a running daemon
//! over QUIC with `omniroute-client`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use omniroute::config::DEFAULT_DATA_DIR;
use omniroute::server::tls::CERT_FILE;
use omniroute_client::protocol::{
    event_kinds, order_changes, order_states, reject_codes, ErrorCode, NO_SHIP_TO,
};
use omniroute_client::{
    Client, ClusterClient, Decision, Method, Near, Order, OrderKey, OrderQuery, OrderView,
    StockAdjust, StockSet, Trust,
};

/// Where and as whom to connect.
#[derive(Args, Clone, Debug)]
pub struct ConnectArgs {
    /// Daemon address, `HOST:PORT`: a name (`localhost:4433`) or an IP
    /// address. A name with several addresses is tried at its first IPv4
    /// one (the daemon listens on IPv4 by default), else its first. A
    /// cluster's replicas comma-separated (`a,b,c`): the command goes to
    /// the one that leads (`--ca` then needs every replica's certificate).
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:4433",
        env = "OMNIROUTE_ADDR",
        value_parser = parse_addr
    )]
    pub addr: DaemonAddr,
    /// Token from the daemon's config (its startup lines list the sample
    /// ones). No default: a client command never acts as admin unasked.
    #[arg(long, global = true, env = "OMNIROUTE_TOKEN")]
    pub token: Option<String>,
    /// CA or self-signed certificate (PEM) to trust; the daemon prints its
    /// path. Default: `cert.pem` in the data directory (`--data-dir`).
    #[arg(long, global = true, env = "OMNIROUTE_CA")]
    pub ca: Option<PathBuf>,
    /// The daemon's data directory, when it runs on this host: its
    /// certificate there is trusted unless `--ca` names another. Default:
    /// the embedded config's, `omniroute-data` under the current directory.
    // Its own id: the daemon options' `--data-dir` (before the command)
    // would otherwise take the value as well.
    #[arg(
        id = "client_data_dir",
        long = "data-dir",
        global = true,
        env = "OMNIROUTE_DATA_DIR"
    )]
    pub data_dir: Option<PathBuf>,
    /// Accept any server certificate. Local development only.
    #[arg(long, global = true)]
    pub insecure: bool,
    /// Name the certificate must carry.
    #[arg(long, global = true, default_value = "localhost")]
    pub server_name: String,
}

impl ConnectArgs {
    /// The certificate to trust: `--ca`, else `cert.pem` in the data
    /// directory, the daemon's own place for it.
    fn ca_path(&self) -> PathBuf {
        match (&self.ca, &self.data_dir) {
            (Some(ca), _) => ca.clone(),
            (None, Some(dir)) => dir.join(CERT_FILE),
            (None, None) => PathBuf::from(DEFAULT_DATA_DIR).join(CERT_FILE),
        }
    }

    /// Why the CA was looked for where it was, for a message.
    fn ca_source(&self) -> &'static str {
        match (&self.ca, &self.data_dir) {
            (Some(_), _) => " (--ca or OMNIROUTE_CA)",
            (None, Some(_)) => " (in --data-dir or OMNIROUTE_DATA_DIR)",
            (None, None) => {
                " (the default data directory, under the current directory; no --data-dir, OMNIROUTE_DATA_DIR, --ca or OMNIROUTE_CA was given)"
            }
        }
    }
}

/// `--addr` as given (what messages show) and the addresses it resolved
/// to: one, or a cluster's replicas.
#[derive(Clone, Debug)]
pub struct DaemonAddr {
    given: String,
    resolved: Vec<SocketAddr>,
}

impl std::fmt::Display for DaemonAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let resolved: Vec<String> = self.resolved.iter().map(|a| a.to_string()).collect();
        let resolved = resolved.join(",");
        if self.given == resolved {
            write!(f, "{}", self.given)
        } else {
            write!(f, "{} ({resolved})", self.given)
        }
    }
}

/// Resolves `HOST:PORT` (or several, comma-separated) once, when the
/// command line is read: a name that does not resolve is a usage error
/// before anything is sent.
fn parse_addr(text: &str) -> Result<DaemonAddr, String> {
    let resolved = text
        .split(',')
        .map(|one| resolve(one.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(DaemonAddr {
        given: text.to_string(),
        resolved,
    })
}

/// One `HOST:PORT`, at its first IPv4 address, else its first.
fn resolve(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {text:?} ({e}); give HOST:PORT, e.g. localhost:4433 or 127.0.0.1:4433"))?
        .collect();
    let resolved = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{text:?} resolves to no address"))?;
    Ok(resolved)
}

#[derive(Subcommand, Debug, Clone)]
pub enum OrderCommand {
    /// Route an order: `--line SKU:QTY` (repeat), `--ship-to LAT,LON`.
    Submit {
        /// Sales channel (its routing policy applies).
        #[arg(long)]
        channel: String,
        /// Client order id (the idempotency key); generated when absent.
        #[arg(long)]
        id: Option<String>,
        /// A line, `SKU:QTY`; repeat for more lines (numbered from 0 in
        /// the answer, as the protocol numbers them).
        #[arg(long = "line", required = true, value_parser = parse_line)]
        lines: Vec<(String, u32)>,
        /// Where the order goes, `LAT,LON` in degrees. A pickup order
        /// needs none: the customer collects it at the store.
        #[arg(long, value_parser = parse_point, required_unless_present = "pickup")]
        ship_to: Option<(f64, f64)>,
        /// Market the order belongs to (a policy's same_market rule uses it).
        #[arg(long)]
        market: Option<String>,
        /// Pickup at this store instead of shipping.
        #[arg(long, conflicts_with = "same_day")]
        pickup: Option<String>,
        /// Same-day delivery (nodes with the same_day capability).
        #[arg(long)]
        same_day: bool,
        /// How long the units are held unconfirmed (default: the channel's).
        #[arg(long)]
        ttl_ms: Option<u32>,
    },
    /// Make an order's hold firm: it no longer expires.
    Confirm(OrderRef),
    /// Cancel an open order; its units go back on sale.
    Cancel(OrderRef),
    /// Print an order: its state and where each line's units are.
    Get(OrderRef),
    /// Print every change of a channel's orders as it happens (routed,
    /// confirmed, shipped, re-routed, ...), from a cursor, until Ctrl-C.
    Follow {
        /// The channel whose orders to follow.
        #[arg(long)]
        channel: String,
        /// Cursor to resume from: the last one printed + 1 (0: the oldest
        /// the daemon keeps).
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
    /// List a channel's orders, in order id order, a page at a time.
    List {
        /// The channel whose orders to list.
        #[arg(long)]
        channel: String,
        /// Only orders in this state.
        #[arg(long, value_parser = parse_state)]
        state: Option<u8>,
        /// Only orders with units at this node.
        #[arg(long)]
        node: Option<String>,
        /// Only orders routed at or after this time: ISO 8601 (UTC, like
        /// 2026-12-05T13:00:00Z) or Unix ms.
        #[arg(long, value_parser = omniroute::timefmt::parse_time_ms)]
        from: Option<u64>,
        /// Only orders routed before this time (ISO 8601 or Unix ms).
        #[arg(long, value_parser = omniroute::timefmt::parse_time_ms)]
        to: Option<u64>,
        /// Orders per page, 1 to 1000.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
        limit: u16,
        /// Start after this order id (a page's "next" line).
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Fetch every page, not just the first.
        #[arg(long)]
        all: bool,
    },
}

/// An order by its key.
#[derive(Args, Debug, Clone)]
pub struct OrderRef {
    /// The order's sales channel.
    #[arg(long)]
    pub channel: String,
    /// The client order id it was submitted with.
    #[arg(long)]
    pub id: String,
}

fn parse_state(text: &str) -> Result<u8, String> {
    order_states::listable(text)
        .ok_or_else(|| "expected held, confirmed, shipped, cancelled or expired".to_string())
}

/// A time as the CLI prints it: ISO 8601 (UTC) and the epoch ms the
/// protocol carries.
fn when(epoch_ms: u64) -> String {
    format!("{} ({epoch_ms} ms)", omniroute::timefmt::iso(epoch_ms))
}

/// Runs `work` until it ends or Ctrl-C; either way the caller then closes
/// the connection, so the daemon is not left holding it.
async fn until_ctrl_c(
    work: impl std::future::Future<Output = Result<(), CliError>>,
) -> Result<(), CliError> {
    tokio::select! {
        result = work => result,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

#[derive(Subcommand, Debug, Clone)]
pub enum StockCommand {
    /// Set on-hand counts: `SKU@NODE=UNITS` ...
    Set {
        /// Cells and their counts, `SKU@NODE=UNITS`.
        #[arg(required = true, value_parser = parse_stock)]
        entries: Vec<(String, String, i64)>,
        /// Units of each cell kept back from sale (the safety stock); the
        /// cells' own stay as they are without it.
        #[arg(long)]
        safety_stock: Option<u32>,
        /// Add SKUs the daemon does not know yet; without it a SKU it does
        /// not know (a typo) refuses the whole command, nothing changed.
        #[arg(long)]
        create: bool,
    },
    /// Adjust on-hand counts: `SKU@NODE=+UNITS` or `=-UNITS` ...
    Adjust {
        /// Cells and their changes, `SKU@NODE=+UNITS` or `SKU@NODE=-UNITS`.
        #[arg(required = true, value_parser = parse_stock)]
        entries: Vec<(String, String, i64)>,
        /// Add SKUs the daemon does not know yet (see `stock set`).
        #[arg(long)]
        create: bool,
    },
}

/// Units of one SKU of an order at a node: what `node ship` and `node
/// return` move.
#[derive(Args, Debug, Clone)]
pub struct OrderUnits {
    /// The node the units are at.
    node: String,
    #[command(flatten)]
    order: OrderRef,
    /// The SKU of the units.
    #[arg(long)]
    sku: String,
    /// How many units.
    #[arg(long)]
    qty: u32,
}

#[derive(Subcommand, Debug, Clone)]
pub enum NodeCommand {
    /// Ship units of an order's allocation at this node.
    Ship(OrderUnits),
    /// Take back shipped units of an order at this node (a return); they
    /// are on hand there again.
    Return(OrderUnits),
    /// Refuse an allocation; `--count SKU=UNITS` reports the true shelf count.
    Reject {
        /// The node refusing.
        node: String,
        #[command(flatten)]
        order: OrderRef,
        /// The shelf count the node found, `SKU=UNITS`; repeat for more.
        #[arg(long = "count", value_parser = parse_count)]
        counts: Vec<(String, u32)>,
    },
    /// Take orders at this node again.
    Online {
        /// The node.
        node: String,
    },
    /// Stop taking orders at this node; its open allocations re-route.
    Offline {
        /// The node.
        node: String,
    },
    /// Print the node's allocation events from a cursor on (Ctrl-C stops).
    Subscribe {
        /// The node.
        node: String,
        /// Cursor to resume from: the last one printed + 1 (0: the oldest kept).
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
}

fn parse_line(text: &str) -> Result<(String, u32), String> {
    let (sku, qty) = text.rsplit_once(':').ok_or("expected SKU:QTY")?;
    Ok((
        sku.to_string(),
        qty.parse()
            .map_err(|_| format!("{qty:?} is not a quantity"))?,
    ))
}

fn parse_count(text: &str) -> Result<(String, u32), String> {
    let (sku, qty) = text.rsplit_once('=').ok_or("expected SKU=UNITS")?;
    Ok((
        sku.to_string(),
        qty.parse().map_err(|_| format!("{qty:?} is not a count"))?,
    ))
}

pub fn parse_point(text: &str) -> Result<(f64, f64), String> {
    let (lat, lon) = text.split_once(',').ok_or("expected LAT,LON")?;
    let number = |s: &str| {
        s.trim()
            .parse::<f64>()
            .map_err(|_| format!("{s:?} is not a number"))
    };
    Ok((number(lat)?, number(lon)?))
}

fn parse_stock(text: &str) -> Result<(String, String, i64), String> {
    let (cell, units) = text.rsplit_once('=').ok_or("expected SKU@NODE=UNITS")?;
    let (sku, node) = cell.split_once('@').ok_or("expected SKU@NODE=UNITS")?;
    Ok((
        sku.to_string(),
        node.to_string(),
        units
            .parse()
            .map_err(|_| format!("{units:?} is not a number"))?,
    ))
}

/// How long a client command waits for the daemon to answer its handshake.
pub const CONNECT_TIMEOUT_MS: u64 = 3_000;

/// Exit code of a client command whose order the daemon rejected (short,
/// no eligible node, invalid): it was answered, and the answer is no.
pub const EXIT_REJECTED: u8 = 3;
/// Exit code of a command given wrongly (arguments, a missing CA file).
pub const EXIT_USAGE: u8 = 2;
/// Exit code when the daemon cannot be reached or answers with an error.
pub const EXIT_DAEMON: u8 = 1;

/// How a client command failed; each kind has its own exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command cannot work as given.
    #[error("{0}")]
    Usage(String),
    /// The daemon is not reachable, or refused the request.
    #[error("{0}")]
    Daemon(String),
    /// The order was answered: rejected.
    #[error("the order was rejected")]
    Rejected,
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Daemon(_) => EXIT_DAEMON,
            CliError::Rejected => EXIT_REJECTED,
        }
    }
}

impl From<String> for CliError {
    fn from(message: String) -> CliError {
        CliError::Daemon(message)
    }
}

/// Connects to the daemon, failing fast: a missing CA file is named before
/// anything is sent, and a daemon that does not answer within
/// [`CONNECT_TIMEOUT_MS`] is reported as probably not running. With a
/// cluster's addresses, to the replica that leads, as a
/// [`ClusterClient`] finds it (following `NotLeader` and passing replicas
/// that are down, for at most `omniroute_client::FOLLOW_TIMEOUT_MS`).
pub async fn connect(args: &ConnectArgs) -> Result<Arc<Client>, CliError> {
    let trust = if args.insecure {
        Trust::InsecureDevelopmentOnly
    } else {
        let ca = args.ca_path();
        if !ca.exists() {
            return Err(CliError::Usage(format!(
                "no CA certificate at {}{}: pass --data-dir with the daemon's data directory, or --ca with its certificate (it prints the path when it starts), or --insecure for local development",
                ca.display(),
                args.ca_source()
            )));
        }
        Trust::CaFile(ca)
    };
    let Some(token) = &args.token else {
        return Err(CliError::Usage(
            "no token: pass --token (or set OMNIROUTE_TOKEN) with a token of the daemon's config"
                .into(),
        ));
    };
    if args.addr.resolved.len() > 1 {
        let addrs = args.addr.resolved.clone();
        let cluster = ClusterClient::new(addrs, &args.server_name, trust, token)
            .map_err(|e| CliError::Daemon(e.to_string()))?;
        return cluster
            .leader_client()
            .await
            .map_err(|e| CliError::Daemon(format!("no replica of {} leads: {e}", args.addr)));
    }
    let connecting = Client::connect(args.addr.resolved[0], &args.server_name, trust, token);
    match tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), connecting).await {
        Ok(client) => client
            .map(Arc::new)
            .map_err(|e| CliError::Daemon(format!("{}: {e}", args.addr))),
        Err(_) => Err(CliError::Daemon(format!(
            "no answer from {addr} within {} s: is the daemon running at {addr}?",
            CONNECT_TIMEOUT_MS / 1000,
            addr = args.addr
        ))),
    }
}

/// Runs `command` on a connection from [`connect`]. With a cluster's
/// addresses, runs it again on the leader found anew when the replica
/// answered that it stopped leading first (`NotLeader`, `Unavailable`:
/// nothing was done there, so running it again is safe whatever it does),
/// for at most `omniroute_client::FOLLOW_TIMEOUT_MS`.
async fn on_leader<F, Fut>(args: &ConnectArgs, mut command: F) -> Result<(), CliError>
where
    F: FnMut(Arc<Client>) -> Fut,
    Fut: std::future::Future<Output = Result<(), CliError>>,
{
    let follow = Duration::from_millis(omniroute_client::FOLLOW_TIMEOUT_MS);
    let deadline = std::time::Instant::now() + follow;
    loop {
        let client = connect(args).await?;
        let result = command(client.clone()).await;
        disconnect(client).await;
        match &result {
            Err(CliError::Daemon(message))
                if args.addr.resolved.len() > 1
                    && not_decided_here(message)
                    && std::time::Instant::now() < deadline =>
            {
                let pause = omniroute_client::NO_LEADER_PAUSE_MS;
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            _ => return result,
        }
    }
}

/// Whether an error message carries a replica's `NotLeader` or
/// `Unavailable` answer (`ClientError::Server` as text).
fn not_decided_here(message: &str) -> bool {
    [ErrorCode::NotLeader, ErrorCode::Unavailable]
        .iter()
        .any(|&code| message.contains(&format!("server error {}: ", code as u16)))
}

/// Closes the connection `connect` opened.
async fn disconnect(client: Arc<Client>) {
    if let Ok(client) = Arc::try_unwrap(client) {
        client.close().await;
    }
}

fn key(channel: &str, id: &str) -> OrderKey {
    OrderKey {
        channel: channel.into(),
        client_order_id: id.into(),
    }
}

/// Prints a decision; allocations of a pickup order at another store than
/// `pickup` are marked as the substitutes they are.
fn print_decision(decision: &Decision, pickup: Option<&str>) {
    match decision {
        Decision::Routed {
            order_id,
            expires_at_ms,
            allocations,
            short,
        } => {
            println!(
                "routed: order {order_id}, hold expires at {}",
                when(*expires_at_ms)
            );
            for a in allocations {
                let substitute = match pickup {
                    Some(store) if store != a.node => format!(" (substitute for {store})"),
                    _ => String::new(),
                };
                println!(
                    "  line {} {} x{} from {}{substitute}",
                    a.line, a.sku, a.qty, a.node
                );
            }
            for s in short {
                println!(
                    "  line {} {} short: {} of {} available",
                    s.line, s.sku, s.available, s.requested
                );
            }
        }
        Decision::Rejected {
            code,
            detail,
            message,
            short,
        } => {
            let reason = reject_codes::name(*code);
            println!("rejected, {reason} (code {code}, detail {detail}): {message}");
            for s in short {
                println!(
                    "  line {} {}: {} requested, {} available",
                    s.line, s.sku, s.requested, s.available
                );
            }
        }
    }
}

fn print_order(view: &OrderView) {
    let state = order_states::name(view.state);
    if view.state == order_states::HELD {
        println!(
            "order {} ({}/{}): {state} until {}",
            view.order_id,
            view.channel,
            view.client_order_id,
            when(view.expires_at_ms)
        );
    } else {
        println!(
            "order {} ({}/{}): {state}",
            view.order_id, view.channel, view.client_order_id
        );
    }
    print_allocations(view);
}

fn print_allocations(view: &OrderView) {
    for a in &view.allocations {
        println!(
            "  line {} {} at {}: open {}, shipped {}, returned {}",
            a.line, a.sku, a.node, a.open, a.shipped, a.returned
        );
    }
}

pub async fn order(args: &ConnectArgs, command: OrderCommand) -> Result<(), CliError> {
    on_leader(args, |client| {
        let command = command.clone();
        async move { order_on(&client, command).await }
    })
    .await
}

async fn order_on(client: &Client, command: OrderCommand) -> Result<(), CliError> {
    match command {
        OrderCommand::Submit {
            channel,
            id,
            lines,
            ship_to,
            market,
            pickup,
            same_day,
            ttl_ms,
        } => {
            let id = id.unwrap_or_else(|| {
                format!(
                    "cli-{}",
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_micros())
                )
            });
            let method = match (pickup.clone(), same_day) {
                (Some(store), _) => Method::Pickup { store },
                (None, true) => Method::SameDay,
                (None, false) => Method::Ship,
            };
            let (lat, lon) = ship_to.unwrap_or((NO_SHIP_TO, NO_SHIP_TO));
            let order = Order {
                channel,
                client_order_id: id.clone(),
                lat,
                lon,
                market,
                method,
                hold_ttl_ms: ttl_ms,
                lines,
            };
            println!("order id {id}");
            let decision = client.submit(order).await.map_err(|e| e.to_string())?;
            print_decision(&decision, pickup.as_deref());
            if matches!(decision, Decision::Rejected { .. }) {
                return Err(CliError::Rejected);
            }
        }
        OrderCommand::Confirm(OrderRef { channel, id }) => print_order(
            &client
                .confirm(key(&channel, &id))
                .await
                .map_err(|e| e.to_string())?,
        ),
        OrderCommand::Cancel(OrderRef { channel, id }) => print_order(
            &client
                .cancel(key(&channel, &id))
                .await
                .map_err(|e| e.to_string())?,
        ),
        OrderCommand::Get(OrderRef { channel, id }) => print_order(
            &client
                .get_order(key(&channel, &id))
                .await
                .map_err(|e| e.to_string())?,
        ),
        OrderCommand::Follow { channel, from } => {
            until_ctrl_c(follow(client, &channel, from)).await?;
        }
        OrderCommand::List {
            channel,
            state,
            node,
            from,
            to,
            limit,
            after,
            all,
        } => {
            let query = OrderQuery {
                channel,
                state: state.unwrap_or(0),
                node: node.unwrap_or_default(),
                created_from_ms: from.unwrap_or(0),
                created_to_ms: to.unwrap_or(0),
                after,
                limit,
            };
            list(client, query, all).await?;
        }
    }
    Ok(())
}

/// Prints each status of the channel's orders, one block per change,
/// numbered by its cursor.
async fn follow(client: &Client, channel: &str, from: u64) -> Result<(), CliError> {
    let mut statuses = client
        .follow_orders(channel, from)
        .await
        .map_err(|e| e.to_string())?;
    println!("following {channel}; first cursor {}", statuses.next_cursor);
    while let Some(status) = statuses.next().await {
        let status = status.map_err(|e| e.to_string())?;
        let order = &status.order;
        let from_nodes = if status.released_from.is_empty() {
            String::new()
        } else {
            format!(" (from {})", status.released_from.join(", "))
        };
        println!(
            "#{} {}{from_nodes}: order {} ({}) now {}",
            status.cursor,
            order_changes::name(status.change),
            order.order_id,
            order.client_order_id,
            order_states::name(order.state)
        );
        print_allocations(order);
    }
    Ok(())
}

/// Prints one page of orders (every page with `all`), then where the next
/// page starts.
async fn list(client: &Client, mut query: OrderQuery, all: bool) -> Result<(), CliError> {
    loop {
        let (orders, next) = client
            .list_orders(query.clone())
            .await
            .map_err(|e| e.to_string())?;
        for listed in &orders {
            print_order(&listed.order);
            if listed.created_at_ms != 0 {
                println!("  routed at {}", when(listed.created_at_ms));
            }
        }
        if next == 0 {
            return Ok(());
        }
        if !all {
            println!("next page: --after {next}");
            return Ok(());
        }
        query.after = next;
    }
}

pub async fn stock(args: &ConnectArgs, command: StockCommand) -> Result<(), CliError> {
    on_leader(args, |client| {
        let command = command.clone();
        async move { stock_on(&client, command).await }
    })
    .await
}

async fn stock_on(client: &Client, command: StockCommand) -> Result<(), CliError> {
    let (applied, bumped, errors) = match command {
        StockCommand::Set {
            entries,
            safety_stock,
            create,
        } => {
            let entries = entries
                .into_iter()
                .map(|(sku, node, units)| {
                    let on_hand = u32::try_from(units).map_err(|_| {
                        format!("{sku}@{node}: a count is 0 or more units, not {units}")
                    })?;
                    Ok(StockSet {
                        sku,
                        node,
                        on_hand,
                        safety_stock,
                    })
                })
                .collect::<Result<Vec<_>, String>>()
                // Read wrongly before anything is sent: a usage error (2),
                // as every other argument that does not parse.
                .map_err(CliError::Usage)?;
            if create {
                client.stock_set(entries).await
            } else {
                client.stock_set_known(entries).await
            }
        }
        StockCommand::Adjust { entries, create } => {
            let entries = entries
                .into_iter()
                .map(|(sku, node, delta)| StockAdjust { sku, node, delta })
                .collect();
            if create {
                client.stock_adjust(entries).await
            } else {
                client.stock_adjust_known(entries).await
            }
        }
    }
    .map_err(stock_error)?;
    println!("applied {applied}, {bumped} reserved units re-routed, {errors} errors");
    Ok(())
}

/// A refused feed in the user's terms: an unknown SKU is most often a
/// typo, and `--create` is how a new one is meant.
fn stock_error(error: omniroute_client::ClientError) -> CliError {
    match error {
        omniroute_client::ClientError::Server { code, message }
            if code == ErrorCode::UnknownSku as u16 =>
        {
            CliError::Daemon(format!(
                "{message}: the daemon does not sell it, and nothing was changed; check its spelling, or pass --create to add it as a new SKU"
            ))
        }
        other => CliError::Daemon(other.to_string()),
    }
}

pub async fn availability(
    args: &ConnectArgs,
    sku: &str,
    near: Option<(f64, f64)>,
    count: u16,
    min_qty: u32,
) -> Result<(), CliError> {
    let client = connect(args).await?;
    let near = near.map(|(lat, lon)| Near {
        lat,
        lon,
        count,
        min_qty,
    });
    let order = if near.is_some() {
        "nearest first"
    } else {
        "by priority"
    };
    let nodes = client.node_availability(sku, near).await;
    disconnect(client).await;
    let nodes = nodes.map_err(|e| CliError::Daemon(e.to_string()))?;
    println!(
        "{sku}: {} units at {} nodes ({order})",
        nodes.iter().map(|n| u64::from(n.atp)).sum::<u64>(),
        nodes.len()
    );
    for n in nodes {
        let offline = if n.online { "" } else { "  offline" };
        let priority = n.priority;
        match n.distance_km {
            Some(km) => println!(
                "  {:<14} {:>7} units {km:>8.1} km  priority {priority}{offline}",
                n.node, n.atp
            ),
            None => println!(
                "  {:<14} {:>7} units  priority {priority}{offline}",
                n.node, n.atp
            ),
        }
    }
    Ok(())
}

pub async fn node(args: &ConnectArgs, command: NodeCommand) -> Result<(), CliError> {
    on_leader(args, |client| {
        let command = command.clone();
        async move { node_on(&client, command).await }
    })
    .await
}

async fn node_on(client: &Client, command: NodeCommand) -> Result<(), CliError> {
    match command {
        NodeCommand::Ship(u) => print_order(
            &client
                .node_ship(&u.node, key(&u.order.channel, &u.order.id), &u.sku, u.qty)
                .await
                .map_err(|e| e.to_string())?,
        ),
        NodeCommand::Return(u) => print_order(
            &client
                .return_units(&u.node, key(&u.order.channel, &u.order.id), &u.sku, u.qty)
                .await
                .map_err(|e| e.to_string())?,
        ),
        NodeCommand::Reject {
            node,
            order,
            counts,
        } => print_order(
            &client
                .node_reject(&node, key(&order.channel, &order.id), counts)
                .await
                .map_err(|e| e.to_string())?,
        ),
        NodeCommand::Online { node } => {
            client
                .set_node_online(&node, true)
                .await
                .map_err(|e| e.to_string())?;
            println!("{node} is online");
        }
        NodeCommand::Offline { node } => {
            let rerouted = client
                .set_node_online(&node, false)
                .await
                .map_err(|e| e.to_string())?;
            println!("{node} is offline; {rerouted} orders re-routed");
        }
        NodeCommand::Subscribe { node, from } => {
            until_ctrl_c(subscribe(client, &node, from)).await?;
        }
    }
    Ok(())
}

/// Prints each event of the node, numbered by its cursor.
async fn subscribe(client: &Client, node: &str, from: u64) -> Result<(), CliError> {
    let mut events = client
        .subscribe(node, from)
        .await
        .map_err(|e| e.to_string())?;
    println!("subscribed to {node}; first cursor {}", events.next_cursor);
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| e.to_string())?;
        let kind = if event.kind == event_kinds::ALLOCATED {
            "allocated"
        } else {
            "released"
        };
        let lines: Vec<String> = event
            .lines
            .iter()
            .map(|(line, sku, qty)| format!("line {line} {sku} x{qty}"))
            .collect();
        println!(
            "#{} {kind} {}/{} (order {}): {}",
            event.cursor,
            event.channel,
            event.client_order_id,
            event.order_id,
            lines.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_answers_that_decided_nothing_run_a_command_again() {
        // Proves the command line runs a command again on the new leader only for a
        // replica's NotLeader or Unavailable answer (with or without a leader named), never
        // for a lost connection, whose request may have been applied, nor for another code.
        let error = |code: ErrorCode, message: &str| {
            omniroute_client::ClientError::Server {
                code: code as u16,
                message: message.into(),
            }
            .to_string()
        };
        assert!(not_decided_here(&error(
            ErrorCode::NotLeader,
            "127.0.0.1:4433"
        )));
        assert!(not_decided_here(&error(ErrorCode::NotLeader, "")));
        assert!(not_decided_here(&format!(
            "SKU-1: {}",
            error(ErrorCode::Unavailable, "disk full")
        )));
        assert!(!not_decided_here(&error(ErrorCode::UnknownSku, "SKU-9")));
        let lost =
            omniroute_client::ClientError::Closed("the stream ended before the answer".into());
        assert!(!not_decided_here(&lost.to_string()));
        let addr = parse_addr("127.0.0.1:1, 127.0.0.1:2").expect("two addresses");
        assert_eq!(addr.resolved.len(), 2);
        assert_eq!(
            addr.to_string(),
            "127.0.0.1:1, 127.0.0.1:2 (127.0.0.1:1,127.0.0.1:2)"
        );
    }
}
