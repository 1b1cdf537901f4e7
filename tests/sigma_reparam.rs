//! σReparam: the fused op `engine::sigma_reparam_linear`, its power-iteration state, and the
//! `nn` linear layers built on it. Regression cases BC-12,
//! BC-13, BC-15 and the verified values of the σReparam gradient.

use engine::{
    gradcheck, sigma_reparam_linear, sigma_reparam_linear_act, Activation, DType, Error, GammaInit,
    PowerIterState, Tensor, SIGMA_EPS,
};
use nn::{Linear, LinearKind, LinearLayer, Module, ModuleExt, SigmaReparamLinear, TensorRole};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn t(v: &[f64], s: &[usize]) -> Tensor {
    Tensor::from_f64s(v, s, DType::F64).unwrap()
}

fn leaf(v: &[f64], s: &[usize]) -> Tensor {
    t(v, s).requires_grad_(true).unwrap()
}

fn vals(x: &Tensor) -> Vec<f64> {
    x.to_vec_f64().unwrap()
}

fn grad(x: &Tensor) -> Vec<f64> {
    vals(&x.grad().expect("gradient reached the leaf"))
}

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

#[track_caller]
fn assert_close(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "lengths differ: {got:?} vs {want:?}");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= tol * (1.0 + b.abs()),
            "element {i}: got {a}, want {b} (tol {tol}); got {got:?}, want {want:?}"
        );
    }
}

/// Bit patterns of the state, for exact before/after comparisons.
fn snapshot(s: &PowerIterState) -> Vec<u64> {
    [s.u(), s.v(), s.sigma()]
        .iter()
        .flat_map(|x| vals(x))
        .map(f64::to_bits)
        .collect()
}

/// `Σ y ⊙ r`, the scalar loss whose output gradient is `r`.
fn project(y: &Tensor, r: &Tensor) -> Tensor {
    y.mul(r).unwrap().sum_all().unwrap()
}

/// Eigenvalues of a symmetric `n×n` matrix by cyclic Jacobi rotations (independent of the
/// engine and of power iteration).
fn jacobi_eigenvalues(mut a: Vec<f64>, n: usize) -> Vec<f64> {
    for _ in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum();
        let diag: f64 = (0..n).map(|i| a[i * n + i] * a[i * n + i]).sum();
        if off <= 1e-32 * diag {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let tt = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (tt * tt + 1.0).sqrt();
                let s = tt * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
            }
        }
    }
    (0..n).map(|i| a[i * n + i]).collect()
}

/// The largest singular value of a row-major `m×n` matrix: √ of the top eigenvalue of WᵀW.
fn top_singular_value(w: &[f64], m: usize, n: usize) -> f64 {
    let mut wtw = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            wtw[i * n + j] = (0..m).map(|k| w[k * n + i] * w[k * n + j]).sum();
        }
    }
    let trace: f64 = (0..n).map(|i| wtw[i * n + i]).sum();
    let eig = jacobi_eigenvalues(wtw, n);
    assert!((eig.iter().sum::<f64>() - trace).abs() <= 1e-9 * trace);
    eig.into_iter().fold(0.0, f64::max).sqrt()
}

/// Householder reflection `I − 2 h hᵀ / ‖h‖²` as a row-major `n×n` matrix.
fn householder(h: &[f64]) -> Vec<f64> {
    let n = h.len();
    let hh: f64 = h.iter().map(|a| a * a).sum();
    let mut q = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            q[i * n + j] = f64::from(i == j) - 2.0 * h[i] * h[j] / hh;
        }
    }
    q
}

/// Row-major `m×n` matrix `L · diag(s) · R` with orthogonal `L` (`m×m`), `R` (`n×n`), so its
/// singular values are exactly `s`.
fn with_singular_values(s: &[f64], m: usize, n: usize, seed: u64) -> Vec<f64> {
    let mut r = rng(seed);
    let l = householder(&vals(&Tensor::randn(&[m], 0.0, 1.0, DType::F64, &mut r)));
    let rt = householder(&vals(&Tensor::randn(&[n], 0.0, 1.0, DType::F64, &mut r)));
    let mut w = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            w[i * n + j] = (0..s.len())
                .map(|k| l[i * m + k] * s[k] * rt[k * n + j])
                .sum();
        }
    }
    w
}

/// Overwrite the state's vectors (as `load_state_dict` would).
fn set_vectors(state: &PowerIterState, u: &[f64], v: &[f64]) {
    state.u().copy_(&t(u, &[u.len()])).unwrap();
    state.v().copy_(&t(v, &[v.len()])).unwrap();
}

// ----- gradient checks -------------------------------------------------------------------

/// Finite-difference check of the op (eval mode: u, v frozen) with respect to x, W, γ and b.
fn gradcheck_op(
    x_shape: &[usize],
    out: usize,
    with_bias: bool,
    gamma_init: GammaInit,
    act: Activation,
) {
    let inp = *x_shape.last().unwrap();
    let mut r = rng(7);
    let x = Tensor::randn(x_shape, 0.0, 1.0, DType::F64, &mut r);
    let w = Tensor::randn(&[out, inp], 0.0, 1.0, DType::F64, &mut r);
    let b = Tensor::randn(&[out], 0.0, 1.0, DType::F64, &mut r);
    let state = PowerIterState::init(&w, 1e-12, 5000).unwrap();
    let gamma = match gamma_init {
        GammaInit::Sigma => state.sigma().copy().unwrap(),
        GammaInit::One => Tensor::ones(&[], DType::F64),
    };
    let mut inputs = vec![x.clone(), w.clone(), gamma];
    if with_bias {
        inputs.push(b);
    }
    let before = snapshot(&state);
    let report = gradcheck(
        |xs| sigma_reparam_linear_act(&xs[0], &xs[1], &xs[2], xs.get(3), &state, false, act),
        &inputs,
    )
    .unwrap();
    let total: usize = inputs.iter().map(|x| x.numel()).sum();
    assert_eq!(report.checked, total);
    assert!(report.max_abs_diff < 1e-6, "{report:?}");
    assert_eq!(snapshot(&state), before, "eval mode modified the state");
}

#[test]
fn gradcheck_rank2_with_bias_gamma_sigma() {
    gradcheck_op(&[4, 3], 5, true, GammaInit::Sigma, Activation::Identity);
}

#[test]
fn gradcheck_rank2_without_bias_gamma_one() {
    gradcheck_op(&[4, 6], 3, false, GammaInit::One, Activation::Identity);
}

#[test]
fn gradcheck_rank3_with_bias_gamma_one() {
    gradcheck_op(&[2, 3, 4], 5, true, GammaInit::One, Activation::Identity);
}

#[test]
fn gradcheck_rank3_without_bias_gamma_sigma() {
    gradcheck_op(&[2, 3, 4], 2, false, GammaInit::Sigma, Activation::Identity);
}

/// GELU fused into the product: `x`, `W`, `γ` and `b` through the activation.
#[test]
fn gradcheck_rank3_with_bias_and_gelu() {
    gradcheck_op(&[2, 3, 4], 5, true, GammaInit::One, Activation::Gelu);
    gradcheck_op(&[4, 3], 2, false, GammaInit::Sigma, Activation::Gelu);
}

#[test]
fn gradcheck_strided_input() {
    // x enters as a transposed (rank 2) and a permuted (rank 3) view.
    let mut r = rng(3);
    let x2 = Tensor::randn(&[3, 4], 0.0, 1.0, DType::F64, &mut r);
    let x3 = Tensor::randn(&[3, 2, 4], 0.0, 1.0, DType::F64, &mut r);
    let w = Tensor::randn(&[2, 4], 0.0, 1.0, DType::F64, &mut r);
    let wt = Tensor::randn(&[3, 2], 0.0, 1.0, DType::F64, &mut r);
    let state = PowerIterState::init(&w, 1e-12, 5000).unwrap();
    let state_t = PowerIterState::init(&wt.t().unwrap(), 1e-12, 5000).unwrap();
    let g = Tensor::full(&[1], 0.7, DType::F64);
    let rep = gradcheck(
        |xs| {
            let y2 = sigma_reparam_linear(&xs[0], &xs[2], &xs[3], None, &state, false)?;
            let y3 = sigma_reparam_linear(&xs[1], &xs[2], &xs[3], None, &state, false)?;
            y2.sum_all()?.add(&y3.sum_all()?)
        },
        &[
            x2.t().unwrap().contiguous().unwrap().t().unwrap(),
            x3.permute(&[1, 0, 2]).unwrap(),
            w.clone(),
            g.clone(),
        ],
    )
    .unwrap();
    assert_eq!(rep.checked, 12 + 24 + 8 + 1);
    // A transposed weight view [2, 3] with stride (1, 2).
    let rep = gradcheck(
        |xs| sigma_reparam_linear(&xs[0], &xs[1].t()?, &xs[2], None, &state_t, false),
        &[x2.narrow(1, 0, 3).unwrap(), wt, g],
    )
    .unwrap();
    assert_eq!(rep.checked, 9 + 6 + 1);
}

// ----- power iteration -------------------------------------------------------------------

#[test]
fn power_iteration_converges_to_top_singular_value() {
    let mut r = rng(11);
    let random = vals(&Tensor::randn(&[7, 5], 0.0, 1.0, DType::F64, &mut r));
    let wide = vals(&Tensor::randn(&[4, 9], 0.0, 1.0, DType::F64, &mut r));
    // Columns scaled over 8 orders of magnitude: condition number ~1e8.
    let ill: Vec<f64> = vals(&Tensor::randn(&[6, 5], 0.0, 1.0, DType::F64, &mut r))
        .iter()
        .enumerate()
        .map(|(i, a)| a * 10f64.powi(-2 * (i % 5) as i32))
        .collect();
    let hilbert: Vec<f64> = (0..36)
        .map(|k| 1.0 / ((k / 6 + k % 6 + 1) as f64))
        .collect();
    // Top two singular values 3% apart: slow vector convergence.
    let close = with_singular_values(&[1.0, 0.97, 0.5, 1e-6], 5, 4, 5);
    let cases: [(&str, &[f64], usize, usize); 5] = [
        ("random 7x5", &random, 7, 5),
        ("random 4x9", &wide, 4, 9),
        ("ill-conditioned 6x5", &ill, 6, 5),
        ("hilbert 6x6", &hilbert, 6, 6),
        ("close top pair 5x4", &close, 5, 4),
    ];
    for (name, w, m, n) in cases {
        let reference = top_singular_value(w, m, n);
        let wt = t(w, &[m, n]);
        let s = PowerIterState::init(&wt, 1e-12, 10_000).unwrap();
        let sigma = s.sigma().item().unwrap();
        assert!(
            (sigma - reference).abs() <= 1e-10 * reference,
            "{name}: power iteration {sigma} vs Jacobi {reference}"
        );
        // The vectors are unit singular vectors: W u = σ v.
        let (u, v) = (vals(s.u()), vals(s.v()));
        assert_close(&[u.iter().map(|a| a * a).sum::<f64>()], &[1.0], 1e-12);
        let wu = vals(&wt.matmul(&s.u().reshape(&[n, 1]).unwrap()).unwrap());
        let sv: Vec<f64> = v.iter().map(|a| a * sigma).collect();
        assert_close(&wu, &sv, 1e-9);
    }
    assert_close(&[top_singular_value(&close, 5, 4)], &[1.0], 1e-12);

    // f32: accurate to single precision against the f64 reference of the same values.
    let w32 = Tensor::randn(&[32, 16], 0.0, 1.0, DType::F32, &mut r);
    let reference = top_singular_value(&vals(&w32), 32, 16);
    let s = PowerIterState::init(&w32, 1e-5, 1000).unwrap();
    assert_eq!(s.u().dtype(), DType::F32);
    assert_close(&[s.sigma().item().unwrap()], &[reference], 1e-5);
}

#[test]
fn power_iteration_init_rejects_bad_arguments() {
    let w = Tensor::ones(&[2, 2], DType::F64);
    assert!(PowerIterState::init(&w, -1.0, 10).is_err());
    assert!(PowerIterState::init(&w, f64::NAN, 10).is_err());
    assert!(PowerIterState::init(&w, 1e-6, 0).is_err());
    let e = PowerIterState::init(&Tensor::ones(&[2, 2, 2], DType::F64), 1e-6, 10).unwrap_err();
    assert!(e.to_string().contains("[2, 2, 2]"), "{e}");
}

// ----- cases -----------------------------------------------------------------------------

#[test]
fn bc12_sigma_reparam_zero_weight() {
    for dtype in [DType::F64, DType::F32] {
        let w = Tensor::zeros(&[3, 3], dtype).requires_grad_(true).unwrap();
        let b = Tensor::from_f64s(&[0.5, -1.25, 2.0], &[3], dtype)
            .unwrap()
            .requires_grad_(true)
            .unwrap();
        let gamma = Tensor::full(&[1], 1.5, dtype).requires_grad_(true).unwrap();
        let x = Tensor::randn(&[4, 3], 0.0, 1.0, dtype, &mut rng(2))
            .requires_grad_(true)
            .unwrap();
        let r = Tensor::randn(&[4, 3], 0.0, 1.0, dtype, &mut rng(4));
        let state = PowerIterState::init(&w, 1e-6, 10).unwrap();
        for training in [false, true] {
            let y = sigma_reparam_linear(&x, &w, &gamma, Some(&b), &state, training).unwrap();
            // Output equals the bias exactly.
            let (yv, bv) = (vals(&y), vals(&b));
            for row in yv.chunks(3) {
                assert_eq!(row, &bv[..]);
            }
            for p in [&x, &w, &gamma, &b] {
                p.zero_grad();
            }
            project(&y, &r).backward().unwrap();
            // Clamped: dW = (γ/ε)·G with G = rᵀx, no σ term; dγ = ⟨G, W⟩/ε = 0; dx = 0.
            let (xv, rv) = (vals(&x), vals(&r));
            let mut want_dw = vec![0.0; 9];
            for i in 0..3 {
                for j in 0..3 {
                    let g: f64 = (0..4).map(|k| rv[k * 3 + i] * xv[k * 3 + j]).sum();
                    want_dw[i * 3 + j] = 1.5 / SIGMA_EPS * g;
                }
            }
            let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
            let dw = grad(&w);
            assert!(dw.iter().all(|a| a.is_finite()));
            assert_close(&dw, &want_dw, tol);
            assert_eq!(grad(&gamma), vec![0.0]);
            assert_eq!(grad(&x), vec![0.0; 12]);
            let want_db: Vec<f64> = (0..3)
                .map(|i| (0..4).map(|k| rv[k * 3 + i]).sum())
                .collect();
            assert_close(&grad(&b), &want_db, tol);
        }
        // σ = 0 is recorded; the vectors stay unit vectors instead of collapsing to zero.
        assert_eq!(state.sigma().item().unwrap(), 0.0);
        for vec in [state.u(), state.v()] {
            let norm: f64 = vals(vec).iter().map(|a| a * a).sum::<f64>().sqrt();
            assert_close(&[norm], &[1.0], 1e-6);
        }
        // Once the weight is non-zero, training steps recover its spectral norm.
        w.copy_(
            &Tensor::from_f64s(&[2., 0., 0., 0., 1., 0., 0., 0., 0.5], &[3, 3], dtype).unwrap(),
        )
        .unwrap();
        for _ in 0..40 {
            sigma_reparam_linear(&x, &w, &gamma, Some(&b), &state, true).unwrap();
        }
        assert_close(&[state.sigma().item().unwrap()], &[2.0], 1e-6);
    }
}

#[test]
fn bc13_power_iteration_state() {
    let w = t(&[2., 0., 0., 1.], &[2, 2]);
    let x = t(&[1., 0., 0., 1.], &[2, 2]);
    let gamma = t(&[1.0], &[1]);
    let state = PowerIterState::init(&w, 1e-6, 100).unwrap();
    let h = std::f64::consts::FRAC_1_SQRT_2;
    set_vectors(&state, &[h, h], &[1.0, 0.0]);
    // With x = I and γ = 1, y = Wᵀ/σ, so σ = 2 / y[0][0].
    let sigma_of = |y: &Tensor| 2.0 / vals(y)[0];

    let y = sigma_reparam_linear(&x, &w, &gamma, None, &state, true).unwrap();
    assert_close(&vals(state.v()), &[0.894427, 0.447214], 1e-6);
    assert_close(&vals(state.u()), &[0.970143, 0.242536], 1e-6);
    assert_close(&vals(state.sigma()), &[1.843909], 1e-6);
    assert_close(&[sigma_of(&y)], &[1.843909], 1e-6);

    // Eval after step 1: PyTorch style, the same σ every time and a bit-equal state.
    let before = snapshot(&state);
    let first = vals(&sigma_reparam_linear(&x, &w, &gamma, None, &state, false).unwrap());
    assert_close(&[2.0 / first[0]], &[1.843909], 1e-6);
    for _ in 0..20 {
        let y = sigma_reparam_linear(&x, &w, &gamma, None, &state, false).unwrap();
        assert_eq!(
            vals(&y).iter().map(|a| a.to_bits()).collect::<Vec<_>>(),
            first.iter().map(|a| a.to_bits()).collect::<Vec<_>>()
        );
    }
    assert_eq!(snapshot(&state), before);

    // Training step 2, then monotone convergence to the true σ = 2.
    let y = sigma_reparam_linear(&x, &w, &gamma, None, &state, true).unwrap();
    assert_close(&vals(state.sigma()), &[1.988428], 1e-6);
    assert_close(&[sigma_of(&y)], &[1.988428], 1e-6);
    let mut prev = 1.988428;
    for _ in 0..10 {
        sigma_reparam_linear(&x, &w, &gamma, None, &state, true).unwrap();
        let s = state.sigma().item().unwrap();
        assert!(s >= prev && s <= 2.0, "σ {s} after {prev}");
        prev = s;
    }
    assert_close(&[prev], &[2.0], 1e-9);
}

#[test]
fn bc15_sigma_reparam_grad() {
    // L = ⟨G, Ŵ⟩: with x = I, y = x Ŵᵀ, so L = Σ y ⊙ Gᵀ.
    let g = [1., 2., 3., 4.];
    let r = t(&[1., 3., 2., 4.], &[2, 2]);
    let run = |w: &Tensor, state: &PowerIterState| {
        let x = leaf(&[1., 0., 0., 1.], &[2, 2]);
        let gamma = leaf(&[1.5], &[1]);
        let y = sigma_reparam_linear(&x, w, &gamma, None, state, false).unwrap();
        project(&y, &r).backward().unwrap();
        (grad(&x), grad(&gamma))
    };

    // Case A: W = diag(2, 1), exact vectors l = r = e₁, σ = 2.
    let w = leaf(&[2., 0., 0., 1.], &[2, 2]);
    let state = PowerIterState::init(&w, 1e-6, 100).unwrap();
    set_vectors(&state, &[1.0, 0.0], &[1.0, 0.0]);
    let (dx, dgamma) = run(&w, &state);
    assert_close(&dgamma, &[3.0], 1e-12);
    assert_close(&grad(&w), &[-1.5, 1.5, 2.25, 3.0], 1e-12);
    // ∂L/∂x = (γ/σ)·(∂L/∂y) W = 0.75 · Gᵀ · diag(2, 1).
    assert_close(&dx, &[1.5, 2.25, 3.0, 3.0], 1e-12);

    // Case B: W = [[1,2],[3,4]], converged vectors.
    let wv = [1., 2., 3., 4.];
    let w = leaf(&wv, &[2, 2]);
    let state = PowerIterState::init(&w, 1e-14, 1000).unwrap();
    assert_close(&vals(state.sigma()), &[5.464986], 1e-6);
    run(&w, &state);
    let dw = grad(&w);
    assert_close(&dw, &[-0.076657, 0.050692, 0.029674, -0.028437], 1e-6);

    // ... which is the derivative of ⟨G, γ W / σ_exact(W)⟩ (closed-form 2×2 σ).
    let exact = |w: &[f64]| {
        let f: f64 = w.iter().map(|a| a * a).sum();
        let det = w[0] * w[3] - w[1] * w[2];
        let sigma = ((f + (f * f - 4.0 * det * det).sqrt()) / 2.0).sqrt();
        w.iter().zip(&g).map(|(a, b)| 1.5 * a * b).sum::<f64>() / sigma
    };
    let fd: Vec<f64> = (0..4)
        .map(|i| {
            let (mut p, mut m) = (wv, wv);
            p[i] += 1e-6;
            m[i] -= 1e-6;
            (exact(&p) - exact(&m)) / 2e-6
        })
        .collect();
    assert_close(&dw, &fd, 1e-8);
}

// ----- state handling --------------------------------------------------------------------

#[test]
fn eval_snapshot_bit_equal_and_train_moves_it() {
    let layer =
        SigmaReparamLinear::new(16, 8, true, GammaInit::One, DType::F32, &mut rng(5)).unwrap();
    let w = layer.weight();
    // An optimizer-like update after which a power step has work to do.
    let noise = Tensor::randn(&[8, 16], 0.0, 0.3, DType::F32, &mut rng(6));
    w.copy_(&w.add(&noise).unwrap()).unwrap();
    let before = layer.state_dict().unwrap();
    let bits = |m: &std::collections::BTreeMap<String, Tensor>, k: &str| {
        m[k].to_vec::<f32>()
            .unwrap()
            .iter()
            .map(|a| a.to_bits())
            .collect::<Vec<_>>()
    };
    layer.eval();
    let x = Tensor::randn(&[5, 16], 0.0, 1.0, DType::F32, &mut rng(8));
    let first = layer.forward(&x).unwrap().to_vec::<f32>().unwrap();
    for i in 0..50 {
        let xi = Tensor::randn(&[3, 16], 0.0, 1.0, DType::F32, &mut rng(100 + i));
        let y = layer.forward(&xi).unwrap();
        assert!(y.to_vec::<f32>().unwrap().iter().all(|a| a.is_finite()));
    }
    assert_eq!(layer.forward(&x).unwrap().to_vec::<f32>().unwrap(), first);
    let after = layer.state_dict().unwrap();
    for k in ["u", "v", "sigma", "gamma", "weight", "bias"] {
        assert_eq!(bits(&before, k), bits(&after, k), "{k} changed in eval");
    }

    layer.train();
    layer.forward(&x).unwrap();
    let moved = layer.state_dict().unwrap();
    let dist = |k: &str| {
        let (a, b) = (
            before[k].to_vec_f64().unwrap(),
            moved[k].to_vec_f64().unwrap(),
        );
        a.iter()
            .zip(&b)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f64::max)
    };
    assert!(
        dist("u") > 1e-3 && dist("v") > 1e-3,
        "train step did not move u, v"
    );
    assert!(dist("sigma") > 1e-3);
    assert_eq!(layer.sigma(), moved["sigma"].item().unwrap());
}

#[test]
fn two_forwards_before_one_backward() {
    // GAN pattern: L = Σ D(x₁)⊙r₁ − Σ D(x₂)⊙r₂ with two training forwards, one backward.
    let mut r = rng(21);
    let w = Tensor::randn(&[6, 4], 0.0, 1.0, DType::F64, &mut r)
        .requires_grad_(true)
        .unwrap();
    let b = Tensor::randn(&[6], 0.0, 1.0, DType::F64, &mut r)
        .requires_grad_(true)
        .unwrap();
    let gamma = leaf(&[1.3], &[1]);
    let x1 = Tensor::randn(&[3, 4], 0.0, 1.0, DType::F64, &mut r);
    let x2 = Tensor::randn(&[3, 4], 0.0, 1.0, DType::F64, &mut r);
    let r1 = Tensor::randn(&[3, 6], 0.0, 1.0, DType::F64, &mut r);
    let r2 = Tensor::randn(&[3, 6], 0.0, 1.0, DType::F64, &mut r);
    // One step from a random start: far from converged, so each forward moves the vectors.
    let state = PowerIterState::init(&w, 0.0, 1).unwrap();
    let (u0, v0) = (vals(state.u()), vals(state.v()));
    let params = [&w, &gamma, &b];

    let y1 = sigma_reparam_linear(&x1, &w, &gamma, Some(&b), &state, true).unwrap();
    let u1 = vals(state.u());
    let y2 = sigma_reparam_linear(&x2, &w, &gamma, Some(&b), &state, true).unwrap();
    let u2 = vals(state.u());
    let moved = u1
        .iter()
        .zip(&u2)
        .map(|(a, c)| (a - c).abs())
        .fold(0.0, f64::max);
    assert!(moved > 1e-3, "the two forwards used nearly equal vectors");
    project(&y1, &r1)
        .sub(&project(&y2, &r2))
        .unwrap()
        .backward()
        .unwrap();
    let joint: Vec<Vec<f64>> = params.iter().map(|p| grad(p)).collect();
    let end_state = snapshot(&state);

    // Reference: the same two steps, each differentiated on its own.
    set_vectors(&state, &u0, &v0);
    params.iter().for_each(|p| p.zero_grad());
    let y1 = sigma_reparam_linear(&x1, &w, &gamma, Some(&b), &state, true).unwrap();
    project(&y1, &r1).backward().unwrap();
    let first: Vec<Vec<f64>> = params.iter().map(|p| grad(p)).collect();
    params.iter().for_each(|p| p.zero_grad());
    let y2 = sigma_reparam_linear(&x2, &w, &gamma, Some(&b), &state, true).unwrap();
    project(&y2, &r2).neg().unwrap().backward().unwrap();
    let second: Vec<Vec<f64>> = params.iter().map(|p| grad(p)).collect();
    assert_eq!(snapshot(&state), end_state);
    for i in 0..3 {
        let sum: Vec<f64> = first[i]
            .iter()
            .zip(&second[i])
            .map(|(a, c)| a + c)
            .collect();
        assert_close(&joint[i], &sum, 1e-12);
    }
}

#[test]
fn state_dict_round_trip() {
    let a = SigmaReparamLinear::new(5, 3, true, GammaInit::Sigma, DType::F32, &mut rng(1)).unwrap();
    let b = SigmaReparamLinear::new(5, 3, true, GammaInit::One, DType::F32, &mut rng(2)).unwrap();
    let x = Tensor::randn(&[4, 5], 0.0, 1.0, DType::F32, &mut rng(3));
    // Train `a` a little: γ and W change, and the state follows.
    for k in 0..3 {
        a.forward(&x).unwrap();
        a.weight()
            .copy_(
                &a.weight()
                    .mul_scalar(1.0 + 0.1 * k as f64)
                    .unwrap()
                    .add_scalar(0.05)
                    .unwrap(),
            )
            .unwrap();
    }
    let ga = &a.named_parameters()[1].1;
    ga.copy_(&Tensor::full(&[1], 0.7, DType::F32)).unwrap();
    let saved = a.state_dict().unwrap();
    let keys: Vec<&str> = saved.keys().map(String::as_str).collect();
    assert_eq!(keys, ["bias", "gamma", "sigma", "u", "v", "weight"]);
    b.load_state_dict(&saved).unwrap();
    let loaded = b.state_dict().unwrap();
    for (k, t) in &saved {
        assert_eq!(
            t.to_vec::<f32>().unwrap(),
            loaded[k].to_vec::<f32>().unwrap(),
            "{k}"
        );
    }
    assert_eq!(b.gamma(), 0.7f32 as f64);
    assert_eq!(b.sigma(), a.sigma());
    assert_ne!(b.gamma(), b.sigma());
    // The next training forward, and the state it leaves, are bit-identical.
    for _ in 0..2 {
        let (ya, yb) = (a.forward(&x).unwrap(), b.forward(&x).unwrap());
        assert_eq!(ya.to_vec::<f32>().unwrap(), yb.to_vec::<f32>().unwrap());
        for k in ["u", "v", "sigma"] {
            assert_eq!(
                a.state_dict().unwrap()[k].to_vec::<f32>().unwrap(),
                b.state_dict().unwrap()[k].to_vec::<f32>().unwrap()
            );
        }
    }
}

// ----- layers ----------------------------------------------------------------------------

#[test]
fn linear_forward_and_init() {
    let layer = Linear::new(3, 2, true, DType::F64, &mut rng(9)).unwrap();
    let (w, b) = (vals(layer.weight()), vals(layer.bias().unwrap()));
    let k = 1.0 / 3f64.sqrt();
    assert!(w.iter().chain(&b).all(|a| a.abs() <= k));
    assert!(w.iter().any(|a| a.abs() > k / 2.0), "init is not spread");
    let x = Tensor::randn(&[2, 4, 3], 0.0, 1.0, DType::F64, &mut rng(10));
    let y = layer.forward(&x).unwrap();
    assert_eq!(y.shape(), [2, 4, 2]);
    let xv = vals(&x);
    let want: Vec<f64> = (0..8)
        .flat_map(|row| (0..2).map(move |o| (row, o)))
        .map(|(row, o)| b[o] + (0..3).map(|i| xv[row * 3 + i] * w[o * 3 + i]).sum::<f64>())
        .collect();
    assert_close(&vals(&y), &want, 1e-14);
    let names: Vec<String> = layer.named_parameters().into_iter().map(|p| p.0).collect();
    assert_eq!(names, ["weight", "bias"]);
    let no_bias = Linear::new(3, 2, false, DType::F32, &mut rng(9)).unwrap();
    assert_eq!(no_bias.num_parameters(), 6);
}

#[test]
fn sigma_reparam_linear_gamma_init() {
    let x = Tensor::randn(&[6, 7], 0.0, 1.0, DType::F64, &mut rng(12));
    let plain = |l: &SigmaReparamLinear, scale: f64| {
        x.matmul(&l.weight().t().unwrap())
            .unwrap()
            .mul_scalar(scale)
            .unwrap()
            .add(l.bias().unwrap())
            .unwrap()
    };
    // γ₀ = σ(W₀): Ŵ = W₀, the layer starts as the plain affine map.
    let l =
        SigmaReparamLinear::new(7, 4, true, GammaInit::Sigma, DType::F64, &mut rng(13)).unwrap();
    let reference = top_singular_value(&vals(l.weight()), 4, 7);
    assert_close(&[l.sigma()], &[reference], 1e-10);
    assert_eq!(l.gamma(), l.sigma());
    l.eval();
    assert_close(
        &vals(&l.forward(&x).unwrap()),
        &vals(&plain(&l, 1.0)),
        1e-12,
    );
    // γ₀ = 1: Ŵ = W₀/σ(W₀).
    let l = SigmaReparamLinear::new(7, 4, true, GammaInit::One, DType::F64, &mut rng(13)).unwrap();
    assert_eq!(l.gamma(), 1.0);
    assert!((l.sigma() - 1.0).abs() > 0.1);
    assert_close(
        &vals(&l.forward(&x).unwrap()),
        &vals(&plain(&l, 1.0 / l.sigma())),
        1e-12,
    );
    // Parameters and buffers.
    let mut roles = Vec::new();
    l.visit("fc", &mut |n, _, role| roles.push((n, role)));
    let p = TensorRole::Parameter;
    let bf = TensorRole::Buffer;
    let want = [
        ("fc.weight", p),
        ("fc.gamma", p),
        ("fc.bias", p),
        ("fc.u", bf),
        ("fc.v", bf),
        ("fc.sigma", bf),
    ];
    assert_eq!(roles, want.map(|(n, r)| (n.to_string(), r)).to_vec(),);
    assert_eq!(l.num_parameters(), 28 + 1 + 4);
}

#[test]
fn linear_layer_kinds() {
    let plain = LinearLayer::new(LinearKind::Plain, 4, 3, false, DType::F32, &mut rng(1)).unwrap();
    let sr = LinearLayer::new(
        LinearKind::SigmaReparam(GammaInit::One),
        4,
        3,
        true,
        DType::F32,
        &mut rng(1),
    )
    .unwrap();
    let names = |l: &LinearLayer| {
        l.named_parameters()
            .into_iter()
            .map(|p| p.0)
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&plain), ["weight"]);
    assert_eq!(names(&sr), ["weight", "gamma", "bias"]);
    assert_eq!(sr.state_dict().unwrap().len(), 6);
    // Same rng stream: the same W₀.
    assert_eq!(
        plain.weight().to_vec::<f32>().unwrap(),
        sr.weight().to_vec::<f32>().unwrap()
    );
    let x = Tensor::randn(&[2, 5, 4], 0.0, 1.0, DType::F32, &mut rng(2));
    assert_eq!(plain.forward(&x).unwrap().shape(), [2, 5, 3]);
    let LinearLayer::SigmaReparam(inner) = &sr else {
        panic!("expected a σReparam layer")
    };
    sr.eval();
    assert!(!inner.is_training());
    let before = snapshot_f32(inner);
    sr.forward(&x).unwrap();
    assert_eq!(snapshot_f32(inner), before);
    sr.train();
    assert!(inner.is_training());
}

fn snapshot_f32(l: &SigmaReparamLinear) -> Vec<f32> {
    let s = l.state();
    [s.u(), s.v(), s.sigma()]
        .iter()
        .flat_map(|x| x.to_vec::<f32>().unwrap())
        .collect()
}

/// A NaN or infinite weight in a training-mode forward is an error naming the weight's
/// shape, and leaves the power-iteration state as it was: a later forward with a finite
/// weight gives the same output as if the bad call had never happened.
#[test]
fn non_finite_weight_is_refused_and_leaves_the_state_alone() {
    let w = leaf(&[1., 2., 3., 4., 5., 6.], &[2, 3]);
    let gamma = leaf(&[1.0], &[1]);
    let x = t(&[0.5, -1.0, 2.0, 1.5, 0.0, -0.5], &[2, 3]);
    let state = PowerIterState::init(&w, 1e-10, 1000).unwrap();
    let before = snapshot(&state);
    for bad in [f64::NAN, f64::INFINITY] {
        let mut v = vals(&w);
        v[4] = bad;
        let e = sigma_reparam_linear_act(
            &x,
            &t(&v, &[2, 3]),
            &gamma,
            None,
            &state,
            true,
            Activation::Gelu,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("[2, 3]") && e.contains("non-finite"), "{e}");
        assert_eq!(snapshot(&state), before, "weight {bad} changed the state");
    }
    let y = vals(&sigma_reparam_linear(&x, &w, &gamma, None, &state, true).unwrap());
    let fresh = PowerIterState::init(&w, 1e-10, 1000).unwrap();
    let want = vals(&sigma_reparam_linear(&x, &w, &gamma, None, &fresh, true).unwrap());
    assert_eq!(y, want);
    assert!(y.iter().all(|v| v.is_finite()));
}

#[test]
fn zero_rows_and_bad_inputs() {
    let w = leaf(&[1., 2., 3., 4., 5., 6.], &[2, 3]);
    let gamma = leaf(&[1.0], &[1]);
    let b = leaf(&[0.1, 0.2], &[2]);
    let state = PowerIterState::init(&w, 1e-10, 1000).unwrap();
    // No rows: an empty output and zero gradients.
    let x = Tensor::zeros(&[0, 3], DType::F64)
        .requires_grad_(true)
        .unwrap();
    let y = sigma_reparam_linear(&x, &w, &gamma, Some(&b), &state, false).unwrap();
    assert_eq!(y.shape(), [0, 2]);
    y.sum_all().unwrap().backward().unwrap();
    assert_eq!(grad(&w), vec![0.0; 6]);
    assert_eq!(grad(&b), vec![0.0; 2]);
    assert_eq!(grad(&gamma), vec![0.0]);

    let msg = |r: engine::Result<Tensor>| r.unwrap_err().to_string();
    let x = t(&[0.0; 8], &[2, 4]);
    let e = msg(sigma_reparam_linear(&x, &w, &gamma, None, &state, true));
    assert!(e.contains("[2, 4]") && e.contains("[2, 3]"), "{e}");
    let x = t(&[0.0; 6], &[2, 3]);
    let e = msg(sigma_reparam_linear(
        &x,
        &t(&[0.0; 6], &[1, 2, 3]),
        &gamma,
        None,
        &state,
        true,
    ));
    assert!(e.contains("[1, 2, 3]"), "{e}");
    let e = msg(sigma_reparam_linear(
        &x,
        &w,
        &t(&[1., 2.], &[2]),
        None,
        &state,
        true,
    ));
    assert!(e.contains("gamma") && e.contains("[2]"), "{e}");
    let e = msg(sigma_reparam_linear(
        &x,
        &w,
        &gamma,
        Some(&t(&[0.; 3], &[3])),
        &state,
        true,
    ));
    assert!(
        e.contains("bias") && e.contains("[3]") && e.contains("[2]"),
        "{e}"
    );
    let other = PowerIterState::init(&t(&[1.0; 8], &[2, 4]), 1e-6, 10).unwrap();
    let e = msg(sigma_reparam_linear(&x, &w, &gamma, None, &other, true));
    assert!(e.contains("u [4]") && e.contains("[2, 3]"), "{e}");
    let x32 = Tensor::zeros(&[2, 3], DType::F32);
    let e = sigma_reparam_linear(&x32, &w, &gamma, None, &state, true).unwrap_err();
    assert!(matches!(e, Error::DTypeMismatch { .. }), "{e}");
    // Nothing above touched the state.
    assert_close(
        &vals(state.sigma()),
        &[top_singular_value(&vals(&w), 2, 3)],
        1e-9,
    );

    let layer =
        SigmaReparamLinear::new(3, 2, true, GammaInit::Sigma, DType::F64, &mut rng(1)).unwrap();
    let e = layer.forward(&t(&[0.0; 8], &[2, 4])).unwrap_err();
    assert!(
        matches!(e, nn::Error::Engine(Error::ShapeMismatch { .. })),
        "{e}"
    );
    let plain = Linear::new(3, 2, true, DType::F64, &mut rng(1)).unwrap();
    let e = plain.forward(&t(&[0.0; 8], &[2, 4])).unwrap_err();
    assert!(
        e.to_string().contains("[2, 4]") && e.to_string().contains("[2, 3]"),
        "{e}"
    );
}

#[test]
fn large_layer_matches_reference_across_threads() {
    // Wide enough that the products split across threads (by rows, and by columns for the
    // wide weight gradient G [out, in]).
    let (rows, inp, out) = (96, 300, 40);
    let mut r = rng(31);
    let xv = vals(&Tensor::randn(&[rows, inp], 0.0, 1.0, DType::F64, &mut r));
    let wv = vals(&Tensor::randn(&[out, inp], 0.0, 0.1, DType::F64, &mut r));
    let bv = vals(&Tensor::randn(&[out], 0.0, 1.0, DType::F64, &mut r));
    let rv = vals(&Tensor::randn(&[rows, out], 0.0, 1.0, DType::F64, &mut r));
    let gamma = 0.8;
    let state = PowerIterState::init(&t(&wv, &[out, inp]), 1e-12, 5000).unwrap();
    let (u, v) = (vals(state.u()), vals(state.v()));
    let sigma: f64 = (0..out)
        .map(|i| v[i] * (0..inp).map(|j| wv[i * inp + j] * u[j]).sum::<f64>())
        .sum();
    let s = gamma / sigma;
    // Reference in plain f64 loops: y, G = rᵀx, and the §2 gradients.
    let z = |k: usize, i: usize| {
        (0..inp)
            .map(|j| xv[k * inp + j] * wv[i * inp + j])
            .sum::<f64>()
    };
    let want_y: Vec<f64> = (0..rows * out)
        .map(|e| s * z(e / out, e % out) + bv[e % out])
        .collect();
    let g: Vec<f64> = (0..out * inp)
        .map(|e| {
            (0..rows)
                .map(|k| rv[k * out + e / inp] * xv[k * inp + e % inp])
                .sum()
        })
        .collect();
    let d_gamma = g.iter().zip(&wv).map(|(a, b)| a * b).sum::<f64>() / sigma;
    let want_dw: Vec<f64> = (0..out * inp)
        .map(|e| s * (g[e] - d_gamma * v[e / inp] * u[e % inp]))
        .collect();
    let want_dx: Vec<f64> = (0..rows * inp)
        .map(|e| {
            s * (0..out)
                .map(|i| rv[(e / inp) * out + i] * wv[i * inp + e % inp])
                .sum::<f64>()
        })
        .collect();
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let (x, w, b) = (
                leaf(&xv, &[rows, inp]),
                leaf(&wv, &[out, inp]),
                leaf(&bv, &[out]),
            );
            let gm = leaf(&[gamma], &[1]);
            let y = sigma_reparam_linear(&x, &w, &gm, Some(&b), &state, false).unwrap();
            assert_close(&vals(&y), &want_y, 1e-11);
            project(&y, &t(&rv, &[rows, out])).backward().unwrap();
            assert_close(&grad(&w), &want_dw, 1e-11);
            assert_close(&grad(&x), &want_dx, 1e-11);
            assert_close(&grad(&gm), &[d_gamma], 1e-11);
            let plain = x.matmul(&w.t().unwrap()).unwrap();
            let want_z: Vec<f64> = (0..rows * out).map(|e| z(e / out, e % out)).collect();
            assert_close(&vals(&plain), &want_z, 1e-11);
        });
    }
}

#[test]
fn power_step_on_a_large_weight_matches_reference_across_threads() {
    // [200, 300]: past the parallel threshold, so W·u is split by rows and Wᵀ·v is summed
    // over four row blocks. One training step must match plain f64 loops and give the same
    // bits on 1 and 3 threads.
    let (out, inp) = (200, 300);
    let mut r = rng(41);
    let wv = vals(&Tensor::randn(&[out, inp], 0.0, 0.1, DType::F64, &mut r));
    let u0 = vals(&Tensor::randn(&[inp], 0.0, 1.0, DType::F64, &mut r));
    let v0 = vals(&Tensor::randn(&[out], 0.0, 1.0, DType::F64, &mut r));
    let norm = |z: &[f64]| z.iter().map(|a| a * a).sum::<f64>().sqrt();
    let wu: Vec<f64> = (0..out)
        .map(|i| (0..inp).map(|j| wv[i * inp + j] * u0[j]).sum())
        .collect();
    let want_v: Vec<f64> = wu.iter().map(|a| a / norm(&wu)).collect();
    let wtv: Vec<f64> = (0..inp)
        .map(|j| (0..out).map(|i| wv[i * inp + j] * want_v[i]).sum())
        .collect();
    let want_u: Vec<f64> = wtv.iter().map(|a| a / norm(&wtv)).collect();
    let x = t(&vec![1.0; 2 * inp], &[2, inp]);
    let runs: Vec<Vec<u64>> = [1, 3]
        .into_iter()
        .map(|threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let w = leaf(&wv, &[out, inp]);
                let state = PowerIterState::init(&w, 1e-12, 1).unwrap();
                set_vectors(&state, &u0, &v0);
                sigma_reparam_linear(&x, &w, &t(&[1.0], &[1]), None, &state, true).unwrap();
                assert_close(&vals(state.u()), &want_u, 1e-12);
                assert_close(&vals(state.v()), &want_v, 1e-12);
                assert_close(&vals(state.sigma()), &[norm(&wtv)], 1e-12);
                snapshot(&state)
            })
        })
        .collect();
    assert_eq!(runs[0], runs[1]);
}

#[test]
fn train_mode_gradient_uses_the_stepped_vectors() {
    // W = diag(2, 1) from u₀ = [1,1]/√2 (BC-13): the node must differentiate σ₁ = v₁ᵀ W u₁
    // with the vectors of this step, not the ones it started from.
    let w = leaf(&[2., 0., 0., 1.], &[2, 2]);
    let state = PowerIterState::init(&w, 1e-6, 100).unwrap();
    let h = std::f64::consts::FRAC_1_SQRT_2;
    set_vectors(&state, &[h, h], &[h, h]);
    let x = t(&[1., 0., 0., 1.], &[2, 2]);
    let y = sigma_reparam_linear(&x, &w, &t(&[1.0], &[1]), None, &state, true).unwrap();
    // L = Σ y ⊙ Gᵀ with x = I, so ∂L/∂Ŵ = G.
    let g = [1., 2., 3., 4.];
    project(&y, &t(&[1., 3., 2., 4.], &[2, 2]))
        .backward()
        .unwrap();
    let (u, v, sigma) = (vals(state.u()), vals(state.v()), vals(state.sigma())[0]);
    assert_close(&[sigma], &[1.843909], 1e-6);
    let d_gamma = (g[0] * 2.0 + g[3]) / sigma;
    let want: Vec<f64> = (0..4)
        .map(|e| (g[e] - d_gamma * v[e / 2] * u[e % 2]) / sigma)
        .collect();
    assert_close(&grad(&w), &want, 1e-12);
}
