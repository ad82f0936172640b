//! Learning-curve plots of training runs (plotters, SVG backend: no fonts or system
//! libraries needed).

use std::path::Path;

use anyhow::{Result, anyhow};
use decomp_model::train::EpochMetrics;
use plotters::prelude::*;

/// Two panels side by side: loss (train, validation) and accuracy in % (train, validation)
/// against the epoch. Drawn in memory and written atomically (`crate::files`).
pub fn learning_curves(path: &Path, title: &str, epochs: &[EpochMetrics]) -> Result<()> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 380)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let root = root
            .titled(title, ("sans-serif", 18))
            .map_err(|e| anyhow!("{e}"))?;
        let (left, right) = root.split_horizontally(480);
        let x_max = epochs.len().max(1) as f64 + 0.5;
        let series = |f: &dyn Fn(&EpochMetrics) -> Option<f64>| -> Vec<(f64, f64)> {
            epochs
                .iter()
                .filter_map(|m| f(m).map(|v| (m.epoch as f64, v)))
                .collect()
        };
        type Panel<'a, 'b> = (
            &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
            &'static str,
            Vec<(f64, f64)>,
            Vec<(f64, f64)>,
        );
        let panels: [Panel; 2] = [
            (
                &left,
                "loss",
                series(&|m| Some(m.train_loss)),
                series(&|m| m.val_loss),
            ),
            (
                &right,
                "top-1 %",
                series(&|m| Some(100.0 * m.train_acc)),
                series(&|m| m.val_acc.map(|v| 100.0 * v)),
            ),
        ];
        for (area, label, train, val) in panels {
            let ys = train
                .iter()
                .chain(&val)
                .map(|p| p.1)
                .filter(|v| v.is_finite());
            let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                (a.min(v), b.max(v))
            });
            let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
            let pad = ((hi - lo) * 0.08).max(1e-3);
            let mut chart = ChartBuilder::on(area)
                .margin(10)
                .x_label_area_size(36)
                .y_label_area_size(52)
                .build_cartesian_2d(0.5f64..x_max, (lo - pad)..(hi + pad))
                .map_err(|e| anyhow!("{e}"))?;
            chart
                .configure_mesh()
                .x_desc("epoch")
                .y_desc(label)
                .draw()
                .map_err(|e| anyhow!("{e}"))?;
            for (name, points, color) in [("train", train, BLUE), ("validation", val, RED)] {
                if points.is_empty() {
                    continue;
                }
                chart
                    .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                    .map_err(|e| anyhow!("{e}"))?
                    .label(name)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                    });
                chart
                    .draw_series(
                        points
                            .into_iter()
                            .map(|p| Circle::new(p, 3, color.filled())),
                    )
                    .map_err(|e| anyhow!("{e}"))?;
            }
            chart
                .configure_series_labels()
                .border_style(BLACK)
                .background_style(WHITE.mix(0.8))
                .draw()
                .map_err(|e| anyhow!("{e}"))?;
        }
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    crate::files::write_atomic(path, svg.as_bytes())
}
