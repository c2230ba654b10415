//! Stock through the engine: counts and adjustments journaled and sent to
//! their shards, bumped reservations handed to their routers, and reads of
//! availability.

use crate::engine::shard::Applied;
use futures::future::join_all;
use rustc_hash::FxHashMap;

use super::error::EngineError;
use super::router::RouterMsg;
use super::sequencer::Txn;
use super::shard::ShardMsg;
use super::{call, call_committed, Engine};
use crate::core::book::router_of_order;
use crate::core::geo::GeoPoint;
use crate::core::model::{NodeIdx, SkuId};
use crate::core::ops::StockOp;
use crate::core::stock::{Bumped, Cell, StockError, StockShard};
use crate::limits::{MAX_NEAREST_NODES, MAX_ON_HAND_UNITS, MAX_STOCK_UPDATES_PER_BATCH};

/// One entry of a WMS/ERP feed, by external names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StockUpdate {
    Set {
        sku: String,
        node: String,
        on_hand: u32,
        safety_stock: Option<u32>,
    },
    Adjust {
        sku: String,
        node: String,
        delta: i64,
    },
}

/// Refuses a feed with a count no cell may take, before anything changes:
/// on_hand and safety stock at most [`MAX_ON_HAND_UNITS`] (a count sets
/// on_hand, so the wire's 0xFFFFFFFF "unchanged" is for safety stock only),
/// and an adjustment no larger than that either way. An adjustment that
/// would take a cell past the limit is the shard's to refuse (it alone
/// knows the count), as an entry error that changes nothing.
pub(super) fn check_stock_quantities(updates: &[StockUpdate]) -> Result<(), EngineError> {
    let limit = i64::from(MAX_ON_HAND_UNITS);
    for (entry, update) in updates.iter().enumerate() {
        let reason = match update {
            StockUpdate::Set { on_hand, .. } if *on_hand == u32::MAX => {
                "on_hand 0xFFFFFFFF: a count sets on_hand (only safety_stock takes 0xFFFFFFFF as unchanged)".to_string()
            }
            StockUpdate::Set { on_hand, .. } if *on_hand > MAX_ON_HAND_UNITS => {
                format!("on_hand {on_hand} is above the limit of {MAX_ON_HAND_UNITS}")
            }
            StockUpdate::Set {
                safety_stock: Some(safety),
                ..
            } if *safety > MAX_ON_HAND_UNITS => {
                format!("safety_stock {safety} is above the limit of {MAX_ON_HAND_UNITS}")
            }
            StockUpdate::Adjust { delta, .. } if !(-limit..=limit).contains(delta) => {
                format!("adjustment {delta:+} is beyond ±{MAX_ON_HAND_UNITS}")
            }
            _ => continue,
        };
        let (StockUpdate::Set { sku, node, .. } | StockUpdate::Adjust { sku, node, .. }) = update;
        return Err(EngineError::StockQuantity {
            entry,
            sku: sku.clone(),
            node: node.clone(),
            reason,
        });
    }
    Ok(())
}

/// Refuses a feed whose new SKUs would not all fit in the catalog, before
/// any of them is interned. Called under the feed lock, the only place
/// SKUs are interned while the engine runs, so the room it sees stays.
fn check_catalog_room(
    index: &crate::core::index::AvailabilityIndex,
    updates: &[StockUpdate],
) -> Result<(), EngineError> {
    let mut new: rustc_hash::FxHashSet<&str> = rustc_hash::FxHashSet::default();
    for update in updates {
        let (StockUpdate::Set { sku, .. } | StockUpdate::Adjust { sku, .. }) = update;
        if index.lookup(sku).is_none() {
            new.insert(sku);
        }
    }
    if index.sku_count() + new.len() > index.max_skus() {
        return Err(crate::core::index::CatalogFull {
            max_skus: index.max_skus(),
        }
        .into());
    }
    Ok(())
}

/// What a stock update batch did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StockReport {
    pub applied: usize,
    /// Reservations that no longer fit and were routed again.
    pub bumped: Vec<Bumped>,
    pub errors: Vec<StockError>,
}

/// A node that holds a SKU, for availability answers.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeStock {
    pub node: NodeIdx,
    pub atp: u32,
    pub distance_km: Option<f64>,
    /// An offline node takes no orders, whatever its stock.
    pub online: bool,
}

impl Engine {
    /// Loads a whole starting stock (a config's, any size) in batches of
    /// `MAX_STOCK_UPDATES_PER_BATCH`.
    pub async fn load_stock(&self, updates: &[StockUpdate]) -> Result<(), EngineError> {
        for chunk in updates.chunks(MAX_STOCK_UPDATES_PER_BATCH) {
            self.update_stock(chunk).await?;
        }
        Ok(())
    }

    /// Applies a WMS/ERP feed: sets and adjustments, journaled as one
    /// record, then applied per shard. Unknown nodes refuse the whole batch
    /// before anything changes; new SKUs are added to the catalog.
    /// As [`Engine::update_stock`], but a SKU the daemon does not know
    /// refuses the whole feed (`UnknownSku`, naming it) with nothing
    /// changed, instead of adding it to the catalog: what a person typing
    /// counts wants, where a mistyped SKU would otherwise become a new,
    /// orderable one. The catalog only grows, so a SKU known here is still
    /// known when the feed applies.
    pub async fn update_known_stock(
        &self,
        updates: &[StockUpdate],
    ) -> Result<StockReport, EngineError> {
        for update in updates {
            let (StockUpdate::Set { sku, .. } | StockUpdate::Adjust { sku, .. }) = update;
            self.sku_id(sku)?;
        }
        self.update_stock(updates).await
    }

    pub async fn update_stock(&self, updates: &[StockUpdate]) -> Result<StockReport, EngineError> {
        if updates.len() > MAX_STOCK_UPDATES_PER_BATCH {
            return Err(EngineError::BatchTooLarge(updates.len()));
        }
        check_stock_quantities(updates)?;
        // Every node is resolved before any SKU is interned, so that an
        // unknown node refuses the batch with nothing changed.
        let nodes = updates
            .iter()
            .map(|update| {
                let (StockUpdate::Set { node, .. } | StockUpdate::Adjust { node, .. }) = update;
                self.node_idx(node)
            })
            .collect::<Result<Vec<NodeIdx>, EngineError>>()?;
        let _permit = self.admit(1).await;
        let shards = self.inner.participants.shards.clone();
        let shard_count = shards.len() as u32;
        let mut txn = Txn::default();
        let mut by_shard: Vec<Vec<StockOp>> = vec![Vec::new(); shards.len()];
        let mut answers = Vec::new();
        // Before the feed lock, which is not held across a wait.
        let place = self.inner.sequencer.reserve().await;
        {
            let _feed = self.inner.feed_lock.lock().expect("feed lock");
            let index = &self.inner.index;
            // All the batch's new SKUs fit, or none is interned: a SKU in
            // memory that no record names would be gone after a restart,
            // and the ids after it would no longer match the journal's.
            check_catalog_room(index, updates)?;
            let intern = |name: &str, txn: &mut Txn| -> Result<SkuId, EngineError> {
                if let Some(id) = index.lookup(name) {
                    return Ok(id);
                }
                let id = index.intern(name)?;
                txn.skus.push((id, name.to_string()));
                Ok(id)
            };
            for (update, node) in updates.iter().zip(nodes) {
                let op = match update {
                    StockUpdate::Set {
                        sku,
                        on_hand,
                        safety_stock,
                        ..
                    } => StockOp::Set {
                        sku: intern(sku, &mut txn)?,
                        node,
                        on_hand: *on_hand,
                        safety_stock: *safety_stock,
                    },
                    StockUpdate::Adjust { sku, delta, .. } => StockOp::Adjust {
                        sku: intern(sku, &mut txn)?,
                        node,
                        delta: *delta,
                    },
                };
                let shard = StockShard::shard_of(op.sku().expect("a cell op"), shard_count);
                txn.stock.push((shard, op.clone()));
                by_shard[shard as usize].push(op);
            }
            let mut sends = Vec::new();
            for (shard, ops) in by_shard.into_iter().enumerate() {
                if !ops.is_empty() {
                    let (reply, answer) = tokio::sync::oneshot::channel();
                    answers.push(answer);
                    sends.push((shard, ops, reply));
                }
            }
            self.inner.sequencer.append_in(place, txn, move |_| {
                for (shard, ops, reply) in sends {
                    let _ = shards[shard].cast(ShardMsg::Apply {
                        ops,
                        reply: Some(reply),
                    });
                }
            });
        }
        let mut report = StockReport {
            applied: updates.len(),
            ..StockReport::default()
        };
        for answer in answers {
            let Applied { bumped, errors } = answer.await.map_err(|_| EngineError::Unavailable)?;
            report.bumped.extend(bumped);
            report.applied -= errors.len();
            report.errors.extend(errors);
        }
        self.dispatch_bumps(report.bumped.clone(), self.now_ms())
            .await?;
        Ok(report)
    }

    /// `items` grouped by the router that owns each one's order.
    pub(super) fn by_router<T>(
        &self,
        items: Vec<T>,
        order: impl Fn(&T) -> u64,
    ) -> FxHashMap<usize, Vec<T>> {
        let routers = self.inner.routers.len();
        let mut grouped: FxHashMap<usize, Vec<T>> = FxHashMap::default();
        for item in items {
            grouped
                .entry(router_of_order(order(&item), routers))
                .or_default()
                .push(item);
        }
        grouped
    }

    /// Sends bumps to their routers and waits until they are placed again.
    pub(super) async fn dispatch_bumps(
        &self,
        bumps: Vec<Bumped>,
        now_ms: u64,
    ) -> Result<(), EngineError> {
        let routers = &self.inner.routers;
        let grouped = self.by_router(bumps, |b| b.order);
        for result in join_all(grouped.into_iter().map(|(r, bumps)| {
            call_committed(&routers[r], move |reply| RouterMsg::Bumped {
                bumps,
                now_ms,
                reply: Some(reply),
            })
        }))
        .await
        {
            result?;
        }
        Ok(())
    }

    /// Sends bumps to their routers without waiting.
    pub(super) fn forward_bumps(&self, bumps: Vec<Bumped>, now_ms: u64) {
        for (r, bumps) in self.by_router(bumps, |b| b.order) {
            let _ = self.inner.routers[r].cast(RouterMsg::Bumped {
                bumps,
                now_ms,
                reply: None,
            });
        }
    }

    /// ATP of a SKU at every node that has some, from the index.
    /// Every node with units of a SKU, offline ones too (marked), in the
    /// order of the `node_priority` rule (then the node's place).
    pub fn availability(&self, sku: &str) -> Result<Vec<NodeStock>, EngineError> {
        let sku = self.sku_id(sku)?;
        let index = &self.inner.index;
        let network = self.network_arc();
        let mut found: Vec<NodeStock> = (0..index.node_count() as NodeIdx)
            .map(|node| NodeStock {
                node,
                atp: index.atp(sku, node),
                distance_km: None,
                online: index.node_online(node),
            })
            .filter(|s| s.atp > 0 && (s.node as usize) < network.nodes.len())
            .collect();
        found.sort_by_key(|s| (network.node(s.node).priority, s.node));
        Ok(found)
    }

    /// The nearest online nodes to a point with at least `min_qty` of a SKU
    /// available (endless aisle), at most `count` (capped at MAX_NEAREST_NODES),
    /// nearest first.
    pub fn nearest(
        &self,
        sku: &str,
        point: GeoPoint,
        min_qty: u32,
        count: usize,
    ) -> Result<Vec<NodeStock>, EngineError> {
        let network = self.network_arc();
        let mut found: Vec<NodeStock> = self
            .availability(sku)?
            .into_iter()
            .filter(|s| s.atp >= min_qty.max(1) && s.online)
            .map(|s| NodeStock {
                distance_km: Some(point.distance_km(&network.node(s.node).location)),
                ..s
            })
            .collect();
        found.sort_by(|a, b| {
            a.distance_km
                .partial_cmp(&b.distance_km)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.node.cmp(&b.node))
        });
        found.truncate(count.min(MAX_NEAREST_NODES));
        Ok(found)
    }

    /// The exact cell, asked of its shard.
    pub async fn cell(&self, sku: &str, node: &str) -> Result<Cell, EngineError> {
        let (sku, node) = (self.sku_id(sku)?, self.node_idx(node)?);
        let shards = &self.inner.participants.shards;
        let shard = StockShard::shard_of(sku, shards.len() as u32);
        Ok(call(&shards[shard as usize], |reply| ShardMsg::Cell {
            sku,
            node,
            reply,
        })
        .await)
    }
}
