//! GGML quantize and dequantize on the GPU: the same checks and the same
//! bytes as [`crate::ggml::quantize`] (without an importance matrix) and
//! [`crate::ggml::dequantize`].

use std::sync::Arc;

use super::stream::par_copy;
use super::{chunk_spans, Gpu, GpuError, Launch, Module};
use crate::{ggml, GgmlType, KernelError};

/// The types with GPU kernels.
pub const GPU_TYPES: &[GgmlType] = &[
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q4K,
    GgmlType::Q6K,
];

/// (quantize entry, dequantize entry, quantize invocations per block).
/// Q6_K's workgroup of 64 takes a tile of 4 blocks, one invocation per
/// 16-value sub-block, Q4_K's a tile of 8 blocks, one invocation per
/// 32-value sub-block; the legacy types one block per invocation, in
/// tiles of 64 blocks.
pub(super) fn kernels(ty: GgmlType) -> Option<(&'static str, &'static str, usize)> {
    Some(match ty {
        GgmlType::Q8_0 => ("quantize_q8_0", "dequantize_q8_0", 1),
        GgmlType::Q4_0 => ("quantize_q4_0", "dequantize_q4_0", 1),
        GgmlType::Q4_1 => ("quantize_q4_1", "dequantize_q4_1", 1),
        GgmlType::Q4K => ("quantize_q4_k", "dequantize_q4_k", 8),
        GgmlType::Q6K => ("quantize_q6_k", "dequantize_q6_k", 16),
        _ => return None,
    })
}

impl Gpu {
    /// The kernel dispatched after a quantize entry in the same pass, over
    /// the same grid: Q6_K's and Q4_K's tiles that need the soft search.
    pub(super) fn second_pipeline(
        &self,
        module: Module,
        entry: &str,
    ) -> Result<Option<Arc<wgpu::ComputePipeline>>, GpuError> {
        let second = match (module, entry) {
            (Module::GgmlQuantize, "quantize_q6_k") => "quantize_q6_k_soft",
            (Module::GgmlQuantize, "quantize_q4_k") => "quantize_q4_k_soft",
            _ => return Ok(None),
        };
        self.pipeline(module, second).map(Some)
    }
}

/// Whether [`Gpu::quantize`] and [`Gpu::dequantize`] handle `ty`.
pub fn has_kernel(ty: GgmlType) -> bool {
    kernels(ty).is_some()
}

impl Gpu {
    /// Quantizes rows of `n_per_row` values exactly as
    /// [`crate::ggml::quantize`] does without an importance matrix (the same
    /// bytes, the same errors: lengths, NaN and infinities with the index of
    /// the first). Types: Q8_0, Q4_0, Q4_1, Q4_K, Q6_K.
    pub fn quantize(
        &self,
        ty: GgmlType,
        src: &[f32],
        n_per_row: usize,
        dst: &mut [u8],
    ) -> Result<(), GpuError> {
        let (entry, _, per_block) = kernels(ty)
            .ok_or_else(|| KernelError::Unsupported(format!("quantizing to {ty} on the GPU")))?;
        ggml::check_rows(ty, src.len(), n_per_row, dst.len())?;
        let bs = ty.block_size() as usize;
        let ts = ty.type_size() as usize;
        let n_blocks = src.len() / bs;
        let spans = chunk_spans(self.stream_binding(), n_blocks, bs * 4, ts, 2);
        let launches: Vec<Launch<'_>> = spans
            .iter()
            .map(|&(done, n)| Launch {
                module: Module::GgmlQuantize,
                entry,
                input: bytemuck::cast_slice(&src[done * bs..(done + n) * bs]),
                n_units: n as u32,
                invocations: (n * per_block) as u32,
                extra: [0; 3],
            })
            .collect();
        let out_lens: Vec<usize> = launches.iter().map(|l| l.n_units as usize * ts).collect();
        let first_bad = self.stream(&launches, &out_lens, |k, bytes| {
            let at = spans[k].0 * ts;
            par_copy(&mut dst[at..at + bytes.len()], bytes)
        })?;
        if let Some((k, i)) = first_bad {
            let index = spans[k].0 * bs + i as usize;
            return Err(KernelError::NonFinite {
                index,
                value: src[index],
            }
            .into());
        }
        Ok(())
    }

    /// Dequantizes whole blocks of `ty` into `dst`, bit-identical to
    /// [`crate::ggml::dequantize`] (NaN results, from NaN or infinite
    /// stored scales, are NaN with another payload). Types: Q8_0, Q4_0,
    /// Q4_1, Q4_K, Q6_K.
    pub fn dequantize(&self, ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), GpuError> {
        let (_, entry, _) = kernels(ty)
            .ok_or_else(|| KernelError::Unsupported(format!("dequantizing {ty} on the GPU")))?;
        let bs = ty.block_size() as usize;
        let ts = ty.type_size() as usize;
        if !dst.len().is_multiple_of(bs) || dst.len() / bs * ts != src.len() {
            return Err(KernelError::BadLength(format!(
                "{} bytes of {ty} hold {} values, the output has room for {}",
                src.len(),
                src.len() / ts * bs,
                dst.len()
            ))
            .into());
        }
        let n_blocks = src.len() / ts;
        let spans = chunk_spans(self.stream_binding(), n_blocks, ts, bs * 4, 1);
        let launches: Vec<Launch<'_>> = spans
            .iter()
            .map(|&(done, n)| Launch {
                module: Module::GgmlDequantize,
                entry,
                input: &src[done * ts..(done + n) * ts],
                n_units: (n * bs / 4) as u32,
                invocations: (n * bs / 4) as u32,
                extra: [0; 3],
            })
            .collect();
        let out_lens: Vec<usize> = launches.iter().map(|l| l.n_units as usize * 16).collect();
        let out: &mut [u8] = bytemuck::cast_slice_mut(dst);
        self.stream(&launches, &out_lens, |k, bytes| {
            let at = spans[k].0 * bs * 4;
            par_copy(&mut out[at..at + bytes.len()], bytes)
        })?;
        Ok(())
    }
}
