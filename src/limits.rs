//! Every fixed bound of the daemon, in one place, each with the reason for its
//! value. Configurable knobs live in `config`; these are the hard ceilings the
//! code relies on (array sizes, loop bounds, wire limits).

/// Lines one order may carry, and the length of an id (client order id,
/// SKU, channel, node) in bytes: the wire's bounds, defined once in the
/// protocol crate, which every frame is checked against first.
pub use omniroute_protocol::{MAX_ID_BYTES, MAX_LINES_PER_ORDER};

/// Orders one listing page holds (the wire's bound, defined in the
/// protocol crate): a page of the largest orders stays within a frame,
/// and each page costs every router one pass over its book.
pub use omniroute_protocol::MAX_ORDERS_PER_PAGE;

/// Units one line may ask for. Keeps sums of a whole order far from `u32`
/// overflow (64 lines x 1M units) while covering B2B bulk lines.
pub const MAX_QTY_PER_LINE: u32 = 1_000_000;

/// Units one stock cell may hold on hand, and the largest safety stock
/// or adjustment. A billion units is far beyond any shelf or warehouse
/// bin, keeps every sum of a cell's counts inside `u32` (the wire's
/// 0xFFFFFFFF "unchanged" included, which no real count can then equal),
/// and turns a corrupt feed value into a refusal instead of stock to sell.
pub const MAX_ON_HAND_UNITS: u32 = 1_000_000_000;

/// Fulfillment nodes one daemon knows. Node indices are `u16`.
pub const MAX_NODES: usize = 16_384;

/// Nodes a reload can add without a restart. The availability index, the
/// shards' rows and the node actors are sized for this many more nodes
/// than the data directory knows at start: growing any of them under
/// readers that never lock would need a second copy of the index, and a
/// spare column costs 4 bytes per stocked SKU in the index and 16 per
/// stocked row in a shard. Adding more than this needs a restart.
pub const NODE_SLOTS_SPARE: usize = 16;

/// Node slots for a network of `nodes` nodes: see [`NODE_SLOTS_SPARE`].
pub fn node_slots(nodes: usize) -> usize {
    (nodes + NODE_SLOTS_SPARE).min(MAX_NODES)
}

/// Distinct SKUs one daemon can intern. The availability index is a
/// pre-sized table of this many slots so that reads never take a lock.
pub const MAX_SKUS: usize = 1 << 21;

/// Candidate nodes sent with one line on a first attempt. Eight is enough
/// for the shard to find stock almost always (the index is rarely stale by
/// more than a node or two), and keeps the list inline, with no allocation.
pub const MAX_CANDIDATES_FIRST_TRY: usize = 8;

/// Candidate nodes sent with one line in a hold. The shard walks them in
/// policy order; beyond this many the tail is almost never reached, and a
/// re-plan after a short answer offers the rest.
pub const MAX_CANDIDATES_PER_LINE: usize = 64;

/// Named rules in one routing policy (there are nine rule kinds).
pub const MAX_RULES: usize = 9;

/// Shipments (distinct nodes) one order may be split into, whatever the
/// policy says: bounds the work of a plan and of a re-route.
pub const MAX_SHIPMENTS_PER_ORDER: u8 = 16;

/// Hold attempts for one order before it is rejected. Each failed attempt is
/// caused by a competing order taking the stock first, so progress is made
/// somewhere; the bound keeps one unlucky order from spinning.
pub const MAX_HOLD_ATTEMPTS: u32 = 8;

/// Orders one router accepts in one batch message.
pub const MAX_ORDERS_PER_BATCH: usize = 4096;

/// Orders one follow-up record rewrites at most: the holds one expiry tick
/// releases, the orders a node going offline re-routes, the reservations
/// one stock count bumps are journaled in runs of this many, each its own
/// record. A flash sale's 100 000 holds expiring in one tick would
/// otherwise be one record past `MAX_RECORD_PAYLOAD_BYTES` (32 MiB), which
/// the journal must refuse after memory changed. An order record is a few
/// hundred bytes (about 25 KiB at its largest: 64 lines each split over
/// 16 nodes), so 256 stay within 7 MiB.
pub const MAX_ORDERS_PER_FOLLOW_UP_RECORD: usize = 256;

/// Entries in one bulk stock update (set or adjust) from a WMS/ERP feed.
pub const MAX_STOCK_UPDATES_PER_BATCH: usize = 65_536;

/// Nodes returned by one nearest-nodes query.
pub const MAX_NEAREST_NODES: usize = 256;

/// Longest hold a client may ask for: one day. Longer holds are what
/// `confirm` is for.
pub const MAX_HOLD_TTL_MS: u64 = 86_400_000;

/// How long a closed order stays in memory by default (`[orders]
/// retention_ms`): a day, as payment APIs keep idempotency keys. Within it
/// a resubmission gets the order's decision; after it the key is free.
pub const DEFAULT_ORDER_RETENTION_MS: u64 = 86_400_000;
/// Rejected orders journaled as demand per second by default: a shop's
/// rejections all, a sold-out flash sale's a sample (all of them at
/// 100 000 orders/s were about 18 MB/s of journal, on every replica of a
/// cluster; measured, their replication alone took a three-replica
/// cluster's p99 from 3.9 ms to 64 ms).
pub const DEFAULT_MAX_DEMAND_ORDERS_PER_S: u64 = 5_000;

/// The longest `[orders] retention_ms`: thirty days. Memory grows with the
/// orders that close within the window; beyond a month an OMS, not a
/// router, is where closed orders belong.
pub const MAX_ORDER_RETENTION_MS: u64 = 30 * 86_400_000;

/// Keys of retired orders remembered, per daemon, so that looking one up
/// answers `ARCHIVED` rather than `UNKNOWN_ORDER`: about 24 bytes each, so
/// a million cost some 24 MB, and at 10 000 orders/s cover the orders
/// retired in the last 100 s. Older keys answer `UNKNOWN_ORDER`.
pub const ARCHIVED_KEYS_KEPT: usize = 1 << 20;

/// Slots of the filter that tells a session whether the books may hold an
/// order key (a byte each: 4 MiB). A session answers a sold-out order
/// itself only when its key's slot is empty, so the filter pays while it is
/// sparse: with a million orders in the books a quarter of the slots hold
/// one, and an order whose key lands there takes the router hop as before.
pub const KEY_FILTER_SLOTS: usize = 1 << 22;

/// Connections past an HTTP port's `max_connections` being answered 503
/// at once, each for at most `HTTP_REFUSAL_LINGER_MS`: a task and a
/// socket each, so 256 cost little and answer a burst of a thousand a
/// second. A flood beyond this many is dropped unanswered: answering it
/// would cost a task per connection, which is what the cap bounds.
pub const MAX_HTTP_REFUSALS_IN_FLIGHT: usize = 256;

/// How long a refused HTTP connection is kept after its 503 to read the
/// request the client sends (closing with it unread would reset the
/// connection, and the client could lose the 503): a client that connects
/// sends its request within a round trip, and a quarter second is many.
pub const HTTP_REFUSAL_LINGER_MS: u64 = 250;

/// Pause after an HTTP port fails to accept (out of file descriptors,
/// most likely) before it tries again, so that the loop does not spin
/// while connections close.
pub const HTTP_ACCEPT_RETRY_MS: u64 = 100;

/// The largest `http.max_connections` and `admin.max_connections`: each
/// connection holds a file descriptor, and 65 536 is past the descriptor
/// limit of most hosts (and what the kernel's port range can carry from
/// one proxy).
pub const MAX_HTTP_CONNECTIONS: usize = 65_536;

/// The shortest HTTP timeout (`http.*_timeout_ms`, `shutdown_grace_ms`):
/// below a tenth of a second a loaded host's scheduling alone would close
/// honest clients.
pub const MIN_HTTP_TIMEOUT_MS: u64 = 100;

/// The longest HTTP header, body or idle timeout: an hour. Longer would
/// let a client hold a connection slot for as good as ever.
pub const MAX_HTTP_TIMEOUT_MS: u64 = 3_600_000;

/// The longest `http.shutdown_grace_ms`: the gateway and the admin port
/// each wait at most this at a stop, and with the QUIC port's 12 s and the
/// final snapshot a stop must fit the 30 s of a systemd `TimeoutStopSec`.
pub const MAX_HTTP_SHUTDOWN_GRACE_MS: u64 = 10_000;

// ---- The QUIC ingress before and after authentication ----
//
// A connection costs memory and a task from its first packet, but only a
// `Hello` with a token says who pays for it. These bound what a connection
// can hold before that, and what one authenticated connection can take of
// what all of them share. The configurable ones (`server.hello_timeout_ms`,
// `server.max_unauthenticated_connections`) are in `config`.

/// Longest frame read from a connection before its `Hello` succeeded. A
/// `Hello` is at most 4 + 9 + 2 + 2 + `MAX_TOKEN_BYTES` = 273 bytes; a
/// longer length prefix before it is refused as too large, so that an
/// unauthenticated stream buffers at most this much, not `MAX_FRAME_BYTES`.
pub const MAX_UNAUTHENTICATED_FRAME_BYTES: usize = 1024;

/// Streams a connection may open before its `Hello` succeeded: one for the
/// `Hello` and a few a client may open at once while it connects. Raised to
/// `server.max_streams_per_connection` by the `Hello`.
pub const MAX_UNAUTHENTICATED_STREAMS: u32 = 4;

/// Bytes the QUIC stack buffers for a connection before its `Hello`
/// succeeded (the connection's flow-control window): a few `Hello`s' worth.
/// Raised to the full window by the `Hello`. Without it a silent peer could
/// make the server hold 32 MiB per connection of bytes it never asked for.
pub const UNAUTHENTICATED_RECEIVE_WINDOW_BYTES: u32 = 16 * 1024;

/// One connection may have at most this fraction (1/N) of
/// `engine.max_inflight` orders in process, whatever
/// `server.max_inflight_per_connection` says: with 4, at least four busy
/// connections share the engine before any is answered `Overloaded`, and
/// the defaults (65 536 and 16 384) are unchanged by it.
pub const CONNECTION_SHARE_OF_ENGINE_INFLIGHT: usize = 4;

/// Answer bytes one connection may have queued and not yet handed to QUIC
/// (its client is not reading them). Past it the server stops reading the
/// connection's requests until they drain: a client that pipelines and
/// never reads cannot grow the daemon's memory. Four largest frames, so
/// that a busy reader is never held up by it.
pub const MAX_QUEUED_ANSWER_BYTES_PER_CONNECTION: usize = 4 << 20;

/// Subscribe and FollowOrders streams one connection may have open. Each
/// may hold `SUBSCRIBER_QUEUE_EVENTS` events while its reader lags; a node
/// or channel needs one, a console a few. More are answered `Overloaded`.
pub const MAX_FOLLOWS_PER_CONNECTION: usize = 16;

/// ListOrders requests of one connection in process at once: a paging
/// client asks for the next page after the last, so one is enough; a
/// second while one is in process is answered `Overloaded`.
pub const MAX_LISTINGS_PER_CONNECTION: usize = 1;

/// ListOrders requests in process at once, over QUIC and HTTP together.
/// Each costs every router a pass over its book, in steps of
/// `MAX_ORDERS_SCANNED_PER_LIST_STEP` between the batches it routes; two
/// at a time bound how many such steps a batch can find queued ahead of
/// it. More wait their turn.
pub const MAX_LISTINGS_IN_FLIGHT: usize = 2;

/// Orders a router passes in one step of a listing before it takes the
/// next message in its mailbox: a listing on a book of millions is then
/// many short steps with the batches that came meanwhile in between, not
/// one pass that stalls routing for its length. Passing an order is a
/// comparison or two on a record in memory: measured on a book of 200 000
/// orders, a step took 0.14 ms on average (0.22 ms for pages of 1000) in
/// a debug build (a release build is faster still), about what
/// routing a handful of orders takes; a million-order book is 250 steps.
pub const MAX_ORDERS_SCANNED_PER_LIST_STEP: usize = 4096;

/// How long one turn of an actor's snapshot step may image before the
/// actor goes back to its messages. A shard or node images its state a
/// step per turn while orders keep coming (copy before write keeps the
/// image exact); imaging a shard whole held every actor of its worker for
/// 1.5-13 ms (10 000 SKUs), and longer with more. 200 µs is under a tenth
/// of the order path's p99 at its highest rates here.
pub const IMAGE_STEP_BUDGET_US: u64 = 200;

/// Rows or orders imaged between two looks at the clock within a step: a
/// row of 80 nodes is about 1 µs to copy, so a step overshoots its budget
/// by little.
pub const IMAGE_ITEMS_PER_CLOCK_CHECK: usize = 64;
