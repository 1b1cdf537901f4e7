//! Finite-difference gradient checks (f64, PyTorch's tolerances) of the indexing, selection,
//! dropout, cross-entropy, CTC and layer-norm ops, and the regression cases BC-07, BC-09 and
//! BC-10 (from public bug reports) with their exact values.
// `&[x.clone()]` reads better than `std::slice::from_ref(&x)` in a list of gradcheck inputs.
#![allow(clippy::cloned_ref_to_slice_refs)]

use engine::{gradcheck, DType, Reduction, Result, Tensor, IGNORE_INDEX};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Tolerances of the cases file: (atol, rtol).
const F64_TOL: (f64, f64) = (1e-9, 1e-7);
const F32_TOL: (f64, f64) = (1e-5, 1e-4);

fn t(v: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_f64s(v, shape, DType::F64).unwrap()
}

fn randn(shape: &[usize], rng: &mut ChaCha8Rng) -> Tensor {
    Tensor::randn(shape, 0.0, 1.0, DType::F64, rng)
}

fn leaf(v: &[f64], shape: &[usize], dtype: DType) -> Tensor {
    Tensor::from_f64s(v, shape, dtype)
        .unwrap()
        .requires_grad_(true)
        .unwrap()
}

fn assert_close(got: &[f64], want: &[f64], (atol, rtol): (f64, f64)) {
    assert_eq!(got.len(), want.len(), "got {got:?}, want {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= atol + rtol * w.abs(),
            "element {i}: got {g}, want {w} (all: {got:?})"
        );
    }
}

fn grad_of(x: &Tensor) -> Vec<f64> {
    x.grad()
        .expect("gradient reached the leaf")
        .to_vec_f64()
        .unwrap()
}

/// Runs the check and asserts that it compared `expected` gradient entries.
fn check(f: impl Fn(&[Tensor]) -> Result<Tensor>, inputs: &[Tensor]) {
    let expected: usize = inputs.iter().map(Tensor::numel).sum();
    let report = gradcheck(f, inputs).unwrap();
    assert_eq!(report.checked, expected);
}

fn random_shape(rng: &mut ChaCha8Rng, rank: usize) -> Vec<usize> {
    (0..rank).map(|_| rng.gen_range(1..=4)).collect()
}

fn random_indices(rng: &mut ChaCha8Rng, len: usize, size: usize) -> Vec<usize> {
    (0..len).map(|_| rng.gen_range(0..size)).collect()
}

// ----- index_select, gather, embedding ------------------------------------------------------

#[test]
fn gradcheck_index_select_random_shapes_with_duplicates() {
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    for _ in 0..12 {
        let rank = rng.gen_range(1..=4);
        let shape = random_shape(&mut rng, rank);
        let dim = rng.gen_range(0..rank);
        let len = rng.gen_range(0..=6);
        let idx = random_indices(&mut rng, len, shape[dim]);
        let x = randn(&shape, &mut rng);
        check(|x| x[0].index_select(dim, &idx), &[x]);
    }
    // Every index repeated: the gradient of row 1 is the sum of three upstream rows.
    let x = randn(&[3, 2], &mut rng);
    check(|x| x[0].index_select(0, &[1, 1, 1]), &[x]);
}

#[test]
fn gradcheck_index_select_strided_and_zero_size() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let x = randn(&[4, 3], &mut rng);
    check(|x| x[0].t()?.index_select(1, &[3, 0, 3]), &[x.clone()]);
    check(|x| x[0].t()?.index_select(0, &[2, 2]), &[x]);
    let x = randn(&[2, 3, 4], &mut rng);
    check(
        |x| x[0].permute(&[2, 0, 1])?.index_select(2, &[0, 2, 0, 1]),
        &[x.clone()],
    );
    // No index at all, and a zero-size dimension next to the indexed one.
    check(|x| x[0].index_select(1, &[]), &[x]);
    let empty = randn(&[3, 0, 2], &mut rng);
    let y = empty.index_select(0, &[2, 0, 2, 1]).unwrap();
    assert_eq!(y.shape(), &[4, 0, 2]);
    check(|x| x[0].index_select(0, &[2, 0, 2, 1]), &[empty]);
}

#[test]
fn index_select_values() {
    let x = t(&[1., 2., 3., 4., 5., 6.], &[2, 3]);
    let y = x.index_select(1, &[2, 0, 2]).unwrap();
    assert_eq!(y.shape(), &[2, 3]);
    assert_eq!(y.to_vec::<f64>().unwrap(), vec![3., 1., 3., 6., 4., 6.]);
    let y = x.t().unwrap().index_select(0, &[1]).unwrap();
    assert_eq!(y.to_vec::<f64>().unwrap(), vec![2., 5.]);
}

#[test]
fn gradcheck_gather_random_shapes_with_duplicates() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    for _ in 0..12 {
        let rank = rng.gen_range(1..=3);
        let shape = random_shape(&mut rng, rank);
        let dim = rng.gen_range(0..rank);
        let index_shape: Vec<usize> = (0..rank)
            .map(|d| {
                if d == dim {
                    rng.gen_range(0..=5)
                } else {
                    rng.gen_range(1..=shape[d])
                }
            })
            .collect();
        let n: usize = index_shape.iter().product();
        let idx = random_indices(&mut rng, n, shape[dim]);
        let x = randn(&shape, &mut rng);
        check(|x| x[0].gather(dim, &idx, &index_shape), &[x]);
    }
}

#[test]
fn gradcheck_gather_strided_and_zero_size() {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let x = randn(&[4, 3], &mut rng);
    // x.t() is [3, 4] with strides (1, 3).
    let idx = [3, 3, 0, 1, 2, 1];
    check(|x| x[0].t()?.gather(1, &idx, &[3, 2]), &[x.clone()]);
    check(
        |x| x[0].t()?.gather(0, &[2, 0, 2, 1, 1, 0], &[2, 3]),
        &[x.clone()],
    );
    check(|x| x[0].gather(1, &[], &[4, 0]), &[x]);
    let x = randn(&[2, 0, 3], &mut rng);
    check(|x| x[0].gather(2, &[], &[2, 0, 5]), &[x]);
}

#[test]
fn gather_values() {
    // PyTorch: torch.gather([[1,2],[3,4]], 1, [[0,0],[1,0]]) = [[1,1],[4,3]].
    let x = t(&[1., 2., 3., 4.], &[2, 2]);
    let y = x.gather(1, &[0, 0, 1, 0], &[2, 2]).unwrap();
    assert_eq!(y.to_vec::<f64>().unwrap(), vec![1., 1., 4., 3.]);
    let y = x.gather(0, &[1, 0, 1], &[3, 1]).unwrap();
    assert_eq!(y.to_vec::<f64>().unwrap(), vec![3., 1., 3.]);
}

#[test]
fn gradcheck_embedding() {
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    let w = randn(&[5, 3], &mut rng);
    check(
        |x| x[0].embedding(&[0, 4, 0, 2, 2, 1], &[2, 3]),
        &[w.clone()],
    );
    check(|x| x[0].embedding(&[3], &[]), &[w.clone()]);
    check(|x| x[0].embedding(&[], &[2, 0]), &[w.clone()]);
    // A transposed table: [3, 5] stored, used as [5, 3].
    let wt = randn(&[3, 5], &mut rng);
    check(|x| x[0].t()?.embedding(&[4, 4, 1], &[3]), &[wt]);
    let y = w.embedding(&[4, 4, 1, 0], &[2, 2]).unwrap();
    assert_eq!(y.shape(), &[2, 2, 3]);
    let wv = w.to_vec::<f64>().unwrap();
    assert_eq!(y.to_vec::<f64>().unwrap()[..3], wv[12..15]);
    assert_eq!(y.to_vec::<f64>().unwrap()[9..], wv[..3]);
}

#[test]
fn out_of_range_indices_are_errors_naming_index_and_size() {
    let x = t(&[1., 2., 3., 4., 5., 6.], &[3, 2]);
    let msg = x.index_select(0, &[0, 7]).unwrap_err().to_string();
    assert!(
        msg.contains("index_select") && msg.contains('7') && msg.contains("size 3"),
        "{msg}"
    );
    let msg = x.gather(1, &[0, 2], &[1, 2]).unwrap_err().to_string();
    assert!(
        msg.contains("gather") && msg.contains("index 2") && msg.contains("size 2"),
        "{msg}"
    );
    let msg = x.embedding(&[1, 3], &[2]).unwrap_err().to_string();
    assert!(
        msg.contains("embedding") && msg.contains("index 3") && msg.contains("size 3"),
        "{msg}"
    );
    assert!(x.index_select(2, &[0]).is_err());
    assert!(x.gather(0, &[0], &[1]).is_err(), "index rank differs");
    assert!(
        x.gather(0, &[0; 3], &[1, 3]).is_err(),
        "index wider than input"
    );
    assert!(
        x.embedding(&[0, 1], &[3]).is_err(),
        "ids do not fill their shape"
    );
    assert!(
        t(&[1., 2.], &[2]).embedding(&[0], &[1]).is_err(),
        "table not 2-D"
    );
}

// ----- where_cond, masked_fill --------------------------------------------------------------

#[test]
fn gradcheck_where_cond_broadcast_both_sides() {
    let mut rng = ChaCha8Rng::seed_from_u64(20);
    let cond = t(&[1., 0., 1.], &[3, 1]);
    let a = randn(&[1, 4], &mut rng);
    let b = randn(&[2, 3, 4], &mut rng);
    check(
        |x| Tensor::where_cond(&cond, &x[0], &x[1]),
        &[a.clone(), b.clone()],
    );
    check(|x| Tensor::where_cond(&cond, &x[1], &x[0]), &[a, b]);
    // The condition carries the largest shape; both branches broadcast up to it.
    let cond = Tensor::rand(&[2, 3, 4], 0.0, 1.0, DType::F64, &mut rng)
        .gt(&Tensor::scalar(0.5, DType::F64))
        .unwrap();
    let a = randn(&[4], &mut rng);
    let b = randn(&[3, 1], &mut rng);
    check(|x| Tensor::where_cond(&cond, &x[0], &x[1]), &[a, b]);
    // Transposed branch, f32 condition.
    let cond = Tensor::from_f64s(&[0., 2., -1., 0., 0., 1.], &[2, 3], DType::F32).unwrap();
    let a = randn(&[3, 2], &mut rng);
    let b = randn(&[2, 1], &mut rng);
    check(|x| Tensor::where_cond(&cond, &x[0].t()?, &x[1]), &[a, b]);
    // Zero-size broadcast: [0, 3] with [1, 3] and [3].
    let cond = t(&[], &[0, 3]);
    let a = randn(&[1, 3], &mut rng);
    let b = randn(&[3], &mut rng);
    let y = Tensor::where_cond(&cond, &a, &b).unwrap();
    assert_eq!(y.shape(), &[0, 3]);
    check(|x| Tensor::where_cond(&cond, &x[0], &x[1]), &[a, b]);
}

#[test]
fn where_cond_values_and_gradients() {
    let cond = t(&[1., 0., 0., 1.], &[2, 2]);
    let a = leaf(&[10., 20.], &[1, 2], DType::F64);
    let b = leaf(&[-1., -2.], &[2, 1], DType::F64);
    let y = Tensor::where_cond(&cond, &a, &b).unwrap();
    assert_eq!(y.to_vec::<f64>().unwrap(), vec![10., -1., -2., 20.]);
    y.mul(&t(&[1., 2., 3., 4.], &[2, 2]))
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert_eq!(grad_of(&a), vec![1., 4.]);
    assert_eq!(grad_of(&b), vec![2., 3.]);
    assert!(Tensor::where_cond(&t(&[1., 0.], &[2]), &a, &t(&[1., 2., 3.], &[3])).is_err());
}

#[test]
fn gradcheck_masked_fill_broadcast_both_sides() {
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let mask = t(&[0., 1., 1., 0., 0., 0., 1., 0.], &[2, 1, 4]);
    let x = randn(&[3, 1], &mut rng);
    assert_eq!(x.masked_fill(&mask, 2.5).unwrap().shape(), &[2, 3, 4]);
    check(|x| x[0].masked_fill(&mask, 2.5), &[x]);
    let x = randn(&[4, 3], &mut rng);
    let mask = t(&[1., 0., 0.], &[3, 1]);
    check(|x| x[0].t()?.masked_fill(&mask, -7.0), &[x]);
    let x = randn(&[0, 4], &mut rng);
    check(|x| x[0].masked_fill(&t(&[1.], &[1]), 1.0), &[x]);
}

#[test]
fn causal_mask_with_neg_infinity() {
    // Upper triangle (j > i) masked with -inf, then softmax over the last dim.
    let n = 4;
    let upper: Vec<f64> = (0..n * n)
        .map(|k| f64::from(u8::from(k % n > k / n)))
        .collect();
    let mask = t(&upper, &[n, n]);
    let mut rng = ChaCha8Rng::seed_from_u64(22);
    let x = randn(&[2, n, n], &mut rng);
    let masked = x.masked_fill(&mask, f64::NEG_INFINITY).unwrap();
    let mv = masked.to_vec::<f64>().unwrap();
    let xv = x.to_vec::<f64>().unwrap();
    for (k, (&m, &v)) in mv.iter().zip(&xv).enumerate() {
        let want = if upper[k % (n * n)] != 0.0 {
            f64::NEG_INFINITY
        } else {
            v
        };
        assert_eq!(m, want, "element {k}");
    }
    let p = masked.softmax(2).unwrap().to_vec::<f64>().unwrap();
    assert_eq!(p[0], 1.0, "first row attends only to itself");
    assert_eq!(&p[1..4], &[0., 0., 0.]);
    check(
        |x| x[0].masked_fill(&mask, f64::NEG_INFINITY)?.softmax(2),
        &[x.clone()],
    );
    // Masked positions get exactly zero gradient, even with an infinite fill value.
    let x = x.requires_grad_(true).unwrap();
    let y = x.masked_fill(&mask, f64::NEG_INFINITY).unwrap();
    y.exp().unwrap().sum_all().unwrap().backward().unwrap();
    for (k, (&g, &v)) in grad_of(&x).iter().zip(&xv).enumerate() {
        let want = if upper[k % (n * n)] != 0.0 {
            0.0
        } else {
            v.exp()
        };
        assert_eq!(g, want, "element {k}");
    }
}

// ----- dropout --------------------------------------------------------------------------------

#[test]
fn gradcheck_dropout_fixed_seed() {
    let mut rng = ChaCha8Rng::seed_from_u64(30);
    let x = randn(&[5, 6], &mut rng);
    let drop = |x: &Tensor, p: f64| {
        let mut r = ChaCha8Rng::seed_from_u64(99);
        x.dropout(p, true, &mut r)
    };
    check(|x| drop(&x[0], 0.3), &[x.clone()]);
    check(|x| drop(&x[0].t()?, 0.5), &[x.clone()]);
    check(|x| drop(&x[0], 1.0), &[x.clone()]);
    check(|x| drop(&x[0].narrow(1, 2, 0)?, 0.5), &[x]);
}

#[test]
fn dropout_values() {
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    let x = Tensor::ones(&[100, 100], DType::F32)
        .requires_grad_(true)
        .unwrap();
    let y = x.dropout(0.25, true, &mut rng).unwrap();
    let v = y.to_vec::<f32>().unwrap();
    let kept = v.iter().filter(|&&e| e != 0.0).count();
    assert!(
        v.iter().all(|&e| e == 0.0 || e == 1.0 / 0.75),
        "survivors scaled by 1/(1-p)"
    );
    assert!(
        (7300..7700).contains(&kept),
        "kept {kept} of 10000 at p = 0.25"
    );
    y.sum_all().unwrap().backward().unwrap();
    assert_eq!(
        grad_of(&x),
        y.to_vec_f64().unwrap(),
        "backward uses the same mask"
    );
    // Same seed, same mask.
    let again = x
        .dropout(0.25, true, &mut ChaCha8Rng::seed_from_u64(31))
        .unwrap();
    assert_eq!(again.to_vec::<f32>().unwrap(), v);
    // Identity in eval mode and at p = 0; zeros at p = 1.
    let z = t(&[1., -2., 3.], &[3]);
    assert_eq!(
        z.dropout(0.9, false, &mut rng)
            .unwrap()
            .to_vec::<f64>()
            .unwrap(),
        vec![1., -2., 3.]
    );
    assert_eq!(
        z.dropout(0.0, true, &mut rng)
            .unwrap()
            .to_vec::<f64>()
            .unwrap(),
        vec![1., -2., 3.]
    );
    assert_eq!(
        z.dropout(1.0, true, &mut rng)
            .unwrap()
            .to_vec::<f64>()
            .unwrap(),
        vec![0., 0., 0.]
    );
    for p in [-0.1, 1.5, f64::NAN] {
        assert!(z.dropout(p, true, &mut rng).is_err(), "p = {p}");
    }
}

// ----- cross_entropy --------------------------------------------------------------------------

#[test]
fn gradcheck_cross_entropy_reductions_and_ignore_index() {
    let mut rng = ChaCha8Rng::seed_from_u64(40);
    let targets = [2, IGNORE_INDEX, 0, 3, IGNORE_INDEX, 3];
    for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
        let x = randn(&[6, 4], &mut rng).mul_scalar(3.0).unwrap();
        check(
            |x| x[0].cross_entropy(&targets, Some(IGNORE_INDEX), reduction),
            &[x.clone()],
        );
        check(
            |x| x[0].cross_entropy(&[1, 0, 3, 3, 2, 1], None, reduction),
            &[x],
        );
        // Transposed logits ([4, 6] stored), and an ignore index that is a real class.
        let xt = randn(&[4, 6], &mut rng);
        check(
            |x| {
                x[0].t()?
                    .cross_entropy(&[1, 0, 3, 3, 2, 1], Some(3), reduction)
            },
            &[xt],
        );
    }
    // One class, and zero rows.
    let x = randn(&[3, 1], &mut rng);
    check(
        |x| x[0].cross_entropy(&[0, 0, 0], None, Reduction::Mean),
        &[x],
    );
    let x = randn(&[0, 3], &mut rng);
    check(|x| x[0].cross_entropy(&[], None, Reduction::None), &[x]);
}

#[test]
fn cross_entropy_matches_log_softmax() {
    let mut rng = ChaCha8Rng::seed_from_u64(41);
    let x = randn(&[5, 7], &mut rng);
    let targets = [6, 0, 3, 3, 1];
    let lsm = x.log_softmax(1).unwrap().to_vec::<f64>().unwrap();
    let want: Vec<f64> = targets
        .iter()
        .enumerate()
        .map(|(i, &c)| -lsm[i * 7 + c])
        .collect();
    let none = x.cross_entropy(&targets, None, Reduction::None).unwrap();
    assert_eq!(none.shape(), &[5]);
    assert_close(&none.to_vec::<f64>().unwrap(), &want, F64_TOL);
    let sum: f64 = want.iter().sum();
    let got = x.cross_entropy(&targets, None, Reduction::Sum).unwrap();
    assert_eq!(got.shape(), &[] as &[usize]);
    assert_close(&[got.item().unwrap()], &[sum], F64_TOL);
    let got = x.cross_entropy(&targets, None, Reduction::Mean).unwrap();
    assert_close(&[got.item().unwrap()], &[sum / 5.0], F64_TOL);
}

#[test]
fn cross_entropy_errors() {
    let x = t(&[0.; 6], &[2, 3]);
    let msg = x
        .cross_entropy(&[1, 3], None, Reduction::Mean)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("target 3") && msg.contains("3 classes"),
        "{msg}"
    );
    // The ignored value itself may be out of range.
    assert!(x.cross_entropy(&[1, 7], Some(7), Reduction::Mean).is_ok());
    assert!(
        x.cross_entropy(&[1], None, Reduction::Mean).is_err(),
        "too few targets"
    );
    assert!(
        t(&[0.; 3], &[3])
            .cross_entropy(&[0], None, Reduction::Mean)
            .is_err(),
        "not 2-D"
    );
}

// ----- ctc_loss -------------------------------------------------------------------------------

/// A CTC batch: `[T, N, C]` shape, blank, concatenated targets, input and target lengths.
struct CtcBatch {
    shape: [usize; 3],
    blank: usize,
    targets: Vec<usize>,
    input_lengths: Vec<usize>,
    target_lengths: Vec<usize>,
}

impl CtcBatch {
    fn loss(&self, lp: &Tensor, reduction: Reduction) -> Result<Tensor> {
        lp.ctc_loss(
            &self.targets,
            &self.input_lengths,
            &self.target_lengths,
            self.blank,
            reduction,
            true,
        )
    }
}

/// Repeated labels, empty targets, input lengths shorter than `T` (including one too short
/// for its target: its loss is zeroed), a blank other than 0.
fn ctc_batches() -> Vec<CtcBatch> {
    vec![
        CtcBatch {
            shape: [4, 1, 3],
            blank: 0,
            targets: vec![1, 1],
            input_lengths: vec![4],
            target_lengths: vec![2],
        },
        CtcBatch {
            shape: [6, 4, 5],
            blank: 0,
            targets: vec![1, 2, 2, 4, 4, 3, 3, 3, 1],
            input_lengths: vec![6, 5, 3, 2],
            target_lengths: vec![3, 2, 0, 4],
        },
        CtcBatch {
            shape: [5, 2, 4],
            blank: 3,
            targets: vec![0, 1, 0, 2, 2],
            input_lengths: vec![5, 4],
            target_lengths: vec![3, 2],
        },
    ]
}

#[test]
fn gradcheck_ctc_loss_on_log_probs() {
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    for b in ctc_batches() {
        for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
            let lp = randn(&b.shape, &mut rng).log_softmax(2).unwrap();
            check(|x| b.loss(&x[0], reduction), &[lp]);
            // Strided: [N, T, C] storage seen as [T, N, C].
            let [t, n, c] = b.shape;
            let lp = randn(&[n, t, c], &mut rng).log_softmax(2).unwrap();
            check(|x| b.loss(&x[0].transpose(0, 1)?, reduction), &[lp]);
        }
    }
}

/// The gradient with respect to logits through `log_softmax`, as training uses it.
#[test]
fn gradcheck_ctc_loss_through_log_softmax() {
    let mut rng = ChaCha8Rng::seed_from_u64(43);
    for b in ctc_batches() {
        for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
            let logits = randn(&b.shape, &mut rng).mul_scalar(2.0).unwrap();
            check(|x| b.loss(&x[0].log_softmax(2)?, reduction), &[logits]);
        }
    }
}

// ----- layer_norm -----------------------------------------------------------------------------

#[test]
fn gradcheck_layer_norm_with_and_without_affine() {
    let mut rng = ChaCha8Rng::seed_from_u64(50);
    let x = randn(&[4, 5], &mut rng);
    let w = randn(&[5], &mut rng);
    let b = randn(&[5], &mut rng);
    let eps = 1e-5;
    check(
        |x| x[0].layer_norm(Some(&x[1]), Some(&x[2]), eps),
        &[x.clone(), w.clone(), b.clone()],
    );
    check(|x| x[0].layer_norm(None, None, eps), &[x.clone()]);
    check(
        |x| x[0].layer_norm(Some(&x[1]), None, eps),
        &[x.clone(), w.clone()],
    );
    check(|x| x[0].layer_norm(None, Some(&x[1]), eps), &[x, b.clone()]);
    // Transposed 3-D input: [2, 5, 3] stored, normalized over the stored middle dim.
    let x3 = randn(&[2, 5, 3], &mut rng);
    check(
        |x| {
            x[0].transpose(1, 2)?
                .layer_norm(Some(&x[1]), Some(&x[2]), eps)
        },
        &[x3, w.clone(), b.clone()],
    );
    // A single feature (output = bias), a single row, and zero rows.
    let x1 = randn(&[3, 1], &mut rng);
    let w1 = randn(&[1], &mut rng);
    check(
        |x| x[0].layer_norm(Some(&x[1]), Some(&x[1]), eps),
        &[x1, w1],
    );
    let xr = randn(&[5], &mut rng);
    check(
        |x| x[0].layer_norm(Some(&x[1]), Some(&x[2]), eps),
        &[xr, w.clone(), b.clone()],
    );
    let x0 = randn(&[0, 5], &mut rng);
    check(
        |x| x[0].layer_norm(Some(&x[1]), Some(&x[2]), eps),
        &[x0, w, b],
    );
}

#[test]
fn layer_norm_values() {
    // Row [1, 2, 3, 4]: mean 2.5, biased variance 1.25.
    let x = t(&[1., 2., 3., 4., 10., 10., 10., 10.], &[2, 4]);
    let w = t(&[1., 2., 3., 4.], &[4]);
    let b = t(&[0.5, 0., 0., -0.5], &[4]);
    let eps = 1e-5;
    let y = x.layer_norm(Some(&w), Some(&b), eps).unwrap();
    let s = (1.25f64 + eps).sqrt();
    let want = [
        0.5 - 1.5 / s,
        -2.0 * 0.5 / s,
        3.0 * 0.5 / s,
        4.0 * 1.5 / s - 0.5,
        0.5,
        0.,
        0.,
        -0.5,
    ];
    assert_close(&y.to_vec::<f64>().unwrap(), &want, F64_TOL);
    // Two-pass variance: a large offset does not cancel the variance away in f32.
    let xf =
        Tensor::from_f64s(&[1e4 + 1., 1e4 + 2., 1e4 + 3., 1e4 + 4.], &[4], DType::F32).unwrap();
    let y = xf
        .layer_norm(None, None, 0.0)
        .unwrap()
        .to_vec_f64()
        .unwrap();
    let s = 1.25f64.sqrt();
    assert_close(&y, &[-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s], F32_TOL);
    assert!(x
        .layer_norm(Some(&b.narrow(0, 0, 3).unwrap()), None, eps)
        .is_err());
    assert!(x.layer_norm(None, None, -1.0).is_err());
    assert!(Tensor::scalar(1.0, DType::F64)
        .layer_norm(None, None, eps)
        .is_err());
}

// ----- regression cases from public bug reports -----------------------------------------------------------

#[test]
fn bc07_log_softmax_large_logits() {
    let x = [
        -781.1664, -1043.7303, 890.2518, -1234.9999, -1622.5167, -2174.6855, -1304.8042,
        -1730.8314, -1072.6201, -1899.7662,
    ];
    let want = [
        -1671.4182, -1933.9821, 0.0, -2125.2517, -2512.7685, -3064.9373, -2195.0560, -2621.0832,
        -1962.8719, -2790.0180,
    ];
    let want_grad = [1., 1., -9., 1., 1., 1., 1., 1., 1., 1.];
    for (dtype, tol) in [(DType::F64, F64_TOL), (DType::F32, F32_TOL)] {
        let xs = leaf(&x, &[10], dtype);
        let y = xs.log_softmax(0).unwrap();
        let got = y.to_vec_f64().unwrap();
        assert!(got.iter().all(|v| v.is_finite()), "{dtype:?}: {got:?}");
        assert_close(&got, &want, tol);
        y.sum_all().unwrap().backward().unwrap();
        assert_close(&grad_of(&xs), &want_grad, tol);
    }
    // Companion (PyTorch #11752): cross-entropy of [1e8, 1e8] with target 1, in f32.
    let ln2 = std::f64::consts::LN_2;
    let logits = leaf(&[1e8, 1e8], &[1, 2], DType::F32);
    let loss = logits.cross_entropy(&[1], None, Reduction::Mean).unwrap();
    assert_close(&[loss.item().unwrap()], &[ln2], F32_TOL);
    loss.backward().unwrap();
    assert_close(&grad_of(&logits), &[0.5, -0.5], F32_TOL);
    // The same fault in log_softmax itself: x − (m + ln Σ) rounds ln 2 away in f32.
    let lsm = logits.log_softmax(1).unwrap().to_vec_f64().unwrap();
    assert_close(&lsm, &[-ln2, -ln2], F32_TOL);
}

#[test]
fn bc09_cross_entropy_ignore_index() {
    // Case A: every target ignored. Mean is NaN (0/0, as PyTorch), Sum is 0, and the
    // gradient is exactly 0 either way.
    for (reduction, want) in [(Reduction::Mean, f64::NAN), (Reduction::Sum, 0.0)] {
        let x = leaf(&[1., 2., 3., 1., 1., 1.], &[2, 3], DType::F64);
        let loss = x
            .cross_entropy(&[IGNORE_INDEX, IGNORE_INDEX], Some(IGNORE_INDEX), reduction)
            .unwrap();
        let got = loss.item().unwrap();
        assert!(
            got == want || (got.is_nan() && want.is_nan()),
            "{reduction:?}: {got}"
        );
        loss.backward().unwrap();
        assert_eq!(grad_of(&x), vec![0.0; 6], "{reduction:?}");
    }
    // Case B: the mean is over the one counted row, not over both rows.
    for (dtype, tol) in [(DType::F64, F64_TOL), (DType::F32, F32_TOL)] {
        let x = leaf(&[1., 2., 3., 1., 1., 1.], &[2, 3], dtype);
        let loss = x
            .cross_entropy(&[2, IGNORE_INDEX], Some(IGNORE_INDEX), Reduction::Mean)
            .unwrap();
        assert_close(&[loss.item().unwrap()], &[0.40760596444438013], tol);
        loss.backward().unwrap();
        let want = [
            0.09003057317038048,
            0.2447284710547977,
            0.665240955774822 - 1.0,
            0.,
            0.,
            0.,
        ];
        assert_close(&grad_of(&x), &want, tol);
        let none = x
            .cross_entropy(&[2, IGNORE_INDEX], Some(IGNORE_INDEX), Reduction::None)
            .unwrap();
        assert_close(
            &none.to_vec_f64().unwrap(),
            &[0.40760596444438013, 0.0],
            tol,
        );
    }
}

#[test]
fn bc10_duplicate_indices_scatter_add() {
    // Case A: y = [1.0], z = y[[0, 0]].
    let y = leaf(&[1.0], &[1], DType::F64);
    let z = y.index_select(0, &[0, 0]).unwrap();
    assert_eq!(z.to_vec::<f64>().unwrap(), vec![1.0, 1.0]);
    z.narrow(0, 0, 1)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert_eq!(grad_of(&y), vec![1.0], "dz0/dy");
    y.zero_grad();
    let z = y.index_select(0, &[0, 0]).unwrap();
    z.sum_all().unwrap().backward().unwrap();
    assert_eq!(grad_of(&y), vec![2.0], "d(z0 + z1)/dy");
    // The same through gather.
    y.zero_grad();
    y.gather(0, &[0, 0, 0], &[3])
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert_eq!(grad_of(&y), vec![3.0]);

    // Case B: embedding table 3×2, ids [0, 2, 0], upstream G.
    let e = leaf(&[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], &[3, 2], DType::F64);
    let g = t(&[1., 2., 3., 4., 5., 6.], &[3, 2]);
    let rows = e.embedding(&[0, 2, 0], &[3]).unwrap();
    assert_eq!(
        rows.to_vec::<f64>().unwrap(),
        vec![0.1, 0.2, 0.5, 0.6, 0.1, 0.2]
    );
    rows.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
    assert_close(&grad_of(&e), &[6., 8., 0., 0., 3., 4.], F64_TOL);
}
