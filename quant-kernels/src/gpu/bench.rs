//! Timing hooks for the GPU benchmark (benches/gpu.rs): kernels run on
//! buffers already on the device, so the numbers are the kernels' own
//! bandwidth, next to a device-to-device copy measured the same way.

use std::time::Instant;

use super::{entry, Gpu, GpuError, Module};
use crate::GgmlType;

/// One kernel, resident inputs, timed over `iters` back-to-back runs.
pub struct Resident {
    pipeline: std::sync::Arc<wgpu::ComputePipeline>,
    // Dispatched after `pipeline` in the same pass (Gpu::second_pipeline).
    second: Option<std::sync::Arc<wgpu::ComputePipeline>>,
    bind: wgpu::BindGroup,
    grid: (u32, u32),
    _buffers: Vec<wgpu::Buffer>,
}

fn ggml_entry(ty: GgmlType, quantize: bool) -> Option<(&'static str, u32)> {
    let (q, d, per) = super::ggml::kernels(ty)?;
    Some(if quantize { (q, per as u32) } else { (d, 1) })
}

impl Gpu {
    #[allow(clippy::too_many_arguments)]
    fn resident(
        &self,
        module: Module,
        entry_point: &'static str,
        input: &[u8],
        out_bytes: u64,
        n_units: u32,
        invocations: u32,
        extra: [u32; 3],
    ) -> Result<Resident, GpuError> {
        let pipeline = self.pipeline(module, entry_point)?;
        let second = self.second_pipeline(module, entry_point)?;
        let scope = super::ErrorScope::push(&self.device);
        let inp = self.upload("bench input", input);
        let out = self.storage("bench output", out_bytes, wgpu::BufferUsages::COPY_SRC);
        let params = self.uniform(&[n_units, extra[0], extra[1], extra[2]]);
        let status = self.upload("status", &u32::MAX.to_le_bytes());
        let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("bench"),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[
                entry(0, &inp),
                entry(1, &out),
                entry(2, &params),
                entry(3, &status),
            ],
        });
        scope.check("preparing a benchmark kernel")?;
        self.wait("uploading benchmark input")?;
        Ok(Resident {
            pipeline,
            second,
            bind,
            grid: self.grid(invocations),
            _buffers: vec![inp, out, params, status],
        })
    }

    /// A GGML quantize (`quantize = true`, input f32 values) or dequantize
    /// (input blocks) kernel over resident buffers.
    pub fn bench_ggml(
        &self,
        ty: GgmlType,
        quantize: bool,
        input: &[u8],
    ) -> Result<Resident, GpuError> {
        let (entry_point, per) = ggml_entry(ty, quantize)
            .ok_or_else(|| crate::KernelError::Unsupported(format!("{ty} on the GPU")))?;
        let bs = ty.block_size();
        let ts = ty.type_size();
        if quantize {
            let blocks = input.len() as u64 / 4 / bs;
            self.resident(
                Module::GgmlQuantize,
                entry_point,
                input,
                blocks * ts,
                blocks as u32,
                blocks as u32 * per,
                [0; 3],
            )
        } else {
            let blocks = input.len() as u64 / ts;
            let units = (blocks * bs / 4) as u32;
            self.resident(
                Module::GgmlDequantize,
                entry_point,
                input,
                blocks * bs * 4,
                units,
                units,
                [0; 3],
            )
        }
    }

    /// MLX affine quantize (input f32 values) or dequantize (input: packed
    /// words, f16 scales, f16 biases as the quantize kernel lays them out)
    /// over resident buffers.
    pub fn bench_mlx(
        &self,
        bits: u32,
        group: u32,
        quantize: bool,
        input: &[u8],
        n_values: u64,
    ) -> Result<Resident, GpuError> {
        let groups = n_values / u64::from(group);
        if quantize {
            let out = groups * u64::from(group * bits / 32) * 4 + 2 * groups * 4;
            self.resident(
                Module::Mlx,
                super::mlx::quantize_entry(bits),
                input,
                out,
                groups as u32,
                (n_values / 32) as u32,
                [bits, group, 0],
            )
        } else {
            let units = (n_values / 4) as u32;
            self.resident(
                Module::Mlx,
                "mlx_dequantize",
                input,
                n_values * 4,
                units,
                units,
                [bits, group, 1],
            )
        }
    }

    /// Seconds per run of `k`, the median of `reps` timings of `iters`
    /// back-to-back dispatches in one submission.
    pub fn time_resident(&self, k: &Resident, iters: u32, reps: u32) -> Result<f64, GpuError> {
        self.time_encoded(iters, reps, |enc| {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            pass.set_pipeline(&k.pipeline);
            pass.set_bind_group(0, &k.bind, &[]);
            pass.dispatch_workgroups(k.grid.0, k.grid.1, 1);
            if let Some(p) = &k.second {
                pass.set_pipeline(p);
                pass.dispatch_workgroups(k.grid.0, k.grid.1, 1);
            }
        })
    }

    /// Seconds per device-to-device copy of `bytes`.
    pub fn time_copy(&self, bytes: u64, iters: u32, reps: u32) -> Result<f64, GpuError> {
        let a = self.storage(
            "copy src",
            bytes,
            wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        );
        let b = self.storage("copy dst", bytes, wgpu::BufferUsages::COPY_DST);
        self.time_encoded(iters, reps, |enc| {
            enc.copy_buffer_to_buffer(&a, 0, &b, 0, bytes);
        })
    }

    fn time_encoded(
        &self,
        iters: u32,
        reps: u32,
        record: impl Fn(&mut wgpu::CommandEncoder),
    ) -> Result<f64, GpuError> {
        let run = |n: u32| -> Result<f64, GpuError> {
            let scope = super::ErrorScope::push(&self.device);
            let mut enc = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
            for _ in 0..n {
                record(&mut enc);
            }
            let cmd = enc.finish();
            let t = Instant::now();
            self.queue.submit([cmd]);
            self.wait("benchmark")?;
            let s = t.elapsed().as_secs_f64();
            scope.check("benchmark")?;
            Ok(s)
        };
        // Warm-up: a GPU left idle while the CPU baselines ran lowers its
        // clocks, and the first submissions after that measure the ramp,
        // not the kernel (an H100 gave a third of the steady rate).
        let warm = Instant::now();
        while warm.elapsed().as_secs_f64() < 0.5 {
            run(iters.max(1))?;
        }
        let mut times = Vec::with_capacity(reps as usize);
        for _ in 0..reps.max(1) {
            times.push(run(iters.max(1))? / f64::from(iters.max(1)));
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    }
}
