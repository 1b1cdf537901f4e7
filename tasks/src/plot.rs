//! Line charts as SVG files (plotters' SVG backend: pure Rust, no font or image libraries).

use crate::{Error, Result};
use plotters::prelude::*;
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
}
