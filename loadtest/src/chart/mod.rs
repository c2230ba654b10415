//! The `--chart` SVG, with plotters. Three panels, each with its legend in
//! a column right of the plot so that no legend covers the data:
//! latency percentiles per second, the answers per second stacked by
//! outcome and reason with the offered rate over them, and the
//! percentile distribution of each run compared. The run's settings are
//! under the title; the events (nodes offline, holds expiring, snapshots,
//! rate steps) are shaded or lined on both time panels and labelled
//! above them.

mod answers;
mod events;
mod legend;

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::chart::ChartBuilder;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::{RunEvent, Second};
use legend::{legend, Sample};

/// Deepest percentile drawn in the distribution: 99.999 %.
const MAX_NINES: f64 = 5.0;
const WIDTH_PX: u32 = 1300;
const HEIGHT_PX: u32 = 1450;
/// The legends' column, right of the plots.
const LEGEND_PX: u32 = 280;
/// The settings' line under the title.
const SUBTITLE_PX: u32 = 26;
/// Around each plot, and for its axes' labels.
const MARGIN_PX: u32 = 12;
const X_LABELS_PX: u32 = 36;
const Y_LABELS_PX: u32 = 72;
/// A plot's caption, above its events' labels.
const CAPTION_PX: i32 = 36;
/// Room over the highest point: ×1.5 on the log latency axes, ×1.08 on
/// the linear one.
const LOG_HEADROOM: f64 = 1.5;
const LINEAR_HEADROOM: f64 = 1.08;
/// Labels asked of a log axis: few enough that plotters labels the
/// decades alone (more crowds the labels between them into each other).
const LOG_AXIS_LABELS: usize = 5;

/// A decade's label: 0.01, 0.1, 1, 10, 100.
fn decade_label(ms: &f64) -> String {
    format!("{}", (ms * 1000.0).round() / 1000.0)
}

/// The lowest floor of a log axis, in ms: 1 µs, the histograms' own.
const MIN_FLOOR_MS: f64 = 0.001;

/// What the chart shows.
pub struct ChartData<'a> {
    pub title: String,
    /// The run's settings, in one line under the title.
    pub subtitle: String,
    /// Corrected latency of each measured second: (the middle of the
    /// second, in seconds since the first step began; its histogram).
    pub intervals: &'a [(f64, Histogram<u64>)],
    /// Whole-step histograms to compare in the distribution, by label.
    pub distributions: Vec<(String, &'a Histogram<u64>)>,
    /// Each measured second: offered rate, answers by outcome and reason.
    pub seconds: &'a [Second],
    /// What happened along the time axis.
    pub events: &'a [RunEvent],
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// "Nines" of a quantile: 0.9 -> 1, 0.99 -> 2, 0.999 -> 3.
fn nines(quantile: f64) -> f64 {
    -(1.0 - quantile).max(10f64.powf(-MAX_NINES)).log10()
}

fn percentile_label(nines: f64) -> String {
    let percent = 100.0 * (1.0 - 10f64.powf(-nines));
    format!("{}%", (percent * 1000.0).round() / 1000.0)
}

/// Points of a distribution curve: (nines, latency ms), one per step of
/// 0.05 nines up to the deepest quantile the histogram holds.
fn distribution(histogram: &Histogram<u64>) -> Vec<(f64, f64)> {
    if histogram.is_empty() {
        return Vec::new();
    }
    let deepest = nines(1.0 - 1.0 / histogram.len() as f64).min(MAX_NINES);
    let mut points = Vec::new();
    let mut x = 0.0;
    while x <= deepest + 1e-9 {
        let quantile = 1.0 - 10f64.powf(-x);
        points.push((x, ms(histogram.value_at_quantile(quantile))));
        x += 0.05;
    }
    points
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

/// The latency lines: clear of the events' red, orange and purple.
const LATENCY_COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(23, 150, 160),
    RGBColor(0, 0, 0),
];

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// Both time panels and the distribution: seconds or nines across, and a
/// log or linear axis up.
type LogPlot<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, LogCoord<f64>>>;

/// A chart that could not be drawn or written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ChartError {
    pub path: String,
    /// What the plotting library said.
    pub reason: String,
}

pub fn write_chart(path: &Path, data: &ChartData) -> Result<(), ChartError> {
    draw(path, data).map_err(|e| ChartError {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn draw(path: &Path, data: &ChartData) -> DrawResult {
    let canvas = SVGBackend::new(path, (WIDTH_PX, HEIGHT_PX)).into_drawing_area();
    canvas.fill(&WHITE)?;
    let titled = canvas.titled(&data.title, ("sans-serif", 22))?;
    let (subtitle, panels) = titled.split_vertically(SUBTITLE_PX);
    subtitle.draw(&Text::new(
        data.subtitle.clone(),
        (MARGIN_PX as i32, 4),
        ("sans-serif", 14).into_font().color(&RGBColor(60, 60, 60)),
    ))?;
    let rows = panels.split_evenly((3, 1));
    let (width, _) = rows[0].dim_in_pixel();
    let (plot, column) = rows[0].split_horizontally(width - LEGEND_PX);
    latency(&canvas, &plot, &column, data)?;
    let (plot, column) = rows[1].split_horizontally(width - LEGEND_PX);
    answers_panel(&canvas, &plot, &column, data)?;
    let (plot, column) = rows[2].split_horizontally(width - LEGEND_PX);
    percentiles(&plot, &column, data)?;
    canvas.present()?;
    Ok(())
}

/// A log axis's floor: the decade at or under the lowest value, in ms.
fn floor_ms(values: impl Iterator<Item = f64>) -> f64 {
    let lowest = values.filter(|v| *v > 0.0).fold(f64::INFINITY, f64::min);
    if !lowest.is_finite() {
        return MIN_FLOOR_MS;
    }
    10f64.powf(lowest.log10().floor()).max(MIN_FLOOR_MS)
}

/// The time axis's end: the last second's.
fn end_s(seconds: &[Second]) -> f64 {
    seconds
        .last()
        .map_or(1.0, |s| s.offset_s + s.length_s)
        .max(1.0)
}

/// Where time `t` falls across `plot`, before the chart is built (for the
/// height of the event labels' strip); the same as plotters places it.
fn estimated_x_px(plot: &DrawingArea<SVGBackend, Shift>, end_s: f64) -> impl Fn(f64) -> i32 {
    let (range, _) = plot.get_pixel_range();
    let left = range.start + (MARGIN_PX + Y_LABELS_PX) as i32;
    let right = range.end - MARGIN_PX as i32;
    move |t| left + ((right - left) as f64 * t / end_s) as i32
}

/// A time panel's caption, with a strip under it for `events`' labels:
/// the area left for the plot, and the strip's height.
fn time_head<'b>(
    plot: &DrawingArea<SVGBackend<'b>, Shift>,
    caption: &str,
    events: &[RunEvent],
    end_s: f64,
) -> Result<(DrawingArea<SVGBackend<'b>, Shift>, i32), Box<dyn std::error::Error>> {
    let (range, _) = plot.get_pixel_range();
    let right_px = range.end - MARGIN_PX as i32;
    let rows = events::label_rows(events, estimated_x_px(plot, end_s), right_px);
    let strip_px = rows as i32 * events::LABEL_ROW_PX;
    let (head, body) = plot.split_vertically(CAPTION_PX + strip_px);
    let (width, _) = head.dim_in_pixel();
    let style =
        TextStyle::from(("sans-serif", 16).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
    head.draw(&Text::new(
        caption.to_string(),
        (width as i32 / 2, MARGIN_PX as i32),
        style,
    ))?;
    Ok((body, strip_px))
}

/// A plot's builder on `body`, its caption drawn already.
fn builder<'a, 'b>(
    body: &'a DrawingArea<SVGBackend<'b>, Shift>,
) -> ChartBuilder<'a, 'b, SVGBackend<'b>> {
    let mut builder = ChartBuilder::on(body);
    builder
        .margin(MARGIN_PX)
        .x_label_area_size(X_LABELS_PX)
        .y_label_area_size(Y_LABELS_PX);
    builder
}

/// Labels `events` over a built time panel, in its pixels.
fn label_events<'a, Y: Ranged<ValueType = f64>>(
    canvas: &DrawingArea<SVGBackend, Shift>,
    chart: &ChartContext<'a, SVGBackend<'a>, Cartesian2d<RangedCoordf64, Y>>,
    events: &[RunEvent],
) -> DrawResult {
    let (xs, ys) = chart.plotting_area().get_pixel_range();
    let x_px = |t: f64| {
        let (range, _) = chart.plotting_area().get_pixel_range();
        let (left, right) = (range.start, range.end);
        let x = chart.x_range();
        left + ((right - left) as f64 * (t - x.start) / (x.end - x.start)) as i32
    };
    events::labels(canvas, events, x_px, xs.end, ys.start)
}

fn latency(
    canvas: &DrawingArea<SVGBackend, Shift>,
    plot: &DrawingArea<SVGBackend, Shift>,
    column: &DrawingArea<SVGBackend, Shift>,
    data: &ChartData,
) -> DrawResult {
    let series: [(&str, f64); 4] = [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999), ("max", 1.0)];
    let end_s = end_s(data.seconds);
    let top_ms = data
        .intervals
        .iter()
        .map(|(_, h)| ms(h.max()))
        .fold(0.1, f64::max)
        * LOG_HEADROOM;
    let floor = floor_ms(
        data.intervals
            .iter()
            .map(|(_, h)| ms(h.value_at_quantile(0.5))),
    );
    let caption = "latency from intended send time, per second of the measured run";
    let (body, strip_px) = time_head(plot, caption, data.events, end_s)?;
    let mut chart: LogPlot<SVGBackend> =
        builder(&body).build_cartesian_2d(0f64..end_s, (floor..top_ms).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("latency (ms)")
        .y_labels(LOG_AXIS_LABELS)
        .y_label_formatter(&decade_label)
        .draw()?;
    events::shade(&mut chart, data.events, floor, top_ms)?;
    let mut entries = Vec::new();
    for (i, (label, quantile)) in series.iter().enumerate() {
        let color = LATENCY_COLORS[i % LATENCY_COLORS.len()];
        let points = data.intervals.iter().map(|(t, h)| {
            let value = if *quantile >= 1.0 {
                h.max()
            } else {
                h.value_at_quantile(*quantile)
            };
            (*t, ms(value).max(floor))
        });
        chart.draw_series(LineSeries::new(points, color.stroke_width(2)))?;
        entries.push((label.to_string(), Sample::Line(color)));
    }
    label_events(canvas, &chart, data.events)?;
    entries.extend(events::legend_entries(data.events));
    legend(column, CAPTION_PX + strip_px + MARGIN_PX as i32, &entries)
}

fn answers_panel(
    canvas: &DrawingArea<SVGBackend, Shift>,
    plot: &DrawingArea<SVGBackend, Shift>,
    column: &DrawingArea<SVGBackend, Shift>,
    data: &ChartData,
) -> DrawResult {
    let end_s = end_s(data.seconds);
    let layers = answers::layers(data.seconds);
    let top = answers::highest(data.seconds, &layers) * LINEAR_HEADROOM;
    let caption = "answers per second by outcome and reason (stacked), and the rate offered";
    let (body, strip_px) = time_head(plot, caption, data.events, end_s)?;
    let mut chart = builder(&body).build_cartesian_2d(0f64..end_s, 0f64..top)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("per second")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    events::shade(&mut chart, data.events, 0.0, top)?;
    answers::draw(&mut chart, data.seconds, &layers)?;
    label_events(canvas, &chart, data.events)?;
    let mut entries = answers::legend_entries(&layers);
    entries.extend(events::legend_entries(data.events));
    legend(column, CAPTION_PX + strip_px + MARGIN_PX as i32, &entries)
}

fn percentiles(
    plot: &DrawingArea<SVGBackend, Shift>,
    column: &DrawingArea<SVGBackend, Shift>,
    data: &ChartData,
) -> DrawResult {
    let curves: Vec<(String, Vec<(f64, f64)>)> = data
        .distributions
        .iter()
        .map(|(label, h)| (label.clone(), distribution(h)))
        .collect();
    let right = curves
        .iter()
        .flat_map(|(_, c)| c.last().map(|p| p.0))
        .fold(1.0, f64::max);
    let top_ms = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.1))
        .fold(0.1, f64::max)
        * LOG_HEADROOM;
    let floor = floor_ms(curves.iter().flat_map(|(_, c)| c.iter().map(|p| p.1)));
    let caption = "percentile distribution of the measured step";
    let (body, _) = time_head(plot, caption, &[], right)?;
    let mut chart: LogPlot<SVGBackend> =
        builder(&body).build_cartesian_2d(0f64..right, (floor..top_ms).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .y_labels(LOG_AXIS_LABELS)
        .y_label_formatter(&decade_label)
        .x_labels(right.ceil() as usize + 1)
        .x_label_formatter(&|x| percentile_label(*x))
        .draw()?;
    let mut entries = Vec::new();
    for (i, (label, points)) in curves.into_iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points = points.into_iter().map(|(x, y)| (x, y.max(floor)));
        chart.draw_series(LineSeries::new(points, color.stroke_width(2)))?;
        entries.push((label, Sample::Line(color)));
    }
    legend(column, CAPTION_PX + MARGIN_PX as i32, &entries)
}

#[cfg(test)]
mod tests;
