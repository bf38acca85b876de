//! `dispatch-bench chart`: draws the peer benchmark's figures as one PNG,
//! one panel per workload, one horizontal bar per peer and durability level
//! (the median, with a whisker from the fastest to the slowest run).
//!
//! The input is the `chart` object of a peer benchmark result file
//! (`bench/peers/results/*.json`, written by `bench/peers/driver.py`):
//!
//! ```json
//! {"title": "...", "panels": [{"title": "W1 drain", "unit": "tasks/s",
//!   "log": true, "bars": [{"label": "dispatch durable", "value": 61000,
//!   "min": 58000, "max": 63000, "dispatch": true}]}]}
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use plotters::prelude::*;
use plotters::style::FontStyle;
use serde_json::Value;

#[derive(Args, Debug)]
pub(crate) struct ChartArgs {
    /// A peer benchmark result file (JSON with a `chart` object).
    #[arg(long)]
    results: PathBuf,
    /// The PNG to write.
    #[arg(long)]
    out: PathBuf,
    /// A TrueType font for the labels.
    #[arg(
        long,
        default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    )]
    font: PathBuf,
}

/// One bar: a peer at a durability level.
struct Bar {
    label: String,
    value: f64,
    min: f64,
    max: f64,
    dispatch: bool,
}

/// One workload's panel.
struct Panel {
    title: String,
    unit: String,
    log: bool,
    bars: Vec<Bar>,
}

const PANEL_WIDTH: u32 = 900;
const BAR_HEIGHT: u32 = 26;
const PANEL_CHROME: u32 = 110;

/// Reads the result file and writes the PNG.
pub(crate) fn run(args: &ChartArgs) -> Result<()> {
    let font = std::fs::read(&args.font)
        .with_context(|| format!("cannot read the font {}", args.font.display()))?;
    // plotters keeps registered fonts for the life of the process.
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow!("{} is not a usable TrueType font", args.font.display()))?;
    let text = std::fs::read_to_string(&args.results)
        .with_context(|| format!("cannot read {}", args.results.display()))?;
    let doc: Value = serde_json::from_str(&text).context("the result file is not JSON")?;
    let chart = doc
        .get("chart")
        .ok_or_else(|| anyhow!("the result file has no `chart` object"))?;
    let title = chart["title"]
        .as_str()
        .unwrap_or("Peer benchmark")
        .to_owned();
    let panels = parse_panels(chart)?;
    draw(&args.out, &title, &panels)
}

fn parse_panels(chart: &Value) -> Result<Vec<Panel>> {
    let panels = chart["panels"]
        .as_array()
        .ok_or_else(|| anyhow!("`chart.panels` is not a list"))?;
    let mut out = Vec::new();
    for p in panels {
        let mut bars = Vec::new();
        for b in p["bars"].as_array().into_iter().flatten() {
            let value = b["value"].as_f64().unwrap_or(0.0);
            bars.push(Bar {
                label: b["label"].as_str().unwrap_or("?").to_owned(),
                value,
                min: b["min"].as_f64().unwrap_or(value),
                max: b["max"].as_f64().unwrap_or(value),
                dispatch: b["dispatch"].as_bool().unwrap_or(false),
            });
        }
        out.push(Panel {
            title: p["title"].as_str().unwrap_or("?").to_owned(),
            unit: p["unit"].as_str().unwrap_or("").to_owned(),
            log: p["log"].as_bool().unwrap_or(false),
            bars,
        });
    }
    if out.is_empty() {
        bail!("the chart has no panels");
    }
    Ok(out)
}

fn panel_height(p: &Panel) -> u32 {
    PANEL_CHROME + BAR_HEIGHT * p.bars.len().max(1) as u32
}

fn draw(out: &Path, title: &str, panels: &[Panel]) -> Result<()> {
    let height = 50 + panels.iter().map(panel_height).sum::<u32>();
    let root = BitMapBackend::new(out, (PANEL_WIDTH, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (head, mut rest) = root.split_vertically(50);
    head.titled(title, ("sans-serif", 22))?;
    for p in panels {
        let (area, below) = rest.split_vertically(panel_height(p));
        rest = below;
        draw_panel(&area, p)?;
    }
    root.present()
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(())
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    p: &Panel,
) -> Result<()> {
    let n = p.bars.len();
    let top = p
        .bars
        .iter()
        .map(|b| b.max.max(b.value))
        .fold(0.0_f64, f64::max)
        .max(1e-3)
        * 1.15;
    let labels: Vec<String> = p.bars.iter().map(|b| b.label.clone()).collect();
    let caption = format!("{} ({})", p.title, p.unit);
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(caption, ("sans-serif", 18))
        .margin(8)
        .x_label_area_size(30)
        .y_label_area_size(230);
    let y_fmt = move |y: &f64| -> String {
        let i = y.round();
        if (y - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < labels.len() {
            labels[i as usize].clone()
        } else {
            String::new()
        }
    };
    let y_range = -0.6..(n as f64 - 0.4);
    if p.log {
        let bottom = p
            .bars
            .iter()
            .map(|b| b.min.min(b.value))
            .filter(|v| *v > 0.0)
            .fold(f64::INFINITY, f64::min);
        let bottom = if bottom.is_finite() {
            bottom / 2.0
        } else {
            1.0
        };
        let mut chart = builder.build_cartesian_2d((bottom..top).log_scale(), y_range)?;
        chart
            .configure_mesh()
            .y_labels(n.max(1) * 2 + 1)
            .y_label_formatter(&y_fmt)
            .y_label_style(("sans-serif", 15))
            .x_label_style(("sans-serif", 13))
            .x_label_formatter(&|x| short(*x))
            .disable_y_mesh()
            .draw()?;
        bars(&mut chart, p, bottom)?;
    } else {
        let mut chart = builder.build_cartesian_2d(0.0..top, y_range)?;
        chart
            .configure_mesh()
            .y_labels(n.max(1) * 2 + 1)
            .y_label_formatter(&y_fmt)
            .y_label_style(("sans-serif", 15))
            .x_label_style(("sans-serif", 13))
            .x_label_formatter(&|x| short(*x))
            .disable_y_mesh()
            .draw()?;
        bars(&mut chart, p, 0.0)?;
    }
    Ok(())
}

/// Draws each bar from `base` to its median, its min-max whisker and its
/// value.
fn bars<X>(
    chart: &mut ChartContext<
        '_,
        BitMapBackend<'_>,
        Cartesian2d<X, plotters::coord::types::RangedCoordf64>,
    >,
    p: &Panel,
    base: f64,
) -> Result<()>
where
    X: Ranged<ValueType = f64>,
{
    for (i, b) in p.bars.iter().enumerate() {
        let y = i as f64;
        let colour = if b.dispatch {
            RGBColor(214, 96, 39)
        } else {
            RGBColor(70, 110, 170)
        };
        chart.draw_series(std::iter::once(Rectangle::new(
            [(base, y - 0.35), (b.value.max(base), y + 0.35)],
            colour.filled(),
        )))?;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(b.min.max(base), y), (b.max.max(base), y)],
            BLACK.stroke_width(2),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            short(b.value),
            (b.max.max(b.value).max(base), y - 0.25),
            ("sans-serif", 14),
        )))?;
    }
    Ok(())
}

/// A compact number: 61.2k, 3.4, 0.52.
fn short(v: f64) -> String {
    if v >= 1_000_000.0 {
        format!("{:.1}M", v / 1_000_000.0)
    } else if v >= 1_000.0 {
        format!("{:.1}k", v / 1_000.0)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_short() {
        assert_eq!(short(61_234.0), "61.2k");
        assert_eq!(short(2_500_000.0), "2.5M");
        assert_eq!(short(42.4), "42");
        assert_eq!(short(3.44), "3.4");
        assert_eq!(short(0.523), "0.52");
    }

    #[test]
    fn panels_parse_with_defaults() {
        let v = serde_json::json!({"panels": [{"title": "W1", "unit": "tasks/s", "log": true,
            "bars": [{"label": "a", "value": 10.0}, {"label": "b", "value": 5.0, "min": 4.0, "max": 6.0, "dispatch": true}]}]});
        let p = parse_panels(&v).expect("parses");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].bars.len(), 2);
        assert_eq!(p[0].bars[0].min, 10.0);
        assert!(p[0].bars[1].dispatch);
        assert!(parse_panels(&serde_json::json!({"panels": []})).is_err());
    }
}
