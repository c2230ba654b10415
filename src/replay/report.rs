//! The replay's report: the recorded and the what-if side counted alike,
//! and the differences between them listed.

use std::collections::BTreeMap;

use smallvec::SmallVec;

use crate::core::geo::GeoPoint;
use crate::core::model::{Allocation, Decision, NodeIdx, RejectReason};
use crate::core::network::Network;
use crate::core::order::RecordedDecision;
use crate::core::placement::Placement;

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct OutcomeCounts {
    pub orders: u64,
    pub routed: u64,
    /// Routed with some lines short (partial policies).
    pub partial: u64,
    /// Rejected for lack of stock.
    pub short: u64,
    /// Rejected for another reason (no eligible node, too many shipments, ...).
    pub rejected_other: u64,
    /// Distinct nodes per routed order, summed.
    pub shipments: u64,
    /// Routed orders shipped from more than one node.
    pub split_orders: u64,
    pub units: u64,
    /// Node to ship-to, summed over shipments.
    pub distance_km_total: f64,
    /// `cost_base + per_km * distance` per shipment, summed.
    pub shipping_cost_cents_total: f64,
    /// Shipments per node id.
    pub node_shipments: BTreeMap<String, u64>,
    /// Shipments per node index while counting: named once at the end
    /// (`name_nodes`), as a name per shipment was a string clone and a map
    /// lookup on every order.
    #[serde(skip)]
    by_node: Vec<u64>,
}

impl OutcomeCounts {
    pub fn shipments_per_order(&self) -> f64 {
        self.shipments as f64 / self.routed.max(1) as f64
    }

    pub fn split_rate(&self) -> f64 {
        self.split_orders as f64 / self.routed.max(1) as f64
    }

    pub fn mean_distance_km(&self) -> f64 {
        self.distance_km_total / self.shipments.max(1) as f64
    }

    pub(super) fn count(&mut self, network: &Network, ship_to: GeoPoint, decision: Outcome<'_>) {
        self.orders += 1;
        let allocations = match decision {
            Outcome::Routed { allocations, short } => {
                self.routed += 1;
                if short {
                    self.partial += 1;
                }
                allocations
            }
            Outcome::Rejected(RejectReason::Short { .. }) => {
                self.short += 1;
                return;
            }
            Outcome::Rejected(_) => {
                self.rejected_other += 1;
                return;
            }
        };
        let mut nodes: SmallVec<[NodeIdx; 4]> = allocations.iter().map(|a| a.node).collect();
        nodes.sort_unstable();
        nodes.dedup();
        self.shipments += nodes.len() as u64;
        if nodes.len() > 1 {
            self.split_orders += 1;
        }
        self.units += allocations.iter().map(|a| u64::from(a.qty)).sum::<u64>();
        for node in nodes {
            let node_idx = usize::from(node);
            let node = network.node(node);
            let distance_km = node.location.distance_km(&ship_to);
            self.distance_km_total += distance_km;
            self.shipping_cost_cents_total += node.shipping_cost_cents(distance_km);
            if self.by_node.len() <= node_idx {
                self.by_node.resize(node_idx + 1, 0);
            }
            self.by_node[node_idx] += 1;
        }
    }

    /// Moves the per-index shipment counts into `node_shipments`.
    pub(super) fn name_nodes(&mut self, network: &Network) {
        for (idx, count) in std::mem::take(&mut self.by_node).into_iter().enumerate() {
            if count > 0 {
                let id = network.node(idx as NodeIdx).id.clone();
                *self.node_shipments.entry(id).or_default() += count;
            }
        }
    }
}

pub(super) enum Outcome<'a> {
    Routed {
        allocations: &'a [Allocation],
        short: bool,
    },
    Rejected(&'a RejectReason),
}

pub(super) fn outcome(decision: &Decision) -> Outcome<'_> {
    match decision {
        Decision::Routed {
            allocations, short, ..
        } => Outcome::Routed {
            allocations,
            short: !short.is_empty(),
        },
        Decision::Rejected(reason) => Outcome::Rejected(reason),
    }
}

pub(super) fn recorded_outcome(decision: &RecordedDecision) -> Outcome<'_> {
    match &decision.rejection {
        Some(reason) => Outcome::Rejected(reason),
        None => Outcome::Routed {
            allocations: &decision.allocations,
            short: decision.short_lines > 0,
        },
    }
}

pub(super) fn placement_outcome(placement: &Placement) -> Outcome<'_> {
    match placement {
        Placement::Placed { allocations, short } => Outcome::Routed {
            allocations,
            short: !short.is_empty(),
        },
        Placement::Failed(reason) => Outcome::Rejected(reason),
    }
}

/// Whether a what-if placement is the recorded decision: the same units
/// from the same nodes per line, the same number of short lines, or the
/// same kind of rejection.
pub(super) fn same_decision(recorded: &RecordedDecision, what_if: &Placement) -> bool {
    fn sorted(allocations: &[Allocation]) -> SmallVec<[(u16, NodeIdx, u32); 8]> {
        let mut v: SmallVec<[_; 8]> = allocations
            .iter()
            .map(|a| (a.line, a.node, a.qty))
            .collect();
        v.sort_unstable();
        v
    }
    match (&recorded.rejection, what_if) {
        (None, Placement::Placed { allocations, short }) => {
            sorted(&recorded.allocations) == sorted(allocations)
                && recorded.short_lines == short.len()
        }
        (Some(a), Placement::Failed(b)) => std::mem::discriminant(a) == std::mem::discriminant(b),
        _ => false,
    }
}

/// The outcome of a replay.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Report {
    pub journal_records: u64,
    pub first_lsn: u64,
    pub recorded: OutcomeCounts,
    pub what_if: OutcomeCounts,
    /// Orders whose what-if decision is exactly the recorded one.
    pub same_decisions: u64,
    pub different_decisions: u64,
    /// The first few orders decided differently: "client id: recorded -> what-if".
    pub differences: Vec<String>,
    /// Recorded cancels and expiries applied (each frees a what-if allocation).
    pub releases_applied: u64,
    /// Recorded completed shipments applied (each ships the what-if allocation).
    pub ships_applied: u64,
    /// Policy reloads the journal recorded (the what-if policy replaces them all).
    pub recorded_policy_reloads: u64,
    /// Rejected orders the daemon answered but could not journal as demand
    /// (its journal queue was full): missing from both sides.
    pub demand_missing: u64,
    /// First-try plans the reader made ahead that the placer used: their
    /// stamp still held.
    pub plans_ahead_used: u64,
    /// Plans made ahead whose stamp no longer held (planned again in line),
    /// or that could not be made ahead (rules that read exact counts, large
    /// lines, unknown SKUs).
    pub plans_in_line: u64,
    pub torn_tail: bool,
    /// Threads the replay ran on.
    pub threads: usize,
    pub elapsed_ms: f64,
    pub orders_per_second: f64,
}

pub(super) fn describe(network: &Network, outcome: Outcome<'_>) -> String {
    match outcome {
        Outcome::Routed { allocations, .. } => allocations
            .iter()
            .map(|a| format!("{}x{}", network.node(a.node).id, a.qty))
            .collect::<Vec<_>>()
            .join("+"),
        Outcome::Rejected(reason) => format!("rejected ({reason})"),
    }
}

impl Report {
    /// The side-by-side table `omniroute replay` prints.
    pub fn table(&self) -> String {
        let (r, w) = (&self.recorded, &self.what_if);
        let mut out = String::new();
        let row = |out: &mut String, name: &str, a: String, b: String| {
            out.push_str(&format!("{name:<28}{a:>14}{b:>14}\n"));
        };
        row(&mut out, "", "recorded".into(), "what-if".into());
        type Figure = fn(&OutcomeCounts) -> String;
        let figures: [(&str, Figure); 11] = [
            ("orders", |s| s.orders.to_string()),
            ("routed", |s| s.routed.to_string()),
            ("  of them partial", |s| s.partial.to_string()),
            ("short", |s| s.short.to_string()),
            ("rejected otherwise", |s| s.rejected_other.to_string()),
            ("units allocated", |s| s.units.to_string()),
            ("shipments per order", |s| {
                format!("{:.3}", s.shipments_per_order())
            }),
            ("split rate", |s| format!("{:.2} %", s.split_rate() * 100.0)),
            ("mean distance km", |s| {
                format!("{:.1}", s.mean_distance_km())
            }),
            ("shipping cost total", |s| {
                format!("{:.2}", s.shipping_cost_cents_total / 100.0)
            }),
            ("shipments", |s| s.shipments.to_string()),
        ];
        for (name, figure) in figures {
            row(&mut out, name, figure(r), figure(w));
        }
        out.push_str("shipments per node:\n");
        let nodes: std::collections::BTreeSet<&String> = r
            .node_shipments
            .keys()
            .chain(w.node_shipments.keys())
            .collect();
        for node in nodes {
            let count = |side: &OutcomeCounts| side.node_shipments.get(node).copied().unwrap_or(0);
            row(
                &mut out,
                &format!("  {node}"),
                count(r).to_string(),
                count(w).to_string(),
            );
        }
        out.push_str(&format!(
            "decisions: {} the same, {} different\n",
            self.same_decisions, self.different_decisions
        ));
        for difference in &self.differences {
            out.push_str(&format!("  {difference}\n"));
        }
        if self.demand_missing > 0 {
            out.push_str(&format!(
                "demand missing: {} rejected orders were answered but not journaled (the journal's queue was full, or journal.max_demand_orders_per_s was spent); neither side has them\n",
                self.demand_missing
            ));
        }
        out
    }

    /// The report as JSON, with the derived ratios of each side.
    pub fn json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).expect("a report serializes");
        for (key, side) in [("recorded", &self.recorded), ("what_if", &self.what_if)] {
            let object = value[key].as_object_mut().expect("a side is an object");
            object.insert(
                "shipments_per_order".into(),
                side.shipments_per_order().into(),
            );
            object.insert("split_rate".into(), side.split_rate().into());
            object.insert("mean_distance_km".into(), side.mean_distance_km().into());
        }
        value
    }
}
