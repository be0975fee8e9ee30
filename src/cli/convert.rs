//! `qforge convert IN OUT --to FORMAT`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::json;

use super::{parse_size, print_json, Progress};
use crate::formats::atomic::AtomicFile;
use crate::formats::gguf::{self, GgufModel, GgufWriter, Metadata, SplitBy, TensorSpec, Value};
use crate::formats::{detect, ModelFormat};
use crate::hashing::{sha256_file, HashingWriter};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum TargetFormat {
    Gguf,
    Mlx,
    Safetensors,
}

#[derive(Debug, Args)]
pub(crate) struct ConvertArgs {
    /// The model to read: a GGUF file, a safetensors file or folder, an MLX folder.
    input: PathBuf,
    /// Where to write: a file for GGUF, a folder for MLX and safetensors.
    output: PathBuf,
    /// Output format (default: from the output name; `.gguf` means GGUF).
    #[arg(long, value_enum)]
    to: Option<TargetFormat>,
    /// Write a split GGUF set with at most this many tensors per file.
    #[arg(long, value_name = "N", conflicts_with = "split_max_size")]
    split_max_tensors: Option<usize>,
    /// Write a split GGUF set with at most this much tensor data per file (e.g. 2G).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    split_max_size: Option<u64>,
    /// Print a JSON report on stdout and no progress.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: ConvertArgs) -> Result<ExitCode> {
    let to = match args.to {
        Some(t) => t,
        None if args.output.extension().is_some_and(|e| e == "gguf") => TargetFormat::Gguf,
        None => bail!(
            "cannot tell the output format from '{}': pass --to gguf|mlx|safetensors",
            args.output.display()
        ),
    };
    let from = detect(&args.input)?;
    match (from, to) {
        (ModelFormat::Gguf, TargetFormat::Gguf) => gguf_to_gguf(&args),
        (from, to) => bail!(
            "converting {} to {:?} is not available in this build of qforge; \
             it reads and rewrites GGUF (--to gguf from a GGUF input)",
            from.name(),
            to
        ),
    }
}

/// The provenance qforge adds to every GGUF it writes, under `qforge.`.
fn provenance(meta: &mut Metadata, sources: &[(PathBuf, String)], command: &str) {
    meta.set("qforge.version", Value::String(crate::VERSION.into()));
    meta.set("qforge.command", Value::String(command.into()));
    meta.set(
        "qforge.source.files",
        Value::Array(gguf::Array::String(
            sources
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
        "qforge.source.sha256",
        Value::Array(gguf::Array::String(
            sources.iter().map(|(_, h)| h.clone()).collect(),
        )),
    );
}

fn gguf_to_gguf(args: &ConvertArgs) -> Result<ExitCode> {
    let start = Instant::now();
    let model = GgufModel::open(&args.input)?;
    let sources: Vec<(PathBuf, String)> = model
        .files()
        .iter()
        .map(|f| {
            let h =
                sha256_file(f.path()).with_context(|| format!("hashing {}", f.path().display()))?;
            Ok((f.path().to_path_buf(), h))
        })
        .collect::<Result<_>>()?;

    let split = match (args.split_max_tensors, args.split_max_size) {
        (Some(0), _) => bail!("--split-max-tensors must be at least 1"),
        (Some(n), _) => Some(SplitBy::Tensors(n)),
        (None, Some(b)) => Some(SplitBy::Bytes(b)),
        (None, None) => None,
    };

    let mut report_files = Vec::new();
    if let Some(by) = split {
        let prefix = strip_gguf(&args.output);
        // Provenance goes into the first file's metadata, which carries all keys.
        let mut meta = model.metadata().clone();
        provenance(&mut meta, &sources, "convert");
        let paths = gguf::split_file_with_metadata(&model, &meta, &prefix, by)?;
        for p in paths {
            let bytes = std::fs::metadata(&p)?.len();
            report_files.push(json!({"path": p, "bytes": bytes, "sha256": sha256_file(&p)?}));
        }
    } else {
        let mut meta = model.metadata().clone();
        for key in [
            gguf::keys::SPLIT_NO,
            gguf::keys::SPLIT_COUNT,
            gguf::keys::SPLIT_TENSORS_COUNT,
        ] {
            meta.remove(key);
        }
        provenance(&mut meta, &sources, "convert");
        let specs: Vec<TensorSpec> = model.tensors().map(|(t, _)| TensorSpec::from(t)).collect();
        let total: u64 = specs
            .iter()
            .map(|s| gguf::tensor_size(&s.dims, s.ggml_type).unwrap_or(0))
            .sum();
        let progress = Progress::bytes(total, "writing", args.json);
        let out = AtomicFile::create(&args.output)?;
        let mut hashed = HashingWriter::new(out);
        let version = model.files()[0].header().version;
        let mut w = GgufWriter::new(&mut hashed, version, &meta, &specs)
            .map_err(|e| e.in_file(&args.output))?;
        for (t, data) in model.tensors() {
            progress.set_message(&t.name);
            w.write_tensor(&t.name, data)
                .map_err(|e| e.in_file(&args.output))?;
            progress.inc(t.size);
        }
        w.finish().map_err(|e| e.in_file(&args.output))?;
        let written = hashed.written();
        let (out, sha) = hashed.finish();
        out.commit()?;
        progress.finish();
        report_files.push(json!({"path": args.output, "bytes": written, "sha256": sha}));
    }

    if args.json {
        print_json(&json!({
            "input": args.input,
            "format": "gguf",
            "files": report_files,
            "seconds": start.elapsed().as_secs_f64(),
        }))?;
    } else {
        for f in &report_files {
            eprintln!(
                "wrote {} ({} bytes)",
                f["path"].as_str().unwrap_or("?"),
                f["bytes"]
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn strip_gguf(p: &Path) -> PathBuf {
    match p.extension() {
        Some(e) if e == "gguf" => p.with_extension(""),
        _ => p.to_path_buf(),
    }
}
