//! Orders through the engine: admitted under the in-flight bound, grouped
//! by router, and each lifecycle step sent to the router that owns it.

use futures::future::join_all;
use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use super::error::EngineError;
use super::feed::FeedMsg;
use super::mailbox::Mailbox;
use super::node::Subscription;
use super::router::RouterMsg;
use super::{call, call_committed, Engine};
use crate::core::book::{key_fingerprint, router_of_key, router_of_order};
use crate::core::model::OrderState;
use crate::core::model::{ChannelIdx, Decision, OrderRequest};
use crate::core::order::OrderRecord;
use crate::core::router::{answer_from_index, ListPage, OrderFilter, OrderRef};
use crate::core::status::OrderStatus;
use crate::limits::{MAX_ORDERS_PER_BATCH, MAX_ORDERS_PER_PAGE};

/// Which of a channel's orders [`Engine::list_orders`] pages through.
#[derive(Clone, Copy, Debug)]
pub struct OrderQuery<'a> {
    pub channel: &'a str,
    pub state: Option<OrderState>,
    /// Orders with units at this node.
    pub node: Option<&'a str>,
    /// Orders routed at or after this, and before `created_to_ms` (Unix
    /// ms; 0: no bound).
    pub created_from_ms: u64,
    pub created_to_ms: u64,
    /// Orders with a higher id: 0, then each page's next.
    pub after: u64,
    /// Orders per page, 1..=`MAX_ORDERS_PER_PAGE`.
    pub limit: usize,
}

impl Engine {
    fn router_for(&self, order: &OrderRef) -> &Mailbox<RouterMsg> {
        let routers = &self.inner.routers;
        match order {
            OrderRef::Id(id) => &routers[router_of_order(*id, routers.len())],
            OrderRef::Key {
                channel,
                client_order_id,
            } => &routers[router_of_key(channel, client_order_id, routers.len())],
        }
    }

    pub(super) async fn admit(&self, count: usize) -> tokio::sync::SemaphorePermit<'_> {
        let count = count.min(self.inner.max_inflight as usize) as u32;
        self.inner
            .admission
            .acquire_many(count)
            .await
            .expect("admission semaphore is never closed")
    }

    /// Routes one order.
    /// Routes one order. Panics if the journal failed; the daemon uses
    /// the batch calls, which answer that as an error.
    pub async fn submit(&self, order: OrderRequest) -> Decision {
        self.submit_batch(vec![order])
            .await
            .map(|mut d| d.remove(0))
            .expect("a batch of one is routed")
    }

    /// Routes many orders at once: one message per router, one hold message
    /// per shard and node touched. Waits while the engine is full.
    pub async fn submit_batch(
        &self,
        orders: Vec<OrderRequest>,
    ) -> Result<Vec<Decision>, EngineError> {
        check_batch(&orders)?;
        let _permit = self.admit(orders.len()).await;
        self.route(orders).await
    }

    /// Like [`Engine::submit_batch`], but answers `Overloaded` at once
    /// instead of waiting when too much is in flight.
    pub async fn try_submit_batch(
        &self,
        orders: Vec<OrderRequest>,
    ) -> Result<Vec<Decision>, EngineError> {
        check_batch(&orders)?;
        let count = orders.len().min(self.inner.max_inflight as usize) as u32;
        let Ok(_permit) = self.inner.admission.try_acquire_many(count) else {
            for order in &orders {
                self.inner.metrics.overloaded(self.channel_slot(order));
            }
            return Err(EngineError::Overloaded);
        };
        self.route(orders).await
    }

    fn channel_slot(&self, order: &OrderRequest) -> Option<usize> {
        self.inner
            .network
            .load()
            .channel_idx(&order.channel)
            .map(usize::from)
    }

    async fn route(&self, orders: Vec<OrderRequest>) -> Result<Vec<Decision>, EngineError> {
        let started = std::time::Instant::now();
        let channels: SmallVec<[Option<usize>; 16]> =
            orders.iter().map(|o| self.channel_slot(o)).collect();
        let routers = &self.inner.routers;
        let now_ms = self.now_ms();
        let total = orders.len();
        let mut answers: Vec<Option<Decision>> = vec![None; total];
        let in_session = self.answer_in_session(&orders, now_ms, &mut answers);
        let mut by_router: Vec<(Vec<OrderRequest>, Vec<usize>)> =
            vec![(Vec::new(), Vec::new()); routers.len()];
        let keys = self.inner.index.keys();
        // Marked from before its router sees it until it is answered: a
        // resubmission meanwhile (a client's retry) goes to the same router,
        // behind it, and gets its decision (see `answer_from_index`).
        let mut marks: Vec<u64> = Vec::new();
        for (i, order) in orders.into_iter().enumerate() {
            if answers[i].is_some() {
                continue;
            }
            if let Some(channel) = channels[i] {
                let mark = key_fingerprint(channel as ChannelIdx, &order.client_order_id);
                keys.add(mark);
                marks.push(mark);
            }
            let r = router_of_key(&order.channel, &order.client_order_id, routers.len());
            by_router[r].0.push(order);
            by_router[r].1.push(i);
        }
        let calls = by_router
            .into_iter()
            .enumerate()
            .filter(|(_, (o, _))| !o.is_empty())
            .map(|(r, (orders, slots))| async move {
                let decisions = call_committed(&routers[r], |reply| RouterMsg::Submit {
                    orders,
                    now_ms,
                    reply,
                })
                .await;
                (slots, decisions)
            });
        let seen_durable = async {
            if in_session > 0 {
                self.durable().await
            } else {
                Ok(())
            }
        };
        let (routed, seen_durable) = futures::join!(join_all(calls), seen_durable);
        // A kept order's key is marked by its book from now on.
        for mark in marks {
            keys.remove(mark);
        }
        seen_durable?;
        for (slots, decisions) in routed {
            for (slot, decision) in slots.into_iter().zip(decisions?) {
                answers[slot] = Some(decision);
            }
        }
        let metrics = &self.inner.metrics;
        metrics.latency(started.elapsed(), total);
        metrics.answered_in_session(in_session);
        Ok(answers
            .into_iter()
            .zip(channels)
            .map(|(d, channel)| {
                let decision = d.expect("every order answered");
                metrics.answered(channel, &decision);
                decision
            })
            .collect())
    }

    /// Answers the orders the index alone settles (see
    /// [`answer_from_index`]) into `answers`, and keeps their demand;
    /// returns how many. Their callers may be told only once what the
    /// index showed is durable ([`Engine::durable`]).
    fn answer_in_session(
        &self,
        orders: &[OrderRequest],
        now_ms: u64,
        answers: &mut [Option<Decision>],
    ) -> usize {
        // A failed engine answers nothing from memory: the routers' path
        // gives `Unavailable`.
        if self.inner.health.is_failed() {
            return 0;
        }
        // A key that comes twice in a batch goes to its router, which
        // answers the later ones from the first.
        let mut keys: FxHashMap<(&str, &str), u32> = FxHashMap::default();
        if orders.len() > 1 {
            for order in orders {
                *keys
                    .entry((order.channel.as_str(), order.client_order_id.as_str()))
                    .or_default() += 1;
            }
        }
        let network = self.network();
        let index = &self.inner.index;
        let mut demand = Vec::new();
        let mut answered = 0;
        for (order, answer) in orders.iter().zip(answers.iter_mut()) {
            let key = (order.channel.as_str(), order.client_order_id.as_str());
            if keys.get(&key).is_some_and(|&n| n > 1) {
                continue;
            }
            let Some(settled) = answer_from_index(&network, index, order, now_ms) else {
                continue;
            };
            demand.extend(settled.demand);
            *answer = Some(settled.decision);
            answered += 1;
        }
        let sequencer = &self.inner.sequencer;
        if sequencer.is_durable() && !demand.is_empty() {
            let metrics = &self.inner.metrics;
            self.inner.session_demand.push(demand, sequencer, metrics);
        }
        answered
    }

    /// Waits until every change sequenced so far is durable; an error if
    /// the journal failed (the caller must not be told what it saw).
    async fn durable(&self) -> Result<(), EngineError> {
        let (done, durable) = tokio::sync::oneshot::channel::<()>();
        self.inner
            .sequencer
            .after_durable(move || {
                let _ = done.send(());
            })
            .await;
        durable.await.map_err(|_| EngineError::Unavailable)
    }

    /// The order as it is now; `Archived` once it closed and retired.
    /// A channel's order statuses from `from_cursor` (0: the oldest kept),
    /// then live: every change of its orders, in journal order.
    pub async fn follow_orders(
        &self,
        channel: &str,
        from_cursor: u64,
    ) -> Result<Subscription<OrderStatus>, EngineError> {
        let channel = self
            .network()
            .channel_idx(channel)
            .ok_or_else(|| EngineError::UnknownChannel(channel.to_string()))?;
        let feed = &self.inner.participants.feed;
        Ok(call(feed, |reply| FeedMsg::Follow {
            channel,
            from_cursor,
            reply,
        })
        .await?)
    }

    /// One page of a channel's orders: up to `limit` matching orders in id
    /// order after `after`, and the id to pass as `after` for the next
    /// page (`None` after the last). Every router is asked for one more
    /// than the page holds, which tells whether another page follows.
    /// At most `MAX_LISTINGS_IN_FLIGHT` are in process at once, whichever
    /// ingress asked; more wait their turn here.
    pub async fn list_orders(
        &self,
        query: OrderQuery<'_>,
    ) -> Result<(Vec<OrderRecord>, Option<u64>), EngineError> {
        let network = self.network_arc();
        let channel = network
            .channel_idx(query.channel)
            .ok_or_else(|| EngineError::UnknownChannel(query.channel.to_string()))?;
        let node = match query.node {
            Some(node) => Some(self.node_idx(node)?),
            None => None,
        };
        let limit = query.limit.clamp(1, MAX_ORDERS_PER_PAGE);
        let filter = OrderFilter {
            channel,
            state: query.state,
            node,
            created_from_ms: query.created_from_ms,
            created_to_ms: query.created_to_ms,
            after: query.after,
            limit: limit + 1,
        };
        let _turn = self
            .inner
            .listings
            .acquire()
            .await
            .expect("the listings semaphore is never closed");
        let pages = join_all(self.inner.routers.iter().map(|router| {
            let filter = filter.clone();
            call_committed(router, move |reply| RouterMsg::List { filter, reply })
        }))
        .await;
        let pages = pages.into_iter().collect::<Result<Vec<_>, _>>()?;
        Ok(merge_pages(pages, limit))
    }

    pub async fn get(&self, order: OrderRef) -> Result<OrderRecord, EngineError> {
        let router = self.router_for(&order);
        Ok(call_committed(router, |reply| RouterMsg::Get { order, reply }).await??)
    }

    pub async fn confirm(&self, order: OrderRef) -> Result<OrderRecord, EngineError> {
        let _permit = self.admit(1).await;
        let router = self.router_for(&order);
        call_committed(router, |reply| RouterMsg::Confirm { order, reply })
            .await?
            .map_err(Into::into)
    }

    pub async fn cancel(&self, order: OrderRef) -> Result<OrderRecord, EngineError> {
        let _permit = self.admit(1).await;
        let router = self.router_for(&order);
        call_committed(router, |reply| RouterMsg::Cancel { order, reply })
            .await?
            .map_err(Into::into)
    }

    /// A node shipped `qty` units of `sku` for the order.
    pub async fn ship(
        &self,
        order: OrderRef,
        node: &str,
        sku: &str,
        qty: u32,
    ) -> Result<OrderRecord, EngineError> {
        let (node, sku) = (self.node_idx(node)?, self.sku_id(sku)?);
        let _permit = self.admit(1).await;
        let router = self.router_for(&order);
        call_committed(router, |reply| RouterMsg::Ship {
            order,
            node,
            sku,
            qty,
            reply,
        })
        .await?
        .map_err(Into::into)
    }

    /// A customer returned units at `node`, which puts them back in stock.
    pub async fn return_units(
        &self,
        order: OrderRef,
        node: &str,
        sku: &str,
        qty: u32,
    ) -> Result<OrderRecord, EngineError> {
        let (node, sku) = (self.node_idx(node)?, self.sku_id(sku)?);
        let _permit = self.admit(1).await;
        let router = self.router_for(&order);
        call_committed(router, |reply| RouterMsg::Return {
            order,
            node,
            sku,
            qty,
            reply,
        })
        .await?
        .map_err(Into::into)
    }

    /// A node refuses its allocation of the order, optionally reporting its
    /// true counts of some SKUs; the units are routed elsewhere.
    pub async fn node_reject(
        &self,
        order: OrderRef,
        node: &str,
        counts: &[(&str, u32)],
    ) -> Result<OrderRecord, EngineError> {
        let node = self.node_idx(node)?;
        let counts = counts
            .iter()
            .map(|(sku, n)| Ok((self.sku_id(sku)?, *n)))
            .collect::<Result<Vec<_>, EngineError>>()?;
        let _permit = self.admit(1).await;
        let now_ms = self.now_ms();
        let router = self.router_for(&order);
        call_committed(router, |reply| RouterMsg::Reject {
            order,
            node,
            counts,
            now_ms,
            reply,
        })
        .await?
        .map_err(Into::into)
    }
}

pub(super) fn check_batch(orders: &[OrderRequest]) -> Result<(), EngineError> {
    if orders.len() > MAX_ORDERS_PER_BATCH {
        return Err(EngineError::BatchTooLarge(orders.len()));
    }
    Ok(())
}

/// The page of `limit` orders the routers' pages (each of up to `limit + 1`
/// orders) make, and the `after` of the next page.
fn merge_pages(pages: Vec<ListPage>, limit: usize) -> (Vec<OrderRecord>, Option<u64>) {
    let mut orders = Vec::new();
    // The lowest id past which some router may have matches it did not
    // send: the page ends there at the latest.
    let mut complete_to: Option<u64> = None;
    for page in pages {
        orders.extend(page.orders);
        if let Some(to) = page.complete_to {
            complete_to = Some(complete_to.map_or(to, |c| c.min(to)));
        }
    }
    orders.sort_unstable_by_key(|o| o.id);
    if let Some(to) = complete_to {
        orders.retain(|o| o.id <= to);
    }
    // A router sends fewer than it found only when some of them changed or
    // retired while it listed (`Listing`); the page then ends where that
    // router's certainty does, and the next page goes on from there.
    let next = if orders.len() > limit {
        orders.truncate(limit);
        orders.last().map(|o| o.id)
    } else {
        complete_to
    };
    (orders, next)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::core::policy::Method;

    fn page(ids: &[u64], complete_to: Option<u64>) -> ListPage {
        let record = |id: u64| OrderRecord {
            id,
            fingerprint: 0,
            expires_at_ms: 0,
            client_order_id: Arc::from(format!("o-{id}")),
            lines: Box::new([]),
            ship_to: (0.0, 0.0),
            allocations: SmallVec::new(),
            extra: None,
            key_next: 0,
            channel: 0,
            market: None,
            method: Method::Ship,
            state: OrderState::Held,
            created_s: 0,
        };
        ListPage {
            orders: ids.iter().map(|&id| record(id)).collect(),
            complete_to,
        }
    }

    fn ids(merged: &(Vec<OrderRecord>, Option<u64>)) -> (Vec<u64>, Option<u64>) {
        (merged.0.iter().map(|o| o.id).collect(), merged.1)
    }

    #[test]
    fn a_page_ends_where_the_least_certain_router_does() {
        // Proves the merge of the routers' pages (limit + 1 each): with whole pages it is the
        // lowest `limit` ids and the last of them as the next `after`; when a router sends
        // fewer than it found (some changed or retired while it listed), the page stops at
        // that router's bound and the next page starts there, so no order past it is
        // skipped; and with nothing more anywhere there is no next page.
        let whole = merge_pages(vec![page(&[1, 4, 7], Some(7)), page(&[2, 3], None)], 2);
        assert_eq!(ids(&whole), (vec![1, 2], Some(2)));
        // Router A found 1, 4 and 7 but 4 retired before its last step; it may have 8 too.
        let short = merge_pages(vec![page(&[1, 7], Some(7)), page(&[], None)], 2);
        assert_eq!(ids(&short), (vec![1, 7], Some(7)));
        let shorter = merge_pages(vec![page(&[1], Some(7)), page(&[9, 10], None)], 2);
        assert_eq!(
            ids(&shorter),
            (vec![1], Some(7)),
            "9 and 10 wait for the next page"
        );
        let emptied = merge_pages(vec![page(&[], Some(7)), page(&[], None)], 2);
        assert_eq!(ids(&emptied), (vec![], Some(7)));
        let last = merge_pages(vec![page(&[5], None), page(&[6], None)], 2);
        assert_eq!(ids(&last), (vec![5, 6], None));
    }
}
