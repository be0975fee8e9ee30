//! `qforge run`: every selected artifact through its steps, content
//! addressed against the lockfile, then the report and the lockfile.
//!
//! An artifact rebuilds when its settings hash, an input's hash or the
//! qforge version differ from its lockfile entry, or a file of it is
//! missing; otherwise it is up to date and nothing runs for it. Its
//! verification reruns when the artifact's hash, the text, the reference
//! or the verification settings changed; gates are always re-evaluated
//! (editing a gate re-runs nothing). One artifact failing does not stop the
//! others.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value as Json};

use super::lock::{
    hash_files, json_sha256, list_files, listing_sha256, slash_path, write_atomic, ArtifactLock,
    FileLock, Lockfile, SourceLock, LOCK_VERSION,
};
use super::modelfile::ModelMetadata;
use super::report::{evaluate, ArtifactReport, Report, Status, VerifyRecord};
use super::resolve::{ModelRef, ResolvedArtifact, ResolvedManifest};
use super::schema::{output_names, ArtifactFormat, Quantization};
use super::stages::{
    ConvertRequest, FetchedModel, Measurements, QuantizeRequest, StageError, StageProgress, Stages,
    VerifyRequest,
};
use super::steps::{self, Step, StepInput, StepOutput};
use super::suggest::did_you_mean;
use crate::formats::gguf::{keys, GgufModel};
use crate::formats::ModelFormat;
use crate::hashing::sha256_file;
use crate::quant::ftype::file_type_name;

/// The run's scratch folder inside the output folder (intermediate files;
/// removed when the run ends).
pub const WORK_DIR: &str = ".qforge-work";
/// Held (flock) while a run writes the output folder.
pub const RUN_LOCK: &str = ".qforge-run.lock";

/// A failure that stops the whole run before or after the artifacts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RunError(pub String);

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Only these artifacts (`--only`); empty: all.
    pub only: Vec<String>,
    /// Rebuild and re-verify even what is up to date.
    pub force: bool,
    /// Worker threads for the stages (0: all cores).
    pub threads: usize,
}

/// What a run is doing, for progress lines.
#[derive(Debug)]
pub enum RunEvent<'a> {
    /// The source is being fetched or hashed.
    Source(&'a str),
    /// Artifact `index` of `total` starts.
    Artifact {
        /// Its name.
        name: &'a str,
        /// From 1.
        index: usize,
        /// Artifacts in this run.
        total: usize,
    },
    /// The artifact is up to date: nothing to build.
    UpToDate(&'a str),
    /// A step starts.
    Step(&'a str, &'a str),
    /// Verification starts.
    Verifying(&'a str),
    /// The artifact's measurements still stand: not verified again.
    VerifyCached(&'a str),
    /// The artifact is done.
    Done(&'a ArtifactReport),
}

/// Hears a run's events.
pub trait RunObserver: Sync {
    /// One event.
    fn event(&self, event: RunEvent<'_>);
}

/// An observer that hears nothing.
pub struct Quiet;
impl RunObserver for Quiet {
    fn event(&self, _: RunEvent<'_>) {}
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// The report written (all artifacts with a result, this run's and
    /// earlier ones').
    pub report: Report,
    /// The lockfile written.
    pub lock: Lockfile,
    /// The artifacts this run was asked for.
    pub selected: Vec<String>,
    /// Lockfile entries dropped because the manifest no longer has them
    /// (their files stay on disk).
    pub orphans: Vec<String>,
    /// Wall time.
    pub seconds: f64,
}

impl RunOutcome {
    /// This run's artifacts' rows.
    pub fn rows(&self) -> impl Iterator<Item = &ArtifactReport> {
        self.report
            .artifacts
            .iter()
            .filter(|a| self.selected.contains(&a.name))
    }

    /// Every artifact of this run built (or was up to date) and passed.
    pub fn pass(&self) -> bool {
        self.rows().all(|a| a.pass)
    }

    /// Nothing was built or verified.
    pub fn nothing_rebuilt(&self) -> bool {
        self.rows().all(|a| a.status == Status::UpToDate)
    }
}

/// The selected artifacts, or an error naming a wrong `--only`.
pub fn select<'m>(
    m: &'m ResolvedManifest,
    only: &[String],
) -> Result<Vec<&'m ResolvedArtifact>, RunError> {
    if only.is_empty() {
        return Ok(m.artifacts.iter().collect());
    }
    let names: Vec<&str> = m.artifacts.iter().map(|a| a.spec.name.as_str()).collect();
    for o in only {
        if !names.contains(&o.as_str()) {
            let hint = match did_you_mean(o, &names) {
                Some(s) => format!(" (did you mean `{s}`?)"),
                None => String::new(),
            };
            return Err(RunError(format!(
                "{} has no artifact named `{o}`{hint}; its artifacts are: {}",
                m.path.display(),
                names.join(", ")
            )));
        }
    }
    Ok(m.artifacts
        .iter()
        .filter(|a| only.contains(&a.spec.name))
        .collect())
}

/// The artifact's settings as hashed: everything the manifest says about
/// how it is made.
pub fn settings(m: &ResolvedManifest, a: &ResolvedArtifact) -> Json {
    let meta = ModelMetadata::from_manifest(&m.manifest);
    let quantization = match &a.spec.quantization {
        Quantization::None => Json::Null,
        Quantization::Gguf {
            file_type,
            imatrix,
            allow_requantize,
        } => json!({
            "type": file_type,
            "imatrix": imatrix.is_some(),
            "allow_requantize": allow_requantize,
        }),
        Quantization::Mlx { bits, group_size } => json!({"bits": bits, "group_size": group_size}),
        Quantization::MlxRecipe { recipe, group_size } => {
            json!({"recipe": recipe, "group_size": group_size})
        }
    };
    let metadata = match a.spec.format {
        ArtifactFormat::Gguf => meta.to_json(),
        _ => json!({"chat_template": meta.chat_template}),
    };
    json!({
        "format": a.spec.format.name(),
        "quantization": quantization,
        "dtype": a.spec.dtype.map(|d| d.name()),
        "metadata": metadata,
    })
}

/// A short label of an artifact's quantization for tables.
pub fn quantization_label(a: &ResolvedArtifact) -> String {
    match &a.spec.quantization {
        Quantization::None => a.spec.dtype.map_or("float", |d| d.name()).to_string(),
        Quantization::Gguf { file_type, .. } => file_type.to_string(),
        Quantization::Mlx { bits, group_size } => format!("{bits}-bit g{group_size}"),
        Quantization::MlxRecipe { recipe, group_size } => format!("{recipe} g{group_size}"),
    }
}

/// The artifact's main path in the output folder.
pub fn artifact_path(output: &Path, a: &ResolvedArtifact) -> PathBuf {
    output.join(&output_names(&a.spec.name, a.spec.format)[0])
}

/// The source on disk, hashed.
pub struct Source {
    /// The model file or folder.
    pub path: PathBuf,
    /// Its format.
    pub format: ModelFormat,
    /// `general.file_type` of a GGUF source, by name.
    pub file_type: Option<&'static str>,
    /// Its lockfile entry.
    pub lock: SourceLock,
}

/// Hashes the files of a local model: a GGUF file (all parts of a split
/// set), or the files of a folder conversion reads.
fn local_model_files(path: &Path, format: ModelFormat) -> Result<Vec<FileLock>, String> {
    let io = |e: std::io::Error| format!("{}: {e}", path.display());
    if format == ModelFormat::Gguf {
        let model = GgufModel::open(path).map_err(|e| e.to_string())?;
        let files: Vec<PathBuf> = model
            .files()
            .iter()
            .map(|f| f.path().to_path_buf())
            .collect();
        let base = path.parent().unwrap_or(Path::new("")).to_path_buf();
        let rels: Vec<PathBuf> = files
            .iter()
            .map(|f| f.strip_prefix(&base).unwrap_or(f).to_path_buf())
            .collect();
        return hash_files(&base, &rels).map_err(io);
    }
    let all = list_files(path, path).map_err(io)?;
    let names: Vec<String> = all.iter().map(|p| slash_path(p)).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let chosen: Vec<PathBuf> = crate::fetch::filter::default_selection(&refs)
        .into_iter()
        .map(PathBuf::from)
        .collect();
    hash_files(path, &chosen).map_err(io)
}

fn gguf_file_type(path: &Path) -> Option<&'static str> {
    let model = GgufModel::open(path).ok()?;
    file_type_name(model.metadata().get_u64(keys::FILE_TYPE)?)
}

fn fetched_lock(from: &str, f: &FetchedModel) -> SourceLock {
    let files: Vec<FileLock> = f.files.iter().map(FileLock::from).collect();
    SourceLock {
        from: from.to_string(),
        commit: Some(f.commit.clone()),
        sha256: listing_sha256(&files),
        files,
        format: Some(f.format.name().to_string()),
        file_type: None,
    }
}

/// Brings the source onto disk (fetching an `hf://` one) and hashes it.
pub fn prepare_source(
    m: &ResolvedManifest,
    stages: Stages<'_>,
    progress: &dyn StageProgress,
) -> Result<Source, RunError> {
    let from = &m.manifest.from.value;
    let fail = |e: String| RunError(format!("the source {from}: {e}"));
    let (path, format, mut lock) = match &m.source {
        ModelRef::Hub(h) => {
            let f = stages.fetch.fetch(h, progress).map_err(|e| fail(e.0))?;
            (f.path.clone(), f.format, fetched_lock(from, &f))
        }
        ModelRef::Local { path, format } => {
            let files = local_model_files(path, *format).map_err(fail)?;
            let lock = SourceLock {
                from: from.clone(),
                commit: None,
                sha256: listing_sha256(&files),
                files,
                format: Some(format.name().to_string()),
                file_type: None,
            };
            (path.clone(), *format, lock)
        }
    };
    let file_type = (format == ModelFormat::Gguf)
        .then(|| gguf_file_type(&path))
        .flatten();
    lock.file_type = file_type.map(str::to_string);
    Ok(Source {
        path,
        format,
        file_type,
        lock,
    })
}

/// Hashes of the run's other inputs (imatrix files, texts), each file
/// hashed once.
#[derive(Default)]
struct InputHashes(HashMap<PathBuf, String>);

impl InputHashes {
    fn get(&mut self, p: &Path) -> Result<String, String> {
        if let Some(h) = self.0.get(p) {
            return Ok(h.clone());
        }
        let h = sha256_file(p).map_err(|e| format!("{}: {e}", p.display()))?;
        self.0.insert(p.to_path_buf(), h.clone());
        Ok(h)
    }
}

/// Models fetched or hashed for use as references, by their display name.
#[derive(Default)]
struct References(HashMap<String, (PathBuf, String)>);

/// Holds an exclusive lock on the output folder while a run writes it.
struct FolderLock {
    _file: fs::File,
}

impl FolderLock {
    fn take(output: &Path) -> Result<FolderLock, RunError> {
        let path = output.join(RUN_LOCK);
        let file = fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| RunError(format!("cannot open {}: {e}", path.display())))?;
        #[cfg(unix)]
        {
            use rustix::fs::{flock, FlockOperation};
            if flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
                return Err(RunError(format!(
                    "another qforge run is writing {} (it holds {RUN_LOCK}); wait for it to end",
                    output.display()
                )));
            }
        }
        Ok(FolderLock { _file: file })
    }
}

/// The lockfile entry's files are all on disk at their recorded sizes.
fn outputs_present(output: &Path, entry: &ArtifactLock) -> bool {
    !entry.outputs.is_empty()
        && entry.outputs.iter().all(|f| {
            fs::metadata(output.join(&f.path)).is_ok_and(|md| md.is_file() && md.len() == f.size)
        })
}

struct Runner<'a> {
    m: &'a ResolvedManifest,
    stages: Stages<'a>,
    observer: &'a dyn RunObserver,
    progress: &'a dyn StageProgress,
    opts: &'a RunOptions,
    source: Source,
    work: PathBuf,
    hashes: InputHashes,
    references: References,
    /// Where verifications keep reference logits for each other, when more
    /// than one artifact is verified.
    reference_cache: Option<PathBuf>,
    old_lock: Option<Lockfile>,
    old_report: Option<Report>,
}

impl Runner<'_> {
    fn path_of(&self, i: &StepInput) -> PathBuf {
        match i {
            StepInput::Source => self.source.path.clone(),
            StepInput::Work(n) => self.work.join(n),
        }
    }

    fn format_of(&self, i: &StepInput) -> ModelFormat {
        match i {
            StepInput::Source => self.source.format,
            StepInput::Work(_) => ModelFormat::Gguf,
        }
    }

    /// Runs `steps`, skipping intermediate outputs an earlier artifact of
    /// this run already made.
    fn build(&self, a: &ResolvedArtifact, steps: &[Step], final_path: &Path) -> Result<(), String> {
        let meta = ModelMetadata::from_manifest(&self.m.manifest);
        let gguf_meta = meta.gguf_entries();
        for step in steps {
            let (out_path, is_final) = match step.output() {
                StepOutput::Artifact => (final_path.to_path_buf(), true),
                StepOutput::Work(n) => (self.work.join(n), false),
            };
            if !is_final && out_path.exists() {
                continue;
            }
            self.observer
                .event(RunEvent::Step(&a.spec.name, &step.describe()));
            let metadata: &[_] = if is_final && a.spec.format == ArtifactFormat::Gguf {
                &gguf_meta
            } else {
                &[]
            };
            let result = match step {
                Step::Convert { input, target, .. } => {
                    self.stages.convert.convert(&ConvertRequest {
                        input: &self.path_of(input),
                        input_format: self.format_of(input),
                        output: &out_path,
                        target: target.clone(),
                        gguf_metadata: metadata,
                        chat_template: if is_final {
                            meta.chat_template.as_deref()
                        } else {
                            None
                        },
                        threads: self.opts.threads,
                        progress: self.progress,
                    })
                }
                Step::Quantize {
                    input, file_type, ..
                } => {
                    let (imatrix, allow_requantize) = match &a.spec.quantization {
                        Quantization::Gguf {
                            allow_requantize, ..
                        } => (a.imatrix.as_deref(), *allow_requantize),
                        _ => (None, false),
                    };
                    self.stages.quantize.quantize(&QuantizeRequest {
                        input: &self.path_of(input),
                        input_format: self.format_of(input),
                        output: &out_path,
                        file_type,
                        imatrix,
                        allow_requantize,
                        gguf_metadata: metadata,
                        threads: self.opts.threads,
                        progress: self.progress,
                    })
                }
            };
            result.map_err(|StageError(e)| format!("{}: {e}", step.describe()))?;
            if !out_path.exists() {
                return Err(format!(
                    "{}: the stage reported success but wrote no {}",
                    step.describe(),
                    out_path.display()
                ));
            }
        }
        Ok(())
    }

    /// Writes the Modelfile of a GGUF artifact.
    fn modelfile(&self, a: &ResolvedArtifact) -> Result<(), String> {
        let names = output_names(&a.spec.name, a.spec.format);
        let meta = ModelMetadata::from_manifest(&self.m.manifest);
        let manifest_name = self
            .m
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let comment = format!(
            "Ollama Modelfile for {}, written by qforge {} from {manifest_name}.\n\
             ollama create {} -f {}",
            names[0],
            crate::VERSION,
            a.spec.name,
            names[1]
        );
        let path = self.m.output.join(&names[1]);
        write_atomic(&path, meta.modelfile(&names[0], &comment).as_bytes())
            .map_err(|e| format!("writing {}: {e}", path.display()))
    }

    /// Hashes the artifact's files into its lockfile entry.
    fn lock_entry(
        &self,
        a: &ResolvedArtifact,
        settings: Json,
        settings_sha256: String,
        inputs: BTreeMap<String, String>,
    ) -> Result<ArtifactLock, String> {
        let output = &self.m.output;
        let mut rels = Vec::new();
        for name in output_names(&a.spec.name, a.spec.format) {
            rels.extend(
                list_files(&output.join(&name), output)
                    .map_err(|e| format!("listing {name}: {e}"))?,
            );
        }
        rels.sort();
        let outputs = hash_files(output, &rels).map_err(|e| format!("hashing outputs: {e}"))?;
        let sha256 = match a.spec.format {
            ArtifactFormat::Gguf => outputs
                .iter()
                .find(|f| f.path.ends_with(".gguf"))
                .map(|f| f.sha256.clone())
                .ok_or("the GGUF file is missing")?,
            _ => listing_sha256(&outputs),
        };
        Ok(ArtifactLock {
            format: a.spec.format.name().to_string(),
            settings,
            settings_sha256,
            inputs,
            verify_inputs: BTreeMap::new(),
            outputs,
            sha256,
        })
    }

    fn reference(&mut self, r: &Option<ModelRef>) -> Result<(PathBuf, String), String> {
        let Some(r) = r else {
            return Ok((self.source.path.clone(), self.source.lock.sha256.clone()));
        };
        let key = r.to_string();
        if let Some(hit) = self.references.0.get(&key) {
            return Ok(hit.clone());
        }
        let hit = match r {
            ModelRef::Hub(h) => {
                let f = self
                    .stages
                    .fetch
                    .fetch(h, self.progress)
                    .map_err(|e| format!("fetching the reference {h}: {e}"))?;
                let lock = fetched_lock(&key, &f);
                (f.path, lock.sha256)
            }
            ModelRef::Local { path, format } => {
                let files = local_model_files(path, *format)?;
                (path.clone(), listing_sha256(&files))
            }
        };
        self.references.0.insert(key, hit.clone());
        Ok(hit)
    }

    fn artifact(&mut self, a: &ResolvedArtifact) -> (ArtifactReport, Option<ArtifactLock>) {
        let name = &a.spec.name;
        let output = self.m.output.clone();
        let mut row = ArtifactReport {
            name: name.clone(),
            format: a.spec.format.name().to_string(),
            quantization: quantization_label(a),
            status: Status::Built,
            path: Some(output_names(name, a.spec.format)[0].clone()),
            size: None,
            bits_per_weight: None,
            sha256: None,
            verify: None,
            gates: Vec::new(),
            pass: false,
            error: None,
        };
        let old_entry = self
            .old_lock
            .as_ref()
            .and_then(|l| l.artifacts.get(name))
            .cloned();
        let fail = |mut row: ArtifactReport, e: String| {
            row.status = Status::Failed;
            row.error = Some(e);
            (row, old_entry.clone())
        };

        let settings = settings(self.m, a);
        let settings_sha256 = json_sha256(&settings);
        let mut inputs = BTreeMap::from([("source".to_string(), self.source.lock.sha256.clone())]);
        if let Some(p) = &a.imatrix {
            match self.hashes.get(p) {
                Ok(h) => {
                    inputs.insert("imatrix".into(), h);
                }
                Err(e) => return fail(row, format!("hashing the importance matrix: {e}")),
            }
        }
        let same_version = self
            .old_lock
            .as_ref()
            .is_some_and(|l| l.qforge_version == crate::VERSION && l.lock_version == LOCK_VERSION);
        let up_to_date = !self.opts.force
            && same_version
            && old_entry.as_ref().is_some_and(|e| {
                e.settings_sha256 == settings_sha256
                    && e.inputs == inputs
                    && outputs_present(&output, e)
            });
        let final_path = artifact_path(&output, a);
        let mut entry = if up_to_date {
            row.status = Status::UpToDate;
            self.observer.event(RunEvent::UpToDate(name));
            old_entry.clone().expect("up to date means an entry")
        } else {
            let steps = steps::plan(self.source.format, self.source.file_type, &a.spec);
            if let Err(e) = self.build(a, &steps, &final_path) {
                return fail(row, e);
            }
            if a.spec.format == ArtifactFormat::Gguf {
                if let Err(e) = self.modelfile(a) {
                    return fail(row, e);
                }
            }
            match self.lock_entry(a, settings, settings_sha256, inputs) {
                Ok(e) => e,
                Err(e) => return fail(row, e),
            }
        };
        row.size = Some(entry.outputs.iter().map(|f| f.size).sum());
        row.sha256 = Some(entry.sha256.clone());
        row.bits_per_weight = super::measure::bits_per_weight(&final_path).ok();

        let Some(v) = &a.verify else {
            entry.verify_inputs.clear();
            row.pass = true;
            return (row, Some(entry));
        };
        let (ref_path, ref_sha) = match self.reference(&v.reference) {
            Ok(r) => r,
            Err(e) => return (failed(row, format!("verify: {e}")), Some(entry)),
        };
        let text_sha = match self.hashes.get(&v.text) {
            Ok(h) => h,
            Err(e) => {
                return (
                    failed(row, format!("verify: hashing the text: {e}")),
                    Some(entry),
                )
            }
        };
        entry.verify_inputs = BTreeMap::from([
            ("reference".to_string(), ref_sha.clone()),
            ("text".to_string(), text_sha.clone()),
        ]);
        let key = json_sha256(&json!({
            "qforge_version": crate::VERSION,
            "artifact": entry.sha256,
            "reference": ref_sha,
            "text": text_sha,
            "ctx": v.ctx,
            "chunks": v.chunks,
        }));
        let cached = (!self.opts.force)
            .then(|| {
                let old = self.old_report.as_ref()?.artifact(name)?.verify.as_ref()?;
                (old.key == key).then(|| old.measurements.clone())
            })
            .flatten();
        let measurements: Measurements = match cached {
            Some(m) => {
                self.observer.event(RunEvent::VerifyCached(name));
                m
            }
            None => {
                self.observer.event(RunEvent::Verifying(name));
                let r = self.stages.verify.verify(&VerifyRequest {
                    artifact: &final_path,
                    reference: &ref_path,
                    text: &v.text,
                    ctx: v.ctx,
                    chunks: v.chunks,
                    threads: self.opts.threads,
                    reference_cache: self.reference_cache.as_deref(),
                    progress: self.progress,
                });
                match r {
                    Ok(m) => {
                        if row.status == Status::UpToDate {
                            // Measured again on this run: say so.
                            row.status = Status::Built;
                        }
                        m
                    }
                    Err(StageError(e)) => {
                        return (failed(row, format!("verify: {e}")), Some(entry));
                    }
                }
            }
        };
        row.gates = evaluate(&v.gates, &measurements);
        row.pass = row.gates.iter().all(|g| g.pass);
        row.verify = Some(VerifyRecord {
            key,
            reference: v
                .reference
                .as_ref()
                .map_or("source".to_string(), ToString::to_string),
            text: v.text.display().to_string(),
            ctx: v.ctx,
            chunks: v.chunks,
            measurements,
        });
        (row, Some(entry))
    }
}

fn failed(mut row: ArtifactReport, e: String) -> ArtifactReport {
    row.status = Status::Failed;
    row.pass = false;
    row.error = Some(e);
    row
}

/// The report's title: the manifest's `name`, or its file stem.
fn title(m: &ResolvedManifest) -> String {
    m.manifest.name.clone().unwrap_or_else(|| {
        m.path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "qforge".into())
    })
}

fn manifest_file_name(m: &ResolvedManifest) -> String {
    m.path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Runs the manifest: builds, verifies and reports every selected
/// artifact.
pub fn run(
    m: &ResolvedManifest,
    opts: &RunOptions,
    stages: Stages<'_>,
    observer: &dyn RunObserver,
    progress: &dyn StageProgress,
) -> Result<RunOutcome, RunError> {
    let start = Instant::now();
    let selected = select(m, &opts.only)?;
    let output = &m.output;
    fs::create_dir_all(output)
        .map_err(|e| RunError(format!("cannot create {}: {e}", output.display())))?;
    let _guard = FolderLock::take(output)?;
    let old_lock = match Lockfile::read(output) {
        Ok(l) => l,
        Err(_) if opts.force => None,
        Err(e) => return Err(RunError(e)),
    };
    let old_report = Report::read(output);

    observer.event(RunEvent::Source(&m.manifest.from.value));
    let source = prepare_source(m, stages, progress)?;
    let work = output.join(WORK_DIR);
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)
        .map_err(|e| RunError(format!("cannot create {}: {e}", work.display())))?;

    let mut runner = Runner {
        m,
        stages,
        observer,
        progress,
        opts,
        source,
        work: work.clone(),
        hashes: InputHashes::default(),
        references: References::default(),
        // Reference logits are worth keeping when a second artifact may
        // read them back (the folder goes with the work folder).
        reference_cache: (selected.iter().filter(|a| a.verify.is_some()).count() > 1)
            .then(|| work.join("reference-logits")),
        old_lock,
        old_report,
    };
    let mut rows: HashMap<String, ArtifactReport> = HashMap::new();
    let mut entries: BTreeMap<String, ArtifactLock> = BTreeMap::new();
    for (i, a) in selected.iter().enumerate() {
        observer.event(RunEvent::Artifact {
            name: &a.spec.name,
            index: i + 1,
            total: selected.len(),
        });
        let (row, entry) = runner.artifact(a);
        observer.event(RunEvent::Done(&row));
        if let Some(e) = entry {
            entries.insert(a.spec.name.clone(), e);
        }
        rows.insert(a.spec.name.clone(), row);
    }
    let _ = fs::remove_dir_all(&work);

    // Artifacts outside this run keep their entries and rows.
    let selected_names: Vec<String> = selected.iter().map(|a| a.spec.name.clone()).collect();
    let mut orphans = Vec::new();
    if let Some(old) = &runner.old_lock {
        for (name, e) in &old.artifacts {
            if m.artifact(name).is_none() {
                orphans.push(name.clone());
            } else if !selected_names.contains(name) {
                entries.insert(name.clone(), e.clone());
            }
        }
    }
    let mut report_rows = Vec::new();
    for a in &m.artifacts {
        let name = &a.spec.name;
        if let Some(r) = rows.remove(name) {
            report_rows.push(r);
        } else if let Some(r) = runner
            .old_report
            .as_ref()
            .and_then(|rep| rep.artifact(name))
        {
            report_rows.push(r.clone());
        }
    }
    let lock = Lockfile {
        lock_version: LOCK_VERSION,
        qforge_version: crate::VERSION.to_string(),
        manifest: manifest_file_name(m),
        source: runner.source.lock.clone(),
        artifacts: entries,
    };
    let report = Report {
        qforge_version: crate::VERSION.to_string(),
        manifest: manifest_file_name(m),
        title: title(m),
        source: m.manifest.from.value.clone(),
        commit: runner.source.lock.commit.clone(),
        pass: report_rows.iter().all(|r| r.pass),
        artifacts: report_rows,
    };
    lock.write(output)
        .map_err(|e| RunError(format!("writing the lockfile: {e}")))?;
    report
        .write(output)
        .map_err(|e| RunError(format!("writing the report: {e}")))?;
    Ok(RunOutcome {
        report,
        lock,
        selected: selected_names,
        orphans,
        seconds: start.elapsed().as_secs_f64(),
    })
}
