//! `qforge imatrix MODEL --text FILE`: an importance matrix from qforge's
//! own engine, in llama-imatrix's GGUF format.

use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;

use super::{print_json, Progress};
use crate::engine::{Artifact, Model};
use crate::quant::imatrix::{self, ImatrixCollector, ImatrixProvenance};
use crate::verify::perplexity::windows;
use crate::verify::text::{bos_added, gguf_bos_added, tokenizer_for};

#[derive(Debug, Args)]
pub(crate) struct ImatrixArgs {
    /// The model to run: a GGUF file, an MLX folder or a Hugging Face folder
    /// (best unquantized: the activations are the model's own).
    model: PathBuf,
    /// The text to run it on (llama-imatrix -f).
    #[arg(long, value_name = "FILE")]
    text: PathBuf,
    /// Tokens per chunk (llama-imatrix -c).
    #[arg(long, default_value_t = 512, value_name = "N")]
    ctx: usize,
    /// Evaluate at most N chunks (default: every whole chunk of the text).
    #[arg(long, value_name = "N")]
    chunks: Option<usize>,
    /// Where to write the matrix (GGUF, as llama-imatrix writes it).
    #[arg(short, long, default_value = "imatrix.gguf", value_name = "FILE")]
    output: PathBuf,
    /// Also collect the output matrix (llama-imatrix --process-output):
    /// worth it for `convert --to mlx`, which quantizes the output matrix
    /// (or the tied token embedding) at the same width as the rest.
    #[arg(long)]
    process_output: bool,
    /// Worker threads (default: one per core).
    #[arg(long, default_value_t = 0, value_name = "N")]
    threads: usize,
    /// Print a JSON report on stdout and no progress.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: ImatrixArgs) -> Result<ExitCode> {
    let start = Instant::now();
    if args.ctx < 16 {
        bail!("--ctx must be at least 16 (llama-imatrix ignores batches of fewer tokens)");
    }
    if args.chunks == Some(0) {
        bail!("--chunks must be at least 1");
    }
    let text = fs::read_to_string(&args.text)
        .with_context(|| format!("reading {}", args.text.display()))?;
    let artifact =
        Artifact::open(&args.model).with_context(|| format!("opening {}", args.model.display()))?;
    let mut model =
        Model::load(&artifact).with_context(|| format!("loading {}", args.model.display()))?;
    let tokenizer = tokenizer_for(&artifact)?.with_context(|| {
        format!(
            "{} has no tokenizer.json: qforge imatrix needs one to tokenize the text",
            args.model.display()
        )
    })?;
    let bos = match &artifact {
        Artifact::Gguf(m) => bos_added(&tokenizer).or_else(|| gguf_bos_added(m.metadata())),
        _ => bos_added(&tokenizer),
    };
    // llama-imatrix tokenizes the whole text with BOS added, cuts it into
    // chunks of ctx tokens and puts BOS first in each.
    let tokens = tokenizer
        .encode(&text, true)
        .context("tokenizing the text")?;
    let chunks = windows(&tokens, args.ctx, args.chunks, bos);
    if chunks.is_empty() {
        bail!(
            "the text has {} tokens, fewer than one chunk of --ctx {}",
            tokens.len(),
            args.ctx
        );
    }
    let collector = Arc::new(ImatrixCollector::new(args.process_output));
    model.set_observer(Some(collector.clone()));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build()
        .context("starting worker threads")?;
    let progress = Progress::count(chunks.len() as u64, "chunks", args.json);
    pool.install(|| -> Result<()> {
        let mut cache = model.new_cache(args.ctx);
        // Every position's activations count (llama-imatrix asks for all
        // logits, so the last layer sees every token); the output matrix
        // sees them all only when it is collected.
        let logits_from = if args.process_output { 0 } else { args.ctx - 1 };
        for chunk in &chunks {
            cache.clear();
            model.forward(&mut cache, chunk, logits_from)?;
            progress.inc(1);
        }
        Ok(())
    })?;
    progress.finish();
    model.set_observer(None);
    drop(model);
    let stats = Arc::try_unwrap(collector)
        .map_err(|_| anyhow::anyhow!("the collector is still shared"))?
        .into_stats();
    let provenance = ImatrixProvenance {
        datasets: vec![args.text.to_string_lossy().into_owned()],
        chunk_count: chunks.len() as u32,
        chunk_size: args.ctx as u32,
    };
    imatrix::write_gguf(&args.output, &stats, &provenance)?;
    let seconds = start.elapsed().as_secs_f64();
    if args.json {
        print_json(&json!({
            "model": args.model,
            "output": args.output,
            "entries": stats.len(),
            "chunks": chunks.len(),
            "ctx": args.ctx,
            "text_tokens": tokens.len(),
            "seconds": seconds,
        }))?;
    } else {
        eprintln!(
            "wrote {} ({} matrices, {} chunks of {} tokens) in {seconds:.1} s",
            args.output.display(),
            stats.len(),
            chunks.len(),
            args.ctx
        );
    }
    Ok(ExitCode::SUCCESS)
}
