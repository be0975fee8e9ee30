//! Benchmark: `qforge quantize` against llama-quantize on the same F16
//! file, same types, same thread count, in the same run: wall time and
//! peak resident memory of each, the ratios, and whether the two outputs
//! hold the same tensors byte for byte.
//!
//! ```text
//! source tests/interop/oracles.env
//! cargo build --release --bin qforge
//! cargo run --release --example bench_quantize -- [--f16 MODEL-F16.gguf]
//!     [--types Q4_K_M,Q6_K,Q8_0,IQ4_XS] [--threads 2] [--repeat 3] [--workdir DIR]
//! ```
//!
//! Without `--f16`, the F16 input is made from `$QFORGE_SMOLLM2_GGUF` (the
//! SmolLM2-135M Q4_1 file) by `qforge quantize --type F16
//! --allow-requantize`. llama-quantize comes from `$QFORGE_LLAMA_BIN`.
//! Each tool runs `--repeat` times per type, alternating; the table shows
//! the fastest wall time and the largest peak RSS of the repeats.
//!
//! Peak RSS is the child's `VmHWM` (Linux), read from /proc every 2 ms
//! while it runs: the high-water mark never falls, so the last reading
//! before exit misses at most the final 2 ms of growth.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use qforge::formats::gguf::GgufModel;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

struct Options {
    f16: Option<PathBuf>,
    types: Vec<String>,
    threads: usize,
    repeat: usize,
    workdir: PathBuf,
}

fn parse_args() -> Result<Options> {
    let mut o = Options {
        f16: None,
        types: ["Q4_K_M", "Q6_K", "Q8_0", "IQ4_XS"]
            .map(String::from)
            .to_vec(),
        threads: 2,
        repeat: 1,
        workdir: std::env::temp_dir().join("qforge-bench-quantize"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--f16" => o.f16 = Some(value()?.into()),
            "--types" => o.types = value()?.split(',').map(String::from).collect(),
            "--threads" => o.threads = value()?.parse()?,
            "--repeat" => o.repeat = value()?.parse::<usize>()?.max(1),
            "--workdir" => o.workdir = value()?.into(),
            _ => {
                return Err(format!("unknown argument {a} (see the example's doc comment)").into())
            }
        }
    }
    Ok(o)
}

/// Wall time and peak RSS of one finished child.
#[derive(Debug, Clone, Copy)]
struct Measured {
    wall: Duration,
    peak_rss_kib: u64,
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn measure(cmd: &mut Command) -> Result<Measured> {
    let start = Instant::now();
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
    let pid = child.id();
    // Drain stderr on a thread so a chatty child never blocks on the pipe.
    let mut stderr = child.stderr.take().expect("piped");
    let log = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut s).ok();
        s
    });
    let mut peak = 0;
    let status = loop {
        if let Some(kib) = vm_hwm_kib(pid) {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let wall = start.elapsed();
    let log = log.join().unwrap_or_default();
    if !status.success() {
        let tail: String = log
            .chars()
            .rev()
            .take(2000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(format!("{cmd:?} failed ({status}):\n{tail}").into());
    }
    Ok(Measured {
        wall,
        peak_rss_kib: peak,
    })
}

/// Whether two GGUF files hold the same tensors (names, types, dims, bytes)
/// in the same order; metadata may differ (qforge adds provenance keys).
fn same_tensors(a: &Path, b: &Path) -> Result<bool> {
    let (a, b) = (GgufModel::open(a)?, GgufModel::open(b)?);
    if a.tensor_count() != b.tensor_count() {
        return Ok(false);
    }
    for ((ta, da), (tb, db)) in a.tensors().zip(b.tensors()) {
        if ta.name != tb.name || ta.ggml_type != tb.ggml_type || ta.dims != tb.dims || da != db {
            return Ok(false);
        }
    }
    Ok(true)
}

fn env_path(key: &str) -> Result<PathBuf> {
    std::env::var_os(key)
        .map(PathBuf::from)
        .ok_or_else(|| format!("{key} is not set: source tests/interop/oracles.env").into())
}

fn run() -> Result<()> {
    let o = parse_args()?;
    let qforge = std::env::current_exe()?
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("qforge"))
        .filter(|p| p.is_file())
        .ok_or("the release qforge binary is missing: cargo build --release --bin qforge")?;
    let llama = env_path("QFORGE_LLAMA_BIN")?.join("llama-quantize");
    std::fs::create_dir_all(&o.workdir)?;
    let f16 = match &o.f16 {
        Some(p) => p.clone(),
        None => {
            let out = o.workdir.join("smollm2-f16.gguf");
            if !out.is_file() {
                let src = env_path("QFORGE_SMOLLM2_GGUF")?;
                measure(
                    Command::new(&qforge)
                        .arg("quantize")
                        .arg(&src)
                        .arg(&out)
                        .args(["--type", "F16", "--allow-requantize"]),
                )?;
            }
            out
        }
    };
    let threads = o.threads.to_string();
    println!(
        "input {} ({:.1} MB), {} thread(s), best of {} run(s)\n",
        f16.display(),
        std::fs::metadata(&f16)?.len() as f64 / 1e6,
        o.threads,
        o.repeat
    );
    println!(
        "| type | llama-quantize s | qforge s | time ratio | llama-quantize peak RSS MiB | qforge peak RSS MiB | RSS ratio | same tensors |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    for ty in &o.types {
        let (ours_out, ref_out) = (
            o.workdir.join(format!("qforge-{ty}.gguf")),
            o.workdir.join(format!("llama-{ty}.gguf")),
        );
        let mut best: [Option<Measured>; 2] = [None, None];
        for _ in 0..o.repeat {
            let runs = [
                measure(
                    Command::new(&llama)
                        .arg(&f16)
                        .arg(&ref_out)
                        .arg(ty)
                        .arg(&threads),
                )?,
                measure(
                    Command::new(&qforge)
                        .arg("quantize")
                        .arg(&f16)
                        .arg(&ours_out)
                        .args(["--type", ty, "--threads", &threads]),
                )?,
            ];
            for (b, m) in best.iter_mut().zip(runs) {
                *b = Some(match *b {
                    None => m,
                    Some(p) => Measured {
                        wall: p.wall.min(m.wall),
                        peak_rss_kib: p.peak_rss_kib.max(m.peak_rss_kib),
                    },
                });
            }
        }
        let [Some(theirs), Some(ours)] = best else {
            unreachable!("at least one repeat")
        };
        let same = same_tensors(&ours_out, &ref_out)?;
        let mib = |k: u64| k as f64 / 1024.0;
        println!(
            "| {ty} | {:.2} | {:.2} | {:.2}x | {:.0} | {:.0} | {:.2}x | {} |",
            theirs.wall.as_secs_f64(),
            ours.wall.as_secs_f64(),
            ours.wall.as_secs_f64() / theirs.wall.as_secs_f64(),
            mib(theirs.peak_rss_kib),
            mib(ours.peak_rss_kib),
            ours.peak_rss_kib as f64 / theirs.peak_rss_kib.max(1) as f64,
            if same { "yes" } else { "NO" }
        );
        std::fs::remove_file(&ours_out)?;
        std::fs::remove_file(&ref_out)?;
    }
    println!("\n(time and RSS ratios: qforge / llama-quantize; below 1 is better)");
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_quantize: {e}");
            ExitCode::FAILURE
        }
    }
}
