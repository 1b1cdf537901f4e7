//! [`Inspect`] for the models of `nn` that the task programs train.

use super::Inspect;
use crate::Result;
use nn::{AsrTransformer, Block, Gpt, LinearLayer, SimClr, Vit};

/// Per block: the mean attention entropy per head of the last recorded forward and its
/// Theorem 3.1 bound per head.
fn attention_stats(blocks: &[Block]) -> Result<Vec<(Vec<f64>, Vec<f64>)>> {
    blocks
        .iter()
        .map(|b| {
            let a = b.attention();
            Ok((a.entropy(), a.entropy_bound()?.unwrap_or_default()))
        })
        .collect()
}

impl Inspect for Gpt {
    fn set_record_entropy(&self, on: bool) {
        Gpt::set_record_entropy(self, on)
    }

    fn attention_stats(&self) -> Result<Vec<(Vec<f64>, Vec<f64>)>> {
        attention_stats(self.blocks())
    }

    fn linears(&self) -> Vec<(String, &LinearLayer)> {
        Gpt::linears(self)
    }
}

impl Inspect for Vit {
    fn set_record_entropy(&self, on: bool) {
        Vit::set_record_entropy(self, on)
    }

    fn attention_stats(&self) -> Result<Vec<(Vec<f64>, Vec<f64>)>> {
        attention_stats(self.trunk().blocks())
    }

    fn linears(&self) -> Vec<(String, &LinearLayer)> {
        Vit::linears(self)
    }
}

impl Inspect for AsrTransformer {
    fn set_record_entropy(&self, on: bool) {
        AsrTransformer::set_record_entropy(self, on)
    }

    fn attention_stats(&self) -> Result<Vec<(Vec<f64>, Vec<f64>)>> {
        attention_stats(self.trunk().blocks())
    }

    fn linears(&self) -> Vec<(String, &LinearLayer)> {
        AsrTransformer::linears(self)
    }
}

impl Inspect for SimClr {
    fn set_record_entropy(&self, on: bool) {
        SimClr::set_record_entropy(self, on)
    }

    fn attention_stats(&self) -> Result<Vec<(Vec<f64>, Vec<f64>)>> {
        attention_stats(self.encoder().trunk().blocks())
    }

    fn linears(&self) -> Vec<(String, &LinearLayer)> {
        SimClr::linears(self)
    }
}
