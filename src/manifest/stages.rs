//! The pipeline stages a manifest run drives, as four small traits, and
//! the real implementations behind them.
//!
//! The runner ([`super::runner`]) decides which steps make an artifact
//! ([`super::steps`]); each step is one call of one trait here. A stage
//! writes its output atomically under the final name it is given (temp
//! name, fsync, rename), so a failed step never leaves half an artifact.
//!
//! [`Stages::real`] is the one place the real stages plug in. Tests run the
//! runner with fakes (tests/manifest_run.rs).

use std::path::{Path, PathBuf};

use super::resolve::HubSource;
use super::schema::Dtype;
use crate::formats::gguf::Value;
use crate::formats::ModelFormat;

/// What went wrong in a stage, in a sentence a user can act on (the
/// stage's own error chain, flattened).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageError(pub String);

impl std::fmt::Display for StageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StageError {}

impl StageError {
    /// An error and its causes as one sentence.
    pub fn from_error(e: &(dyn std::error::Error + 'static)) -> StageError {
        let mut msg = e.to_string();
        let mut cause = e.source();
        while let Some(c) = cause {
            let s = c.to_string();
            if !msg.contains(&s) {
                msg.push_str(": ");
                msg.push_str(&s);
            }
            cause = c.source();
        }
        StageError(msg)
    }
}

/// Result of a stage.
pub type StageResult<T> = Result<T, StageError>;

/// Hears how a stage is getting on; the CLI draws it on a terminal.
pub trait StageProgress: Sync {
    /// Work on `what` starts, `total` bytes of it if known.
    fn start(&self, _what: &str, _total: Option<u64>) {}
    /// `bytes` more are done.
    fn advance(&self, _bytes: u64) {}
    /// The current piece of work is done.
    fn finish(&self) {}
}

/// A progress listener that hears nothing.
pub struct NoProgress;
impl StageProgress for NoProgress {}

/// One input file and its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    /// Path relative to the model (folder) or the file name.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// A Hub model brought onto disk.
#[derive(Debug, Clone)]
pub struct FetchedModel {
    /// The commit the revision resolved to.
    pub commit: String,
    /// The model on disk: the snapshot folder, or the one file asked for.
    pub path: PathBuf,
    /// Its format.
    pub format: ModelFormat,
    /// The files fetched, with their hashes.
    pub files: Vec<InputFile>,
}

/// Brings `hf://` models onto disk.
pub trait Fetch: Sync {
    /// Fetches `source` (pinning its revision to a commit).
    fn fetch(&self, source: &HubSource, progress: &dyn StageProgress) -> StageResult<FetchedModel>;
}

/// What a conversion writes.
#[derive(Debug, Clone, PartialEq)]
pub enum ConvertTarget {
    /// A GGUF file whose matrices are `outtype` (convert_hf_to_gguf.py's
    /// `--outtype`: F32, F16, BF16 or Q8_0), the rest F32.
    Gguf {
        /// F32, F16, BF16 or Q8_0.
        outtype: &'static str,
    },
    /// An mlx-lm folder, quantized as mlx_lm.convert does, or plain.
    Mlx {
        /// How its linear layers are quantized; `None` leaves them float.
        quantize: Option<MlxQuant>,
        /// Float type of the unquantized tensors (default: the source's).
        dtype: Option<Dtype>,
    },
    /// A Hugging Face safetensors folder.
    Safetensors {
        /// Float type (default: the source's; f32 for quantized sources).
        dtype: Option<Dtype>,
    },
}

/// MLX quantization of a conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlxQuant {
    /// Every quantizable layer at `bits` (mlx_lm.convert -q).
    Affine {
        /// Bits per weight.
        bits: u8,
        /// Weights per scale/bias pair.
        group_size: u32,
    },
    /// One of mlx-lm's mixed recipes (`--quant-predicate`).
    Recipe {
        /// `mixed_3_6` and the like.
        recipe: &'static str,
        /// Weights per scale/bias pair.
        group_size: u32,
    },
}

/// One conversion.
pub struct ConvertRequest<'a> {
    /// The model read: a GGUF file, an HF or MLX folder.
    pub input: &'a Path,
    /// Its format.
    pub input_format: ModelFormat,
    /// The final path: a file for GGUF, a folder for MLX and safetensors.
    pub output: &'a Path,
    /// What to write.
    pub target: ConvertTarget,
    /// GGUF metadata to set (replacing the conversion's own under the same
    /// key); empty for intermediates.
    pub gguf_metadata: &'a [(String, Value)],
    /// A Jinja chat template to write into a folder's tokenizer_config.json.
    pub chat_template: Option<&'a str>,
    /// Worker threads (0: all cores).
    pub threads: usize,
    /// Progress.
    pub progress: &'a dyn StageProgress,
}

/// Converts between formats.
pub trait Convert: Sync {
    /// Writes `req.output` from `req.input`.
    fn convert(&self, req: &ConvertRequest<'_>) -> StageResult<()>;
}

/// One GGUF quantization.
pub struct QuantizeRequest<'a> {
    /// The model read (a GGUF file, or any format qforge reads).
    pub input: &'a Path,
    /// Its format.
    pub input_format: ModelFormat,
    /// The final GGUF path.
    pub output: &'a Path,
    /// The llama-quantize file type (`Q4_K_M`).
    pub file_type: &'static str,
    /// An importance matrix file.
    pub imatrix: Option<&'a Path>,
    /// Requantize an input that is already quantized.
    pub allow_requantize: bool,
    /// GGUF metadata to set.
    pub gguf_metadata: &'a [(String, Value)],
    /// Worker threads (0: all cores).
    pub threads: usize,
    /// Progress.
    pub progress: &'a dyn StageProgress,
}

/// Quantizes to GGUF file types.
pub trait Quantize: Sync {
    /// Writes `req.output` from `req.input`.
    fn quantize(&self, req: &QuantizeRequest<'_>) -> StageResult<()>;
}

/// One reference generation run.
pub struct VerifyRequest<'a> {
    /// The artifact (GGUF file, MLX or safetensors folder).
    pub artifact: &'a Path,
    /// The model it is compared with.
    pub reference: &'a Path,
    /// The text perplexity is measured on.
    pub text: &'a Path,
    /// Context window.
    pub ctx: u32,
    /// Windows to score (`None`: all).
    pub chunks: Option<u32>,
    /// Worker threads (0: all cores).
    pub threads: usize,
    /// Where the reference's logits are kept for the run's next
    /// verification against the same reference (`VerifyOptions`), when
    /// more than one artifact of the run is verified.
    pub reference_cache: Option<&'a Path>,
    /// Progress.
    pub progress: &'a dyn StageProgress,
}

/// What a verification measured. Fields a run could not measure are `None`
/// (a gate on one of them fails).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Measurements {
    /// Perplexity on the text.
    pub ppl: Option<f64>,
    /// Its standard error.
    pub ppl_err: Option<f64>,
    /// Mean KL divergence from the reference.
    pub kld_mean: Option<f64>,
    /// 99th percentile of the KL divergence.
    pub kld_p99: Option<f64>,
    /// Top-1 agreement with the reference, a fraction.
    pub top1: Option<f64>,
    /// Perplexity over the reference's.
    pub ppl_ratio: Option<f64>,
    /// Prompt processing, tokens/s.
    pub prompt_tok_s: Option<f64>,
    /// Generation, tokens/s.
    pub gen_tok_s: Option<f64>,
    /// Peak resident memory of the run, bytes.
    pub peak_rss: Option<u64>,
    /// A short greedy continuation of a fixed prompt.
    pub sample: Option<String>,
}

/// Runs reference generations.
pub trait Verify: Sync {
    /// Measures `req.artifact` against `req.reference`.
    fn verify(&self, req: &VerifyRequest<'_>) -> StageResult<Measurements>;
}

/// The four stages a run uses.
#[derive(Clone, Copy)]
pub struct Stages<'a> {
    /// Hub downloads.
    pub fetch: &'a dyn Fetch,
    /// Conversions.
    pub convert: &'a dyn Convert,
    /// GGUF quantization.
    pub quantize: &'a dyn Quantize,
    /// Reference generation runs.
    pub verify: &'a dyn Verify,
}

impl Stages<'static> {
    /// The stages of this build of qforge.
    pub fn real() -> Stages<'static> {
        Stages {
            fetch: &real::HubFetch,
            convert: &real::RealConvert,
            quantize: &real::RealQuantize,
            verify: &real::RealVerify,
        }
    }
}

/// The real stages: each adapter maps a request onto its module's library
/// entry point.
pub mod real {
    use std::sync::Arc;

    use super::*;
    use crate::fetch::{self, FetchObserver, FetchOptions, FileFilter, HubConfig};
    use crate::formats::detect;

    /// [`crate::fetch`] into the standard HF cache.
    pub struct HubFetch;

    /// Fetch progress, carried from the fetch's worker threads (whose
    /// observer must be `'static`) to the run's listener.
    enum Heard {
        Planned(u64),
        Bytes(u64),
    }

    struct Bridge(std::sync::Mutex<std::sync::mpsc::Sender<Heard>>);

    impl FetchObserver for Bridge {
        fn planned(&self, files: &[fetch::PlannedFile]) {
            let total = files
                .iter()
                .filter(|f| !f.cached)
                .filter_map(|f| f.size)
                .sum();
            if let Ok(tx) = self.0.lock() {
                let _ = tx.send(Heard::Planned(total));
            }
        }
        fn file_progress(&self, _path: &str, bytes: u64) {
            if let Ok(tx) = self.0.lock() {
                let _ = tx.send(Heard::Bytes(bytes));
            }
        }
    }

    impl Fetch for HubFetch {
        fn fetch(
            &self,
            source: &HubSource,
            progress: &dyn StageProgress,
        ) -> StageResult<FetchedModel> {
            let hub = HubConfig::from_env().map_err(|e| StageError::from_error(&e))?;
            let mut options = FetchOptions::new(hub);
            let filter = FileFilter {
                include: source.file.iter().cloned().collect(),
                exclude: Vec::new(),
            };
            let (tx, rx) = std::sync::mpsc::channel();
            options.observer = Arc::new(Bridge(std::sync::Mutex::new(tx)));
            let snap = std::thread::scope(|s| {
                let listener = s.spawn(move || {
                    let mut started = false;
                    for heard in rx {
                        match heard {
                            Heard::Planned(total) => {
                                started = true;
                                progress.start("fetching", Some(total));
                            }
                            Heard::Bytes(n) => progress.advance(n),
                        }
                    }
                    if started {
                        progress.finish();
                    }
                });
                let r = fetch::fetch(&source.repo.repo, &source.repo.revision, &filter, &options);
                // The last sender goes with the options; the listener ends.
                drop(options);
                let _ = listener.join();
                r
            })
            .map_err(|e| StageError::from_error(&e))?;
            let path = match &source.file {
                Some(f) => snap.dir.join(f),
                None => snap.dir.clone(),
            };
            let path = match (&source.file, single_gguf(&snap)) {
                (None, Some(g)) => snap.dir.join(g),
                _ => path,
            };
            let format = detect(&path).map_err(|e| StageError::from_error(&e))?;
            Ok(FetchedModel {
                commit: snap.commit,
                path,
                format,
                files: snap
                    .files
                    .iter()
                    .map(|f| InputFile {
                        path: f.path.clone(),
                        size: f.size,
                        sha256: f.sha256.clone(),
                    })
                    .collect(),
            })
        }
    }

    /// The one GGUF of a snapshot holding GGUF files and no safetensors.
    fn single_gguf(snap: &fetch::FetchedSnapshot) -> Option<String> {
        let ggufs: Vec<&str> = snap
            .files
            .iter()
            .map(|f| f.path.as_str())
            .filter(|p| p.ends_with(".gguf"))
            .collect();
        let has_st = snap.files.iter().any(|f| f.path.ends_with(".safetensors"));
        (ggufs.len() == 1 && !has_st).then(|| ggufs[0].to_string())
    }

    /// Conversions through [`crate::convert`]: Hugging Face folders, GGUF
    /// files and MLX folders to GGUF (F32/F16/BF16/Q8_0), MLX (plain bits
    /// and group size) and safetensors folders, and a GGUF rewritten as its
    /// own file type with the manifest's metadata.
    pub struct RealConvert;

    impl Convert for RealConvert {
        fn convert(&self, req: &ConvertRequest<'_>) -> StageResult<()> {
            match (&req.target, req.input_format) {
                (ConvertTarget::Gguf { outtype }, ModelFormat::Gguf) => rewrite_gguf(req, outtype),
                _ => convert_view(req),
            }
        }
    }

    /// Hears a converter's progress and passes it on.
    struct Sink<'a>(&'a dyn StageProgress);

    impl crate::convert::ProgressSink for Sink<'_> {
        fn file(&self, label: &str, total_bytes: u64) {
            self.0.start(label, Some(total_bytes));
        }
        fn tensor(&self, _name: &str) {}
        fn advance(&self, bytes: u64) {
            self.0.advance(bytes);
        }
        fn done(&self) {
            self.0.finish();
        }
    }

    /// The chat template of a folder's side files replaced: in
    /// chat_template.jinja when the folder has one, else in
    /// tokenizer_config.json.
    fn set_chat_template(side: &mut Vec<(String, Vec<u8>)>, template: &str) -> StageResult<()> {
        if let Some((_, bytes)) = side.iter_mut().find(|(n, _)| n == "chat_template.jinja") {
            *bytes = template.as_bytes().to_vec();
            return Ok(());
        }
        let mut config = match side.iter().find(|(n, _)| n == "tokenizer_config.json") {
            Some((_, b)) => serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(b)
                .map_err(|e| StageError(format!("tokenizer_config.json: {e}")))?,
            None => serde_json::Map::new(),
        };
        config.insert("chat_template".into(), template.into());
        let mut text = serde_json::to_string_pretty(&config).expect("JSON serializes");
        text.push('\n');
        side.retain(|(n, _)| n != "tokenizer_config.json");
        side.push(("tokenizer_config.json".into(), text.into_bytes()));
        Ok(())
    }

    /// Writes a folder artifact with `write`, which wants a new folder:
    /// into one beside `output`, then swapped in for the old one.
    fn replace_folder(
        output: &Path,
        write: impl FnOnce(&Path) -> StageResult<()>,
    ) -> StageResult<()> {
        let name = output
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let fresh = output.with_file_name(format!(".{name}.qforge-new"));
        let _ = std::fs::remove_dir_all(&fresh);
        write(&fresh)?;
        let io = |e: std::io::Error| StageError(format!("{}: {e}", output.display()));
        if output.exists() {
            std::fs::remove_dir_all(output).map_err(io)?;
        }
        std::fs::rename(&fresh, output).map_err(io)
    }

    fn convert_view(req: &ConvertRequest<'_>) -> StageResult<()> {
        use crate::convert::{
            gguf_metadata, hf_side_files, plan_gguf, plan_safetensors, write_gguf,
            write_safetensors, FloatType, GgufMetadataOptions, GgufOutType, ModelView, Provenance,
            WriteOptions, DEFAULT_MAX_SHARD_BYTES,
        };
        use crate::formats::gguf::GgufModel;
        use crate::formats::hf::HfModel;

        let cerr = |e: crate::convert::ConvertError| StageError::from_error(&e);
        let ferr = |e: crate::formats::FormatError| StageError::from_error(&e);
        let (gguf_model, hf, mlx);
        let view = match req.input_format {
            ModelFormat::Gguf => {
                gguf_model = GgufModel::open(req.input).map_err(ferr)?;
                ModelView::from_gguf(&gguf_model).map_err(cerr)?
            }
            ModelFormat::Mlx => {
                mlx = crate::formats::mlx::MlxModel::open(req.input).map_err(ferr)?;
                ModelView::from_mlx(&mlx).map_err(cerr)?
            }
            _ => {
                hf = HfModel::open(req.input).map_err(ferr)?;
                ModelView::from_hf(&hf).map_err(cerr)?
            }
        };
        let sink = Sink(req.progress);
        let opts = WriteOptions {
            measure: false,
            progress: &sink,
        };
        let float = |d: Dtype| match d {
            Dtype::F32 => FloatType::F32,
            Dtype::F16 => FloatType::F16,
            Dtype::Bf16 => FloatType::BF16,
        };
        match &req.target {
            ConvertTarget::Gguf { outtype } => {
                let outtype = match *outtype {
                    "F32" => GgufOutType::F32,
                    "F16" => GgufOutType::F16,
                    "BF16" => GgufOutType::BF16,
                    "Q8_0" => GgufOutType::Q8_0,
                    other => {
                        return Err(StageError(format!(
                            "converting writes F32, F16, BF16 or Q8_0, not {other}"
                        )))
                    }
                };
                let plan = plan_gguf(&view, outtype).map_err(cerr)?;
                // The sources are hashed while they are converted.
                let digests = crate::hashing::FileDigests::start(view.files.clone());
                let provenance = Provenance {
                    command: "run".into(),
                    sources: digests.placeholders(),
                };
                let (mut md, _notes) = gguf_metadata(
                    &view,
                    &plan,
                    &GgufMetadataOptions {
                        model_name: None,
                        tokenizer_pre: None,
                        provenance: Some(&provenance),
                    },
                )
                .map_err(cerr)?;
                for (k, v) in req.gguf_metadata {
                    md.set(k.clone(), v.clone());
                }
                write_gguf(&view, &plan, &md, Some(digests), req.output, &opts).map_err(cerr)?;
            }
            ConvertTarget::Safetensors { dtype } => {
                let plan = plan_safetensors(&view, dtype.map(float)).map_err(cerr)?;
                let mut side = hf_side_files(&view, &plan).map_err(cerr)?;
                if let Some(t) = req.chat_template {
                    set_chat_template(&mut side, t)?;
                }
                replace_folder(req.output, |fresh| {
                    write_safetensors(&view, &plan, &side, fresh, DEFAULT_MAX_SHARD_BYTES, &opts)
                        .map(drop)
                        .map_err(cerr)
                })?;
            }
            ConvertTarget::Mlx { quantize, dtype } => {
                use crate::convert::{mlx_config, mlx_side_files, plan_mlx, write_mlx, MlxTarget};
                use crate::quant::mlx_recipe::{MlxQuantArgs, MlxRecipe};
                let (quantize, recipe) = match quantize {
                    None => (None, None),
                    Some(MlxQuant::Affine { bits, group_size }) => (
                        Some(crate::formats::mlx::QuantParams {
                            bits: u32::from(*bits),
                            group_size: *group_size,
                        }),
                        None,
                    ),
                    Some(MlxQuant::Recipe { recipe, group_size }) => {
                        let recipe: MlxRecipe = recipe.parse().map_err(
                            |e: crate::quant::mlx_recipe::RecipeError| StageError(e.to_string()),
                        )?;
                        let args = MlxQuantArgs {
                            bits: None,
                            group_size: Some(*group_size),
                            recipe: Some(recipe),
                        };
                        (None, Some(args))
                    }
                };
                let target = MlxTarget {
                    quantize,
                    dtype: dtype.map(float),
                    recipe,
                    method: Default::default(),
                };
                let mut plan = plan_mlx(&view, &target).map_err(cerr)?;
                // When the engine cannot run the source, the plan falls
                // back to mlx_lm.convert's round to nearest.
                let tokens = crate::quant::calibrate::DEFAULT_TOKENS;
                plan.calibrate(&view, req.input, tokens).map_err(cerr)?;
                let config = mlx_config(&view, plan.quantization.as_ref());
                let mut side = mlx_side_files(&view).map_err(cerr)?;
                if let Some(t) = req.chat_template {
                    set_chat_template(&mut side, t)?;
                }
                replace_folder(req.output, |fresh| {
                    write_mlx(&view, &plan, &config, &side, fresh, &opts)
                        .map(drop)
                        .map_err(cerr)
                })?;
            }
        }
        Ok(())
    }

    /// Rewrites a GGUF file (any part of a split set) as one file with the
    /// same tensors, `req.gguf_metadata` set and `qforge.*` provenance.
    fn rewrite_gguf(req: &ConvertRequest<'_>, outtype: &str) -> StageResult<()> {
        use crate::formats::atomic::AtomicFile;
        use crate::formats::gguf::{self, keys, GgufModel, GgufWriter, TensorSpec};
        use crate::quant::ftype::file_type_name;

        let err = |e: crate::formats::FormatError| StageError::from_error(&e);
        let model = GgufModel::open(req.input).map_err(err)?;
        let file_type = model
            .metadata()
            .get_u64(keys::FILE_TYPE)
            .and_then(file_type_name);
        if !file_type.is_some_and(|t| t.eq_ignore_ascii_case(outtype)) {
            return Err(StageError(format!(
                "{} is {}, not {outtype}: changing a GGUF's types is quantizing, not converting",
                req.input.display(),
                file_type.unwrap_or("of an unknown file type")
            )));
        }
        let mut meta = model.metadata().clone();
        for key in [keys::SPLIT_NO, keys::SPLIT_COUNT, keys::SPLIT_TENSORS_COUNT] {
            meta.remove(key);
        }
        for (k, v) in req.gguf_metadata {
            meta.set(k.clone(), v.clone());
        }
        meta.set("qforge.version", Value::String(crate::VERSION.into()));
        meta.set("qforge.command", Value::String("run".into()));
        let specs: Vec<TensorSpec> = model.tensors().map(|(t, _)| TensorSpec::from(t)).collect();
        let total: u64 = specs
            .iter()
            .map(|s| gguf::tensor_size(&s.dims, s.ggml_type).unwrap_or(0))
            .sum();
        req.progress.start("writing", Some(total));
        let mut out = AtomicFile::create(req.output).map_err(err)?;
        let version = model.files()[0].header().version;
        let mut w = GgufWriter::new(&mut out, version, &meta, &specs)
            .map_err(|e| err(e.in_file(req.output)))?;
        for (t, data) in model.tensors() {
            w.write_tensor(&t.name, data)
                .map_err(|e| err(e.in_file(req.output)))?;
            req.progress.advance(t.size);
        }
        w.finish().map_err(|e| err(e.in_file(req.output)))?;
        out.commit().map_err(err)?;
        req.progress.finish();
        Ok(())
    }

    /// `crate::quant` (issue 5).
    pub struct RealQuantize;

    impl Quantize for RealQuantize {
        fn quantize(&self, req: &QuantizeRequest<'_>) -> StageResult<()> {
            crate::cli::quantize::quantize_file(
                req.input,
                req.output,
                req.file_type,
                req.imatrix,
                req.allow_requantize,
                req.gguf_metadata,
                req.threads,
            )
            .map_err(|e| StageError(format!("{e:#}")))
        }
    }

    /// `crate::verify` (issue 6).
    pub struct RealVerify;

    impl Verify for RealVerify {
        fn verify(&self, req: &VerifyRequest<'_>) -> StageResult<Measurements> {
            use crate::verify::{EvalInput, Gates, NoProgress, VerifyOptions};
            let err = |e: anyhow::Error| StageError(format!("{e:#}"));
            let text = std::fs::read_to_string(req.text)
                .map_err(|e| StageError(format!("reading {}: {e}", req.text.display())))?;
            // The options of `qforge verify`'s defaults; the gates are the
            // runner's to judge, so none are passed here.
            let opts = VerifyOptions {
                ctx: req.ctx as usize,
                chunks: req.chunks.map(|c| c as usize),
                threads: req.threads,
                speed: true,
                prompt_tokens: 128,
                gen_tokens: 64,
                speed_reps: 3,
                sample_tokens: 24,
                device: crate::device::DeviceArg::Auto,
                reference_cache: req.reference_cache.map(Path::to_path_buf),
            };
            req.progress.start("verifying", None);
            let report = crate::verify::run(
                req.artifact,
                Some(req.reference),
                &EvalInput::Text(text),
                &opts,
                &Gates::default(),
                &NoProgress,
            )
            .map_err(err)?;
            req.progress.finish();
            let ppl = report.perplexity.as_ref();
            let kl = report.kl.as_ref();
            let speed = report.speed.as_ref();
            Ok(Measurements {
                ppl: ppl.map(|p| p.ppl),
                ppl_err: ppl.map(|p| p.ppl_error),
                kld_mean: kl.map(|k| k.mean_kld),
                kld_p99: kl.map(|k| k.kld_p99),
                top1: kl.map(|k| k.same_top),
                ppl_ratio: kl.map(|k| k.ppl_ratio),
                prompt_tok_s: speed.map(|s| s.prompt_tok_s),
                gen_tok_s: speed.map(|s| s.gen_tok_s),
                peak_rss: report.peak_rss_bytes,
                sample: report.sample.as_ref().map(|s| s.text.clone()),
            })
        }
    }
}
