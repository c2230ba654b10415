//! The logic of the load generator, apart from its I/O so that it can be
//! tested: the open-loop schedule, latency recording, the stock audit, the
//! scenario file and the JSON summary.

pub mod chart;
mod daemon_metrics;
mod recorder;
mod scenario;
mod seconds;
mod snapshot_stalls;
mod stock_audit;
mod summary;
mod threshold;

pub use daemon_metrics::{count_per_second, counter_events, CounterSample, DaemonCounters};
pub use recorder::{error_name, reject_name, Outcome, Recorder, Schedule, MAX_LATENCY_US};
pub use scenario::{
    Feed, FollowUp, FollowUpMix, MethodMix, NodeEvent, OrderMix, Scenario, ScenarioError,
    ScenarioStock, SkuRange, HOLDS_OUTLIVE_RUNS_MS,
};
pub use seconds::{PhaseSeconds, SecondBin};
pub use snapshot_stalls::snapshot_stalls;
pub use stock_audit::{Audit, Cell, ANY_NODE};
pub use summary::{
    ratio, ClusterRun, Failover, MeasuredStep, OverTime, RunEvent, RunInfo, Second, SnapshotStall,
    StatusStream, Summary, ThresholdResult, WholeRun, SUSTAINED_FRACTION,
};
pub use threshold::Threshold;

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn the_schedule_is_open_loop() {
        // Proves request i is due at start + i/rate and the count due grows with time only.
        let start = Instant::now();
        let schedule = Schedule {
            start,
            rate_per_s: 1000.0,
        };
        assert_eq!(schedule.intended(0), start);
        assert_eq!(schedule.intended(1000), start + Duration::from_secs(1));
        assert_eq!(schedule.intended(1), start + Duration::from_millis(1));
        assert_eq!(schedule.due(start), 1);
        assert_eq!(schedule.due(start + Duration::from_micros(2500)), 3);
        let odd = Schedule {
            start,
            rate_per_s: 3.0,
        };
        assert_eq!(odd.intended(3), start + Duration::from_secs(1));
    }

    #[test]
    fn latency_is_measured_from_the_intended_time() {
        // Proves a request sent late counts its wait in the corrected histogram only.
        let start = Instant::now();
        let mut recorder = Recorder::new();
        recorder.record(
            start,
            start + Duration::from_millis(90),
            start + Duration::from_millis(100),
            Outcome::Routed,
        );
        assert!((99_000..=101_000).contains(&recorder.corrected.max()));
        assert!((9_900..=10_100).contains(&recorder.uncorrected.max()));
        assert_eq!(recorder.count(Outcome::Routed), 1);
    }

    #[test]
    fn oversold_units_count_only_what_exceeds_each_cell() {
        // Proves the audit sums, per cell, units told beyond the starting stock, and that a
        // cell the generator never stocked starts from zero.
        let mut audit = Audit::default();
        audit.starting.insert(("A".into(), "N1".into()), 10);
        audit.starting.insert(("A".into(), "N2".into()), 5);
        audit.tell("A", "N1", 10);
        audit.tell("A", "N2", 3);
        assert_eq!(audit.oversold_units(), 0);
        assert_eq!(audit.expected_left("A"), 2);
        audit.tell("A", "N2", 4);
        audit.tell("B", "N1", 1);
        assert_eq!(audit.oversold_units(), 2 + 1);
    }

    #[test]
    fn restocks_cancels_and_withdrawals_move_the_audit() {
        // Proves restocked units raise a cell's stock, cancelled and withdrawn units leave the
        // told view, the held view counts per cell, and the final read-back is checked.
        let mut audit = Audit::default();
        audit.starting.insert(("A".into(), "N1".into()), 5);
        audit.restock("A", "N1", 3);
        audit.tell("A", "N1", 8);
        assert_eq!(audit.oversold_units(), 0);
        audit.tell("A", "N2", 2);
        assert_eq!(audit.oversold_told(), 2, "two units beyond A's 8");
        audit.release("A", "N1", 1);
        audit.withdraw("A", "N2", 1);
        assert_eq!(audit.oversold_told(), 0);
        // N1 went offline: its order moved to N2, which had no stock.
        audit.hold_now("A", "N1", 7);
        audit.hold_now("A", "N2", 1);
        assert_eq!(audit.oversold_held(), 1);
        assert_eq!(audit.oversold_units(), 1);
        audit.final_atp.insert(("A".into(), "N1".into()), 1);
        assert_eq!(audit.stock_mismatch_units(), 0, "8 stock - 7 held = 1");
        audit.final_atp.insert(("A".into(), "N1".into()), 4);
        assert_eq!(audit.stock_mismatch_units(), 3);
    }

    #[test]
    fn follow_ups_split_by_their_fractions() {
        // Proves the first roll picks confirm, cancel or nothing by the fractions, and the
        // second whether a confirmed order ships.
        let mix = FollowUpMix {
            confirm: 0.6,
            cancel: 0.1,
            ship: 0.5,
        };
        assert_eq!(mix.decide(0.0, 0.2), FollowUp::Confirm { then_ship: true });
        assert_eq!(
            mix.decide(0.59, 0.7),
            FollowUp::Confirm { then_ship: false }
        );
        assert_eq!(mix.decide(0.6, 0.0), FollowUp::Cancel);
        assert_eq!(mix.decide(0.69, 0.0), FollowUp::Cancel);
        assert_eq!(mix.decide(0.7, 0.0), FollowUp::Nothing);
    }

    #[test]
    fn find_max_steps_hold_only_within_their_bounds() {
        // Proves a step is sustained only at >= 95 % of offered, p99 within the bound and no
        // errors, and that the ratio needs both rates.
        let mut summary = Summary {
            measured: MeasuredStep {
                rate_offered: 1000.0,
                rate_achieved: 960.0,
                p99_us: 900,
                ..MeasuredStep::default()
            },
            ..Summary::default()
        };
        assert!(summary.sustained(1000));
        assert!(!summary.sustained(800));
        summary.measured.rate_achieved = 940.0;
        assert!(!summary.sustained(1000));
        summary.measured.rate_achieved = 1000.0;
        summary.measured.errors = 1;
        assert!(!summary.sustained(1000));
        assert_eq!(ratio(Some(300.0), Some(100.0)), Some(3.0));
        assert_eq!(ratio(None, Some(100.0)), None);
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
    }

    #[test]
    fn every_shipped_scenario_parses() {
        // Proves the four scenario files are valid and carry what makes each one what it is.
        let storm = Scenario::parse(include_str!("../scenarios/restock-storm.toml")).unwrap();
        assert!(storm.feed.is_some() && !storm.stock.is_empty());
        let outage = Scenario::parse(include_str!("../scenarios/node-outage.toml")).unwrap();
        assert!(outage.events.iter().any(|e| !e.online));
        let mix = Scenario::parse(include_str!("../scenarios/omnichannel-mix.toml")).unwrap();
        assert!(mix.follow_up.is_some());
        let feed_without_stock = "name = \"x\"\nchannel = \"web\"\n[orders]\nskus = [\"A\"]\nlines_min = 1\nlines_max = 1\nqty_min = 1\nqty_max = 1\npoints = [[1.0, 2.0]]\n[feed]\nupdates_per_s = 10.0\nbatch = 1\ndelta_min = 1\ndelta_max = 1\n";
        assert!(Scenario::parse(feed_without_stock)
            .unwrap_err()
            .to_string()
            .contains("feed"));
    }

    #[test]
    fn the_json_summary_has_the_documented_keys() {
        // Proves the keys other tools read are present and numeric, each count under the
        // window it covers, and each window saying which it is.
        let start = Instant::now();
        let mut recorder = Recorder::new();
        recorder.record(
            start,
            start,
            start + Duration::from_micros(250),
            Outcome::Routed,
        );
        let mut summary = Summary::new(
            "omniroute",
            "flash-sale",
            Duration::from_secs(1),
            1.0,
            &recorder,
        );
        summary.whole_run.follow_ups.insert("confirm_ok".into(), 7);
        summary.redis = Some(Box::new(summary.clone()));
        summary.ratio_vs_redis = ratio(Some(2.0), Some(1.0));
        let json: serde_json::Value = serde_json::to_value(&summary).unwrap();
        let measured = &json["measured"];
        for key in [
            "rate_offered",
            "rate_achieved",
            "p50_us",
            "p99_us",
            "p999_us",
            "max_us",
            "errors",
        ] {
            assert!(
                measured[key].is_number(),
                "measured.{key} missing in {json}"
            );
        }
        let whole_run = &json["whole_run"];
        for key in ["oversold_units", "missing_orders", "stock_mismatch_units"] {
            assert!(
                whole_run[key].is_number(),
                "whole_run.{key} missing in {json}"
            );
        }
        assert!(json["ratio_vs_redis"].is_number(), "{json}");
        assert!(json["redis"]["measured"]["p99_us"].is_number(), "{json}");
        assert_eq!(measured["outcomes"]["routed"], 1);
        assert_eq!(whole_run["follow_ups"]["confirm_ok"], 7);
        assert!(json["over_time"]["seconds"].is_array(), "{json}");
        assert!(json["over_time"]["snapshot_stalls"].is_array(), "{json}");
        let covers = measured["covers"].as_str().unwrap();
        assert!(
            covers.contains("1.0 s") && covers.contains("not the warmup"),
            "{covers}"
        );
        // Nothing counted is left at the top, where its window would be unsaid.
        for key in [
            "outcomes",
            "requests",
            "follow_ups",
            "p99_us",
            "oversold_units",
            "seconds",
        ] {
            assert!(json.get(key).is_none(), "{key} at the top of {json}");
        }
    }

    #[test]
    fn the_soak_scenario_parses_and_every_routed_order_ends() {
        // Proves the shipped soak scenario is valid, feeds its SKU range, and leaves no routed
        // order open for good: every confirm ships, and the rest cancel or expire within a run.
        let scenario = Scenario::parse(include_str!("../scenarios/soak.toml")).unwrap();
        assert!(scenario.stock.is_empty() && scenario.feed.is_some());
        let follow_up = scenario.follow_up.clone().unwrap();
        assert_eq!(follow_up.ship, 1.0);
        assert!(scenario.holds_expire_in_runs());
    }

    #[test]
    fn the_omnichannel_scenario_parses() {
        // Proves the shipped omnichannel scenario is valid and uses a Zipf range.
        let scenario = Scenario::parse(include_str!("../scenarios/omnichannel-mix.toml")).unwrap();
        assert_eq!(
            scenario.orders.sku_range.as_ref().map(|r| r.count),
            Some(10_000)
        );
        assert!(Scenario::parse("name = \"x\"\nchannel = \"web\"\n[orders]\nlines_min = 1\nlines_max = 1\nqty_min = 1\nqty_max = 1\npoints = [[1.0, 2.0]]\n").is_err());
    }

    #[test]
    fn the_flash_sale_scenario_parses() {
        // Proves the shipped scenario file is valid.
        let text = include_str!("../scenarios/flash-sale.toml");
        let scenario = Scenario::parse(text).unwrap();
        assert_eq!(scenario.name, "flash-sale");
        assert!(!scenario.stock.is_empty());
        assert!(
            scenario.holds_expire_in_runs(),
            "the issue asks for holds that expire"
        );
        let storm = Scenario::parse(include_str!("../scenarios/restock-storm.toml")).unwrap();
        assert!(!storm.holds_expire_in_runs());
    }

    #[test]
    fn expired_holds_give_their_units_back_to_the_told_view() {
        // Proves a unit told twice, once to a buyer whose hold expired and once to the next,
        // is not oversold, while a unit told beyond the stock with no expiry still is.
        let mut audit = Audit::default();
        audit.starting.insert(("F".into(), "W".into()), 3);
        audit.tell("F", "W", 3);
        audit.expire("F", "W", 2);
        audit.tell("F", "W", 2);
        assert_eq!(
            audit.oversold_told(),
            0,
            "5 told, 2 of them expired, stock 3"
        );
        assert_eq!(audit.expected_left("F"), 0);
        audit.tell("F", "W", 1);
        assert_eq!(audit.oversold_told(), 1);
        // What the daemon holds at the end is checked on its own: 3 held of 3.
        audit.hold_now("F", "W", 3);
        assert_eq!(audit.oversold_held(), 0);
        audit.final_atp.insert(("F".into(), "W".into()), 0);
        assert_eq!(audit.stock_mismatch_units(), 0);
    }
}
