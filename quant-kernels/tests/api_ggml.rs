//! The checked entry points of `quant_kernels::ggml`: refusals, lengths,
//! and output that does not depend on the thread count.

use quant_kernels::ggml::{self, ImatrixUse};
use quant_kernels::{GgmlType, KernelError};

fn rows(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919) % 2003) as f32 / 1000.0 - 1.0)
        .collect()
}

#[test]
fn non_finite_values_are_refused_with_their_index() {
    for &ty in ggml::QUANTIZABLE {
        for (index, value) in [
            (0, f32::NAN),
            (777, f32::INFINITY),
            (2047, f32::NEG_INFINITY),
        ] {
            let mut x = rows(2048);
            x[index] = value;
            let mut y = vec![0u8; ggml::row_size(ty, 2048).unwrap()];
            match ggml::quantize(ty, &x, 512, None, &mut y) {
                Err(KernelError::NonFinite { index: i, value: v }) => {
                    assert_eq!(i, index, "{ty}");
                    assert!(v.is_nan() == value.is_nan() && (v.is_nan() || v == value));
                }
                other => panic!("{ty}: {other:?}"),
            }
        }
    }
    let mut x = rows(64);
    x[40] = f32::NAN;
    let mut y = vec![0u8; 68];
    assert!(matches!(
        ggml::quantize_activations(GgmlType::Q8_0, &x, &mut y),
        Err(KernelError::NonFinite { index: 40, .. })
    ));
}

#[test]
fn lengths_are_checked() {
    let x = rows(512);
    let mut y = vec![0u8; ggml::row_size(GgmlType::Q4K, 512).unwrap()];
    // 384 is not a multiple of 256.
    assert!(matches!(
        ggml::quantize(GgmlType::Q4K, &x[..384], 384, None, &mut y),
        Err(KernelError::BadLength(_))
    ));
    // Output too short.
    assert!(matches!(
        ggml::quantize(GgmlType::Q4K, &x, 256, None, &mut y[..100]),
        Err(KernelError::BadLength(_))
    ));
    // Values that are not whole rows.
    assert!(matches!(
        ggml::quantize(GgmlType::Q4_0, &x[..480], 256, None, &mut y),
        Err(KernelError::BadLength(_))
    ));
    // An imatrix must have one weight per column.
    assert!(matches!(
        ggml::quantize(GgmlType::Q4K, &x, 256, Some(&x[..100]), &mut y),
        Err(KernelError::BadLength(_))
    ));
    let mut back = vec![0f32; 500];
    assert!(matches!(
        ggml::dequantize(GgmlType::Q4K, &y, &mut back),
        Err(KernelError::BadLength(_))
    ));
    assert!(matches!(
        ggml::vec_dot(GgmlType::Q4K, &y, &y, 512),
        Err(KernelError::BadLength(_))
    ));
    assert!(matches!(
        ggml::quantize(GgmlType::IQ2XXS, &x, 256, None, &mut y),
        Err(KernelError::Unsupported(_))
    ));
    assert_eq!(ggml::row_size(GgmlType::Q6K, 512).unwrap(), 420);
}

#[test]
fn imatrix_use_follows_ggml_quantize_chunk() {
    assert_eq!(ggml::imatrix_use(GgmlType::Q8_0), ImatrixUse::Ignored);
    assert_eq!(ggml::imatrix_use(GgmlType::F16), ImatrixUse::Ignored);
    assert_eq!(ggml::imatrix_use(GgmlType::Q4K), ImatrixUse::Optional);
    assert_eq!(ggml::imatrix_use(GgmlType::IQ4XS), ImatrixUse::Optional);
    assert_eq!(ggml::imatrix_use(GgmlType::IQ2XXS), ImatrixUse::Required);
    // An ignored imatrix changes nothing.
    let x = rows(1024);
    let w = vec![0.5f32; 512];
    let mut a = vec![0u8; ggml::row_size(GgmlType::Q8_0, 1024).unwrap()];
    let mut b = a.clone();
    ggml::quantize(GgmlType::Q8_0, &x, 512, None, &mut a).unwrap();
    ggml::quantize(GgmlType::Q8_0, &x, 512, Some(&w), &mut b).unwrap();
    assert_eq!(a, b);
}

#[test]
fn output_does_not_depend_on_the_thread_count() {
    let n_per_row = 512;
    let x = rows(n_per_row * 300);
    let w: Vec<f32> = (0..n_per_row).map(|i| 1.0 + (i % 7) as f32).collect();
    for &ty in ggml::QUANTIZABLE {
        for imatrix in [None, Some(&w[..])] {
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut y = vec![0u8; ggml::row_size(ty, x.len()).unwrap()];
                pool.install(|| ggml::quantize(ty, &x, n_per_row, imatrix, &mut y))
                    .unwrap();
                y
            };
            assert_eq!(run(1), run(3), "{ty}");
        }
    }
}
