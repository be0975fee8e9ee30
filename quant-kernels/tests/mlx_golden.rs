//! Golden vectors from mlx 0.32.4 on CPU (fixtures/golden/mlx/generate.py):
//! every setting's quantize and dequantize must match to the bit, on the
//! scalar reference and on the fast parallel path.

mod mlx_common;

use half::{bf16, f16};
use mlx_common::{golden_dir, load, Golden};
use quant_kernels::mlx::{
    self, DequantPrecision, MlxDtype, MlxInput, MlxMode, MlxParams, MlxQuantized, ScaleBuf,
};

fn dtype_of(name: &str) -> MlxDtype {
    match name {
        "float32" => MlxDtype::F32,
        "float16" => MlxDtype::F16,
        "bfloat16" => MlxDtype::BF16,
        other => panic!("unknown dtype {other}"),
    }
}

struct Input {
    f32: Vec<f32>,
    f16: Vec<f16>,
    bf16: Vec<bf16>,
    dtype: MlxDtype,
    cols: usize,
}

impl Input {
    fn load(dtype: &str) -> Input {
        let g = load(&golden_dir().join(format!("input_{dtype}.qgold")));
        let t = g.tensor("input");
        Input {
            f32: if dtype == "float32" {
                t.as_f32()
            } else {
                vec![]
            },
            f16: if dtype == "float16" {
                t.as_u16().into_iter().map(f16::from_bits).collect()
            } else {
                vec![]
            },
            bf16: if dtype == "bfloat16" {
                t.as_u16().into_iter().map(bf16::from_bits).collect()
            } else {
                vec![]
            },
            dtype: dtype_of(dtype),
            cols: g.meta_usize("cols"),
        }
    }

    fn as_input(&self) -> MlxInput<'_> {
        match self.dtype {
            MlxDtype::F32 => MlxInput::F32(&self.f32),
            MlxDtype::F16 => MlxInput::F16(&self.f16),
            MlxDtype::BF16 => MlxInput::BF16(&self.bf16),
        }
    }
}

fn scale_bytes(s: &ScaleBuf) -> Vec<u8> {
    s.to_le_bytes()
}

fn bits_of(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Compares and returns a description of the first difference, if any.
fn diff_f32(what: &str, ours: &[f32], theirs: &[f32]) -> Option<String> {
    if ours.len() != theirs.len() {
        return Some(format!(
            "{what}: {} values, mlx has {}",
            ours.len(),
            theirs.len()
        ));
    }
    let bad: Vec<usize> = (0..ours.len())
        .filter(|&i| {
            ours[i].to_bits() != theirs[i].to_bits() && !(ours[i].is_nan() && theirs[i].is_nan())
        })
        .collect();
    bad.first().map(|&i| {
        format!(
            "{what}: {} of {} differ, first at {i}: ours {} mlx {}",
            bad.len(),
            ours.len(),
            ours[i],
            theirs[i]
        )
    })
}

fn check_quantized(name: &str, q: &MlxQuantized, g: &Golden, errors: &mut Vec<String>) {
    if q.weight != g.tensor("weight").as_u32() {
        let theirs = g.tensor("weight").as_u32();
        let n = q.weight.iter().zip(&theirs).filter(|(a, b)| a != b).count();
        errors.push(format!("{name}: {n} weight words differ"));
    }
    if scale_bytes(&q.scales) != g.tensor("scales").bytes {
        errors.push(format!("{name}: scales differ"));
    }
    match (&q.biases, g.try_tensor("biases")) {
        (Some(b), Some(t)) if scale_bytes(b) != t.bytes => {
            errors.push(format!("{name}: biases differ"))
        }
        (None, Some(_)) | (Some(_), None) => {
            errors.push(format!("{name}: biases present on one side only"))
        }
        _ => {}
    }
}

#[test]
fn affine_matches_mlx_cpu_on_every_setting() {
    let mut errors = Vec::new();
    let mut checked = 0;
    for dtype in ["float32", "float16", "bfloat16"] {
        let input = Input::load(dtype);
        for bits in [1u32, 2, 3, 4, 5, 6, 8] {
            for group in [32usize, 64, 128] {
                let name = format!("affine_b{bits}_g{group}_{dtype}");
                let g = load(&golden_dir().join(format!("{name}.qgold")));
                let params = MlxParams::affine(bits, group);
                let reference = mlx::quantize_ref(input.as_input(), input.cols, &params).unwrap();
                let fast = mlx::quantize(input.as_input(), input.cols, &params).unwrap();
                check_quantized(&format!("{name} (reference)"), &reference, &g, &mut errors);
                if fast != reference {
                    errors.push(format!("{name}: the fast path differs from the reference"));
                }
                // Dequantize mlx's own tensors.
                let weight = g.tensor("weight").as_u32();
                let (s, b) = (g.scales("scales"), g.scales("biases"));
                for deq in [mlx::dequantize, mlx::dequantize_ref] {
                    let mlx_rounded = deq(
                        &weight,
                        s.as_scales(),
                        Some(b.as_scales()),
                        input.cols,
                        &params,
                        DequantPrecision::Mlx(input.dtype),
                    )
                    .unwrap();
                    errors.extend(diff_f32(
                        &format!("{name} dequant (mlx rounding)"),
                        &mlx_rounded,
                        &g.tensor("dequant_mlx").as_f32_widened(),
                    ));
                    let exact = deq(
                        &weight,
                        s.as_scales(),
                        Some(b.as_scales()),
                        input.cols,
                        &params,
                        DequantPrecision::F32,
                    )
                    .unwrap();
                    let want = if dtype == "float32" {
                        "dequant_mlx"
                    } else {
                        "dequant_f32"
                    };
                    errors.extend(diff_f32(
                        &format!("{name} dequant (f32)"),
                        &exact,
                        &g.tensor(want).as_f32_widened(),
                    ));
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 63);
    assert!(
        errors.is_empty(),
        "{} mismatches:\n{}",
        errors.len(),
        errors.join("\n")
    );
}

#[test]
fn fp_modes_match_mlx_cpu() {
    let mut errors = Vec::new();
    for dtype in ["float32", "float16", "bfloat16"] {
        let input = Input::load(dtype);
        for file in ["mxfp4", "mxfp8", "nvfp4", "nvfp4_global"] {
            let name = format!("{file}_{dtype}");
            let g = load(&golden_dir().join(format!("{name}.qgold")));
            let params = match g.meta("mode") {
                "mxfp4" => MlxParams::mxfp4(),
                "mxfp8" => MlxParams::mxfp8(),
                _ => MlxParams::nvfp4(
                    g.try_meta("global_scale_bits")
                        .map(|h| f32::from_bits(u32::from_str_radix(h, 16).unwrap())),
                ),
            };
            let reference = mlx::quantize_ref(input.as_input(), input.cols, &params).unwrap();
            let fast = mlx::quantize(input.as_input(), input.cols, &params).unwrap();
            check_quantized(&name, &reference, &g, &mut errors);
            if fast != reference {
                errors.push(format!("{name}: the fast path differs from the reference"));
            }
            let weight = g.tensor("weight").as_u32();
            let s = g.scales("scales");
            for (odt, out) in [
                ("float32", MlxDtype::F32),
                ("float16", MlxDtype::F16),
                ("bfloat16", MlxDtype::BF16),
            ] {
                let ours = mlx::dequantize(
                    &weight,
                    s.as_scales(),
                    None,
                    input.cols,
                    &params,
                    DequantPrecision::Mlx(out),
                )
                .unwrap();
                errors.extend(diff_f32(
                    &format!("{name} dequant to {odt}"),
                    &ours,
                    &g.tensor(&format!("dequant_{odt}")).as_f32_widened(),
                ));
            }
            let exact = mlx::dequantize(
                &weight,
                s.as_scales(),
                None,
                input.cols,
                &params,
                DequantPrecision::F32,
            )
            .unwrap();
            errors.extend(diff_f32(
                &format!("{name} dequant f32"),
                &exact,
                &g.tensor("dequant_float32").as_f32_widened(),
            ));
            assert_eq!(params.mode == MlxMode::Affine, reference.biases.is_some());
        }
    }
    assert!(
        errors.is_empty(),
        "{} mismatches:\n{}",
        errors.len(),
        errors.join("\n")
    );
}

#[test]
fn golden_inputs_are_adversarial() {
    // Guard against a generator change that drops the hard rows.
    let input = Input::load("float32");
    let rows: Vec<&[f32]> = input.f32.chunks(input.cols).collect();
    assert!(rows[0].iter().all(|&x| x == 0.0));
    assert!(rows[3].iter().all(|&x| x < 0.0));
    assert!(rows[5].contains(&1000.0));
    assert!(rows[6]
        .iter()
        .any(|&x| x != 0.0 && x.abs() < f32::MIN_POSITIVE));
    assert_eq!(bits_of(&rows[1][..1]), bits_of(&[0.3]));
}

#[test]
fn ggml_blocks_transcode_like_mx_load() {
    use quant_kernels::mlx::transcode::{ggml_to_mlx, mlx_to_ggml, GgmlBlock};
    for (file, kind) in [
        ("q4_0", GgmlBlock::Q4_0),
        ("q4_1", GgmlBlock::Q4_1),
        ("q8_0", GgmlBlock::Q8_0),
    ] {
        let g = load(&golden_dir().join(format!("ggml_{file}.qgold")));
        let cols = g.meta_usize("cols");
        let blocks = &g.tensor("blocks").bytes;
        let t = ggml_to_mlx(kind, blocks, cols, MlxDtype::F16).unwrap();
        assert!(t.is_exact(), "{file}: {:?}", t.first_inexact);
        let m = t.value;
        assert_eq!(m.weight, g.tensor("weight").as_u32(), "{file} weight");
        assert_eq!(
            m.scales.to_le_bytes(),
            g.tensor("scales").bytes,
            "{file} scales"
        );
        assert_eq!(
            m.biases.as_ref().unwrap().to_le_bytes(),
            g.tensor("biases").bytes,
            "{file} biases"
        );
        let back = mlx_to_ggml(
            kind,
            &m.weight,
            m.scales.as_scales(),
            m.biases.as_ref().unwrap().as_scales(),
            cols,
            32,
        )
        .unwrap();
        assert_eq!(&back.exact().unwrap(), blocks, "{file} round trip");
        // Dequantized in f32, the MLX tensors give GGML's values exactly.
        let deq = mlx::dequantize(
            &m.weight,
            m.scales.as_scales(),
            m.biases.as_ref().map(ScaleBuf::as_scales),
            cols,
            &kind.mlx_params(),
            DequantPrecision::F32,
        )
        .unwrap();
        for (i, block) in blocks.chunks_exact(kind.block_bytes()).enumerate() {
            let d = f16::from_bits(u16::from_le_bytes([block[0], block[1]])).to_f32();
            for j in 0..32 {
                let x = match kind {
                    GgmlBlock::Q4_0 => {
                        d * (f32::from((block[2 + j % 16] >> (4 * (j / 16))) & 15) - 8.0)
                    }
                    GgmlBlock::Q4_1 => {
                        let m = f16::from_bits(u16::from_le_bytes([block[2], block[3]])).to_f32();
                        d * f32::from((block[4 + j % 16] >> (4 * (j / 16))) & 15) + m
                    }
                    GgmlBlock::Q8_0 => d * f32::from(block[2 + j] as i8),
                };
                // Equal values; GGML's `d*0` is -0.0 for a negative d where
                // MLX's `8d + -8d` is +0.0, hence `==`, not bits.
                assert_eq!(deq[i * 32 + j], x, "{file} block {i} element {j}");
            }
        }
    }
}
