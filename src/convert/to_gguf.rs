//! Writing a GGUF file from a plan: the metadata convert_hf_to_gguf.py
//! writes, in its order, then the tensors streamed one at a time.

use std::path::{Path, PathBuf};

use super::error::{ConvertError, Result};
use super::exec::materialize_on;
use super::general::{general_info, write_general, GeneralSources};
use super::plan::Plan;
use super::tokenizer_bridge;
use super::view::{ModelView, Source};
use super::{FileReport, Provenance, TensorReport, WriteOptions, WriteReport};
use crate::arch::KeyWriter;
use crate::device::Device;
use crate::formats::gguf::{self, GgufOutput, Metadata, TensorSpec, Value};
use crate::hashing::FileDigests;

/// `GGML_QUANT_VERSION`.
pub const QUANTIZATION_VERSION: u32 = 2;

/// Choices for the GGUF metadata.
#[derive(Debug, Clone, Default)]
pub struct GgufMetadataOptions<'a> {
    /// `--model-name`: `general.name`.
    pub model_name: Option<&'a str>,
    /// The BPE pre-tokenizer name to write when the tokenizer's hash is
    /// not a known one.
    pub tokenizer_pre: Option<&'a str>,
    /// The `qforge.*` provenance keys.
    pub provenance: Option<&'a Provenance>,
}

/// What the metadata step could not do.
#[derive(Debug, Clone, Default)]
pub struct MetadataNotes {
    /// Warnings for the user.
    pub warnings: Vec<String>,
}

/// The GGUF metadata for `plan` of `view`, key by key in the script's
/// order: `general.architecture`, keys of generated tensors, `general.type`,
/// gguf-py's `general.*`, the architecture's keys with `general.file_type`,
/// `general.quantization_version`, the tokenizer's keys; then qforge's
/// provenance.
pub fn gguf_metadata(
    view: &ModelView<'_>,
    plan: &Plan,
    opts: &GgufMetadataOptions<'_>,
) -> Result<(Metadata, MetadataNotes)> {
    let arch = view.arch;
    let notes = MetadataNotes::default();
    let mut md = Metadata::new();
    md.set(
        gguf::keys::ARCHITECTURE,
        Value::String(arch.gguf_arch().into()),
    );
    arch.write_early_gguf_keys(
        &view.hparams,
        &mut KeyWriter::new(arch.gguf_arch(), &mut md),
    )?;
    md.set("general.type", Value::String("model".into()));

    let total = plan.parameter_count() as i64;
    let (card, raw_config, dir_name) = match &view.source {
        Source::Hf {
            dir,
            raw_config,
            model_card,
        } => (model_card.as_deref(), Some(*raw_config), folder_name(dir)),
        Source::Gguf { .. } => (None, None, String::new()),
        Source::Mlx { dir } => (None, Some(&view.config), folder_name(dir)),
    };
    match (&view.source, view.gguf_metadata()) {
        (Source::Gguf { .. }, Some(src)) => {
            for (k, v) in src.iter() {
                if k.starts_with("general.")
                    && !matches!(
                        k,
                        "general.architecture"
                            | "general.type"
                            | "general.file_type"
                            | "general.quantization_version"
                            | "general.alignment"
                    )
                {
                    md.set(k, v.clone());
                }
            }
            if let Some(name) = opts.model_name {
                md.set(gguf::keys::NAME, Value::String(name.into()));
            }
        }
        _ => {
            let info = general_info(&GeneralSources {
                model_card: card,
                config: raw_config,
                generation_config: view.generation_config.as_ref(),
                dir_name: &dir_name,
                total_params: total,
                name_override: opts.model_name,
            });
            write_general(&info, &mut md);
        }
    }

    let ftype = plan
        .gguf_file_type()
        .ok_or_else(|| ConvertError::Unsupported("the plan names no GGUF file type".into()))?;
    arch.write_gguf_hparams(
        &view.hparams,
        &mut KeyWriter::new(arch.gguf_arch(), &mut md),
        ftype,
    )?;
    md.set(
        gguf::keys::QUANTIZATION_VERSION,
        Value::U32(QUANTIZATION_VERSION),
    );

    match &view.source {
        Source::Hf { dir, .. } | Source::Mlx { dir } => {
            let class = view
                .config
                .get("architectures")
                .and_then(|a| a.get(0))
                .and_then(|a| a.as_str())
                .unwrap_or(arch.hf_architectures()[0]);
            let keys = tokenizer_bridge::gguf_keys_from_hf_dir(dir, opts.tokenizer_pre, class)?;
            for (k, v) in keys.iter() {
                md.set(k, v.clone());
            }
        }
        Source::Gguf { metadata } => {
            for (k, v) in metadata.iter().filter(|(k, _)| k.starts_with("tokenizer.")) {
                md.set(k, v.clone());
            }
        }
    }
    if let Some(p) = opts.provenance {
        p.write(&mut md);
    }
    Ok((md, notes))
}

/// The folder's name as Python's `Path(arg).name` gives it; for `.` and
/// other names without one, the name of the folder it resolves to (the
/// script would write an empty `general.name` there).
fn folder_name(dir: &Path) -> String {
    match dir.file_name() {
        Some(n) => n.to_string_lossy().into_owned(),
        None => dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default(),
    }
}

/// Streams the planned tensors into the GGUF file `path`, atomically.
/// `sources`, when given, are the digests `metadata` names by placeholders
/// (see [`gguf::GgufOutput::create`]), computed while the tensors are
/// written.
pub fn write_gguf(
    view: &ModelView<'_>,
    plan: &Plan,
    metadata: &Metadata,
    sources: Option<FileDigests>,
    path: &Path,
    opts: &WriteOptions,
) -> Result<WriteReport> {
    write_gguf_on(view, plan, metadata, sources, path, opts, &Device::cpu())
}

/// [`write_gguf`] with the quantizing steps on `device` where its rule
/// sends them (the bytes are the same either way).
pub fn write_gguf_on(
    view: &ModelView<'_>,
    plan: &Plan,
    metadata: &Metadata,
    sources: Option<FileDigests>,
    path: &Path,
    opts: &WriteOptions,
    device: &Device,
) -> Result<WriteReport> {
    let specs: Vec<TensorSpec> = plan
        .tensors
        .iter()
        .map(|t| {
            let ggml_type = t.to.to_ggml().ok_or_else(|| {
                ConvertError::Unsupported(format!("GGUF cannot store {}", t.to)).for_tensor(&t.name)
            })?;
            Ok(TensorSpec {
                name: t.name.clone(),
                dims: t.gguf_dims(),
                ggml_type,
            })
        })
        .collect::<Result<_>>()?;
    let total: u64 = plan.tensors.iter().filter_map(|t| t.out_bytes()).sum();
    let progress = opts.progress;
    progress.file(&path.display().to_string(), total);
    let mut w = GgufOutput::create(path, gguf::VERSION, metadata, &specs, sources, true)?;
    let mut tensors = Vec::with_capacity(plan.tensors.len());
    for t in &plan.tensors {
        progress.tensor(&t.name);
        let m = materialize_on(view, t, opts.measure, device)?;
        view.release_source(t);
        w.write_tensor(&t.name, &m.bytes)?;
        progress.advance(m.bytes.len() as u64);
        tensors.push(TensorReport {
            name: t.name.clone(),
            error: m.error,
        });
    }
    let written = w.finish()?;
    progress.done();
    Ok(WriteReport {
        files: vec![FileReport {
            path: PathBuf::from(path),
            bytes: written.bytes,
            sha256: written.digest().to_string(),
        }],
        tensors,
    })
}
