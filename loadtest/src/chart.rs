//! The `--chart` SVG, with plotters: latency percentiles over time (top),
//! offered and achieved rate and errors over time (middle), both with the
//! run's events marked, and the percentile distribution of each run
//! compared (bottom). Each plot leaves headroom for its legend, so that
//! the legend never covers a line.

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::Second;

/// Deepest percentile drawn in the distribution: 99.999 %.
const MAX_NINES: f64 = 5.0;
const WIDTH_PX: u32 = 1100;
const HEIGHT_PX: u32 = 1300;
/// Headroom over the highest point, for the legend: ×8 on the log
/// latency axes, ×1.4 on the linear rate axis.
const LOG_HEADROOM: f64 = 8.0;
const LINEAR_HEADROOM: f64 = 1.4;

/// What the chart shows.
pub struct ChartData<'a> {
    pub title: String,
    /// Corrected latency per interval of the measured run: (seconds since
    /// its start, histogram of that interval).
    pub intervals: &'a [(f64, Histogram<u64>)],
    /// Whole-run histograms to compare in the distribution, by label.
    pub distributions: Vec<(String, &'a Histogram<u64>)>,
    /// Each second of the measured run: offered and achieved rate, errors.
    pub seconds: &'a [Second],
    /// Events to mark on the time axis: (seconds, what happened).
    pub marks: &'a [(f64, String)],
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

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// One value of a second, for a series of the rate plot.
type OfSecond = fn(&Second) -> f64;

/// Both plots: seconds or percentile across, latency in ms on a log scale up.
type Plot<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, LogCoord<f64>>>;

/// An empty plot with its caption, from 0 to `right` across and up to `top_ms`.
fn plot<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    right: f64,
    top_ms: f64,
) -> Result<Plot<'a, DB>, Box<dyn std::error::Error + 'a>>
where
    DB::ErrorType: 'static,
{
    Ok(ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..right, (0.01f64..top_ms).log_scale())?)
}

/// The `i`th series, with its legend entry; latencies below the axis are
/// drawn at its floor.
fn line<'a, DB: DrawingBackend + 'a>(
    chart: &mut Plot<'a, DB>,
    i: usize,
    label: String,
    points: impl IntoIterator<Item = (f64, f64)>,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let color = COLORS[i % COLORS.len()];
    let points = points.into_iter().map(|(x, y)| (x, y.max(0.01)));
    chart
        .draw_series(LineSeries::new(points, color.stroke_width(2)))?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    Ok(())
}

/// The plot's legend, top left (each plot leaves headroom for it).
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// A thin vertical line and a label at each mark, from `low` to `high`.
fn marks<'a, DB: DrawingBackend + 'a, Y: Clone + 'static>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, impl Ranged<ValueType = Y>>>,
    marks: &[(f64, String)],
    low: Y,
    high: Y,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    for (at_s, what) in marks {
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(*at_s, low.clone()), (*at_s, high.clone())],
            BLACK.mix(0.4).stroke_width(1),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            what.clone(),
            (*at_s, high.clone()),
            ("sans-serif", 12),
        )))?;
    }
    Ok(())
}

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
    let root = SVGBackend::new(path, (WIDTH_PX, HEIGHT_PX)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(&data.title, ("sans-serif", 22))?;
    let parts = root.split_evenly((3, 1));
    over_time(&parts[0], data)?;
    rates(&parts[1], data)?;
    percentiles(&parts[2], data)?;
    root.present()?;
    Ok(())
}

fn over_time<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    data: &ChartData,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let series: [(&str, f64); 4] = [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999), ("max", 1.0)];
    let end_s = data.intervals.last().map_or(1.0, |(t, _)| t + 1.0).max(1.0);
    let top_ms = data
        .intervals
        .iter()
        .map(|(_, h)| ms(h.max()))
        .fold(0.1, f64::max)
        * LOG_HEADROOM;
    let mut chart = plot(
        area,
        "latency from intended send time, per second of the measured run",
        end_s,
        top_ms,
    )
    .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("latency (ms)")
        .draw()?;
    for (i, (label, quantile)) in series.iter().enumerate() {
        let points = data.intervals.iter().map(|(t, h)| {
            let value = if *quantile >= 1.0 {
                h.max()
            } else {
                h.value_at_quantile(*quantile)
            };
            (*t, ms(value))
        });
        line(&mut chart, i, label.to_string(), points)?;
    }
    marks(&mut chart, data.marks, 0.01, top_ms / LOG_HEADROOM)?;
    legend(&mut chart)
}

/// Offered and achieved requests per second, and errors per second, over
/// the measured run, with the same marks.
fn rates<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    data: &ChartData,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let end_s = data
        .seconds
        .last()
        .map_or(1.0, |s| s.offset_s + 1.0)
        .max(1.0);
    let highest = data
        .seconds
        .iter()
        .map(|s| s.offered_per_s.max(s.achieved_per_s).max(s.errors as f64))
        .fold(1.0, f64::max);
    let top = highest * LINEAR_HEADROOM;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "requests per second: offered, achieved and failed",
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..end_s, 0f64..top)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("per second")
        .draw()?;
    let series: [(&str, OfSecond); 3] = [
        ("offered", |s| s.offered_per_s),
        ("achieved", |s| s.achieved_per_s),
        ("errors", |s| s.errors as f64),
    ];
    for (i, (label, value)) in series.into_iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points = data.seconds.iter().map(|s| (s.offset_s, value(s)));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    marks(&mut chart, data.marks, 0.0, highest)?;
    legend(&mut chart)
}

fn percentiles<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    data: &ChartData,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
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
    let mut chart = plot(
        area,
        "percentile distribution of the whole measured run",
        right,
        top_ms,
    )
    .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_labels(right.ceil() as usize + 1)
        .x_label_formatter(&|x| percentile_label(*x))
        .draw()?;
    for (i, (label, points)) in curves.into_iter().enumerate() {
        line(&mut chart, i, label, points)?;
    }
    legend(&mut chart)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_chart_is_an_svg_with_both_plots() {
        // Proves write_chart produces an SVG with both captions and one legend entry per series.
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for v in 1..=10_000u64 {
            histogram.record(v * 10).unwrap();
        }
        let intervals = vec![(0.0, histogram.clone()), (1.0, histogram.clone())];
        let path = std::env::temp_dir().join(format!("omniroute-chart-{}.svg", std::process::id()));
        write_chart(
            &path,
            &ChartData {
                title: "test".into(),
                intervals: &intervals,
                distributions: vec![
                    ("omniroute".into(), &histogram),
                    ("redis".into(), &histogram),
                ],
                seconds: &[
                    Second {
                        offset_s: 0.0,
                        offered_per_s: 1000.0,
                        achieved_per_s: 990.0,
                        errors: 3,
                        ..Second::default()
                    },
                    Second {
                        offset_s: 1.0,
                        offered_per_s: 1000.0,
                        achieved_per_s: 1000.0,
                        ..Second::default()
                    },
                ],
                marks: &[(0.5, "WH-1 offline".to_string())],
            },
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        assert!(svg.contains("per second of the measured run"));
        assert!(svg.contains("percentile distribution"));
        assert!(svg.contains("offered, achieved and failed"));
        for label in [
            "p99.9",
            "omniroute",
            "redis",
            "99.9%",
            "achieved",
            "errors",
            "WH-1 offline",
        ] {
            assert!(svg.contains(label), "{label} missing");
        }
        assert!(distribution(&histogram).len() > 60);
    }
}
