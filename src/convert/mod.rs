//! Conversions between Hugging Face safetensors folders, GGUF and (from the
//! MLX converter) MLX folders.
//!
//! Three steps, each a plain value the next one takes:
//!
//! 1. [`ModelView`]: a model in Hugging Face terms whatever its format:
//!    Hugging Face names and shapes, each tensor's bytes in the encoding it
//!    is stored in ([`Encoding`]: plain floats, a ggml block type, MLX
//!    affine) and its [`Layout`](crate::arch::Layout) (rows in llama.cpp's
//!    rope order, Gemma's `1 + w` norms) relative to Hugging Face's.
//!    [`ModelView::from_hf`] and [`ModelView::from_gguf`] build one; an MLX
//!    reader builds one the same way.
//! 2. [`Plan`]: one [`TensorPlan`] per output tensor: output name and
//!    shape, source, target encoding, the row order and value shift still
//!    to apply, whether the step is lossless. [`plan_gguf`] and
//!    [`plan_safetensors`] plan the two targets here; `--dry-run` prints a
//!    plan.
//! 3. A streaming writer per target ([`write_gguf`], [`write_safetensors`])
//!    that executes the plan tensor by tensor with [`materialize`]: bytes
//!    are copied when the encoding already fits (rows moved whole), and
//!    decoded to f32, shifted and encoded otherwise, in parallel over
//!    blocks. Peak memory is a few copies of the largest tensor.
//!
//! For an MLX target, one plan step (a quantized matrix) becomes three
//! tensors (`weight`, `scales`, `biases`): the MLX writer executes
//! [`TensorPlan`]s whose `to` is [`Encoding::MlxAffine`] with its own
//! encoder and plain ones with [`materialize`].

mod error;
pub mod exec;
pub mod general;
mod mlx_exec;
pub mod plan;
mod to_gguf;
mod to_hf;
mod to_mlx;
pub mod tokenizer_bridge;
mod view;

use std::path::PathBuf;

use serde_json::{json, Value as Json};

pub use error::{ConvertError, Result};
pub use exec::{
    device_work, materialize, materialize_mlx, materialize_on, ErrorStats, Materialized,
    MlxMaterialized, MlxQuantizer,
};
pub use mlx_exec::MlxParts;
pub use plan::{
    gguf_tensor_plan, plan_gguf, plan_safetensors, GgufOutType, Plan, PlanSource, TensorPlan,
};
pub use to_gguf::{gguf_metadata, write_gguf, write_gguf_on, GgufMetadataOptions, MetadataNotes};
pub use to_hf::{hf_side_files, write_safetensors, DEFAULT_MAX_SHARD_BYTES};
pub use to_mlx::{
    mlx_config, mlx_lm_default_dtype, mlx_side_files, plan_mlx, write_mlx, MlxMethod, MlxPlan,
    MlxTarget, DEFAULT_BITS, DEFAULT_GROUP_SIZE,
};
pub use view::{Encoding, FloatType, ModelView, Source, TensorBytes, ViewTensor};

use crate::formats::gguf::{Array, Metadata, Value};

/// Where a writer reports its progress.
pub trait ProgressSink: Sync {
    /// A file of `total_bytes` of tensor data starts.
    fn file(&self, label: &str, total_bytes: u64);
    /// Work on tensor `name` starts.
    fn tensor(&self, name: &str);
    /// `bytes` more are written.
    fn advance(&self, bytes: u64);
    /// The file is done.
    fn done(&self);
}

/// A [`ProgressSink`] that shows nothing.
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn file(&self, _: &str, _: u64) {}
    fn tensor(&self, _: &str) {}
    fn advance(&self, _: u64) {}
    fn done(&self) {}
}

/// How a writer runs.
pub struct WriteOptions<'a> {
    /// Measure the error of every lossy tensor (`--report`).
    pub measure: bool,
    /// Where progress goes.
    pub progress: &'a dyn ProgressSink,
}

/// One written file.
#[derive(Debug, Clone)]
pub struct FileReport {
    /// Its path.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// SHA-256 of its contents, hex.
    pub sha256: String,
}

/// One written tensor.
#[derive(Debug, Clone)]
pub struct TensorReport {
    /// Output name.
    pub name: String,
    /// Error of a lossy step, when measured.
    pub error: Option<ErrorStats>,
}

/// What a writer wrote.
#[derive(Debug, Clone, Default)]
pub struct WriteReport {
    /// Files, in write order.
    pub files: Vec<FileReport>,
    /// Tensors, in write order.
    pub tensors: Vec<TensorReport>,
}

impl WriteReport {
    /// The report's files as JSON.
    pub fn files_json(&self) -> Json {
        Json::Array(
            self.files
                .iter()
                .map(|f| json!({"path": f.path, "bytes": f.bytes, "sha256": f.sha256}))
                .collect(),
        )
    }
}

/// Where a GGUF file came from, as `qforge.*` keys.
#[derive(Debug, Clone)]
pub struct Provenance {
    /// The qforge subcommand.
    pub command: String,
    /// Source files and their SHA-256.
    pub sources: Vec<(PathBuf, String)>,
}

impl Provenance {
    /// Writes `qforge.version`, `qforge.command`, `qforge.source.files`
    /// and `qforge.source.sha256`.
    pub fn write(&self, meta: &mut Metadata) {
        meta.set("qforge.version", Value::String(crate::VERSION.into()));
        meta.set("qforge.command", Value::String(self.command.clone()));
        meta.set(
            "qforge.source.files",
            Value::Array(Array::String(
                self.sources
                    .iter()
                    .map(|(p, _)| {
                        p.file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default()
                    })
                    .collect(),
            )),
        );
        meta.set(
            crate::formats::gguf::SOURCE_SHA256,
            Value::Array(Array::String(
                self.sources.iter().map(|(_, h)| h.clone()).collect(),
            )),
        );
    }
}
