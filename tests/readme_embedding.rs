//! The "Using `engine` and `nn` in another crate" example of README.md, kept compiling.

use rand::SeedableRng;
use sigma_reparam::{
    engine::{DType, Tensor},
    nn::{self, ModuleExt, Optimizer},
};

#[test]
fn readme_embedding_example_runs() -> Result<(), Box<dyn std::error::Error>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let layer = nn::LinearLayer::new(
        nn::LinearKind::SigmaReparam(nn::GammaInit::Sigma),
        16,
        4,
        true,
        DType::F32,
        &mut rng,
    )?;
    let mut opt = nn::AdamW::new(
        vec![nn::ParamGroup::new(layer.parameters(), 0.01)],
        nn::AdamWConfig::default(),
    )?;
    let x = Tensor::randn(&[8, 16], 0.0, 1.0, DType::F32, &mut rng);
    let before = layer.forward(&x)?.sqr()?.mean_all()?.item()?;
    for _ in 0..20 {
        let loss = layer.forward(&x)?.sqr()?.mean_all()?;
        loss.backward()?;
        opt.step()?;
        opt.zero_grad();
    }
    let after = layer.forward(&x)?.sqr()?.mean_all()?.item()?;
    assert!(after < before, "{after} ≥ {before}");
    Ok(())
}
