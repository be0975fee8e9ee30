//! The reference generation run behind `qforge verify`: perplexity as
//! llama-perplexity computes it, KL divergence and top-1 agreement against
//! a reference model (streamed window by window; a run of several
//! verifications can keep its logits for the others, `refcache`), prompt and
//! generation throughput, peak memory, a greedy sample, and gates.
//!
//! [`run`] is the library entry point the CLI and the manifest runner
//! share; [`Gates::check`] decides pass/fail.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::device::DeviceArg;
use crate::engine::runner::{generate_greedy_with, Forward, Runner, RunnerSelection};
use crate::engine::Artifact;

mod gates;
pub mod perplexity;
mod refcache;
pub mod text;

pub use gates::{GateResult, Gates};
use perplexity::{BaseLogProbs, KlPosition, KlStats, NllStats};
use rayon::prelude::*;
use text::{bos_added, gguf_bos_added, gguf_eos, tokenizer_for};

/// The prompt of the greedy sample.
pub const SAMPLE_PROMPT: &str = "The capital of France is";

/// What to measure and how.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Window size of perplexity and KL divergence (llama-perplexity's -c).
    pub ctx: usize,
    /// At most this many windows (llama-perplexity's --chunks).
    pub chunks: Option<usize>,
    /// Worker threads (0: one per core).
    pub threads: usize,
    /// Measure prompt and generation speed.
    pub speed: bool,
    /// Prompt length of the speed test (llama-bench -p).
    pub prompt_tokens: usize,
    /// Generated tokens of the speed test (llama-bench -n).
    pub gen_tokens: usize,
    /// Timed repetitions of each speed test (after one warm-up).
    pub speed_reps: usize,
    /// Tokens of the greedy sample (0: none).
    pub sample_tokens: usize,
    /// Where the forward passes run (`--device`).
    pub device: DeviceArg,
    /// A folder where the reference's logits of each window are kept for
    /// the next verification against the same reference and windows
    /// (`qforge run`, when several artifacts share a reference), and
    /// read back from instead of running the reference again. Windows
    /// beyond a budget of 4 GiB of logits stream as without it.
    pub reference_cache: Option<PathBuf>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            ctx: 512,
            chunks: None,
            threads: 0,
            speed: true,
            prompt_tokens: 128,
            gen_tokens: 64,
            speed_reps: 3,
            sample_tokens: 24,
            device: DeviceArg::Auto,
            reference_cache: None,
        }
    }
}

/// The evaluation text.
#[derive(Debug, Clone)]
pub enum EvalInput {
    /// Text, tokenized with the artifact's tokenizer (special tokens on).
    Text(String),
    /// Token ids of the whole text, as the tokenizer would give them.
    Tokens(Vec<u32>),
    /// No perplexity run.
    None,
}

/// Perplexity over the windows.
#[derive(Debug, Clone, Serialize)]
pub struct PerplexityReport {
    /// exp(mean nll).
    pub ppl: f64,
    /// llama-perplexity's "+/-".
    pub ppl_error: f64,
    /// Windows evaluated.
    pub chunks: usize,
    /// Window size.
    pub ctx: usize,
    /// Tokens scored.
    pub scored_tokens: u64,
    /// Tokens of the whole text.
    pub text_tokens: usize,
    /// BOS put at every window start, if any.
    pub bos: Option<u32>,
}

/// The artifact against the reference on the same windows.
#[derive(Debug, Clone, Serialize)]
pub struct KlReport {
    /// The reference model.
    pub reference: PathBuf,
    /// Perplexity of the reference.
    pub reference_ppl: f64,
    /// PPL(artifact) / PPL(reference).
    pub ppl_ratio: f64,
    /// Its uncertainty.
    pub ppl_ratio_error: f64,
    /// Mean KL divergence (reference || artifact) per token.
    pub mean_kld: f64,
    /// Its uncertainty.
    pub mean_kld_error: f64,
    /// 99th percentile of the per-token KL divergence.
    pub kld_p99: f64,
    /// Largest per-token KL divergence.
    pub kld_max: f64,
    /// Fraction of positions whose most likely token agrees.
    pub same_top: f64,
    /// Its uncertainty.
    pub same_top_error: f64,
    /// Windows whose reference logits came from `reference_cache` (an
    /// earlier verification of the same run) instead of the reference.
    pub reused_reference_windows: usize,
}

/// Throughput, measured as llama-bench measures it.
#[derive(Debug, Clone, Serialize)]
pub struct SpeedReport {
    /// Prompt tokens per test.
    pub prompt_tokens: usize,
    /// Prompt tokens per second (one batch from an empty cache).
    pub prompt_tok_s: f64,
    /// Generated tokens per test.
    pub gen_tokens: usize,
    /// Generated tokens per second (one token at a time from an empty cache).
    pub gen_tok_s: f64,
}

/// A short greedy continuation.
#[derive(Debug, Clone, Serialize)]
pub struct SampleReport {
    /// The prompt.
    pub prompt: String,
    /// The continuation's ids.
    pub tokens: Vec<u32>,
    /// The continuation as text.
    pub text: String,
}

/// Everything a verify run measured.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// The artifact.
    pub artifact: PathBuf,
    /// Its format.
    pub format: &'static str,
    /// Its architecture.
    pub architecture: &'static str,
    /// Storage type of its feed-forward weights.
    pub weight_type: String,
    /// Bytes of its files.
    pub file_bytes: u64,
    /// Worker threads used.
    pub threads: usize,
    /// Where the artifact's forward passes ran: `CPU` or the GPU adapter.
    pub device: String,
    /// Why they ran there, when worth saying (one line; the CLI prints it).
    pub device_note: Option<String>,
    /// Where the reference's forward passes ran, when there is one.
    pub reference_device: Option<String>,
    /// Perplexity, when a text was given.
    pub perplexity: Option<PerplexityReport>,
    /// KL divergence, when a reference was given.
    pub kl: Option<KlReport>,
    /// Throughput, when measured.
    pub speed: Option<SpeedReport>,
    /// Peak resident memory of the process (bytes), where the OS says.
    pub peak_rss_bytes: Option<u64>,
    /// Greedy sample, when a tokenizer is available.
    pub sample: Option<SampleReport>,
    /// Gate outcomes.
    pub gates: Vec<GateResult>,
    /// True when every gate holds.
    pub pass: bool,
    /// Wall-clock seconds of the run.
    pub seconds: f64,
}

/// Progress of a run, for bars.
pub trait Progress: Sync {
    /// A phase starts with `total` steps.
    fn start(&self, phase: &str, total: usize);
    /// One step of the phase is done.
    fn step(&self);
}

/// Progress that shows nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: &str, _: usize) {}
    fn step(&self) {}
}

/// Runs the reference generation run on `artifact_path`.
pub fn run(
    artifact_path: &Path,
    reference_path: Option<&Path>,
    input: &EvalInput,
    opts: &VerifyOptions,
    gates: &Gates,
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    let start = Instant::now();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads)
        .build()
        .context("starting worker threads")?;
    let threads = pool.current_num_threads();
    let artifact = Artifact::open(artifact_path)
        .with_context(|| format!("opening {}", artifact_path.display()))?;
    let RunnerSelection {
        runner: model,
        note: device_note,
    } = Runner::load(&artifact, opts.device)
        .with_context(|| format!("loading {}", artifact_path.display()))?;
    // Token ids given on the command line need no tokenizer: a vocabulary
    // qforge cannot rebuild then costs only the greedy sample.
    let tokenizer = match (tokenizer_for(&artifact), input) {
        (Ok(t), _) => t,
        (Err(_), EvalInput::Tokens(_) | EvalInput::None) => None,
        (Err(e), EvalInput::Text(_)) => return Err(e),
    };
    let (bos, eos) = match (&artifact, &tokenizer) {
        (Artifact::Gguf(m), _) => (
            tokenizer
                .as_ref()
                .map_or_else(|| gguf_bos_added(m.metadata()), bos_added),
            gguf_eos(m.metadata()),
        ),
        (_, Some(t)) => (bos_added(t), t.eos_id().into_iter().collect()),
        _ => (None, Vec::new()),
    };
    let reference = reference_path
        .map(|p| Artifact::open(p).with_context(|| format!("opening {}", p.display())))
        .transpose()?;
    // The reference runs on the GPU when the artifact does and the GPU
    // engine covers it, else on the CPU (the report says where).
    let ref_model = reference
        .as_ref()
        .map(|a| {
            let arg = if matches!(model, Runner::Cpu(_)) || !reference_runs_on_gpu(a) {
                DeviceArg::Cpu
            } else {
                DeviceArg::Gpu
            };
            Runner::load(a, arg)
                .map(|s| s.runner)
                .context("loading the reference model")
        })
        .transpose()?;
    if let Some(r) = &ref_model {
        if r.config().n_vocab != model.config().n_vocab {
            bail!(
                "the reference has a vocabulary of {} tokens, the artifact {}: they cannot be compared",
                r.config().n_vocab,
                model.config().n_vocab
            );
        }
    }

    let tokens = match input {
        EvalInput::Text(text) => Some(match &tokenizer {
            Some(t) => t.encode(text, true).context("tokenizing the text")?,
            None => bail!(
                "{} has no tokenizer.json: pass the token ids with --tokens FILE",
                artifact_path.display()
            ),
        }),
        EvalInput::Tokens(t) => Some(t.clone()),
        EvalInput::None => None,
    };

    let (perplexity, kl) = pool.install(|| -> Result<_> {
        let Some(tokens) = &tokens else {
            return Ok((None, None));
        };
        if tokens.len() < 2 * opts.ctx {
            bail!(
                "the text has {} tokens; perplexity needs at least 2 x ctx = {} (use a longer text or a smaller --ctx)",
                tokens.len(),
                2 * opts.ctx
            );
        }
        let reference = ref_model.as_ref().zip(reference_path).map(|(m, p)| EvalReference {
            model: m,
            path: p,
            device: m.device_name(),
        });
        evaluate(&model, reference, tokens, bos, opts, progress)
    })?;

    let speed = if opts.speed {
        Some(pool.install(|| measure_speed(&model, opts, progress))?)
    } else {
        None
    };

    let sample = match (&tokenizer, opts.sample_tokens) {
        (Some(t), n) if n > 0 => {
            let prompt = t.encode(SAMPLE_PROMPT, true)?;
            let ids = pool.install(|| generate_greedy_with(&model, &prompt, n, &eos))?;
            Some(SampleReport {
                prompt: SAMPLE_PROMPT.to_string(),
                text: t.decode(&ids, true)?,
                tokens: ids,
            })
        }
        _ => None,
    };

    let mut report = VerifyReport {
        artifact: artifact_path.to_path_buf(),
        format: artifact.format().name(),
        architecture: model.config().arch.gguf_name(),
        weight_type: model.weight_type(),
        file_bytes: artifact.file_bytes(),
        threads,
        device: model.device_name(),
        device_note,
        reference_device: ref_model.as_ref().map(Runner::device_name),
        perplexity,
        kl,
        speed,
        peak_rss_bytes: peak_rss_bytes(),
        sample,
        gates: Vec::new(),
        pass: true,
        seconds: 0.0,
    };
    report.gates = gates.check(&report);
    report.pass = report.gates.iter().all(|g| g.pass);
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// The model an evaluation compares with.
struct EvalReference<'a, R> {
    model: &'a R,
    path: &'a Path,
    /// Where its forward passes run (part of a stored window's key).
    device: String,
}

fn evaluate<F: Forward, R: Forward>(
    model: &F,
    reference: Option<EvalReference<'_, R>>,
    tokens: &[u32],
    bos: Option<u32>,
    opts: &VerifyOptions,
    progress: &dyn Progress,
) -> Result<(Option<PerplexityReport>, Option<KlReport>)> {
    let n_ctx = opts.ctx;
    let windows = perplexity::windows(tokens, n_ctx, opts.chunks, bos);
    let first = perplexity::first_scored(n_ctx);
    let vocab = model.config().n_vocab;
    let mut nll = NllStats::default();
    let mut kl = KlStats::default();
    progress.start("perplexity", windows.len());
    let mut cache = model.new_cache(n_ctx)?;
    let mut ref_cache = None;
    let store = match (&reference, &opts.reference_cache) {
        (Some(r), Some(dir)) => {
            let key = refcache::RefKey {
                reference: r.path,
                device: &r.device,
                vocab,
                ctx: n_ctx,
                first,
            };
            refcache::RefStore::new(dir, &key, windows.len(), (n_ctx - first) * vocab)
        }
        _ => None,
    };
    let mut reused = 0;
    for w in &windows {
        F::clear(&mut cache);
        let logits = model.forward(&mut cache, w, first)?;
        let ref_logits = match &reference {
            Some(r) => Some(match store.as_ref().and_then(|s| s.get(w)) {
                Some(stored) => {
                    reused += 1;
                    stored
                }
                None => {
                    let c = match &mut ref_cache {
                        Some(c) => c,
                        None => ref_cache.insert(r.model.new_cache(n_ctx)?),
                    };
                    R::clear(c);
                    let l = r.model.forward(c, w, first)?;
                    if let Some(s) = &store {
                        s.put(w, &l);
                    }
                    l
                }
            }),
            None => None,
        };
        // Each position on its own (in parallel), the sums in order: the
        // same bits as one loop.
        let positions: Vec<(f64, Option<KlPosition>)> = (0..n_ctx - 1 - first)
            .into_par_iter()
            .map(|j| {
                let tok = w[first + 1 + j] as usize;
                let row = &logits[j * vocab..(j + 1) * vocab];
                let kl = ref_logits.as_ref().map(|rl| {
                    let base = BaseLogProbs::new(&rl[j * vocab..(j + 1) * vocab]);
                    KlPosition::new(row, &base, tok)
                });
                (perplexity::nll(row, tok), kl)
            })
            .collect();
        for (v, p) in &positions {
            nll.add(*v);
            if let Some(p) = p {
                kl.push(p);
            }
        }
        progress.step();
    }
    let ppl = PerplexityReport {
        ppl: nll.ppl(),
        ppl_error: nll.ppl_error(),
        chunks: windows.len(),
        ctx: n_ctx,
        scored_tokens: nll.count,
        text_tokens: tokens.len(),
        bos,
    };
    let kl = reference.filter(|_| kl.count() > 0).map(|r| {
        let (mean_kld, mean_kld_error) = kl.mean_kld();
        let (same_top, same_top_error) = kl.same_top();
        let (ppl_ratio, ppl_ratio_error) = kl.ppl_ratio();
        KlReport {
            reference: r.path.to_path_buf(),
            reference_ppl: kl.nll_base.ppl(),
            ppl_ratio,
            ppl_ratio_error,
            mean_kld,
            mean_kld_error,
            kld_p99: kl.kld_percentile(0.99),
            kld_max: kl.kld_percentile(1.0),
            same_top,
            same_top_error,
            reused_reference_windows: reused,
        }
    });
    Ok((Some(ppl), kl))
}

/// Deterministic pseudo-random token ids (llama-bench feeds random ids).
fn bench_tokens(n: usize, vocab: usize) -> Vec<u32> {
    let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % vocab as u64) as u32
        })
        .collect()
}

/// Prompt and generation throughput: a `prompt_tokens` batch from an empty
/// cache (logits of the last position only), and `gen_tokens` single-token
/// steps from an empty cache; one warm-up, then the mean of the timed
/// repetitions (llama-bench's pp and tg tests).
pub fn measure_speed<F: Forward>(
    model: &F,
    opts: &VerifyOptions,
    progress: &dyn Progress,
) -> Result<SpeedReport> {
    let vocab = model.config().n_vocab;
    let prompt = bench_tokens(opts.prompt_tokens.max(1), vocab);
    let gen = bench_tokens(opts.gen_tokens.max(1), vocab);
    let reps = opts.speed_reps.max(1);
    progress.start("speed", 2 * (reps + 1));
    let mut cache = model.new_cache(prompt.len().max(gen.len()))?;
    let mut pp = 0f64;
    for rep in 0..=reps {
        F::clear(&mut cache);
        let t = Instant::now();
        model.forward(&mut cache, &prompt, prompt.len() - 1)?;
        if rep > 0 {
            pp += t.elapsed().as_secs_f64();
        }
        progress.step();
    }
    let mut tg = 0f64;
    for rep in 0..=reps {
        F::clear(&mut cache);
        let t = Instant::now();
        for &tok in &gen {
            model.forward(&mut cache, &[tok], 0)?;
        }
        if rep > 0 {
            tg += t.elapsed().as_secs_f64();
        }
        progress.step();
    }
    Ok(SpeedReport {
        prompt_tokens: prompt.len(),
        prompt_tok_s: (prompt.len() * reps) as f64 / pp,
        gen_tokens: gen.len(),
        gen_tok_s: (gen.len() * reps) as f64 / tg,
    })
}

/// Whether the GPU engine runs `artifact` (a reference under `--device
/// gpu` runs there only then).
fn reference_runs_on_gpu(artifact: &Artifact) -> bool {
    #[cfg(feature = "gpu")]
    {
        crate::engine::gpu::GpuModel::plan(artifact).is_ok()
    }
    #[cfg(not(feature = "gpu"))]
    {
        let _ = artifact;
        false
    }
}

/// Peak resident set size of this process (Linux: VmHWM).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
