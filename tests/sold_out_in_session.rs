//! Orders a session answers from the availability index without a router
//! (sold out at every eligible node, or invalid): the answer is the one the
//! router would give, with the same demand record, a resubmission of a kept
//! order is never answered there, and no answer leaves before what it saw
//! is durable.

mod common;

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use common::{channel, config, order, stock, TempDir};
use omniroute::core::model::{Decision, FulfilmentMethod, NodeIdx, RejectReason};
use omniroute::core::router::{answer_from_index, OrderRef};
use omniroute::engine::ManualClock;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};

const SKUS: [&str; 3] = ["SKU-0", "SKU-1", "SKU-2"];
const CHANNELS: [&str; 3] = ["whole", "partial", "single"];
const STORES: [&str; 2] = ["ST-1", "ST-2"];

#[derive(Clone, Debug)]
enum Step {
    Submit {
        lines: Vec<(usize, u32)>,
        channel: usize,
        /// Reuse the id of an earlier submit (a resubmission; a different
        /// body is a mismatch), or take a new one.
        reuse: Option<usize>,
        pickup: Option<usize>,
        /// A line for a SKU the catalog does not know, or a zero quantity.
        broken: Option<bool>,
    },
    Cancel(usize),
    Set {
        sku: usize,
        node: NodeIdx,
        on_hand: u32,
    },
    Online {
        node: NodeIdx,
        online: bool,
    },
}

fn step() -> impl Strategy<Value = Step> {
    let lines = proptest::collection::vec((0..SKUS.len(), 1..4u32), 1..4);
    let submit = (
        lines,
        0..CHANNELS.len(),
        proptest::option::weighted(0.45, 0..12usize),
        proptest::option::weighted(0.15, 0..STORES.len()),
        proptest::option::weighted(0.05, any::<bool>()),
    );
    prop_oneof![
        8 => submit.prop_map(|(lines, channel, reuse, pickup, broken)| Step::Submit { lines, channel, reuse, pickup, broken }),
        2 => (0..30usize).prop_map(Step::Cancel),
        3 => (0..SKUS.len(), 0..5u16, prop_oneof![3 => Just(0u32), 1 => 1..4u32])
            .prop_map(|(sku, node, on_hand)| Step::Set { sku, node, on_hand }),
        1 => (0..5u16, any::<bool>()).prop_map(|(node, online)| Step::Online { node, online }),
    ]
}

/// How often the interesting cases came up over a whole run.
#[derive(Default)]
struct Seen {
    answered_in_session: Cell<u32>,
    kept_resubmitted_while_sold_out: Cell<u32>,
}

fn run_case(steps: Vec<Step>, seen: &Seen) -> Result<(), TestCaseError> {
    let text = format!(
        "{}{}[channels.single]\nrules = [\"nearest\"]\nmax_shipments = 1\n{}",
        channel("whole", &["fewest_shipments", "nearest"]),
        "[channels.partial]\nrules = [\"most_stock\"]\non_short = \"partial\"\n",
        stock(&[
            ("SKU-0", "WH-N", 2),
            ("SKU-1", "ST-1", 1),
            ("SKU-2", "WH-B", 1)
        ]),
    );
    let config = config(&text);
    let mut engine = common::local(&config);
    engine.router.set_record_demand(true);
    let now_ms = 1_000;
    let mut ids: Vec<String> = Vec::new();
    for step in steps {
        match step {
            Step::Submit {
                mut lines,
                channel,
                reuse,
                pickup,
                broken,
            } => {
                let mut skus = Vec::new();
                lines.retain(|(sku, _)| {
                    !skus.contains(sku) && {
                        skus.push(*sku);
                        true
                    }
                });
                let id = match reuse.and_then(|i| ids.get(i)) {
                    Some(id) => id.clone(),
                    None => format!("o-{}", ids.len()),
                };
                let named: Vec<(&str, u32)> = lines.iter().map(|(s, q)| (SKUS[*s], *q)).collect();
                let mut request = order(CHANNELS[channel], &id, &named);
                if let Some(store) = pickup {
                    request.method = FulfilmentMethod::Pickup {
                        store: STORES[store].into(),
                    };
                }
                match broken {
                    Some(true) => request.lines[0].sku = "NO-SUCH-SKU".into(),
                    Some(false) => request.lines[0].qty = 0,
                    None => {}
                }
                let kept = engine
                    .router
                    .get(&OrderRef::Key {
                        channel: CHANNELS[channel].into(),
                        client_order_id: id.clone(),
                    })
                    .is_ok();
                // Every SKU of the order has no units anywhere: the index alone would say short.
                let sold_out = lines.iter().all(|(s, _)| {
                    let sku = engine.index.lookup(SKUS[*s]).unwrap();
                    (0..5).all(|n| engine.index.atp(sku, n) == 0)
                });
                let session = answer_from_index(&engine.network, &engine.index, &request, now_ms);
                let routed = engine.submit(request, now_ms);
                let demand = engine.router.take_demand();
                // Only all-or-nothing channels reach the key check with such an order.
                if kept && sold_out && broken.is_none() && channel != 1 {
                    seen.kept_resubmitted_while_sold_out
                        .set(seen.kept_resubmitted_while_sold_out.get() + 1);
                }
                if let Some(answer) = session {
                    seen.answered_in_session
                        .set(seen.answered_in_session.get() + 1);
                    prop_assert_eq!(&answer.decision, &routed, "the session answered otherwise");
                    match answer.demand {
                        Some(mut record) => {
                            prop_assert_eq!(demand.len(), 1, "the router kept no demand");
                            record.id = demand[0].id;
                            prop_assert_eq!(&record, &demand[0], "another demand record");
                        }
                        None => prop_assert!(demand.is_empty(), "demand for an invalid order"),
                    }
                }
                if reuse.is_none() {
                    ids.push(id);
                }
            }
            Step::Cancel(i) => {
                if let Some(id) = ids.get(i) {
                    for channel in CHANNELS {
                        let _ = engine.cancel(&OrderRef::Key {
                            channel: channel.into(),
                            client_order_id: id.clone(),
                        });
                    }
                }
            }
            Step::Set { sku, node, on_hand } => {
                engine.stock_set(SKUS[sku], node, on_hand, None, now_ms);
            }
            Step::Online { node, online } => {
                engine.set_node_online(node, online, now_ms);
            }
        }
    }
    Ok(())
}

#[test]
fn the_session_answers_exactly_as_the_router_would() {
    // Proves that over random stock, node outages, cancels and orders (new, resubmitted with
    // the same or another body, pickups, invalid), every answer a session gives from the
    // index is the router's decision with the router's demand record, and that resubmissions
    // of kept orders while their SKUs are sold out did come up (each must get its stored
    // decision from the router, never "short" from the session).
    let seen = Seen::default();
    let mut runner = TestRunner::new(RunnerConfig {
        cases: 256,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let steps = proptest::collection::vec(step(), 1..60);
    runner
        .run(&steps, |steps| run_case(steps, &seen))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        seen.answered_in_session.get() > 500,
        "too few session answers to mean anything: {}",
        seen.answered_in_session.get()
    );
    assert!(
        seen.kept_resubmitted_while_sold_out.get() > 5,
        "too few resubmissions of kept orders while sold out: {}",
        seen.kept_resubmitted_while_sold_out.get()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sold_out_answer_waits_until_what_it_saw_is_durable() {
    // Proves a session's sold-out answer is not given while the record of the hold that
    // emptied the index is queued but not durable: with the journal's fsync paused, the
    // order that took the last unit and the sold-out order after it both wait, and both are
    // answered once the fsync goes through.
    let scenario = fail::FailScenario::setup();
    let dir = TempDir::new("sold-out-durable");
    let mut config = config(&format!(
        "{}{}",
        channel("web", &["nearest"]),
        stock(&[("SKU-1", "WH-N", 1)])
    ));
    config.server.data_dir = dir.0.clone();
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let engine = omniroute::daemon::recover(&config, clock)
        .await
        .expect("the engine opens")
        .engine;
    engine.load_stock(&config.stock).await.expect("stock loads");
    let sku = engine.index().lookup("SKU-1").unwrap();

    fail::cfg(omniroute::faults::points::JOURNAL_FSYNC, "pause").unwrap();
    let first = tokio::spawn({
        let engine = engine.clone();
        async move {
            engine
                .submit(order("web", "takes-the-last", &[("SKU-1", 1)]))
                .await
        }
    });
    // The hold emptied the index and its record is queued (behind the paused fsync).
    let journal = engine.sequencer().journal().expect("a journaled engine");
    while engine.index().atp(sku, common::WH_N) != 0 || journal.quiet() {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let second = tokio::spawn({
        let engine = engine.clone();
        async move {
            engine
                .submit(order("web", "too-late", &[("SKU-1", 1)]))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "a sold-out answer left before the hold it saw was durable"
    );
    assert!(!first.is_finished(), "the fsync was not paused");

    fail::cfg(omniroute::faults::points::JOURNAL_FSYNC, "off").unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .expect("answered once durable")
        .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("answered once durable")
        .unwrap();
    assert!(matches!(first, Decision::Routed { .. }), "{first:?}");
    assert!(
        matches!(second, Decision::Rejected(RejectReason::Short { .. })),
        "{second:?}"
    );
    scenario.teardown();
}
