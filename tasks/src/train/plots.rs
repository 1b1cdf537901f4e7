//! The standard plots of every run, drawn from its `metrics.jsonl`.

use super::METRICS_FILE;
use crate::metrics::read_records;
use crate::plot::{line_chart, Series};
use crate::Result;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

/// `(step, value)` of every record where `value(record)` is a number.
fn points(recs: &[Value], value: impl Fn(&Value) -> &Value) -> Vec<(f64, f64)> {
    recs.iter()
        .filter_map(|r| Some((r["step"].as_f64()?, value(r).as_f64()?)))
        .collect()
}

/// The keys of the objects `field(record)` across all records, sorted.
fn keys_of(recs: &[Value], field: impl Fn(&Value) -> &Value) -> BTreeSet<String> {
    recs.iter()
        .filter_map(|r| field(r).as_object())
        .flat_map(|m| m.keys().cloned())
        .collect()
}

fn series(name: String, points: Vec<(f64, f64)>, color: usize, dashed: bool) -> Series {
    Series {
        name,
        points,
        color,
        dashed,
    }
}

/// From the metrics of the run in `out`: `loss.svg` (training loss and every `val_…` metric
/// whose name ends in `loss`, in `loss_unit`), when the task reports any, `accuracy.svg`
/// (every metric whose name ends in `accuracy`), `entropy.svg` (mean attention entropy per
/// layer, solid, with its Theorem 3.1 lower bound, dashed) and, when the model has σReparam
/// layers, `sigma_gamma.svg` (σ(W) solid and γ dashed of the layers `plots_sigma_of`
/// selects).
pub fn write_plots(out: &Path, loss_unit: &str, plots_sigma_of: fn(&str) -> bool) -> Result<()> {
    let recs = read_records(&out.join(METRICS_FILE))?;
    let mut losses = vec![series(
        "train".into(),
        points(&recs, |r| &r["loss"]),
        0,
        false,
    )];
    let val_keys = keys_of(&recs, |r| r).into_iter();
    let val_keys = val_keys.filter(|k| k.starts_with("val_") && k.ends_with("loss"));
    for (i, key) in val_keys.enumerate() {
        let name = if key == "val_loss" {
            "validation".to_string()
        } else {
            key.clone()
        };
        losses.push(series(
            name,
            points(&recs, |r| &r[key.as_str()]),
            i + 1,
            false,
        ));
    }
    line_chart(
        &out.join("loss.svg"),
        &format!("Loss ({loss_unit})"),
        "step",
        "loss",
        &losses,
    )?;
    let accuracies: Vec<Series> = keys_of(&recs, |r| r)
        .into_iter()
        .filter(|k| k.ends_with("accuracy"))
        .enumerate()
        .map(|(i, key)| {
            let p = points(&recs, |r| &r[key.as_str()]);
            series(key.replace('_', " "), p, i, false)
        })
        .collect();
    if !accuracies.is_empty() {
        line_chart(
            &out.join("accuracy.svg"),
            "Accuracy (fraction correct)",
            "step",
            "accuracy",
            &accuracies,
        )?;
    }
    let n_layers = recs
        .iter()
        .filter_map(|r| r["entropy_layer"].as_array().map(Vec::len))
        .max()
        .unwrap_or(0);
    let mut ent = Vec::new();
    for l in 0..n_layers {
        ent.push(series(
            format!("layer {l}"),
            points(&recs, |r| &r["entropy_layer"][l]),
            l,
            false,
        ));
        ent.push(series(
            format!("layer {l} bound"),
            points(&recs, |r| &r["entropy_bound_layer"][l]),
            l,
            true,
        ));
    }
    line_chart(
        &out.join("entropy.svg"),
        "Attention entropy per layer (solid) and Theorem 3.1 lower bound (dashed)",
        "step",
        "nats",
        &ent,
    )?;
    let names: Vec<String> = keys_of(&recs, |r| &r["sigma"])
        .into_iter()
        .filter(|n| plots_sigma_of(n))
        .collect();
    if names.is_empty() {
        // No σReparam layer: there is no σ or γ to draw.
        return Ok(());
    }
    let mut sg = Vec::new();
    for (i, name) in names.iter().enumerate() {
        for (key, dashed) in [("sigma", false), ("gamma", true)] {
            let p = points(&recs, |r| &r[key][name.as_str()]);
            sg.push(series(format!("{key} {name}"), p, i, dashed));
        }
    }
    line_chart(
        &out.join("sigma_gamma.svg"),
        "σReparam: σ(W) (solid) and γ (dashed) of the layers that set the attention logits",
        "step",
        "value",
        &sg,
    )
}

/// Side-by-side charts of several runs, each given as `(name, run directory)`, into `out`:
/// `compare_loss.svg` (each run's training loss, solid, and validation loss, dashed, in
/// `loss_unit`) and `compare_entropy.svg` (each run's attention entropy averaged over its
/// layers, solid, and that of its lowest layer at each record, dashed).
pub fn write_comparison(out: &Path, runs: &[(String, &Path)], loss_unit: &str) -> Result<()> {
    let (mut losses, mut ent) = (Vec::new(), Vec::new());
    for (i, (name, dir)) in runs.iter().enumerate() {
        let recs = read_records(&dir.join(METRICS_FILE))?;
        losses.push(series(
            format!("{name} train"),
            points(&recs, |r| &r["loss"]),
            i,
            false,
        ));
        let val = points(&recs, |r| &r["val_loss"]);
        losses.push(series(format!("{name} validation"), val, i, true));
        let layers = |r: &Value| -> Vec<f64> {
            r["entropy_layer"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default()
        };
        let (mut mean, mut min) = (Vec::new(), Vec::new());
        for r in &recs {
            let (Some(step), e) = (r["step"].as_f64(), layers(r)) else {
                continue;
            };
            if !e.is_empty() {
                mean.push((step, e.iter().sum::<f64>() / e.len() as f64));
                min.push((step, e.iter().copied().fold(f64::INFINITY, f64::min)));
            }
        }
        ent.push(series(format!("{name} mean over layers"), mean, i, false));
        ent.push(series(format!("{name} lowest layer"), min, i, true));
    }
    line_chart(
        &out.join("compare_loss.svg"),
        &format!("Loss ({loss_unit}): training (solid) and validation (dashed)"),
        "step",
        "loss",
        &losses,
    )?;
    line_chart(
        &out.join("compare_entropy.svg"),
        "Attention entropy: mean over layers (solid) and lowest layer (dashed)",
        "step",
        "nats",
        &ent,
    )
}
