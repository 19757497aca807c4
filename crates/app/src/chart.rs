//! Comparison charts with plotters: training loss (a line, with a faint min–max band where
//! points stand for several steps) and validation loss (dashed, with markers) of each run
//! against the chosen x axis, a legend, and a log-scale option. PNG or SVG by file name.

use std::path::Path;
use std::sync::OnceLock;

use peft_studio_catalog::series::{Point, RunSeries, XAxis};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{AppError, Result};

/// The font chart text is drawn with, embedded so charts look the same everywhere.
const FONT: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");

/// Distinguishable series colours (Tableau 10).
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The colour of the `i`-th run in a chart.
pub fn series_color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// How a chart looks.
#[derive(Debug, Clone)]
pub struct ChartOptions {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Logarithmic loss axis.
    pub log_y: bool,
    /// The x axis the series were built for.
    pub x: XAxis,
    /// Title above the plot.
    pub title: String,
}

impl Default for ChartOptions {
    fn default() -> Self {
        Self {
            width: 1600,
            height: 900,
            log_y: false,
            x: XAxis::Step,
            title: "Training and validation loss".into(),
        }
    }
}

fn register_font() -> std::result::Result<(), String> {
    static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
                .map_err(|_| "the embedded font cannot be read".to_string())
        })
        .clone()
}

/// Draws `series` into `out` (`.png` or `.svg`).
pub fn render(series: &[RunSeries], opts: &ChartOptions, out: &Path) -> Result<()> {
    let fail = |message: String| AppError::Chart {
        path: out.to_path_buf(),
        message,
    };
    if series
        .iter()
        .all(|s| s.loss.is_empty() && s.eval_loss.is_empty())
    {
        return Err(fail("the runs have no metrics yet".into()));
    }
    register_font().map_err(fail)?;
    let ext = out
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let size = (opts.width, opts.height);
    match ext.as_deref() {
        Some("png") => draw(
            BitMapBackend::new(out, size).into_drawing_area(),
            series,
            opts,
        ),
        Some("svg") => draw(SVGBackend::new(out, size).into_drawing_area(), series, opts),
        _ => Err("the file name must end in .png or .svg".to_string()),
    }
    .map_err(fail)
}

/// The loss value as plotted (log10 on a log axis; unplottable values are dropped).
fn plotted(y: f64, log_y: bool) -> Option<f64> {
    match (log_y, y.is_finite()) {
        (_, false) => None,
        (true, _) if y <= 0.0 => None,
        (true, _) => Some(y.log10()),
        (false, _) => Some(y),
    }
}

/// The plot's x and y ranges, padded a little.
fn bounds(series: &[RunSeries], log_y: bool) -> Option<((f64, f64), (f64, f64))> {
    let points = series
        .iter()
        .flat_map(|s| s.loss.iter().chain(&s.eval_loss));
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for p in points {
        for y in [p.min, p.max, p.y]
            .into_iter()
            .filter_map(|y| plotted(y, log_y))
        {
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        x0 = x0.min(p.x);
        x1 = x1.max(p.x);
    }
    if x0 > x1 || y0 > y1 {
        return None;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    let x1 = if x1 > x0 { x1 } else { x0 + 1.0 };
    Some(((x0, x1), (y0 - pad, y1 + pad)))
}

/// An x tick: whole numbers for counts (with k/M for large ones), one decimal for epochs.
fn x_label(v: f64, axis: XAxis) -> String {
    match axis {
        XAxis::Epoch => format!("{v:.1}"),
        _ if v.abs() >= 1e6 => format!("{:.1}M", v / 1e6),
        _ if v.abs() >= 1e4 => format!("{:.0}k", v / 1e3),
        _ => format!("{v:.0}"),
    }
}

fn label(v: f64, log_y: bool) -> String {
    let v = if log_y { 10f64.powf(v) } else { v };
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    series: &[RunSeries],
    opts: &ChartOptions,
) -> std::result::Result<(), String> {
    let e = |err: DrawingAreaErrorKind<DB::ErrorType>| err.to_string();
    let log_y = opts.log_y;
    let ((x0, x1), (y0, y1)) = bounds(series, log_y).ok_or("no plottable values")?;
    root.fill(&WHITE).map_err(e)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&opts.title, ("sans-serif", 34))
        .margin(28)
        .x_label_area_size(64)
        .y_label_area_size(96)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(e)?;
    let y_desc = if log_y { "loss (log scale)" } else { "loss" };
    chart
        .configure_mesh()
        .x_desc(opts.x.title())
        .y_desc(y_desc)
        .label_style(("sans-serif", 20))
        .axis_desc_style(("sans-serif", 24))
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(215, 215, 215))
        .y_label_formatter(&|v| label(*v, log_y))
        .x_label_formatter(&|v| x_label(*v, opts.x))
        .draw()
        .map_err(e)?;
    let xy = |p: &Point, y: f64| Some((p.x, plotted(y, log_y)?));
    for (i, s) in series.iter().enumerate() {
        let color = series_color(i);
        if s.loss.iter().any(|p| p.n > 1) {
            let upper = s.loss.iter().filter_map(|p| xy(p, p.max));
            let lower: Vec<(f64, f64)> = s.loss.iter().rev().filter_map(|p| xy(p, p.min)).collect();
            let band: Vec<(f64, f64)> = upper.chain(lower).collect();
            chart
                .draw_series(std::iter::once(Polygon::new(
                    band,
                    color.mix(0.15).filled(),
                )))
                .map_err(e)?;
        }
        chart
            .draw_series(LineSeries::new(
                s.loss.iter().filter_map(|p| xy(p, p.y)),
                color.stroke_width(3),
            ))
            .map_err(e)?
            .label(format!("{}: loss", s.label))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 28, y)], color.stroke_width(4))
            });
        if !s.eval_loss.is_empty() {
            let points: Vec<(f64, f64)> = s.eval_loss.iter().filter_map(|p| xy(p, p.y)).collect();
            chart
                .draw_series(DashedLineSeries::new(
                    points.clone(),
                    12,
                    8,
                    color.stroke_width(2),
                ))
                .map_err(e)?
                .label(format!("{}: eval loss", s.label))
                .legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(0, 0), (10, 0)], color.stroke_width(2))
                        + PathElement::new(vec![(18, 0), (28, 0)], color.stroke_width(2))
                });
            chart
                .draw_series(
                    points
                        .into_iter()
                        .map(|p| Circle::new(p, 5, color.filled())),
                )
                .map_err(e)?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(180, 180, 180))
        .label_font(("sans-serif", 20))
        .draw()
        .map_err(e)?;
    root.present().map_err(e)
}
