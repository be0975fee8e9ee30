//! Writing a Hugging Face folder from a plan: safetensors (sharded like
//! `save_pretrained`, with an index), config.json, generation_config.json
//! and the tokenizer files, into a folder that appears whole or not at all.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value as Json;

use super::error::{ConvertError, Result};
use super::exec::materialize;
use super::plan::Plan;
use super::tokenizer_bridge::{self, HF_TOKENIZER_FILES};
use super::view::{Encoding, ModelView, Source};
use super::{FileReport, TensorReport, WriteOptions, WriteReport};
use crate::formats::atomic::AtomicDir;
use crate::formats::error::FormatError;
use crate::formats::paths::{read_side_file, MAX_TOKENIZER_FILE};
use crate::formats::safetensors::{plan_shards, shard_name, write_model, StTensorSpec, INDEX_FILE};
use crate::hashing::sha256_file;

/// `save_pretrained`'s default shard size (`"5GB"`, decimal).
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5_000_000_000;

/// The files besides the weights: config.json (its `dtype` set to the
/// plan's), generation_config.json, and the tokenizer files (copied from a
/// Hugging Face source, rebuilt from a GGUF source's keys).
pub fn hf_side_files(view: &ModelView<'_>, plan: &Plan) -> Result<Vec<(String, Vec<u8>)>> {
    let mut config = view.config.clone();
    if let Some(dtype) = plan.hf_dtype {
        config.insert("dtype".into(), Json::String(dtype.torch_name().into()));
        if config.contains_key("torch_dtype") {
            config.insert(
                "torch_dtype".into(),
                Json::String(dtype.torch_name().into()),
            );
        }
    }
    let mut files = vec![("config.json".to_string(), pretty(&Json::Object(config)))];
    if let Some(g) = &view.generation_config {
        files.push((
            "generation_config.json".to_string(),
            pretty(&Json::Object(g.clone())),
        ));
    }
    match &view.source {
        Source::Hf { dir, .. } | Source::Mlx { dir } => {
            for name in HF_TOKENIZER_FILES {
                if let Some(bytes) = read_side_file(dir, name, MAX_TOKENIZER_FILE)? {
                    files.push((name.to_string(), bytes));
                }
            }
        }
        Source::Gguf { metadata } => files.extend(tokenizer_bridge::hf_files_from_gguf(metadata)?),
    }
    Ok(files)
}

fn pretty(v: &Json) -> Vec<u8> {
    let mut s = serde_json::to_string_pretty(v).expect("JSON serializes");
    s.push('\n');
    s.into_bytes()
}

/// Writes the planned tensors as safetensors shards of at most
/// `max_shard_bytes` (one `model.safetensors` when they fit), plus
/// `side_files`, into the new folder `dir`. The folder is built under a
/// temporary name and renamed into place; an existing non-empty `dir` is
/// refused rather than replaced.
pub fn write_safetensors(
    view: &ModelView<'_>,
    plan: &Plan,
    side_files: &[(String, Vec<u8>)],
    dir: &Path,
    max_shard_bytes: u64,
    opts: &WriteOptions<'_>,
) -> Result<WriteReport> {
    if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) || dir.is_file() {
        return Err(ConvertError::Unsupported(format!(
            "{} already exists and is not empty: remove it or choose another output folder",
            dir.display()
        )));
    }
    if dir.is_dir() {
        std::fs::remove_dir(dir).map_err(|e| FormatError::io(dir, e))?;
    }
    let specs: Vec<StTensorSpec> = plan
        .tensors
        .iter()
        .map(|t| match t.to {
            Encoding::Float(f) => Ok(StTensorSpec {
                name: t.name.clone(),
                dtype: f.to_safetensors(),
                shape: t.shape.clone(),
            }),
            e => Err(ConvertError::Unsupported(format!(
                "a Hugging Face folder stores plain floats, not {e}"
            ))
            .for_tensor(&t.name)),
        })
        .collect::<Result<_>>()?;
    let by_name: BTreeMap<&str, usize> = plan
        .tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    let shards = plan_shards(&specs, max_shard_bytes)?;
    let n_shards = shards.len();
    let mut shard_of = vec![0usize; specs.len()];
    let mut shard_bytes = vec![0u64; n_shards];
    for (s, members) in shards.iter().enumerate() {
        for &i in members {
            shard_of[i] = s;
            shard_bytes[s] += specs[i].size()?;
        }
    }

    let out = AtomicDir::create(dir)?;
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let mut tensors = Vec::with_capacity(specs.len());
    let mut current_shard = usize::MAX;
    let mut failure: Option<ConvertError> = None;
    let progress = opts.progress;
    let written = write_model(
        out.path(),
        &specs,
        Some(&metadata),
        Some(max_shard_bytes),
        |spec| {
            let i = by_name[spec.name.as_str()];
            if shard_of[i] != current_shard {
                if current_shard != usize::MAX {
                    progress.done();
                }
                current_shard = shard_of[i];
                progress.file(
                    &shard_name(current_shard, n_shards),
                    shard_bytes[current_shard],
                );
            }
            progress.tensor(&spec.name);
            let result = materialize(view, &plan.tensors[i], opts.measure);
            view.release_source(&plan.tensors[i]);
            match result {
                Ok(m) => {
                    progress.advance(m.bytes.len() as u64);
                    tensors.push(TensorReport {
                        name: spec.name.clone(),
                        error: m.error,
                    });
                    Ok(m.bytes.into())
                }
                Err(e) => {
                    let msg = e.to_string();
                    failure = Some(e);
                    Err(FormatError::other(msg))
                }
            }
        },
    );
    if let Some(e) = failure {
        return Err(e);
    }
    let mut names = written?;
    progress.done();
    for (name, bytes) in side_files {
        out.write_file(name, bytes)?;
        names.push(name.clone());
    }
    out.commit()?;

    let mut files = Vec::with_capacity(names.len());
    for name in names {
        let path = dir.join(&name);
        let bytes = std::fs::metadata(&path)
            .map_err(|e| FormatError::io(&path, e))?
            .len();
        let sha256 = sha256_file(&path).map_err(|e| FormatError::io(&path, e))?;
        files.push(FileReport {
            path,
            bytes,
            sha256,
        });
    }
    files.sort_by(|a, b| {
        let key = |p: &Path| p.file_name() == Some(INDEX_FILE.as_ref());
        key(&a.path).cmp(&key(&b.path))
    });
    Ok(WriteReport { files, tensors })
}
