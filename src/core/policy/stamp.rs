//! The replay's check that a plan made ahead on another thread is still the
//! plan: a stamp of what a first-try plan read from the index.

use smallvec::SmallVec;

use super::{PlanLine, Policy, Rule};
use crate::core::index::{AvailabilityIndex, WATCHED_BELOW_UNITS};

/// What a first-try plan read from the index, taken before planning, so
/// that a plan made ahead on another thread can be checked before use: if
/// the stamp still holds, `plan` would make the same plan now.
///
/// A first-try plan reads the index only as "node online with capacity
/// left" and, per line and node, "has some" and "covers the line". With
/// every line at most [`WATCHED_BELOW_UNITS`] units, a count can change
/// either answer only by being or going under that bound, which bumps its
/// SKU's low version. Rules that read exact counts or loads (`most_stock`,
/// `least_loaded`) cannot be stamped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanStamp {
    node_epoch: u64,
    low_versions: SmallVec<[u64; 4]>,
}

impl PlanStamp {
    /// Stamps the index for a first try of `lines` under `policy`; None
    /// when such a plan cannot be checked by a stamp.
    pub fn take(policy: &Policy, index: &AvailabilityIndex, lines: &[PlanLine]) -> Option<Self> {
        if policy
            .rules
            .iter()
            .any(|r| matches!(r, Rule::MostStock | Rule::LeastLoaded))
            || lines.iter().any(|l| l.qty > WATCHED_BELOW_UNITS)
        {
            return None;
        }
        let node_epoch = index.node_epoch();
        let low_versions = lines
            .iter()
            .map(|l| index.low_version(l.sku))
            .collect::<Option<_>>()?;
        Some(PlanStamp {
            node_epoch,
            low_versions,
        })
    }

    /// Whether a plan made after this stamp is still the plan for `lines`.
    pub fn holds(&self, index: &AvailabilityIndex, lines: &[PlanLine]) -> bool {
        self.node_epoch == index.node_epoch()
            && lines.len() == self.low_versions.len()
            && lines
                .iter()
                .zip(&self.low_versions)
                .all(|(l, &v)| index.low_version(l.sku) == Some(v))
    }
}
