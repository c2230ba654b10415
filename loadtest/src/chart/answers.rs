//! The answers panel: each second's answers stacked by outcome and reason
//! (routed, each rejection, each failure), and the offered rate drawn over
//! them as a black line with a dot per second.

use std::collections::BTreeMap;

use plotters::prelude::*;

use super::legend::Sample;
use super::DrawResult;
use crate::Second;

/// Share of a second its bar covers; the rest shows what is behind.
const BAR_WIDTH_SHARE: f64 = 0.8;
/// Radius of the offered line's dot per second, in pixels.
const DOT_PX: i32 = 3;

const ROUTED: RGBColor = RGBColor(44, 160, 44);
const OFFERED: RGBColor = BLACK;
/// Rejections: warm colours, the commonest first.
const REJECTED: [RGBColor; 5] = [
    RGBColor(255, 127, 14),
    RGBColor(188, 189, 34),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];
/// Failures: red, then cool colours.
const FAILED: [RGBColor; 3] = [
    RGBColor(214, 39, 40),
    RGBColor(23, 190, 207),
    RGBColor(31, 119, 180),
];

/// One layer of the stack: its legend label, colour and count per second.
pub(super) struct Layer {
    pub(super) label: String,
    pub(super) color: RGBColor,
    pub(super) count: fn(&Second, &str) -> u64,
    pub(super) reason: String,
}

/// The layers, bottom up: routed, rejections by total (most first),
/// failures by total.
pub(super) fn layers(seconds: &[Second]) -> Vec<Layer> {
    let totals = |of: fn(&Second) -> &BTreeMap<String, u64>| {
        let mut totals: BTreeMap<String, u64> = BTreeMap::new();
        for s in seconds {
            for (reason, n) in of(s) {
                *totals.entry(reason.clone()).or_default() += n;
            }
        }
        let mut totals: Vec<(String, u64)> = totals.into_iter().collect();
        totals.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        totals
    };
    let routed: u64 = seconds.iter().map(|s| s.routed).sum();
    let mut layers = vec![Layer {
        label: format!("routed ({routed})"),
        color: ROUTED,
        count: |s, _| s.routed,
        reason: String::new(),
    }];
    for (i, (reason, n)) in totals(|s| &s.rejected).into_iter().enumerate() {
        layers.push(Layer {
            label: format!("rejected: {reason} ({n})"),
            color: REJECTED[i % REJECTED.len()],
            count: |s, r| s.rejected.get(r).copied().unwrap_or(0),
            reason,
        });
    }
    for (i, (reason, n)) in totals(|s| &s.failed).into_iter().enumerate() {
        layers.push(Layer {
            label: format!("failed: {reason} ({n})"),
            color: FAILED[i % FAILED.len()],
            count: |s, r| s.failed.get(r).copied().unwrap_or(0),
            reason,
        });
    }
    layers
}

/// The panel's legend: offered first, then the layers top down, as the
/// bars stack them.
pub(super) fn legend_entries(layers: &[Layer]) -> Vec<(String, Sample)> {
    let mut entries = vec![("offered".to_string(), Sample::Line(OFFERED))];
    entries.extend(
        layers
            .iter()
            .rev()
            .map(|l| (l.label.clone(), Sample::Swatch(l.color.to_rgba()))),
    );
    entries
}

/// Answers per second of `second`, layer by layer, bottom up.
fn per_second(second: &Second, layers: &[Layer]) -> Vec<f64> {
    let length = second.length_s.max(f64::EPSILON);
    layers
        .iter()
        .map(|l| (l.count)(second, &l.reason) as f64 / length)
        .collect()
}

/// The highest a bar or the offered line reaches.
pub(super) fn highest(seconds: &[Second], layers: &[Layer]) -> f64 {
    seconds
        .iter()
        .map(|s| {
            per_second(s, layers)
                .iter()
                .sum::<f64>()
                .max(s.offered_per_s)
        })
        .fold(1.0, f64::max)
}

/// The bars, then the offered line over them.
pub(super) fn draw<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<
        'a,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    seconds: &[Second],
    layers: &[Layer],
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    for second in seconds {
        let inset = second.length_s * (1.0 - BAR_WIDTH_SHARE) / 2.0;
        let (left, right) = (
            second.offset_s + inset,
            second.offset_s + second.length_s - inset,
        );
        let mut base = 0.0;
        for (layer, rate) in layers.iter().zip(per_second(second, layers)) {
            if rate > 0.0 {
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(left, base), (right, base + rate)],
                    layer.color.filled(),
                )))?;
            }
            base += rate;
        }
    }
    let offered: Vec<(f64, f64)> = seconds
        .iter()
        .map(|s| (s.offset_s + s.length_s / 2.0, s.offered_per_s))
        .collect();
    chart.draw_series(LineSeries::new(offered.clone(), OFFERED.stroke_width(2)))?;
    chart.draw_series(
        offered
            .into_iter()
            .map(|p| Circle::new(p, DOT_PX, OFFERED.filled())),
    )?;
    Ok(())
}
