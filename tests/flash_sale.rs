//! The flash sale: many concurrent buyers, few hot SKUs, stock far below
//! demand, through the actor engine on the sample network.

use std::collections::HashMap;
use std::sync::Arc;

use omniroute::config::Config;
use omniroute::core::model::{
    Decision, FulfilmentMethod, LineRequest, OrderRequest, RejectReason, ShipTo,
};
use omniroute::engine::{Engine, ManualClock, StockUpdate};
use rand::{Rng, SeedableRng};

const TASKS: usize = 64;
const ORDERS_PER_TASK: usize = 1_600;
const HOT_SKUS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flash_sale_sells_every_unit_exactly_once() {
    // Proves that 64 tasks racing 102 400 orders for 20 hot SKUs sell exactly the stock
    // there is: every unit once, no cell above on_hand, no order refused as short while
    // units it could use remained, and every accepted order allocated in full.
    let config = Config::default_config().validate().unwrap();
    let mut settings = config.engine.clone();
    settings.expiry_tick_ms = 0;
    let engine = Engine::start(
        &settings,
        config.network.clone(),
        Arc::new(ManualClock::new(0)),
    )
    .await
    .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut stock: HashMap<(String, String), u32> = HashMap::new();
    let mut updates = Vec::new();
    for s in 1..=HOT_SKUS {
        for node in config.network.nodes.iter().filter(|n| {
            n.capabilities.intersects(
                omniroute::core::model::Capabilities::SHIP
                    .union(omniroute::core::model::Capabilities::SHIP_FROM_STORE),
            )
        }) {
            if rng.random_bool(0.15) {
                let units = rng.random_range(1..=60);
                stock.insert((format!("HOT-{s}"), node.id.clone()), units);
                updates.push(StockUpdate::Set {
                    sku: format!("HOT-{s}"),
                    node: node.id.clone(),
                    on_hand: units,
                    safety_stock: None,
                });
            }
        }
    }
    engine.update_stock(&updates).await.unwrap();
    let total_units: u32 = stock.values().sum();

    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(t as u64);
            let mut results = Vec::with_capacity(ORDERS_PER_TASK);
            let mut pending = Vec::new();
            for i in 0..ORDERS_PER_TASK {
                let request = OrderRequest {
                    channel: "web".into(),
                    client_order_id: format!("t{t}-{i}"),
                    lines: vec![LineRequest {
                        sku: format!("HOT-{}", rng.random_range(1..=HOT_SKUS)),
                        qty: rng.random_range(1..=3),
                    }],
                    ship_to: ShipTo {
                        lat: rng.random_range(44.0..55.0),
                        lon: rng.random_range(-2.0..13.0),
                        market: None,
                    },
                    method: FulfilmentMethod::Ship,
                    hold_ttl_ms: None,
                };
                // Half the tasks send one order per call, half in small batches.
                if t % 2 == 0 {
                    let decision = engine.submit(request.clone()).await;
                    results.push((request, decision));
                } else {
                    pending.push(request);
                    if pending.len() == 16 || i + 1 == ORDERS_PER_TASK {
                        let batch = std::mem::take(&mut pending);
                        let decisions = engine.submit_batch(batch.clone()).await.unwrap();
                        results.extend(batch.into_iter().zip(decisions));
                    }
                }
            }
            results
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.extend(task.await.unwrap());
    }
    assert_eq!(results.len(), TASKS * ORDERS_PER_TASK);

    let mut sold: HashMap<(String, String), u32> = HashMap::new();
    let mut routed = 0;
    for (request, decision) in &results {
        match decision {
            Decision::Routed {
                allocations, short, ..
            } => {
                routed += 1;
                assert!(short.is_empty());
                let total: u32 = allocations.iter().map(|a| a.qty).sum();
                assert_eq!(
                    total, request.lines[0].qty,
                    "allocation of {} does not sum to its line",
                    request.client_order_id
                );
                for a in allocations {
                    let node = config.network.node(a.node).id.clone();
                    *sold
                        .entry((request.lines[0].sku.clone(), node))
                        .or_default() += a.qty;
                }
            }
            Decision::Rejected(RejectReason::Short { .. }) => {}
            other => panic!("{}: unexpected {other:?}", request.client_order_id),
        }
    }
    // Every unit sold exactly once: per cell, what was sold equals what there was and
    // equals what the shard has reserved.
    for ((sku, node), units) in &stock {
        let cell = engine.cell(sku, node).await.unwrap();
        let sold_here = sold.get(&(sku.clone(), node.clone())).copied().unwrap_or(0);
        assert_eq!(
            sold_here, *units,
            "{sku} at {node}: sold {sold_here} of {units}"
        );
        assert_eq!(cell.reserved, *units, "{sku} at {node}");
        assert!(cell.reserved <= cell.on_hand);
    }
    assert_eq!(sold.values().sum::<u32>(), total_units);
    // Nothing left that a refused order could have used (ATP only fell during the sale).
    for (request, decision) in &results {
        if !decision.is_routed() {
            let left = engine
                .availability(&request.lines[0].sku)
                .unwrap()
                .iter()
                .map(|s| s.atp)
                .sum::<u32>();
            assert!(
                left < request.lines[0].qty,
                "{} was refused with {left} units left",
                request.client_order_id
            );
        }
    }
    assert!(routed > 0 && routed < results.len());
    engine.check_invariants().await.unwrap();
    engine.shutdown();
}
