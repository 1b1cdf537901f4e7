//! Line charts and heat maps as SVG files (plotters' SVG backend: pure Rust, no font or image libraries).

use crate::{Error, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

/// One named curve of `(x, y)` points; `dashed` draws it as a dashed line (bounds, guides).
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label.
    pub name: String,
    /// Points in drawing order.
    pub points: Vec<(f64, f64)>,
    /// Colour index into a fixed palette; series sharing an index share a colour.
    pub color: usize,
    /// Draw dashed instead of solid.
    pub dashed: bool,
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Draw `series` into an 800×500 SVG at `path` with a title and axis labels. Non-finite
/// points are skipped; with no finite point the chart is drawn empty on [0, 1]².
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<()> {
    let finite = || {
        series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
    };
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in finite() {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    let (y0, y1) = (y0 - pad, y1 + pad);
    let x1 = if x1 > x0 { x1 } else { x0 + 1.0 };
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .draw()?;
        for s in series {
            let color = PALETTE[s.color % PALETTE.len()];
            let pts = s
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite());
            let style = ShapeStyle::from(&color).stroke_width(2);
            let anno = if s.dashed {
                chart.draw_series(DashedLineSeries::new(pts, 6, 4, style))?
            } else {
                chart.draw_series(LineSeries::new(pts, style))?
            };
            anno.label(s.name.clone()).legend(move |(x, y)| {
                PathElement::new(
                    vec![(x, y), (x + 20, y)],
                    ShapeStyle::from(&color).stroke_width(2),
                )
            });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| Error::Plot {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

/// Sequential colour scale of [`heat_map`], low to high: ColorBrewer's "Blues" (as in
/// matplotlib), white to dark blue.
const BLUES: [(u8, u8, u8); 9] = [
    (247, 251, 255),
    (222, 235, 247),
    (198, 219, 239),
    (158, 202, 225),
    (107, 174, 214),
    (66, 146, 198),
    (33, 113, 181),
    (8, 81, 156),
    (8, 48, 107),
];

/// Fill of a NaN cell of [`heat_map`].
const NAN_GREY: RGBColor = RGBColor(190, 190, 190);

/// The colour of `t` ∈ [0, 1] on [`BLUES`] (piecewise linear; `t` is clamped).
fn blues(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0) * (BLUES.len() - 1) as f64;
    let i = (t.floor() as usize).min(BLUES.len() - 2);
    let f = t - i as f64;
    let (a, b) = (BLUES[i], BLUES[i + 1]);
    let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Black or white, whichever reads better on `fill` (by its perceived luminance).
fn text_color_on(fill: RGBColor) -> RGBColor {
    let luma = 0.299 * fill.0 as f64 + 0.587 * fill.1 as f64 + 0.114 * fill.2 as f64;
    if luma < 128.0 {
        WHITE
    } else {
        BLACK
    }
}

/// A generous estimate of the width in pixels of `text` in plotters font size `size` (the SVG
/// backend writes `font-size = size / 1.24`; sans-serif glyphs average under 0.6 em).
fn text_width(size: f64, text: &str) -> i32 {
    (size / 1.24 * 0.6 * text.chars().count() as f64).ceil() as i32
}

/// A colour-bar tick: up to 3 significant decimals, trailing zeros dropped.
fn scale_tick(v: f64) -> String {
    if v != 0.0 && (v.abs() >= 1e5 || v.abs() < 1e-3) {
        return format!("{v:.2e}");
    }
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

/// Draw a heat map of `values` into an SVG at `path`: `values[r][c]` is the cell in row `r`
/// (rows top to bottom, labelled `row_labels[r]` on the left, `y_label` along them) and
/// column `c` (labelled `col_labels[c]` below the grid, turned upright when too long for a
/// cell; `x_label` under them), annotated with `annotate(values[r][c])` in black or white,
/// whichever reads better on the cell.
///
/// Colours run white → dark blue over the finite values' min..max, drawn as a colour bar
/// on the right; `+∞` and `-∞` cells take the darkest and lightest colour, NaN cells are
/// grey, and when all finite values are equal every finite cell takes the middle colour.
/// The image grows with the matrix and its labels.
///
/// Errors with [`Error::Plot`] naming `path` when the matrix is empty, when a row's length
/// differs from `col_labels.len()` (ragged rows), when `row_labels.len()` differs from the
/// number of rows, or when the file cannot be written.
#[allow(clippy::too_many_arguments)]
pub fn heat_map(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    row_labels: &[String],
    col_labels: &[String],
    values: &[Vec<f64>],
    annotate: &dyn Fn(f64) -> String,
) -> Result<()> {
    heat_map_cells(
        path,
        title,
        x_label,
        y_label,
        row_labels,
        col_labels,
        values,
        &|_, _, v| annotate(v),
    )
}

/// [`heat_map`] with each cell annotated by `annotate(row, column, value)`: for
/// annotations that are not a function of the value alone (a confusion matrix coloured by
/// row fractions and annotated with counts). Same layout, colours and errors.
#[allow(clippy::too_many_arguments)]
pub fn heat_map_cells(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    row_labels: &[String],
    col_labels: &[String],
    values: &[Vec<f64>],
    annotate: &dyn Fn(usize, usize, f64) -> String,
) -> Result<()> {
    let fail = |msg: String| Error::Plot {
        path: path.to_path_buf(),
        msg,
    };
    let (rows, cols) = (values.len(), col_labels.len());
    if rows == 0 || cols == 0 {
        return Err(fail(format!(
            "heat map of {rows} rows × {cols} columns has no cells to draw"
        )));
    }
    if row_labels.len() != rows {
        return Err(fail(format!(
            "{} row labels for {rows} rows of values",
            row_labels.len()
        )));
    }
    if let Some((r, row)) = values.iter().enumerate().find(|(_, row)| row.len() != cols) {
        return Err(fail(format!(
            "row {r} has {} values but there are {cols} column labels (every row needs one \
             value per column)",
            row.len()
        )));
    }

    let finite = || values.iter().flatten().copied().filter(|v| v.is_finite());
    let lo = finite().fold(f64::INFINITY, f64::min);
    let hi = finite().fold(f64::NEG_INFINITY, f64::max);
    let has_finite = lo <= hi;
    let fill_of = |v: f64| -> RGBColor {
        if v.is_nan() {
            NAN_GREY
        } else if v == f64::INFINITY {
            blues(1.0)
        } else if v == f64::NEG_INFINITY {
            blues(0.0)
        } else if hi > lo {
            blues((v - lo) / (hi - lo))
        } else {
            blues(0.5)
        }
    };
    let text: Vec<Vec<String>> = values
        .iter()
        .enumerate()
        .map(|(r, row)| {
            row.iter()
                .enumerate()
                .map(|(c, &v)| annotate(r, c, v))
                .collect()
        })
        .collect();

    // Font sizes in plotters units (the SVG font size is these / 1.24).
    let (title_size, desc_size, label_size, cell_size, tick_size) = (22.0, 17.0, 15.0, 15.0, 14.0);
    let margin = 14;
    let widest = |size: f64, texts: &mut dyn Iterator<Item = &String>| {
        texts.map(|t| text_width(size, t)).max().unwrap_or(0)
    };
    let cell_w = (widest(cell_size, &mut text.iter().flatten()) + 14).max(56);
    let cell_h = 40;
    let row_label_w = widest(label_size, &mut row_labels.iter());
    let col_label_w = widest(label_size, &mut col_labels.iter());
    // Column labels stay horizontal when widening the cells to fit them keeps the grid
    // within 960 pixels; otherwise they are turned upright.
    let cell_w = if col_label_w + 10 > cell_w && (col_label_w + 10) * cols as i32 <= 960 {
        col_label_w + 10
    } else {
        cell_w
    };
    let upright_cols = col_label_w + 6 > cell_w;
    let col_label_h = if upright_cols { col_label_w + 10 } else { 26 };
    // Colour-bar ticks as (text, fraction of the bar from the top).
    let ticks: Vec<(String, f64)> = if hi > lo {
        vec![
            (scale_tick(hi), 0.0),
            (scale_tick((lo + hi) / 2.0), 0.5),
            (scale_tick(lo), 1.0),
        ]
    } else if has_finite {
        vec![(scale_tick(lo), 0.5)]
    } else {
        Vec::new()
    };
    let tick_w = widest(tick_size, &mut ticks.iter().map(|(t, _)| t));

    let grid_x = margin + 28 + row_label_w + 10;
    let grid_y = margin + 40;
    let grid_w = cell_w * cols as i32;
    let grid_h = cell_h * rows as i32;
    let bar_x = grid_x + grid_w + 24;
    let bar_w = 18;
    let width = (bar_x + bar_w + 8 + tick_w + margin)
        .max(text_width(title_size, title) + 2 * margin)
        .max(grid_x + text_width(desc_size, x_label) + margin);
    let height = grid_y + grid_h + col_label_h + 34 + margin;
    let bar_h = grid_h.max(60);
    let height = height.max(grid_y + bar_h + margin);

    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (width as u32, height as u32)).into_drawing_area();
        root.fill(&WHITE)?;
        let center = Pos::new(HPos::Center, VPos::Center);
        let font = |size: f64| ("sans-serif", size).into_font();

        root.draw_text(
            title,
            &font(title_size).color(&BLACK).pos(center),
            (width / 2, margin + 12),
        )?;
        for (r, row) in values.iter().enumerate() {
            let y0 = grid_y + cell_h * r as i32;
            for (c, &v) in row.iter().enumerate() {
                let x0 = grid_x + cell_w * c as i32;
                let fill = fill_of(v);
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + cell_w, y0 + cell_h)],
                    fill.filled(),
                ))?;
                root.draw_text(
                    &text[r][c],
                    &font(cell_size).color(&text_color_on(fill)).pos(center),
                    (x0 + cell_w / 2, y0 + cell_h / 2),
                )?;
            }
            root.draw_text(
                &row_labels[r],
                &font(label_size)
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Right, VPos::Center)),
                (grid_x - 8, y0 + cell_h / 2),
            )?;
        }
        root.draw(&Rectangle::new(
            [(grid_x, grid_y), (grid_x + grid_w, grid_y + grid_h)],
            BLACK.stroke_width(1),
        ))?;
        let below = grid_y + grid_h + 6;
        for (c, label) in col_labels.iter().enumerate() {
            let x = grid_x + cell_w * c as i32 + cell_w / 2;
            let style = if upright_cols {
                font(label_size)
                    .color(&BLACK)
                    .transform(FontTransform::Rotate270)
                    .pos(Pos::new(HPos::Right, VPos::Center))
            } else {
                font(label_size)
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Top))
            };
            root.draw_text(label, &style, (x, below))?;
        }
        root.draw_text(
            x_label,
            &font(desc_size)
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Top)),
            (grid_x + grid_w / 2, grid_y + grid_h + col_label_h + 8),
        )?;
        root.draw_text(
            y_label,
            &font(desc_size)
                .color(&BLACK)
                .transform(FontTransform::Rotate270)
                .pos(center),
            (margin + 10, grid_y + grid_h / 2),
        )?;

        // Colour bar: high at the top, low at the bottom.
        if has_finite {
            let steps = 64;
            for i in 0..steps {
                let (a, b) = (bar_h * i / steps, bar_h * (i + 1) / steps);
                let t = 1.0 - (i as f64 + 0.5) / steps as f64;
                root.draw(&Rectangle::new(
                    [(bar_x, grid_y + a), (bar_x + bar_w, grid_y + b)],
                    blues(if hi > lo { t } else { 0.5 }).filled(),
                ))?;
            }
            let tick_style = font(tick_size)
                .color(&BLACK)
                .pos(Pos::new(HPos::Left, VPos::Center));
            for (tick, at) in &ticks {
                let y = grid_y + (bar_h as f64 * at).round() as i32;
                root.draw_text(tick, &tick_style, (bar_x + bar_w + 6, y))?;
            }
            root.draw(&Rectangle::new(
                [(bar_x, grid_y), (bar_x + bar_w, grid_y + bar_h)],
                BLACK.stroke_width(1),
            ))?;
        }
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| fail(e.to_string()))
}

/// The texts of an SVG's `<text>` elements in drawing order, unescaped of surrounding
/// whitespace (the SVG backend writes each on its own line).
#[cfg(test)]
pub(crate) fn svg_texts(svg: &str) -> Vec<String> {
    svg.split("<text ")
        .skip(1)
        .filter_map(|t| {
            let body = &t[t.find('>')? + 1..];
            Some(body[..body.find("</text>")?].trim().to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_svg() {
        let path = std::env::temp_dir().join(format!("lm-plot-test-{}.svg", std::process::id()));
        let s = vec![
            Series {
                name: "a".into(),
                points: vec![(0.0, 1.0), (1.0, 0.5), (2.0, f64::NAN)],
                color: 0,
                dashed: false,
            },
            Series {
                name: "bound".into(),
                points: vec![(0.0, 0.2), (2.0, 0.3)],
                color: 0,
                dashed: true,
            },
        ];
        line_chart(&path, "t", "step", "loss", &s).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("bound"));
        std::fs::remove_file(&path).unwrap();
    }

    fn labels(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn heat_map_writes_title_labels_and_annotations() {
        let path = std::env::temp_dir().join(format!("heat-map-test-{}.svg", std::process::id()));
        let values = vec![vec![0.25, 1.0, f64::NAN], vec![f64::INFINITY, -3.5, 0.0]];
        heat_map(
            &path,
            "final loss by lr",
            "variant label",
            "learning rate",
            &labels(&["lr 1e-3", "lr 3e-4"]),
            &labels(&["pre-ln", "sigma-reparam", "post-ln"]),
            &values,
            &|v| {
                if v.is_nan() {
                    "diverged".into()
                } else {
                    format!("v={v:.2}")
                }
            },
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(svg.starts_with("<svg"));
        let texts = svg_texts(&svg);
        for text in [
            "final loss by lr",
            "variant label",
            "learning rate",
            "lr 1e-3",
            "lr 3e-4",
            "pre-ln",
            "sigma-reparam",
            "post-ln",
            "v=0.25",
            "v=1.00",
            "diverged",
            "v=inf",
            "v=-3.50",
            "v=0.00",
        ] {
            assert!(texts.iter().any(|t| t == text), "{text} missing: {texts:?}");
        }
        // Only the y label is turned upright: the column labels fit their cells.
        assert_eq!(svg.matches("rotate(270").count(), 1);
        // Colour bar ticks, last: the finite max, midpoint and min.
        assert_eq!(texts[texts.len() - 3..], ["1", "-1.25", "-3.5"]);
        // NaN cell grey; darkest and lightest blue for the extremes (+∞ is the darkest).
        assert!(svg.contains("#BEBEBE"));
        assert!(svg.contains("#08306B") && svg.contains("#F7FBFF"));
        // A white annotation on the darkest cell, a black one on the lightest.
        assert!(svg.contains("fill=\"#FFFFFF\""));
        assert!(svg.contains("fill=\"#000000\""));
    }

    #[test]
    fn heat_map_rejects_ragged_and_mismatched_input() {
        let path = std::env::temp_dir().join(format!("heat-map-bad-{}.svg", std::process::id()));
        let (rows, cols) = (labels(&["a", "b"]), labels(&["x", "y"]));
        let id = |v: f64| format!("{v}");
        // (row labels, column labels, values, expected message)
        type Case<'a> = (&'a [String], &'a [String], Vec<Vec<f64>>, &'a str);
        let cases: [Case; 4] = [
            (
                &rows,
                &cols,
                vec![vec![1.0, 2.0], vec![3.0]],
                "row 1 has 1 values",
            ),
            (
                &rows[..1],
                &cols,
                vec![vec![1.0, 2.0], vec![3.0, 4.0]],
                "1 row labels for 2 rows",
            ),
            (
                &rows,
                &cols[..1],
                vec![vec![1.0, 2.0], vec![3.0, 4.0]],
                "row 0 has 2 values",
            ),
            (&[], &cols, vec![], "no cells"),
        ];
        for (r, c, values, msg) in cases {
            let err = heat_map(&path, "t", "x", "y", r, c, &values, &id).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, Error::Plot { .. }), "{text}");
            assert!(text.contains(&path.display().to_string()), "{text}");
            assert!(text.contains(msg), "{text}");
        }
        assert!(!path.exists());
    }

    #[test]
    fn heat_map_draws_all_nan_and_constant_matrices() {
        for (i, v) in [f64::NAN, 2.0].into_iter().enumerate() {
            let path = std::env::temp_dir().join(format!(
                "heat-map-degenerate-{}-{i}.svg",
                std::process::id()
            ));
            let values = vec![vec![v; 2]; 2];
            heat_map_cells(
                &path,
                "t",
                "x",
                "y",
                &labels(&["a", "b"]),
                &labels(&["c", "d"]),
                &values,
                &|r, c, _| format!("cell {r},{c}"),
            )
            .unwrap();
            let svg = std::fs::read_to_string(&path).unwrap();
            std::fs::remove_file(&path).unwrap();
            let texts = svg_texts(&svg);
            assert!(texts.contains(&"cell 1,0".to_string()), "{texts:?}");
            assert!(texts.contains(&"cell 0,1".to_string()), "{texts:?}");
            // All NaN: grey cells and no colour bar ticks; constant: one tick, middle blue.
            assert_eq!(svg.contains("#BEBEBE"), v.is_nan());
            assert_eq!(texts.contains(&"2".to_string()), !v.is_nan());
        }
    }

    #[test]
    fn colour_scale_ends_and_text_contrast() {
        assert_eq!(blues(0.0), RGBColor(247, 251, 255));
        assert_eq!(blues(1.0), RGBColor(8, 48, 107));
        assert_eq!(blues(7.0), blues(1.0));
        assert_eq!(text_color_on(blues(0.0)), BLACK);
        assert_eq!(text_color_on(blues(1.0)), WHITE);
        assert_eq!(text_color_on(NAN_GREY), BLACK);
        assert_eq!(scale_tick(0.5), "0.5");
        assert_eq!(scale_tick(-0.0001), "-1.00e-4");
        assert_eq!(scale_tick(12.0), "12");
    }

    #[test]
    fn heat_map_turns_long_column_labels_upright() {
        let path =
            std::env::temp_dir().join(format!("heat-map-upright-{}.svg", std::process::id()));
        let cols: Vec<String> = (0..12)
            .map(|c| format!("a long column label {c}"))
            .collect();
        heat_map(
            &path,
            "t",
            "x",
            "y",
            &labels(&["r"]),
            &cols,
            &[vec![1.0; 12]],
            &|v| format!("{v}"),
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(svg.matches("rotate(270").count(), 1 + 12);
        assert!(svg_texts(&svg).contains(&"a long column label 11".to_string()));
    }
}
