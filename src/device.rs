//! `--device auto|cpu|gpu`: where the kernels of a command run. One rule
//! for every command (convert and quantize for quantizing, verify for the
//! forward passes, through `engine::Runner`):
//!
//! 1. Parse: [`DeviceArg`], plain data from the command line.
//! 2. Resolve: [`Device::select`] takes the work the command is about to do
//!    (a list of [`Work`]) and the machine, and returns the [`Device`] and
//!    the one line to print about it, if any. [`decide`] is that rule as a
//!    pure function, tested without a GPU.
//! 3. Run: [`Device::target`] says, for each piece of work, whether it
//!    runs on the GPU or the CPU, and [`Target`] runs it there. Both give
//!    the same bytes: the GPU kernels are bit-identical to the CPU ones.
//!
//! The rule:
//! - `cpu`: the CPU path (rayon + SIMD), always.
//! - `gpu`: every piece of work that has a GPU kernel runs on the GPU, the
//!   rest on the CPU. Without an adapter, or in a build without the `gpu`
//!   feature, it is an error that says what to install. A software adapter
//!   (Mesa's llvmpipe) is accepted, with a note that it is slow.
//! - `auto` (the default): the GPU only for work that has a kernel there
//!   *and* is at least as large as the size from which the GPU beat the CPU
//!   end to end (transfers included) in quant-kernels/BENCH-gpu.md, and
//!   only on a hardware adapter; otherwise the CPU, with one line saying
//!   why. No adapter is probed when no work qualifies (starting Vulkan
//!   costs tens of milliseconds).

use std::fmt;
#[cfg(feature = "gpu")]
use std::sync::Arc;

use clap::ValueEnum;
use quant_kernels::{ggml, GgmlType, KernelError};

/// The `--device` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum DeviceArg {
    /// The GPU where it pays for its transfers, else the CPU.
    #[default]
    Auto,
    /// Always the CPU.
    Cpu,
    /// The GPU for every step it has a kernel for (an error without one).
    Gpu,
}

/// One piece of work a command is about to do, for the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Work {
    /// Quantizing one tensor of `values` weights to a GGML type without an
    /// importance matrix (the GPU kernels are the reference quantizers;
    /// with an importance matrix the work stays on the CPU).
    QuantizeGgml {
        /// Target type.
        ty: GgmlType,
        /// Number of weights.
        values: u64,
    },
    /// MLX affine quantization of one tensor of `values` weights.
    QuantizeMlx {
        /// Bits per weight.
        bits: u32,
        /// Number of weights.
        values: u64,
    },
    /// Generation over `weight_bytes` of weights kept on the device.
    Generate {
        /// Bytes of the model's weight matrices.
        weight_bytes: u64,
    },
}

impl Work {
    /// Whether a GPU kernel exists for this work.
    pub fn has_gpu_kernel(self) -> bool {
        match self {
            Work::QuantizeGgml { ty, .. } => GPU_GGML_TYPES.contains(&ty),
            Work::QuantizeMlx { bits, .. } => matches!(bits, 2..=6 | 8),
            Work::Generate { .. } => true,
        }
    }

    /// The size from which the GPU, transfers included, beat the CPU path
    /// on the benchmark machine, or `None` where it never did.
    ///
    /// Source: quant-kernels/BENCH-gpu.md, "Streamed transfers" (H100 over
    /// Vulkan against 16 CPU cores, `--e2e-only`). Host to host, the GPU
    /// quantizes at about 20 GB/s of f32 whatever the type: the PCIe copies
    /// bound it. The CPU's K-quant searches run at 3.5-3.8 GB/s (Q4_K) and
    /// 6.6-7.0 GB/s (Q6_K), so the GPU wins from 16 MiB of f32 (4 Mi
    /// values; at 1 MiB it lost in one run of two); the CPU quantizes the
    /// legacy types at 44-78 GB/s and MLX at 14-18, which the GPU's
    /// transfers never beat. Generation (BENCH-engine-gpu.md): with the
    /// weights and the KV cache on the GPU, SmolLM2-135M (90 and 145 MB of
    /// weights) generated 3x and processed prompts 14-16x faster than 16
    /// CPU cores; the 64 MB threshold stays below the smallest size
    /// measured to pay. (The GPU's time per token is mostly per-dispatch
    /// latency, so much smaller models may pay too; not measured.)
    fn gpu_pays_from(self) -> Option<u64> {
        match self {
            Work::QuantizeGgml {
                ty: GgmlType::Q4K | GgmlType::Q6K,
                ..
            } => Some(4 << 20),
            Work::QuantizeGgml { .. } | Work::QuantizeMlx { .. } => None,
            Work::Generate { .. } => Some(64 << 20),
        }
    }

    fn size(self) -> u64 {
        match self {
            Work::QuantizeGgml { values, .. } | Work::QuantizeMlx { values, .. } => values,
            Work::Generate { weight_bytes } => weight_bytes,
        }
    }

    fn describe(self) -> String {
        match self {
            Work::QuantizeGgml { ty, .. } => format!("quantizing to {ty}"),
            Work::QuantizeMlx { bits, .. } => format!("MLX {bits}-bit quantization"),
            Work::Generate { .. } => "generation".to_string(),
        }
    }
}

/// The GGML types with GPU quantize and dequantize kernels.
pub const GPU_GGML_TYPES: [GgmlType; 5] = [
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q4K,
    GgmlType::Q6K,
];

/// What the machine offers, as [`decide`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A hardware adapter, by name.
    Hardware(String),
    /// Only a software adapter (llvmpipe, WARP), by name.
    Software(String),
    /// No adapter, with the reason (what to install).
    Missing(String),
    /// This qforge was built without the `gpu` feature.
    NotBuilt,
}

/// The outcome of the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Everything on the CPU.
    Cpu {
        /// The one line to print, if any.
        note: Option<String>,
    },
    /// The GPU for work that qualifies (see [`Device::target`]).
    Gpu {
        /// The one line to print, if any.
        note: Option<String>,
    },
}

/// What went wrong choosing or using a device.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// `--device gpu` on a machine without a usable adapter.
    #[error("--device gpu: {0}; use --device cpu or auto")]
    NoGpu(String),
    /// A kernel refused the data (as the CPU path would).
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// The GPU failed while running work.
    #[cfg(feature = "gpu")]
    #[error(transparent)]
    Gpu(quant_kernels::gpu::GpuError),
}

#[cfg(feature = "gpu")]
impl From<quant_kernels::gpu::GpuError> for DeviceError {
    fn from(e: quant_kernels::gpu::GpuError) -> DeviceError {
        match e {
            quant_kernels::gpu::GpuError::Kernel(k) => DeviceError::Kernel(k),
            e => DeviceError::Gpu(e),
        }
    }
}

/// The rule. `probe(allow_software)` is called only when the answer
/// depends on the machine: never for `cpu`, nor for `auto` when no work
/// qualifies.
pub fn decide(
    arg: DeviceArg,
    work: &[Work],
    probe: impl FnOnce(bool) -> Probe,
) -> Result<Decision, DeviceError> {
    match arg {
        DeviceArg::Cpu => Ok(Decision::Cpu { note: None }),
        DeviceArg::Gpu => {
            let with_kernel = work.iter().any(|w| w.has_gpu_kernel());
            let note = match probe(true) {
                Probe::Hardware(_) => None,
                Probe::Software(name) => Some(format!(
                    "note: --device gpu runs on {name}, a software adapter slower than the CPU path"
                )),
                Probe::Missing(why) => return Err(DeviceError::NoGpu(why)),
                Probe::NotBuilt => {
                    return Err(DeviceError::NoGpu(
                        "this qforge was built without GPU support (cargo feature `gpu`)".into(),
                    ))
                }
            };
            if !with_kernel {
                let what = match work.first() {
                    Some(w) => format!("{} has no GPU kernel", w.describe()),
                    None => "nothing in this run has a GPU kernel".to_string(),
                };
                return Ok(Decision::Cpu {
                    note: Some(format!(
                        "note: --device gpu: {what} (the GPU quantizes to Q8_0, Q4_0, Q4_1, \
                         Q4_K, Q6_K and MLX affine); it runs on the CPU"
                    )),
                });
            }
            Ok(Decision::Gpu { note })
        }
        DeviceArg::Auto => {
            let candidates: Vec<Work> = work
                .iter()
                .copied()
                .filter(|w| w.has_gpu_kernel())
                .collect();
            let Some(&first) = candidates.first() else {
                return Ok(Decision::Cpu { note: None });
            };
            let paying: Vec<(Work, u64)> = candidates
                .iter()
                .filter_map(|w| w.gpu_pays_from().map(|from| (*w, from)))
                .filter(|(w, from)| w.size() >= *from)
                .collect();
            let cpu = |why: String| {
                Ok(Decision::Cpu {
                    note: Some(format!("device: CPU ({why})")),
                })
            };
            if paying.is_empty() {
                return match candidates
                    .iter()
                    .find_map(|w| w.gpu_pays_from().map(|f| (*w, f)))
                {
                    None => cpu(format!(
                        "{} is faster on the CPU than on a GPU, transfers included; \
                         --device gpu forces the GPU",
                        first.describe()
                    )),
                    Some((w, from)) => cpu(format!(
                        "the work is below the size from which the GPU pays for its transfers \
                         ({} from {from})",
                        w.describe()
                    )),
                };
            }
            match probe(false) {
                Probe::Hardware(name) => Ok(Decision::Gpu {
                    note: Some(format!("device: GPU, {name}")),
                }),
                Probe::Software(name) => cpu(format!(
                    "the only GPU adapter, {name}, is a software one, slower than the CPU path"
                )),
                Probe::Missing(why) => cpu(format!("no GPU adapter: {why}")),
                Probe::NotBuilt => cpu("this qforge was built without GPU support".into()),
            }
        }
    }
}

/// Where the work of one command runs.
pub struct Device {
    #[cfg(feature = "gpu")]
    arg: DeviceArg,
    #[cfg(feature = "gpu")]
    gpu: Option<Arc<quant_kernels::gpu::Gpu>>,
    /// f32 buffers for the slabs the GPU path decodes into, kept between
    /// tensors: a fresh 64 MiB buffer per tensor pays its page faults on
    /// one thread, which cost more than the GPU saved (BENCH-gpu.md,
    /// "Streamed transfers").
    #[cfg(feature = "gpu")]
    slabs: Slabs,
}

/// Reusable f32 buffers (see [`Target::with_slab`]).
#[cfg(feature = "gpu")]
type Slabs = std::sync::Mutex<Vec<Vec<f32>>>;

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Device({})", self.name())
    }
}

/// A [`Device`] and the one line to print about it (stderr), if any.
#[derive(Debug)]
pub struct Selection {
    /// Where to run.
    pub device: Device,
    /// Why, when worth saying (a fallback to the CPU, a software adapter).
    pub note: Option<String>,
}

impl Device {
    /// The CPU path.
    pub fn cpu() -> Device {
        Device {
            #[cfg(feature = "gpu")]
            arg: DeviceArg::Cpu,
            #[cfg(feature = "gpu")]
            gpu: None,
            #[cfg(feature = "gpu")]
            slabs: Slabs::default(),
        }
    }

    /// Resolves `--device` for `work` on this machine: probes for an
    /// adapter only when the rule needs to know, and opens it when chosen.
    pub fn select(arg: DeviceArg, work: &[Work]) -> Result<Selection, DeviceError> {
        #[cfg(feature = "gpu")]
        {
            use quant_kernels::gpu::{Gpu, GpuError, GpuOptions};
            let mut opened: Option<Gpu> = None;
            let decision = decide(arg, work, |allow_software| {
                match Gpu::new(&GpuOptions {
                    allow_software,
                    ..GpuOptions::default()
                }) {
                    Ok(g) => {
                        let name = g.adapter().to_string();
                        let software = g.adapter().software;
                        opened = Some(g);
                        if software {
                            Probe::Software(name)
                        } else {
                            Probe::Hardware(name)
                        }
                    }
                    Err(GpuError::SoftwareOnly(name)) => Probe::Software(name),
                    Err(e) => Probe::Missing(e.to_string()),
                }
            })?;
            Ok(match decision {
                Decision::Cpu { note } => Selection {
                    device: Device::cpu(),
                    note,
                },
                Decision::Gpu { note } => Selection {
                    device: Device {
                        arg,
                        gpu: Some(Arc::new(
                            opened.expect("the rule chooses the GPU only after finding one"),
                        )),
                        slabs: Slabs::default(),
                    },
                    note,
                },
            })
        }
        #[cfg(not(feature = "gpu"))]
        {
            match decide(arg, work, |_| Probe::NotBuilt)? {
                Decision::Cpu { note } => Ok(Selection {
                    device: Device::cpu(),
                    note,
                }),
                Decision::Gpu { .. } => unreachable!("without the gpu feature no adapter is found"),
            }
        }
    }

    /// `CPU`, or the GPU adapter's name.
    pub fn name(&self) -> String {
        #[cfg(feature = "gpu")]
        if let Some(g) = &self.gpu {
            return g.adapter().to_string();
        }
        "CPU".to_string()
    }

    /// The open GPU, when one was chosen.
    #[cfg(feature = "gpu")]
    pub fn gpu(&self) -> Option<&Arc<quant_kernels::gpu::Gpu>> {
        self.gpu.as_ref()
    }

    /// Where `work` runs on this device.
    pub fn target(&self, work: Work) -> Target<'_> {
        #[cfg(feature = "gpu")]
        if let Some(g) = &self.gpu {
            let qualifies = work.has_gpu_kernel()
                && match self.arg {
                    DeviceArg::Gpu => true,
                    _ => work.gpu_pays_from().is_some_and(|from| work.size() >= from),
                };
            if qualifies {
                return Target::Gpu(g, &self.slabs);
            }
        }
        let _ = work;
        Target::Cpu
    }
}

/// Where one piece of work runs.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Target<'a> {
    /// The CPU path of quant-kernels.
    Cpu,
    /// An open GPU, and the device's slab buffers.
    #[cfg(feature = "gpu")]
    Gpu(&'a quant_kernels::gpu::Gpu, &'a Slabs),
    #[doc(hidden)]
    #[cfg(not(feature = "gpu"))]
    _Never(std::marker::PhantomData<&'a ()>),
}

impl Target<'_> {
    /// True for the GPU.
    pub fn is_gpu(self) -> bool {
        !matches!(self, Target::Cpu)
    }

    /// Runs `f` on a buffer of `len` values to decode a slab into before
    /// [`Target::quantize_ggml`]. On the GPU the buffer is one the device
    /// keeps between calls (its contents are stale, not zeroed); on the CPU
    /// a fresh one.
    pub fn with_slab<R>(self, len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
        match self {
            #[cfg(feature = "gpu")]
            Target::Gpu(_, slabs) => {
                let mut buf = slabs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .pop()
                    .unwrap_or_default();
                if buf.len() < len {
                    buf.resize(len, 0.0);
                }
                let r = f(&mut buf[..len]);
                slabs.lock().unwrap_or_else(|e| e.into_inner()).push(buf);
                r
            }
            _ => f(&mut vec![0.0; len]),
        }
    }

    /// Quantizes rows of `n_per_row` values to `ty` (no importance matrix):
    /// the same bytes and the same errors on either device.
    pub fn quantize_ggml(
        self,
        ty: GgmlType,
        src: &[f32],
        n_per_row: usize,
        dst: &mut [u8],
    ) -> Result<(), DeviceError> {
        match self {
            #[cfg(feature = "gpu")]
            Target::Gpu(g, _) if GPU_GGML_TYPES.contains(&ty) => {
                Ok(g.quantize(ty, src, n_per_row, dst)?)
            }
            _ => Ok(ggml::quantize(ty, src, n_per_row, None, dst)?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q8: Work = Work::QuantizeGgml {
        ty: GgmlType::Q8_0,
        values: 1 << 26,
    };
    const GEN: Work = Work::Generate {
        weight_bytes: 1 << 30,
    };

    fn never(_: bool) -> Probe {
        panic!("the rule should not probe here")
    }

    #[test]
    fn cpu_never_probes() {
        assert_eq!(
            decide(DeviceArg::Cpu, &[Q8, GEN], never).unwrap(),
            Decision::Cpu { note: None }
        );
    }

    #[test]
    fn auto_keeps_unprofitable_work_on_the_cpu_without_probing_and_says_why() {
        match decide(DeviceArg::Auto, &[Q8], never).unwrap() {
            Decision::Cpu { note: Some(n) } => {
                assert!(n.contains("Q8_0") && n.contains("faster on the CPU"), "{n}");
                assert!(!n.contains('\n'));
            }
            d => panic!("{d:?}"),
        }
        let small = Work::Generate { weight_bytes: 4096 };
        let small_q4k = Work::QuantizeGgml {
            ty: GgmlType::Q4K,
            values: (4 << 20) - 1,
        };
        for w in [small, small_q4k] {
            match decide(DeviceArg::Auto, &[Q8, w], never).unwrap() {
                Decision::Cpu { note: Some(n) } => assert!(n.contains("below the size"), "{n}"),
                d => panic!("{d:?}"),
            }
        }
        // Work without a GPU kernel: nothing to decide, nothing to say.
        let q5 = Work::QuantizeGgml {
            ty: GgmlType::Q5K,
            values: 1 << 30,
        };
        assert_eq!(
            decide(DeviceArg::Auto, &[q5], never).unwrap(),
            Decision::Cpu { note: None }
        );
        assert_eq!(
            decide(DeviceArg::Auto, &[], never).unwrap(),
            Decision::Cpu { note: None }
        );
    }

    #[test]
    fn auto_takes_a_hardware_gpu_for_paying_work_and_says_why_it_falls_back() {
        let q6k = Work::QuantizeGgml {
            ty: GgmlType::Q6K,
            values: 4 << 20,
        };
        for w in [GEN, q6k] {
            let hw = decide(DeviceArg::Auto, &[Q8, w], |sw| {
                assert!(!sw, "auto never accepts a software adapter");
                Probe::Hardware("H100".into())
            })
            .unwrap();
            assert!(matches!(hw, Decision::Gpu { note: Some(ref n) } if n.contains("H100")));
        }
        for (probe, why) in [
            (Probe::Software("llvmpipe".into()), "software"),
            (
                Probe::Missing("install mesa-vulkan-drivers".into()),
                "mesa-vulkan-drivers",
            ),
            (Probe::NotBuilt, "without GPU support"),
        ] {
            match decide(DeviceArg::Auto, &[GEN], |_| probe).unwrap() {
                Decision::Cpu { note: Some(n) } => {
                    assert!(n.contains(why), "{n}");
                    assert!(!n.contains('\n'), "one line: {n}");
                }
                d => panic!("{d:?}"),
            }
        }
    }

    #[test]
    fn gpu_fails_clearly_without_an_adapter() {
        let e = decide(DeviceArg::Gpu, &[Q8], |_| {
            Probe::Missing("install libvulkan1".into())
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("--device gpu") && e.contains("libvulkan1"),
            "{e}"
        );
        let e = decide(DeviceArg::Gpu, &[Q8], |_| Probe::NotBuilt)
            .unwrap_err()
            .to_string();
        assert!(e.contains("without GPU support"), "{e}");
        // Asked for, a software adapter is taken, with a note.
        let sw = decide(DeviceArg::Gpu, &[Q8], |sw| {
            assert!(sw);
            Probe::Software("llvmpipe".into())
        })
        .unwrap();
        assert!(matches!(sw, Decision::Gpu { note: Some(ref n) } if n.contains("slower")));
        // Work without a kernel runs on the CPU, with a note.
        let f16 = Work::QuantizeGgml {
            ty: GgmlType::Q5_0,
            values: 64,
        };
        let d = decide(DeviceArg::Gpu, &[f16], |_| Probe::Hardware("H100".into())).unwrap();
        assert!(matches!(d, Decision::Cpu { note: Some(ref n) } if n.contains("no GPU kernel")));
    }

    #[test]
    fn targets_follow_the_rule() {
        let cpu = Device::cpu();
        assert!(!cpu.target(Q8).is_gpu());
        assert_eq!(cpu.name(), "CPU");
    }

    #[test]
    fn the_flag_parses() {
        assert_eq!(DeviceArg::from_str("auto", true).unwrap(), DeviceArg::Auto);
        assert_eq!(DeviceArg::from_str("CPU", true).unwrap(), DeviceArg::Cpu);
        assert_eq!(DeviceArg::from_str("gpu", true).unwrap(), DeviceArg::Gpu);
        assert!(DeviceArg::from_str("cuda", true).is_err());
    }
}
