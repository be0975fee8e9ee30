//! Every SIMD kernel at every level this CPU runs, bit for bit against the
//! scalar reference, on random and adversarial rows.

use proptest::prelude::*;

use super::*;
use crate::ggml::reference;

/// Rows of 512 values that stress the rounding and degenerate paths, one
/// pattern per block of 32.
pub(crate) fn adversarial_rows() -> Vec<Vec<f32>> {
    let mut rows = Vec::new();
    let patterns: Vec<Box<dyn Fn(usize) -> f32>> = vec![
        Box::new(|_| 0.0),
        Box::new(|i| {
            if i == 7 {
                1e4
            } else {
                (i as f32 - 16.0) * 1e-4
            }
        }),
        Box::new(|_| 0.5),
        Box::new(|_| -3.25),
        Box::new(|i| (i as f32 - 16.0) * 0.5),
        Box::new(|i| if i == 0 { 127.0 } else { i as f32 - 15.5 }),
        Box::new(|i| (i as f32 - 16.0) * 1e-16),
        Box::new(|i| f32::from_bits(i as u32 * 977) * if i % 2 == 0 { 1.0 } else { -1.0 }),
        Box::new(|i| {
            if i == 3 {
                2e-38
            } else {
                (i as f32 - 16.0) * 1e-39
            }
        }),
        Box::new(|i| {
            if i == 0 {
                65504.0
            } else {
                (i as f32 * 2047.0) - 32000.0
            }
        }),
        Box::new(|i| (i as f32 - 16.0) * 6250.0),
        Box::new(|i| if i == 5 { -2.0 } else { 0.0 }),
        Box::new(|i| if i % 2 == 0 { 1.0 } else { -1.0 }),
        Box::new(|i| -f32::MIN_POSITIVE * (i as f32 + 1.0)),
        Box::new(|i| 1.0 + i as f32 * f32::EPSILON),
        Box::new(|i| (i as f32 - 16.0) * 1e-15),
    ];
    let mut row = Vec::with_capacity(512);
    for pattern in &patterns {
        for i in 0..32 {
            row.push(pattern(i));
        }
    }
    rows.push(row);
    rows.push(vec![0.0; 512]);
    rows.push(vec![1.0; 512]);
    rows.push(vec![-7.0; 512]);
    rows.push((0..512).map(|i| f32::from_bits(1 + i as u32)).collect());
    rows.push(
        (0..512)
            .map(|i| if i == 100 { 3e4 } else { 1e-3 })
            .collect(),
    );
    rows.push((0..512).map(|i| ((i % 33) as f32 - 16.0) / 8.0).collect());
    rows
}

fn finite_row() -> impl Strategy<Value = Vec<f32>> {
    let value = prop_oneof![
        4 => -1.0f32..1.0,
        1 => -1e4f32..1e4,
        1 => -1e-30f32..1e-30,
        1 => Just(0.0f32),
        1 => -65504.0f32..65504.0,
        1 => any::<f32>().prop_filter("finite", |v| v.is_finite()),
    ];
    proptest::collection::vec(value, 512)
}

fn check_quantize(ty: GgmlType, x: &[f32]) {
    let n = ty.row_size(x.len() as u64).unwrap() as usize;
    let mut want = vec![0u8; n];
    reference::quantize_row(ty, x, &mut want, None).unwrap();
    for level in available_levels() {
        let mut got = vec![0u8; n];
        if quantize_at(level, ty, x, &mut got) || quantize_iq4_at(level, ty, x, &mut got, None) {
            assert_eq!(got, want, "{ty} quantize at {level:?}");
        }
    }
    // The importance-weighted paths that have fast kernels.
    let w: Vec<f32> = (0..x.len())
        .map(|i| ((i * 7919) % 97) as f32 / 13.0)
        .collect();
    reference::quantize_row(ty, x, &mut want, Some(&w)).unwrap();
    for level in available_levels() {
        let mut got = vec![0u8; n];
        if quantize_iq4_at(level, ty, x, &mut got, Some(&w)) {
            assert_eq!(got, want, "{ty} quantize with imatrix at {level:?}");
        }
    }
}

fn check_dequantize(ty: GgmlType, q: &[u8]) {
    let n = q.len() / ty.type_size() as usize * ty.block_size() as usize;
    let mut want = vec![0f32; n];
    reference::dequantize_row(ty, q, &mut want).unwrap();
    for level in available_levels() {
        let mut got = vec![0f32; n];
        if dequantize_at(level, ty, q, &mut got) {
            for i in 0..n {
                assert!(
                    got[i].to_bits() == want[i].to_bits() || (got[i].is_nan() && want[i].is_nan()),
                    "{ty} dequantize at {level:?}: value {i} is {} want {}",
                    got[i],
                    want[i]
                );
            }
        }
    }
}

const TYPES: &[GgmlType] = crate::ggml::QUANTIZABLE;

#[test]
fn adversarial_rows_match_the_reference() {
    for x in adversarial_rows() {
        // 18 blocks: the IQ4_NL kernel's groups of 8 plus a remainder.
        let x576: Vec<f32> = x.iter().chain(&x[..64]).copied().collect();
        for ty in [
            GgmlType::IQ4NL,
            GgmlType::Q4_0,
            GgmlType::Q8_0,
            GgmlType::Q5_1,
        ] {
            check_quantize(ty, &x576);
        }
        for &ty in TYPES {
            check_quantize(ty, &x);
            let mut q = vec![0u8; ty.row_size(512).unwrap() as usize];
            reference::quantize_row(ty, &x, &mut q, None).unwrap();
            check_dequantize(ty, &q);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn random_rows_match_the_reference(x in finite_row()) {
        for &ty in TYPES {
            check_quantize(ty, &x);
        }
    }

    #[test]
    fn random_bytes_dequantize_like_the_reference(bytes in proptest::collection::vec(any::<u8>(), 2048)) {
        for &ty in TYPES {
            let n = ty.row_size(256).unwrap() as usize;
            check_dequantize(ty, &bytes[..n]);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn dot_products_match_the_reference_at_every_level(
        w in prop_oneof![moderate_row(), finite_row()],
        x in prop_oneof![moderate_row(), finite_row()],
    ) {
        for &ty in TYPES {
            let vdt = reference::vec_dot_type(ty).unwrap();
            let mut wq = vec![0u8; ty.row_size(512).unwrap() as usize];
            reference::quantize_row(ty, &w, &mut wq, None).unwrap();
            let mut aq = vec![0u8; vdt.row_size(512).unwrap() as usize];
            reference::quantize_activations_row(vdt, &x, &mut aq).unwrap();
            let want = reference::vec_dot(ty, 512, &wq, &aq).unwrap();
            for level in available_levels() {
                let got = vec_dot_at(level, ty, 512, &wq, &aq).unwrap();
                prop_assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                    "{} at {:?}: {} vs {}", ty, level, got, want);
            }
        }
    }
}

/// The types with tile kernels, and the rest (which `ggml::gemm` loops):
/// every model-file type.
const DOT_TYPES: &[GgmlType] = crate::ggml::QUANTIZABLE;

/// `gemm_at` at every level against the reference `vec_dot` of every
/// (row, token) pair, bit for bit.
fn check_gemm(ty: GgmlType, n: usize, wq: &[u8], aq: &[u8]) {
    let vdt = reference::vec_dot_type(ty).unwrap();
    let (wb, ab) = (
        ty.row_size(n as u64).unwrap() as usize,
        vdt.row_size(n as u64).unwrap() as usize,
    );
    let (n_rows, n_tok) = (wq.len() / wb, aq.len() / ab);
    let want: Vec<f32> = (0..n_tok * n_rows)
        .map(|i| {
            let (t, r) = (i / n_rows, i % n_rows);
            reference::vec_dot(ty, n, &wq[r * wb..][..wb], &aq[t * ab..][..ab]).unwrap()
        })
        .collect();
    for level in available_levels() {
        let mut got = vec![f32::NAN; n_rows * n_tok];
        if !gemm_at(level, ty, n, wq, n_rows, aq, ab, n_tok, &mut got) {
            continue;
        }
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                "{ty} gemm at {level:?}, row {} token {}: {g} vs {w}",
                i % n_rows,
                i / n_rows
            );
        }
    }
    let mut got = vec![f32::NAN; n_rows * n_tok];
    crate::ggml::gemm(ty, n, wq, aq, &mut got).unwrap();
    for (g, w) in got.iter().zip(&want) {
        assert!(g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()));
    }
}

fn quantize_rows(ty: GgmlType, rows: &[Vec<f32>]) -> Vec<u8> {
    rows.iter()
        .flat_map(|x| {
            let mut q = vec![0u8; ty.row_size(x.len() as u64).unwrap() as usize];
            reference::quantize_row(ty, x, &mut q, None).unwrap();
            q
        })
        .collect()
}

fn quantize_acts(vdt: GgmlType, rows: &[Vec<f32>]) -> Vec<u8> {
    rows.iter()
        .flat_map(|x| {
            let mut q = vec![0u8; vdt.row_size(x.len() as u64).unwrap() as usize];
            reference::quantize_activations_row(vdt, x, &mut q).unwrap();
            q
        })
        .collect()
}

fn check_activations(x: &[f32]) {
    use GgmlType as T;
    for vdt in [T::Q8_0, T::Q8_1, T::Q8K, T::F16, T::BF16, T::F32] {
        let n = vdt.row_size(x.len() as u64).unwrap() as usize;
        let mut want = vec![0u8; n];
        reference::quantize_activations_row(vdt, x, &mut want).unwrap();
        for level in available_levels() {
            let mut got = vec![0u8; n];
            if quantize_activations_at(level, vdt, x, &mut got) {
                assert_eq!(got, want, "{vdt} activations at {level:?}");
            }
        }
    }
}

#[test]
fn adversarial_activations_match_the_reference() {
    for x in adversarial_rows() {
        check_activations(&x);
    }
}

#[test]
fn gemm_of_adversarial_rows_matches_the_reference() {
    let rows = adversarial_rows();
    for &ty in DOT_TYPES {
        let vdt = reference::vec_dot_type(ty).unwrap();
        // Every row against every row, and partial tiles of each shape.
        let wq = quantize_rows(ty, &rows);
        let aq = quantize_acts(vdt, &rows);
        check_gemm(ty, 512, &wq, &aq);
        let (wb, ab) = (
            ty.row_size(512).unwrap() as usize,
            vdt.row_size(512).unwrap() as usize,
        );
        for nr in 1..=rows.len().min(9) {
            for nt in [1, 2, 3, 5] {
                check_gemm(ty, 512, &wq[..nr * wb], &aq[..nt * ab]);
            }
        }
    }
}

/// Rows whose blocks have scales from 1e-3 to 1e3 (most of
/// `finite_row`'s rows hold a value beyond f16 range, so their Q8
/// activation scales are infinite and most products NaN).
fn moderate_row() -> impl Strategy<Value = Vec<f32>> {
    let block = (-3.0f32..3.0, proptest::collection::vec(-1.0f32..1.0, 32)).prop_map(|(e, v)| {
        v.into_iter()
            .map(|x| x * 10f32.powf(e))
            .collect::<Vec<f32>>()
    });
    proptest::collection::vec(block, 16).prop_map(|b| b.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn random_activations_match_the_reference(x in prop_oneof![moderate_row(), finite_row()]) {
        check_activations(&x);
    }

    #[test]
    fn gemm_matches_the_reference_at_every_level(
        rows in proptest::collection::vec(prop_oneof![3 => moderate_row(), 1 => finite_row()], 1..11),
        toks in proptest::collection::vec(prop_oneof![3 => moderate_row(), 1 => finite_row()], 1..10),
    ) {
        for &ty in DOT_TYPES {
            let vdt = reference::vec_dot_type(ty).unwrap();
            check_gemm(ty, 512, &quantize_rows(ty, &rows), &quantize_acts(vdt, &toks));
        }
    }

    /// Weight bytes as an untrusted file may hold them (any scale, Q8_0
    /// values of -128, K-quant scales out of the quantizers' range).
    #[test]
    fn gemm_of_arbitrary_weight_bytes_matches_the_reference(
        bytes in proptest::collection::vec(any::<u8>(), 7 * 1024),
        toks in proptest::collection::vec(finite_row(), 1..6),
    ) {
        for &ty in DOT_TYPES {
            let vdt = reference::vec_dot_type(ty).unwrap();
            let wb = ty.row_size(512).unwrap() as usize;
            let n_rows = bytes.len() / wb;
            check_gemm(ty, 512, &bytes[..n_rows * wb], &quantize_acts(vdt, &toks));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// Float rows whose length leaves a tail after the 64-value main loop
    /// (and rows shorter than one step).
    #[test]
    fn gemm_of_float_rows_with_tails_matches_the_reference(
        n in prop_oneof![1usize..64, 64usize..300],
        rows in 1usize..8,
        toks in 1usize..8,
        seed in any::<u64>(),
    ) {
        let mut s = seed | 1;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
        };
        let w: Vec<Vec<f32>> = (0..rows).map(|_| (0..n).map(|_| next()).collect()).collect();
        let x: Vec<Vec<f32>> = (0..toks).map(|_| (0..n).map(|_| next()).collect()).collect();
        for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
            check_gemm(ty, n, &quantize_rows(ty, &w), &quantize_acts(ty, &x));
        }
    }
}

/// A bf16 value `±m * 2^(e - 7)` with `m` in [128, 256) (normal), as bytes.
fn bf16_bytes(sign: bool, m: u16, e: i32) -> [u8; 2] {
    let bits = (u16::from(sign) << 15) | (((e + 127) as u16) << 7) | (m & 0x7f);
    bits.to_le_bytes()
}

/// BF16 rows at the edges of the tile's exact case (nonzero weight
/// exponents from -60, activation exponents from -49, all at most 62):
/// products near 2^-109 that cancel to tiny sums, the same one exponent
/// lower, both far below and each alone far below its bound (where
/// `vdpbf16ps` flushes), denormal, huge,
/// infinite and NaN values, rows of no values and lengths with tails.
/// Every pair against the reference.
#[test]
fn bf16_products_at_the_edges_of_the_exact_case_match_the_reference() {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    // (exponent of the weights, of the activations) per case, and extra
    // values mixed into one row of each side.
    let cases = [
        (-60, -49),
        (-61, -49),
        (-60, -50),
        (-70, -60),
        (-66, -63),
        (-72, -49),
        (-60, -62),
        (62, 62),
        (63, 62),
        (0, -3),
    ];
    let specials: [u16; 7] = [0x0001, 0x807f, 0x7f80, 0xff80, 0x7fc1, 0x0000, 0x8000];
    // Rows of no values.
    for level in available_levels() {
        let got = vec_dot_at(level, GgmlType::BF16, 0, &[], &[]).unwrap();
        assert_eq!(
            got.to_bits(),
            reference::vec_dot_bf16(0, &[], &[]).to_bits()
        );
    }
    for &(ew, ea) in &cases {
        for n in [64usize, 96, 128, 200, 512] {
            let row = |e: i32, special: Option<u16>, next: &mut dyn FnMut() -> u64| -> Vec<u8> {
                (0..n)
                    .flat_map(|k| {
                        let r = next();
                        match special {
                            Some(v) if k % 37 == 5 => v.to_le_bytes(),
                            _ if r.is_multiple_of(11) => [0, 0],
                            _ => {
                                let up = ((r >> 20) % 2) as i32 * i32::from(e < 0);
                                bf16_bytes(r & 1 == 1, 128 + ((r >> 8) % 128) as u16, e + up)
                            }
                        }
                    })
                    .collect()
            };
            let mut w = Vec::new();
            for i in 0..7 {
                let special = (i == 3).then(|| specials[(next() % 7) as usize]);
                w.extend(row(ew, special, &mut next));
            }
            let mut a = Vec::new();
            for j in 0..6 {
                let special = (j == 4).then(|| specials[(next() % 7) as usize]);
                a.extend(row(ea, special, &mut next));
            }
            check_gemm(GgmlType::BF16, n, &w, &a);
            check_bf16_variants(n, &w, &a);
            for level in available_levels() {
                for (wr, ar) in w.chunks(2 * n).zip(a.chunks(2 * n)) {
                    let want = reference::vec_dot_bf16(n, wr, ar);
                    let got = vec_dot_at(level, GgmlType::BF16, n, wr, ar).unwrap();
                    assert!(
                        got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                        "bf16 dot at {level:?}, exponents {ew}/{ea}, n {n}: {got} vs {want}"
                    );
                }
            }
        }
    }
}

/// A BF16 tile entry point of `gemm_x86` or `float_avx2`.
#[cfg(target_arch = "x86_64")]
type Bf16Gemm = unsafe fn(usize, &[u8], usize, &[u8], usize, &mut [f32]);

/// Every BF16 tile variant this CPU runs (AVX2; at AVX-512 the FMA
/// emulation, and `vdpbf16ps` itself where present) against the
/// reference, bit for bit, for every token count up to `a`'s.
fn check_bf16_variants(n: usize, w: &[u8], a: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    if detect() >= Level::Avx2 {
        let (n_rows, n_tok) = (w.len() / (2 * n), a.len() / (2 * n));
        let want: Vec<f32> = (0..n_tok * n_rows)
            .map(|i| {
                let (t, r) = (i / n_rows, i % n_rows);
                reference::vec_dot_bf16(n, &w[2 * n * r..][..2 * n], &a[2 * n * t..][..2 * n])
            })
            .collect();
        let mut variants: Vec<(&str, Bf16Gemm)> = vec![("avx2", float_avx2::gemm_bf16)];
        if detect() >= Level::Avx512 {
            variants.push(("emulated", gemm_x86::gemm_bf16_avx512));
        }
        if detect() >= Level::Avx512 && has_bf16() {
            variants.push(("vdpbf16ps", gemm_x86::gemm_bf16_native));
        }
        for (name, f) in variants {
            for nt in 1..=n_tok {
                let mut got = vec![f32::NAN; n_rows * nt];
                // SAFETY: AVX2 and FMA for every variant, AVX-512 F/BW
                // for the AVX-512 ones and AVX512-BF16 for the native one
                // (checked above); whole rows.
                unsafe { f(n, w, n_rows, &a[..2 * n * nt], nt, &mut got) };
                for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        g.to_bits() == e.to_bits() || (g.is_nan() && e.is_nan()),
                        "{name} bf16 tile, {nt} tokens, row {} token {}: {g} vs {e}",
                        i % n_rows,
                        i / n_rows
                    );
                }
            }
        }
    }
    let _ = (n, w, a);
}

/// IQ4_NL's dot product takes blocks in pairs and the last of an odd
/// count on its own: rows of 1, 3 and 17 blocks (and 18), single dots
/// and tiles.
#[test]
fn iq4_nl_dots_of_odd_block_counts_match_the_reference() {
    let rows = adversarial_rows();
    for n in [32usize, 96, 544, 576] {
        let cycled = |x: &Vec<f32>| x.iter().cycle().take(n).copied().collect::<Vec<f32>>();
        let ws: Vec<Vec<f32>> = rows.iter().take(7).map(cycled).collect();
        let xs: Vec<Vec<f32>> = rows.iter().rev().take(5).map(cycled).collect();
        check_gemm(
            GgmlType::IQ4NL,
            n,
            &quantize_rows(GgmlType::IQ4NL, &ws),
            &quantize_acts(GgmlType::Q8_0, &xs),
        );
        for (wx, ax) in rows.iter().zip(rows.iter().rev()) {
            let wq = quantize_rows(GgmlType::IQ4NL, &[cycled(wx)]);
            let aq = quantize_acts(GgmlType::Q8_0, &[cycled(ax)]);
            let want = reference::vec_dot(GgmlType::IQ4NL, n, &wq, &aq).unwrap();
            for level in available_levels() {
                let got = vec_dot_at(level, GgmlType::IQ4NL, n, &wq, &aq).unwrap();
                assert!(
                    got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                    "IQ4_NL dot at {level:?}, {n} values: {got} vs {want}"
                );
            }
        }
    }
}

/// A decode-only type (qforge reads it but has no quantizer): the byte
/// offsets of its f16 scales within a block, and its reference dot product.
type DecodeDot = (GgmlType, &'static [usize], fn(usize, &[u8], &[u8]) -> f32);

const DECODE_DOTS: &[DecodeDot] = &[
    (GgmlType::IQ2XXS, &[0], reference::vec_dot_iq2_xxs_q8_k),
    (GgmlType::IQ2XS, &[0], reference::vec_dot_iq2_xs_q8_k),
    (GgmlType::IQ2S, &[0], reference::vec_dot_iq2_s_q8_k),
    (GgmlType::IQ3XXS, &[0], reference::vec_dot_iq3_xxs_q8_k),
    (GgmlType::IQ3S, &[0], reference::vec_dot_iq3_s_q8_k),
    (GgmlType::MXFP4, &[], reference::vec_dot_mxfp4_q8_0),
    (GgmlType::IQ1M, &[], reference::vec_dot_iq1_m_q8_k),
    (GgmlType::IQ1S, &[0], reference::vec_dot_iq1_s_q8_k),
    (GgmlType::TQ2_0, &[64], reference::vec_dot_tq2_0_q8_k),
    (GgmlType::TQ1_0, &[52], reference::vec_dot_tq1_0_q8_k),
    (GgmlType::NVFP4, &[], reference::vec_dot_nvfp4_q8_0),
];

/// Weight blocks from random bytes, their f16 scales made finite (and
/// MXFP4's E8M0 exponents kept within 2^±20, so that sums stay finite).
fn decode_weights(ty: GgmlType, f16_at: &[usize], bytes: &[u8], n: usize) -> Vec<u8> {
    let bb = ty.type_size() as usize;
    let mut w = bytes[..ty.row_size(n as u64).unwrap() as usize].to_vec();
    for b in w.chunks_exact_mut(bb) {
        for &o in f16_at {
            let mut v = u16::from_le_bytes([b[o], b[o + 1]]);
            if (v >> 10) & 31 == 31 {
                v &= !(1 << 14);
            }
            b[o..o + 2].copy_from_slice(&v.to_le_bytes());
        }
        if ty == GgmlType::MXFP4 {
            b[0] = 107 + b[0] % 41;
        }
        if ty == GgmlType::IQ1M {
            // The f16 scale is the top nibbles of the four u16 `scales`
            // (bytes 48..56); its bit 14 (the last word's) cleared keeps
            // the exponent finite.
            b[55] &= !0x40;
        }
    }
    w
}

/// Activation blocks of `vdt` (Q8_K or Q8_0) holding `qs` raised to
/// `floor` (-128: any i8), blocks with `sat` set saturated at
/// `floor`/127, scales from `d`; Q8_K's bsums are the sums of each 16
/// values, as its quantizer writes them.
fn decode_activations(vdt: GgmlType, qs: &[i8], sat: &[bool], d: &[f32], floor: i8) -> Vec<u8> {
    let qk = vdt.block_size() as usize;
    let mut a = Vec::new();
    for (b, q) in qs.chunks_exact(qk).enumerate() {
        let q: Vec<i8> = if sat[b % sat.len()] {
            q.iter().map(|&v| if v < 0 { floor } else { 127 }).collect()
        } else {
            q.iter().map(|&v| v.max(floor)).collect()
        };
        let d = d[b % d.len()];
        if vdt == GgmlType::Q8K {
            a.extend_from_slice(&d.to_le_bytes());
            a.extend(q.iter().map(|&v| v as u8));
            for s in q.chunks_exact(16) {
                let sum: i16 = s.iter().map(|&v| i16::from(v)).sum();
                a.extend_from_slice(&sum.to_le_bytes());
            }
        } else {
            let at = a.len();
            a.extend_from_slice(&[0, 0]);
            crate::float::write_f16(&mut a[at..], d);
            a.extend(q.iter().map(|&v| v as u8));
        }
    }
    a
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The decode-only types' dot products (explicit AVX2 at the AVX2 and
    /// AVX-512 levels) against their references, bit for bit, on random
    /// weight bytes with finite scales and random activations: 4
    /// super-blocks for the Q8_K types, 1..=33 blocks of 32 for MXFP4 (an
    /// odd count ends with a lone block). Where the CPU lacks AVX2,
    /// `available_levels` holds only the baseline, and this compares the
    /// reference with itself.
    #[test]
    fn decode_only_dots_match_the_reference_at_every_level(
        bytes in proptest::collection::vec(any::<u8>(), 1200),
        qs in proptest::collection::vec(any::<i8>(), 33 * 32),
        sat in proptest::collection::vec(proptest::bool::weighted(0.3), 7),
        d in proptest::collection::vec(prop_oneof![1e-4f32..0.1, -0.1f32..-1e-4], 5),
        fp4_blocks in 1usize..=33,
    ) {
        for &(ty, f16_at, dot) in DECODE_DOTS {
            let vdt = reference::vec_dot_type(ty).unwrap();
            let n = if ty == GgmlType::MXFP4 { 32 * fp4_blocks } else { 1024 };
            let w = decode_weights(ty, f16_at, &bytes, n);
            let a = decode_activations(vdt, &qs[..n], &sat, &d, -128);
            let want = dot(n, &w, &a);
            for level in available_levels() {
                let got = vec_dot_at(level, ty, n, &w, &a).unwrap();
                prop_assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                    "{} at {:?}, {} values: {} vs {}", ty, level, n, got, want);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The decode-only types' tiles (where a level has one) against the
    /// reference `vec_dot` of every pair, bit for bit, over partial tiles
    /// of rows and tokens. The activations stay within -127..=127, as
    /// the Q8_K and Q8_0 quantizers write them: the tiles multiply signed
    /// weights exactly, where the reference's sign trick wraps -128.
    #[test]
    fn decode_only_gemm_matches_the_reference_at_every_level(
        bytes in proptest::collection::vec(any::<u8>(), 9 * 440),
        qs in proptest::collection::vec(any::<i8>(), 7 * 512),
        sat in proptest::collection::vec(proptest::bool::weighted(0.2), 5),
        d in proptest::collection::vec(prop_oneof![1e-4f32..0.1, -0.1f32..-1e-4], 3),
        n_rows in 1usize..=9,
        n_tok in 1usize..=7,
        fp4_blocks in 1usize..=13,
    ) {
        for &(ty, f16_at, _) in DECODE_DOTS {
            let vdt = reference::vec_dot_type(ty).unwrap();
            let n = if ty == GgmlType::MXFP4 { 32 * fp4_blocks } else { 512 };
            let wb = ty.row_size(n as u64).unwrap() as usize;
            let w: Vec<u8> = bytes
                .chunks_exact(wb)
                .take(n_rows)
                .flat_map(|row| decode_weights(ty, f16_at, row, n))
                .collect();
            let a: Vec<u8> = qs
                .chunks_exact(n)
                .take(n_tok)
                .enumerate()
                .flat_map(|(t, q)| decode_activations(vdt, q, &sat[t % sat.len()..], &d, -127))
                .collect();
            check_gemm(ty, n, &w, &a);
        }
    }
}

/// MLX affine rows decoded from their stored bytes at every level against
/// `mlx::dequantize_ref` (f32), bit for bit: every width, group size and
/// scale dtype, scales and biases with zeros, subnormals, infinities and
/// NaN among them.
#[test]
fn mlx_affine_rows_match_the_reference_at_every_level() {
    use crate::mlx::{dequantize_ref, DequantPrecision, MlxDtype, MlxParams, Scales};
    use half::{bf16, f16};
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let (rows, cols) = (3usize, 256usize);
    let specials = [0.0f32, -0.0, 1e-7, f32::INFINITY, f32::NAN, -65504.0];
    for bits in [1u32, 2, 3, 4, 5, 6, 8] {
        for group in [32usize, 64, 128] {
            let params = MlxParams::affine(bits, group);
            let words: Vec<u32> = (0..rows * cols * bits as usize / 32)
                .map(|_| next() as u32)
                .collect();
            let packed: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            let n_groups = rows * cols / group;
            let vals: Vec<f32> = (0..2 * n_groups)
                .map(|i| match next() % 9 {
                    0 => specials[i % specials.len()],
                    _ => (next() % 4001) as f32 / 1000.0 - 2.0,
                })
                .collect();
            let (sv, bv) = vals.split_at(n_groups);
            for dtype in [MlxDtype::F32, MlxDtype::F16, MlxDtype::BF16] {
                let (s16, b16): (Vec<f16>, Vec<f16>) = (
                    sv.iter().map(|&x| f16::from_f32(x)).collect(),
                    bv.iter().map(|&x| f16::from_f32(x)).collect(),
                );
                let (sbf, bbf): (Vec<bf16>, Vec<bf16>) = (
                    sv.iter().map(|&x| bf16::from_f32(x)).collect(),
                    bv.iter().map(|&x| bf16::from_f32(x)).collect(),
                );
                let (scales, biases, sbytes, bbytes): (Scales, Scales, Vec<u8>, Vec<u8>) =
                    match dtype {
                        MlxDtype::F32 => (
                            Scales::F32(sv),
                            Scales::F32(bv),
                            sv.iter().flat_map(|x| x.to_le_bytes()).collect(),
                            bv.iter().flat_map(|x| x.to_le_bytes()).collect(),
                        ),
                        MlxDtype::F16 => (
                            Scales::F16(&s16),
                            Scales::F16(&b16),
                            s16.iter().flat_map(|x| x.to_le_bytes()).collect(),
                            b16.iter().flat_map(|x| x.to_le_bytes()).collect(),
                        ),
                        MlxDtype::BF16 => (
                            Scales::BF16(&sbf),
                            Scales::BF16(&bbf),
                            sbf.iter().flat_map(|x| x.to_le_bytes()).collect(),
                            bbf.iter().flat_map(|x| x.to_le_bytes()).collect(),
                        ),
                    };
                let want = dequantize_ref(
                    &words,
                    scales,
                    Some(biases),
                    cols,
                    &params,
                    DequantPrecision::F32,
                )
                .unwrap();
                for level in available_levels() {
                    let mut got = vec![f32::NAN; rows * cols];
                    mlx_affine_rows::run(
                        level, &packed, &sbytes, &bbytes, dtype, bits, group, &mut got,
                    );
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                            "{bits}-bit g{group} {dtype:?} at {level:?}, value {i}: {g} vs {w}"
                        );
                    }
                }
                let mut got = vec![0f32; rows * cols];
                crate::mlx::affine_rows_to_f32(
                    &packed, &sbytes, &bbytes, dtype, &params, cols, &mut got,
                )
                .unwrap();
                assert!(got
                    .iter()
                    .zip(&want)
                    .all(|(g, w)| g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan())));
                // A length that does not fit is an error, not a panic.
                assert!(crate::mlx::affine_rows_to_f32(
                    &packed[1..],
                    &sbytes,
                    &bbytes,
                    dtype,
                    &params,
                    cols,
                    &mut got,
                )
                .is_err());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// llamafile's `tinyBLAS` order for batches of F16 and F32 weights
    /// (`sgemm_at` at every level, and `ggml::gemm_batch`) against
    /// `reference::sgemm_dot`, bit for bit, over partial tiles: f16 bit
    /// patterns of every kind (subnormals, infinities and NaN included)
    /// and f32 values across exponents. The reference is bit-exact with
    /// ggml's `mul_mat` through `tests/interop/test_kernels_ggml.py`.
    #[test]
    fn sgemm_matches_the_reference_at_every_level(
        bits in proptest::collection::vec(any::<u16>(), 9 * 96 + 13 * 96),
        mant in proptest::collection::vec(-1.0f32..1.0, 9 * 96 + 13 * 96),
        exps in proptest::collection::vec(-40i32..40, 9 * 96 + 13 * 96),
        n_rows in 1usize..=9,
        n_tok in 1usize..=13,
        blocks in 1usize..=6,
    ) {
        let n = 16 * blocks;
        for ty in [GgmlType::F16, GgmlType::F32] {
            let value = |i: usize| -> Vec<u8> {
                if ty == GgmlType::F16 {
                    bits[i].to_le_bytes().to_vec()
                } else {
                    (mant[i] * 2f32.powi(exps[i])).to_le_bytes().to_vec()
                }
            };
            let eb = if ty == GgmlType::F16 { 2 } else { 4 };
            let w: Vec<u8> = (0..n_rows * n).flat_map(value).collect();
            let a: Vec<u8> = (0..n_tok * n).flat_map(|i| value(9 * 96 + i)).collect();
            let want: Vec<f32> = (0..n_tok * n_rows)
                .map(|i| {
                    let (t, r) = (i / n_rows, i % n_rows);
                    reference::sgemm_dot(ty, n, &w[r * n * eb..][..n * eb], &a[t * n * eb..][..n * eb])
                })
                .collect();
            let same = |g: &[f32], what: &str| {
                for (i, (g, w)) in g.iter().zip(&want).enumerate() {
                    assert!(
                        g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                        "{ty} {what}, row {} token {}: {g} vs {w}",
                        i % n_rows,
                        i / n_rows
                    );
                }
            };
            for level in available_levels() {
                let mut got = vec![f32::NAN; n_rows * n_tok];
                if sgemm_at(level, ty, n, &w, n_rows, &a, n_tok, &mut got) {
                    same(&got, &format!("sgemm at {level:?}"));
                }
            }
            let mut got = vec![f32::NAN; n_rows * n_tok];
            crate::ggml::gemm_batch(ty, n, &w, &a, &mut got, 4, 2).unwrap();
            same(&got, "gemm_batch");
            // Where ggml does not take tinyBLAS, `gemm_batch` is `gemm`.
            let mut per_pair = vec![f32::NAN; n_rows * n_tok];
            crate::ggml::gemm(ty, n, &w, &a, &mut per_pair).unwrap();
            for (rows, toks) in [(5, 2), (4, 1)] {
                crate::ggml::gemm_batch(ty, n, &w, &a, &mut got, rows, toks).unwrap();
                prop_assert!(got.iter().zip(&per_pair).all(|(g, p)| g.to_bits() == p.to_bits() || (g.is_nan() && p.is_nan())));
            }
        }
    }
}
