//! `qforge inspect PATH`: what a model file or folder holds.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::{json, Map, Value as Json};

use super::{human_bytes, print_json};
use crate::formats::gguf::{Array, GgufModel, Value};
use crate::formats::mlx::MlxModel;
use crate::formats::paths::{read_side_file, MAX_JSON_SIDE_FILE};
use crate::formats::safetensors::{dtype_name, SafetensorsModel, StTensorInfo};
use crate::formats::{detect, ModelFormat};
use crate::quant::ftype::file_type_name;

#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// A GGUF file (any file of a split set), a safetensors file, or a model
    /// folder (Hugging Face or MLX).
    path: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Print array values in full (token lists can be long).
    #[arg(long)]
    full: bool,
    /// Leave out the tensor table.
    #[arg(long)]
    no_tensors: bool,
}

/// One row of the tensor table.
struct TensorRow {
    name: String,
    shape: Vec<u64>,
    type_name: String,
    bytes: u64,
    elements: u64,
}

/// Everything inspect reports, format-independent.
struct Summary {
    path: PathBuf,
    format: ModelFormat,
    detail: String,
    files: Vec<(PathBuf, u64)>,
    architecture: Option<String>,
    key_facts: Vec<(&'static str, String)>,
    metadata: Vec<(String, String, Json)>,
    tensors: Vec<TensorRow>,
}

pub(crate) fn run(args: InspectArgs) -> Result<ExitCode> {
    let format = detect(&args.path)?;
    let summary = match format {
        ModelFormat::Gguf => gguf_summary(&args.path, args.full)?,
        ModelFormat::Safetensors => safetensors_summary(&args.path)?,
        ModelFormat::Mlx => mlx_summary(&args.path)?,
    };
    if args.json {
        print_json(&to_json(&summary, args.no_tensors))?;
    } else {
        print_text(&summary, args.no_tensors)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn gguf_summary(path: &Path, full: bool) -> Result<Summary> {
    let model = GgufModel::open(path)?;
    let meta = model.metadata();
    let arch = meta.get_str("general.architecture").map(str::to_string);
    let mut facts = Vec::new();
    if let Some(n) = meta.get_str("general.name") {
        facts.push(("name", n.to_string()));
    }
    if let Some(ft) = meta.get_u64("general.file_type") {
        let name = file_type_name(ft).unwrap_or("unknown");
        facts.push(("file type", format!("{name} ({ft})")));
    }
    if let Some(a) = &arch {
        for (label, key) in [
            ("context", "context_length"),
            ("embedding", "embedding_length"),
            ("layers", "block_count"),
            ("heads", "attention.head_count"),
            ("kv heads", "attention.head_count_kv"),
            ("ffn", "feed_forward_length"),
            ("rope base", "rope.freq_base"),
        ] {
            if let Some(v) = meta.get(&format!("{a}.{key}")) {
                facts.push((label, v.to_string()));
            }
        }
    }
    if let Some(m) = meta.get_str("tokenizer.ggml.model") {
        let vocab = meta
            .get_array("tokenizer.ggml.tokens")
            .map_or(0, Array::len);
        let pre = meta.get_str("tokenizer.ggml.pre").unwrap_or("-");
        facts.push(("tokenizer", format!("{m}, pre {pre}, {vocab} tokens")));
    }
    let metadata = meta
        .iter()
        .map(|(k, v)| {
            let ty = match v {
                Value::Array(a) => format!("[{}]", a.element_type().name()),
                v => v.value_type().name().to_string(),
            };
            (k.to_string(), ty, gguf_value_json(v, full))
        })
        .collect();
    let tensors = model
        .tensors()
        .map(|(t, _)| TensorRow {
            name: t.name.clone(),
            shape: t.shape(),
            type_name: t.ggml_type.name().to_string(),
            bytes: t.size,
            elements: t.n_elements(),
        })
        .collect();
    let version = model.files()[0].header().version;
    let n = model.files().len();
    Ok(Summary {
        path: path.to_path_buf(),
        format: ModelFormat::Gguf,
        detail: if n > 1 {
            format!("GGUF v{version}, split into {n} files")
        } else {
            format!("GGUF v{version}")
        },
        files: model
            .files()
            .iter()
            .map(|f| (f.path().to_path_buf(), f.file_len()))
            .collect(),
        architecture: arch,
        key_facts: facts,
        metadata,
        tensors,
    })
}

/// GGUF value as JSON; arrays over 16 elements are summarized unless `full`.
fn gguf_value_json(v: &Value, full: bool) -> Json {
    match v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::F32(x) => json!(x),
        Value::F64(x) => json!(x),
        Value::Bool(x) => json!(x),
        Value::String(s) => json!(s),
        Value::Array(a) => array_json(a, full),
    }
}

fn array_json(a: &Array, full: bool) -> Json {
    const SHOWN: usize = 16;
    let n = if full { a.len() } else { a.len().min(SHOWN) };
    let items: Vec<Json> = match a {
        Array::U8(v) => v[..n].iter().map(|x| json!(x)).collect(),
        Array::I8(v) => v[..n].iter().map(|x| json!(x)).collect(),
        Array::U16(v) => v[..n].iter().map(|x| json!(x)).collect(),
        Array::I16(v) => v[..n].iter().map(|x| json!(x)).collect(),
        Array::U32(v) => v[..n].iter().map(|x| json!(x)).collect(),
        Array::I32(v) => v[..n].iter().map(|x| json!(x)).collect(),
        Array::U64(v) => v[..n].iter().map(|x| json!(x)).collect(),
        Array::I64(v) => v[..n].iter().map(|x| json!(x)).collect(),
        Array::F32(v) => v[..n].iter().map(|x| json!(x)).collect(),
        Array::F64(v) => v[..n].iter().map(|x| json!(x)).collect(),
        Array::Bool(v) => v[..n].iter().map(|x| json!(x)).collect(),
        Array::String(v) => v[..n].iter().map(|x| json!(x)).collect(),
        Array::Array(v) => v[..n].iter().map(|x| array_json(x, full)).collect(),
    };
    if n == a.len() {
        Json::Array(items)
    } else {
        json!({
            "element_type": a.element_type().name(),
            "len": a.len(),
            "head": items,
        })
    }
}

fn hf_facts(config: &Map<String, Json>) -> (Option<String>, Vec<(&'static str, String)>) {
    let arch = config
        .get("model_type")
        .and_then(Json::as_str)
        .map(str::to_string);
    let mut facts = Vec::new();
    if let Some(a) = config
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Json::as_str)
    {
        facts.push(("class", a.to_string()));
    }
    for (label, key) in [
        ("context", "max_position_embeddings"),
        ("embedding", "hidden_size"),
        ("layers", "num_hidden_layers"),
        ("heads", "num_attention_heads"),
        ("kv heads", "num_key_value_heads"),
        ("ffn", "intermediate_size"),
        ("vocab", "vocab_size"),
        ("rope base", "rope_theta"),
        ("dtype", "torch_dtype"),
        ("dtype", "dtype"),
    ] {
        // transformers 5 moved rope_theta into rope_parameters.
        let value = config.get(key).filter(|v| !v.is_null()).or_else(|| {
            (key == "rope_theta")
                .then(|| config.get("rope_parameters")?.get("rope_theta"))
                .flatten()
        });
        if let Some(v) = value {
            facts.push((label, v.to_string().trim_matches('"').to_string()));
        }
    }
    (arch, facts)
}

fn read_config(dir: &Path) -> Result<Option<Map<String, Json>>> {
    let p = dir.join("config.json");
    let Some(text) = read_side_file(dir, "config.json", MAX_JSON_SIDE_FILE)? else {
        return Ok(None);
    };
    let v =
        serde_json::from_slice(&text).with_context(|| format!("{}: invalid JSON", p.display()))?;
    Ok(Some(v))
}

fn st_row(t: &StTensorInfo) -> TensorRow {
    TensorRow {
        name: t.name.clone(),
        shape: t.shape.clone(),
        type_name: dtype_name(t.dtype),
        bytes: t.size(),
        elements: t.n_elements(),
    }
}

fn st_metadata(model: &SafetensorsModel) -> Vec<(String, String, Json)> {
    model
        .metadata()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (format!("__metadata__.{k}"), "string".into(), json!(v)))
                .collect()
        })
        .unwrap_or_default()
}

fn safetensors_summary(path: &Path) -> Result<Summary> {
    let model = SafetensorsModel::open(path)?;
    let config = if path.is_dir() {
        read_config(path)?
    } else {
        None
    };
    let (arch, facts) = config.as_ref().map(hf_facts).unwrap_or_default();
    let n = model.files().len();
    Ok(Summary {
        path: path.to_path_buf(),
        format: ModelFormat::Safetensors,
        detail: if n > 1 {
            format!("safetensors, {n} shards")
        } else {
            "safetensors".into()
        },
        files: model
            .files()
            .iter()
            .map(|f| (f.path().to_path_buf(), f.file_len()))
            .collect(),
        architecture: arch,
        key_facts: facts,
        metadata: st_metadata(&model),
        tensors: model.tensors().map(|(t, _)| st_row(t)).collect(),
    })
}

fn mlx_summary(path: &Path) -> Result<Summary> {
    let model = MlxModel::open(path)?;
    let (arch, mut facts) = hf_facts(model.config());
    if let Some(q) = model.quantization() {
        facts.push((
            "quantization",
            format!(
                "{} {}-bit, group {}, {} per-layer overrides",
                q.mode,
                q.default.bits,
                q.default.group_size,
                q.overrides.len()
            ),
        ));
    }
    let layers = model.quantized_layers()?;
    let mut folded: BTreeMap<&str, TensorRow> = BTreeMap::new();
    for l in &layers {
        folded.insert(
            l.weight.name.as_str(),
            TensorRow {
                name: l.weight.name.clone(),
                shape: l.weight.shape[..l.weight.shape.len() - 1]
                    .iter()
                    .copied()
                    .chain([l.cols])
                    .collect(),
                type_name: format!("MLX{}g{}", l.params.bits, l.params.group_size),
                bytes: l.weight.size() + l.scales.size() + l.biases.size(),
                elements: l.rows * l.cols,
            },
        );
    }
    let mut tensors = Vec::new();
    for (t, _) in model.tensors().tensors() {
        if let Some(row) = folded.remove(t.name.as_str()) {
            tensors.push(row);
        } else if layers
            .iter()
            .any(|l| std::ptr::eq(l.scales, t) || std::ptr::eq(l.biases, t))
        {
            continue;
        } else {
            tensors.push(st_row(t));
        }
    }
    let st = model.tensors();
    Ok(Summary {
        path: path.to_path_buf(),
        format: ModelFormat::Mlx,
        detail: format!(
            "MLX (mlx-lm layout), {} safetensors file(s)",
            st.files().len()
        ),
        files: st
            .files()
            .iter()
            .map(|f| (f.path().to_path_buf(), f.file_len()))
            .collect(),
        architecture: arch,
        key_facts: facts,
        metadata: st_metadata(st),
        tensors,
    })
}

/// Per type: (tensors, elements, bytes).
fn histogram(tensors: &[TensorRow]) -> BTreeMap<&str, (usize, u64, u64)> {
    let mut h: BTreeMap<&str, (usize, u64, u64)> = BTreeMap::new();
    for t in tensors {
        let e = h.entry(t.type_name.as_str()).or_default();
        e.0 += 1;
        e.1 += t.elements;
        e.2 += t.bytes;
    }
    h
}

fn totals(s: &Summary) -> (u64, u64, u64, f64) {
    let elements: u64 = s.tensors.iter().map(|t| t.elements).sum();
    let bytes: u64 = s.tensors.iter().map(|t| t.bytes).sum();
    let file_bytes: u64 = s.files.iter().map(|f| f.1).sum();
    let bpw = if elements > 0 {
        bytes as f64 * 8.0 / elements as f64
    } else {
        0.0
    };
    (elements, bytes, file_bytes, bpw)
}

fn to_json(s: &Summary, no_tensors: bool) -> Json {
    let (elements, bytes, file_bytes, bpw) = totals(s);
    let types: Map<String, Json> = histogram(&s.tensors)
        .into_iter()
        .map(|(k, (n, e, b))| {
            (
                k.to_string(),
                json!({"tensors": n, "elements": e, "bytes": b}),
            )
        })
        .collect();
    let metadata: Map<String, Json> = s
        .metadata
        .iter()
        .map(|(k, _, v)| (k.clone(), v.clone()))
        .collect();
    let mut out = json!({
        "path": s.path,
        "format": s.format.name(),
        "detail": s.detail,
        "files": s.files.iter().map(|(p, n)| json!({"path": p, "bytes": n})).collect::<Vec<_>>(),
        "architecture": s.architecture,
        "facts": s.key_facts.iter().map(|(k, v)| json!({"name": k, "value": v})).collect::<Vec<_>>(),
        "metadata": metadata,
        "types": types,
        "tensor_count": s.tensors.len(),
        "elements": elements,
        "tensor_bytes": bytes,
        "file_bytes": file_bytes,
        "bits_per_weight": bpw,
    });
    if !no_tensors {
        out["tensors"] = s
            .tensors
            .iter()
            .map(|t| json!({"name": t.name, "shape": t.shape, "type": t.type_name, "bytes": t.bytes}))
            .collect();
    }
    out
}

fn print_text(s: &Summary, no_tensors: bool) -> io::Result<()> {
    let (elements, bytes, file_bytes, bpw) = totals(s);
    let mut o = io::stdout().lock();
    writeln!(o, "{}", s.path.display())?;
    writeln!(o, "  {:<14}{}", "format", s.detail)?;
    if let Some(a) = &s.architecture {
        writeln!(o, "  {:<14}{a}", "architecture")?;
    }
    for (k, v) in &s.key_facts {
        writeln!(o, "  {k:<14}{v}")?;
    }
    writeln!(o, "  {:<14}{:.2} M", "parameters", elements as f64 / 1e6)?;
    writeln!(
        o,
        "  {:<14}{} in {} file(s), {} of tensor data, {bpw:.2} bits/weight",
        "size",
        human_bytes(file_bytes),
        s.files.len(),
        human_bytes(bytes)
    )?;

    if !s.metadata.is_empty() {
        writeln!(o, "\nmetadata ({} keys)", s.metadata.len())?;
        let width = s.metadata.iter().map(|m| m.0.len()).max().unwrap_or(0);
        for (k, ty, v) in &s.metadata {
            let shown = match v {
                Json::String(text) => {
                    let first: String = text.chars().take(70).collect();
                    let first = first.replace('\n', "\\n");
                    if text.chars().count() > 70 {
                        format!("{first:?}... ({} bytes)", text.len())
                    } else {
                        format!("{first:?}")
                    }
                }
                Json::Object(m) => format!(
                    "[{} items] {}...",
                    m.get("len").unwrap_or(&Json::Null),
                    m.get("head").map(|h| short(h, 60)).unwrap_or_default()
                ),
                other => short(other, 80),
            };
            writeln!(o, "  {k:<width$}  {ty:<8} {shown}")?;
        }
    }

    writeln!(o, "\ntypes")?;
    for (ty, (n, e, b)) in histogram(&s.tensors) {
        let pct = if bytes > 0 {
            b as f64 * 100.0 / bytes as f64
        } else {
            0.0
        };
        writeln!(
            o,
            "  {ty:<10} {n:>5} tensors {:>10.2} M elements {:>12} {pct:>5.1}%",
            e as f64 / 1e6,
            human_bytes(b)
        )?;
    }

    if !no_tensors {
        writeln!(o, "\ntensors ({})", s.tensors.len())?;
        let width = s.tensors.iter().map(|t| t.name.len()).max().unwrap_or(0);
        for t in &s.tensors {
            let shape = format!("{:?}", t.shape);
            writeln!(
                o,
                "  {:<width$}  {shape:<18} {:<8} {:>12}",
                t.name, t.type_name, t.bytes
            )?;
        }
    }
    Ok(())
}

fn short(v: &Json, max: usize) -> String {
    let s = v.to_string();
    if s.chars().count() > max {
        let cut: String = s.chars().take(max).collect();
        format!("{cut}...")
    } else {
        s
    }
}
