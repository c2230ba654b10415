//! An order as a router keeps it: its allocations over its life, the rare
//! parts boxed apart, and the submit decision rebuilt from it (in memory
//! and, for the replay, in place from an archived record).

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use rustc_hash::FxHasher;
use smallvec::SmallVec;

use super::error::RestoreError;
use super::model::{
    Allocation, ArchivedOrderState, ArchivedRejectReason, ChannelIdx, Decision, MarketIdx, NodeIdx,
    OrderId, OrderState, RejectReason, ShortLine, SkuId,
};
use super::ops::NodeOp;
use super::policy::{Method, PlanLine};

/// One line's units at one node over the order's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct AllocationState {
    pub line: u16,
    pub node: NodeIdx,
    pub sku: SkuId,
    /// Units the decision at submit placed here (0 for units a re-route
    /// brought later); the submit decision is rebuilt from these.
    pub initial: u32,
    /// Reserved and not yet shipped.
    pub open: u32,
    pub shipped: u32,
    pub returned: u32,
}

/// The parts of an order that most orders never need, boxed so that the
/// common record stays small (a daemon keeps millions of them).
#[derive(Clone, Debug, Default, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) struct RareParts {
    /// Lines (partly) unallocated now: at submit under a partial policy, or
    /// after a re-route found no other node.
    pub(crate) short: Vec<ShortLine>,
    /// The short lines the submit decision reported.
    pub(crate) short_at_decision: Vec<ShortLine>,
    /// Nodes that rejected the order or went offline while serving it.
    pub(crate) excluded: SmallVec<[NodeIdx; 4]>,
    /// Why the order was rejected at submit.
    pub(crate) rejection: Option<RejectReason>,
}

/// An order as the book keeps it.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct OrderRecord {
    pub id: OrderId,
    /// Hash of the request body, to tell a retry from a conflicting reuse.
    pub(crate) fingerprint: u64,
    pub expires_at_ms: u64,
    pub client_order_id: Arc<str>,
    pub lines: Box<[PlanLine]>,
    /// Ship-to latitude and longitude, in degrees.
    pub ship_to: (f64, f64),
    pub allocations: SmallVec<[AllocationState; 1]>,
    pub(crate) extra: Option<Box<RareParts>>,
    /// The next older order whose key has the same hash, as sequence + 1
    /// (0: none). Keys are found by hash, and collisions chain through here.
    /// Rebuilt on load, so never stored.
    #[rkyv(with = rkyv::with::Skip)]
    pub(crate) key_next: u32,
    pub channel: ChannelIdx,
    pub market: Option<MarketIdx>,
    pub method: Method,
    pub state: OrderState,
    /// When the order was routed, in seconds since `CREATED_EPOCH_UNIX_S`
    /// (0: not recorded: the order was written before this field was).
    /// Last, where the archived record had padding: records written
    /// without it read as 0 (pinned by a test), so the format stands.
    pub created_s: u32,
}

/// The epoch of [`OrderRecord::created_s`]: 2024-01-01T00:00:00Z. A `u32`
/// of seconds from there lasts until 2160.
pub const CREATED_EPOCH_UNIX_S: u64 = 1_704_067_200;

/// `now_ms` as an [`OrderRecord::created_s`].
pub fn created_s(now_ms: u64) -> u32 {
    (now_ms / 1000)
        .saturating_sub(CREATED_EPOCH_UNIX_S)
        .clamp(1, u64::from(u32::MAX)) as u32
}

/// Hash of what an order asks for (lines, ship-to, market, hold TTL,
/// method), kept in its record to tell a retry of the same request from a
/// conflicting reuse of its key. Stored in snapshots and the journal, so a
/// test pins it: a change of hasher would make every retry after an upgrade
/// a conflict.
pub fn request_fingerprint(
    lines: &[PlanLine],
    ship_to: (f64, f64),
    market: Option<MarketIdx>,
    hold_ttl_ms: u64,
    method: Method,
) -> u64 {
    let mut hasher = FxHasher::default();
    for line in lines {
        (line.sku, line.qty).hash(&mut hasher);
    }
    (
        ship_to.0.to_bits(),
        ship_to.1.to_bits(),
        market,
        hold_ttl_ms,
    )
        .hash(&mut hasher);
    match method {
        Method::Ship => 0u32.hash(&mut hasher),
        Method::SameDay => 1u32.hash(&mut hasher),
        Method::Pickup { store } => (2u32, store).hash(&mut hasher),
    }
    hasher.finish()
}

/// A run of a book's orders, archived as a `Vec<OrderRecord>` straight
/// from where they lie: a snapshot encodes the book a run at a time and
/// never copies the orders on the heap (the copies of a first snapshot of
/// a million orders were fresh memory, and zeroing it stalled routing).
pub struct BookChunk<'a>(pub &'a [OrderRecord]);

impl rkyv::Archive for BookChunk<'_> {
    type Archived = rkyv::vec::ArchivedVec<ArchivedOrderRecord>;
    type Resolver = rkyv::vec::VecResolver;

    fn resolve(&self, resolver: Self::Resolver, out: rkyv::Place<Self::Archived>) {
        rkyv::vec::ArchivedVec::resolve_from_len(self.0.len(), resolver, out);
    }
}

impl<S> rkyv::Serialize<S> for BookChunk<'_>
where
    S: rkyv::rancor::Fallible + rkyv::ser::Allocator + rkyv::ser::Writer + ?Sized,
    OrderRecord: rkyv::Serialize<S>,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        rkyv::vec::ArchivedVec::serialize_from_slice(self.0, serializer)
    }
}

impl BookChunk<'_> {
    /// The archive of these orders, written into `out` (emptied first, so a
    /// buffer can serve one chunk after another).
    pub fn encode(&self, mut out: rkyv::util::AlignedVec) -> rkyv::util::AlignedVec {
        out.clear();
        rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(self, out)
            .expect("orders always serialize")
    }
}

impl OrderRecord {
    /// When the order was routed (Unix ms, to the second), if recorded.
    pub fn created_at_ms(&self) -> Option<u64> {
        (self.created_s != 0).then(|| (u64::from(self.created_s) + CREATED_EPOCH_UNIX_S) * 1000)
    }

    /// Lines (partly) unallocated now.
    pub fn short(&self) -> &[ShortLine] {
        self.extra.as_ref().map_or(&[], |e| &e.short)
    }

    /// Nodes this order must not use any more.
    pub fn excluded(&self) -> &[NodeIdx] {
        self.extra.as_ref().map_or(&[], |e| &e.excluded)
    }

    /// What tells `node` the order no longer needs it: `Finish` when units
    /// shipped from there (the day's capacity was used), else `Release`.
    pub(crate) fn leave(&self, node: NodeIdx) -> NodeOp {
        if self
            .allocations
            .iter()
            .any(|a| a.node == node && a.shipped > 0)
        {
            NodeOp::Finish(self.id)
        } else {
            NodeOp::Release(self.id)
        }
    }

    pub(crate) fn extra_mut(&mut self) -> &mut RareParts {
        self.extra.get_or_insert_with(Default::default)
    }

    /// The answer given at submit, rebuilt for a resubmission.
    pub fn decision(&self) -> Decision {
        if self.state == OrderState::Rejected {
            let reason = self.extra.as_ref().and_then(|e| e.rejection.clone());
            return Decision::Rejected(reason.expect("a rejected order keeps its reason"));
        }
        Decision::Routed {
            order_id: self.id,
            allocations: self
                .allocations
                .iter()
                .filter(|a| a.initial > 0)
                .map(|a| Allocation {
                    line: a.line,
                    sku: a.sku,
                    node: a.node,
                    qty: a.initial,
                })
                .collect(),
            short: self
                .extra
                .as_ref()
                .map_or_else(Vec::new, |e| e.short_at_decision.clone()),
            expires_at_ms: self.expires_at_ms,
        }
    }
}

/// A journaled submit decision as the what-if replay compares it, read in
/// place from the archived record: the common order needs no allocation.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedDecision {
    /// The units placed at submit (as [`OrderRecord::decision`] lists them).
    pub allocations: SmallVec<[Allocation; 4]>,
    /// Lines reported short: at submit under a partial policy, or the
    /// lines of a short rejection.
    pub short_lines: usize,
    /// Why it was rejected, if it was. A short rejection comes without its
    /// lines (`short_lines` counts them): the replay compares kinds.
    pub rejection: Option<RejectReason>,
}

impl ArchivedOrderRecord {
    /// The submit decision journaled with this record; a rejected record
    /// without its reason is damage, reported, never a panic.
    pub fn recorded_decision(&self) -> Result<RecordedDecision, RestoreError> {
        let extra = self.extra.as_ref();
        if matches!(self.state, ArchivedOrderState::Rejected) {
            let Some(reason) = extra.and_then(|e| e.rejection.as_ref()) else {
                return Err(RestoreError::RejectedWithoutReason {
                    order: self.id.to_native(),
                });
            };
            let (rejection, short_lines) = match reason {
                ArchivedRejectReason::Short { lines } => {
                    (RejectReason::Short { lines: Vec::new() }, lines.len())
                }
                other => (
                    rkyv::deserialize::<RejectReason, rkyv::rancor::Error>(other).map_err(|e| {
                        RestoreError::UnreadableReason {
                            order: self.id.to_native(),
                            reason: e.to_string(),
                        }
                    })?,
                    0,
                ),
            };
            return Ok(RecordedDecision {
                allocations: SmallVec::new(),
                short_lines,
                rejection: Some(rejection),
            });
        }
        Ok(RecordedDecision {
            allocations: self
                .allocations
                .iter()
                .filter(|a| a.initial.to_native() > 0)
                .map(|a| Allocation {
                    line: a.line.to_native(),
                    sku: a.sku.to_native(),
                    node: a.node.to_native(),
                    qty: a.initial.to_native(),
                })
                .collect(),
            short_lines: extra.map_or(0, |e| e.short_at_decision.len()),
            rejection: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_fingerprints_are_what_they_always_were() {
        // Proves the fingerprint of a request is what it was when these values were taken:
        // records on disk keep it, and a resubmission after a restart is compared with it, so
        // a change of hasher (a crate update) would answer every retry as a conflicting reuse.
        // If this fails, the data directory format must change with it.
        let line = |sku, qty| PlanLine { line: 0, sku, qty };
        let fingerprints = [
            request_fingerprint(&[line(0, 1)], (52.52, 13.40), None, 900_000, Method::Ship),
            request_fingerprint(
                &[line(7, 2), line(9, 1)],
                (48.86, 2.35),
                Some(1),
                60_000,
                Method::SameDay,
            ),
            request_fingerprint(
                &[line(3, 5)],
                (-33.9, 151.2),
                Some(0),
                1,
                Method::Pickup { store: 4 },
            ),
        ];
        assert_eq!(fingerprints, PINNED_FINGERPRINTS, "fingerprints changed");
    }

    const PINNED_FINGERPRINTS: [u64; 3] = [
        2353091760135205104,
        8019997080160547932,
        16420184132120123125,
    ];

    /// `OrderRecord` as written before `created_s`: the same fields, in
    /// the same order, without it.
    #[derive(rkyv::Archive, rkyv::Serialize)]
    struct RecordBefore {
        id: OrderId,
        fingerprint: u64,
        expires_at_ms: u64,
        client_order_id: Arc<str>,
        lines: Box<[PlanLine]>,
        ship_to: (f64, f64),
        allocations: SmallVec<[AllocationState; 1]>,
        extra: Option<Box<RareParts>>,
        channel: ChannelIdx,
        market: Option<MarketIdx>,
        method: Method,
        state: OrderState,
    }

    #[test]
    fn records_written_before_created_s_read_as_unrecorded() {
        // Proves the creation time fits where the archived record had padding: books and
        // journal records written before it validate and read back whole, with created_s 0,
        // and the archived record's size did not change.
        let before = |id: u64, state| RecordBefore {
            id,
            fingerprint: 77,
            expires_at_ms: 123_456,
            client_order_id: Arc::from(format!("o-{id}").as_str()),
            lines: Box::new([PlanLine {
                line: 0,
                sku: 3,
                qty: 2,
            }]),
            ship_to: (52.5, 13.4),
            allocations: SmallVec::from_vec(vec![AllocationState {
                line: 0,
                node: 4,
                sku: 3,
                initial: 2,
                open: 1,
                shipped: 1,
                returned: 0,
            }]),
            extra: Some(Box::new(RareParts {
                excluded: SmallVec::from_vec(vec![9]),
                ..RareParts::default()
            })),
            channel: 2,
            market: Some(1),
            method: Method::Pickup { store: 4 },
            state,
        };
        let old = vec![
            before(1, OrderState::Confirmed),
            before(2, OrderState::Shipped),
        ];
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&old).unwrap();
        let read = rkyv::from_bytes::<Vec<OrderRecord>, rkyv::rancor::Error>(&bytes).unwrap();
        for (was, now) in old.iter().zip(&read) {
            assert_eq!(
                (now.id, now.fingerprint, now.expires_at_ms),
                (was.id, 77, 123_456)
            );
            assert_eq!(&*now.client_order_id, &*was.client_order_id);
            assert_eq!(now.allocations, was.allocations);
            assert_eq!(now.excluded(), &[9]);
            assert_eq!(
                (now.channel, now.market, now.method, now.state),
                (2, Some(1), was.method, was.state)
            );
            assert_eq!((now.created_s, now.created_at_ms()), (0, None));
        }
        assert_eq!(
            std::mem::size_of::<ArchivedOrderRecord>(),
            std::mem::size_of::<ArchivedRecordBefore>()
        );
        // A new record keeps its submit time to the second.
        let mut record = read[0].clone();
        record.created_s = created_s(1_796_479_416_313);
        assert_eq!(record.created_at_ms(), Some(1_796_479_416_000));
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&record).unwrap();
        let again = rkyv::from_bytes::<OrderRecord, rkyv::rancor::Error>(&bytes).unwrap();
        assert_eq!(again.created_s, record.created_s);
    }
}
