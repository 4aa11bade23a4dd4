//! PNG line plots for BENCHMARKS.md: plotters draws SVG, resvg rasterizes it with the
//! system's fonts (DejaVu, installed by `cargo xtask setup`).

use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;
use resvg::{tiny_skia, usvg};

const SIZE: (u32, u32) = (800, 480);

/// One line per series over a logarithmic x axis (streams: 1 to 1,000), y from zero.
pub(crate) fn log_x(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(&str, Vec<(f64, f64)>)],
    limit: Option<(&str, f64)>,
) -> anyhow::Result<()> {
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let x_max = points.clone().map(|p| p.0).fold(1.0, f64::max) * 1.5;
    let y_max = points
        .map(|p| p.1)
        .chain(limit.map(|l| l.1))
        .fold(0.0, f64::max)
        * 1.15;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d((0.8f64..x_max).log_scale(), 0f64..y_max.max(1e-9))?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .label_style(("sans-serif", 15))
            .draw()?;
        for (i, (name, p)) in series.iter().enumerate() {
            let color = [BLUE, GREEN, MAGENTA, CYAN][i % 4].to_rgba();
            chart
                .draw_series(LineSeries::new(p.iter().copied(), color.stroke_width(2)))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
            chart.draw_series(p.iter().map(|&xy| Circle::new(xy, 4, color.filled())))?;
        }
        if let Some((name, y)) = limit {
            chart
                .draw_series(LineSeries::new([(0.8, y), (x_max, y)], RED.stroke_width(1)))?
                .label(name)
                .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .draw()?;
        root.present()?;
    }
    rasterize(&svg, path)
}

fn rasterize(svg: &str, path: &Path) -> anyhow::Result<()> {
    let mut opt = usvg::Options::default();
    let fonts = opt.fontdb_mut();
    fonts.load_system_fonts();
    fonts.set_sans_serif_family("DejaVu Sans");
    let tree = usvg::Tree::from_str(svg, &opt).context("parsing the plot's SVG")?;
    let mut pixmap =
        tiny_skia::Pixmap::new(SIZE.0, SIZE.1).context("allocating the plot's pixels")?;
    resvg::render(&tree, tiny_skia::Transform::default(), &mut pixmap.as_mut());
    pixmap
        .save_png(path)
        .with_context(|| format!("writing {}", path.display()))
}
