//! MLX affine quantize and dequantize on the GPU: the same checks and the
//! same values as [`crate::mlx::quantize`] (CPU variant) and
//! [`crate::mlx::dequantize`] with [`crate::mlx::DequantPrecision::F32`].

use half::{bf16, f16};

use super::stream::par_copy;
use super::{chunk_spans, Gpu, GpuError, Launch, Module};
use crate::mlx::{
    self, MlxDtype, MlxInput, MlxMode, MlxParams, MlxQuantized, MlxVariant, ScaleBuf, Scales,
};
use crate::KernelError;

fn dtype_code(d: MlxDtype) -> u32 {
    match d {
        MlxDtype::F32 => 0,
        MlxDtype::F16 => 1,
        MlxDtype::BF16 => 2,
    }
}

fn dtype_size(d: MlxDtype) -> usize {
    match d {
        MlxDtype::F32 => 4,
        MlxDtype::F16 | MlxDtype::BF16 => 2,
    }
}

/// Whether the GPU kernels handle `params` (affine, CPU variant, 2 to 8
/// bits but not 7, groups of 32/64/128).
pub fn mlx_has_kernel(params: &MlxParams) -> bool {
    params.mode == MlxMode::Affine
        && params.variant == MlxVariant::Cpu
        && matches!(params.bits, 2..=6 | 8)
        && params.validate().is_ok()
}

fn check_supported(params: &MlxParams) -> Result<(), KernelError> {
    params.validate()?;
    if !mlx_has_kernel(params) {
        return Err(KernelError::Unsupported(format!(
            "MLX {} {}-bit ({:?} variant) on the GPU (it runs affine 2-6 and 8 bits, CPU variant)",
            params.mode.name(),
            params.bits,
            params.variant
        )));
    }
    Ok(())
}

/// Bytes of `n` scales of `d`, padded to whole words.
fn scale_bytes(n: usize, d: MlxDtype) -> usize {
    (n * dtype_size(d)).next_multiple_of(4)
}

/// The quantize kernel's entry point for `bits`: 4 and 8 have their own,
/// with the width a constant the driver can fold.
pub(super) fn quantize_entry(bits: u32) -> &'static str {
    match bits {
        4 => "mlx_quantize_4",
        8 => "mlx_quantize_8",
        _ => "mlx_quantize",
    }
}

impl Gpu {
    /// Quantizes a row-major `rows x cols` matrix exactly as
    /// [`crate::mlx::quantize`] does with the CPU variant (same words,
    /// scales and biases; same errors). Affine 2, 3, 4, 5, 6 and 8 bits.
    pub fn mlx_quantize(
        &self,
        src: MlxInput<'_>,
        cols: usize,
        params: &MlxParams,
    ) -> Result<MlxQuantized, GpuError> {
        check_supported(params)?;
        let rows = mlx::check_cols(src.len(), cols, params)?;
        let dtype = src.dtype();
        let gs = params.group_size;
        let bits = params.bits as usize;
        let wpg = gs * bits / 32;
        let n_groups = rows * params.groups_per_row(cols);
        let bytes: Vec<u8>;
        let input: &[u8] = match src {
            MlxInput::F32(v) => bytemuck::cast_slice(v),
            MlxInput::F16(v) => {
                bytes = v.iter().flat_map(|h| h.to_bits().to_le_bytes()).collect();
                &bytes
            }
            MlxInput::BF16(v) => {
                bytes = v.iter().flat_map(|h| h.to_bits().to_le_bytes()).collect();
                &bytes
            }
        };
        let es = dtype_size(dtype);
        let ss = dtype_size(dtype);
        let mut weight = vec![0u32; n_groups * wpg];
        let mut scales = vec![0u8; n_groups * ss];
        let mut biases = vec![0u8; n_groups * ss];
        let spans = chunk_spans(
            self.stream_binding(),
            n_groups,
            gs * es,
            wpg * 4 + 2 * ss,
            2,
        );
        let launches: Vec<Launch<'_>> = spans
            .iter()
            .map(|&(done, n)| Launch {
                module: Module::Mlx,
                entry: quantize_entry(params.bits),
                input: &input[done * gs * es..(done + n) * gs * es],
                n_units: n as u32,
                // One invocation per row of 32 values.
                invocations: (n * gs / 32) as u32,
                extra: [params.bits, gs as u32, dtype_code(dtype)],
            })
            .collect();
        let out_lens: Vec<usize> = launches
            .iter()
            .map(|l| {
                let n = l.n_units as usize;
                n * wpg * 4 + 2 * scale_bytes(n, dtype)
            })
            .collect();
        let first_bad = self.stream(&launches, &out_lens, |k, out| {
            let (done, n) = spans[k];
            let packed = n * wpg * 4;
            let sb = scale_bytes(n, dtype);
            for (w, b) in weight[done * wpg..(done + n) * wpg]
                .iter_mut()
                .zip(out[..packed].chunks_exact(4))
            {
                *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
            scales[done * ss..(done + n) * ss].copy_from_slice(&out[packed..packed + n * ss]);
            biases[done * ss..(done + n) * ss]
                .copy_from_slice(&out[packed + sb..packed + sb + n * ss]);
        })?;
        if let Some((k, i)) = first_bad {
            let index = spans[k].0 * gs + i as usize;
            let value = match src {
                MlxInput::F32(v) => v[index],
                MlxInput::F16(v) => v[index].to_f32(),
                MlxInput::BF16(v) => v[index].to_f32(),
            };
            return Err(KernelError::NonFinite { index, value }.into());
        }
        let to_buf = |b: &[u8]| match dtype {
            MlxDtype::F32 => ScaleBuf::F32(
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            MlxDtype::F16 => ScaleBuf::F16(
                b.chunks_exact(2)
                    .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
                    .collect(),
            ),
            MlxDtype::BF16 => ScaleBuf::BF16(
                b.chunks_exact(2)
                    .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])))
                    .collect(),
            ),
        };
        Ok(MlxQuantized {
            weight,
            scales: to_buf(&scales),
            biases: Some(to_buf(&biases)),
        })
    }

    /// Dequantizes MLX affine tensors to f32 exactly as
    /// [`crate::mlx::dequantize`] does with [`crate::mlx::DequantPrecision::F32`]
    /// (`f32(f32(q*scale) + bias)`; NaN results, from non-finite stored
    /// scales or biases, carry another payload).
    pub fn mlx_dequantize(
        &self,
        weight: &[u32],
        scales: Scales<'_>,
        biases: Option<Scales<'_>>,
        cols: usize,
        params: &MlxParams,
    ) -> Result<Vec<f32>, GpuError> {
        check_supported(params)?;
        let rows = mlx::check_quantized(weight, &scales, biases.as_ref(), cols, params)?;
        let biases = biases.expect("checked: affine has biases");
        let dtype = scales.dtype().expect("checked: affine scales are floats");
        let gs = params.group_size;
        let wpg = gs * params.bits as usize / 32;
        let n_groups = rows * params.groups_per_row(cols);
        let ss = dtype_size(dtype);
        let (sbytes, bbytes) = (scales.to_le_bytes(), biases.to_le_bytes());
        let mut out = vec![0f32; rows * cols];
        let spans = chunk_spans(self.stream_binding(), n_groups, wpg * 4 + 2 * ss, gs * 4, 2);
        // Each chunk's words, then its scales and its biases, each padded
        // to whole words.
        let inputs: Vec<Vec<u8>> = spans
            .iter()
            .map(|&(done, n)| {
                let sb = scale_bytes(n, dtype);
                let mut input = Vec::with_capacity(n * wpg * 4 + 2 * sb);
                for w in &weight[done * wpg..(done + n) * wpg] {
                    input.extend_from_slice(&w.to_le_bytes());
                }
                input.extend_from_slice(&sbytes[done * ss..(done + n) * ss]);
                input.resize(n * wpg * 4 + sb, 0);
                input.extend_from_slice(&bbytes[done * ss..(done + n) * ss]);
                input.resize(n * wpg * 4 + 2 * sb, 0);
                input
            })
            .collect();
        let launches: Vec<Launch<'_>> = spans
            .iter()
            .zip(&inputs)
            .map(|(&(_, n), input)| Launch {
                module: Module::Mlx,
                entry: "mlx_dequantize",
                input,
                n_units: (n * gs / 4) as u32,
                invocations: (n * gs / 4) as u32,
                extra: [params.bits, gs as u32, dtype_code(dtype)],
            })
            .collect();
        let out_lens: Vec<usize> = launches.iter().map(|l| l.n_units as usize * 16).collect();
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut out);
        self.stream(&launches, &out_lens, |k, got| {
            let at = spans[k].0 * gs * 4;
            par_copy(&mut bytes[at..at + got.len()], got)
        })?;
        Ok(out)
    }
}
