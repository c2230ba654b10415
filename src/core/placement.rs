//! Placing units: plan, hold at the shards, hold capacity at the nodes, and
//! commit or abort; re-plan on a short or full answer, a bounded number of
//! times. This is the one place where the two-phase reservation lives.
//!
//! It is plain Rust over the [`Participants`] trait: the actor shell
//! implements it with messages, the in-memory driver with direct calls.
//! Nothing here spawns, sleeps or reads a clock.

use std::future::Future;

use futures::future::join_all;
use smallvec::SmallVec;

use super::capacity::CapacityOutcome;
use super::geo::GeoPoint;
use super::index::AvailabilityIndex;
use super::model::{
    Allocation, ChannelIdx, MarketIdx, NodeIdx, OrderId, RejectReason, ShortLine, SkuId,
};
use super::network::Network;
use super::ops::{NodeOp, StockOp};
use super::policy::{plan, Method, OnShort, Plan, PlanError, PlanLine, PlanRequest};
use super::stock::{HoldItem, HoldOutcome, StockShard};
use crate::limits::MAX_HOLD_ATTEMPTS;

/// The shards and node ledgers, as seen by a router.
pub trait Participants {
    fn hold_stock(
        &self,
        shard: u32,
        items: Vec<HoldItem>,
    ) -> impl Future<Output = Vec<HoldOutcome>>;
    fn hold_capacity(
        &self,
        node: NodeIdx,
        orders: Vec<OrderId>,
        now_ms: u64,
    ) -> impl Future<Output = Vec<CapacityOutcome>>;
    fn stock_ops(&self, shard: u32, ops: Vec<StockOp>);
    fn node_ops(&self, node: NodeIdx, ops: Vec<NodeOp>);
}

/// Read-only context every router plans with.
pub struct PlanContext<'a> {
    pub network: &'a Network,
    pub index: &'a AvailabilityIndex,
    pub shard_count: u32,
}

/// Units to place for one order: a new order's lines, or the part of an
/// open order that must move (node rejection, node offline, lost stock).
#[derive(Clone, Debug)]
pub struct Attempt {
    pub order: OrderId,
    pub lines: SmallVec<[PlanLine; 4]>,
    pub ship_to: GeoPoint,
    pub market: Option<MarketIdx>,
    pub method: Method,
    /// The channel whose routing policy applies.
    pub channel: ChannelIdx,
    /// Nodes never to use for this order.
    pub excluded: SmallVec<[NodeIdx; 4]>,
}

impl Attempt {
    /// What the planner is asked for this attempt: `excluded` is its own
    /// exclusions plus any nodes refused so far.
    pub fn request<'a>(&'a self, excluded: &'a [NodeIdx], widen: bool) -> PlanRequest<'a> {
        PlanRequest {
            order: self.order,
            lines: &self.lines,
            ship_to: self.ship_to,
            market: self.market,
            method: self.method,
            excluded,
            widen,
        }
    }
}

/// What placing one attempt came to. Successful placements are committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    Placed {
        allocations: Vec<Allocation>,
        short: Vec<ShortLine>,
    },
    Failed(RejectReason),
}

/// The items sent to one shard, and for each the (attempt, line) it answers.
type ShardBatch = (Vec<HoldItem>, SmallVec<[(usize, usize); 4]>);

/// Per-attempt progress while the loop runs.
struct Progress {
    widen: bool,
    tries: u32,
    /// Nodes excluded for this placement only (full or offline when asked).
    refused: SmallVec<[NodeIdx; 4]>,
    outcome: Option<Placement>,
    /// The last plan left candidates out (see `Plan::truncated`).
    truncated: bool,
    /// Per line of the attempt: what the shard answered this round.
    held: SmallVec<[HoldOutcome; 4]>,
    /// The first round's plan, made ahead (see [`place_planned`]).
    planned: Option<Result<Plan, PlanError>>,
}

/// Values grouped by a key (a shard, a node). An order touches a handful of
/// shards and nodes, so a short list searched in place beats a hash map,
/// which cost placement an allocation and a hash per group.
struct Grouped<K, V>(SmallVec<[(K, V); 4]>);

impl<K: PartialEq + Copy, V: Default> Grouped<K, V> {
    fn new() -> Self {
        Grouped(SmallVec::new())
    }

    /// The group of `key`, made empty on first use.
    fn entry(&mut self, key: K) -> &mut V {
        let position = match self.0.iter().position(|(k, _)| *k == key) {
            Some(position) => position,
            None => {
                self.0.push((key, V::default()));
                self.0.len() - 1
            }
        };
        &mut self.0[position].1
    }
}

impl<K: PartialEq + Copy, V: Default> Default for Grouped<K, V> {
    fn default() -> Self {
        Grouped::new()
    }
}

impl<K, V> IntoIterator for Grouped<K, V> {
    type Item = (K, V);
    type IntoIter = smallvec::IntoIter<[(K, V); 4]>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

fn group_stock_ops(ops: impl IntoIterator<Item = (u32, StockOp)>) -> Grouped<u32, Vec<StockOp>> {
    let mut grouped: Grouped<u32, Vec<StockOp>> = Grouped::new();
    for (shard, op) in ops {
        grouped.entry(shard).push(op);
    }
    grouped
}

/// Sends grouped ops: every shard and node named gets one message.
pub fn send_ops<P: Participants>(
    participants: &P,
    stock: impl IntoIterator<Item = (u32, Vec<StockOp>)>,
    nodes: impl IntoIterator<Item = (NodeIdx, Vec<NodeOp>)>,
) {
    for (shard, ops) in stock {
        participants.stock_ops(shard, ops);
    }
    for (node, ops) in nodes {
        participants.node_ops(node, ops);
    }
}

/// Places a batch of attempts and commits the successful ones. Returns one
/// placement per attempt, in order.
pub async fn place<P: Participants>(
    context: &PlanContext<'_>,
    attempts: &[Attempt],
    now_ms: u64,
    participants: &P,
) -> Vec<Placement> {
    place_planned(context, attempts, &mut [], now_ms, participants).await
}

/// [`place`], with the first round's plan of some attempts made ahead
/// (`planned[i]` for `attempts[i]`; None or missing: planned here). A plan
/// made ahead must be the one `plan` would make now, as a
/// [`super::policy::PlanStamp`] that still holds proves.
pub async fn place_planned<P: Participants>(
    context: &PlanContext<'_>,
    attempts: &[Attempt],
    planned: &mut [Option<Result<Plan, PlanError>>],
    now_ms: u64,
    participants: &P,
) -> Vec<Placement> {
    // Inline for the common batch of one order: placing used to cost a
    // dozen small allocations per order, a tenth of a replay.
    let mut progress: SmallVec<[Progress; 1]> = (0..attempts.len())
        .map(|i| Progress {
            widen: false,
            tries: 0,
            refused: SmallVec::new(),
            outcome: None,
            truncated: false,
            held: SmallVec::new(),
            planned: planned.get_mut(i).and_then(Option::take),
        })
        .collect();
    loop {
        let active: SmallVec<[usize; 4]> = (0..attempts.len())
            .filter(|&i| progress[i].outcome.is_none())
            .collect();
        if active.is_empty() {
            break;
        }
        hold_stock_round(context, attempts, &mut progress, &active, participants).await;
        let mut aborts: Vec<(u32, StockOp)> = Vec::new();
        let candidates = judge_stock(context, attempts, &mut progress, &active, &mut aborts);
        let refused_nodes = hold_capacity_round(
            context,
            attempts,
            &mut progress,
            &candidates,
            now_ms,
            participants,
            &mut aborts,
        )
        .await;
        let mut node_aborts: Grouped<NodeIdx, Vec<NodeOp>> = Grouped::new();
        for (node, order) in refused_nodes {
            node_aborts.entry(node).push(NodeOp::Release(order));
        }
        send_ops(participants, group_stock_ops(aborts), node_aborts);
    }
    commit(context, attempts, &progress, now_ms, participants);
    progress
        .into_iter()
        .map(|p| p.outcome.expect("every attempt ends"))
        .collect()
}

async fn hold_stock_round<P: Participants>(
    context: &PlanContext<'_>,
    attempts: &[Attempt],
    progress: &mut [Progress],
    active: &[usize],
    participants: &P,
) {
    let mut by_shard: Grouped<u32, ShardBatch> = Grouped::new();
    for &i in active {
        let attempt = &attempts[i];
        let state = &mut progress[i];
        state.tries += 1;
        let mut excluded = attempt.excluded.clone();
        excluded.extend_from_slice(&state.refused);
        let request = attempt.request(&excluded, state.widen);
        let planned = match state.planned.take() {
            Some(made_ahead) => made_ahead,
            None => plan(
                context.network,
                context.network.policy(attempt.channel),
                context.index,
                &request,
            ),
        };
        match settled_by_plan(context.network, attempt, planned) {
            Err(reason) => state.outcome = Some(Placement::Failed(reason)),
            Ok(plan) => {
                state.truncated = plan.truncated;
                state.held = smallvec::smallvec![HoldOutcome::Undone; plan.items.len()];
                for (line_pos, item) in plan.items.into_iter().enumerate() {
                    if item.candidates.is_empty() {
                        state.held[line_pos] = HoldOutcome::Short { available: 0 };
                        continue;
                    }
                    let shard = StockShard::shard_of(item.sku, context.shard_count);
                    let entry = by_shard.entry(shard);
                    entry.0.push(item);
                    entry.1.push((i, line_pos));
                }
            }
        }
    }
    let (slots_by_shard, asks): (SmallVec<[_; 4]>, Vec<_>) = by_shard
        .into_iter()
        .map(|(shard, (items, slots))| (slots, participants.hold_stock(shard, items)))
        .unzip();
    let replies = join_all(asks).await;
    for (slots, outcomes) in slots_by_shard.into_iter().zip(replies) {
        assert_eq!(
            slots.len(),
            outcomes.len(),
            "shard answered a different number of items"
        );
        for ((i, line_pos), outcome) in slots.into_iter().zip(outcomes) {
            progress[i].held[line_pos] = outcome;
        }
    }
}

/// The plan of an attempt, or the rejection its plan alone settles: the
/// plan failed, or (all-or-nothing) a line has no node with any units by
/// the index, which is short without asking a shard. Nothing is held
/// either way, so a session may answer an order from this alone
/// (`crate::core::router::answer_from_index`) exactly as a router would.
pub fn settled_by_plan(
    network: &Network,
    attempt: &Attempt,
    planned: Result<Plan, PlanError>,
) -> Result<Plan, RejectReason> {
    let plan = planned.map_err(|error| unplanned_reason(attempt, error))?;
    if network.policy(attempt.channel).on_short == OnShort::Partial {
        return Ok(plan);
    }
    let empty: Vec<ShortLine> = plan
        .items
        .iter()
        .filter(|item| item.candidates.is_empty())
        .map(|item| ShortLine {
            line: item.line,
            sku: item.sku,
            requested: item.qty,
            available: 0,
        })
        .collect();
    if empty.is_empty() {
        Ok(plan)
    } else {
        Err(RejectReason::Short { lines: empty })
    }
}

/// What an attempt whose plan failed comes to: it fails as it is, having
/// held nothing, and leaves the other attempts placed with it as they
/// would be without it (a caller holding a failed plan made ahead may skip
/// placing it).
pub fn unplanned(attempt: &Attempt, error: PlanError) -> Placement {
    Placement::Failed(unplanned_reason(attempt, error))
}

fn unplanned_reason(attempt: &Attempt, error: PlanError) -> RejectReason {
    match error {
        PlanError::NoEligibleNode(filter) => RejectReason::NoEligibleNode { filter },
        PlanError::Unavailable { lines } => {
            let lines = lines
                .into_iter()
                .map(|i| {
                    let line = &attempt.lines[i];
                    ShortLine {
                        line: line.line,
                        sku: line.sku,
                        requested: line.qty,
                        available: 0,
                    }
                })
                .collect();
            RejectReason::Short { lines }
        }
    }
}

/// Decides, per attempt, whether its stock holds stand. Attempts whose holds
/// stand are returned for the capacity round; failed ones are aborted.
fn judge_stock(
    context: &PlanContext<'_>,
    attempts: &[Attempt],
    progress: &mut [Progress],
    active: &[usize],
    aborts: &mut Vec<(u32, StockOp)>,
) -> SmallVec<[usize; 4]> {
    let mut standing = SmallVec::new();
    for &i in active {
        let state = &mut progress[i];
        if state.outcome.is_some() {
            continue;
        }
        let attempt = &attempts[i];
        let policy = context.network.policy(attempt.channel);
        let partial = policy.on_short == OnShort::Partial;
        let mut short = Vec::new();
        let mut any_held = false;
        for (line, outcome) in attempt.lines.iter().zip(&state.held) {
            match outcome {
                HoldOutcome::Held(parts) => {
                    any_held = true;
                    let held: u32 = parts.iter().map(|p| p.1).sum();
                    if held < line.qty {
                        short.push(ShortLine {
                            line: line.line,
                            sku: line.sku,
                            requested: line.qty,
                            available: held,
                        });
                    }
                }
                HoldOutcome::Short { available } => {
                    short.push(ShortLine {
                        line: line.line,
                        sku: line.sku,
                        requested: line.qty,
                        available: *available,
                    });
                }
                HoldOutcome::Undone => {}
            }
        }
        let too_many = held_nodes(&state.held).len() > usize::from(policy.max_shipments.max(1));
        let failed = too_many || !any_held || (!short.is_empty() && !partial);
        if !failed {
            standing.push(i);
            continue;
        }
        abort_stock(context, attempt, aborts);
        if too_many {
            state.outcome = Some(Placement::Failed(RejectReason::TooManyShipments {
                max_shipments: policy.max_shipments,
            }));
        } else if !state.widen && state.truncated {
            // Nodes were left off the first list: offer every eligible one.
            state.widen = true;
        } else {
            state.outcome = Some(Placement::Failed(RejectReason::Short { lines: short }));
        }
    }
    standing
}

fn abort_stock(context: &PlanContext<'_>, attempt: &Attempt, aborts: &mut Vec<(u32, StockOp)>) {
    let skus = attempt.lines.iter().map(|l| l.sku);
    per_shard(context, skus, StockOp::Abort(attempt.order), aborts);
}

/// One `op` for each distinct shard owning one of `skus`.
fn per_shard(
    context: &PlanContext<'_>,
    skus: impl Iterator<Item = SkuId>,
    op: StockOp,
    out: &mut Vec<(u32, StockOp)>,
) {
    let mut shards: SmallVec<[u32; 8]> = skus
        .map(|sku| StockShard::shard_of(sku, context.shard_count))
        .collect();
    shards.sort_unstable();
    shards.dedup();
    out.extend(shards.into_iter().map(|shard| (shard, op.clone())));
}

/// The distinct nodes an attempt's holds landed on: its shipments.
fn held_nodes(held: &[HoldOutcome]) -> SmallVec<[NodeIdx; 8]> {
    let mut nodes: SmallVec<[NodeIdx; 8]> = SmallVec::new();
    for outcome in held {
        if let HoldOutcome::Held(parts) = outcome {
            nodes.extend(parts.iter().map(|p| p.0));
        }
    }
    nodes.sort_unstable();
    nodes.dedup();
    nodes
}

/// Asks every node an attempt's holds landed on for one allocation of
/// capacity. Returns the (node, order) capacity holds to abort.
async fn hold_capacity_round<P: Participants>(
    context: &PlanContext<'_>,
    attempts: &[Attempt],
    progress: &mut [Progress],
    standing: &[usize],
    now_ms: u64,
    participants: &P,
    aborts: &mut Vec<(u32, StockOp)>,
) -> Vec<(NodeIdx, OrderId)> {
    let mut by_node: Grouped<NodeIdx, (Vec<OrderId>, SmallVec<[usize; 4]>)> = Grouped::new();
    for &i in standing {
        for node in held_nodes(&progress[i].held) {
            let entry = by_node.entry(node);
            entry.0.push(attempts[i].order);
            entry.1.push(i);
        }
    }
    let (asked, asks): (SmallVec<[_; 4]>, Vec<_>) = by_node
        .into_iter()
        .map(|(node, (orders, who))| {
            (
                (node, who),
                participants.hold_capacity(node, orders, now_ms),
            )
        })
        .unzip();
    let replies = join_all(asks).await;
    let mut granted: SmallVec<[(NodeIdx, usize); 4]> = SmallVec::new();
    let mut refused_any: SmallVec<[usize; 4]> = SmallVec::new();
    for ((node, who), outcomes) in asked.into_iter().zip(replies) {
        for (i, outcome) in who.into_iter().zip(outcomes) {
            match outcome {
                CapacityOutcome::Held => granted.push((node, i)),
                CapacityOutcome::AlreadyServing => {}
                CapacityOutcome::Full | CapacityOutcome::Offline => {
                    progress[i].refused.push(node);
                    if !refused_any.contains(&i) {
                        refused_any.push(i);
                    }
                }
            }
        }
    }
    let mut node_aborts = Vec::new();
    for (node, i) in granted {
        if refused_any.contains(&i) {
            node_aborts.push((node, attempts[i].order));
        }
    }
    for &i in standing {
        let state = &mut progress[i];
        if refused_any.contains(&i) {
            abort_stock(context, &attempts[i], aborts);
            if state.tries >= MAX_HOLD_ATTEMPTS {
                state.outcome = Some(Placement::Failed(RejectReason::Contention {
                    attempts: state.tries,
                }));
            }
            continue;
        }
        state.outcome = Some(placed(&attempts[i], &state.held));
    }
    node_aborts
}

fn placed(attempt: &Attempt, held: &[HoldOutcome]) -> Placement {
    let mut allocations = Vec::new();
    let mut short = Vec::new();
    for (line, outcome) in attempt.lines.iter().zip(held) {
        let mut got = 0;
        if let HoldOutcome::Held(parts) = outcome {
            for &(node, qty) in parts {
                allocations.push(Allocation {
                    line: line.line,
                    sku: line.sku,
                    node,
                    qty,
                });
                got += qty;
            }
        }
        if got < line.qty {
            let available = match outcome {
                HoldOutcome::Short { available } => *available,
                _ => got,
            };
            short.push(ShortLine {
                line: line.line,
                sku: line.sku,
                requested: line.qty,
                available,
            });
        }
    }
    Placement::Placed { allocations, short }
}

/// Turns the stock holds of every placed attempt into reservations and
/// records the capacity its nodes granted.
fn commit<P: Participants>(
    context: &PlanContext<'_>,
    attempts: &[Attempt],
    progress: &[Progress],
    now_ms: u64,
    participants: &P,
) {
    let mut stock: Grouped<u32, Vec<StockOp>> = Grouped::new();
    let mut nodes: Grouped<NodeIdx, Vec<NodeOp>> = Grouped::new();
    for (attempt, state) in attempts.iter().zip(progress) {
        let Some(Placement::Placed { allocations, .. }) = &state.outcome else {
            continue;
        };
        let mut taken: SmallVec<[NodeIdx; 4]> = SmallVec::new();
        for a in allocations {
            let shard = StockShard::shard_of(a.sku, context.shard_count);
            stock.entry(shard).push(StockOp::Reserve {
                order: attempt.order,
                sku: a.sku,
                node: a.node,
                qty: a.qty,
            });
            if !taken.contains(&a.node) {
                taken.push(a.node);
                nodes.entry(a.node).push(NodeOp::Take {
                    order: attempt.order,
                    at_ms: now_ms,
                });
            }
        }
    }
    send_ops(participants, stock, nodes);
}
