//! The run's events on a time axis: a span shaded behind the data (a
//! node offline, holds expiring), a moment as a thin vertical line (a
//! snapshot, a rate step), and each one's label in a strip above the plot,
//! where no line runs, in as many rows as keep the labels apart.

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::legend::Sample;
use super::DrawResult;
use crate::RunEvent;

/// Height of one row of event labels, in pixels.
pub(super) const LABEL_ROW_PX: i32 = 15;
/// The label font's size, and the width of one of its characters as
/// estimated for laying labels out, in pixels.
const LABEL_FONT_PX: u32 = 11;
const LABEL_CHAR_PX: f64 = 6.5;
/// Space between a label and its event's line, and between two labels on
/// one row, in pixels.
const LABEL_GAP_PX: i32 = 4;

/// What kind of event, by what it says: each kind has its colour.
fn color(event: &RunEvent) -> RGBColor {
    if event.what.contains("killed") {
        RGBColor(0, 0, 0)
    } else if event.what.contains("offline") {
        RGBColor(214, 39, 40)
    } else if event.what.contains("holds expired") {
        RGBColor(255, 127, 14)
    } else if event.what.contains("snapshot") {
        RGBColor(148, 103, 189)
    } else {
        RGBColor(90, 90, 90)
    }
}

/// Opacity of a span's shade.
const SPAN_ALPHA: f64 = 0.13;

/// A legend entry per kind of event the run had.
pub(super) fn legend_entries(events: &[RunEvent]) -> Vec<(String, Sample)> {
    let kinds: [(&str, &str); 5] = [
        ("killed", "leader killed, until another decides"),
        ("offline", "node offline"),
        ("holds expired", "holds expiring"),
        ("snapshot", "snapshot"),
        ("step", "rate step"),
    ];
    kinds
        .iter()
        .filter_map(|(word, label)| {
            let event = events.iter().find(|e| e.what.contains(word))?;
            let c = color(event);
            let sample = match event.until_s {
                Some(_) => Sample::Swatch(c.mix(SPAN_ALPHA * 2.0)),
                None => Sample::Line(c),
            };
            Some((label.to_string(), sample))
        })
        .collect()
}

/// Rows of label strip the events need, given their pixel positions.
pub(super) fn label_rows(events: &[RunEvent], x_px: impl Fn(f64) -> i32, right_px: i32) -> usize {
    layout(events, x_px, right_px)
        .iter()
        .map(|(_, row)| row + 1)
        .max()
        .unwrap_or(0)
}

/// Each label's left pixel and row: the first row where it clears the
/// labels before it, pulled left where it would pass the plot's end.
fn layout(events: &[RunEvent], x_px: impl Fn(f64) -> i32, right_px: i32) -> Vec<(i32, usize)> {
    let mut row_ends: Vec<i32> = Vec::new();
    events
        .iter()
        .map(|event| {
            let width = (event.what.chars().count() as f64 * LABEL_CHAR_PX) as i32;
            let left = (x_px(event.at_s) + LABEL_GAP_PX).min(right_px - width);
            let row = match row_ends.iter().position(|end| *end + LABEL_GAP_PX <= left) {
                Some(row) => row,
                None => {
                    row_ends.push(i32::MIN);
                    row_ends.len() - 1
                }
            };
            row_ends[row] = left + width;
            (left, row)
        })
        .collect()
}

/// Spans and moments drawn into the plot, behind what is drawn after.
pub(super) fn shade<'a, DB: DrawingBackend + 'a, Y: Ranged<ValueType = f64>>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, Y>>,
    events: &[RunEvent],
    low: f64,
    high: f64,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    for event in events {
        let c = color(event);
        match event.until_s {
            Some(until) => chart.draw_series(std::iter::once(Rectangle::new(
                [(event.at_s, low), (until, high)],
                c.mix(SPAN_ALPHA).filled(),
            )))?,
            None => chart.draw_series(std::iter::once(PathElement::new(
                vec![(event.at_s, low), (event.at_s, high)],
                c.mix(0.7).stroke_width(1),
            )))?,
        };
    }
    Ok(())
}

/// Each event's label in the strip between the plot's caption and its
/// top edge (`plot_top_px`), on `canvas` in its pixels.
pub(super) fn labels<DB: DrawingBackend>(
    canvas: &DrawingArea<DB, plotters::coord::Shift>,
    events: &[RunEvent],
    x_px: impl Fn(f64) -> i32,
    right_px: i32,
    plot_top_px: i32,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let placed = layout(events, &x_px, right_px);
    let rows = placed.iter().map(|(_, row)| row + 1).max().unwrap_or(0) as i32;
    for (event, (left, row)) in events.iter().zip(placed) {
        // The top row is furthest from the plot.
        let y = plot_top_px - LABEL_GAP_PX - LABEL_ROW_PX * (rows - row as i32) + LABEL_ROW_PX / 2;
        let c = color(event);
        let style = TextStyle::from(("sans-serif", LABEL_FONT_PX).into_font())
            .color(&c)
            .pos(Pos::new(HPos::Left, VPos::Center));
        canvas.draw(&Text::new(event.what.clone(), (left, y), style))?;
    }
    Ok(())
}
