//! One test per routing rule, on the hand-checked network of `common`:
//! each rule picks a node that the default tie-break (lowest node index,
//! WH-N) would not, so a rule that does nothing fails its test.

mod common;

use common::*;
use omniroute::core::model::{Decision, FulfilmentMethod, LastFilter, NodeIdx, RejectReason};

fn all_nodes(sku: &'static str, qty: u32) -> Vec<(&'static str, &'static str, u32)> {
    NODE_IDS.iter().map(|n| (sku, *n, qty)).collect()
}

/// Routes one single-line order for `sku` on a channel with `rules`; returns the node.
fn route_single(rules: &[&str], stock_entries: &[(&str, &str, u32)]) -> NodeIdx {
    let config = config(&format!("{}{}", channel("c", rules), stock(stock_entries)));
    let mut engine = local(&config);
    let decision = engine.submit(order("c", "o-1", &[("SKU-1", 1)]), 0);
    engine.check_invariants().unwrap();
    match decision {
        Decision::Routed { allocations, .. } => {
            assert_eq!(allocations.len(), 1, "{allocations:?}");
            allocations[0].node
        }
        other => panic!("not routed: {other:?}"),
    }
}

#[test]
fn without_rules_the_lowest_node_index_wins() {
    // Proves the baseline the other tests differ from: no rules and no weights pick WH-N.
    assert_eq!(route_single(&[], &all_nodes("SKU-1", 10)), WH_N);
}

#[test]
fn nearest_picks_the_closest_node() {
    // Proves `nearest` picks ST-1 at 11 km over the farther nodes.
    assert_eq!(route_single(&["nearest"], &all_nodes("SKU-1", 10)), ST_1);
}

#[test]
fn cheapest_picks_the_lowest_shipping_cost() {
    // Proves `cheapest` picks WH-S (300 + 111 km x 0.5 = 355 cents), the lowest cost.
    assert_eq!(route_single(&["cheapest"], &all_nodes("SKU-1", 10)), WH_S);
}

#[test]
fn fastest_picks_the_shortest_lead_time() {
    // Proves `fastest` picks ST-2 (60 minutes) over ST-1 (120) and the warehouses.
    assert_eq!(route_single(&["fastest"], &all_nodes("SKU-1", 10)), ST_2);
}

#[test]
fn node_priority_picks_the_best_rank() {
    // Proves `node_priority` picks WH-S, priority 1.
    assert_eq!(
        route_single(&["node_priority"], &all_nodes("SKU-1", 10)),
        WH_S
    );
}

#[test]
fn most_stock_picks_the_deepest_shelf() {
    // Proves `most_stock` picks ST-2, which holds 50 units against 5 elsewhere.
    let entries = [
        ("SKU-1", "WH-N", 5),
        ("SKU-1", "WH-S", 5),
        ("SKU-1", "ST-1", 5),
        ("SKU-1", "ST-2", 50),
        ("SKU-1", "WH-B", 5),
    ];
    assert_eq!(route_single(&["most_stock"], &entries), ST_2);
}

#[test]
fn same_market_prefers_the_order_market() {
    // Proves `same_market` sends an order from market B to WH-B, the only node there.
    let config = config(&format!(
        "{}{}",
        channel("c", &["same_market"]),
        stock(&all_nodes("SKU-1", 10))
    ));
    let mut engine = local(&config);
    let mut request = order("c", "o-1", &[("SKU-1", 1)]);
    request.ship_to.market = Some("B".into());
    assert_eq!(engine.submit(request, 0).allocations()[0].node, WH_B);
}

#[test]
fn least_loaded_avoids_the_busy_node() {
    // Proves `least_loaded` skips WH-N once it carries an allocation and the others carry none.
    let text = format!(
        "{}{}{}",
        channel("first", &[]),
        channel("least", &["least_loaded"]),
        stock(&all_nodes("SKU-1", 10))
    );
    let mut engine = local(&config(&text));
    assert_eq!(
        engine
            .submit(order("first", "o-1", &[("SKU-1", 1)]), 0)
            .allocations()[0]
            .node,
        WH_N
    );
    assert_eq!(
        engine
            .submit(order("least", "o-2", &[("SKU-1", 1)]), 0)
            .allocations()[0]
            .node,
        WH_S
    );
}

#[test]
fn fewest_shipments_consolidates_lines() {
    // Proves `fewest_shipments` ships two lines from ST-2, which has both, rather than
    // from WH-N and WH-S, which have one each and win on index without the rule.
    let entries = [
        ("SKU-A", "WH-N", 5),
        ("SKU-B", "WH-S", 5),
        ("SKU-A", "ST-2", 5),
        ("SKU-B", "ST-2", 5),
    ];
    let text = format!(
        "{}{}{}",
        channel("plain", &[]),
        channel("fewest", &["fewest_shipments"]),
        stock(&entries)
    );
    let mut engine = local(&config(&text));
    let plain = engine.submit(order("plain", "o-1", &[("SKU-A", 1), ("SKU-B", 1)]), 0);
    assert_eq!(plain.shipments(), 2, "{plain:?}");
    let fewest = engine.submit(order("fewest", "o-2", &[("SKU-A", 1), ("SKU-B", 1)]), 0);
    assert_eq!(fewest.shipments(), 1, "{fewest:?}");
    assert!(fewest.allocations().iter().all(|a| a.node == ST_2));
}

#[test]
fn pickup_at_selected_store_prefers_the_chosen_store() {
    // Proves the chosen store ST-2 wins over the nearer ST-1, and that ST-1 stands in
    // when ST-2 has no stock (pickup alternatives are allowed by default).
    let text = format!(
        "{}{}",
        channel("c", &["pickup_at_selected_store", "nearest"]),
        stock(&[("SKU-1", "ST-1", 5), ("SKU-1", "ST-2", 1)])
    );
    let mut engine = local(&config(&text));
    let pickup = |id: &str| {
        let mut request = order("c", id, &[("SKU-1", 1)]);
        request.method = FulfilmentMethod::Pickup {
            store: "ST-2".into(),
        };
        request
    };
    assert_eq!(engine.submit(pickup("o-1"), 0).allocations()[0].node, ST_2);
    assert_eq!(engine.submit(pickup("o-2"), 0).allocations()[0].node, ST_1);
}

#[test]
fn rules_break_ties_in_order() {
    // Proves a later rule only breaks ties of an earlier one: with node_priority first, WH-S
    // (priority 1) wins although ST-1 is nearer; ST-1 and ST-2 tie on priority 3, and
    // `nearest` picks ST-1 between them when WH-S and WH-N have no stock.
    assert_eq!(
        route_single(&["node_priority", "nearest"], &all_nodes("SKU-1", 10)),
        WH_S
    );
    let stores = [
        ("SKU-1", "ST-1", 3),
        ("SKU-1", "ST-2", 3),
        ("SKU-1", "WH-B", 3),
    ];
    assert_eq!(route_single(&["node_priority", "nearest"], &stores), ST_1);
    assert_eq!(route_single(&["node_priority", "fastest"], &stores), ST_2);
}

#[test]
fn weighted_cost_is_the_last_tie_breaker() {
    // Proves that with no rules a distance weight picks the nearest node (ST-1), and a
    // cost weight the cheapest (WH-S).
    let by_distance = "[channels.c]\nrules = []\n[channels.c.weights]\ndistance_km = 1.0\n";
    let mut engine = local(&config(&format!(
        "{by_distance}{}",
        stock(&all_nodes("SKU-1", 10))
    )));
    assert_eq!(
        engine
            .submit(order("c", "o-1", &[("SKU-1", 1)]), 0)
            .allocations()[0]
            .node,
        ST_1
    );
    let by_cost =
        "[channels.c]\nrules = []\n[channels.c.weights]\ndistance_km = 0.0\ncost_cents = 1.0\n";
    let mut engine = local(&config(&format!(
        "{by_cost}{}",
        stock(&all_nodes("SKU-1", 10))
    )));
    assert_eq!(
        engine
            .submit(order("c", "o-1", &[("SKU-1", 1)]), 0)
            .allocations()[0]
            .node,
        WH_S
    );
}

#[test]
fn a_rule_falls_back_when_the_preferred_node_lacks_units() {
    // Proves the shard takes the next candidate in policy order when the best one is short:
    // `nearest` wants ST-1 (1 unit), the order needs 2, ST-2 (next nearest) has them.
    let entries = [
        ("SKU-1", "ST-1", 1),
        ("SKU-1", "ST-2", 2),
        ("SKU-1", "WH-N", 9),
    ];
    let config = config(&format!(
        "{}{}",
        channel("c", &["nearest"]),
        stock(&entries)
    ));
    let mut engine = local(&config);
    let decision = engine.submit(order("c", "o-1", &[("SKU-1", 2)]), 0);
    assert_eq!(decision.allocations()[0].node, ST_2);
}

#[test]
fn filters_remove_nodes_before_the_rules_rank() {
    // Proves the same_market and max_distance filters: market B's only node is WH-B, and
    // a 50 km radius around the customer leaves only the stores; and that an order no node
    // can serve is told which filter removed the last one.
    let text = format!(
        "[channels.market]\nrules = [\"nearest\"]\n[channels.market.filters]\nsame_market = true\n\
         [channels.radius]\nrules = [\"node_priority\"]\n[channels.radius.filters]\nmax_distance_km = 50.0\n{}",
        stock(&all_nodes("SKU-1", 10))
    );
    let mut engine = local(&config(&text));
    let mut request = order("market", "o-1", &[("SKU-1", 1)]);
    request.ship_to.market = Some("B".into());
    assert_eq!(engine.submit(request, 0).allocations()[0].node, WH_B);
    let decision = engine.submit(order("radius", "o-2", &[("SKU-1", 1)]), 0);
    assert!(
        matches!(decision.allocations()[0].node, ST_1 | ST_2),
        "{decision:?}"
    );
    let mut far = order("radius", "o-3", &[("SKU-1", 1)]);
    far.ship_to.lat = 40.0;
    assert_eq!(
        engine.submit(far, 0),
        Decision::Rejected(RejectReason::NoEligibleNode {
            filter: LastFilter::Distance
        })
    );
    // The answer names the filter that removed the last node.
    let mut nowhere = order("market", "o-4", &[("SKU-1", 1)]);
    nowhere.ship_to.market = None;
    // Between market A's region and B's: no market follows from the point.
    nowhere.ship_to.lon = 12.0;
    let Decision::Rejected(reason) = engine.submit(nowhere, 0) else {
        panic!("an order without a market passed same_market");
    };
    assert_eq!(
        reason.to_string(),
        "no eligible node: same_market: the order has no market; pass --market or a ship-to inside one"
    );
}

#[test]
fn the_market_follows_from_the_ship_to_point_when_one_region_holds_it() {
    // Proves an order without a market takes the market whose nodes' region holds its
    // ship-to point (A around the customer, B around WH-B), so same_market routes it there,
    // and that a point in no region is told it has no market.
    let text = format!(
        "[channels.market]\nrules = [\"nearest\"]\n[channels.market.filters]\nsame_market = true\n{}",
        stock(&all_nodes("SKU-1", 10))
    );
    let mut engine = local(&config(&text));
    let mut in_a = order("market", "o-1", &[("SKU-1", 1)]);
    in_a.ship_to.market = None;
    assert_eq!(engine.submit(in_a, 0).allocations()[0].node, ST_1);
    let mut in_b = order("market", "o-2", &[("SKU-1", 1)]);
    in_b.ship_to = omniroute::core::model::ShipTo {
        lat: 50.0,
        lon: 14.1,
        market: None,
    };
    assert_eq!(engine.submit(in_b, 0).allocations()[0].node, WH_B);
    let mut between = order("market", "o-3", &[("SKU-1", 1)]);
    between.ship_to.market = None;
    between.ship_to.lon = 12.0;
    assert_eq!(
        engine.submit(between, 0),
        Decision::Rejected(RejectReason::NoEligibleNode {
            filter: LastFilter::NoMarket
        })
    );
}

#[test]
fn a_pickup_store_must_offer_pickup() {
    // Proves a pickup at a node without the pickup capability (a warehouse) is refused as
    // invalid, naming why, and a pickup at a store is routed there.
    let text = format!(
        "{}{}",
        channel("c", &["pickup_at_selected_store", "nearest"]),
        stock(&all_nodes("SKU-1", 10))
    );
    let mut engine = local(&config(&text));
    let mut at_warehouse = order("c", "o-1", &[("SKU-1", 1)]);
    at_warehouse.method = FulfilmentMethod::Pickup {
        store: "WH-N".into(),
    };
    let Decision::Rejected(reason) = engine.submit(at_warehouse, 0) else {
        panic!("a warehouse took a pickup");
    };
    assert_eq!(
        reason,
        RejectReason::Invalid(omniroute::core::model::InvalidOrder::NotAPickupStore)
    );
    assert!(reason.to_string().contains("without the pickup capability"));
    let mut at_store = order("c", "o-2", &[("SKU-1", 1)]);
    at_store.method = FulfilmentMethod::Pickup {
        store: "ST-2".into(),
    };
    assert_eq!(engine.submit(at_store, 0).allocations()[0].node, ST_2);
}

#[test]
fn same_day_needs_a_same_day_node_within_reach() {
    // Proves a same-day order goes to ST-1, the only same-day node, and only within its radius.
    let text = format!(
        "{}{}",
        channel("c", &["nearest"]),
        stock(&all_nodes("SKU-1", 10))
    );
    let mut engine = local(&config(&text));
    let mut request = order("c", "o-1", &[("SKU-1", 1)]);
    request.method = FulfilmentMethod::SameDay;
    assert_eq!(
        engine.submit(request.clone(), 0).allocations()[0].node,
        ST_1
    );
    request.client_order_id = "o-2".into();
    request.ship_to.lat = 52.0;
    assert_eq!(
        engine.submit(request, 0),
        Decision::Rejected(RejectReason::NoEligibleNode {
            filter: LastFilter::Distance
        })
    );
}

#[test]
fn max_shipments_and_partial_allocation() {
    // Proves the split policy: with max_shipments = 1 an order that needs two nodes is
    // refused; with on_short = partial the available units are kept and the rest listed short.
    let entries = [("SKU-A", "WH-N", 5), ("SKU-B", "WH-S", 5)];
    let text = format!(
        "[channels.one]\nrules = [\"fewest_shipments\"]\nmax_shipments = 1\n\
         [channels.partial]\nrules = [\"nearest\"]\non_short = \"partial\"\n{}",
        stock(&entries)
    );
    let mut engine = local(&config(&text));
    let decision = engine.submit(order("one", "o-1", &[("SKU-A", 1), ("SKU-B", 1)]), 0);
    assert_eq!(
        decision,
        Decision::Rejected(RejectReason::TooManyShipments { max_shipments: 1 })
    );
    let decision = engine.submit(order("partial", "o-2", &[("SKU-A", 7), ("SKU-B", 2)]), 0);
    let Decision::Routed {
        allocations, short, ..
    } = &decision
    else {
        panic!("{decision:?}")
    };
    assert_eq!(allocations.iter().map(|a| a.qty).sum::<u32>(), 5 + 2);
    assert_eq!(short.len(), 1);
    assert_eq!((short[0].requested, short[0].available), (7, 5));
    engine.check_invariants().unwrap();
}

#[test]
fn an_all_or_nothing_order_with_a_sold_out_line_is_short_on_that_line_only() {
    // Proves the planner's early exit for a line no eligible node has any
    // of: the order is rejected short, listing exactly that line (available
    // 0) and not the line that has stock, and nothing stays held.
    let config = config(&format!(
        "{}{}",
        channel("c", &["fewest_shipments", "nearest"]),
        stock(&[("SKU-1", "WH-N", 5), ("SKU-2", "WH-S", 0)])
    ));
    let mut engine = local(&config);
    let decision = engine.submit(order("c", "o-1", &[("SKU-1", 1), ("SKU-2", 2)]), 0);
    engine.check_invariants().unwrap();
    match decision {
        Decision::Rejected(RejectReason::Short { lines }) => {
            assert_eq!(lines.len(), 1, "{lines:?}");
            assert_eq!(
                (lines[0].line, lines[0].requested, lines[0].available),
                (1, 2, 0)
            );
        }
        other => panic!("not short: {other:?}"),
    }
    let sku_1 = engine.index.lookup("SKU-1").unwrap();
    assert_eq!(engine.cell(sku_1, WH_N).reserved, 0);
}
