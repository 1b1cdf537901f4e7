//! [`Inspect`] for the models of `nn` that the task programs train.

use super::Inspect;
use crate::Result;
use nn::{Gpt, LinearLayer};

impl Inspect for Gpt {
    fn set_record_entropy(&self, on: bool) {
        Gpt::set_record_entropy(self, on)
    }

    fn attention_stats(&self) -> Result<Vec<(Vec<f64>, Vec<f64>)>> {
        self.blocks()
            .iter()
            .map(|b| {
                let a = b.attention();
                Ok((a.entropy(), a.entropy_bound()?.unwrap_or_default()))
            })
            .collect()
    }

    fn linears(&self) -> Vec<(String, &LinearLayer)> {
        Gpt::linears(self)
    }
}
