//! The fused `scaled_dot_product_attention`: finite-difference gradient checks (f64) and
//! agreement, in values and gradients, with the same attention composed of `matmul`,
//! `mul_scalar`, a `-inf` mask, `softmax` and `matmul`; the attention entropy of
//! `scaled_dot_product_attention_with_entropy` against that of the composed probabilities;
//! `attention` with key lengths (padding keys hidden) against the composed attention with
//! an additive padding mask.

use engine::{gradcheck, AttentionOptions, DType, Error, Result, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn randn(shape: &[usize], dtype: DType, seed: u64) -> Tensor {
    Tensor::randn(shape, 0.0, 1.0, dtype, &mut ChaCha8Rng::seed_from_u64(seed))
}

/// Leaves `[b, len, h·d]` for queries, keys and values.
fn merged(b: usize, h: usize, lens: [usize; 3], d: [usize; 3], dtype: DType) -> Vec<Tensor> {
    (0..3)
        .map(|i| {
            randn(&[b, lens[i], h * d[i]], dtype, 10 + i as u64)
                .requires_grad_(true)
                .unwrap()
        })
        .collect()
}

/// `[b, len, h·d]` split into heads `[b, h, len, d]` by `reshape` + `permute` (a strided
/// view, as in a transformer).
fn split(x: &Tensor, h: usize) -> Tensor {
    let &[b, len, hd] = x.shape() else {
        panic!("rank 3")
    };
    x.reshape(&[b, len, h, hd / h])
        .unwrap()
        .permute(&[0, 2, 1, 3])
        .unwrap()
}

/// The reference probabilities `softmax(scale · q kᵀ + mask)` from separate ops.
fn composed_probs(q: &Tensor, k: &Tensor, causal: bool, scale: f64) -> Result<Tensor> {
    let (t, s) = (q.shape()[2], k.shape()[2]);
    let mut scores = q.matmul(&k.transpose(2, 3)?)?.mul_scalar(scale)?;
    if causal {
        let mask: Vec<f64> = (0..t * s)
            .map(|i| {
                if i % s > i / s {
                    f64::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        scores = scores.add(&Tensor::from_f64s(&mask, &[t, s], q.dtype())?)?;
    }
    scores.softmax(3)
}

/// The reference: `softmax(scale · q kᵀ + mask) v` from separate ops.
fn composed(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool, scale: f64) -> Result<Tensor> {
    composed_probs(q, k, causal, scale)?.matmul(v)
}

fn fused(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool, scale: f64) -> Result<Tensor> {
    q.scaled_dot_product_attention(k, v, causal, scale)
}

/// The output of the op that also returns the entropy.
fn fused_with_entropy(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    causal: bool,
    scale: f64,
) -> Result<Tensor> {
    Ok(
        q.scaled_dot_product_attention_with_entropy(k, v, causal, scale)?
            .0,
    )
}

fn assert_close(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "element {i}: got {g}, want {w}"
        );
    }
}

/// Values and leaf gradients (under a fixed random projection of the output) of `f` on
/// the heads of `leaves`.
fn values_and_grads(
    f: fn(&Tensor, &Tensor, &Tensor, bool, f64) -> Result<Tensor>,
    leaves: &[Tensor],
    h: usize,
    causal: bool,
) -> (Vec<f64>, Vec<Vec<f64>>) {
    let x: Vec<Tensor> = leaves.iter().map(|l| split(l, h)).collect();
    let y = f(&x[0], &x[1], &x[2], causal, 0.3).unwrap();
    let r = randn(y.shape(), y.dtype(), 99);
    y.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
    let grads = leaves
        .iter()
        .map(|l| {
            let g = l
                .grad()
                .expect("gradient reached the input")
                .to_vec_f64()
                .unwrap();
            l.zero_grad();
            g
        })
        .collect();
    (y.to_vec_f64().unwrap(), grads)
}

/// Leaves (dense `[b, h, len, d]`) for gradcheck.
fn leaves(b: usize, h: usize, lens: [usize; 3], d: [usize; 3]) -> Vec<Tensor> {
    (0..3)
        .map(|i| {
            randn(&[b, h, lens[i], d[i]], DType::F64, 20 + i as u64)
                .requires_grad_(true)
                .unwrap()
        })
        .collect()
}

fn check(lens: [usize; 3], d: [usize; 3], causal: bool) {
    let inputs = leaves(2, 2, lens, d);
    let report = gradcheck(|x| fused(&x[0], &x[1], &x[2], causal, 0.7), &inputs).unwrap();
    let expected: usize = inputs.iter().map(Tensor::numel).sum();
    assert_eq!(report.checked, expected);
}

#[test]
fn gradcheck_causal_square() {
    check([5, 5, 5], [3, 3, 2], true);
}

#[test]
fn gradcheck_causal_over_several_blocks() {
    // 70 queries: two 64-row blocks, the second partial.
    check([70, 70, 70], [1, 1, 1], true);
}

#[test]
fn gradcheck_causal_with_more_or_fewer_keys_than_queries() {
    check([4, 7, 7], [2, 2, 3], true);
    check([7, 4, 4], [2, 2, 3], true);
}

#[test]
fn gradcheck_full_attention() {
    check([4, 6, 6], [3, 3, 2], false);
}

#[test]
fn gradcheck_with_entropy() {
    for causal in [true, false] {
        let inputs = leaves(2, 2, [5, 6, 6], [3, 3, 2]);
        let f = |x: &[Tensor]| fused_with_entropy(&x[0], &x[1], &x[2], causal, 0.7);
        let report = gradcheck(f, &inputs).unwrap();
        assert_eq!(
            report.checked,
            inputs.iter().map(Tensor::numel).sum::<usize>()
        );
    }
}

/// The entropy per head equals that of the composed probabilities (`nn`'s
/// `mean_entropy_per_head`), causal or not, with as many, more or fewer keys than queries
/// and 70 queries crossing two causal row blocks, on strided (head-split) inputs.
#[test]
fn entropy_is_that_of_the_composed_probabilities() {
    for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-6)] {
        for causal in [true, false] {
            for lens in [[70, 70, 70], [4, 7, 7], [7, 4, 4]] {
                let x: Vec<Tensor> = merged(2, 3, lens, [8, 8, 5], dtype)
                    .iter()
                    .map(|l| split(l, 3))
                    .collect();
                let (y, entropy) = x[0]
                    .scaled_dot_product_attention_with_entropy(&x[1], &x[2], causal, 0.3)
                    .unwrap();
                assert_eq!(y.shape(), [2, 3, lens[0], 5]);
                let p = composed_probs(&x[0], &x[1], causal, 0.3).unwrap();
                let want = nn::attention::mean_entropy_per_head(&p).unwrap();
                assert_eq!(entropy.len(), 3);
                for (e, w) in entropy.iter().zip(&want) {
                    assert!(
                        (e - w).abs() <= tol,
                        "{dtype:?} causal {causal} {lens:?}: {e} vs {w}"
                    );
                }
            }
        }
    }
}

/// Zero queries give uniform rows: each row's entropy is the log of the keys it sees, so
/// the mean is `ln S` for full attention and the mean of `ln(min(i+1, S))` causal.
#[test]
fn entropy_of_uniform_rows_is_the_log_of_the_visible_keys() {
    let (t, s) = (6, 4);
    let q = Tensor::zeros(&[2, 2, t, 3], DType::F64);
    let (k, v) = (
        randn(&[2, 2, s, 3], DType::F64, 1),
        randn(&[2, 2, s, 2], DType::F64, 2),
    );
    for causal in [true, false] {
        let (_, entropy) = q
            .scaled_dot_product_attention_with_entropy(&k, &v, causal, 1.0)
            .unwrap();
        let want = if causal {
            (0..t).map(|i| ((i + 1).min(s) as f64).ln()).sum::<f64>() / t as f64
        } else {
            (s as f64).ln()
        };
        for e in entropy {
            assert!((e - want).abs() < 1e-12, "causal {causal}: {e} vs {want}");
        }
    }
}

/// Asking for the entropy does not change the math: output and gradients are the same
/// bits as without it.
#[test]
fn entropy_leaves_output_and_gradients_bit_identical() {
    for dtype in [DType::F64, DType::F32] {
        for causal in [true, false] {
            let x = merged(2, 3, [70, 70, 70], [8, 8, 5], dtype);
            let plain = values_and_grads(fused, &x, 3, causal);
            let with_entropy = values_and_grads(fused_with_entropy, &x, 3, causal);
            assert_eq!(plain, with_entropy, "{dtype:?} causal {causal}");
        }
    }
}

/// The entropy (and the output) are the same bits on 1 and 3 threads.
#[test]
fn entropy_is_the_same_bits_at_any_thread_count() {
    let x: Vec<Tensor> = merged(3, 4, [70, 70, 70], [8, 8, 8], DType::F32)
        .iter()
        .map(|l| split(l, 4))
        .collect();
    for causal in [true, false] {
        let run = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| {
                    let (y, entropy) = x[0]
                        .scaled_dot_product_attention_with_entropy(&x[1], &x[2], causal, 0.3)
                        .unwrap();
                    let y: Vec<u32> = y
                        .to_vec::<f32>()
                        .unwrap()
                        .iter()
                        .map(|v| v.to_bits())
                        .collect();
                    (y, entropy.iter().map(|e| e.to_bits()).collect::<Vec<_>>())
                })
        };
        assert_eq!(run(1), run(3), "causal {causal}");
    }
}

#[test]
fn matches_composed_attention_in_values_and_gradients() {
    for causal in [true, false] {
        // 70 queries and keys cross two causal blocks; strided (head-split) inputs.
        let x = merged(2, 3, [70, 70, 70], [8, 8, 5], DType::F64);
        let (y, g) = values_and_grads(fused, &x, 3, causal);
        let (y_ref, g_ref) = values_and_grads(composed, &x, 3, causal);
        assert_close(&y, &y_ref, 1e-12);
        for (a, b) in g.iter().zip(&g_ref) {
            assert_close(a, b, 1e-12);
        }
    }
}

/// The outputs and gradients are not zero-filled before the products write them: keys in
/// a causal block that no query sees (3 queries, 70 keys: the block from key 64 has no
/// terms) and `d_k = 0` (no terms in the scores) must still come out exact, in f32 and f64.
#[test]
fn blocks_without_terms_are_written_as_zeros() {
    for dtype in [DType::F64, DType::F32] {
        for d in [[2, 2, 3], [0, 0, 3]] {
            let x = merged(2, 3, [3, 70, 70], d, dtype);
            let (y, g) = values_and_grads(fused, &x, 3, true);
            let (y_ref, g_ref) = values_and_grads(composed, &x, 3, true);
            let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
            assert_close(&y, &y_ref, tol);
            for (a, b) in g.iter().zip(&g_ref) {
                assert_close(a, b, tol);
            }
            // Keys and values past the last query get exactly zero gradient.
            for grad in &g[1..] {
                let per_key = grad.len() / (2 * 70);
                for b in 0..2 {
                    let row = &grad[(b * 70 + 3) * per_key..(b + 1) * 70 * per_key];
                    assert!(row.iter().all(|&v| v == 0.0), "{dtype:?} d {d:?}");
                }
            }
        }
    }
}

#[test]
fn f32_agrees_with_f64() {
    let x = merged(1, 2, [100, 100, 100], [16, 16, 16], DType::F32);
    let (y, g) = values_and_grads(fused, &x, 2, true);
    let x64: Vec<Tensor> = x
        .iter()
        .map(|l| {
            l.detach()
                .to_dtype(DType::F64)
                .unwrap()
                .requires_grad_(true)
                .unwrap()
        })
        .collect();
    let (y64, g64) = values_and_grads(fused, &x64, 2, true);
    assert_close(&y, &y64, 1e-5);
    for (a, b) in g.iter().zip(&g64) {
        assert_close(a, b, 1e-4);
    }
}

#[test]
fn causal_outputs_do_not_see_later_keys() {
    let qkv = leaves(1, 1, [6, 6, 6], [2, 2, 2]);
    let y = fused(&qkv[0], &qkv[1], &qkv[2], true, 1.0)
        .unwrap()
        .to_vec_f64()
        .unwrap();
    // Change the last key and value: rows 0..5 must not move.
    let bump = |t: &Tensor| {
        let mut v = t.to_vec_f64().unwrap();
        v[10] += 5.0;
        v[11] -= 3.0;
        Tensor::from_f64s(&v, t.shape(), DType::F64).unwrap()
    };
    let y2 = fused(&qkv[0], &bump(&qkv[1]), &bump(&qkv[2]), true, 1.0)
        .unwrap()
        .to_vec_f64()
        .unwrap();
    assert_eq!(y[..10], y2[..10]);
    assert_ne!(y[10..], y2[10..]);
    // The first query sees only the first key: its output is the first value.
    assert_eq!(y[..2], qkv[2].to_vec_f64().unwrap()[..2]);
}

#[test]
fn bad_shapes_and_arguments_are_errors() {
    let q = randn(&[1, 2, 3, 4], DType::F64, 0);
    let k = randn(&[1, 2, 5, 4], DType::F64, 1);
    let v = randn(&[1, 2, 5, 6], DType::F64, 2);
    assert!(q.scaled_dot_product_attention(&k, &v, false, 0.5).is_ok());
    let shape_err = |r: Result<Tensor>| matches!(r, Err(Error::ShapeMismatch { .. }));
    let invalid = |r: Result<Tensor>| matches!(r, Err(Error::InvalidArgument { .. }));
    // Rank 3 (named as such), then different d_k, different S, different heads.
    let rank3 = randn(&[2, 3, 4], DType::F64, 3).scaled_dot_product_attention(&k, &v, false, 0.5);
    assert!(rank3.unwrap_err().to_string().contains("rank 4"));
    let rank3 = randn(&[2, 3, 4], DType::F64, 3)
        .scaled_dot_product_attention_with_entropy(&k, &v, false, 0.5);
    assert!(rank3.unwrap_err().to_string().contains("rank 4"));
    assert!(shape_err(q.scaled_dot_product_attention(
        &randn(&[1, 2, 5, 3], DType::F64, 4),
        &v,
        false,
        0.5
    )));
    assert!(shape_err(q.scaled_dot_product_attention(
        &k,
        &randn(&[1, 2, 4, 6], DType::F64, 5),
        false,
        0.5
    )));
    assert!(shape_err(q.scaled_dot_product_attention(
        &k,
        &randn(&[1, 3, 5, 6], DType::F64, 6),
        false,
        0.5
    )));
    let k0 = randn(&[1, 2, 0, 4], DType::F64, 7);
    let v0 = randn(&[1, 2, 0, 6], DType::F64, 8);
    assert!(invalid(q.scaled_dot_product_attention(&k0, &v0, true, 0.5)));
    assert!(invalid(q.scaled_dot_product_attention(
        &k,
        &v,
        true,
        f64::NAN
    )));
    assert!(matches!(
        q.scaled_dot_product_attention(&k.to_dtype(DType::F32).unwrap(), &v, true, 0.5),
        Err(Error::DTypeMismatch { .. })
    ));
    // Finite in f64 but not in f32.
    let (q32, k32, v32) = [&q, &k, &v].map(|x| x.to_dtype(DType::F32).unwrap()).into();
    assert!(invalid(
        q32.scaled_dot_product_attention(&k32, &v32, true, 1e39)
    ));
    // Empty inputs whose probabilities [1, 1, 2³¹, 2³¹] could not be allocated.
    let huge = Tensor::zeros(&[1, 1, 1 << 31, 0], DType::F32);
    assert!(invalid(
        huge.scaled_dot_product_attention(&huge, &huge, false, 1.0)
    ));
    // No batch: no query lacks a key.
    let (q0, k00, v00) = (
        randn(&[0, 2, 3, 4], DType::F64, 9),
        randn(&[0, 2, 0, 4], DType::F64, 10),
        randn(&[0, 2, 0, 6], DType::F64, 11),
    );
    assert_eq!(
        q0.scaled_dot_product_attention(&k00, &v00, true, 0.5)
            .unwrap()
            .shape(),
        [0, 2, 3, 6]
    );
    // ...and there is no row to average: the entropy of each head is 0.
    let (_, entropy) = q0
        .scaled_dot_product_attention_with_entropy(&k00, &v00, true, 0.5)
        .unwrap();
    assert_eq!(entropy, [0.0, 0.0]);
}

/// `[b, 1, t, s]` additive mask hiding the keys `lens[b]..s` of each batch entry (and the
/// keys after the query when `causal`).
fn padding_mask(lens: &[usize], t: usize, s: usize, causal: bool, dtype: DType) -> Tensor {
    let mask: Vec<f64> = (0..lens.len() * t * s)
        .map(|i| {
            let (b, row, col) = (i / (t * s), i / s % t, i % s);
            if col >= lens[b] || (causal && col > row) {
                f64::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_f64s(&mask, &[lens.len(), 1, t, s], dtype).unwrap()
}

fn padded(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool, lens: &[usize]) -> Result<Tensor> {
    let opts = AttentionOptions {
        causal,
        scale: 0.3,
        key_lengths: Some(lens),
        entropy: true,
    };
    Ok(q.attention(k, v, &opts)?.0)
}

fn padded_composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    causal: bool,
    lens: &[usize],
) -> Result<Tensor> {
    let (t, s) = (q.shape()[2], k.shape()[2]);
    let scores = q.matmul(&k.transpose(2, 3)?)?.mul_scalar(0.3)?;
    let mask = padding_mask(lens, t, s, causal, q.dtype());
    scores.add(&mask)?.softmax(3)?.matmul(v)
}

/// Key lengths hide the padding keys exactly as an additive `-inf` padding mask does, in
/// values and in the gradients of queries, keys and values (the padding keys get 0), with
/// 70 keys crossing two causal blocks, causal or not, on strided inputs.
#[test]
fn key_lengths_match_a_composed_padding_mask() {
    for causal in [false, true] {
        for lens in [[70, 33], [1, 70], [64, 65]] {
            let x = merged(2, 3, [70, 70, 70], [8, 8, 5], DType::F64);
            let run = |f: fn(&Tensor, &Tensor, &Tensor, bool, &[usize]) -> Result<Tensor>| {
                let h: Vec<Tensor> = x.iter().map(|l| split(l, 3)).collect();
                let y = f(&h[0], &h[1], &h[2], causal, &lens).unwrap();
                let r = randn(y.shape(), y.dtype(), 99);
                y.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
                let grads: Vec<Vec<f64>> = x
                    .iter()
                    .map(|l| {
                        let g = l.grad().unwrap().to_vec_f64().unwrap();
                        l.zero_grad();
                        g
                    })
                    .collect();
                (y.to_vec_f64().unwrap(), grads)
            };
            let (y, g) = run(padded);
            let (y_ref, g_ref) = run(padded_composed);
            assert_close(&y, &y_ref, 1e-12);
            for (a, b) in g.iter().zip(&g_ref) {
                assert_close(a, b, 1e-12);
            }
            // Padding keys of entry 1 (keys lens[1]..70, rows of the [b, s, h·d] leaves)
            // receive no gradient.
            let width = 3 * 8;
            let pad = &g[1][(70 + lens[1]) * width..];
            assert!(pad.iter().all(|&v| v == 0.0), "causal {causal} {lens:?}");
        }
    }
}

#[test]
fn gradcheck_with_key_lengths() {
    for causal in [false, true] {
        let inputs = leaves(2, 2, [5, 5, 5], [3, 3, 2]);
        let f = |x: &[Tensor]| padded(&x[0], &x[1], &x[2], causal, &[5, 2]);
        let report = gradcheck(f, &inputs).unwrap();
        assert_eq!(
            report.checked,
            inputs.iter().map(Tensor::numel).sum::<usize>()
        );
    }
}

/// With key lengths, the entropy is averaged over the rows of real queries (`i <
/// lens[b]`) only, each row's entropy that of the composed padded probabilities.
#[test]
fn entropy_with_key_lengths_averages_the_real_rows() {
    let lens = [6, 2];
    let x: Vec<Tensor> = merged(2, 2, [6, 6, 6], [4, 4, 3], DType::F64)
        .iter()
        .map(|l| split(l, 2))
        .collect();
    let opts = AttentionOptions {
        causal: false,
        scale: 0.3,
        key_lengths: Some(&lens),
        entropy: true,
    };
    let (_, entropy) = x[0].attention(&x[1], &x[2], &opts).unwrap();
    let scores = x[0].matmul(&x[1].transpose(2, 3).unwrap()).unwrap();
    let p = scores
        .mul_scalar(0.3)
        .unwrap()
        .add(&padding_mask(&lens, 6, 6, false, DType::F64))
        .unwrap()
        .softmax(3)
        .unwrap()
        .to_vec_f64()
        .unwrap();
    for (h, e) in entropy.iter().enumerate() {
        let mut sum = 0.0;
        for (b, &len) in lens.iter().enumerate() {
            for i in 0..len {
                let row = &p[((b * 2 + h) * 6 + i) * 6..][..6];
                sum -= row
                    .iter()
                    .filter(|&&v| v > 0.0)
                    .map(|&v| v * v.ln())
                    .sum::<f64>();
            }
        }
        let want = sum / 8.0;
        assert!((e - want).abs() < 1e-12, "head {h}: {e} vs {want}");
    }
}

#[test]
fn bad_key_lengths_are_errors() {
    let x: Vec<Tensor> = leaves(2, 1, [3, 4, 4], [2, 2, 2]);
    for lens in [&[4][..], &[4, 0], &[5, 1], &[1, 2, 3]] {
        let opts = AttentionOptions {
            causal: false,
            scale: 1.0,
            key_lengths: Some(lens),
            entropy: false,
        };
        let err = x[0].attention(&x[1], &x[2], &opts).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument { .. }) && err.to_string().contains("1..=4"),
            "{lens:?}: {err}"
        );
    }
}
