//! A plot's legend, in a column of its own right of the plot, so that it
//! never covers a line, a bar or an event.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::DrawResult;

/// Height of one legend entry, in pixels.
const ENTRY_PX: i32 = 18;
/// Gap between the legend's border and its entries, in pixels.
const PADDING_PX: i32 = 8;
/// Length of an entry's sample line or width of its swatch, in pixels.
const SAMPLE_PX: i32 = 22;
const FONT_PX: u32 = 12;

/// How an entry's sample is drawn.
#[derive(Clone, Copy)]
pub(super) enum Sample {
    Line(RGBColor),
    /// A filled square: a bar's or a span's colour.
    Swatch(RGBAColor),
}

/// Draws `entries` top left in `column`, boxed.
pub(super) fn legend<DB: DrawingBackend>(
    column: &DrawingArea<DB, plotters::coord::Shift>,
    top_px: i32,
    entries: &[(String, Sample)],
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    if entries.is_empty() {
        return Ok(());
    }
    let (width, _) = column.dim_in_pixel();
    let left = PADDING_PX;
    let right = width as i32 - PADDING_PX;
    let bottom = top_px + 2 * PADDING_PX + ENTRY_PX * entries.len() as i32;
    column.draw(&Rectangle::new(
        [(left, top_px), (right, bottom)],
        ShapeStyle::from(&WHITE).filled(),
    ))?;
    column.draw(&Rectangle::new([(left, top_px), (right, bottom)], BLACK))?;
    let style = TextStyle::from(("sans-serif", FONT_PX).into_font())
        .pos(Pos::new(HPos::Left, VPos::Center));
    for (i, (label, sample)) in entries.iter().enumerate() {
        let y = top_px + PADDING_PX + ENTRY_PX * i as i32 + ENTRY_PX / 2;
        let x = left + PADDING_PX;
        match *sample {
            Sample::Line(color) => {
                column.draw(&PathElement::new(
                    vec![(x, y), (x + SAMPLE_PX, y)],
                    color.stroke_width(2),
                ))?;
            }
            Sample::Swatch(color) => {
                column.draw(&Rectangle::new(
                    [(x, y - 5), (x + SAMPLE_PX, y + 5)],
                    color.filled(),
                ))?;
            }
        }
        column.draw(&Text::new(
            label.clone(),
            (x + SAMPLE_PX + 6, y),
            style.clone(),
        ))?;
    }
    Ok(())
}
