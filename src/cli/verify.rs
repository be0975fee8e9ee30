//! `qforge verify ARTIFACT`: the reference generation run, with gates.

use std::fs;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::print_json;
use super::progress::draw_target;
use crate::device::DeviceArg;
use crate::engine::{Artifact, Forward, Runner};
use crate::verify::{self, EvalInput, Gates, VerifyOptions, VerifyReport};

/// Exit code when the run worked but a gate failed.
pub const EXIT_GATE_FAILED: u8 = 3;

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The artifact: a GGUF file, an MLX folder or a Hugging Face folder.
    artifact: PathBuf,
    /// The model to compare against (KL divergence, top-1 agreement,
    /// perplexity ratio), usually the unquantized source.
    #[arg(long, value_name = "SRC")]
    reference: Option<PathBuf>,
    /// Text for perplexity (e.g. /usr/share/common-licenses/GPL-3).
    #[arg(long, value_name = "FILE", conflicts_with = "tokens")]
    text: Option<PathBuf>,
    /// Token ids of the text instead of the text: a JSON array, for
    /// checking against another tokenizer's output.
    #[arg(long, value_name = "FILE")]
    tokens: Option<PathBuf>,
    /// Window size in tokens (llama-perplexity -c).
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Evaluate at most N windows.
    #[arg(long, value_name = "N")]
    chunks: Option<usize>,
    /// Worker threads (default: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Skip the throughput measurement.
    #[arg(long)]
    no_speed: bool,
    /// Prompt tokens of the throughput test (llama-bench -p).
    #[arg(long, default_value_t = 128, value_name = "N")]
    prompt_tokens: usize,
    /// Generated tokens of the throughput test (llama-bench -n).
    #[arg(long, default_value_t = 64, value_name = "N")]
    gen_tokens: usize,
    /// Timed repetitions of each throughput test.
    #[arg(long, default_value_t = 3, value_name = "N")]
    speed_reps: usize,
    /// Tokens of the greedy sample (0: none).
    #[arg(long, default_value_t = 24, value_name = "N")]
    sample_tokens: usize,
    /// Fail when perplexity is above this.
    #[arg(long, value_name = "X")]
    max_ppl: Option<f64>,
    /// Fail when PPL(artifact)/PPL(reference) is above this.
    #[arg(long, value_name = "X")]
    max_ppl_ratio: Option<f64>,
    /// Fail when the mean KL divergence is above this.
    #[arg(long, value_name = "X")]
    max_kld: Option<f64>,
    /// Fail when top-1 agreement (fraction, 0.9 = 90%) is below this.
    #[arg(long, value_name = "X")]
    min_top1: Option<f64>,
    /// Fail when prompt processing is slower than this (tokens/s).
    #[arg(long, value_name = "X")]
    min_prompt_tok_s: Option<f64>,
    /// Fail when generation is slower than this (tokens/s).
    #[arg(long, value_name = "X")]
    min_gen_tok_s: Option<f64>,
    /// Where the forward passes run: `gpu` for the GPU engine (GGUF
    /// llama, mistral, qwen2 with Q8_0/Q4_0/Q4_1/Q4_K/Q6_K weights; an
    /// error for other models), `cpu`, or `auto`: the GPU for such a model
    /// when a hardware adapter exists and the model is large enough to
    /// pay, else the CPU with one line saying why.
    #[arg(long, value_enum, ignore_case = true, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    /// Debug: run the --tokens ids as one sequence, write the logits of
    /// every position (little-endian f32) to FILE, and stop.
    #[arg(long, value_name = "FILE", requires = "tokens", hide = true)]
    logits_out: Option<PathBuf>,
}

/// A progress bar over a run's phases, drawn only on a terminal.
struct Bar {
    bar: ProgressBar,
}

impl verify::Progress for Bar {
    fn start(&self, phase: &str, total: usize) {
        self.bar.reset();
        self.bar.set_length(total as u64);
        self.bar.set_prefix(phase.to_string());
    }

    fn step(&self) {
        self.bar.inc(1);
    }
}

fn read_tokens(path: &PathBuf) -> Result<Vec<u32>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{}: expected a JSON array of token ids", path.display()))
}

pub(crate) fn run(args: VerifyArgs) -> Result<ExitCode> {
    let gates = Gates {
        max_ppl: args.max_ppl,
        max_ppl_ratio: args.max_ppl_ratio,
        max_kld: args.max_kld,
        min_top1: args.min_top1,
        min_prompt_tok_s: args.min_prompt_tok_s,
        min_gen_tok_s: args.min_gen_tok_s,
    };
    if gates.need_reference() && args.reference.is_none() {
        bail!("--max-ppl-ratio, --max-kld and --min-top1 compare against a model: give it with --reference");
    }
    if gates.need_speed() && args.no_speed {
        bail!("--min-prompt-tok-s and --min-gen-tok-s need the throughput test: drop --no-speed");
    }
    if args.ctx < 4 {
        bail!("--ctx must be at least 4");
    }
    let input = match (&args.text, &args.tokens) {
        (Some(p), _) => EvalInput::Text(
            fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        ),
        (None, Some(p)) => EvalInput::Tokens(read_tokens(p)?),
        (None, None) => EvalInput::None,
    };
    if let (Some(out), EvalInput::Tokens(ids)) = (&args.logits_out, &input) {
        return dump_logits(&args, ids, out);
    }
    let opts = VerifyOptions {
        ctx: args.ctx,
        chunks: args.chunks,
        threads: args.threads,
        speed: !args.no_speed,
        prompt_tokens: args.prompt_tokens,
        gen_tokens: args.gen_tokens,
        speed_reps: args.speed_reps,
        sample_tokens: args.sample_tokens,
        device: args.device,
        reference_cache: None,
    };
    let bar = ProgressBar::with_draw_target(Some(0), draw_target(args.json));
    bar.set_style(
        ProgressStyle::with_template("{prefix:>10.bold} [{bar:30}] {pos}/{len} {elapsed}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let progress = Bar { bar };
    let report = verify::run(
        &args.artifact,
        args.reference.as_deref(),
        &input,
        &opts,
        &gates,
        &progress,
    )?;
    progress.bar.finish_and_clear();
    if let Some(note) = &report.device_note {
        eprintln!("{note}");
    }
    if args.json {
        print_json(&serde_json::to_value(&report)?)?;
    } else {
        print_text(&report)?;
    }
    Ok(if report.pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_GATE_FAILED)
    })
}

fn dump_logits(args: &VerifyArgs, ids: &[u32], out: &PathBuf) -> Result<ExitCode> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build()?;
    let artifact = Artifact::open(&args.artifact)?;
    let selection = Runner::load(&artifact, args.device)?;
    if let Some(note) = &selection.note {
        eprintln!("{note}");
    }
    let model = selection.runner;
    let mut cache = model.new_cache(ids.len())?;
    let logits = pool.install(|| model.forward(&mut cache, ids, 0))?;
    let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    fs::write(out, bytes).with_context(|| format!("writing {}", out.display()))?;
    Ok(ExitCode::SUCCESS)
}

fn print_text(r: &VerifyReport) -> Result<()> {
    let mut o = io::stdout().lock();
    writeln!(
        o,
        "{}  ({} {}, {}, {})",
        r.artifact.display(),
        r.format,
        r.architecture,
        r.weight_type,
        if r.device == "CPU" {
            format!("{} threads", r.threads)
        } else {
            r.device.clone()
        }
    )?;
    if let Some(p) = &r.perplexity {
        writeln!(
            o,
            "  perplexity      {:.4} +/- {:.5}  ({} windows of {}, {} tokens scored)",
            p.ppl, p.ppl_error, p.chunks, p.ctx, p.scored_tokens
        )?;
    }
    if let Some(k) = &r.kl {
        writeln!(
            o,
            "  reference       {}  (perplexity {:.4})",
            k.reference.display(),
            k.reference_ppl
        )?;
        writeln!(
            o,
            "  ppl ratio       {:.6} +/- {:.6}",
            k.ppl_ratio, k.ppl_ratio_error
        )?;
        writeln!(
            o,
            "  mean KLD        {:.6} +/- {:.6}  (99%: {:.6}, max: {:.6})",
            k.mean_kld, k.mean_kld_error, k.kld_p99, k.kld_max
        )?;
        writeln!(
            o,
            "  same top        {:.3}% +/- {:.3}%",
            100.0 * k.same_top,
            100.0 * k.same_top_error
        )?;
    }
    if let Some(s) = &r.speed {
        writeln!(
            o,
            "  prompt          {:.1} tokens/s  ({} tokens)",
            s.prompt_tok_s, s.prompt_tokens
        )?;
        writeln!(
            o,
            "  generation      {:.1} tokens/s  ({} tokens)",
            s.gen_tok_s, s.gen_tokens
        )?;
    }
    if let Some(m) = r.peak_rss_bytes {
        writeln!(o, "  peak memory     {}", super::human_bytes(m))?;
    }
    if let Some(s) = &r.sample {
        writeln!(o, "  sample          {:?} -> {:?}", s.prompt, s.text)?;
    }
    for g in &r.gates {
        let value = g
            .value
            .map_or("not measured".to_string(), |v| format!("{v:.6}"));
        writeln!(
            o,
            "  gate {:<16} {} (limit {}, value {value})",
            g.gate,
            if g.pass { "pass" } else { "FAIL" },
            g.limit
        )?;
    }
    if !r.gates.is_empty() {
        writeln!(o, "{}", if r.pass { "PASS" } else { "FAIL" })?;
    }
    Ok(())
}
