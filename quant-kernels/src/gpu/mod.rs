//! GPU paths through wgpu (Vulkan on Linux, Metal on macOS, DX12 on
//! Windows), with WGSL shaders under `quant-kernels/shaders/`.
//!
//! - [`Gpu::quantize`] and [`Gpu::dequantize`] for GGML Q8_0, Q4_0, Q4_1,
//!   Q4_K and Q6_K, and [`Gpu::mlx_quantize`] / [`Gpu::mlx_dequantize`] for
//!   MLX affine 2–8 bits: **bit-identical** to the scalar references
//!   ([`crate::ggml::reference`], [`crate::mlx::quantize_ref`]). The
//!   quantizers do every float operation in integer code (`softfloat.wgsl`),
//!   because WGSL leaves the rounding of division, `round` and f16 packing
//!   open, GPUs flush subnormals, Vulkan drivers fuse `a*b + c` and Metal
//!   compiles with fast-math. The dequantizers use the GPU's float unit only
//!   where every product is exact (see `ggml_dequantize.wgsl`).
//! - [`Gpu::upload_ggml`] / [`Gpu::upload_mlx`] and [`Gpu::matvec`]: a weight
//!   matrix uploaded once, then matrix-vector products against activation
//!   vectors, for generation on the GPU. These use ordinary float math and
//!   are within a stated tolerance of the CPU ([`matvec`] module docs).
//!
//! Work is split into chunks that fit the adapter's storage-binding limit
//! (llvmpipe's is 128 MiB). Device errors are caught with error scopes and
//! returned as [`GpuError`], never panics. Only Vulkan, Metal and DX12 are
//! enabled (`Backends::PRIMARY`): wgpu never falls back to OpenGL.
//!
//! ```no_run
//! use quant_kernels::{gpu::{Gpu, GpuOptions}, GgmlType};
//! let gpu = Gpu::new(&GpuOptions::default())?;
//! let w: Vec<f32> = (0..4096).map(|i| (i as f32).sin()).collect();
//! let mut q = vec![0u8; 4096 / 32 * 34];
//! gpu.quantize(GgmlType::Q8_0, &w, 4096, &mut q)?;
//! # Ok::<(), quant_kernels::gpu::GpuError>(())
//! ```

use std::collections::HashMap;
use std::sync::{mpsc, Arc, Mutex};

use crate::KernelError;

pub mod decoder;
mod ggml;
pub mod matvec;
mod mlx;
mod stream;

#[doc(hidden)]
pub mod bench;

pub use ggml::{has_kernel, GPU_TYPES};
pub use matvec::{Activations, GpuMatrix};
pub use mlx::mlx_has_kernel;

/// What went wrong on the GPU path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GpuError {
    /// No Vulkan/Metal/DX12 adapter (or none of the kind asked for).
    #[error("no GPU adapter found: {0}")]
    NoAdapter(String),
    /// Only software (CPU) adapters exist and [`GpuOptions::allow_software`]
    /// was not set.
    #[error("the only GPU adapter is the software implementation {0}, slower than the CPU path")]
    SoftwareOnly(String),
    /// The adapter was found but the device could not be opened.
    #[error("could not open the GPU device of adapter {adapter}: {reason}")]
    Device {
        /// Adapter name and backend.
        adapter: String,
        /// The driver's or wgpu's message.
        reason: String,
    },
    /// An operation failed on the device (validation, out of memory, lost
    /// device, a failed mapping).
    #[error("GPU {op} failed: {reason}")]
    Runtime {
        /// What was being done.
        op: String,
        /// The driver's or wgpu's message.
        reason: String,
    },
    /// The inputs were refused before reaching the GPU (lengths, types,
    /// NaN or infinite values), as the CPU path would refuse them.
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

/// Which adapters [`Gpu::new`] may pick.
#[derive(Debug, Clone, Default)]
pub struct GpuOptions {
    /// Accept a software adapter (Mesa's llvmpipe, WARP). Tests use it; a
    /// user asking for speed does not want it.
    pub allow_software: bool,
    /// Caps the bytes bound per dispatch below the adapter's limit (and
    /// below the default 256 MiB), so that work is cut into more chunks.
    pub max_chunk_bytes: Option<u64>,
}

/// The adapter in use, for messages and reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterSummary {
    /// Adapter name as the driver reports it.
    pub name: String,
    /// `Vulkan`, `Metal` or `Dx12`.
    pub backend: String,
    /// Driver name and version, where reported.
    pub driver: String,
    /// True for CPU (software) implementations such as llvmpipe.
    pub software: bool,
}

impl std::fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}", self.name, self.backend)?;
        if !self.driver.is_empty() {
            write!(f, ", {}", self.driver)?;
        }
        if self.software {
            f.write_str(", software")?;
        }
        f.write_str(")")
    }
}

/// The WGSL modules, each the concatenation of its source files (WGSL has
/// no includes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Module {
    GgmlQuantize,
    GgmlDequantize,
    Mlx,
    MatVec,
    Decoder,
    SoftfloatTest,
}

const SOFTFLOAT: &str = include_str!("../../shaders/softfloat.wgsl");
const COMMON: &str = include_str!("../../shaders/common.wgsl");

impl Module {
    const ALL: [Module; 6] = [
        Module::GgmlQuantize,
        Module::GgmlDequantize,
        Module::Mlx,
        Module::MatVec,
        Module::Decoder,
        Module::SoftfloatTest,
    ];

    fn name(self) -> &'static str {
        match self {
            Module::GgmlQuantize => "ggml_quantize",
            Module::GgmlDequantize => "ggml_dequantize",
            Module::Mlx => "mlx",
            Module::MatVec => "matvec",
            Module::Decoder => "decoder",
            Module::SoftfloatTest => "softfloat_test",
        }
    }

    fn source(self) -> String {
        let own = match self {
            Module::GgmlQuantize => include_str!("../../shaders/ggml_quantize.wgsl"),
            Module::GgmlDequantize => include_str!("../../shaders/ggml_dequantize.wgsl"),
            Module::Mlx => include_str!("../../shaders/mlx.wgsl"),
            Module::MatVec => include_str!("../../shaders/matvec.wgsl"),
            Module::Decoder => {
                // The decoder's weight products are matvec.wgsl's kernels.
                return format!(
                    "{SOFTFLOAT}\n{}\n{}",
                    include_str!("../../shaders/matvec.wgsl"),
                    include_str!("../../shaders/decoder.wgsl")
                );
            }
            Module::SoftfloatTest => include_str!("../../shaders/softfloat_test.wgsl"),
        };
        let common = if self == Module::MatVec { "" } else { COMMON };
        format!("{SOFTFLOAT}\n{common}\n{own}")
    }
}

/// Every WGSL module the GPU path compiles, as (name, full source): for
/// translation and validation tests (naga to MSL, SPIR-V, HLSL).
pub fn shader_sources() -> Vec<(&'static str, String)> {
    Module::ALL.iter().map(|m| (m.name(), m.source())).collect()
}

/// Invocations per workgroup of every kernel (`WG` in the shaders).
const WORKGROUP: u32 = 64;

/// Storage bindings are kept at or below this size even where the adapter
/// allows more, so that staging copies stay moderate.
const MAX_CHUNK_BYTES: u64 = 256 << 20;

/// An open GPU device with its compiled pipelines.
pub struct Gpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    summary: AdapterSummary,
    max_binding: u64,
    max_workgroups: u32,
    /// Compiled once per device, shared by [`Gpu::with_max_chunk_bytes`]
    /// handles.
    modules: Arc<Mutex<HashMap<Module, Arc<wgpu::ShaderModule>>>>,
    pipelines: Arc<Mutex<Pipelines>>,
    /// Errors raised outside any error scope (wgpu would panic on them).
    uncaptured: Arc<Mutex<Vec<String>>>,
    /// Buffers of the mat-vec path.
    scratch: matvec::ScratchLock,
    /// Transfer buffers of the host-to-host kernels, kept between calls.
    link: Mutex<stream::Link>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("adapter", &self.summary)
            .field("max_binding", &self.max_binding)
            .finish_non_exhaustive()
    }
}

type Pipelines = HashMap<(Module, &'static str), Arc<wgpu::ComputePipeline>>;

/// What a missing adapter usually means, per platform.
fn no_adapter_hint() -> &'static str {
    if cfg!(target_os = "linux") {
        "no Vulkan driver is installed or none reports a device. Install a Vulkan \
         driver and the loader: on Debian/Ubuntu `apt-get install mesa-vulkan-drivers \
         libvulkan1` (Mesa; llvmpipe is its software fallback), or the GPU vendor's \
         driver (NVIDIA: the driver's Vulkan ICD)"
    } else if cfg!(target_os = "macos") {
        "Metal reports no device"
    } else if cfg!(target_os = "windows") {
        "neither DX12 nor Vulkan reports a device; update the GPU driver"
    } else {
        "no Vulkan/Metal/DX12 device on this platform"
    }
}

fn rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

impl Gpu {
    /// Opens the best adapter: a discrete GPU before an integrated one, a
    /// hardware adapter before a software one (which is taken only with
    /// `allow_software`). Fails with [`GpuError::NoAdapter`] naming what to
    /// install when there is none.
    pub fn new(options: &GpuOptions) -> Result<Gpu, GpuError> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: wgpu::Backends::PRIMARY,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let mut adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY));
        if adapters.is_empty() {
            return Err(GpuError::NoAdapter(no_adapter_hint().to_string()));
        }
        adapters.sort_by_key(|a| rank(a.get_info().device_type));
        let first_name = adapters[0].get_info().name;
        let adapter = adapters
            .into_iter()
            .find(|a| options.allow_software || a.get_info().device_type != wgpu::DeviceType::Cpu)
            .ok_or(GpuError::SoftwareOnly(first_name))?;
        Gpu::open(adapter, options)
    }

    fn open(adapter: wgpu::Adapter, options: &GpuOptions) -> Result<Gpu, GpuError> {
        let info = adapter.get_info();
        let summary = AdapterSummary {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            driver: [info.driver.as_str(), info.driver_info.as_str()]
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect::<Vec<_>>()
                .join(" "),
            software: info.device_type == wgpu::DeviceType::Cpu,
        };
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("quant-kernels"),
            required_features: wgpu::Features::empty(),
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| GpuError::Device {
            adapter: summary.to_string(),
            reason: e.to_string(),
        })?;
        let uncaptured = Arc::new(Mutex::new(Vec::new()));
        let sink = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut v) = sink.lock() {
                v.push(e.to_string());
            }
        }));
        let max_binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size)
            .min(MAX_CHUNK_BYTES)
            .min(options.max_chunk_bytes.unwrap_or(u64::MAX).max(1024));
        Ok(Gpu {
            device,
            queue,
            summary,
            max_binding,
            max_workgroups: limits.max_compute_workgroups_per_dimension,
            modules: Arc::new(Mutex::new(HashMap::new())),
            pipelines: Arc::new(Mutex::new(HashMap::new())),
            uncaptured,
            scratch: Mutex::new(matvec::Scratch::default()),
            link: Mutex::new(stream::Link::default()),
        })
    }

    /// Another handle on the same device and compiled kernels whose
    /// storage bindings are capped at `bytes` (at least 1 KiB), so that
    /// work is cut into more chunks: for tests of the chunking, without
    /// compiling every kernel again.
    pub fn with_max_chunk_bytes(&self, bytes: u64) -> Gpu {
        Gpu {
            device: self.device.clone(),
            queue: self.queue.clone(),
            summary: self.summary.clone(),
            max_binding: self.max_binding.min(bytes.max(1024)),
            max_workgroups: self.max_workgroups,
            modules: self.modules.clone(),
            pipelines: self.pipelines.clone(),
            uncaptured: self.uncaptured.clone(),
            scratch: Mutex::new(matvec::Scratch::default()),
            link: Mutex::new(stream::Link::default()),
        }
    }

    /// The adapter in use.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.summary
    }

    /// The largest storage binding used per dispatch (bytes).
    pub fn max_binding(&self) -> u64 {
        self.max_binding
    }

    fn pipeline(
        &self,
        module: Module,
        entry: &'static str,
    ) -> Result<Arc<wgpu::ComputePipeline>, GpuError> {
        // Held while compiling, so that two threads asking for the same
        // kernel compile it once (llvmpipe takes seconds per kernel).
        let mut pipelines = self.pipelines.lock().unwrap();
        if let Some(p) = pipelines.get(&(module, entry)) {
            return Ok(p.clone());
        }
        let scope = ErrorScope::push(&self.device);
        let shader = {
            let mut modules = self.modules.lock().unwrap();
            modules
                .entry(module)
                .or_insert_with(|| {
                    let desc = wgpu::ShaderModuleDescriptor {
                        label: Some(module.name()),
                        source: wgpu::ShaderSource::Wgsl(module.source().into()),
                    };
                    // Without the loop counters that wgpu adds to every loop
                    // by default (a guard against shaders that never end):
                    // they keep the driver from unrolling, and the legacy
                    // and MLX quantizers run about 4x slower with them on
                    // an H100 (BENCH-gpu.md). SAFETY: every loop in these
                    // shaders ends: each `for` counts to a constant or to a
                    // bound the host sets from the sizes of the buffers it
                    // binds, softfloat's `loop` retires at least one
                    // quotient bit per pass, and the MLX quantizer's
                    // `while` clears one bit of its mask per pass. Bounds
                    // checks stay on.
                    let checks = wgpu::ShaderRuntimeChecks {
                        force_loop_bounding: false,
                        ..wgpu::ShaderRuntimeChecks::checked()
                    };
                    Arc::new(unsafe { self.device.create_shader_module_trusted(desc, checks) })
                })
                .clone()
        };
        // The decoder's kernels each bind a different subset of the
        // module's buffers: their layouts are derived from what they use.
        let layout = (module != Module::Decoder).then(|| self.pipeline_layout(module));
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: layout.as_ref(),
                module: &shader,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            });
        scope.check(&format!("compiling kernel {}::{entry}", module.name()))?;
        let pipeline = Arc::new(pipeline);
        pipelines.insert((module, entry), pipeline.clone());
        Ok(pipeline)
    }

    /// The explicit layout every module's kernels share (an automatic one
    /// would drop bindings a kernel does not use, such as the status word
    /// of the dequantizers).
    fn pipeline_layout(&self, module: Module) -> wgpu::PipelineLayout {
        let storage = |binding: u32, read_only: bool| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let uniform = |binding: u32| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let entries = match module {
            // weights, activations, outputs, parameters
            Module::MatVec => vec![
                storage(0, true),
                storage(1, true),
                storage(2, false),
                uniform(3),
            ],
            // input, output, parameters, status
            _ => vec![
                storage(0, true),
                storage(1, false),
                uniform(2),
                storage(3, false),
            ],
        };
        let group = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(module.name()),
                entries: &entries,
            });
        self.device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(module.name()),
                bind_group_layouts: &[Some(&group)],
                immediate_size: 0,
            })
    }

    /// Workgroup counts (x, y) for `invocations`.
    fn grid(&self, invocations: u32) -> (u32, u32) {
        let groups = invocations.div_ceil(WORKGROUP).max(1);
        let x = groups.min(self.max_workgroups);
        (x, groups.div_ceil(x))
    }

    fn storage(&self, label: &str, size: u64, extra: wgpu::BufferUsages) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: size.max(4).next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE | extra,
            mapped_at_creation: false,
        })
    }

    /// Uploads `bytes`, padded with zeros to whole words (plus one spare
    /// word, so unaligned 4-byte reads at the end stay in bounds).
    fn upload(&self, label: &str, bytes: &[u8]) -> wgpu::Buffer {
        let buf = self.storage(
            label,
            bytes.len() as u64 + 4,
            wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
        );
        let whole = bytes.len() / 4 * 4;
        if whole > 0 {
            self.queue.write_buffer(&buf, 0, &bytes[..whole]);
        }
        let mut tail = [0u8; 4];
        tail[..bytes.len() - whole].copy_from_slice(&bytes[whole..]);
        self.queue.write_buffer(&buf, whole as u64, &tail);
        buf
    }

    /// Waits for the queue, then reads `len` bytes of `buf` (a MAP_READ
    /// buffer) into `out`.
    fn read_back(&self, buf: &wgpu::Buffer, out: &mut [u8], op: &str) -> Result<(), GpuError> {
        let len = out.len() as u64;
        if len == 0 {
            return Ok(());
        }
        let mapped = len.next_multiple_of(4);
        let (tx, rx) = mpsc::channel();
        buf.map_async(wgpu::MapMode::Read, 0..mapped, move |r| {
            let _ = tx.send(r);
        });
        self.wait(op)?;
        let runtime = |reason: String| GpuError::Runtime {
            op: op.to_string(),
            reason,
        };
        rx.recv()
            .map_err(|_| runtime("the mapping callback never ran".into()))?
            .map_err(|e| runtime(e.to_string()))?;
        {
            let view = buf
                .slice(0..mapped)
                .get_mapped_range()
                .map_err(|e| runtime(e.to_string()))?;
            out.copy_from_slice(&view[..out.len()]);
        }
        buf.unmap();
        Ok(())
    }

    fn wait(&self, op: &str) -> Result<(), GpuError> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::Runtime {
                op: op.to_string(),
                reason: e.to_string(),
            })?;
        self.take_uncaptured(op)
    }

    fn take_uncaptured(&self, op: &str) -> Result<(), GpuError> {
        let mut errors = self.uncaptured.lock().unwrap();
        if errors.is_empty() {
            return Ok(());
        }
        let reason = errors.join("; ");
        errors.clear();
        Err(GpuError::Runtime {
            op: op.to_string(),
            reason,
        })
    }

    /// Runs one element-wise kernel over one chunk: `input` bytes in,
    /// `out.len()` bytes out. Returns the chunk-relative index of the first
    /// NaN or infinity the kernel saw, if any.
    pub(crate) fn launch(&self, l: &Launch<'_>, out: &mut [u8]) -> Result<Option<u32>, GpuError> {
        let first = self.stream(std::slice::from_ref(l), &[out.len()], |_, bytes| {
            stream::par_copy(out, bytes)
        })?;
        Ok(first.map(|(_, i)| i))
    }

    /// The bytes of input or output per chunk of a host-to-host call.
    pub(crate) fn stream_binding(&self) -> u64 {
        self.max_binding.min(stream::STREAM_CHUNK)
    }

    /// The `Params` of common.wgsl: `words`, then `zero` (0) and padding.
    fn uniform(&self, words: &[u32; 4]) -> wgpu::Buffer {
        let mut all = [0u32; 8];
        all[..4].copy_from_slice(words);
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params"),
            size: 32,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.queue.write_buffer(&buf, 0, bytemuck::cast_slice(&all));
        buf
    }
}

fn entry(binding: u32, buffer: &wgpu::Buffer) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry {
        binding,
        resource: buffer.as_entire_binding(),
    }
}

/// One dispatch of an element-wise kernel over one chunk.
pub(crate) struct Launch<'a> {
    pub module: Module,
    pub entry: &'static str,
    /// Input bytes (padded to words on upload).
    pub input: &'a [u8],
    /// `params.n_units`.
    pub n_units: u32,
    /// Invocations to start (each handles one or two units).
    pub invocations: u32,
    /// `params.a`, `params.b`, `params.c`.
    pub extra: [u32; 3],
}

/// Validation, out-of-memory and internal error scopes, popped together.
struct ErrorScope {
    // Popped in reverse order of pushing.
    internal: wgpu::ErrorScopeGuard,
    memory: wgpu::ErrorScopeGuard,
    validation: wgpu::ErrorScopeGuard,
}

impl ErrorScope {
    fn push(device: &wgpu::Device) -> ErrorScope {
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let memory = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let internal = device.push_error_scope(wgpu::ErrorFilter::Internal);
        ErrorScope {
            internal,
            memory,
            validation,
        }
    }

    fn check(self, op: &str) -> Result<(), GpuError> {
        let internal = pollster::block_on(self.internal.pop());
        let memory = pollster::block_on(self.memory.pop());
        let validation = pollster::block_on(self.validation.pop());
        match internal.or(memory).or(validation) {
            None => Ok(()),
            Some(e) => Err(GpuError::Runtime {
                op: op.to_string(),
                reason: e.to_string(),
            }),
        }
    }
}

/// Splits `n_units` units of `unit_in` input bytes and `unit_out` output
/// bytes into chunks whose buffers fit `max_binding`, in multiples of
/// `align` units (the kernels' pairs, or whole rows): each chunk's first
/// unit and its number of units.
pub(crate) fn chunk_spans(
    max_binding: u64,
    n_units: usize,
    unit_in: usize,
    unit_out: usize,
    align: usize,
) -> Vec<(usize, usize)> {
    let per = unit_in.max(unit_out).max(1) as u64;
    // Keep 8 bytes of headroom for padding.
    let fit = ((max_binding.saturating_sub(8)) / per) as usize;
    let fit = fit.min(u32::MAX as usize / 2);
    let fit = (fit / align * align).max(align);
    let per_chunk = fit.min(n_units.max(1));
    (0..n_units)
        .step_by(per_chunk)
        .map(|start| (start, per_chunk.min(n_units - start)))
        .collect()
}

#[doc(hidden)]
pub mod testing {
    //! Hooks for the GPU tests: the soft-float library run on the device.

    use super::{Gpu, GpuError, Launch, Module};

    /// Operations of `softfloat_test.wgsl`, by code.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[allow(missing_docs)]
    pub enum SoftOp {
        Add = 0,
        Sub = 1,
        Mul = 2,
        Div = 3,
        Sqrt = 4,
        ToF16 = 5,
        FromF16 = 6,
        NearestInt = 7,
        Cvtt = 8,
        RoundAway = 9,
        Rint = 10,
        Lt = 11,
        FromI32 = 12,
        ToBf16 = 13,
        MulFast = 14,
        DivFast = 15,
    }

    /// The activation encoding (Q8_0, Q8_1 or Q8_K) the GPU decoder
    /// computes for `x`, which must equal
    /// [`crate::ggml::quantize_activations`]'s.
    pub fn decoder_activations(
        gpu: &Gpu,
        vdt: crate::GgmlType,
        x: &[f32],
    ) -> Result<Vec<u8>, GpuError> {
        super::decoder::encode_activations(gpu, vdt, x)
    }

    /// Applies `op` to pairs (a[i], b[i]) of f32 bit patterns on the GPU;
    /// returns the result words.
    pub fn softfloat(gpu: &Gpu, op: SoftOp, a: &[u32], b: &[u32]) -> Result<Vec<u32>, GpuError> {
        assert_eq!(a.len(), b.len());
        let mut input = Vec::with_capacity(a.len() * 8);
        for (x, y) in a.iter().zip(b) {
            input.extend_from_slice(&x.to_le_bytes());
            input.extend_from_slice(&y.to_le_bytes());
        }
        let mut out = vec![0u8; a.len() * 4];
        gpu.launch(
            &Launch {
                module: Module::SoftfloatTest,
                entry: "softfloat_test",
                input: &input,
                n_units: a.len() as u32,
                invocations: a.len() as u32,
                extra: [op as u32, 0, 0],
            },
            &mut out,
        )?;
        Ok(out
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}
