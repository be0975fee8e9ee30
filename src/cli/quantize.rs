//! `qforge quantize IN OUT --type TYPE` (alias `requantize`): llama.cpp's
//! quant mixes, byte for byte, with importance matrices.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value as Json};

use super::convert::{quantize_to_mlx, ConvertArgs, MlxSearchArgs};
use super::{human_bytes, print_json, Progress};
use crate::convert::ModelView;
use crate::device::{Device, DeviceArg, Selection};
use crate::formats::gguf::GgufModel;
use crate::formats::hf::HfModel;
use crate::formats::mlx::{BITS as MLX_BITS, GROUP_SIZES as MLX_GROUP_SIZES};
use crate::formats::{detect, ModelFormat};
use crate::hashing::{sha256_file, FileDigests};
use crate::quant::ftype::FileType;
use crate::quant::imatrix::ImportanceMatrix;
use crate::quant::mix::{parse_ggml_type, MixOptions, ModelFacts, TensorTypeOverride};
use crate::quant::mlx_recipe::{
    config_quantization, module_quant, MlxLayout, MlxQuantArgs, MlxRecipe,
};
use crate::quant::plan::{
    plan_gguf, ImatrixRole, Method, PlanOptions, PlannedTensor, Problem, QuantPlan,
};
use crate::quant::source::QuantInput;
use crate::quant::write::{
    device_work, output_paths, quantized_metadata, write_gguf, ImatrixNote, Provenance,
    SearchOptions,
};
use quant_kernels::ggml::requant::RequantStats;

#[derive(Debug, Args)]
pub(crate) struct QuantizeArgs {
    /// The model to quantize: a GGUF file (any file of a split set) or a
    /// Hugging Face model folder.
    input: PathBuf,
    /// Where to write it (with --keep-split, the prefix of the split files).
    #[arg(required_unless_present = "dry_run")]
    output: Option<PathBuf>,
    /// The quant mix, as llama-quantize names it (Q4_K_M, Q8_0, IQ4_XS, F16 ...).
    #[arg(long = "type", short = 't', value_name = "TYPE")]
    file_type: Option<FileType>,
    /// Importance matrix from llama-imatrix (GGUF or legacy .dat).
    #[arg(long, value_name = "FILE")]
    imatrix: Option<PathBuf>,
    /// Use the importance matrix only for tensors whose name contains NAME
    /// (repeatable).
    #[arg(long, value_name = "NAME", conflicts_with = "exclude_weights")]
    include_weights: Vec<String>,
    /// Do not use the importance matrix for tensors whose name contains NAME
    /// (repeatable).
    #[arg(long, value_name = "NAME")]
    exclude_weights: Vec<String>,
    /// Type of output.weight (a ggml type: q8_0, q6_K, f16 ...).
    #[arg(long, value_name = "TYPE", value_parser = parse_type_arg)]
    output_tensor_type: Option<quant_kernels::GgmlType>,
    /// Type of the token embeddings.
    #[arg(long, value_name = "TYPE", value_parser = parse_type_arg)]
    token_embedding_type: Option<quant_kernels::GgmlType>,
    /// Tensors whose name matches the regex PATTERN get TYPE (repeatable,
    /// first match wins; example: attn_v=q8_0).
    #[arg(long, value_name = "PATTERN=TYPE", value_parser = parse_override_arg)]
    tensor_type: Vec<TensorTypeOverride>,
    /// Every quantized tensor gets the mix's default type: no per-tensor rules.
    #[arg(long)]
    pure: bool,
    /// Leave output.weight as it is.
    #[arg(long)]
    leave_output_tensor: bool,
    /// Allow requantizing tensors that are already quantized (loses more
    /// than quantizing from 16 or 32 bits).
    #[arg(long)]
    allow_requantize: bool,
    /// Write one output file per input split file.
    #[arg(long)]
    keep_split: bool,
    /// Requantizing a quantized tensor: `on` keeps the source's grid (blocks
    /// transcoded exactly where the target holds every value, scales aimed
    /// at the source's grid points elsewhere); `off` requantizes through f32
    /// exactly as llama-quantize does, byte for byte.
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    exact_grid: bool,
    /// Threads (default: all cores).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Hugging Face inputs: the BPE pre-tokenizer name to write when the
    /// tokenizer's is not a known one (as `qforge convert`).
    #[arg(long, value_name = "NAME")]
    tokenizer_pre: Option<String>,
    /// How blocks get their scales. GGUF outputs: `rtn` (default): llama-quantize's own
    /// quantizers, byte for byte (round to nearest, or its weighted search
    /// when --imatrix is given). `search`: Q4_0, Q4_1, Q5_0 and Q5_1
    /// tensors get a per-block search of their f16 scale (and minimum)
    /// with less weighted error, starting from llama-quantize's result;
    /// other types are unchanged. Same types, same sizes.
    /// MLX outputs (`--bits`, `--quant-predicate`): as `qforge convert --to
    /// mlx --method`, whose default is `search`; `rtn` gives mlx_lm.convert's
    /// bytes.
    #[arg(long, value_enum, ignore_case = true)]
    method: Option<super::convert::Method>,
    /// With `--method search`: tokens of the short forward pass over
    /// synthetic tokens that finds each matrix's high-activation columns
    /// (0: none, search on the weights alone); with --imatrix it weighs only
    /// the searched tensors the matrix has no entry for.
    #[arg(long, value_name = "N", default_value_t = crate::quant::calibrate::DEFAULT_TOKENS)]
    calibration_tokens: usize,
    /// Print the per-tensor plan and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print a JSON report on stdout and no progress.
    #[arg(long)]
    json: bool,
    /// Where to quantize: `gpu` runs every tensor quantized without
    /// importance weights to Q8_0, Q4_0, Q4_1, Q4_K or Q6_K on the GPU;
    /// `auto` does so only where the GPU pays for its transfers (see
    /// quant-kernels/BENCH-gpu.md), else the CPU, saying why; `cpu`.
    /// The bytes are the same on every device.
    #[arg(long, value_enum, ignore_case = true, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    /// MLX output: bits per weight (2, 3, 4, 5, 6, 8).
    #[arg(long, value_name = "B")]
    bits: Option<u32>,
    /// MLX output: elements per quantization group (32, 64, 128).
    #[arg(long, value_name = "G")]
    group_size: Option<u32>,
    /// MLX output: one of mlx-lm's mixed recipes (mixed_2_6, mixed_3_4,
    /// mixed_3_6, mixed_4_6).
    #[arg(long, value_name = "RECIPE")]
    quant_predicate: Option<String>,
    /// Metadata set on the output after the quantizer's own (a manifest's
    /// name, template and parameters); not a command-line option.
    #[arg(skip)]
    extra_metadata: Vec<(String, crate::formats::gguf::Value)>,
    /// No summary on stderr and no progress bar (a caller reports).
    #[arg(skip)]
    quiet: bool,
}

/// `qforge quantize INPUT OUTPUT --type FILE_TYPE` for `qforge run`: the same
/// code path as the command line, with `extra_metadata` set on the output
/// and nothing printed.
pub fn quantize_file(
    input: &Path,
    output: &Path,
    file_type: &str,
    imatrix: Option<&Path>,
    allow_requantize: bool,
    extra_metadata: &[(String, crate::formats::gguf::Value)],
    threads: usize,
) -> Result<()> {
    use clap::Parser;
    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        args: QuantizeArgs,
    }
    let mut argv: Vec<std::ffi::OsString> = vec!["quantize".into(), input.into(), output.into()];
    argv.extend(["--type".into(), file_type.into()]);
    if let Some(m) = imatrix {
        argv.extend(["--imatrix".into(), m.into()]);
    }
    if allow_requantize {
        argv.push("--allow-requantize".into());
    }
    if threads > 0 {
        argv.extend(["--threads".into(), threads.to_string().into()]);
    }
    let mut args = Wrap::try_parse_from(argv)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .args;
    args.extra_metadata = extra_metadata.to_vec();
    args.quiet = true;
    run(args).map(|_| ())
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("expected on or off, got '{s}'")),
    }
}

fn parse_type_arg(s: &str) -> Result<quant_kernels::GgmlType, String> {
    parse_ggml_type(s).map_err(|e| e.to_string())
}

fn parse_override_arg(s: &str) -> Result<TensorTypeOverride, String> {
    TensorTypeOverride::parse(s).map_err(|e| e.to_string())
}

/// The plan and what it was made from.
struct Resolved<'a> {
    input: QuantInput<'a>,
    imatrix: Option<ImportanceMatrix>,
    plan: QuantPlan,
}

pub(crate) fn run(args: QuantizeArgs) -> Result<ExitCode> {
    if args.bits.is_some() || args.group_size.is_some() || args.quant_predicate.is_some() {
        return mlx_output(&args);
    }
    let Some(file_type) = args.file_type else {
        bail!("pass --type TYPE (Q4_K_M, Q8_0, IQ4_XS, F16 ...)");
    };
    let min = crate::quant::calibrate::MIN_TOKENS;
    if args.calibration_tokens > 0 && args.calibration_tokens < min {
        bail!("--calibration-tokens must be 0 (no calibration) or at least {min}");
    }
    let pool = worker_pool(args.threads)?;
    match detect(&args.input)? {
        ModelFormat::Gguf => {
            let model = GgufModel::open(&args.input)?;
            pool.install(|| quantize(&args, file_type, QuantInput::gguf(&model)))
        }
        ModelFormat::Safetensors => {
            if !args.input.is_dir() {
                bail!(
                    "{} is a single safetensors file: give the model folder (config.json is needed)",
                    args.input.display()
                );
            }
            let hf = HfModel::open(&args.input)?;
            let view = ModelView::from_hf(&hf)?;
            pool.install(|| {
                let input = QuantInput::view(&view, args.tokenizer_pre.as_deref())?;
                quantize(&args, file_type, input)
            })
        }
        other => bail!(
            "quantizing a {} input is not available in this build of qforge (it reads GGUF \
             files and Hugging Face folders)",
            other.name()
        ),
    }
}

fn quantize(args: &QuantizeArgs, file_type: FileType, input: QuantInput) -> Result<ExitCode> {
    let resolved = resolve(args, file_type, input)?;
    for w in &resolved.input.warnings {
        eprintln!("warning: {w}");
    }
    if args.dry_run {
        return dry_run(args, &resolved);
    }
    let output = args
        .output
        .as_deref()
        .expect("clap requires OUT without --dry-run");
    if same_file(&args.input, output) {
        bail!(
            "input and output are the same file ({}): write the quantized model elsewhere",
            output.display()
        );
    }
    if !resolved.plan.problems.is_empty() {
        let mut msg = format!(
            "cannot quantize {} to {}:",
            args.input.display(),
            resolved.plan.file_type
        );
        for line in problem_lines(&resolved.plan.problems) {
            msg.push_str("\n  ");
            msg.push_str(&line);
        }
        bail!(msg);
    }
    write(args, output, resolved)
}

/// The options that shape the output, as command-line words (recorded in
/// the file's provenance).
fn settings_words(args: &QuantizeArgs, file_type: FileType) -> Vec<String> {
    let mut w = vec!["--type".to_string(), file_type.name().to_string()];
    if let Some(p) = &args.imatrix {
        w.push("--imatrix".into());
        w.push(
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
    }
    for (flag, values) in [
        ("--include-weights", &args.include_weights),
        ("--exclude-weights", &args.exclude_weights),
    ] {
        for v in values {
            w.push(flag.into());
            w.push(v.clone());
        }
    }
    for (flag, ty) in [
        ("--output-tensor-type", args.output_tensor_type),
        ("--token-embedding-type", args.token_embedding_type),
    ] {
        if let Some(ty) = ty {
            w.push(flag.into());
            w.push(ty.name().into());
        }
    }
    for o in &args.tensor_type {
        w.push("--tensor-type".into());
        w.push(format!("{}={}", o.pattern, o.ggml_type.name()));
    }
    if args.method == Some(super::convert::Method::Search) {
        w.push("--method".into());
        w.push("search".into());
        w.push("--calibration-tokens".into());
        w.push(args.calibration_tokens.to_string());
    }
    for (flag, on) in [
        ("--pure", args.pure),
        ("--leave-output-tensor", args.leave_output_tensor),
        ("--allow-requantize", args.allow_requantize),
        ("--keep-split", args.keep_split),
    ] {
        if on {
            w.push(flag.into());
        }
    }
    if !args.exact_grid {
        w.push("--exact-grid".into());
        w.push("off".into());
    }
    w
}

fn write(args: &QuantizeArgs, output: &Path, r: Resolved) -> Result<ExitCode> {
    let start = Instant::now();
    let plan = &r.plan;
    // The sources are hashed while they are quantized: the header names
    // their digests by placeholders until they are known.
    let digests = FileDigests::start(r.input.files.clone());
    let sources = digests.placeholders();
    let imatrix_sha256 = match &args.imatrix {
        Some(p) => Some(sha256_file(p).with_context(|| format!("hashing {}", p.display()))?),
        None => None,
    };
    let provenance = Provenance {
        sources,
        imatrix_sha256,
        settings: settings_words(args, plan.file_type),
    };
    let note = match (&args.imatrix, &r.imatrix) {
        (Some(p), Some(m)) => Some(ImatrixNote {
            file_arg: p.to_string_lossy().into_owned(),
            matrix: m,
        }),
        _ => None,
    };
    let mut meta = quantized_metadata(
        &r.input.metadata,
        plan.file_type,
        note.as_ref(),
        &provenance,
    );
    for (key, value) in &args.extra_metadata {
        meta.set(key.clone(), value.clone());
    }
    let paths = output_paths(output, plan, args.keep_split);
    let work: Vec<_> = plan
        .tensors
        .iter()
        .filter_map(|t| device_work(t, r.imatrix.as_ref()))
        .collect();
    let Selection { device, note } = Device::select(args.device, &work)?;
    if let (Some(note), false) = (&note, args.quiet) {
        eprintln!("{note}");
    }
    let estimate = if args.method == Some(super::convert::Method::Search)
        && args.calibration_tokens > 0
        && plan
            .tensors
            .iter()
            .any(|t| quant_kernels::ggml::SEARCHABLE.contains(&t.to) && t.method != Method::Copy)
    {
        match crate::quant::calibrate::synthetic_importance(&args.input, args.calibration_tokens) {
            Ok(m) => Some(m),
            Err(e) => {
                eprintln!(
                    "warning: the calibration pass failed ({e:#}): searching on the weights alone"
                );
                None
            }
        }
    } else {
        None
    };
    let search = (args.method == Some(super::convert::Method::Search)).then_some(SearchOptions {
        estimate: estimate.as_ref(),
    });

    let progress = Progress::bytes(plan.from_bytes(), "quantizing", args.json || args.quiet);
    let measured: Mutex<HashMap<String, RequantStats>> = Mutex::default();
    let files = write_gguf(
        r.input.source.as_ref(),
        plan,
        &meta,
        Some(digests),
        // Only the JSON report names the outputs' digests.
        args.json,
        &paths,
        r.imatrix.as_ref(),
        &device,
        search.as_ref(),
        &|t: &PlannedTensor, stats: Option<&RequantStats>| {
            progress.set_message(&t.name);
            progress.inc(t.from_bytes);
            if let Some(s) = stats {
                measured
                    .lock()
                    .expect("no panics while holding the lock")
                    .insert(t.name.clone(), *s);
            }
        },
    )?;
    progress.finish();
    let measured = measured
        .into_inner()
        .expect("no panics while holding the lock");

    let seconds = start.elapsed().as_secs_f64();
    if args.quiet {
        // The caller reports.
    } else if args.json {
        print_json(&json!({
            "input": args.input,
            "type": plan.file_type.name(),
            "files": files.iter().map(|f| json!({"path": f.path, "bytes": f.bytes, "sha256": f.sha256})).collect::<Vec<_>>(),
            "from_bytes": plan.from_bytes(),
            "to_bytes": plan.to_bytes(),
            "bits_per_weight": bits_per_weight(plan.to_bytes(), plan.n_elements()),
            "fallbacks": plan.n_fallback,
            "imatrix_entries": r.imatrix.as_ref().map(ImportanceMatrix::len),
            "device": device.name(),
            "seconds": seconds,
            "requantized": requant_summary_json(plan, &measured),
            "tensors": plan_json(plan, &measured),
        }))?;
    } else {
        for f in &files {
            eprintln!(
                "wrote {} ({}, {:.2} bits/weight) in {seconds:.1} s",
                f.path.display(),
                human_bytes(f.bytes),
                bits_per_weight(plan.to_bytes(), plan.n_elements())
            );
        }
        if plan.n_fallback > 0 {
            eprintln!(
                "{} of {} tensors did not fit the mix's type and fell back to another (see --dry-run)",
                plan.n_fallback,
                plan.tensors.len()
            );
        }
        for line in requant_summary_lines(plan, &measured) {
            eprintln!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What requantizing with `--exact-grid on` did, summed over tensors: those
/// transcoded exactly, and those searched with their error against the
/// source values beside llama-quantize's on the same values.
fn requant_summary_lines(
    plan: &QuantPlan,
    measured: &HashMap<String, RequantStats>,
) -> Vec<String> {
    let mut lines = Vec::new();
    let of = |m: Method| {
        plan.tensors
            .iter()
            .filter(move |t| t.method == m)
            .filter_map(|t| measured.get(&t.name))
    };
    let exact: Vec<&RequantStats> = of(Method::Exact).collect();
    if !exact.is_empty() {
        let inexact = exact.iter().filter(|s| !s.is_exact()).count();
        let mut line = format!(
            "{} tensor(s) transcoded without loss: every value is the source's, bit for bit",
            exact.len()
        );
        if inexact > 0 {
            line = format!(
                "{} tensor(s) transcoded; {inexact} of them have blocks past f16's range, requantized as llama-quantize does",
                exact.len()
            );
        }
        lines.push(line);
    }
    let searched = of(Method::GridSearch).fold(None, |acc: Option<RequantStats>, s| {
        Some(acc.map_or(*s, |a| a.merge(*s)))
    });
    if let Some(s) = searched {
        let n = of(Method::GridSearch).count();
        lines.push(format!(
            "{n} tensor(s) requantized with the grid search: {} of {} blocks searched, {} exact; \
             RMS error against the source values {:.3e} (llama-quantize's on the same values: {:.3e})",
            s.searched_blocks,
            s.blocks,
            s.exact_blocks,
            s.rms(),
            s.reference_rms().unwrap_or(f64::NAN),
        ));
    }
    lines
}

fn requant_summary_json(plan: &QuantPlan, measured: &HashMap<String, RequantStats>) -> Json {
    let count = |m: Method| plan.tensors.iter().filter(|t| t.method == m).count();
    let searched = plan
        .tensors
        .iter()
        .filter(|t| t.method == Method::GridSearch)
        .filter_map(|t| measured.get(&t.name))
        .fold(RequantStats::default(), |a, s| a.merge(*s));
    json!({
        "exact_tensors": count(Method::Exact),
        "searched_tensors": count(Method::GridSearch),
        "searched": stats_json(&searched),
    })
}

fn stats_json(s: &RequantStats) -> Json {
    json!({
        "blocks": s.blocks,
        "exact_blocks": s.exact_blocks,
        "searched_blocks": s.searched_blocks,
        "rms_error": s.rms(),
        "max_abs_error": s.max_abs,
        "llama_rms_error": s.reference_rms(),
    })
}

fn resolve<'a>(
    args: &QuantizeArgs,
    file_type: FileType,
    input: QuantInput<'a>,
) -> Result<Resolved<'a>> {
    let facts = ModelFacts::from_gguf(&input.metadata)
        .with_context(|| format!("reading {}", args.input.display()))?;

    let imatrix = match &args.imatrix {
        None => None,
        Some(path) => {
            let mut m = ImportanceMatrix::open(path)?;
            if let Some((name, v)) = m.first_non_finite() {
                bail!(
                    "{}: the importance weights of '{name}' include {v}; llama-quantize refuses \
                     non-finite weights, and so does qforge",
                    path.display()
                );
            }
            m.filter(&args.include_weights, &args.exclude_weights);
            Some(m)
        }
    };

    let mix = MixOptions {
        file_type,
        pure: args.pure,
        leave_output_tensor: args.leave_output_tensor,
        output_tensor_type: args.output_tensor_type,
        token_embedding_type: args.token_embedding_type,
        tensor_types: args.tensor_type.clone(),
        has_imatrix: false,
    };
    let opts = PlanOptions {
        mix,
        allow_requantize: args.allow_requantize,
        keep_split: args.keep_split,
        exact_grid: args.exact_grid,
    };
    let plan = plan_gguf(&facts, &input.tensors, &opts, imatrix.as_ref())
        .with_context(|| format!("planning {}", args.input.display()))?;
    Ok(Resolved {
        input,
        imatrix,
        plan,
    })
}

/// MLX output: an MLX folder quantized as `mlx_lm.convert -q [--q-bits B
/// --q-group-size G] [--quant-predicate RECIPE]` quantizes it, from any
/// input qforge reads (written through `qforge convert`'s MLX writer);
/// with `--dry-run`, the per-module choices for a Hugging Face folder.
fn mlx_output(args: &QuantizeArgs) -> Result<ExitCode> {
    if args.file_type.is_some() {
        bail!("--type picks a GGUF mix; --bits, --group-size and --quant-predicate are for MLX output: give one or the other");
    }
    if let Some(b) = args.bits.filter(|b| !MLX_BITS.contains(b)) {
        bail!("--bits {b}: mlx's affine mode takes 2, 3, 4, 5, 6 or 8");
    }
    if let Some(g) = args.group_size.filter(|g| !MLX_GROUP_SIZES.contains(g)) {
        bail!("--group-size {g}: mlx's affine mode takes 32, 64 or 128");
    }
    let recipe = args
        .quant_predicate
        .as_deref()
        .map(str::parse::<MlxRecipe>)
        .transpose()?;
    let quant = MlxQuantArgs {
        bits: args.bits,
        group_size: args.group_size,
        recipe,
    };
    if !args.dry_run {
        return write_mlx(args, quant);
    }
    if !matches!(detect(&args.input)?, ModelFormat::Safetensors) || !args.input.is_dir() {
        bail!(
            "{}: MLX plans are made for Hugging Face model folders",
            args.input.display()
        );
    }
    let hf = HfModel::open(&args.input)?;
    let config = hf.config();
    let tied = config
        .get("tie_word_embeddings")
        .and_then(Json::as_bool)
        .unwrap_or(false);
    // mlx-lm's modules: one per `.weight`, less the tied lm_head its
    // models' sanitize() drops.
    let modules: Vec<(String, Vec<u64>)> = hf
        .weights()
        .tensors()
        .filter_map(|(t, _)| {
            let path = t.name.strip_suffix(".weight")?;
            (!(tied && path == "lm_head")).then(|| (path.to_string(), t.shape.clone()))
        })
        .collect();
    let layout = match recipe {
        None => None,
        Some(_) => {
            let layers = config
                .get("num_hidden_layers")
                .or_else(|| {
                    config
                        .get("text_config")
                        .and_then(|t| t.get("num_hidden_layers"))
                })
                .and_then(Json::as_u64)
                .context("config.json has no num_hidden_layers, which the recipes need")?;
            Some(MlxLayout::from_module_paths(
                modules.iter().map(|(p, _)| p.as_str()),
                layers as usize,
            )?)
        }
    };
    let mut planned = Vec::new();
    for (path, shape) in &modules {
        let q = module_quant(path, shape, &quant, layout.as_ref())?;
        planned.push((path, shape, q));
    }
    let quantization = config_quantization(
        modules.iter().map(|(p, s)| (p.as_str(), s.as_slice())),
        &quant,
        layout.as_ref(),
    )?;
    if args.json {
        print_json(&json!({
            "input": args.input,
            "format": "mlx",
            "quantization": quantization,
            "modules": planned.iter().map(|(path, shape, q)| json!({
                "path": path,
                "shape": shape,
                "bits": q.as_ref().map(|q| q.bits),
                "group_size": q.as_ref().map(|q| q.group_size),
            })).collect::<Vec<_>>(),
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let width = modules
        .iter()
        .map(|(p, _)| p.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "{} -> MLX ({} modules)",
        args.input.display(),
        modules.len()
    );
    println!("  {:<width$}  {:<16} quantization", "module", "shape");
    for (path, shape, q) in &planned {
        let how = match q {
            Some(q) => format!("{} bits, group {}", q.bits, q.group_size),
            None => "stays as it is".into(),
        };
        println!("  {path:<width$}  {:<16} {how}", format!("{shape:?}"));
    }
    println!("config.json \"quantization\": {quantization}");
    Ok(ExitCode::SUCCESS)
}

/// The rayon pool of `--threads` (default: every core).
fn worker_pool(threads: Option<usize>) -> Result<rayon::ThreadPool> {
    let threads = match threads {
        Some(0) => bail!("--threads must be at least 1"),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, usize::from),
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .context("starting the worker threads")
}

/// Writes the MLX folder.
fn write_mlx(args: &QuantizeArgs, quant: MlxQuantArgs) -> Result<ExitCode> {
    let output = args
        .output
        .clone()
        .expect("clap requires OUT without --dry-run");
    let unused = [
        (args.pure, "--pure"),
        (args.keep_split, "--keep-split"),
        (args.leave_output_tensor, "--leave-output-tensor"),
        (!args.tensor_type.is_empty(), "--tensor-type"),
        (args.output_tensor_type.is_some(), "--output-tensor-type"),
        (
            args.token_embedding_type.is_some(),
            "--token-embedding-type",
        ),
    ];
    if let Some((_, flag)) = unused.iter().find(|(set, _)| *set) {
        bail!("{flag} applies to GGUF outputs (--type), not to MLX folders");
    }
    let pool = worker_pool(args.threads)?;
    let convert = ConvertArgs::mlx_quantize(
        args.input.clone(),
        output,
        quant,
        MlxSearchArgs {
            method: args.method,
            imatrix: args.imatrix.clone(),
            calibration_tokens: args.calibration_tokens,
        },
        args.allow_requantize,
        args.json,
    );
    pool.install(|| quantize_to_mlx(&convert))
}

/// The plan's problems, one line per distinct message, naming the first
/// few tensors it concerns (a requantize refusal concerns every matrix).
fn problem_lines(problems: &[Problem]) -> Vec<String> {
    const NAMED: usize = 3;
    let mut groups: Vec<(&str, Vec<&str>, bool)> = Vec::new();
    for p in problems {
        let i = match groups.iter().position(|g| g.0 == p.message) {
            Some(i) => i,
            None => {
                groups.push((&p.message, Vec::new(), false));
                groups.len() - 1
            }
        };
        match &p.tensor {
            Some(t) => groups[i].1.push(t),
            None => groups[i].2 = true,
        }
    }
    groups
        .into_iter()
        .map(|(message, tensors, general)| {
            let mut who = tensors[..tensors.len().min(NAMED)].join(", ");
            if tensors.len() > NAMED {
                who.push_str(&format!(" and {} other tensors", tensors.len() - NAMED));
            }
            if general || who.is_empty() {
                message.to_string()
            } else {
                format!("{who}: {message}")
            }
        })
        .collect()
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Numpy-order shape, as `inspect` prints it.
fn shape(dims: &[u64]) -> Vec<u64> {
    dims.iter().rev().copied().collect()
}

fn imatrix_note(role: ImatrixRole) -> Option<&'static str> {
    match role {
        ImatrixRole::None => None,
        ImatrixRole::Used => Some("imatrix"),
        ImatrixRole::Ignored => Some("imatrix unused by type"),
        ImatrixRole::NotFound => Some("no imatrix entry"),
        ImatrixRole::SizeMismatch => Some("imatrix size mismatch"),
    }
}

/// The plan as JSON (the `--dry-run --json` document, and the tensor list
/// of the run report, with what requantizing measured per tensor).
fn plan_json(plan: &QuantPlan, measured: &HashMap<String, RequantStats>) -> Json {
    Json::Array(
        plan.tensors
            .iter()
            .map(|t| {
                let mut j = json!({
                    "name": t.name,
                    "shape": shape(&t.dims),
                    "from": t.from.name(),
                    "to": t.to.name(),
                    "from_bytes": t.from_bytes,
                    "to_bytes": t.to_bytes,
                    "method": t.method.name(),
                    "fallback_from": t.fallback.map(|f| f.wanted.name()),
                    "imatrix": imatrix_note(t.imatrix),
                    "split": t.split,
                    "lossless": t.method.is_lossless(),
                });
                if let Some(s) = measured.get(&t.name) {
                    j["error"] = stats_json(s);
                }
                j
            })
            .collect(),
    )
}

fn bits_per_weight(bytes: u64, elements: u64) -> f64 {
    if elements == 0 {
        0.0
    } else {
        bytes as f64 * 8.0 / elements as f64
    }
}

fn dry_run(args: &QuantizeArgs, r: &Resolved) -> Result<ExitCode> {
    let plan = &r.plan;
    let elements = plan.n_elements();
    if args.json {
        print_json(&json!({
            "input": args.input,
            "type": plan.file_type.name(),
            "file_type": plan.file_type.id(),
            "splits": plan.n_splits,
            "from_bytes": plan.from_bytes(),
            "to_bytes": plan.to_bytes(),
            "bits_per_weight": bits_per_weight(plan.to_bytes(), elements),
            "fallbacks": plan.n_fallback,
            "imatrix_entries": r.imatrix.as_ref().map(ImportanceMatrix::len),
            "problems": plan.problems.iter().map(|p| json!({"tensor": p.tensor, "message": p.message})).collect::<Vec<_>>(),
            "tensors": plan_json(plan, &HashMap::new()),
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let width = plan
        .tensors
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "{} -> {} ({} tensors)",
        args.input.display(),
        plan.file_type,
        plan.tensors.len()
    );
    println!(
        "  {:<width$}  {:<16} {:<6} {:<6} {:>10} {:>10}  note",
        "name", "shape", "from", "to", "bytes", "new bytes"
    );
    for t in &plan.tensors {
        let mut notes = Vec::new();
        if let Some(f) = t.fallback {
            notes.push(format!("{} does not fit rows of {}", f.wanted, t.row_len()));
        }
        match t.method {
            Method::Exact => notes.push("exact: every value kept".into()),
            Method::GridSearch => notes.push("grid search".into()),
            _ => {}
        }
        if let Some(n) = imatrix_note(t.imatrix) {
            notes.push(n.to_string());
        }
        if plan.n_splits > 1 {
            notes.push(format!("split {}", t.split + 1));
        }
        println!(
            "  {:<width$}  {:<16} {:<6} {:<6} {:>10} {:>10}  {}",
            t.name,
            format!("{:?}", shape(&t.dims)),
            t.from.name(),
            t.to.name(),
            t.from_bytes,
            t.to_bytes,
            notes.join(", ")
        );
    }
    println!(
        "size: {} -> {} ({:.2} -> {:.2} bits/weight), {} tensor(s) fell back to another type",
        human_bytes(plan.from_bytes()),
        human_bytes(plan.to_bytes()),
        bits_per_weight(plan.from_bytes(), elements),
        bits_per_weight(plan.to_bytes(), elements),
        plan.n_fallback
    );
    for line in problem_lines(&plan.problems) {
        eprintln!("warning: {line}");
    }
    if plan.requires_imatrix {
        eprintln!(
            "warning: the plan is complete, but writing this mix needs an importance matrix (--imatrix)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_one_line_per_reason() {
        let p = |t: Option<&str>, m: &str| Problem {
            tensor: t.map(str::to_string),
            message: m.to_string(),
        };
        let mut problems: Vec<Problem> = (0..5)
            .map(|i| p(Some(&format!("blk.{i}.attn_q.weight")), "already quantized"))
            .collect();
        problems.push(p(Some("output.weight"), "needs a matrix"));
        problems.push(p(None, "no tensors"));
        assert_eq!(
            problem_lines(&problems),
            [
                "blk.0.attn_q.weight, blk.1.attn_q.weight, blk.2.attn_q.weight and 2 other \
                 tensors: already quantized",
                "output.weight: needs a matrix",
                "no tensors",
            ]
        );
    }
}
