//! Weight matrices kept on the GPU and matrix-vector products against
//! them, for generation: upload a weight once ([`Gpu::upload_ggml`],
//! [`Gpu::upload_mlx`]), then per token [`Gpu::matvec`] (or
//! [`Gpu::matvec_shared`] for several matrices that read the same input,
//! such as q/k/v, in one submission).
//!
//! # Tolerance
//!
//! The products use the GPU's float arithmetic (fused multiply-adds, a
//! different summation order), so they are not bit-identical to the CPU.
//! With `u = 2^-24` and `n` the number of columns:
//!
//! - [`Activations::F32`]: `y = W x` with `W` exactly as
//!   [`crate::ggml::dequantize`] / [`crate::mlx::dequantize`] give it.
//!   `|y_gpu - y_exact| <= (n/32 + 64) * u * sum_i |W_i x_i|`: each of 32
//!   lanes sums its columns in order (`n/32` terms, fused), the lanes are
//!   added in a tree (5 levels), and an MLX weight `q*s + b` may be fused
//!   (one more rounding per term). The CPU's own f32 dot has an error of
//!   the same form, so two implementations differ by at most the sum of
//!   both bounds.
//! - [`Activations::Ggml`]: the activations are quantized on the CPU with
//!   [`crate::ggml::quantize_activations`] (bit-exact with ggml), the GPU
//!   forms the same integer block sums as [`crate::ggml::vec_dot`] and
//!   combines them in f32. With `T` the sum of the absolute values of the
//!   per-block float terms (`|d_w d_a isum|`, plus `|m_w s_a|` for Q4_1 and
//!   `|dmin_w d_a m bsum|` for Q4_K), `|y_gpu - y_vec_dot| <= (n/32 + 64) *
//!   u * T`. The integer parts are exact; only the order and fusion of the
//!   float additions differ.
//!
//! The tests check both bounds on random matrices.

use std::sync::Mutex;

use super::{entry, Gpu, GpuError, Module};
use crate::mlx::{MlxDtype, MlxMode, MlxParams, Scales};
use crate::{ggml, GgmlType, KernelError};

/// How [`Gpu::matvec`] treats the activation vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activations {
    /// f32 activations times the exactly dequantized weights.
    F32,
    /// Activations quantized as ggml's CPU backend does for the weight
    /// type's `vec_dot` (Q8_0, Q8_1 or Q8_K); GGML weights only.
    Ggml,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Ggml(GgmlType),
    Mlx {
        bits: u32,
        group: u32,
        dtype: MlxDtype,
    },
}

/// `kind` codes of matvec.wgsl.
pub(super) fn kind_code(k: Kind) -> u32 {
    match k {
        Kind::Ggml(GgmlType::Q8_0) => 0,
        Kind::Ggml(GgmlType::Q4_0) => 1,
        Kind::Ggml(GgmlType::Q4_1) => 2,
        Kind::Ggml(GgmlType::Q4K) => 3,
        Kind::Ggml(GgmlType::Q6K) => 4,
        Kind::Ggml(_) => unreachable!("checked at upload"),
        Kind::Mlx { .. } => 5,
    }
}

pub(super) struct Chunk {
    pub(super) first_row: usize,
    pub(super) rows: usize,
    pub(super) buffer: wgpu::Buffer,
    /// MLX: word offsets of the scales and biases in `buffer`.
    pub(super) sb_offset: u32,
    pub(super) bb_offset: u32,
}

/// A weight matrix (`rows x cols`, `cols` inputs to `rows` outputs) held
/// in GPU memory in its stored encoding, split into row chunks that fit
/// the adapter's binding limit.
pub struct GpuMatrix {
    pub(super) kind: Kind,
    rows: usize,
    cols: usize,
    pub(super) chunks: Vec<Chunk>,
}

impl std::fmt::Debug for GpuMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuMatrix")
            .field("kind", &self.kind)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("chunks", &self.chunks.len())
            .finish()
    }
}

impl GpuMatrix {
    /// Output rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes held on the GPU.
    pub fn gpu_bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.buffer.size()).sum()
    }
}

/// Reusable buffers of the mat-vec path (one submission at a time).
#[derive(Default)]
pub(crate) struct Scratch {
    x: Option<wgpu::Buffer>,
    y: Option<wgpu::Buffer>,
    readback: Option<wgpu::Buffer>,
    params: Option<wgpu::Buffer>,
}

/// Bytes of a uniform slot (the largest minimum offset alignment).
const PARAM_SLOT: u64 = 256;

fn grow(
    device: &wgpu::Device,
    slot: &mut Option<wgpu::Buffer>,
    label: &str,
    size: u64,
    usage: wgpu::BufferUsages,
) -> wgpu::Buffer {
    let size = size.max(16).next_multiple_of(16);
    match slot {
        Some(b) if b.size() >= size => b.clone(),
        _ => {
            let b = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: size.next_power_of_two(),
                usage,
                mapped_at_creation: false,
            });
            *slot = Some(b.clone());
            b
        }
    }
}

impl Gpu {
    /// Uploads a GGML weight matrix (`rows` rows of `cols` values of
    /// `ty`, as stored in GGUF). Types: Q8_0, Q4_0, Q4_1, Q4_K, Q6_K.
    pub fn upload_ggml(
        &self,
        ty: GgmlType,
        data: &[u8],
        rows: usize,
        cols: usize,
    ) -> Result<GpuMatrix, GpuError> {
        if !matches!(
            ty,
            GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4K | GgmlType::Q6K
        ) {
            return Err(KernelError::Unsupported(format!("{ty} mat-vec on the GPU")).into());
        }
        let row_bytes = ggml::row_size(ty, cols)?;
        if rows.checked_mul(row_bytes) != Some(data.len()) {
            return Err(KernelError::BadLength(format!(
                "{} bytes do not hold {rows} rows of {cols} {ty} values ({row_bytes} bytes each)",
                data.len()
            ))
            .into());
        }
        let per_chunk = ((self.max_binding - 8) as usize / row_bytes.max(1)).max(1);
        let mut chunks = Vec::new();
        let mut first_row = 0;
        while first_row < rows {
            let n = per_chunk.min(rows - first_row);
            let bytes = &data[first_row * row_bytes..(first_row + n) * row_bytes];
            chunks.push(Chunk {
                first_row,
                rows: n,
                buffer: self.upload("weights", bytes),
                sb_offset: 0,
                bb_offset: 0,
            });
            first_row += n;
        }
        self.wait("uploading weights")?;
        Ok(GpuMatrix {
            kind: Kind::Ggml(ty),
            rows,
            cols,
            chunks,
        })
    }

    /// Uploads an MLX affine matrix: `weight` (`rows x cols*bits/32`
    /// words), `scales` and `biases` (`rows x cols/group`, one float
    /// dtype). `params` must be affine with 2 to 8 bits (not 7).
    pub fn upload_mlx(
        &self,
        weight: &[u32],
        scales: Scales<'_>,
        biases: Scales<'_>,
        cols: usize,
        params: &MlxParams,
    ) -> Result<GpuMatrix, GpuError> {
        if params.mode != MlxMode::Affine || !matches!(params.bits, 2..=6 | 8) {
            return Err(KernelError::Unsupported(format!(
                "MLX {} {}-bit mat-vec on the GPU",
                params.mode.name(),
                params.bits
            ))
            .into());
        }
        let rows = crate::mlx::check_quantized(weight, &scales, Some(&biases), cols, params)?;
        let dtype = scales.dtype().expect("checked: affine scales are floats");
        let ss = match dtype {
            MlxDtype::F32 => 4,
            _ => 2,
        };
        let wpr = params.words_per_row(cols);
        let gpr = params.groups_per_row(cols);
        let row_bytes = wpr * 4 + 2 * gpr * ss;
        let per_chunk = ((self.max_binding - 16) as usize / row_bytes).max(1);
        let (sbytes, bbytes) = (scales.to_le_bytes(), biases.to_le_bytes());
        let mut chunks = Vec::new();
        let mut first_row = 0;
        while first_row < rows {
            let n = per_chunk.min(rows - first_row);
            let packed = n * wpr * 4;
            let sb = (n * gpr * ss).next_multiple_of(4);
            let mut bytes = Vec::with_capacity(packed + 2 * sb);
            bytes.extend_from_slice(bytemuck::cast_slice(
                &weight[first_row * wpr..(first_row + n) * wpr],
            ));
            bytes.extend_from_slice(&sbytes[first_row * gpr * ss..(first_row + n) * gpr * ss]);
            bytes.resize(packed + sb, 0);
            bytes.extend_from_slice(&bbytes[first_row * gpr * ss..(first_row + n) * gpr * ss]);
            bytes.resize(packed + 2 * sb, 0);
            chunks.push(Chunk {
                first_row,
                rows: n,
                buffer: self.upload("weights", &bytes),
                sb_offset: (packed / 4) as u32,
                bb_offset: ((packed + sb) / 4) as u32,
            });
            first_row += n;
        }
        self.wait("uploading weights")?;
        Ok(GpuMatrix {
            kind: Kind::Mlx {
                bits: params.bits,
                group: params.group_size as u32,
                dtype,
            },
            rows,
            cols,
            chunks,
        })
    }

    /// `y = W x` for one or more tokens: `x` holds `n_tok` rows of
    /// `m.cols()` values, `y` receives `n_tok` rows of `m.rows()`.
    pub fn matvec(
        &self,
        m: &GpuMatrix,
        x: &[f32],
        act: Activations,
        y: &mut [f32],
    ) -> Result<(), GpuError> {
        self.matvec_shared(&[m], x, act, &mut [y])
    }

    /// Several products over the same input in one submission (q/k/v,
    /// gate/up): `ys[i] = mats[i] x`. All matrices must have `x`'s width.
    pub fn matvec_shared(
        &self,
        mats: &[&GpuMatrix],
        x: &[f32],
        act: Activations,
        ys: &mut [&mut [f32]],
    ) -> Result<(), GpuError> {
        let op = "mat-vec";
        let Some(first) = mats.first() else {
            return Ok(());
        };
        let cols = first.cols;
        if mats.len() != ys.len() || cols == 0 || !x.len().is_multiple_of(cols) {
            return Err(KernelError::BadLength(format!(
                "{} activations for matrices of {cols} columns, {} matrices for {} outputs",
                x.len(),
                mats.len(),
                ys.len()
            ))
            .into());
        }
        let n_tok = x.len() / cols;
        for (m, y) in mats.iter().zip(ys.iter()) {
            if m.cols != cols || y.len() != n_tok * m.rows {
                return Err(KernelError::BadLength(format!(
                    "a {} x {} matrix against {n_tok} activation rows of {cols} needs {} outputs, got {}",
                    m.rows,
                    m.cols,
                    n_tok * m.rows,
                    y.len()
                ))
                .into());
            }
            if act == Activations::Ggml && !matches!(m.kind, Kind::Ggml(_)) {
                return Err(KernelError::Unsupported(
                    "ggml-quantized activations with an MLX matrix".into(),
                )
                .into());
            }
        }
        if n_tok == 0 {
            return Ok(());
        }
        // The activations: f32, or one encoding per activation type needed,
        // each token row padded to whole words.
        let mut xbytes: Vec<u8> = Vec::new();
        let mut sections: Vec<(Option<GgmlType>, u32, u32)> = Vec::new();
        let mut section_for = |vdt: Option<GgmlType>| -> Result<(u32, u32), GpuError> {
            if let Some(s) = sections.iter().find(|s| s.0 == vdt) {
                return Ok((s.1, s.2));
            }
            let offset = (xbytes.len() / 4) as u32;
            let stride = match vdt {
                None => {
                    xbytes.extend_from_slice(bytemuck::cast_slice(x));
                    cols as u32
                }
                Some(t) => {
                    let rb = ggml::row_size(t, cols)?;
                    let padded = rb.next_multiple_of(4);
                    let mut row = vec![0u8; padded];
                    for xt in x.chunks_exact(cols) {
                        ggml::quantize_activations(t, xt, &mut row[..rb])?;
                        xbytes.extend_from_slice(&row);
                    }
                    (padded / 4) as u32
                }
            };
            sections.push((vdt, offset, stride));
            Ok((offset, stride))
        };
        struct Plan {
            offsets: (u32, u32),
        }
        let mut plans = Vec::with_capacity(mats.len());
        for m in mats {
            let vdt = match (act, m.kind) {
                (Activations::Ggml, Kind::Ggml(t)) => ggml::vec_dot_type(t),
                _ => None,
            };
            plans.push(Plan {
                offsets: section_for(vdt)?,
            });
        }
        xbytes.extend_from_slice(&[0u8; 4]);
        let total_y: usize = mats.iter().map(|m| m.rows * n_tok).sum();
        let n_dispatch: usize = mats.iter().map(|m| m.chunks.len()).sum();
        let entry_point = match act {
            Activations::F32 => "matvec_f32",
            Activations::Ggml => "matvec_q8",
        };
        let pipeline = self.pipeline(Module::MatVec, entry_point)?;
        let mut scratch = self.scratch.lock().unwrap();
        let scope = super::ErrorScope::push(&self.device);
        let usage_s = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        let xbuf = grow(
            &self.device,
            &mut scratch.x,
            "x",
            xbytes.len() as u64,
            usage_s,
        );
        let ybuf = grow(
            &self.device,
            &mut scratch.y,
            "y",
            total_y as u64 * 4,
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        );
        let rb = grow(
            &self.device,
            &mut scratch.readback,
            "y readback",
            total_y as u64 * 4,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        );
        let pbuf = grow(
            &self.device,
            &mut scratch.params,
            "mat-vec params",
            n_dispatch as u64 * PARAM_SLOT,
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        );
        self.queue.write_buffer(&xbuf, 0, &xbytes);
        let mut params = vec![0u8; n_dispatch * PARAM_SLOT as usize];
        let mut binds = Vec::with_capacity(n_dispatch);
        let mut y_offset = 0usize;
        let mut slot = 0usize;
        for (m, plan) in mats.iter().zip(&plans) {
            let (bits, group, dtype) = match m.kind {
                Kind::Mlx { bits, group, dtype } => (
                    bits,
                    group,
                    match dtype {
                        MlxDtype::F32 => 0,
                        MlxDtype::F16 => 1,
                        MlxDtype::BF16 => 2,
                    },
                ),
                Kind::Ggml(_) => (0, 0, 0),
            };
            let row_bytes = match m.kind {
                Kind::Ggml(t) => ggml::row_size(t, cols)? as u32,
                Kind::Mlx { .. } => 0,
            };
            for c in &m.chunks {
                let words: [u32; 16] = [
                    c.rows as u32,
                    cols as u32,
                    row_bytes,
                    kind_code(m.kind),
                    plan.offsets.0,
                    plan.offsets.1,
                    (y_offset + c.first_row) as u32,
                    m.rows as u32,
                    c.sb_offset,
                    c.bb_offset,
                    bits,
                    group,
                    dtype,
                    n_tok as u32,
                    0,
                    0,
                ];
                let at = slot * PARAM_SLOT as usize;
                params[at..at + 64].copy_from_slice(bytemuck::cast_slice(&words));
                let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("mat-vec"),
                    layout: &pipeline.get_bind_group_layout(0),
                    entries: &[
                        entry(0, &c.buffer),
                        entry(1, &xbuf),
                        entry(2, &ybuf),
                        wgpu::BindGroupEntry {
                            binding: 3,
                            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer: &pbuf,
                                offset: slot as u64 * PARAM_SLOT,
                                size: wgpu::BufferSize::new(64),
                            }),
                        },
                    ],
                });
                binds.push((bind, c.rows.div_ceil(8) as u32));
                slot += 1;
            }
            y_offset += m.rows * n_tok;
        }
        self.queue.write_buffer(&pbuf, 0, &params);
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            pass.set_pipeline(&pipeline);
            for (bind, groups) in &binds {
                pass.set_bind_group(0, bind, &[]);
                pass.dispatch_workgroups(*groups, n_tok as u32, 1);
            }
        }
        enc.copy_buffer_to_buffer(&ybuf, 0, &rb, 0, total_y as u64 * 4);
        self.queue.submit([enc.finish()]);
        scope.check(op)?;
        let mut all = vec![0f32; total_y];
        self.read_back(&rb, bytemuck::cast_slice_mut(&mut all), op)?;
        let mut at = 0;
        for y in ys.iter_mut() {
            y.copy_from_slice(&all[at..at + y.len()]);
            at += y.len();
        }
        Ok(())
    }
}

/// Keeps [`Scratch`] behind the device's lock (one mat-vec at a time).
pub(crate) type ScratchLock = Mutex<Scratch>;
