//! Plots (SVG and PNG) with plotters: accuracy per round, per-language bars, data efficiency
//! (Figure 4) and accuracy against language distance (Figure 5 b/d).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::ranged1d::{AsRangedCoord, DefaultFormatting, KeyPointHint, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::{CoordTranslate, Shift};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::{io_err, ReportError, Result};
use crate::model::{Curve, RunResults};
use crate::tables::group_thousands;

/// Width and height of every plot, in pixels (PNG) or user units (SVG).
pub const PLOT_SIZE: (u32, u32) = (1200, 720);

/// Font family every text element uses; the embedded DejaVu Sans subset is registered under it.
const FONT: &str = "sans-serif";
/// DejaVu Sans, subset to Latin, Greek and common punctuation (licence in `fonts/`).
static FONT_BYTES: &[u8] = include_bytes!("../fonts/DejaVuSans-subset.ttf");

/// Okabe–Ito colour-blind-safe palette, with grey in place of its yellow (low contrast on white).
const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(230, 159, 0),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
    RGBColor(140, 140, 140),
];

const GRID_BOLD: RGBColor = RGBColor(210, 210, 210);
const GRID_LIGHT: RGBColor = RGBColor(238, 238, 238);

/// Registers the embedded font with plotters (once per process).
pub fn ensure_font() -> Result<()> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        [FontStyle::Normal, FontStyle::Bold]
            .into_iter()
            .all(|style| plotters::style::register_font(FONT, style, FONT_BYTES).is_ok())
    });
    if ok {
        Ok(())
    } else {
        Err(ReportError::Font)
    }
}

/// The four plots this crate draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlotKind {
    /// Accuracy per round or epoch, one line per paradigm.
    Curves,
    /// Accuracy per language, one bar per paradigm.
    PerLanguage,
    /// Accuracy against training-set size, log x axis (Figure 4).
    DataEfficiency,
    /// Accuracy against language distance φ (Figure 5 b/d).
    Distance,
}

impl PlotKind {
    /// All plot kinds, in the order they are written.
    pub const ALL: [PlotKind; 4] = [
        PlotKind::Curves,
        PlotKind::PerLanguage,
        PlotKind::DataEfficiency,
        PlotKind::Distance,
    ];

    /// File stem (`curves` → `curves.svg`, `curves.png`).
    pub fn stem(self) -> &'static str {
        match self {
            PlotKind::Curves => "curves",
            PlotKind::PerLanguage => "per_language",
            PlotKind::DataEfficiency => "data_efficiency",
            PlotKind::Distance => "distance",
        }
    }

    /// Whether `r` has data for this plot.
    pub fn has_data(self, r: &RunResults) -> bool {
        match self {
            PlotKind::Curves => r.curves.iter().any(|c| !c.points.is_empty()),
            PlotKind::PerLanguage => r.rows.iter().any(|row| !row.per_language.is_empty()),
            PlotKind::DataEfficiency => !r.data_efficiency.is_empty(),
            PlotKind::Distance => !distance_series(r).is_empty(),
        }
    }
}

/// Writes every plot that has data as SVG and PNG into `dir`; returns the files written.
pub fn write_plots(r: &RunResults, dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for kind in PlotKind::ALL {
        out.extend(write_plot(r, kind, dir)?);
    }
    Ok(out)
}

/// Writes one plot as `<stem>.svg` and `<stem>.png`; no file and no error when it has no data.
pub fn write_plot(r: &RunResults, kind: PlotKind, dir: &Path) -> Result<Vec<PathBuf>> {
    if !kind.has_data(r) {
        return Ok(Vec::new());
    }
    ensure_font()?;
    let svg_path = dir.join(format!("{}.svg", kind.stem()));
    let png_path = dir.join(format!("{}.png", kind.stem()));
    let plot_err = |path: &Path| {
        let path = path.to_path_buf();
        move |message| ReportError::Plot { path, message }
    };

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, PLOT_SIZE).into_drawing_area();
        draw(kind, r, &root).map_err(plot_err(&svg_path))?;
        root.present()
            .map_err(|e| plot_err(&svg_path)(e.to_string()))?;
    }
    crate::io::write_atomic(&svg_path, svg.as_bytes())?;

    // The bitmap backend picks the format from the extension, so the temporary file ends in .png.
    let tmp = tempfile::Builder::new()
        .prefix(".fedprompt-")
        .suffix(".png")
        .tempfile_in(dir)
        .map_err(io_err(dir))?
        .into_temp_path();
    {
        let root = BitMapBackend::new(&tmp, PLOT_SIZE).into_drawing_area();
        draw(kind, r, &root).map_err(plot_err(&png_path))?;
        root.present()
            .map_err(|e| plot_err(&png_path)(e.to_string()))?;
    }
    tmp.persist(&png_path)
        .map_err(|e| io_err(&png_path)(e.error))?;
    Ok(vec![svg_path, png_path])
}

type Draw = std::result::Result<(), String>;

/// An f64 axis (linear or log) whose ticks are exactly the given values.
struct Ticks<R> {
    inner: R,
    ticks: Vec<f64>,
}

impl<R: Ranged<ValueType = f64>> Ticks<R> {
    fn new<A>(range: A, ticks: Vec<f64>) -> Self
    where
        A: AsRangedCoord<CoordDescType = R, Value = f64>,
        R: From<A>,
    {
        Self {
            inner: R::from(range),
            ticks,
        }
    }
}

impl<R: Ranged<ValueType = f64>> Ranged for Ticks<R> {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.inner.map(value, limit)
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.inner.range()
    }
}

fn pe<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> String {
    e.to_string()
}

fn draw<DB: DrawingBackend>(kind: PlotKind, r: &RunResults, root: &DrawingArea<DB, Shift>) -> Draw {
    root.fill(&WHITE).map_err(pe)?;
    match kind {
        PlotKind::Curves => draw_curves(r, root),
        PlotKind::PerLanguage => draw_bars(r, root),
        PlotKind::DataEfficiency => draw_data_eff(r, root),
        PlotKind::Distance => draw_distance(r, root),
    }
}

/// Colour and marker index of a paradigm, stable across plots.
fn style_index(r: &RunResults, paradigm: &str) -> usize {
    r.paradigm_order()
        .iter()
        .position(|p| p == paradigm)
        .unwrap_or(0)
}

fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

#[derive(Clone, Copy, PartialEq)]
enum Swatch {
    Line,
    Bar,
}

/// `text` cut at a character boundary and ended with `…` so that it is at most `width`
/// pixels wide in `font` (a long task name must not run off the image).
fn fit_text<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    text: &str,
    font: &TextStyle,
    width: u32,
) -> std::result::Result<String, String> {
    if root.estimate_text_size(text, font).map_err(pe)?.0 <= width {
        return Ok(text.to_string());
    }
    let chars: Vec<char> = text.chars().collect();
    let (mut lo, mut hi) = (0, chars.len());
    // The longest prefix whose text plus `…` fits (binary search over character counts).
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        let cut: String = chars[..mid].iter().collect::<String>() + "…";
        if root.estimate_text_size(&cut, font).map_err(pe)?.0 <= width {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Ok(chars[..lo]
        .iter()
        .collect::<String>()
        .trim_end()
        .to_string()
        + "…")
}

/// Title on top, legend panel on the right (sized to the longest label); returns the plot area.
fn layout<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    entries: &[(String, usize)],
    swatch: Swatch,
) -> std::result::Result<DrawingArea<DB, Shift>, String> {
    let title_font = TextStyle::from((FONT, 28).into_font());
    let title = fit_text(
        root,
        title,
        &title_font,
        root.dim_in_pixel().0.saturating_sub(24),
    )?;
    let area = root
        .margin(14, 6, 6, 6)
        .titled(&title, (FONT, 28).into_font().color(&BLACK))
        .map_err(pe)?;
    let legend_font = TextStyle::from((FONT, 17).into_font());
    let mut widest = 0;
    for (label, _) in entries {
        widest = widest.max(root.estimate_text_size(label, &legend_font).map_err(pe)?.0);
    }
    let legend_w = (widest + 70).clamp(160, PLOT_SIZE.0 / 2);
    let (plot, legend) = area.split_horizontally(area.dim_in_pixel().0 - legend_w);
    for (k, (label, idx)) in entries.iter().enumerate() {
        let y = 40 + 30 * k as i32;
        let c = colour(*idx);
        match swatch {
            Swatch::Line => {
                legend
                    .draw(&PathElement::new(vec![(8, y), (44, y)], c.stroke_width(3)))
                    .map_err(pe)?;
                draw_marker_px(&legend, (26, y), *idx)?;
            }
            Swatch::Bar => {
                legend
                    .draw(&Rectangle::new([(12, y - 9), (40, y + 9)], c.filled()))
                    .map_err(pe)?;
            }
        }
        legend
            .draw(&Text::new(
                label.clone(),
                (54, y),
                legend_font.pos(Pos::new(HPos::Left, VPos::Center)),
            ))
            .map_err(pe)?;
    }
    Ok(plot)
}

/// A marker at a pixel position in `area` (used by the legend).
fn draw_marker_px<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    at: (i32, i32),
    idx: usize,
) -> Draw {
    let s = colour(idx).filled();
    let (x, y) = at;
    match idx % 4 {
        0 => area.draw(&Circle::new(at, 6, s)),
        1 => area.draw(&TriangleMarker::new(at, 7, s)),
        2 => area.draw(&Rectangle::new([(x - 5, y - 5), (x + 5, y + 5)], s)),
        _ => area.draw(&Cross::new(at, 6, colour(idx).stroke_width(3))),
    }
    .map_err(pe)
}

/// Markers (shape by paradigm index) at data coordinates.
fn draw_markers<DB, CT>(
    chart: &mut ChartContext<'_, DB, CT>,
    pts: &[(f64, f64)],
    idx: usize,
) -> Draw
where
    DB: DrawingBackend,
    CT: CoordTranslate<From = (f64, f64)>,
{
    let s = colour(idx).filled();
    let e = |p: &(f64, f64)| EmptyElement::at(*p);
    match idx % 4 {
        0 => chart
            .draw_series(pts.iter().map(|p| e(p) + Circle::new((0, 0), 5, s)))
            .map(|_| ()),
        1 => chart
            .draw_series(pts.iter().map(|p| e(p) + TriangleMarker::new((0, 0), 6, s)))
            .map(|_| ()),
        2 => chart
            .draw_series(
                pts.iter()
                    .map(|p| e(p) + Rectangle::new([(-4, -4), (4, 4)], s)),
            )
            .map(|_| ()),
        _ => chart
            .draw_series(
                pts.iter()
                    .map(|p| e(p) + Cross::new((0, 0), 5, colour(idx).stroke_width(3))),
            )
            .map(|_| ()),
    }
    .map_err(pe)
}

/// Y range in percent around `values` (fractions), with some headroom, inside [0, 100].
fn pct_range(values: impl Iterator<Item = f64>, from_zero: bool) -> std::ops::Range<f64> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values {
        lo = lo.min(v * 100.0);
        hi = hi.max(v * 100.0);
    }
    if !lo.is_finite() {
        return 0.0..100.0;
    }
    let hi = ((hi + 5.0) / 10.0).ceil() * 10.0;
    let lo = if from_zero {
        0.0
    } else {
        ((lo - 5.0) / 10.0).floor() * 10.0
    };
    let (lo, hi) = (lo.max(0.0), hi.min(100.0));
    if hi - lo < 10.0 {
        (hi - 10.0).max(0.0)..(lo + 10.0).min(100.0).max(hi)
    } else {
        lo..hi
    }
}

/// A padded x range around `values`.
fn padded(values: impl Iterator<Item = f64>, pad_frac: f64) -> std::ops::Range<f64> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if hi - lo <= f64::EPSILON {
        return lo - 0.5..hi + 0.5;
    }
    let pad = (hi - lo) * pad_frac;
    lo - pad..hi + pad
}

fn mesh<DB: DrawingBackend, X: Ranged<ValueType = f64> + ValueFormatter<f64>>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<X, RangedCoordf64>>,
    x_desc: &str,
    x_fmt: &dyn Fn(&f64) -> String,
    x_grid: bool,
) -> Draw {
    let mut m = chart.configure_mesh();
    m.x_desc(x_desc)
        .y_desc("Accuracy (%)")
        .axis_desc_style((FONT, 21))
        .label_style((FONT, 16))
        .bold_line_style(GRID_BOLD)
        .light_line_style(GRID_LIGHT)
        .x_max_light_lines(1)
        .y_max_light_lines(1)
        .x_label_formatter(x_fmt)
        .y_label_formatter(&|v| format!("{v:.0}"));
    if !x_grid {
        m.disable_x_mesh();
    }
    m.draw().map_err(pe)
}

fn chart_builder<'a, 'b, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
) -> ChartBuilder<'a, 'b, DB> {
    let mut b = ChartBuilder::on(area);
    b.margin(16)
        .margin_right(8)
        .x_label_area_size(64)
        .y_label_area_size(76);
    b
}

fn draw_curves<DB: DrawingBackend>(r: &RunResults, root: &DrawingArea<DB, Shift>) -> Draw {
    let curves: Vec<_> = r.curves.iter().filter(|c| !c.points.is_empty()).collect();
    let entries: Vec<(String, usize)> = curves
        .iter()
        .map(|c| (c.paradigm.clone(), style_index(r, &c.paradigm)))
        .collect();
    let title = format!("Accuracy per round — {}", r.task);
    let area = layout(root, &title, &entries, Swatch::Line)?;
    let rounds = || curves.iter().flat_map(|c| c.points.iter().map(|p| p.round));
    let (first, last) = (rounds().min().unwrap_or(0), rounds().max().unwrap_or(1));
    let step = ((last - first) / 12 + 1) as usize;
    let ticks: Vec<f64> = (first..=last).step_by(step).map(f64::from).collect();
    let x = Ticks::new(f64::from(first) - 0.5..f64::from(last) + 0.5, ticks);
    // With several seeds: mean ± sd, the band drawn under the line.
    let sd_of = |c: &Curve, i: usize| c.sd.get(i).copied().unwrap_or(0.0);
    let y = pct_range(
        curves.iter().flat_map(|c| {
            c.points.iter().enumerate().flat_map(move |(i, p)| {
                let s = sd_of(c, i);
                [p.accuracy - s, p.accuracy + s]
            })
        }),
        false,
    );
    let mut chart = chart_builder(&area).build_cartesian_2d(x, y).map_err(pe)?;
    mesh(&mut chart, "Round / epoch", &|v| format!("{v:.0}"), true)?;
    for (c, (_, idx)) in curves.iter().zip(&entries) {
        let pts: Vec<(f64, f64)> = c
            .points
            .iter()
            .map(|p| (f64::from(p.round), p.accuracy * 100.0))
            .collect();
        if !c.sd.is_empty() {
            let upper = c
                .points
                .iter()
                .enumerate()
                .map(|(i, p)| (f64::from(p.round), (p.accuracy + sd_of(c, i)) * 100.0));
            let lower = c
                .points
                .iter()
                .enumerate()
                .rev()
                .map(|(i, p)| (f64::from(p.round), (p.accuracy - sd_of(c, i)) * 100.0));
            let band: Vec<(f64, f64)> = upper.chain(lower).collect();
            chart
                .draw_series(std::iter::once(Polygon::new(
                    band,
                    colour(*idx).mix(0.18).filled(),
                )))
                .map_err(pe)?;
        }
        chart
            .draw_series(LineSeries::new(pts.clone(), colour(*idx).stroke_width(3)))
            .map_err(pe)?;
        draw_markers(&mut chart, &pts, *idx)?;
    }
    Ok(())
}

fn draw_bars<DB: DrawingBackend>(r: &RunResults, root: &DrawingArea<DB, Shift>) -> Draw {
    let rows: Vec<_> = r
        .rows
        .iter()
        .filter(|row| !row.per_language.is_empty())
        .collect();
    let entries: Vec<(String, usize)> = rows
        .iter()
        .map(|row| (row.paradigm.clone(), style_index(r, &row.paradigm)))
        .collect();
    let title = format!("Accuracy per language — {}", r.task);
    let area = layout(root, &title, &entries, Swatch::Bar)?;
    let mut groups: Vec<String> = r.languages.clone();
    groups.push("Avg".into());
    let n = groups.len();
    let y = pct_range(
        rows.iter().flat_map(|row| {
            row.per_language.iter().map(|(l, m)| {
                m.accuracy
                    + row
                        .spread
                        .as_ref()
                        .and_then(|s| s.per_language_sd.get(l))
                        .copied()
                        .unwrap_or(0.0)
            })
        }),
        true,
    );
    let x = Ticks::new(0.0..n as f64, (0..n).map(|i| i as f64 + 0.5).collect());
    let mut chart = chart_builder(&area).build_cartesian_2d(x, y).map_err(pe)?;
    let label = |v: &f64| {
        groups
            .get(v.floor().max(0.0) as usize)
            .cloned()
            .unwrap_or_default()
    };
    mesh(&mut chart, "Language", &label, false)?;
    let width = 0.8 / rows.len() as f64;
    for (j, (row, (_, idx))) in rows.iter().zip(&entries).enumerate() {
        let values = r
            .languages
            .iter()
            .map(|l| row.per_language.get(l).map(|m| m.accuracy))
            .chain(std::iter::once(Some(row.average)));
        let bars = values.enumerate().filter_map(|(i, v)| {
            let x0 = i as f64 + 0.1 + j as f64 * width;
            v.map(|a| {
                Rectangle::new(
                    [(x0, 0.0), (x0 + width * 0.92, a * 100.0)],
                    colour(*idx).filled(),
                )
            })
        });
        chart.draw_series(bars).map_err(pe)?;
        // Error bars: ± one standard deviation over seeds.
        if let Some(spread) = &row.spread {
            let sds = r
                .languages
                .iter()
                .map(|l| {
                    row.per_language.get(l).map(|m| {
                        (
                            m.accuracy,
                            spread.per_language_sd.get(l).copied().unwrap_or(0.0),
                        )
                    })
                })
                .chain(std::iter::once(Some((row.average, spread.average_sd))));
            let whiskers = sds.enumerate().filter_map(|(i, v)| {
                let xc = i as f64 + 0.1 + j as f64 * width + width * 0.46;
                v.map(|(a, s)| {
                    PathElement::new(
                        vec![(xc, ((a - s) * 100.0).max(0.0)), (xc, (a + s) * 100.0)],
                        BLACK.stroke_width(2),
                    )
                })
            });
            chart.draw_series(whiskers).map_err(pe)?;
        }
    }
    Ok(())
}

fn draw_data_eff<DB: DrawingBackend>(r: &RunResults, root: &DrawingArea<DB, Shift>) -> Draw {
    let mut names: Vec<&str> = Vec::new();
    for d in &r.data_efficiency {
        if !names.contains(&d.paradigm.as_str()) {
            names.push(&d.paradigm);
        }
    }
    let entries: Vec<(String, usize)> = names
        .iter()
        .map(|p| (p.to_string(), style_index(r, p)))
        .collect();
    let title = format!("Accuracy against training-set size — {}", r.task);
    let area = layout(root, &title, &entries, Swatch::Line)?;
    let mut sizes: Vec<usize> = r.data_efficiency.iter().map(|d| d.train_size).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let (lo, hi) = (sizes[0] as f64, sizes[sizes.len() - 1] as f64);
    let x = Ticks::new(
        (lo / 1.5..hi * 1.5).log_scale(),
        sizes.iter().map(|&s| s as f64).collect(),
    );
    let y = pct_range(
        r.data_efficiency.iter().flat_map(|d| {
            [
                d.accuracy - d.sd.unwrap_or(0.0),
                d.accuracy + d.sd.unwrap_or(0.0),
            ]
        }),
        false,
    );
    let mut chart = chart_builder(&area).build_cartesian_2d(x, y).map_err(pe)?;
    mesh(
        &mut chart,
        "Training examples per language (log scale)",
        &|v| group_thousands(v.round() as u64),
        true,
    )?;
    for (name, (_, idx)) in names.iter().zip(&entries) {
        let mut pts: Vec<(f64, f64)> = r
            .data_efficiency
            .iter()
            .filter(|d| d.paradigm == *name)
            .map(|d| (d.train_size as f64, d.accuracy * 100.0))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let whiskers = r
            .data_efficiency
            .iter()
            .filter(|d| d.paradigm == *name)
            .filter_map(|d| d.sd.map(|s| (d.train_size as f64, d.accuracy, s)))
            .map(|(x, a, s)| {
                PathElement::new(
                    vec![(x, (a - s) * 100.0), (x, (a + s) * 100.0)],
                    colour(*idx).stroke_width(2),
                )
            });
        chart.draw_series(whiskers).map_err(pe)?;
        chart
            .draw_series(LineSeries::new(pts.clone(), colour(*idx).stroke_width(3)))
            .map_err(pe)?;
        draw_markers(&mut chart, &pts, *idx)?;
    }
    Ok(())
}

/// One paradigm's points for the distance plot: (language, φ, accuracy), sorted by φ.
type DistanceSeries = (String, Vec<(String, f64, f64)>);

/// Distance series per paradigm row; rows without any point are left out.
fn distance_series(r: &RunResults) -> Vec<DistanceSeries> {
    let Some(dist) = &r.distances else {
        return Vec::new();
    };
    r.rows
        .iter()
        .filter_map(|row| {
            let mut pts: Vec<(String, f64, f64)> = row
                .per_language
                .iter()
                .filter_map(|(l, m)| dist.get(l).map(|&phi| (l.clone(), phi, m.accuracy)))
                .collect();
            pts.sort_by(|a, b| a.1.total_cmp(&b.1));
            (!pts.is_empty()).then(|| (row.paradigm.clone(), pts))
        })
        .collect()
}

fn draw_distance<DB: DrawingBackend>(r: &RunResults, root: &DrawingArea<DB, Shift>) -> Draw {
    let series = distance_series(r);
    let entries: Vec<(String, usize)> = series
        .iter()
        .map(|(p, _)| (p.clone(), style_index(r, p)))
        .collect();
    let title = format!("Accuracy against language distance — {}", r.task);
    let area = layout(root, &title, &entries, Swatch::Line)?;
    let all = || series.iter().flat_map(|(_, pts)| pts.iter());
    let x = padded(all().map(|p| p.1), 0.08);
    let y = pct_range(all().map(|p| p.2), false);
    // Headroom for the language codes along the top.
    let y = y.start..(y.end + 6.0).min(105.0);
    let mut chart = chart_builder(&area).build_cartesian_2d(x, y).map_err(pe)?;
    mesh(
        &mut chart,
        "Language distance φ to the pre-training language",
        &|v| format!("{v:.2}"),
        true,
    )?;
    // Each language gets a faint vertical guide with its code at the top (staggered when close);
    // with four series or fewer every point is labelled too.
    let mut langs: Vec<(String, f64)> = all().map(|p| (p.0.clone(), p.1)).collect();
    langs.sort_by(|a, b| a.1.total_cmp(&b.1));
    langs.dedup_by(|a, b| a.0 == b.0);
    let (y_lo, y_hi) = (chart.y_range().start, chart.y_range().end);
    let guide = RGBColor(150, 150, 150).mix(0.6).stroke_width(1);
    chart
        .draw_series(
            langs
                .iter()
                .map(|(_, phi)| PathElement::new(vec![(*phi, y_lo), (*phi, y_hi)], guide)),
        )
        .map_err(pe)?;
    let code_font = TextStyle::from((FONT, 17).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
    let mut last_px: Option<i32> = None;
    let mut row = 0;
    for (code, phi) in &langs {
        let px = chart.backend_coord(&(*phi, y_hi)).0;
        row = match last_px {
            Some(last) if px - last < 36 => (row + 1) % 3,
            _ => 0,
        };
        last_px = Some(px);
        chart
            .draw_series(std::iter::once(
                EmptyElement::at((*phi, y_hi))
                    + Text::new(code.clone(), (0, 4 + 20 * row), code_font.clone()),
            ))
            .map_err(pe)?;
    }
    let label_points = series.len() <= 4;
    let label_font = (FONT, 15).into_font();
    for ((_, pts), (_, idx)) in series.iter().zip(&entries) {
        let xy: Vec<(f64, f64)> = pts.iter().map(|p| (p.1, p.2 * 100.0)).collect();
        chart
            .draw_series(LineSeries::new(
                xy.clone(),
                colour(*idx).mix(0.5).stroke_width(2),
            ))
            .map_err(pe)?;
        draw_markers(&mut chart, &xy, *idx)?;
        if label_points {
            chart
                .draw_series(pts.iter().zip(&xy).map(|(p, at)| {
                    EmptyElement::at(*at)
                        + Text::new(
                            p.0.clone(),
                            (8, -6),
                            label_font
                                .clone()
                                .color(&colour(*idx))
                                .pos(Pos::new(HPos::Left, VPos::Bottom)),
                        )
                }))
                .map_err(pe)?;
        }
    }
    Ok(())
}
