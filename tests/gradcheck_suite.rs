//! Finite-difference gradient checks (`engine::gradcheck`, f64 central differences) of every
//! differentiable op, on seeded random shapes that broadcast on both sides, on transposed,
//! permuted and narrowed (strided) views, and on size-1 and zero-size dims; plus the rules
//! of the autograd engine (accumulation, freeing the graph, `no_grad`, `detach`).
//!
//! `gradcheck` copies its inputs into fresh dense leaves, so each strided view is built inside
//! the checked function from a leaf stored in the view's pre-image shape.

use engine::{
    gradcheck, gradcheck_with, no_grad, Activation, DType, Error, GradcheckOptions, Result, Tensor,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

// ----- helpers ---------------------------------------------------------------------------

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Which values an op may be checked at (kept away from kinks and poles).
#[derive(Clone, Copy, Debug)]
enum Domain {
    /// Standard normal.
    Any,
    /// Uniform in [0.5, 2): for log, sqrt, non-integer powers.
    Positive,
    /// Magnitude in [0.3, 2) with a random sign: for relu and divisors.
    AwayFromZero,
}

fn values(rng: &mut ChaCha8Rng, shape: &[usize], dom: Domain) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| match dom {
            Domain::Any => {
                // Box-Muller keeps this file independent of rand_distr.
                let (u1, u2): (f64, f64) = (rng.gen_range(1e-9..1.0), rng.gen());
                (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
            }
            Domain::Positive => rng.gen_range(0.5..2.0),
            Domain::AwayFromZero => {
                let m = rng.gen_range(0.3..2.0);
                if rng.gen_bool(0.5) {
                    m
                } else {
                    -m
                }
            }
        })
        .collect();
    Tensor::from_vec(v, shape).unwrap()
}

/// How an argument reaches the op: as the leaf itself or as a strided view of it
/// (transposed, permuted, narrowed, or broadcast with stride 0).
#[derive(Clone, Debug)]
enum View {
    Plain,
    Transpose(usize, usize),
    Permute(Vec<usize>),
    Narrow {
        dim: usize,
        start: usize,
        len: usize,
    },
    /// A broadcast (stride-0) view of a leaf with size 1 in the repeated dims.
    Expand(Vec<usize>),
}

/// One argument: the shape its leaf is stored in and the view that gives the op's shape.
#[derive(Clone, Debug)]
struct Arg {
    stored: Vec<usize>,
    view: View,
}

impl Arg {
    fn plain(shape: &[usize]) -> Arg {
        Arg {
            stored: shape.to_vec(),
            view: View::Plain,
        }
    }

    /// A random way (plain, transposed, permuted or narrowed) to present `target`.
    fn random(rng: &mut ChaCha8Rng, target: &[usize]) -> Arg {
        let r = target.len();
        let pick = rng.gen_range(0..5);
        match pick {
            1 if r >= 2 => {
                let d0 = rng.gen_range(0..r);
                let d1 = (d0 + rng.gen_range(1..r)) % r;
                let mut stored = target.to_vec();
                stored.swap(d0, d1);
                Arg {
                    stored,
                    view: View::Transpose(d0, d1),
                }
            }
            2 if r >= 2 => {
                // A random permutation that is not the identity.
                let mut perm: Vec<usize> = (0..r).collect();
                while perm.iter().enumerate().all(|(i, &p)| i == p) {
                    for i in (1..r).rev() {
                        perm.swap(i, rng.gen_range(0..=i));
                    }
                }
                let mut stored = vec![0; r];
                for (i, &p) in perm.iter().enumerate() {
                    stored[p] = target[i];
                }
                Arg {
                    stored,
                    view: View::Permute(perm),
                }
            }
            3 if r >= 1 => {
                let dim = rng.gen_range(0..r);
                let extra = rng.gen_range(1..=3);
                let start = rng.gen_range(0..=extra);
                let mut stored = target.to_vec();
                stored[dim] += extra;
                Arg {
                    stored,
                    view: View::Narrow {
                        dim,
                        start,
                        len: target[dim],
                    },
                }
            }
            4 if target.iter().any(|&d| d > 1) => {
                let mut stored = target.to_vec();
                for d in stored.iter_mut() {
                    if *d > 1 && rng.gen_bool(0.6) {
                        *d = 1;
                    }
                }
                Arg {
                    stored,
                    view: View::Expand(target.to_vec()),
                }
            }
            _ => Arg::plain(target),
        }
    }

    fn apply(&self, t: &Tensor) -> Result<Tensor> {
        match &self.view {
            View::Plain => Ok(t.clone()),
            View::Transpose(a, b) => t.transpose(*a, *b),
            View::Permute(p) => t.permute(p),
            View::Narrow { dim, start, len } => t.narrow(*dim, *start, *len),
            View::Expand(shape) => t.broadcast_as(shape),
        }
    }
}

/// A random shape of rank `0..=max_rank`, sizes 1..=4, with a size 0 now and then when
/// `zero` is set.
fn rand_shape(rng: &mut ChaCha8Rng, max_rank: usize, zero: bool) -> Vec<usize> {
    let r = rng.gen_range(0..=max_rank);
    (0..r)
        .map(|_| {
            if zero && rng.gen_bool(0.08) {
                0
            } else {
                rng.gen_range(1..=4)
            }
        })
        .collect()
}

/// A shape that broadcasts to `out`: some leading dims dropped, some dims set to 1.
fn broadcast_partner(rng: &mut ChaCha8Rng, out: &[usize]) -> Vec<usize> {
    let drop = rng.gen_range(0..=out.len());
    let drop = if rng.gen_bool(0.5) { 0 } else { drop };
    out[drop..]
        .iter()
        .map(|&d| if rng.gen_bool(0.35) { 1 } else { d })
        .collect()
}

/// Gradcheck `f` (applied to the viewed arguments) and assert every element was compared.
fn check_args(
    name: &str,
    args: &[Arg],
    dom: Domain,
    seed: u64,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) {
    let mut r = rng(seed ^ 0x5eed);
    let inputs: Vec<Tensor> = args
        .iter()
        .map(|a| values(&mut r, &a.stored, dom))
        .collect();
    check_inputs(name, args, &inputs, GradcheckOptions::default(), f);
}

fn check_inputs(
    name: &str,
    args: &[Arg],
    inputs: &[Tensor],
    opts: GradcheckOptions,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) {
    let g = |xs: &[Tensor]| -> Result<Tensor> {
        let views: Vec<Tensor> = args
            .iter()
            .zip(xs)
            .map(|(a, x)| a.apply(x))
            .collect::<Result<_>>()?;
        f(&views)
    };
    let report =
        gradcheck_with(g, inputs, opts).unwrap_or_else(|e| panic!("{name} on {args:?}: {e}"));
    let total: usize = inputs.iter().map(|t| t.numel()).sum();
    assert_eq!(
        report.checked, total,
        "{name}: not every element was checked"
    );
    // Every input that requires grad gets a gradient of its own shape, even an empty one.
    assert_grads_present(name, args, inputs, &f);
}

/// Run `f` once with `Σ output` as the loss and assert each input's gradient exists and has
/// exactly the input's shape (a missing gradient of an empty tensor passes a finite
/// difference check vacuously).
fn assert_grads_present(
    name: &str,
    args: &[Arg],
    inputs: &[Tensor],
    f: &impl Fn(&[Tensor]) -> Result<Tensor>,
) {
    let leaves: Vec<Tensor> = inputs
        .iter()
        .map(|t| t.detach().copy().unwrap().requires_grad_(true).unwrap())
        .collect();
    let views: Vec<Tensor> = args
        .iter()
        .zip(&leaves)
        .map(|(a, x)| a.apply(x).unwrap())
        .collect();
    let loss = f(&views).unwrap().sum_all().unwrap();
    loss.backward().unwrap();
    for (i, x) in leaves.iter().enumerate() {
        let g = x
            .grad()
            .unwrap_or_else(|| panic!("{name}: input {i} {:?} got no gradient", x.shape()));
        assert_eq!(g.shape(), x.shape(), "{name}: input {i} gradient shape");
    }
}

fn all_close(got: &[f64], want: &[f64], atol: f64, rtol: f64) -> bool {
    got.len() == want.len()
        && got
            .iter()
            .zip(want)
            .all(|(g, w)| (g - w).abs() <= atol + rtol * w.abs())
}

// ----- elementwise binary ops ------------------------------------------------------------

type BinFn = fn(&Tensor, &Tensor) -> Result<Tensor>;

const BINARY: [(&str, BinFn, Domain, Domain); 6] = [
    ("add", Tensor::add, Domain::Any, Domain::Any),
    ("sub", Tensor::sub, Domain::Any, Domain::Any),
    ("mul", Tensor::mul, Domain::Any, Domain::Any),
    ("div", Tensor::div, Domain::Any, Domain::AwayFromZero),
    ("maximum", Tensor::maximum, Domain::Any, Domain::Any),
    ("minimum", Tensor::minimum, Domain::Any, Domain::Any),
];

/// Fixed shape pairs every binary op is checked on, besides the random ones.
fn binary_fixed_shapes() -> Vec<(Vec<usize>, Vec<usize>)> {
    vec![
        (vec![3, 4], vec![3, 4]),
        (vec![3, 1], vec![1, 4]),
        (vec![1, 4], vec![3, 1]),
        (vec![2, 3, 4], vec![4]),
        (vec![4], vec![2, 3, 4]),
        (vec![2, 1, 4], vec![3, 1]),
        (vec![], vec![2, 3]),
        (vec![2, 3], vec![]),
        (vec![1], vec![1]),
        (vec![0, 3], vec![1, 3]),
        (vec![1, 3], vec![0, 3]),
        (vec![0], vec![1]),
        (vec![1], vec![0]),
        (vec![2, 0], vec![2, 1]),
        (vec![0, 2], vec![0, 2]),
    ]
}

/// Values for a tie-sensitive op: `b` is redrawn until every broadcast pair differs by more
/// than 1e-3, so no finite difference step crosses a tie.
fn untied_inputs(seed: u64, a: &Arg, b: &Arg) -> Vec<Tensor> {
    let mut r = rng(seed);
    let ta = values(&mut r, &a.stored, Domain::Any);
    loop {
        let tb = values(&mut r, &b.stored, Domain::Any);
        let ok = no_grad(|| -> Result<bool> {
            let (va, vb) = (a.apply(&ta)?, b.apply(&tb)?);
            let d = va.sub(&vb)?.to_vec::<f64>()?;
            Ok(d.iter().all(|x| x.abs() > 1e-3))
        })
        .unwrap();
        if ok {
            return vec![ta, tb];
        }
    }
}

fn check_binary_case(seed: u64, sa: &[usize], sb: &[usize], views: bool) {
    let mut r = rng(seed);
    let (a, b) = if views {
        (Arg::random(&mut r, sa), Arg::random(&mut r, sb))
    } else {
        (Arg::plain(sa), Arg::plain(sb))
    };
    for (name, op, da, db) in BINARY {
        let args = [a.clone(), b.clone()];
        let f = move |x: &[Tensor]| op(&x[0], &x[1]);
        if matches!(name, "maximum" | "minimum") {
            let inputs = untied_inputs(seed, &a, &b);
            check_inputs(name, &args, &inputs, GradcheckOptions::default(), f);
        } else {
            let mut r = rng(seed ^ 0xb1);
            let inputs = vec![values(&mut r, &a.stored, da), values(&mut r, &b.stored, db)];
            check_inputs(name, &args, &inputs, GradcheckOptions::default(), f);
        }
    }
}

#[test]
fn binary_ops_fixed_shapes() {
    for (i, (sa, sb)) in binary_fixed_shapes().into_iter().enumerate() {
        check_binary_case(100 + i as u64, &sa, &sb, false);
        check_binary_case(200 + i as u64, &sa, &sb, true);
    }
}

#[test]
fn binary_ops_random_broadcast_and_views() {
    for seed in 0..40u64 {
        let mut r = rng(1000 + seed);
        let out = rand_shape(&mut r, 4, true);
        let (sa, sb) = match r.gen_range(0..3) {
            0 => (broadcast_partner(&mut r, &out), out.clone()),
            1 => (out.clone(), broadcast_partner(&mut r, &out)),
            _ => (
                broadcast_partner(&mut r, &out),
                broadcast_partner(&mut r, &out),
            ),
        };
        check_binary_case(1000 + seed, &sa, &sb, true);
    }
}

#[test]
fn binary_forward_values_on_views() {
    // The checks above compare derivatives only; pin the forward on strided broadcast views.
    let a = Tensor::from_vec((0..6).map(f64::from).collect(), &[2, 3]).unwrap();
    let at = a.t().unwrap(); // [[0,3],[1,4],[2,5]]
    let b = Tensor::from_vec(vec![10.0, 20.0], &[2]).unwrap();
    assert_eq!(
        at.add(&b).unwrap().to_vec::<f64>().unwrap(),
        vec![10., 23., 11., 24., 12., 25.]
    );
    assert_eq!(
        b.sub(&at).unwrap().to_vec::<f64>().unwrap(),
        vec![10., 17., 9., 16., 8., 15.]
    );
    let z = Tensor::zeros(&[0], DType::F64);
    let one = Tensor::ones(&[1], DType::F64);
    assert_eq!(z.mul(&one).unwrap().shape(), &[0]);
    assert_eq!(one.div(&z).unwrap().shape(), &[0]);
}

// ----- scalar affine ops -----------------------------------------------------------------

#[test]
fn affine_family() {
    type F = Box<dyn Fn(&Tensor) -> Result<Tensor>>;
    let ops: Vec<(&str, F)> = vec![
        ("affine", Box::new(|x| x.affine(-1.5, 0.25))),
        ("mul_scalar", Box::new(|x| x.mul_scalar(3.0))),
        ("add_scalar", Box::new(|x| x.add_scalar(-2.0))),
        ("neg", Box::new(|x| x.neg())),
    ];
    for (seed, shape) in unary_shapes().into_iter().enumerate() {
        let mut r = rng(300 + seed as u64);
        let arg = Arg::random(&mut r, &shape);
        for (name, op) in &ops {
            check_args(
                name,
                std::slice::from_ref(&arg),
                Domain::Any,
                seed as u64,
                |x| op(&x[0]),
            );
        }
    }
}

// ----- elementwise unary ops -------------------------------------------------------------

fn unary_shapes() -> Vec<Vec<usize>> {
    let mut shapes = vec![
        vec![3, 4],
        vec![2, 3, 4],
        vec![1, 3, 1],
        vec![],
        vec![5],
        vec![0, 4],
        vec![2, 0, 3],
    ];
    let mut r = rng(7);
    for _ in 0..12 {
        shapes.push(rand_shape(&mut r, 4, true));
    }
    shapes
}

#[test]
fn unary_ops() {
    type F = fn(&Tensor) -> Result<Tensor>;
    let ops: [(&str, F, Domain); 13] = [
        ("exp", Tensor::exp, Domain::Any),
        ("log", Tensor::log, Domain::Positive),
        ("sqrt", Tensor::sqrt, Domain::Positive),
        ("tanh", Tensor::tanh, Domain::Any),
        ("sigmoid", Tensor::sigmoid, Domain::Any),
        ("relu", Tensor::relu, Domain::AwayFromZero),
        ("gelu", Tensor::gelu, Domain::Any),
        ("gelu_erf", Tensor::gelu_erf, Domain::Any),
        ("sqr", Tensor::sqr, Domain::Any),
        ("powf(2.5)", |x| x.powf(2.5), Domain::Positive),
        ("powf(-1.5)", |x| x.powf(-1.5), Domain::Positive),
        ("powf(3)", |x| x.powf(3.0), Domain::Any),
        ("powf(0.5)", |x| x.powf(0.5), Domain::Positive),
    ];
    for (seed, shape) in unary_shapes().into_iter().enumerate() {
        let mut r = rng(400 + seed as u64);
        let arg = Arg::random(&mut r, &shape);
        for (name, op, dom) in ops {
            check_args(name, std::slice::from_ref(&arg), dom, seed as u64, |x| {
                op(&x[0])
            });
            // The same op on a plain leaf of that shape.
            check_args(name, &[Arg::plain(&shape)], dom, seed as u64, |x| op(&x[0]));
        }
    }
}

#[test]
fn unary_forward_values() {
    let x = Tensor::from_vec(vec![-1.0, 0.0, 0.5, 2.0], &[2, 2]).unwrap();
    let xt = x.t().unwrap(); // [[-1, 0.5], [0, 2]]
    let close = |t: Tensor, want: &[f64]| {
        let got = t.to_vec::<f64>().unwrap();
        assert!(all_close(&got, want, 1e-12, 1e-12), "{got:?} vs {want:?}");
    };
    close(xt.relu().unwrap(), &[0.0, 0.5, 0.0, 2.0]);
    close(xt.sqr().unwrap(), &[1.0, 0.25, 0.0, 4.0]);
    close(
        xt.sigmoid().unwrap(),
        &[
            1.0 / (1.0 + 1f64.exp()),
            1.0 / (1.0 + (-0.5f64).exp()),
            0.5,
            1.0 / (1.0 + (-2f64).exp()),
        ],
    );
    // GELU reference values (PyTorch, float64).
    close(
        Tensor::from_vec(vec![-1.0, 0.5, 2.0], &[3])
            .unwrap()
            .gelu_erf()
            .unwrap(),
        &[
            -0.15865525393145707,
            0.34573123063700656,
            1.9544997361036416,
        ],
    );
    close(
        Tensor::from_vec(vec![-1.0, 0.5, 2.0], &[3])
            .unwrap()
            .gelu()
            .unwrap(),
        &[-0.15880800939172324, 0.34571400982514394, 1.954597694087775],
    );
    // relu'(0) = 0 by convention.
    let z = Tensor::from_vec(vec![0.0, 1.0], &[2])
        .unwrap()
        .requires_grad_(true)
        .unwrap();
    z.relu().unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(z.grad().unwrap().to_vec::<f64>().unwrap(), vec![0.0, 1.0]);
}

// ----- reductions ------------------------------------------------------------------------

/// Random non-empty subsets (and the empty subset) of the dims of a rank-`r` tensor.
fn rand_dims(rng: &mut ChaCha8Rng, r: usize) -> Vec<usize> {
    (0..r).filter(|_| rng.gen_bool(0.5)).collect()
}

#[test]
fn sum_and_mean() {
    let mut cases: Vec<(Vec<usize>, Vec<usize>)> = vec![
        (vec![3, 4], vec![0]),
        (vec![3, 4], vec![1]),
        (vec![3, 4], vec![0, 1]),
        (vec![3, 4], vec![]),
        (vec![2, 3, 4], vec![0, 2]),
        (vec![2, 3, 4], vec![1]),
        (vec![1, 3, 1], vec![0, 2]),
        (vec![], vec![]),
        (vec![0, 3], vec![1]),
        (vec![3, 0], vec![0]),
    ];
    let mut r = rng(11);
    for _ in 0..20 {
        let s = rand_shape(&mut r, 4, false);
        let d = rand_dims(&mut r, s.len());
        cases.push((s, d));
    }
    for (i, (shape, dims)) in cases.into_iter().enumerate() {
        let mut r = rng(500 + i as u64);
        let arg = Arg::random(&mut r, &shape);
        for keep in [false, true] {
            let d = dims.clone();
            check_args(
                "sum",
                std::slice::from_ref(&arg),
                Domain::Any,
                i as u64,
                move |x| x[0].sum(&d, keep),
            );
            let d = dims.clone();
            check_args(
                "mean",
                std::slice::from_ref(&arg),
                Domain::Any,
                i as u64,
                move |x| x[0].mean(&d, keep),
            );
        }
        check_args(
            "sum_all",
            std::slice::from_ref(&arg),
            Domain::Any,
            i as u64,
            |x| x[0].sum_all(),
        );
        if shape.iter().all(|&d| d > 0) {
            check_args(
                "mean_all",
                std::slice::from_ref(&arg),
                Domain::Any,
                i as u64,
                |x| x[0].mean_all(),
            );
        }
    }
}

#[test]
fn sum_mean_values_and_empty_reductions() {
    let x = Tensor::from_vec((1..=6).map(f64::from).collect(), &[2, 3]).unwrap();
    let xt = x.t().unwrap(); // [3,2]: [[1,4],[2,5],[3,6]]
    assert_eq!(
        xt.sum(&[1], false).unwrap().to_vec::<f64>().unwrap(),
        vec![5., 7., 9.]
    );
    assert_eq!(xt.sum(&[0], true).unwrap().shape(), &[1, 2]);
    assert_eq!(
        xt.mean(&[0], false).unwrap().to_vec::<f64>().unwrap(),
        vec![2., 5.]
    );
    // Σ over no element is 0; the mean over no element is NaN (0/0, as PyTorch).
    let e = Tensor::zeros(&[0, 3], DType::F64);
    assert_eq!(e.sum_all().unwrap().item().unwrap(), 0.0);
    assert_eq!(
        e.sum(&[0], false).unwrap().to_vec::<f64>().unwrap(),
        vec![0.; 3]
    );
    assert!(e.mean_all().unwrap().item().unwrap().is_nan());
    assert_eq!(e.sum(&[1], false).unwrap().shape(), &[0]);
    // max over an empty dim has no value: an error, not -inf.
    assert!(e.max(&[0], false).is_err());
    assert_eq!(e.max(&[1], false).unwrap().shape(), &[0]);
}

#[test]
fn max_reduction() {
    let mut cases: Vec<(Vec<usize>, Vec<usize>)> = vec![
        (vec![3, 4], vec![0]),
        (vec![3, 4], vec![1]),
        (vec![3, 4], vec![0, 1]),
        (vec![2, 3, 4], vec![0, 2]),
        (vec![1, 3, 1], vec![0, 2]),
        (vec![2, 3], vec![]),
        (vec![5], vec![0]),
        (vec![0, 3], vec![1]),
    ];
    let mut r = rng(12);
    for _ in 0..20 {
        let s = rand_shape(&mut r, 4, false);
        let d = rand_dims(&mut r, s.len());
        cases.push((s, d));
    }
    for (i, (shape, dims)) in cases.into_iter().enumerate() {
        let mut r = rng(600 + i as u64);
        let arg = Arg::random(&mut r, &shape);
        for keep in [false, true] {
            let d = dims.clone();
            // Normal values are distinct almost surely: no ties within a step.
            check_args(
                "max",
                std::slice::from_ref(&arg),
                Domain::Any,
                i as u64,
                move |x| x[0].max(&d, keep),
            );
        }
    }
}

#[test]
fn max_ties_split_evenly_on_views() {
    // Ties along dim 0 of a transposed view: columns of [[2,5,5],[2,1,7]]ᵀ.
    let x = Tensor::from_vec(vec![2.0, 5.0, 5.0, 2.0, 1.0, 7.0], &[2, 3])
        .unwrap()
        .requires_grad_(true)
        .unwrap();
    let m = x.t().unwrap().max(&[0], false).unwrap(); // max over rows of xᵀ = max of x rows
    assert_eq!(m.to_vec::<f64>().unwrap(), vec![5.0, 7.0]);
    m.sum_all().unwrap().backward().unwrap();
    assert_eq!(
        x.grad().unwrap().to_vec::<f64>().unwrap(),
        vec![0.0, 0.5, 0.5, 0.0, 0.0, 1.0]
    );
    // Three-way tie over all dims.
    let y = Tensor::full(&[3], 4.0, DType::F64)
        .requires_grad_(true)
        .unwrap();
    y.max(&[0], true)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g = y.grad().unwrap().to_vec::<f64>().unwrap();
    assert!(all_close(&g, &[1.0 / 3.0; 3], 1e-15, 0.0), "{g:?}");
}

// ----- matmul ----------------------------------------------------------------------------

/// A view of a stored operand whose last two dims are transposed, or a plain one.
fn matmul_arg(rng: &mut ChaCha8Rng, shape: &[usize]) -> Arg {
    let r = shape.len();
    if rng.gen_bool(0.4) {
        let mut stored = shape.to_vec();
        stored.swap(r - 2, r - 1);
        Arg {
            stored,
            view: View::Transpose(r - 2, r - 1),
        }
    } else {
        Arg::random(rng, shape)
    }
}

#[test]
fn matmul_fixed_cases() {
    let cases: Vec<(Vec<usize>, Vec<usize>)> = vec![
        (vec![3, 4], vec![4, 5]),
        (vec![1, 4], vec![4, 1]),
        (vec![4, 1], vec![1, 3]),
        (vec![2, 3, 4], vec![4, 5]),
        (vec![3, 4], vec![2, 4, 5]),
        (vec![2, 1, 3, 4], vec![1, 3, 4, 2]),
        (vec![2, 3, 4], vec![2, 4, 2]),
        (vec![0, 3], vec![3, 2]),
        (vec![2, 0], vec![0, 3]),
        (vec![2, 3], vec![3, 0]),
        (vec![0, 2, 3], vec![3, 4]),
        (vec![1, 1], vec![1, 1]),
    ];
    for (i, (sa, sb)) in cases.into_iter().enumerate() {
        for views in [false, true] {
            let mut r = rng(700 + i as u64);
            let (a, b) = if views {
                (matmul_arg(&mut r, &sa), matmul_arg(&mut r, &sb))
            } else {
                (Arg::plain(&sa), Arg::plain(&sb))
            };
            check_args("matmul", &[a, b], Domain::Any, i as u64, |x| {
                x[0].matmul(&x[1])
            });
        }
    }
}

#[test]
fn linear_with_and_without_bias() {
    // x [..., in] (plain or a strided view), W [out, in] (a view too), b [out]; zero-size
    // rows, inputs and outputs included.
    let cases: Vec<(Vec<usize>, [usize; 2])> = vec![
        (vec![3, 4], [5, 4]),
        (vec![2, 3, 4], [2, 4]),
        (vec![4], [3, 4]),
        (vec![0, 4], [3, 4]),
        (vec![3, 0], [2, 0]),
        (vec![3, 4], [0, 4]),
    ];
    for (i, (sx, sw)) in cases.into_iter().enumerate() {
        for views in [false, true] {
            let mut r = rng(900 + i as u64);
            let x = if views && sx.len() >= 2 {
                matmul_arg(&mut r, &sx)
            } else {
                Arg::plain(&sx)
            };
            let w = if views {
                matmul_arg(&mut r, &sw)
            } else {
                Arg::plain(&sw)
            };
            let b = Arg::plain(&[sw[0]]);
            check_args(
                "linear",
                &[x.clone(), w.clone(), b],
                Domain::Any,
                i as u64,
                |t| t[0].linear(&t[1], Some(&t[2])),
            );
            check_args(
                "linear_act gelu",
                &[x.clone(), w.clone(), Arg::plain(&[sw[0]])],
                Domain::Any,
                i as u64,
                |t| t[0].linear_act(&t[1], Some(&t[2]), Activation::Gelu),
            );
            check_args(
                "linear_act gelu (no bias)",
                &[x.clone(), w.clone()],
                Domain::Any,
                i as u64,
                |t| t[0].linear_act(&t[1], None, Activation::Gelu),
            );
            check_args("linear (no bias)", &[x, w], Domain::Any, i as u64, |t| {
                t[0].linear(&t[1], None)
            });
        }
    }
}

#[test]
fn linear_values_and_errors() {
    let x = leaf(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
    let w = leaf(&[1.0, 0.0, -1.0, 0.5, 0.5, 0.5], &[2, 3]);
    let b = leaf(&[10.0, 20.0], &[2]);
    let y = x.linear(&w, Some(&b)).unwrap();
    assert_eq!(y.to_vec::<f64>().unwrap(), [8.0, 23.0, 8.0, 27.5]);
    // No input features: the output is the bias on every row.
    let y0 = leaf(&[], &[3, 0])
        .linear(&leaf(&[], &[2, 0]), Some(&b))
        .unwrap();
    assert_eq!(
        y0.to_vec::<f64>().unwrap(),
        [10.0, 20.0, 10.0, 20.0, 10.0, 20.0]
    );
    assert!(matches!(
        x.linear(&leaf(&[0.0; 4], &[2, 2]), None),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        x.linear(&leaf(&[0.0; 3], &[3]), None),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        x.linear(&w, Some(&leaf(&[0.0; 3], &[3]))),
        Err(Error::InvalidArgument { .. })
    ));
    // Output [2³¹, 2³¹]: countable, but too large to allocate.
    let huge = leaf(&[], &[1 << 31, 0]);
    assert!(matches!(
        huge.linear(&huge, None),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn matmul_random_batched_views() {
    for seed in 0..30u64 {
        let mut r = rng(800 + seed);
        let batch = rand_shape(&mut r, 2, true);
        let (m, k, n) = (
            r.gen_range(0..=4usize),
            r.gen_range(0..=4usize),
            r.gen_range(1..=4usize),
        );
        let ba = broadcast_partner(&mut r, &batch);
        let bb = if r.gen_bool(0.5) {
            batch.clone()
        } else {
            broadcast_partner(&mut r, &batch)
        };
        let mut sa = ba.clone();
        sa.extend([m, k]);
        let mut sb = bb.clone();
        sb.extend([k, n]);
        let (a, b) = (matmul_arg(&mut r, &sa), matmul_arg(&mut r, &sb));
        check_args("matmul", &[a, b], Domain::Any, seed, |x| x[0].matmul(&x[1]));
    }
}

#[test]
fn matmul_forward_matches_naive_on_views() {
    let mut r = rng(9);
    for trial in 0..10 {
        let (m, k, n) = (
            r.gen_range(1..=9usize),
            r.gen_range(1..=9usize),
            r.gen_range(1..=9usize),
        );
        let a_arg = matmul_arg(&mut r, &[2, m, k]);
        let b_arg = matmul_arg(&mut r, &[k, n]);
        let a = a_arg
            .apply(&values(&mut r, &a_arg.stored, Domain::Any))
            .unwrap();
        let b = b_arg
            .apply(&values(&mut r, &b_arg.stored, Domain::Any))
            .unwrap();
        let got = a.matmul(&b).unwrap();
        assert_eq!(got.shape(), &[2, m, n]);
        let (av, bv, gv) = (
            a.to_vec::<f64>().unwrap(),
            b.to_vec::<f64>().unwrap(),
            got.to_vec::<f64>().unwrap(),
        );
        for bi in 0..2 {
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|p| av[bi * m * k + i * k + p] * bv[p * n + j])
                        .sum();
                    let g = gv[bi * m * n + i * n + j];
                    assert!((g - want).abs() < 1e-12, "trial {trial}: {g} vs {want}");
                }
            }
        }
    }
}

// ----- softmax ---------------------------------------------------------------------------

#[test]
fn softmax_and_log_softmax() {
    let mut cases: Vec<(Vec<usize>, usize)> = vec![
        (vec![5], 0),
        (vec![3, 4], 0),
        (vec![3, 4], 1),
        (vec![2, 3, 4], 1),
        (vec![2, 3, 4], 2),
        (vec![3, 1], 1),
        (vec![0, 4], 1),
        (vec![3, 0], 0),
        (vec![4, 0], 1),
    ];
    let mut r = rng(13);
    for _ in 0..12 {
        let mut s = rand_shape(&mut r, 4, true);
        if s.is_empty() {
            s.push(3);
        }
        let d = r.gen_range(0..s.len());
        cases.push((s, d));
    }
    for (i, (shape, dim)) in cases.into_iter().enumerate() {
        let mut r = rng(900 + i as u64);
        let arg = Arg::random(&mut r, &shape);
        check_args(
            "softmax",
            std::slice::from_ref(&arg),
            Domain::Any,
            i as u64,
            move |x| x[0].softmax(dim),
        );
        check_args("log_softmax", &[arg], Domain::Any, i as u64, move |x| {
            x[0].log_softmax(dim)
        });
    }
}

#[test]
fn softmax_matches_composite() {
    // The fused kernels against exp / sum / div (and x − log Σ e^x) on a permuted view.
    let mut r = rng(14);
    let x = values(&mut r, &[3, 4, 2], Domain::Any);
    let v = x.permute(&[2, 0, 1]).unwrap(); // [2,3,4]
    for dim in 0..3 {
        let fused = v.softmax(dim).unwrap().to_vec::<f64>().unwrap();
        let e = v.exp().unwrap();
        let comp = e
            .div(&e.sum(&[dim], true).unwrap())
            .unwrap()
            .to_vec::<f64>()
            .unwrap();
        assert!(all_close(&fused, &comp, 1e-14, 1e-12));
        let lf = v.log_softmax(dim).unwrap().to_vec::<f64>().unwrap();
        let lc = v
            .sub(&e.sum(&[dim], true).unwrap().log().unwrap())
            .unwrap()
            .to_vec::<f64>()
            .unwrap();
        assert!(all_close(&lf, &lc, 1e-13, 1e-12));
    }
}

// ----- joining ---------------------------------------------------------------------------

#[test]
fn cat_and_stack() {
    for seed in 0..25u64 {
        let mut r = rng(1100 + seed);
        let mut base = rand_shape(&mut r, 3, false);
        if base.is_empty() {
            base.push(2);
        }
        let dim = r.gen_range(0..base.len());
        let parts = r.gen_range(1..=3);
        let args: Vec<Arg> = (0..parts)
            .map(|p| {
                let mut s = base.clone();
                // A zero-size part now and then.
                s[dim] = if p == 1 && seed % 4 == 0 {
                    0
                } else {
                    r.gen_range(1..=3)
                };
                Arg::random(&mut r, &s)
            })
            .collect();
        check_args("cat", &args, Domain::Any, seed, move |x| {
            let refs: Vec<&Tensor> = x.iter().collect();
            Tensor::cat(&refs, dim)
        });
        // stack: equally shaped parts, a new dim anywhere in 0..=rank.
        let sdim = r.gen_range(0..=base.len());
        let sargs: Vec<Arg> = (0..parts).map(|_| Arg::random(&mut r, &base)).collect();
        check_args("stack", &sargs, Domain::Any, seed, move |x| {
            let refs: Vec<&Tensor> = x.iter().collect();
            Tensor::stack(&refs, sdim)
        });
    }
    // One tensor used twice in a cat: the two slices' gradients add up.
    check_args("cat(x, x²)", &[Arg::plain(&[2, 3])], Domain::Any, 1, |x| {
        Tensor::cat(&[&x[0], &x[0].sqr()?, &x[0]], 1)
    });
}

#[test]
fn cat_values_on_views() {
    let a = Tensor::from_vec((0..6).map(f64::from).collect(), &[2, 3]).unwrap();
    let b = Tensor::from_vec(vec![9.0, 8.0], &[2, 1]).unwrap();
    let c = Tensor::cat(&[&a.narrow(1, 1, 2).unwrap(), &b], 1).unwrap();
    assert_eq!(c.to_vec::<f64>().unwrap(), vec![1., 2., 9., 4., 5., 8.]);
    let d = Tensor::cat(&[&a.t().unwrap(), &a.t().unwrap()], 0).unwrap();
    assert_eq!(
        d.to_vec::<f64>().unwrap(),
        vec![0., 3., 1., 4., 2., 5., 0., 3., 1., 4., 2., 5.]
    );
    let s = Tensor::stack(&[&b, &b], 2).unwrap();
    assert_eq!(s.shape(), &[2, 1, 2]);
    assert_eq!(s.to_vec::<f64>().unwrap(), vec![9., 9., 8., 8.]);
}

// ----- shape ops -------------------------------------------------------------------------

#[test]
fn view_ops() {
    for seed in 0..15u64 {
        let mut r = rng(1200 + seed);
        let mut shape = rand_shape(&mut r, 4, seed % 5 == 0);
        while shape.len() < 2 {
            shape.push(r.gen_range(1..=3));
        }
        let rank = shape.len();
        let arg = Arg::random(&mut r, &shape);
        let a = [arg.clone()];
        // A nonlinear tail makes the upstream gradient depend on position.
        check_args("copy", &a, Domain::Any, seed, |x| x[0].copy()?.sqr());
        check_args("contiguous", &a, Domain::Any, seed, |x| {
            x[0].contiguous()?.sqr()
        });
        let n = shape.iter().product::<usize>();
        check_args("reshape flat", &a, Domain::Any, seed, move |x| {
            x[0].reshape(&[n])?.sqr()
        });
        let split: Vec<usize> = if n % 2 == 0 && n > 0 {
            vec![2, n / 2]
        } else {
            vec![1, n, 1]
        };
        check_args("reshape split", &a, Domain::Any, seed, move |x| {
            x[0].reshape(&split)?.sqr()
        });
        check_args("flatten_all", &a, Domain::Any, seed, |x| {
            x[0].flatten_all()?.sqr()
        });
        let (d0, d1) = (r.gen_range(0..rank), r.gen_range(0..rank));
        check_args("transpose", &a, Domain::Any, seed, move |x| {
            x[0].transpose(d0, d1)?.sqr()
        });
        check_args("t", &a, Domain::Any, seed, |x| x[0].t()?.sqr());
        let mut perm: Vec<usize> = (0..rank).collect();
        for i in (1..rank).rev() {
            perm.swap(i, r.gen_range(0..=i));
        }
        check_args("permute", &a, Domain::Any, seed, move |x| {
            x[0].permute(&perm)?.sqr()
        });
        let nd = r.gen_range(0..rank);
        let size = shape[nd];
        let start = r.gen_range(0..=size);
        let len = r.gen_range(0..=size - start);
        check_args("narrow", &a, Domain::Any, seed, move |x| {
            x[0].narrow(nd, start, len)?.sqr()
        });
        let ud = r.gen_range(0..=rank);
        check_args("unsqueeze", &a, Domain::Any, seed, move |x| {
            x[0].unsqueeze(ud)?.sqr()
        });
        check_args("unsqueeze+squeeze", &a, Domain::Any, seed, move |x| {
            x[0].unsqueeze(ud)?.squeeze(ud)?.sqr()
        });
        // broadcast_as: size-1 dims of the input repeat, new leading dims are added.
        let small = broadcast_partner(&mut r, &shape);
        let sa = [Arg::random(&mut r, &small)];
        let target = shape.clone();
        let mut bigger = vec![2];
        bigger.extend(&shape);
        check_args("broadcast_as", &sa, Domain::Any, seed, move |x| {
            x[0].broadcast_as(&target)?.sqr()
        });
        check_args("broadcast_as lead", &sa, Domain::Any, seed, move |x| {
            x[0].broadcast_as(&bigger)?.sqr()
        });
    }
    // Empty views whose offset points past the end of their storage (a narrow at the end
    // of a narrowed view) are valid inputs to every kind of kernel.
    let end_view = |x: &Tensor| x.narrow(1, 2, 1)?.narrow(0, 2, 0);
    check_args(
        "empty view: exp",
        &[Arg::plain(&[2, 3])],
        Domain::Any,
        4,
        move |x| end_view(&x[0])?.exp(),
    );
    check_args(
        "empty view: add",
        &[Arg::plain(&[2, 3])],
        Domain::Any,
        4,
        move |x| end_view(&x[0])?.add(&end_view(&x[0])?),
    );
    check_args(
        "empty view: copy/sum",
        &[Arg::plain(&[2, 3])],
        Domain::Any,
        4,
        move |x| end_view(&x[0])?.copy()?.sum(&[0], false),
    );
    check_args(
        "empty view: matmul",
        &[Arg::plain(&[2, 3])],
        Domain::Any,
        4,
        move |x| end_view(&x[0])?.t()?.matmul(&end_view(&x[0])?),
    );
    check_args(
        "empty view: softmax",
        &[Arg::plain(&[2, 3])],
        Domain::Any,
        4,
        move |x| end_view(&x[0])?.softmax(1),
    );
    // squeeze of a size-1 dim of a strided view.
    check_args("squeeze", &[Arg::plain(&[3, 1, 4])], Domain::Any, 3, |x| {
        x[0].permute(&[2, 1, 0])?.squeeze(1)?.sqr()
    });
}

#[test]
fn to_dtype_round_trip() {
    // f64 → f32 → f64 is linear; a large step keeps f32 rounding out of the difference.
    let opts = GradcheckOptions {
        eps: 1e-1,
        atol: 1e-4,
        rtol: 1e-4,
        seed: 0,
    };
    for (i, shape) in [vec![3, 4], vec![0, 2], vec![]].into_iter().enumerate() {
        let mut r = rng(1300 + i as u64);
        let arg = Arg::random(&mut r, &shape);
        let inputs = vec![values(&mut r, &arg.stored, Domain::Any)];
        check_inputs("to_dtype", &[arg], &inputs, opts, |x| {
            x[0].to_dtype(DType::F32)?
                .mul_scalar(3.0)?
                .to_dtype(DType::F64)
        });
    }
    // The gradient comes back in the leaf's dtype.
    let x = Tensor::from_vec(vec![1.0f32, 2.0], &[2])
        .unwrap()
        .requires_grad_(true)
        .unwrap();
    x.to_dtype(DType::F64)
        .unwrap()
        .mul_scalar(2.0)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g = x.grad().unwrap();
    assert_eq!(g.dtype(), DType::F32);
    assert_eq!(g.to_vec::<f32>().unwrap(), vec![2.0, 2.0]);
}

#[test]
fn composite_chains() {
    // A small network mixing every family, with a bias broadcast and a transposed weight.
    let args = [
        Arg::plain(&[4, 3]),
        Arg {
            stored: vec![5, 3],
            view: View::Transpose(0, 1),
        },
        Arg::plain(&[5]),
    ];
    check_args("mlp", &args, Domain::Any, 1, |x| {
        let h = x[0].matmul(&x[1])?.add(&x[2])?.gelu()?;
        let p = h.log_softmax(1)?;
        let m = h.max(&[0], true)?;
        p.mul(&m)?.mean(&[0], false)?.tanh()
    });
    check_args("norm-like", &[Arg::plain(&[3, 4])], Domain::Any, 2, |x| {
        let mu = x[0].mean(&[1], true)?;
        let c = x[0].sub(&mu)?;
        let var = c.sqr()?.mean(&[1], true)?;
        c.div(&var.add_scalar(1e-5)?.sqrt()?)
    });
}

#[test]
fn gradcheck_detects_a_wrong_gradient() {
    // The checker itself must fail on a wrong rule: a custom op claiming d(2x)/dx = 3.
    let x = Tensor::from_vec(vec![0.5, -1.0], &[2]).unwrap();
    let err = gradcheck(
        |x| {
            let y = no_grad(|| x[0].mul_scalar(2.0))?;
            Ok(y.record(&[&x[0]], "wrong", |g| Ok(vec![Some(g.mul_scalar(3.0)?)])))
        },
        &[x],
    )
    .unwrap_err();
    match err {
        Error::GradientMismatch {
            analytic, numeric, ..
        } => {
            assert!(
                (analytic / numeric - 1.5).abs() < 1e-6,
                "{analytic} {numeric}"
            );
        }
        e => panic!("unexpected error {e}"),
    }
    // And it handles zero-element inputs and outputs.
    let e = Tensor::zeros(&[0, 3], DType::F64);
    let rep = gradcheck(|x| x[0].exp(), &[e]).unwrap();
    assert_eq!(rep.checked, 0);
}

// ----- autograd rules --------------------------------------------------------------------

fn leaf(v: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_f64s(v, shape, DType::F64)
        .unwrap()
        .requires_grad_(true)
        .unwrap()
}

fn grad_vec(t: &Tensor) -> Vec<f64> {
    t.grad().expect("gradient").to_vec::<f64>().unwrap()
}

#[test]
fn gradients_accumulate_over_two_backward_calls() {
    let x = leaf(&[1.0, 2.0, 3.0], &[3]);
    x.mul_scalar(2.0)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert_eq!(grad_vec(&x), vec![2.0; 3]);
    x.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(grad_vec(&x), vec![4.0, 6.0, 8.0]);
    x.zero_grad();
    assert!(x.grad().is_none());
    x.sum_all().unwrap().backward().unwrap();
    assert_eq!(grad_vec(&x), vec![1.0; 3]);
}

#[test]
fn accumulated_gradient_does_not_alias_the_graph() {
    // The stored grad must be a fresh tensor: a later accumulation must not write into a
    // tensor the user holds, and the first grad (a broadcast of the seed) must be dense.
    let x = leaf(&[1.0, 2.0], &[2]);
    x.sum_all().unwrap().backward().unwrap();
    let g1 = x.grad().unwrap();
    assert!(g1.is_contiguous());
    x.sum_all().unwrap().backward().unwrap();
    assert_eq!(g1.to_vec::<f64>().unwrap(), vec![1.0, 1.0]);
    assert_eq!(grad_vec(&x), vec![2.0, 2.0]);
}

#[test]
fn backward_twice_errors_unless_graph_retained() {
    let x = leaf(&[0.5, -0.5], &[2]);
    let y = x.exp().unwrap().mul(&x).unwrap().sum_all().unwrap();
    y.backward().unwrap();
    match y.backward() {
        Err(Error::Backward(msg)) => assert!(msg.contains("freed"), "{msg}"),
        r => panic!("expected a freed-graph error, got {r:?}"),
    }
    // d(x e^x)/dx = (1 + x) e^x, accumulated once only.
    let want: Vec<f64> = [0.5f64, -0.5].iter().map(|v| (1.0 + v) * v.exp()).collect();
    assert!(all_close(&grad_vec(&x), &want, 1e-15, 1e-14));

    let z = leaf(&[2.0], &[1]);
    let w = z.sqr().unwrap().sum_all().unwrap();
    w.backward_retain_graph().unwrap();
    w.backward_retain_graph().unwrap();
    assert_eq!(grad_vec(&z), vec![8.0]);
    w.backward().unwrap();
    assert_eq!(grad_vec(&z), vec![12.0]);
    assert!(matches!(w.backward(), Err(Error::Backward(_))));
}

#[test]
fn freed_intermediate_shared_by_two_losses_errors() {
    // Two losses sharing an intermediate: after the first frees it, the second must error
    // rather than silently skip the shared part.
    let x = leaf(&[1.0, 2.0], &[2]);
    let h = x.exp().unwrap();
    let l1 = h.sum_all().unwrap();
    let l2 = h.sqr().unwrap().sum_all().unwrap();
    l1.backward().unwrap();
    assert!(matches!(l2.backward(), Err(Error::Backward(_))));
}

#[test]
fn no_grad_records_nothing() {
    let x = leaf(&[1.0, 2.0], &[2]);
    let y = no_grad(|| x.mul_scalar(3.0).unwrap().exp().unwrap().sum_all().unwrap());
    assert!(!y.requires_grad());
    assert!(y.is_leaf());
    assert!(matches!(y.backward(), Err(Error::Backward(_))));
    assert!(x.grad().is_none());
    assert!(engine::is_grad_enabled());
    // Nested guards restore the previous mode.
    no_grad(|| {
        no_grad(|| assert!(!engine::is_grad_enabled()));
        assert!(!engine::is_grad_enabled());
        let v = x.t();
        assert!(v.is_err()); // rank 1 has no t(); errors still propagate
        let n = x.narrow(0, 0, 1).unwrap();
        assert!(!n.requires_grad());
    });
    assert!(engine::is_grad_enabled());
    // Recording resumes afterwards.
    let z = x.mul_scalar(3.0).unwrap().sum_all().unwrap();
    assert!(z.requires_grad());
    z.backward().unwrap();
    assert_eq!(grad_vec(&x), vec![3.0, 3.0]);
}

#[test]
fn detach_cuts_the_graph() {
    let x = leaf(&[1.0, 2.0], &[2]);
    let d = x.detach();
    assert!(!d.requires_grad());
    assert!(d.is_leaf());
    assert_eq!(d.to_vec::<f64>().unwrap(), vec![1.0, 2.0]);
    // L = Σ (x ⊙ detach(x) + x): gradient detach(x) + 1, not 2x + 1.
    let l = x.mul(&d).unwrap().add(&x).unwrap().sum_all().unwrap();
    l.backward().unwrap();
    assert_eq!(grad_vec(&x), vec![2.0, 3.0]);
    // Detaching an intermediate stops the flow to everything before it.
    let y = x.exp().unwrap().detach();
    assert!(y.sum_all().unwrap().backward().is_err());
    // A detached tensor can become a new leaf of its own.
    let y = y.requires_grad_(true).unwrap();
    y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let ev: Vec<f64> = [1f64, 2.0].iter().map(|v| 2.0 * v.exp()).collect();
    assert!(all_close(&grad_vec(&y), &ev, 1e-12, 1e-12));
    assert_eq!(grad_vec(&x), vec![2.0, 3.0]);
}

#[test]
fn backward_needs_one_element() {
    let x = leaf(&[1.0, 2.0, 3.0, 4.0], &[2, 2]);
    let y = x.mul_scalar(2.0).unwrap();
    match y.backward() {
        Err(Error::Backward(msg)) => assert!(msg.contains("one-element"), "{msg}"),
        r => panic!("expected an error, got {r:?}"),
    }
    assert!(x.grad().is_none());
    // A one-element tensor of any rank is a valid root.
    let s = y.sum(&[0, 1], true).unwrap();
    assert_eq!(s.shape(), &[1, 1]);
    s.backward().unwrap();
    assert_eq!(grad_vec(&x), vec![2.0; 4]);
    // A tensor that does not require grad is no root.
    let c = Tensor::scalar(1.0, DType::F64);
    assert!(matches!(c.backward(), Err(Error::Backward(_))));
    // Non-leaves cannot change requires_grad.
    assert!(y.requires_grad_(false).is_err());
}

#[test]
fn only_leaves_get_grad() {
    let x = leaf(&[1.0, 2.0], &[2]);
    let c = Tensor::from_vec(vec![3.0, 4.0], &[2]).unwrap();
    let h = x.mul(&c).unwrap();
    h.sum_all().unwrap().backward().unwrap();
    assert!(h.grad().is_none());
    assert!(c.grad().is_none());
    assert_eq!(grad_vec(&x), vec![3.0, 4.0]);
}

#[test]
fn gradients_keep_views_separate() {
    // x used through two overlapping strided views and directly.
    let x = leaf(&(1..=6).map(f64::from).collect::<Vec<_>>(), &[2, 3]);
    let a = x.t().unwrap().narrow(0, 1, 2).unwrap(); // [[2,5],[3,6]]
    let b = x.narrow(1, 0, 2).unwrap(); // [[1,2],[4,5]]
    let l = a
        .mul(&b)
        .unwrap()
        .sum_all()
        .unwrap()
        .add(&x.sum_all().unwrap())
        .unwrap();
    l.backward().unwrap();
    // dL/dx: from a: b placed at xᵀ[1..3] (x[:,1..3] transposed) ; from b: a at x[:, 0..2].
    // a[i][j] = x[j][i+1], b[i][j] = x[i][j]; L = Σ_ij x[j][i+1]·x[i][j] + Σ x.
    let xv: Vec<f64> = (1..=6).map(f64::from).collect();
    let at = |r: usize, c: usize| xv[r * 3 + c];
    let mut want = [1.0; 6];
    for i in 0..2 {
        for j in 0..2 {
            want[j * 3 + i + 1] += at(i, j);
            want[i * 3 + j] += at(j, i + 1);
        }
    }
    assert_eq!(grad_vec(&x), want.to_vec());
}

// ----- large tensors (parallel kernels) and deep graphs ------------------------------------

#[test]
fn large_tensors_match_naive_values() {
    // Big enough for the multithreaded paths of the elementwise, reduction, softmax and
    // matmul kernels; checked against plain loops.
    let mut r = rng(21);
    let (m, n) = (300, 257);
    let x = values(&mut r, &[n, m], Domain::Any);
    let xt = x.t().unwrap(); // [m, n], strided
    let xv = x.to_vec::<f64>().unwrap();
    let at = |i: usize, j: usize| xv[j * m + i]; // xt[i][j]
    let bias = values(&mut r, &[n], Domain::Any);
    let bv = bias.to_vec::<f64>().unwrap();

    let s = xt.add(&bias).unwrap().to_vec::<f64>().unwrap();
    for i in 0..m {
        for j in 0..n {
            assert_eq!(s[i * n + j], at(i, j) + bv[j]);
        }
    }
    let c = xt.contiguous().unwrap();
    for (src, name) in [(&xt, "strided"), (&c, "dense")] {
        let s0 = src.sum(&[0], false).unwrap().to_vec::<f64>().unwrap();
        let s1 = src.sum(&[1], false).unwrap().to_vec::<f64>().unwrap();
        let m1 = src.max(&[1], false).unwrap().to_vec::<f64>().unwrap();
        assert_eq!(s0.len(), n);
        for (j, &got) in s0.iter().enumerate() {
            let want: f64 = (0..m).map(|i| at(i, j)).sum();
            assert!((got - want).abs() < 1e-10, "{name} sum0[{j}]");
        }
        for i in 0..m {
            let want: f64 = (0..n).map(|j| at(i, j)).sum();
            assert!((s1[i] - want).abs() < 1e-10, "{name} sum1[{i}]");
            let mx = (0..n).map(|j| at(i, j)).fold(f64::NEG_INFINITY, f64::max);
            assert_eq!(m1[i], mx, "{name} max[{i}]");
        }
        let p = src.softmax(1).unwrap().to_vec::<f64>().unwrap();
        for i in (0..m).step_by(37) {
            let mx = (0..n).map(|j| at(i, j)).fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = (0..n).map(|j| (at(i, j) - mx).exp()).sum();
            for j in 0..n {
                let want = (at(i, j) - mx).exp() / z;
                assert!((p[i * n + j] - want).abs() < 1e-14, "{name} softmax");
            }
        }
    }
    // One large product (row-split across threads) on a transposed operand.
    let w = values(&mut r, &[64, n], Domain::Any);
    let wv = w.to_vec::<f64>().unwrap();
    let y = xt.matmul(&w.t().unwrap()).unwrap().to_vec::<f64>().unwrap();
    for i in (0..m).step_by(7) {
        for k in 0..64 {
            let want: f64 = (0..n).map(|j| at(i, j) * wv[k * n + j]).sum();
            assert!((y[i * 64 + k] - want).abs() < 1e-9, "matmul[{i}][{k}]");
        }
    }
    // Gradients through the large kernels: d Σ (xt + b)² / db = 2 Σ_i (xt + b).
    let b = bias.detach().requires_grad_(true).unwrap();
    xt.add(&b)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let gb = grad_vec(&b);
    for j in 0..n {
        let want: f64 = (0..m).map(|i| 2.0 * (at(i, j) + bv[j])).sum();
        assert!((gb[j] - want).abs() < 1e-9 * want.abs().max(1.0), "db[{j}]");
    }
}

#[test]
fn deep_graphs_backward_and_drop() {
    // A long chain must neither overflow the stack when walked nor when dropped unused.
    const DEPTH: usize = 100_000;
    let x = leaf(&[1.0], &[1]);
    let mut y = x.clone();
    for _ in 0..DEPTH {
        y = y.add_scalar(1.0).unwrap();
    }
    assert_eq!(y.to_vec::<f64>().unwrap(), vec![1.0 + DEPTH as f64]);
    y.sum_all().unwrap().backward().unwrap();
    assert_eq!(grad_vec(&x), vec![1.0]);

    let mut z = x.clone();
    for _ in 0..DEPTH {
        z = z.mul_scalar(1.0).unwrap();
    }
    assert!(z.requires_grad());
    drop(z); // never backpropagated: the whole graph is freed here
}

#[test]
fn f32_softmax_matches_f64() {
    // The f32 kernels use their own vectorized exponential; compare with f64 (libm) on
    // wide-ranging logits, including rows with very negative entries and a -inf.
    let mut r = rng(31);
    let mut v: Vec<f64> = (0..50 * 300).map(|_| r.gen_range(-40.0..40.0)).collect();
    v[7] = f64::NEG_INFINITY;
    v[301] = -1e4;
    let x64 = Tensor::from_vec(v, &[50, 300]).unwrap();
    let x32 = x64.to_dtype(DType::F32).unwrap();
    let x64 = x32.to_dtype(DType::F64).unwrap(); // the same (rounded) logits
    for dim in [0, 1] {
        let p32 = x32.softmax(dim).unwrap().to_vec_f64().unwrap();
        let p64 = x64.softmax(dim).unwrap().to_vec::<f64>().unwrap();
        assert!(all_close(&p32, &p64, 1e-6, 1e-5), "softmax dim {dim}");
        assert_eq!(p32[7], 0.0);
        let l32 = x32.log_softmax(dim).unwrap().to_vec_f64().unwrap();
        let l64 = x64.log_softmax(dim).unwrap().to_vec::<f64>().unwrap();
        assert_eq!(l32[7], f64::NEG_INFINITY);
        let (a, b): (Vec<f64>, Vec<f64>) = l32
            .iter()
            .zip(&l64)
            .filter(|(_, w)| w.is_finite())
            .map(|(g, w)| (*g, *w))
            .unzip();
        assert!(all_close(&a, &b, 1e-4, 1e-5), "log_softmax dim {dim}");
    }
}

#[test]
fn f32_gelu_and_its_gradient_match_f64() {
    // The f32 GELU uses a vectorized tanh (through the fast exponential) and computes its
    // derivative in the forward pass; compare values and gradients with f64 over a range
    // that covers both saturated tails.
    let mut r = rng(37);
    let v: Vec<f64> = (0..20_000).map(|_| r.gen_range(-12.0..12.0)).collect();
    let x32 = Tensor::from_f64s(&v, &[20_000], DType::F32).unwrap();
    let x64 = x32.to_dtype(DType::F64).unwrap();
    for (gelu, name) in [
        (Tensor::gelu as fn(&Tensor) -> Result<Tensor>, "gelu"),
        (Tensor::gelu_erf, "gelu_erf"),
    ] {
        let mut out = Vec::new();
        for x in [&x32, &x64] {
            let x = x.detach().requires_grad_(true).unwrap();
            let y = gelu(&x).unwrap();
            y.sum_all().unwrap().backward().unwrap();
            out.push((
                y.to_vec_f64().unwrap(),
                x.grad().unwrap().to_vec_f64().unwrap(),
            ));
        }
        assert!(all_close(&out[0].0, &out[1].0, 1e-6, 1e-5), "{name} values");
        let worst = out[0]
            .1
            .iter()
            .zip(&out[1].1)
            .zip(&v)
            .map(|((a, b), x)| ((a - b).abs(), *a, *b, *x))
            .fold((0.0, 0.0, 0.0, 0.0), |m, e| if e.0 > m.0 { e } else { m });
        assert!(
            all_close(&out[0].1, &out[1].1, 1e-6, 1e-5),
            "{name} gradients {worst:?}"
        );
    }
}
