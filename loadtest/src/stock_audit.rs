//! The stock audit: what buyers were told against the stock the daemon
//! had, cell by cell.

use std::collections::BTreeMap;

/// A stock cell: (sku, node). The Redis side keeps one key per SKU and
/// uses [`ANY_NODE`] as the node.
pub type Cell = (String, String);

/// The node of a Redis stock key, which holds a SKU's units over all nodes.
pub const ANY_NODE: &str = "*";

/// The stock a run had against what buyers were told and what the daemon
/// holds at the end. Every figure is measured: `told` from the answers,
/// `released` from acknowledged cancels, `restocked` from acknowledged feed
/// updates, `held_now` and `final_atp` read back from the daemon.
#[derive(Default, Debug, Clone)]
pub struct Audit {
    pub starting: BTreeMap<Cell, u64>,
    pub restocked: BTreeMap<Cell, u64>,
    pub told: BTreeMap<Cell, u64>,
    pub released: BTreeMap<Cell, u64>,
    /// Units promised that the daemon took back (an order re-routed after
    /// its node went offline and found short), per cell as told; read back
    /// order by order.
    pub withdrawn: BTreeMap<Cell, u64>,
    /// Units promised whose hold ran out unconfirmed, so that the daemon
    /// put them back on sale; per cell as told, from orders the read-back
    /// finds expired.
    pub expired: BTreeMap<Cell, u64>,
    /// Units of every answered order as the daemon holds them at the end
    /// (open + shipped, after any re-route), per cell.
    pub held_now: BTreeMap<Cell, u64>,
    /// ATP per cell read back at the end.
    pub final_atp: BTreeMap<Cell, u64>,
}

pub(crate) fn add(map: &mut BTreeMap<Cell, u64>, sku: &str, node: &str, units: u64) {
    *map.entry((sku.to_string(), node.to_string())).or_default() += units;
}

pub(crate) fn by_sku(map: &BTreeMap<Cell, u64>) -> BTreeMap<&str, u64> {
    let mut out = BTreeMap::new();
    for ((sku, _), units) in map {
        *out.entry(sku.as_str()).or_default() += units;
    }
    out
}

impl Audit {
    pub fn tell(&mut self, sku: &str, node: &str, units: u32) {
        add(&mut self.told, sku, node, u64::from(units));
    }

    pub fn release(&mut self, sku: &str, node: &str, units: u32) {
        add(&mut self.released, sku, node, u64::from(units));
    }

    pub fn withdraw(&mut self, sku: &str, node: &str, units: u64) {
        add(&mut self.withdrawn, sku, node, units);
    }

    pub fn expire(&mut self, sku: &str, node: &str, units: u64) {
        add(&mut self.expired, sku, node, units);
    }

    pub fn restock(&mut self, sku: &str, node: &str, units: u64) {
        add(&mut self.restocked, sku, node, units);
    }

    pub fn hold_now(&mut self, sku: &str, node: &str, units: u64) {
        add(&mut self.held_now, sku, node, units);
    }

    /// Units a cell had to sell over the run: its starting stock and what
    /// the feed added.
    pub fn stock(&self, cell: &Cell) -> u64 {
        self.starting.get(cell).copied().unwrap_or(0)
            + self.restocked.get(cell).copied().unwrap_or(0)
    }

    /// Units promised to buyers (net of their cancels, of promises the
    /// daemon took back and of holds that expired) beyond the stock of
    /// their SKU, summed over SKUs. Per SKU, because a re-route moves a
    /// promise from one node to another. An expired unit may be promised
    /// again, so `told` alone may exceed the stock.
    pub fn oversold_told(&self) -> u64 {
        let stock_map = self.stock_map();
        let stock = by_sku(&stock_map);
        let taken_back = self.taken_back();
        by_sku(&self.told)
            .into_iter()
            .map(|(sku, told)| {
                let net = told.saturating_sub(taken_back.get(sku).copied().unwrap_or(0));
                net.saturating_sub(stock.get(sku).copied().unwrap_or(0))
            })
            .sum()
    }

    /// Units per SKU promised and then given back: cancelled, taken back by
    /// the daemon, or expired. Summed once for all SKUs: a run may touch
    /// ten thousand.
    fn taken_back(&self) -> BTreeMap<&str, u64> {
        let mut out = BTreeMap::new();
        for map in [&self.released, &self.withdrawn, &self.expired] {
            for (sku, units) in by_sku(map) {
                *out.entry(sku).or_default() += units;
            }
        }
        out
    }

    /// Units the daemon holds for the run's orders at the end beyond the
    /// stock of their cell, summed over cells. Cells the run never stocked
    /// count from zero.
    pub fn oversold_held(&self) -> u64 {
        self.held_now
            .iter()
            .map(|(cell, held)| held.saturating_sub(self.stock(cell)))
            .sum()
    }

    /// What `oversold_units` reports: both views must be zero.
    pub fn oversold_units(&self) -> u64 {
        self.oversold_told() + self.oversold_held()
    }

    /// Units by which the daemon's final ATP differs from the stock less
    /// what it holds for the run's orders, over the cells it reported.
    pub fn stock_mismatch_units(&self) -> u64 {
        self.final_atp
            .iter()
            .map(|(cell, atp)| {
                let expected = self
                    .stock(cell)
                    .saturating_sub(self.held_now.get(cell).copied().unwrap_or(0));
                atp.abs_diff(expected)
            })
            .sum()
    }

    fn stock_map(&self) -> BTreeMap<Cell, u64> {
        let mut out = self.starting.clone();
        for (cell, units) in &self.restocked {
            *out.entry(cell.clone()).or_default() += units;
        }
        out
    }

    /// Units of a SKU still promisable at the end if nothing was oversold.
    pub fn expected_left(&self, sku: &str) -> u64 {
        let stock = by_sku(&self.stock_map()).get(sku).copied().unwrap_or(0);

        let told = by_sku(&self.told).get(sku).copied().unwrap_or(0);
        let taken_back = self.taken_back().get(sku).copied().unwrap_or(0);
        stock.saturating_sub(told.saturating_sub(taken_back))
    }
}
