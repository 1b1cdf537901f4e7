//! One test per regression case (small inputs cut down from public bug reports of other
//! tensor libraries, cited in each test, with values computed in f64), named after the case
//! id: the autograd cases `bcNN` and the CTC cases `ctcNN` of `cases/ctc.md` (values from
//! PyTorch's `F.ctc_loss` in float64, gradients with respect to the logits through
//! `log_softmax`). Tolerances: f64 atol 1e-9, rtol 1e-7; f32 atol 1e-5, rtol 1e-4.

use engine::{DType, Reduction, Tensor};

const F64_TOL: (f64, f64) = (1e-9, 1e-7);
const F32_TOL: (f64, f64) = (1e-5, 1e-4);

fn tol(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F64 => F64_TOL,
        DType::F32 => F32_TOL,
    }
}

/// A leaf of `dtype` that requires grad.
fn leaf(v: &[f64], shape: &[usize], dtype: DType) -> Tensor {
    Tensor::from_f64s(v, shape, dtype)
        .unwrap()
        .requires_grad_(true)
        .unwrap()
}

/// Assert `t` has `shape` and values within the dtype's tolerance of `want`.
#[track_caller]
fn assert_values(what: &str, t: &Tensor, shape: &[usize], want: &[f64]) {
    assert_eq!(t.shape(), shape, "{what}: shape");
    let (atol, rtol) = tol(t.dtype());
    let got = t.to_vec_f64().unwrap();
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= atol + rtol * w.abs(),
            "{what}[{i}]: got {g}, want {w} (all: {got:?})"
        );
    }
}

/// The gradient of `t`, which must exist.
#[track_caller]
fn grad(t: &Tensor) -> Tensor {
    t.grad().expect("missing gradient")
}

#[test]
fn bc01_broadcast_bias_grad() {
    for dtype in [DType::F64, DType::F32] {
        let x = Tensor::from_f64s(&[1., 2., 3., 4., 5., 6.], &[2, 3], dtype).unwrap();
        let w = leaf(&[0.1, 0.2, 0.3], &[3, 1], dtype);
        let b = leaf(&[1., 2., 3.], &[1, 3], dtype);
        let t = leaf(&[1., 2.], &[2, 1], dtype);
        // (2×1) + (1×3) broadcasts to (2×3).
        let y = x.matmul(&w).unwrap().add(&b).unwrap();
        assert_values("Y", &y, &[2, 3], &[2.4, 3.4, 4.4, 4.2, 5.2, 6.2]);
        let l = y.sub(&t).unwrap().sqr().unwrap().sum_all().unwrap();
        assert_values("L", &l, &[], &[52.0]);
        l.backward().unwrap();
        // Every gradient has exactly its parameter's shape.
        assert_values("dW", &grad(&w), &[3, 1], &[91.2, 124.8, 158.4]);
        assert_values("db", &grad(&b), &[1, 3], &[7.2, 11.2, 15.2]);
        assert_values("dt", &grad(&t), &[2, 1], &[-14.4, -19.2]);
        assert!(x.grad().is_none());
    }
}

#[test]
fn bc02_accumulate_multiple_uses() {
    let x = leaf(&[1., 2.], &[1, 1, 2], DType::F64);
    // upsample_nearest to length 4, emulated as a broadcast of a new trailing dim.
    let up = x
        .unsqueeze(3)
        .unwrap()
        .broadcast_as(&[1, 1, 2, 2])
        .unwrap()
        .reshape(&[1, 1, 4])
        .unwrap();
    assert_values("upsampled", &up, &[1, 1, 4], &[1., 1., 2., 2.]);
    let l = up
        .sum_all()
        .unwrap()
        .add(&x.mul_scalar(3.0).unwrap().sum_all().unwrap())
        .unwrap();
    l.backward().unwrap();
    // 2 from the upsample plus 3 from the scale, in whatever order nodes are visited.
    assert_values("dx", &grad(&x), &[1, 1, 2], &[5., 5.]);

    // The same with the two terms in the other order.
    let x = leaf(&[1., 2.], &[1, 1, 2], DType::F64);
    let up = x
        .unsqueeze(3)
        .unwrap()
        .broadcast_as(&[1, 1, 2, 2])
        .unwrap()
        .reshape(&[1, 1, 4])
        .unwrap();
    let l = x
        .mul_scalar(3.0)
        .unwrap()
        .sum_all()
        .unwrap()
        .add(&up.sum_all().unwrap())
        .unwrap();
    l.backward().unwrap();
    assert_values("dx (reversed)", &grad(&x), &[1, 1, 2], &[5., 5.]);

    // Companion: L = Σ (x ⊙ x) + Σ x uses x three times; dL/dx = 2x + 1.
    let x = leaf(&[1., 2.], &[1, 1, 2], DType::F64);
    let l = x
        .mul(&x)
        .unwrap()
        .sum_all()
        .unwrap()
        .add(&x.sum_all().unwrap())
        .unwrap();
    l.backward().unwrap();
    assert_values("companion dx", &grad(&x), &[1, 1, 2], &[3., 5.]);
}

#[test]
fn bc03_equal_leaves_distinct() {
    let pair = || (leaf(&[3.0], &[], DType::F64), leaf(&[3.0], &[], DType::F64));
    let (w1, w2) = pair();
    assert_ne!(w1.id(), w2.id());
    w1.add(&w2).unwrap().backward().unwrap();
    assert_values("d(w1+w2)/dw1", &grad(&w1), &[], &[1.0]);
    assert_values("d(w1+w2)/dw2", &grad(&w2), &[], &[1.0]);

    let (w1, w2) = pair();
    w1.mul(&w2).unwrap().backward().unwrap();
    assert_values("d(w1·w2)/dw1", &grad(&w1), &[], &[3.0]);
    assert_values("d(w1·w2)/dw2", &grad(&w2), &[], &[3.0]);

    let (w1, w2) = pair();
    w1.add(&w1).unwrap().backward().unwrap();
    assert_values("d(w1+w1)/dw1", &grad(&w1), &[], &[2.0]);
    assert!(w2.grad().is_none());
}

#[test]
fn bc05_max_ties_split_evenly() {
    for dtype in [DType::F64, DType::F32] {
        let x = leaf(&[1., 3., 3., 2.], &[4], dtype);
        let y = x.max(&[0], false).unwrap();
        assert_values("y", &y, &[], &[3.0]);
        y.backward().unwrap();
        let g = grad(&x);
        assert_values("dy/dx", &g, &[4], &[0., 0.5, 0.5, 0.]);
        // The gradient sums to 1 (the mask-only rule would give 2).
        assert_values("Σ dy/dx", &g.sum_all().unwrap(), &[], &[1.0]);
    }
}

#[test]
fn bc17_matmul_strided_views() {
    for dtype in [DType::F64, DType::F32] {
        let a = leaf(&[1., 2., 3., 4., 5., 6.], &[2, 3], dtype);
        let b = leaf(&[7., 8., 9., 10., 11., 12.], &[2, 3], dtype);
        let bt = b.t().unwrap();
        assert_eq!(bt.shape(), &[3, 2]);
        assert_eq!(bt.layout().strides(), &[1, 3]);
        assert!(!bt.is_contiguous());
        let c = a.matmul(&bt).unwrap();
        assert_values("A·Bᵀ", &c, &[2, 2], &[50., 68., 122., 167.]);
        // All-ones upstream gradient.
        c.sum_all().unwrap().backward().unwrap();
        assert_values("dA", &grad(&a), &[2, 3], &[17., 19., 21., 17., 19., 21.]);
        assert_values("dB", &grad(&b), &[2, 3], &[5., 7., 9., 5., 7., 9.]);
    }

    // A 1×2048 row view with strides (16384, 1) times a transposed 2048×32 view.
    // Values are multiples of 1/4 in [-2, 2], so f32 products and sums are exact.
    let q = |i: usize| ((i * 7 + 3) % 17) as f64 / 4.0 - 2.0;
    for dtype in [DType::F32, DType::F64] {
        let big: Vec<f64> = (0..2 * 16384).map(q).collect();
        let x_store = leaf(&big, &[2, 16384], dtype);
        let row = x_store
            .narrow(0, 1, 1)
            .unwrap()
            .narrow(1, 512, 2048)
            .unwrap();
        assert_eq!(row.shape(), &[1, 2048]);
        assert_eq!(row.layout().strides(), &[16384, 1]);
        // The stride of the size-1 dim does not matter for contiguity.
        assert!(row.is_contiguous());
        let (wr, wc) = (40, 2100);
        let wv: Vec<f64> = (0..wr * wc).map(|i| q(i + 5)).collect();
        let w_store = leaf(&wv, &[wr, wc], dtype);
        let wt = w_store
            .narrow(0, 3, 32)
            .unwrap()
            .narrow(1, 50, 2048)
            .unwrap()
            .t()
            .unwrap();
        assert_eq!(wt.shape(), &[2048, 32]);
        assert_eq!(wt.layout().strides(), &[1, wc]);
        let y = row.matmul(&wt).unwrap();
        // Naive reference: y[j] = Σ_p row[p]·W[3+j][50+p].
        let rowv = |p: usize| big[16384 + 512 + p];
        let wat = |r: usize, c: usize| wv[r * wc + c];
        let want: Vec<f64> = (0..32)
            .map(|j| (0..2048).map(|p| rowv(p) * wat(3 + j, 50 + p)).sum())
            .collect();
        assert_values("row·Wᵀ", &y, &[1, 32], &want);
        // Gradients land in the big storages at the viewed positions only.
        y.sum_all().unwrap().backward().unwrap();
        let gx = grad(&x_store).to_vec_f64().unwrap();
        assert_eq!(gx.len(), 2 * 16384);
        for (i, &g) in gx.iter().enumerate() {
            let want = if (16384 + 512..16384 + 512 + 2048).contains(&i) {
                let p = i - 16384 - 512;
                (0..32).map(|j| wat(3 + j, 50 + p)).sum()
            } else {
                0.0
            };
            assert_eq!(g, want, "dx[{i}]");
        }
        let gw = grad(&w_store).to_vec_f64().unwrap();
        for r in 0..wr {
            for c in 0..wc {
                let want = if (3..35).contains(&r) && (50..50 + 2048).contains(&c) {
                    rowv(c - 50)
                } else {
                    0.0
                };
                assert_eq!(gw[r * wc + c], want, "dW[{r}][{c}]");
            }
        }
    }
}

#[test]
fn bc18_zero_size() {
    // Case A: (0×3)·(3×2) is 0×2; L = Σ = 0; dA is 0×3 and dB = zeros(3×2) is present.
    let a = leaf(&[], &[0, 3], DType::F64);
    let b = leaf(&[1., 2., 3., 4., 5., 6.], &[3, 2], DType::F64);
    let c = a.matmul(&b).unwrap();
    assert_eq!(c.shape(), &[0, 2]);
    let l = c.sum_all().unwrap();
    assert_values("L", &l, &[], &[0.0]);
    assert!(
        l.requires_grad(),
        "the zero-size product dropped its autograd edges"
    );
    l.backward().unwrap();
    assert_values("dA", &grad(&a), &[0, 3], &[]);
    assert_values("dB", &grad(&b), &[3, 2], &[0.0; 6]);

    // Case B: (2×0)·(0×3) = zeros(2×3); the gradients are empty but present.
    let a = leaf(&[], &[2, 0], DType::F64);
    let b = leaf(&[], &[0, 3], DType::F64);
    let c = a.matmul(&b).unwrap();
    assert_values("A·B", &c, &[2, 3], &[0.0; 6]);
    let l = c.mul_scalar(2.0).unwrap().sum_all().unwrap();
    l.backward().unwrap();
    assert_values("dA", &grad(&a), &[2, 0], &[]);
    assert_values("dB", &grad(&b), &[0, 3], &[]);

    // Case C: [0] broadcast with [1] gives [0], both ways round; the [1] operand's gradient
    // is a sum over no element: 0.
    let z = leaf(&[], &[0], DType::F64);
    let o = leaf(&[5.0], &[1], DType::F64);
    let s = z.add(&o).unwrap();
    assert_eq!(s.shape(), &[0]);
    assert_eq!(o.mul(&z).unwrap().shape(), &[0]);
    s.sum_all().unwrap().backward().unwrap();
    assert_values("d[0]", &grad(&z), &[0], &[]);
    assert_values("d[1]", &grad(&o), &[1], &[0.0]);
    assert!(z.add(&leaf(&[1., 2.], &[2], DType::F64)).is_err());

    // Sum over an empty set is 0. The mean over an empty set is NaN (0/0), as in PyTorch:
    // that is this engine's documented behaviour (`Tensor::mean`).
    let e = Tensor::zeros(&[0, 4], DType::F64);
    assert_eq!(e.sum_all().unwrap().item().unwrap(), 0.0);
    assert_values(
        "Σ over dim 0",
        &e.sum(&[0], false).unwrap(),
        &[4],
        &[0.0; 4],
    );
    assert!(e.mean_all().unwrap().item().unwrap().is_nan());
    let m = e.mean(&[0], false).unwrap().to_vec::<f64>().unwrap();
    assert_eq!(m.len(), 4);
    assert!(m.iter().all(|v| v.is_nan()));
}

#[test]
fn bc21_softmax_grad_not_severed() {
    // Full-precision values (float64) of the case's p, L and dL/dx.
    let p_want = [0.09003057317038046, 0.24472847105479764, 0.6652409557748218];
    let l_want = 0.5105430578904046;
    let g_want = [
        -0.07571796004928925,
        -0.13010479484068163,
        0.205822754889971,
    ];
    // The case's six-digit figures agree.
    let case: [f64; 3] = [-0.075718, -0.130105, 0.205823];
    assert!(g_want.iter().zip(case).all(|(a, b)| (a - b).abs() < 1e-6));

    for dtype in [DType::F64, DType::F32] {
        // Fused path.
        let x = leaf(&[1., 2., 3.], &[3], dtype);
        let p = x.softmax(0).unwrap();
        assert_values("p", &p, &[3], &p_want);
        let l = p.sqr().unwrap().sum_all().unwrap();
        assert_values("L", &l, &[], &[l_want]);
        assert!(l.requires_grad(), "softmax severed the graph");
        l.backward().unwrap();
        assert_values("dL/dx (fused)", &grad(&x), &[3], &g_want);

        // Composite path: exp / Σ exp.
        let x2 = leaf(&[1., 2., 3.], &[3], dtype);
        let e = x2.exp().unwrap();
        let p2 = e.div(&e.sum(&[0], true).unwrap()).unwrap();
        p2.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        assert_values("dL/dx (composite)", &grad(&x2), &[3], &g_want);

        // Fused along a non-last dim of a 2-D view: each column of the transposed copy.
        let x3 = leaf(&[1., 2., 3., 1., 2., 3.], &[2, 3], dtype);
        let l3 = x3
            .t()
            .unwrap()
            .softmax(0)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        l3.backward().unwrap();
        let mut both = g_want.to_vec();
        both.extend(g_want);
        assert_values("dL/dx (dim 0 of a view)", &grad(&x3), &[2, 3], &both);

        // log_softmax must not sever either: L = Σ exp(log_softmax(x))² equals the above.
        let x4 = leaf(&[1., 2., 3.], &[3], dtype);
        let l4 = x4
            .log_softmax(0)
            .unwrap()
            .mul_scalar(2.0)
            .unwrap()
            .exp()
            .unwrap()
            .sum_all()
            .unwrap();
        l4.backward().unwrap();
        assert_values("dL/dx (log_softmax)", &grad(&x4), &[3], &g_want);
    }
}

/// `ctc_loss(log_softmax(logits))` with blank 0, for logits `[T, N, C]` (a leaf).
fn ctc_of_logits(
    logits: &Tensor,
    targets: &[usize],
    input_lengths: &[usize],
    target_lengths: &[usize],
    reduction: Reduction,
    zero_infinity: bool,
) -> Tensor {
    logits
        .log_softmax(2)
        .unwrap()
        .ctc_loss(
            targets,
            input_lengths,
            target_lengths,
            0,
            reduction,
            zero_infinity,
        )
        .unwrap()
}

/// cases/ctc.md CTC-01: uniform logits, where the loss and gradient are hand-computable.
#[test]
fn ctc01_uniform_logits() {
    for dtype in [DType::F64, DType::F32] {
        let x = leaf(&[0.0; 6], &[2, 1, 3], dtype);
        let l = ctc_of_logits(&x, &[1], &[2], &[1], Reduction::Mean, false);
        // Three alignments (1 1), (0 1), (1 0) of probability 1/9 each.
        assert_values("loss", &l, &[], &[1.0986122886681098]);
        l.backward().unwrap();
        let third = 1.0 / 3.0;
        let row = [0.0, -third, third];
        assert_values("dlogits", &grad(&x), &[2, 1, 3], &[row, row].concat());
    }
}

/// cases/ctc.md CTC-02: a repeated label needs a blank between its copies; without the
/// frames for it the loss is +inf (never NaN), or 0 with exactly zero gradient under
/// `zero_infinity`.
#[test]
fn ctc02_impossible_alignment() {
    let x = leaf(&[0.0; 6], &[2, 1, 3], DType::F64);
    let l = ctc_of_logits(&x, &[1, 1], &[2], &[2], Reduction::Mean, false);
    assert_eq!(l.item().unwrap(), f64::INFINITY);
    // The gradient of an infinite loss is 0 here (PyTorch: NaN), never NaN.
    l.backward().unwrap();
    assert_values("dlogits", &grad(&x), &[2, 1, 3], &[0.0; 6]);

    for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
        let x = leaf(&[0.0; 6], &[2, 1, 3], DType::F64);
        let l = ctc_of_logits(&x, &[1, 1], &[2], &[2], reduction, true);
        assert_eq!(l.to_vec_f64().unwrap(), [0.0]);
        l.sum_all().unwrap().backward().unwrap();
        let g = grad(&x).to_vec_f64().unwrap();
        assert!(g.iter().all(|&v| v == 0.0), "{g:?}");
    }

    // The minimum input length is L + (adjacent equal pairs), not 2L + 1: [1, 1] fits in 3
    // frames (1, blank, 1), [1, 2] in 2.
    let finite = |frames: usize, targets: &[usize]| {
        let x = leaf(&vec![0.0; frames * 3], &[frames, 1, 3], DType::F64);
        let l = ctc_of_logits(&x, targets, &[frames], &[2], Reduction::Sum, false);
        l.item().unwrap().is_finite()
    };
    assert!(finite(3, &[1, 1]));
    assert!(finite(2, &[1, 2]));
    assert!(!finite(2, &[1, 1]));
}

/// cases/ctc.md CTC-03: an empty target; the loss is −Σₜ log pₜ(blank).
#[test]
fn ctc03_empty_target() {
    let logits = [
        1.541, -0.2934, -2.1788, 0.5684, -1.0845, -1.3986, 0.4033, 0.838, -0.7193, -0.4033,
        -0.5966, 0.182,
    ];
    let x = leaf(&logits, &[3, 1, 4], DType::F64);
    let l = ctc_of_logits(&x, &[], &[3], &[0], Reduction::Mean, false);
    assert_values("loss", &l, &[], &[4.796530397229866]);
    l.backward().unwrap();
    #[rustfmt::skip]
    let want = [
        -0.3598143220310239, 0.10224360560561965, 0.015517342293304653, 0.24205337413209957,
        -0.9230521980754691, 0.056206212578613954, 0.3406744383151673, 0.5261715471816879,
        -0.8323547920713472, 0.2299472394056591, 0.18953048621742583, 0.41287706644826233,
    ];
    assert_values("dlogits", &grad(&x), &[3, 1, 4], &want);
}

/// cases/ctc.md CTC-04: target [1, 1] in 3 frames has the single alignment (1, blank, 1);
/// allowing the skip between the equal labels would give another value.
#[test]
fn ctc04_repeated_label_no_skip() {
    let logits = [0.1, 0.5, -0.2, 0.3, -0.1, 0.2, -0.4, 0.6, 0.0];
    let x = leaf(&logits, &[3, 1, 3], DType::F64);
    let l = ctc_of_logits(&x, &[1, 1], &[3], &[2], Reduction::Sum, false);
    assert_values("loss", &l, &[], &[2.3698110289912457]);
    l.backward().unwrap();
    #[rustfmt::skip]
    let want = [
        0.30934440495480836, -0.5385123766112743, 0.22916797165646594,
        -0.6116742319831219, 0.2603025466938988, 0.3513716852892231,
        0.1919346552686485, -0.4782675143316815, 0.286332859063033,
    ];
    assert_values("dlogits", &grad(&x), &[3, 1, 3], &want);
}

/// cases/ctc.md CTC-05: a batch of two with different input and target lengths, under the
/// three reductions (`mean` divides each loss by its target length, then averages).
#[test]
fn ctc05_batch_reductions() {
    #[rustfmt::skip]
    let logits = [
        -0.3113, -0.713, -0.7291, -0.2992, -0.2529, -0.3602, 0.9394, 1.1614, -0.1706, 0.0149,
        -0.0476, 0.548, -1.2491, 0.3195, 0.5945, 1.0562, 0.8035, 0.374, 0.5739, 1.5697,
        0.8734, -3.7047, -1.8142, -1.8426, -1.1828, 0.5462, 1.0523, -0.1564, -2.101, 1.5797,
        1.0834, 0.8897, 0.6443, 0.0958, -1.5084, -0.5842, -2.068, -0.1941, 0.3637, -0.3648,
        1.5558, 2.2597, 2.0956, 0.2142, -1.2954, -0.2714, 0.2642, -0.7057, 0.0645, -1.1714,
        -1.0243, -0.712, -0.2477, 2.9258, 0.4607, -0.2205, 0.8501, -0.2802, 0.3896, -0.9226,
    ];
    let shape = [6, 2, 5];
    let loss = |x: &Tensor, reduction| {
        ctc_of_logits(x, &[1, 2, 2, 3, 4], &[6, 4], &[3, 2], reduction, false)
    };
    let x = leaf(&logits, &shape, DType::F64);
    let none = [8.085163042677825, 4.1326725948372705];
    assert_values("none", &loss(&x, Reduction::None), &[2], &none);
    assert_values("sum", &loss(&x, Reduction::Sum), &[], &[12.217835637515096]);
    let mean = loss(&x, Reduction::Mean);
    assert_values("mean", &mean, &[], &[2.380695322488955]);

    mean.backward().unwrap();
    let g = grad(&x).to_vec_f64().unwrap();
    // Sequence 1, frames 0–3, to the case's 6 decimals; frames 4 and 5 are past its input
    // length and get exactly 0.
    #[rustfmt::skip]
    let want: [[f64; 5]; 4] = [
        [-0.013936, 0.076982, 0.096118, -0.189705, 0.030541],
        [-0.012296, 0.042483, 0.027649, -0.041958, -0.015878],
        [0.003476, 0.068707, 0.020515, 0.00142, -0.094117],
        [-0.070154, 0.008683, 0.056556, 0.098793, -0.093877],
    ];
    let row = |t: usize, n: usize| &g[(t * 2 + n) * 5..][..5];
    for (t, w) in want.iter().enumerate() {
        for (k, (a, b)) in row(t, 1).iter().zip(w).enumerate() {
            assert!(
                (a - b).abs() <= 5e-7 + F64_TOL.0,
                "frame {t}, class {k}: {a} vs {b}"
            );
        }
    }
    assert_eq!(row(4, 1), [0.0; 5]);
    assert_eq!(row(5, 1), [0.0; 5]);
    // Softmax minus occupancy: every frame's gradient sums to 0.
    for t in 0..6 {
        for n in 0..2 {
            let s: f64 = row(t, n).iter().sum();
            assert!(s.abs() <= 1e-12, "frame {t}, sequence {n}: Σ = {s}");
        }
    }
}

/// cases/ctc.md CTC-06: zero input frames give +inf for a nonempty target and 0 for an
/// empty one.
#[test]
fn ctc06_zero_length_input() {
    let x = leaf(&[0.3, -0.2, 0.5, 0.1, 0.0, -0.4], &[1, 2, 3], DType::F64);
    let l = ctc_of_logits(&x, &[2], &[0, 0], &[1, 0], Reduction::None, false);
    assert_eq!(l.to_vec_f64().unwrap(), [f64::INFINITY, 0.0]);
    l.sum_all().unwrap().backward().unwrap();
    assert_values("dlogits", &grad(&x), &[1, 2, 3], &[0.0; 6]);
}

/// Shapes whose element count overflows `usize` are refused, never wrapped around (a wrapped
/// count would give a tensor with fewer elements than its shape claims).
#[test]
fn element_count_overflow_is_an_error() {
    let huge = [1usize << 32, 1 << 32];
    let err = Tensor::from_vec(Vec::<f32>::new(), &huge).unwrap_err();
    assert!(
        err.to_string().contains("more elements than usize"),
        "{err}"
    );
    let empty = Tensor::from_vec(Vec::<f32>::new(), &[0]).unwrap();
    assert!(empty.reshape(&huge).is_err());
    let one = Tensor::from_vec(vec![1.0f32], &[1, 1]).unwrap();
    assert!(one.broadcast_as(&huge).is_err());
    assert_eq!(engine::checked_numel(&huge), None);
    assert_eq!(engine::checked_numel(&[3, 0, 5]), Some(0));
}
