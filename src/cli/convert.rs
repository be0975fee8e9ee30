//! `qforge convert IN OUT --to FORMAT`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::json;

use super::{parse_size, print_json, FileBars, Progress};
use crate::convert::Encoding;
use crate::convert::{
    self, device_work, gguf_metadata, hf_side_files, mlx_config, mlx_side_files, plan_gguf,
    plan_mlx, plan_safetensors, write_gguf_on, write_mlx, write_safetensors, ErrorStats, FloatType,
    GgufMetadataOptions, GgufOutType, MlxMethod, MlxTarget, ModelView, Provenance, WriteOptions,
    DEFAULT_BITS, DEFAULT_GROUP_SIZE, DEFAULT_MAX_SHARD_BYTES,
};
use crate::device::{Device, DeviceArg, Selection};
use crate::formats::gguf::{self, GgufModel, GgufOutput, GgufWritten, SplitBy, TensorSpec};
use crate::formats::hf::HfModel;
use crate::formats::mlx::{MlxModel, QuantParams};
use crate::formats::{detect, ModelFormat};
use crate::hashing::{sha256_file, FileDigests};
use crate::quant::calibrate;
use crate::quant::imatrix::ImportanceMatrix;
use crate::quant::mlx_recipe::{MlxQuantArgs, MlxRecipe};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum TargetFormat {
    Gguf,
    Mlx,
    Safetensors,
}

/// GGUF tensor types of a conversion (convert_hf_to_gguf.py's `--outtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum OutType {
    /// The source's 16-bit float type (F16 for F32 sources).
    Auto,
    F32,
    F16,
    #[value(name = "bf16")]
    BF16,
    #[value(name = "q8_0")]
    Q8_0,
}

/// `--method` of convert (MLX) and quantize (GGUF).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Method {
    /// Round to nearest, as mlx_lm.convert.
    Rtn,
    /// Searched scales and biases.
    Search,
}

/// Float types of a safetensors output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Dtype {
    F32,
    F16,
    #[value(name = "bf16")]
    BF16,
}

#[derive(Debug, Args)]
pub(crate) struct ConvertArgs {
    /// The model to read: a GGUF file, a Hugging Face model folder, an MLX folder.
    input: PathBuf,
    /// Where to write: a file for GGUF, a new folder for MLX and safetensors.
    output: PathBuf,
    /// Output format (default: from the output name; `.gguf` means GGUF).
    #[arg(long, value_enum)]
    to: Option<TargetFormat>,
    /// GGUF tensor type for matrices (norms and 1-D tensors stay F32), as
    /// convert_hf_to_gguf.py's --outtype: auto, f32, f16, bf16, q8_0.
    #[arg(
        long = "type",
        visible_alias = "outtype",
        value_enum,
        ignore_case = true
    )]
    gguf_type: Option<OutType>,
    /// Float type of a safetensors output (default: the source's float
    /// type; f32 for quantized sources, which holds their values exactly);
    /// of an MLX output's unquantized tensors and scales (default: as
    /// mlx_lm.convert, config.json's torch_dtype, else each tensor's own;
    /// f16 scales for GGUF blocks).
    #[arg(long, value_enum, ignore_case = true)]
    dtype: Option<Dtype>,
    /// MLX output: quantize every matrix to this many bits (2, 3, 4, 5, 6,
    /// 8; default 4 when only --group-size is given). Without --bits and
    /// --group-size, float tensors stay floats and GGUF Q4_0/Q4_1/Q8_0
    /// blocks become MLX groups of 32 without requantizing.
    #[arg(long, value_name = "B")]
    bits: Option<u32>,
    /// MLX output: elements per scale and bias (32, 64, 128; default 64).
    #[arg(long, value_name = "G")]
    group_size: Option<u32>,
    /// MLX output: one of mlx-lm's mixed recipes (mixed_2_6, mixed_3_4,
    /// mixed_3_6, mixed_4_6), as `mlx_lm.convert --quant-predicate`:
    /// sensitive layers (v_proj and down_proj of some layers, lm_head) get
    /// the high bits, the rest the low bits.
    #[arg(long, value_name = "RECIPE")]
    quant_predicate: Option<MlxRecipe>,
    /// MLX output: how quantized groups get their scale and bias. `search`
    /// picks, per group, the stored pair with the least (importance-)
    /// weighted error; `rtn` is mlx_lm.convert's round to nearest, byte
    /// for byte. The folder's tensors, sizes and config.json are the same.
    /// Default: search.
    #[arg(long, value_enum, ignore_case = true)]
    method: Option<Method>,
    /// MLX output with `--method search`: weight each column by this
    /// importance matrix (llama-imatrix's GGUF or .dat file, or one from
    /// `qforge imatrix`).
    #[arg(long, value_name = "FILE")]
    imatrix: Option<PathBuf>,
    /// MLX output with `--method search`: tokens of the short forward pass
    /// over synthetic tokens that finds each matrix's high-activation
    /// columns (0: none, search on the weights alone, which measured worse
    /// than rtn on SmolLM2 at 3 bits); with --imatrix its
    /// estimate is added to the matrix's weights (each scaled to mean 1),
    /// and alone weighs the tensors the matrix has no entry for (the token
    /// embedding and output matrix, which llama-imatrix does not record).
    #[arg(long, value_name = "N", default_value_t = calibrate::DEFAULT_TOKENS)]
    calibration_tokens: usize,
    /// Largest safetensors shard (default 5GB, as save_pretrained).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_shard_size: Option<u64>,
    /// `general.name` of a GGUF output.
    #[arg(long, value_name = "NAME")]
    model_name: Option<String>,
    /// BPE pre-tokenizer name to write when the tokenizer's is not a known one.
    #[arg(long, value_name = "NAME")]
    tokenizer_pre: Option<String>,
    /// Print the plan (every tensor: source, target type, lossless or not) and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Measure and print the max and RMS error of every lossy tensor.
    #[arg(long)]
    report: bool,
    /// Write a split GGUF set with at most this many tensors per file.
    #[arg(long, value_name = "N", conflicts_with = "split_max_size")]
    split_max_tensors: Option<usize>,
    /// Write a split GGUF set with at most this much tensor data per file (e.g. 2G).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    split_max_size: Option<u64>,
    /// Print a JSON report on stdout and no progress.
    #[arg(long)]
    json: bool,
    /// Where quantizing runs: `auto` takes a GPU only where it beats the
    /// CPU (transfers included), `gpu` forces it, `cpu` never uses one.
    /// The bytes are the same on every device.
    #[arg(long, value_enum, ignore_case = true, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    /// Refuse to requantize tensors that are already quantized (set by
    /// `qforge quantize` without --allow-requantize).
    #[arg(skip)]
    refuse_requantize: bool,
}

impl ConvertArgs {
    /// `qforge quantize`'s MLX output: the conversion of `input` to an MLX
    /// folder with these quantization settings.
    pub(crate) fn mlx_quantize(
        input: PathBuf,
        output: PathBuf,
        quant: MlxQuantArgs,
        search: MlxSearchArgs,
        allow_requantize: bool,
        json: bool,
    ) -> ConvertArgs {
        ConvertArgs {
            input,
            output,
            to: Some(TargetFormat::Mlx),
            gguf_type: None,
            dtype: None,
            bits: quant.bits,
            group_size: quant.group_size,
            quant_predicate: quant.recipe,
            method: search.method,
            imatrix: search.imatrix,
            calibration_tokens: search.calibration_tokens,
            max_shard_size: None,
            model_name: None,
            tokenizer_pre: None,
            dry_run: false,
            report: false,
            split_max_tensors: None,
            split_max_size: None,
            json,
            device: DeviceArg::Cpu,
            refuse_requantize: !allow_requantize,
        }
    }
}

/// How `qforge quantize` wants an MLX folder's groups quantized (its
/// `--method`, `--imatrix`, `--calibration-tokens`).
pub(crate) struct MlxSearchArgs {
    pub method: Option<Method>,
    pub imatrix: Option<PathBuf>,
    pub calibration_tokens: usize,
}

/// Resolves `--device` for `work` and prints its one line, if any.
fn select_device(arg: DeviceArg, work: &[crate::device::Work]) -> Result<Device> {
    let Selection { device, note } = Device::select(arg, work)?;
    if let Some(note) = note {
        eprintln!("{note}");
    }
    Ok(device)
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
    if to != TargetFormat::Gguf && args.gguf_type.is_some() {
        bail!("--type applies to GGUF outputs; for safetensors and MLX use --dtype");
    }
    if to == TargetFormat::Gguf && args.dtype.is_some() {
        bail!("--dtype applies to safetensors and MLX outputs; for GGUF use --type");
    }
    if to != TargetFormat::Safetensors && args.max_shard_size.is_some() {
        bail!("--max-shard-size applies to safetensors outputs (MLX folders are cut at 5 GiB, as mlx-lm cuts them)");
    }
    if to != TargetFormat::Mlx
        && (args.bits.is_some() || args.group_size.is_some() || args.quant_predicate.is_some())
    {
        bail!("--bits, --group-size and --quant-predicate apply to MLX outputs");
    }
    if to != TargetFormat::Mlx && (args.imatrix.is_some() || args.method.is_some()) {
        bail!("--method and --imatrix apply to MLX outputs (for GGUF quant types use `qforge quantize`)");
    }
    if args.imatrix.is_some() && args.method == Some(Method::Rtn) {
        bail!("--imatrix steers the search: it has no effect with --method rtn");
    }
    if args.calibration_tokens > 0 && args.calibration_tokens < calibrate::MIN_TOKENS {
        bail!(
            "--calibration-tokens must be 0 (no calibration) or at least {}",
            calibrate::MIN_TOKENS
        );
    }
    let split = args.split_max_tensors.is_some() || args.split_max_size.is_some();
    match (from, to) {
        (ModelFormat::Gguf, TargetFormat::Gguf) => {
            if args.gguf_type.is_some() {
                bail!("changing the tensor types of a GGUF file is requantizing: use `qforge quantize`");
            }
            gguf_to_gguf(&args)
        }
        (ModelFormat::Mlx, TargetFormat::Mlx) => bail!(
            "{} is already an MLX folder: requantize it with `qforge quantize`",
            args.input.display()
        ),
        (from, to) => {
            if split {
                bail!(
                    "--split-max-tensors/--split-max-size rewrite a GGUF file; convert first, \
                     then split the result with `qforge convert OUT.gguf SPLIT.gguf --split-...`"
                );
            }
            convert_view(&args, from, to)
        }
    }
}

fn hash_sources(files: &[PathBuf]) -> Result<Vec<(PathBuf, String)>> {
    files
        .iter()
        .map(|p| {
            let h = sha256_file(p).with_context(|| format!("hashing {}", p.display()))?;
            Ok((p.clone(), h))
        })
        .collect()
}

/// What `--bits`, `--group-size`, `--quant-predicate` and `--dtype` ask of
/// an MLX output.
fn mlx_target(args: &ConvertArgs) -> MlxTarget {
    let quantize = (args.bits.is_some() || args.group_size.is_some()).then(|| QuantParams {
        bits: args.bits.unwrap_or(DEFAULT_BITS),
        group_size: args.group_size.unwrap_or(DEFAULT_GROUP_SIZE),
    });
    let recipe = args.quant_predicate.map(|recipe| MlxQuantArgs {
        bits: args.bits,
        group_size: args.group_size,
        recipe: Some(recipe),
    });
    MlxTarget {
        quantize,
        dtype: args.dtype.map(float_type),
        recipe,
        method: match args.method.unwrap_or(Method::Search) {
            Method::Rtn => MlxMethod::Rtn,
            Method::Search => MlxMethod::Search,
        },
    }
}

/// `qforge quantize`'s MLX output: an MLX folder from any input, MLX
/// folders included (which `qforge convert` sends to `qforge quantize`).
pub(crate) fn quantize_to_mlx(args: &ConvertArgs) -> Result<ExitCode> {
    convert_view(args, detect(&args.input)?, TargetFormat::Mlx)
}

/// Any direction between Hugging Face folders, GGUF and MLX folders
/// through the canonical view.
fn convert_view(args: &ConvertArgs, from: ModelFormat, to: TargetFormat) -> Result<ExitCode> {
    let start = Instant::now();
    let hf;
    let gguf_model;
    let mlx_model;
    let view = match from {
        ModelFormat::Gguf => {
            gguf_model = GgufModel::open(&args.input)?;
            ModelView::from_gguf(&gguf_model)?
        }
        ModelFormat::Mlx => {
            mlx_model = MlxModel::open(&args.input)?;
            ModelView::from_mlx(&mlx_model)?
        }
        _ => {
            if !args.input.is_dir() {
                bail!(
                    "{} is a single safetensors file: give the model folder (config.json is needed)",
                    args.input.display()
                );
            }
            hf = HfModel::open(&args.input)?;
            ModelView::from_hf(&hf)?
        }
    };
    let mut warnings = Vec::new();
    let mlx_plan = match to {
        TargetFormat::Mlx => {
            let mut plan = plan_mlx(&view, &mlx_target(args))?;
            if let Some(path) = &args.imatrix {
                let m = ImportanceMatrix::open(path)?;
                if let Some((name, v)) = m.first_non_finite() {
                    bail!(
                        "{}: the importance weights of '{name}' include {v}",
                        path.display()
                    );
                }
                let missing = plan.attach_importance(&view, &m)?;
                let quantized = plan
                    .plan
                    .tensors
                    .iter()
                    .filter(|t| matches!(t.to, crate::convert::Encoding::MlxAffine { .. }))
                    .count();
                if missing.len() == quantized {
                    bail!(
                        "{} has no entry for any tensor quantized here: it was computed for \
                         another model",
                        path.display()
                    );
                }
                if !missing.is_empty() {
                    let instead = if args.calibration_tokens > 0 {
                        "the calibration pass's estimate"
                    } else {
                        "the default weights"
                    };
                    // llama-imatrix leaves the output matrix out unless
                    // asked; MLX quantizes it (or the tied embedding that
                    // is it) at the same width as the rest, and it matters
                    // (BENCH-mlx-search.md).
                    let tied = view.hparams.bool("tie_word_embeddings") == Some(true);
                    let output = missing
                        .iter()
                        .any(|n| match view.arch.gguf_name(n).as_deref() {
                            Some("output.weight") => true,
                            Some("token_embd.weight") => tied,
                            _ => false,
                        });
                    warnings.push(format!(
                        "the importance matrix has no entry for {} of the quantized tensors \
                         ({}{}): they are searched with {instead}{}",
                        missing.len(),
                        missing[..missing.len().min(3)].join(", "),
                        if missing.len() > 3 { ", ..." } else { "" },
                        if output {
                            " (`qforge imatrix --process-output` records the output matrix too)"
                        } else {
                            ""
                        }
                    ));
                }
            }
            // The calibration pass weighs the matrices the importance
            // matrix has no entry for (all of them without one).
            if !args.dry_run {
                warnings.extend(plan.calibrate(&view, &args.input, args.calibration_tokens)?);
            }
            Some(plan)
        }
        _ => None,
    };
    if let (true, Some(m)) = (args.refuse_requantize, &mlx_plan) {
        let requantized: Vec<&str> = m
            .plan
            .tensors
            .iter()
            .filter(|t| !matches!(t.from, Encoding::Float(_)) && !t.lossless)
            .map(|t| t.name.as_str())
            .collect();
        if let Some(first) = requantized.first() {
            bail!(
                "{}: {} tensors are already quantized and would be requantized ({first}{}), \
                 which loses more than quantizing from 16 or 32 bits: pass --allow-requantize \
                 to do it anyway",
                args.input.display(),
                requantized.len(),
                if requantized.len() > 1 { ", ..." } else { "" }
            );
        }
    }
    let other_plan;
    let plan = match (&mlx_plan, to) {
        (Some(m), _) => &m.plan,
        (None, TargetFormat::Gguf) => {
            other_plan = plan_gguf(&view, out_type(args.gguf_type))?;
            &other_plan
        }
        (None, _) => {
            other_plan = plan_safetensors(&view, args.dtype.map(float_type))?;
            &other_plan
        }
    };

    if args.dry_run {
        if args.json {
            print_json(&json!({
                "input": args.input,
                "output": args.output,
                "architecture": view.arch.name(),
                "dry_run": true,
                "lossless": plan.lossless(),
                "tensors": plan.tensors.iter().map(|t| t.to_json()).collect::<Vec<_>>(),
            }))?;
        } else {
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{} ({}) -> {} ({} tensors, {})",
                args.input.display(),
                view.arch.name(),
                args.output.display(),
                plan.tensors.len(),
                if plan.lossless() { "lossless" } else { "lossy" }
            )?;
            out.write_all(plan.table().as_bytes())?;
        }
        return Ok(ExitCode::SUCCESS);
    }

    let work: Vec<_> = match to {
        TargetFormat::Gguf => plan.tensors.iter().filter_map(device_work).collect(),
        _ => Vec::new(),
    };
    let device = select_device(args.device, &work)?;
    let bars = FileBars::new(args.json);
    let opts = WriteOptions {
        measure: args.report,
        progress: &bars,
    };
    let report = match to {
        TargetFormat::Gguf => {
            // The sources are hashed while they are converted.
            let digests = FileDigests::start(view.files.clone());
            let provenance = Provenance {
                command: "convert".into(),
                sources: digests.placeholders(),
            };
            let (md, notes) = gguf_metadata(
                &view,
                plan,
                &GgufMetadataOptions {
                    model_name: args.model_name.as_deref(),
                    tokenizer_pre: args.tokenizer_pre.as_deref(),
                    provenance: Some(&provenance),
                },
            )?;
            warnings.extend(notes.warnings);
            write_gguf_on(
                &view,
                plan,
                &md,
                Some(digests),
                &args.output,
                &opts,
                &device,
            )?
        }
        TargetFormat::Mlx => {
            let m = mlx_plan.as_ref().expect("planned above");
            let config = mlx_config(&view, m.quantization.as_ref());
            let side = mlx_side_files(&view)?;
            write_mlx(&view, m, &config, &side, &args.output, &opts)?
        }
        TargetFormat::Safetensors => {
            let side = hf_side_files(&view, plan)?;
            write_safetensors(
                &view,
                plan,
                &side,
                &args.output,
                args.max_shard_size.unwrap_or(DEFAULT_MAX_SHARD_BYTES),
                &opts,
            )?
        }
    };

    if args.json {
        let errors: std::collections::HashMap<&str, ErrorStats> = report
            .tensors
            .iter()
            .filter_map(|t| t.error.map(|e| (t.name.as_str(), e)))
            .collect();
        let tensors: Vec<_> = plan
            .tensors
            .iter()
            .map(|t| {
                let mut j = t.to_json();
                if let Some(e) = errors.get(t.name.as_str()) {
                    j["error"] = json!({"max_abs": e.max_abs, "rms": e.rms});
                }
                j
            })
            .collect();
        print_json(&json!({
            "input": args.input,
            "from": from.name(),
            "to": target_name(to),
            "architecture": view.arch.name(),
            "files": report.files_json(),
            "lossless": plan.lossless(),
            "tensors": tensors,
            "warnings": warnings,
            "method": mlx_plan.as_ref().map(|p| p.method.name()),
            "importance_tensors": mlx_plan.as_ref().map(|p| p.importance.len()),
            "device": device.name(),
            "seconds": start.elapsed().as_secs_f64(),
        }))?;
    } else {
        let lossy = plan.tensors.iter().filter(|t| !t.lossless).count();
        if lossy > 0 && !args.report {
            warnings.push(format!(
                "{lossy} of {} tensors are not converted losslessly; \
                 pass --report for the max and RMS error of each",
                plan.tensors.len()
            ));
        }
        for w in &warnings {
            eprintln!("warning: {w}");
        }
        if args.report {
            print_error_table(&report);
        }
        for f in &report.files {
            eprintln!("wrote {} ({} bytes)", f.path.display(), f.bytes);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_error_table(report: &convert::WriteReport) {
    let lossy: Vec<_> = report
        .tensors
        .iter()
        .filter_map(|t| t.error.map(|e| (t.name.as_str(), e)))
        .collect();
    if lossy.is_empty() {
        eprintln!("every tensor was converted losslessly");
        return;
    }
    let width = lossy.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    eprintln!(
        "{:<width$}  {:>12}  {:>12}",
        "lossy tensor", "max abs err", "rms err"
    );
    for (name, e) in lossy {
        eprintln!("{name:<width$}  {:>12.4e}  {:>12.4e}", e.max_abs, e.rms);
    }
}

fn target_name(t: TargetFormat) -> &'static str {
    match t {
        TargetFormat::Gguf => "gguf",
        TargetFormat::Mlx => "mlx",
        TargetFormat::Safetensors => "safetensors",
    }
}

fn out_type(t: Option<OutType>) -> GgufOutType {
    match t {
        None | Some(OutType::Auto) => GgufOutType::Auto,
        Some(OutType::F32) => GgufOutType::F32,
        Some(OutType::F16) => GgufOutType::F16,
        Some(OutType::BF16) => GgufOutType::BF16,
        Some(OutType::Q8_0) => GgufOutType::Q8_0,
    }
}

fn float_type(d: Dtype) -> FloatType {
    match d {
        Dtype::F32 => FloatType::F32,
        Dtype::F16 => FloatType::F16,
        Dtype::BF16 => FloatType::BF16,
    }
}

fn gguf_to_gguf(args: &ConvertArgs) -> Result<ExitCode> {
    let start = Instant::now();
    // Tensors are copied whole: nothing runs on a device, but `--device
    // gpu` still fails where no GPU exists.
    select_device(args.device, &[])?;
    let model = GgufModel::open(&args.input)?;
    let files: Vec<PathBuf> = model
        .files()
        .iter()
        .map(|f| f.path().to_path_buf())
        .collect();

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
        Provenance {
            command: "convert".into(),
            sources: hash_sources(&files)?,
        }
        .write(&mut meta);
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
        // The sources are hashed while they are copied.
        let digests = FileDigests::start(files);
        Provenance {
            command: "convert".into(),
            sources: digests.placeholders(),
        }
        .write(&mut meta);
        let specs: Vec<TensorSpec> = model.tensors().map(|(t, _)| TensorSpec::from(t)).collect();
        let total: u64 = specs
            .iter()
            .map(|s| gguf::tensor_size(&s.dims, s.ggml_type).unwrap_or(0))
            .sum();
        let progress = Progress::bytes(total, "writing", args.json);
        let version = model.files()[0].header().version;
        // Only the JSON report names the output's digest.
        let mut w = GgufOutput::create(
            &args.output,
            version,
            &meta,
            &specs,
            Some(digests),
            args.json,
        )?;
        for (t, data) in model.tensors() {
            progress.set_message(&t.name);
            w.write_tensor(&t.name, data)?;
            progress.inc(t.size);
        }
        let GgufWritten { bytes, sha256 } = w.finish()?;
        progress.finish();
        report_files.push(json!({"path": args.output, "bytes": bytes, "sha256": sha256}));
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
