//! The command line: clap parses flags into plain data, each subcommand
//! resolves that against the file system and runs.

use std::io::{self, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod convert;
mod fetch;
mod imatrix;
mod inspect;
mod progress;
pub(crate) mod quantize;
mod run;
pub(crate) mod verify;

pub use progress::{FileBars, Progress};

/// Convert, quantize and verify language models: GGUF, MLX, safetensors.
#[derive(Debug, Parser)]
#[command(name = "qforge", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show a model's format, architecture, metadata, tensors and size.
    Inspect(inspect::InspectArgs),
    /// Rewrite a model into another format or layout.
    Convert(convert::ConvertArgs),
    /// Run the model: perplexity, KL divergence against a reference,
    /// tokens/s, a greedy sample; exit 3 when a gate fails.
    Verify(verify::VerifyArgs),
    /// Download a model from the Hugging Face Hub into the HF cache.
    Fetch(fetch::FetchArgs),
    /// Quantize a model to a llama.cpp quant mix (Q4_K_M, Q8_0, IQ4_XS ...).
    #[command(visible_alias = "requantize")]
    Quantize(quantize::QuantizeArgs),
    /// Compute an importance matrix (llama-imatrix's GGUF format) by running
    /// the model on a text: steers `--imatrix` quantization.
    Imatrix(imatrix::ImatrixArgs),
    /// Build, verify and report every artifact of a manifest.
    Run(run::RunArgs),
    /// List a manifest's artifacts as independent jobs (for CI matrices).
    Plan(run::PlanArgs),
    /// Write a manifest's report again, or gather the outputs of several
    /// `run --only` jobs into one folder with one report and lockfile.
    Report(run::ReportArgs),
}

/// Runs the command line and maps the outcome to an exit code: 0 on
/// success, 1 on an error (printed to stderr as one report), 2 on bad usage
/// (from clap). A closed stdout (`| head`) ends the run quietly with 0.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(args) => inspect::run(args),
        Command::Convert(args) => convert::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Fetch(args) => fetch::run(args),
        Command::Quantize(args) => quantize::run(args),
        Command::Imatrix(args) => imatrix::run(args),
        Command::Run(args) => run::run(args),
        Command::Plan(args) => run::plan(args),
        Command::Report(args) => run::report(args),
    };
    match result {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = format!("error: {e}");
            for cause in e.chain().skip(1) {
                let cause = cause.to_string();
                if !msg.contains(&cause) {
                    msg.push_str(&format!("\n  caused by: {cause}"));
                }
            }
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// Writes one JSON document to stdout.
pub(crate) fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value).map_err(io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

/// Human-readable byte count (decimal units, as file managers show them).
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// Parses a size like `5G`, `500M`, `1.5GB`, `2GiB`, `1000`.
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (examples: 500M, 5G, 2GiB)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024f64.powi(4),
        other => return Err(format!("unknown size unit '{other}' in '{s}'")),
    };
    let bytes = value * mult;
    if !(bytes >= 1.0 && bytes < 2f64.powi(63)) {
        return Err(format!("size '{s}' is out of range"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("5G"), Ok(5_000_000_000));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1.5MB"), Ok(1_500_000));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("abc").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("5Q").is_err());
    }

    #[test]
    fn bytes_print() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(98_362_432), "98.36 MB");
    }
}
