//! The chart read back from its SVG as a reader's eye takes it: a point
//! for every second, legends and labels clear of every line, the answers
//! stacked by reason, the events and the run's settings there.

use std::collections::BTreeMap;

use super::*;

/// An element of the SVG: its attributes, and a text's content.
struct Element {
    attributes: BTreeMap<String, String>,
    content: String,
}

impl Element {
    fn number(&self, name: &str) -> f64 {
        self.attributes[name].parse().unwrap()
    }

    fn text(&self, name: &str) -> &str {
        self.attributes.get(name).map_or("", String::as_str)
    }
}

/// Every `<tag ...>` of the SVG, in drawing order.
fn elements(svg: &str, tag: &str) -> Vec<Element> {
    let open = format!("<{tag} ");
    let mut found = Vec::new();
    let mut rest = svg;
    while let Some(at) = rest.find(&open) {
        rest = &rest[at + open.len()..];
        let end = rest.find('>').unwrap();
        let mut attributes = BTreeMap::new();
        for pair in rest[..end].split("\" ") {
            if let Some((name, value)) = pair.trim().split_once("=\"") {
                attributes.insert(
                    name.to_string(),
                    value.trim_end_matches(['"', '/']).to_string(),
                );
            }
        }
        let content = match tag {
            "text" => rest[end + 1..rest.find("</text>").unwrap()]
                .trim()
                .to_string(),
            _ => String::new(),
        };
        found.push(Element {
            attributes,
            content,
        });
    }
    found
}

fn points(polyline: &Element) -> Vec<(f64, f64)> {
    polyline
        .text("points")
        .split_whitespace()
        .map(|p| {
            let (x, y) = p.split_once(',').unwrap();
            (x.parse().unwrap(), y.parse().unwrap())
        })
        .collect()
}

/// A box: left, top, right, bottom, in pixels.
type Box2 = (f64, f64, f64, f64);

fn rect_box(rect: &Element) -> Box2 {
    let (x, y) = (rect.number("x"), rect.number("y"));
    (x, y, x + rect.number("width"), y + rect.number("height"))
}

/// Where a text is drawn, from its anchor point and size (characters
/// taken at 0.6 of the font size, generously).
fn text_box(text: &Element) -> Box2 {
    let size = text.number("font-size");
    let width = text.content.chars().count() as f64 * size * 0.6;
    let x = text.number("x");
    let left = match text.text("text-anchor") {
        "middle" => x - width / 2.0,
        "end" => x - width,
        _ => x,
    };
    let y = text.number("y");
    let top = if text.text("dy") == "0.76em" {
        y
    } else {
        y - size / 2.0
    };
    (left, top, left + width, top + size)
}

fn overlap(a: Box2, b: Box2) -> bool {
    a.0 < b.2 && b.0 < a.2 && a.1 < b.3 && b.1 < a.3
}

fn inside(p: (f64, f64), b: Box2) -> bool {
    b.0 <= p.0 && p.0 <= b.2 && b.1 <= p.1 && p.1 <= b.3
}

/// Whether the segment from `a` to `b` passes through the box (sampled
/// every half pixel).
fn crosses(a: (f64, f64), b: (f64, f64), area: Box2) -> bool {
    let steps = ((b.0 - a.0).abs().max((b.1 - a.1).abs()) * 2.0)
        .ceil()
        .max(1.0) as usize;
    (0..=steps).any(|i| {
        let t = i as f64 / steps as f64;
        let p = (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
        // Strictly inside: a line may run along a box's edge.
        area.0 < p.0 && p.0 < area.2 && area.1 < p.1 && p.1 < area.3
    })
}

const SECONDS: usize = 8;
const ROUTED_FILL: &str = "#2CA02C";

/// A run for the chart: each second's latency, the whole step's, the seconds, the events.
type SampleRun = (
    Vec<(f64, Histogram<u64>)>,
    Histogram<u64>,
    Vec<Second>,
    Vec<RunEvent>,
);

/// An 8-second run with a node outage, expiring holds, a snapshot, and
/// answers routed, short, rejected for another reason and timed out.
fn sample_run() -> SampleRun {
    let mut whole = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut intervals = Vec::new();
    let mut seconds = Vec::new();
    for k in 0..SECONDS {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for v in 1..=2_000u64 {
            h.record(v * (20 + 30 * k as u64)).unwrap();
        }
        whole.add(&h).unwrap();
        intervals.push((k as f64 + 0.5, h));
        let mut rejected = BTreeMap::new();
        rejected.insert("short".to_string(), 15_000 + 100 * k as u64);
        rejected.insert("no_eligible_node".to_string(), 40);
        let mut failed = BTreeMap::new();
        if k == SECONDS - 1 {
            failed.insert("timed_out".to_string(), 25);
        }
        seconds.push(Second {
            offset_s: k as f64,
            length_s: 1.0,
            offered_per_s: 20_000.0,
            achieved_per_s: 19_990.0,
            routed: 4_000 - 300 * k as u64,
            rejected,
            failed,
            ..Second::default()
        });
    }
    let events = vec![
        RunEvent {
            at_s: 2.1,
            until_s: Some(6.0),
            what: "WH-DE-HAM offline, 5687 re-routed".into(),
        },
        RunEvent {
            at_s: 3.0,
            until_s: Some(5.0),
            what: "1190 holds expired".into(),
        },
        RunEvent {
            at_s: 3.4,
            until_s: None,
            what: "snapshot".into(),
        },
    ];
    (intervals, whole, seconds, events)
}

/// The sample run's chart, as SVG text.
fn sample_svg() -> String {
    let (intervals, whole, seconds, events) = sample_run();
    let path = std::env::temp_dir().join(format!(
        "omniroute-chart-{}-{:?}.svg",
        std::process::id(),
        std::thread::current().id()
    ));
    write_chart(
        &path,
        &ChartData {
            title: "flash-sale".into(),
            subtitle: "scenario flash-sale · durability fsync · 2 cores · omniroute 0.1.0".into(),
            intervals: &intervals,
            distributions: vec![("omniroute".into(), &whole), ("redis".into(), &whole)],
            seconds: &seconds,
            events: &events,
        },
    )
    .unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    svg
}

/// The data lines: 2 px wide (axes, ticks, marks and legend borders are 1 px).
fn data_lines(svg: &str) -> Vec<Element> {
    elements(svg, "polyline")
        .into_iter()
        .filter(|p| p.text("stroke-width") == "2")
        .collect()
}

#[test]
fn percentiles_are_spaced_by_nines() {
    // Proves the distribution's x axis maps 90 % to 1, 99 % to 2 and labels them back.
    assert!((nines(0.9) - 1.0).abs() < 1e-9);
    assert!((nines(0.99) - 2.0).abs() < 1e-9);
    assert_eq!(percentile_label(2.0), "99%");
    assert_eq!(percentile_label(3.0), "99.9%");
    assert_eq!(percentile_label(0.0), "0%");
}

#[test]
fn every_second_has_its_point_in_both_time_panels() {
    // Proves each latency line and the offered line have one point per second, the last
    // second's too, a second apart, and each second has its routed bar.
    let svg = sample_svg();
    let (_, whole, ..) = sample_run();
    let per_second: Vec<Vec<(f64, f64)>> = data_lines(&svg)
        .iter()
        .map(points)
        .filter(|p| p.len() != distribution(&whole).len() && p.len() > 2)
        .collect();
    assert_eq!(per_second.len(), 4 + 1, "p50, p99, p99.9, max and offered");
    for line in &per_second {
        assert_eq!(line.len(), SECONDS, "{line:?}");
        let step = line[1].0 - line[0].0;
        assert!(
            line.windows(2)
                .all(|w| (w[1].0 - w[0].0 - step).abs() <= 1.0),
            "{line:?}"
        );
    }
    let routed_bars = elements(&svg, "rect")
        .into_iter()
        .filter(|r| r.text("fill") == ROUTED_FILL && r.text("opacity") == "1")
        .filter(|r| r.number("width") > 30.0)
        .count();
    assert_eq!(routed_bars, SECONDS);
}

#[test]
fn legends_and_labels_are_clear_of_the_lines() {
    // Proves no data line or bar passes through a legend's box or an event's label, and
    // event labels do not overlap one another or a legend.
    let svg = sample_svg();
    let legends: Vec<Box2> = elements(&svg, "rect")
        .iter()
        .filter(|r| r.text("fill") == "none" && r.text("stroke") == "#000000")
        .map(rect_box)
        .collect();
    assert_eq!(legends.len(), 3, "one legend per panel");
    let labels: Vec<Box2> = elements(&svg, "text")
        .iter()
        .filter(|t| {
            ["offline", "holds expired", "snapshot"]
                .iter()
                .any(|w| t.content.contains(w))
        })
        .filter(|t| {
            !legends
                .iter()
                .any(|l| inside((t.number("x"), t.number("y")), *l))
        })
        .map(text_box)
        .collect();
    assert_eq!(
        labels.len(),
        2 * 3,
        "each event labelled on both time panels"
    );
    for line in data_lines(&svg) {
        let p = points(&line);
        for area in &legends {
            if p.iter().all(|q| inside(*q, *area)) {
                continue; // the legend's own sample line
            }
            assert!(
                !p.windows(2).any(|s| crosses(s[0], s[1], *area)),
                "a line crosses a legend"
            );
        }
        for label in &labels {
            assert!(
                !p.windows(2).any(|s| crosses(s[0], s[1], *label)),
                "a line crosses a label"
            );
        }
    }
    // Bars and swatches: opaque and coloured (the white ones are backgrounds).
    let opaque = elements(&svg, "rect");
    let opaque = opaque.iter().filter(|r| {
        r.text("opacity") == "1" && r.text("fill") != "#FFFFFF" && r.text("fill") != "none"
    });
    for bar in opaque {
        let bar = rect_box(bar);
        assert!(
            !labels.iter().any(|l| overlap(*l, bar)),
            "a bar covers a label: {bar:?}"
        );
    }
    for (i, a) in labels.iter().enumerate() {
        assert!(
            !labels[i + 1..].iter().any(|b| overlap(*a, *b)),
            "labels overlap"
        );
        assert!(
            !legends.iter().any(|l| overlap(*a, *l)),
            "a label is on a legend"
        );
    }
}

#[test]
fn answers_are_stacked_by_outcome_and_reason() {
    // Proves each reason has its legend entry with its total, and each second's bars stack
    // one on the other from the axis up.
    let svg = sample_svg();
    let texts: Vec<String> = elements(&svg, "text")
        .into_iter()
        .map(|t| t.content)
        .collect();
    for entry in [
        "offered",
        "routed (23600)",
        "rejected: short (122800)",
        "rejected: no_eligible_node (320)",
        "failed: timed_out (25)",
    ] {
        assert!(
            texts.iter().any(|t| t == entry),
            "{entry} missing from {texts:?}"
        );
    }
    let mut bars: BTreeMap<i64, Vec<Box2>> = BTreeMap::new();
    for rect in elements(&svg, "rect") {
        let b = rect_box(&rect);
        if rect.text("opacity") == "1"
            && rect.text("stroke") == "none"
            && b.2 - b.0 > 30.0
            && b.2 - b.0 < 200.0
        {
            bars.entry(b.0 as i64).or_default().push(b);
        }
    }
    assert_eq!(bars.len(), SECONDS);
    for stack in bars.values() {
        assert!(
            stack.len() >= 3,
            "routed, short and no_eligible_node: {stack:?}"
        );
        assert!(
            stack.windows(2).all(|w| (w[1].3 - w[0].1).abs() <= 1.0),
            "not stacked: {stack:?}"
        );
    }
}

#[test]
fn events_and_settings_are_on_the_chart() {
    // Proves the subtitle carries the run's settings and each event is shaded or lined.
    let svg = sample_svg();
    let texts: Vec<String> = elements(&svg, "text")
        .into_iter()
        .map(|t| t.content)
        .collect();
    assert!(texts
        .iter()
        .any(|t| t.contains("durability fsync") && t.contains("2 cores")));
    for entry in ["node offline", "holds expiring", "snapshot"] {
        assert!(
            texts.iter().any(|t| t == entry),
            "{entry} not in the legend"
        );
    }
    let shaded = elements(&svg, "rect")
        .into_iter()
        .filter(|r| r.text("opacity") == "0.13")
        .count();
    assert_eq!(shaded, 2 * 2, "two spans on both time panels");
}
