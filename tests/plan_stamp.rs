//! Plan stamps: a plan made ahead (the replay's reader thread) is used only
//! while its stamp holds, so a stamp that holds must mean "planning now
//! would give the same plan". Checked on the sample network's 60 nodes and
//! its channels' policies, against the index changes the shards and node
//! ledgers publish.

use omniroute::config::Config;
use omniroute::core::geo::GeoPoint;
use omniroute::core::index::{AvailabilityIndex, WATCHED_BELOW_UNITS};
use omniroute::core::model::NodeIdx;
use omniroute::core::network::Network;
use omniroute::core::policy::{plan, Method, Plan, PlanError, PlanLine, PlanRequest, PlanStamp};
use proptest::prelude::*;

const SKUS: u32 = 4;
/// Counts drawn around the watched bound, so that changes both cross it and
/// stay above it.
const MAX_DRAWN_ATP: u32 = 2 * WATCHED_BELOW_UNITS + 8;

fn network() -> Network {
    Config::default_config()
        .validate()
        .expect("the default config validates")
        .network
}

/// An index with every node online with capacity, and `SKUS` SKUs.
fn index(network: &Network) -> AvailabilityIndex {
    let index = AvailabilityIndex::new(network.nodes.len(), SKUS as usize);
    for sku in 0..SKUS {
        index.intern(&format!("SKU-{sku}")).unwrap();
    }
    for node in 0..network.nodes.len() {
        index.publish_node(node as NodeIdx, true, 0, 100);
    }
    index
}

fn plan_now(
    network: &Network,
    channel: usize,
    index: &AvailabilityIndex,
    lines: &[PlanLine],
    method: Method,
) -> Result<Plan, PlanError> {
    let request = PlanRequest {
        order: 1,
        lines,
        ship_to: GeoPoint::new(52.52, 13.40).unwrap(),
        market: Some(0),
        method,
        excluded: &[],
        widen: false,
    };
    plan(network, network.policy(channel as u16), index, &request)
}

#[derive(Clone, Debug)]
enum Change {
    Atp {
        sku: u32,
        node: NodeIdx,
        atp: u32,
    },
    Node {
        node: NodeIdx,
        online: bool,
        left: u32,
    },
}

fn change(nodes: u16) -> impl Strategy<Value = Change> {
    prop_oneof![
        8 => (0..SKUS, 0..nodes, 0..=MAX_DRAWN_ATP).prop_map(|(sku, node, atp)| Change::Atp { sku, node, atp }),
        1 => (0..nodes, any::<bool>(), 0..3u32).prop_map(|(node, online, left)| Change::Node { node, online, left }),
    ]
}

fn apply(index: &AvailabilityIndex, change: &Change) {
    match *change {
        Change::Atp { sku, node, atp } => index.publish_atp(sku, node, atp),
        Change::Node { node, online, left } => index.publish_node(node, online, 0, left),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    #[test]
    fn a_stamp_that_holds_means_the_same_plan(
        start in proptest::collection::vec((0..SKUS, 0..60u16, 0..=MAX_DRAWN_ATP), 0..160),
        lines in proptest::sample::subsequence((0..SKUS).collect::<Vec<_>>(), 1..=SKUS as usize)
            .prop_flat_map(|skus| {
                let n = skus.len();
                (Just(skus), proptest::collection::vec(1..=WATCHED_BELOW_UNITS, n))
            }),
        channel in 0..4usize,
        method in prop_oneof![Just(Method::Ship), Just(Method::SameDay), Just(Method::Pickup { store: 20 })],
        changes in proptest::collection::vec(change(60), 0..12),
    ) {
        // Proves: whenever a stamp taken before planning still holds after
        // index changes, planning again gives exactly the plan made then.
        let network = network();
        let index = index(&network);
        for &(sku, node, atp) in &start {
            index.publish_atp(sku, node, atp);
        }
        let (skus, qtys) = lines;
        let lines: Vec<PlanLine> = skus
            .iter()
            .zip(&qtys)
            .enumerate()
            .map(|(line, (&sku, &qty))| PlanLine { line: line as u16, sku, qty })
            .collect();
        let policy = network.policy(channel as u16);
        let Some(stamp) = PlanStamp::take(policy, &index, &lines) else {
            return Ok(());
        };
        let ahead = plan_now(&network, channel, &index, &lines, method);
        for change in &changes {
            apply(&index, change);
        }
        if stamp.holds(&index, &lines) {
            prop_assert_eq!(ahead, plan_now(&network, channel, &index, &lines, method));
        }
    }
}

#[test]
fn low_counts_and_nodes_break_a_stamp_and_deep_stock_does_not() {
    // Proves the stamp watches what can change a plan (a count going low,
    // a node going offline) and ignores what cannot (deep stock moving).
    let network = network();
    let index = index(&network);
    let lines = [PlanLine {
        line: 0,
        sku: 0,
        qty: 2,
    }];
    index.publish_atp(0, 0, 300);
    index.publish_atp(0, 1, WATCHED_BELOW_UNITS + 1);
    let web = network.channel_idx("web").unwrap();
    let take = || PlanStamp::take(network.policy(web), &index, &lines).expect("web stamps");

    let stamp = take();
    index.publish_atp(0, 0, 250);
    assert!(stamp.holds(&index, &lines), "deep stock moved");
    index.publish_atp(0, 1, WATCHED_BELOW_UNITS);
    assert!(
        stamp.holds(&index, &lines),
        "a count came down to the bound"
    );
    index.publish_atp(0, 1, WATCHED_BELOW_UNITS - 1);
    assert!(!stamp.holds(&index, &lines), "a count went under the bound");

    let stamp = take();
    index.publish_atp(0, 1, 0);
    assert!(!stamp.holds(&index, &lines), "a low count ran out");

    let stamp = take();
    index.publish_node(3, true, 5, 95);
    assert!(stamp.holds(&index, &lines), "capacity used, some left");
    index.publish_node(3, false, 5, 95);
    assert!(!stamp.holds(&index, &lines), "a node went offline");

    let stamp = take();
    index.publish_node(4, true, 100, 0);
    assert!(!stamp.holds(&index, &lines), "a node's capacity ran out");

    let big = [PlanLine {
        line: 0,
        sku: 0,
        qty: WATCHED_BELOW_UNITS + 1,
    }];
    assert_eq!(PlanStamp::take(network.policy(web), &index, &big), None);
    let store = network.channel_idx("store").unwrap();
    assert_eq!(
        PlanStamp::take(network.policy(store), &index, &lines),
        None,
        "least_loaded reads exact loads"
    );
}
