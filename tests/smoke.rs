use engine::{gradcheck, DType, Tensor};
use rand::SeedableRng;

fn t(v: &[f64], s: &[usize]) -> Tensor {
    Tensor::from_f64s(v, s, DType::F64).unwrap()
}

#[test]
fn smoke() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let a = Tensor::randn(&[3, 4], 0.0, 1.0, DType::F64, &mut rng);
    let b = Tensor::randn(&[4, 5], 0.0, 1.0, DType::F64, &mut rng);
    let c = Tensor::randn(&[5], 0.0, 1.0, DType::F64, &mut rng);
    gradcheck(
        |x| x[0].matmul(&x[1])?.add(&x[2])?.gelu()?.softmax(1)?.log(),
        &[a.clone(), b.clone(), c.clone()],
    )
    .unwrap();
    gradcheck(
        |x| x[0].t()?.max(&[1], false)?.exp()?.sum_all(),
        &[a.clone()],
    )
    .unwrap();
    gradcheck(
        |x| x[0].log_softmax(0)?.mul(&x[0])?.mean(&[0], true),
        &[a.clone()],
    )
    .unwrap();
    gradcheck(
        |x| {
            Tensor::cat(&[&x[0], &x[0].sqr()?], 1)?
                .narrow(1, 2, 3)?
                .tanh()
        },
        &[a.clone()],
    )
    .unwrap();
    let x = t(&[1., 3., 3., 2.], &[4]).requires_grad_(true).unwrap();
    x.max(&[0], false).unwrap().backward().unwrap();
    assert_eq!(
        x.grad().unwrap().to_vec::<f64>().unwrap(),
        vec![0., 0.5, 0.5, 0.]
    );
}
