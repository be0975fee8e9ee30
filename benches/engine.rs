//! Prompt (128 tokens) and generation (64 tokens) throughput of qforge's
//! engine against llama.cpp's `llama-bench -p 128 -n 64 -t 2`, on the same
//! machine, files and run, for SmolLM2-135M in F16, BF16, Q8_0, Q4_0, Q4_1,
//! Q4_K_M, Q3_K_M and IQ4_XS (made from the oracle's Q4_1 file with
//! llama-quantize, cached under target/bench-models), and on request the
//! types qforge reads but does not write (`DECODE_TYPES`). Prints ratios
//! qforge / llama.cpp and the load average around each measurement (the
//! machine is shared: read ratios, and distrust rows taken at a load
//! above the core count).
//!
//! Then the whole perplexity step: `qforge verify --no-speed` against
//! `llama-perplexity` on the same file and text (8 windows of 512 tokens of
//! /usr/share/common-licenses/GPL-3, 2 threads), wall time of each command
//! including its load and tokenization, best of 3 runs, alternating.
//!
//! ```sh
//! source tests/interop/oracles.env
//! cargo bench --bench engine              # all types
//! cargo bench --bench engine -- F16 Q4_0  # some
//! cargo bench --bench engine -- IQ3_S MXFP4_MOE  # types qforge only reads
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use qforge::engine::{Artifact, Model};
use qforge::verify::{measure_speed, NoProgress, VerifyOptions};

const TYPES: [&str; 8] = [
    "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K_M", "Q3_K_M", "IQ4_XS",
];
/// llama-quantize file types of the GGML types qforge reads but does not
/// write, measured only when named: made with an importance matrix from
/// llama-imatrix (Apache-2.0, 2 windows of 512), which the IQ1 and IQ2
/// types require, and `--pure` (every matrix whose rows fill the type's
/// blocks has it; IQ2_M is the file type of GGML's IQ2_S).
const DECODE_TYPES: [&str; 10] = [
    "IQ1_S",
    "IQ1_M",
    "IQ2_XXS",
    "IQ2_XS",
    "IQ2_M",
    "IQ3_XXS",
    "IQ3_S",
    "TQ1_0",
    "TQ2_0",
    "MXFP4_MOE",
];
const THREADS: usize = 2;
const REPS: usize = 5;

fn env_path(key: &str) -> PathBuf {
    PathBuf::from(std::env::var_os(key).unwrap_or_else(|| {
        panic!("{key} is not set: source tests/interop/oracles.env (after tests/interop/setup.sh)")
    }))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().next().unwrap_or("?").to_string())
        .unwrap_or_else(|_| "?".into())
}

fn model_file(dir: &Path, ty: &str) -> PathBuf {
    let bin = env_path("QFORGE_LLAMA_BIN");
    let src = env_path("QFORGE_SMOLLM2_GGUF");
    let f16 = dir.join("smollm2-F16.gguf");
    let quantize = |from: &Path, to: &Path, ty: &str, extra: &[&std::ffi::OsStr]| {
        if to.is_file() {
            return;
        }
        let mut cmd = Command::new(bin.join("llama-quantize"));
        let out = cmd
            .args(extra)
            .arg(from)
            .arg(to)
            .arg(ty)
            .arg("2")
            .output()
            .unwrap();
        assert!(out.status.success(), "llama-quantize {ty} failed");
    };
    quantize(&src, &f16, "F16", &["--allow-requantize".as_ref()]);
    let path = dir.join(format!("smollm2-{ty}.gguf"));
    if DECODE_TYPES.contains(&ty) {
        let imatrix = dir.join("smollm2-apache.imatrix.gguf");
        if !imatrix.is_file() {
            let out = Command::new(bin.join("llama-imatrix"))
                .arg("-m")
                .arg(&f16)
                .args(["-f", "/usr/share/common-licenses/Apache-2.0", "-c", "512"])
                .args(["--chunks", "2", "-t", "2", "-o"])
                .arg(&imatrix)
                .output()
                .unwrap();
            assert!(out.status.success(), "llama-imatrix failed");
        }
        let extra = ["--imatrix".as_ref(), imatrix.as_os_str(), "--pure".as_ref()];
        quantize(&f16, &path, ty, &extra);
    } else {
        quantize(&f16, &path, ty, &[]);
    }
    path
}

/// llama-bench's average tokens/s of its pp and tg tests.
fn llama_bench(model: &Path) -> (f64, f64) {
    let out = Command::new(env_path("QFORGE_LLAMA_BIN").join("llama-bench"))
        .args([
            "-p",
            "128",
            "-n",
            "64",
            "-t",
            &THREADS.to_string(),
            "-r",
            &REPS.to_string(),
            "-o",
            "json",
            "-m",
        ])
        .arg(model)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "llama-bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut pp = 0.0;
    let mut tg = 0.0;
    for r in rows.as_array().unwrap() {
        let ts = r["avg_ts"].as_f64().unwrap();
        if r["n_prompt"].as_u64() == Some(128) {
            pp = ts;
        } else {
            tg = ts;
        }
    }
    (pp, tg)
}

const PPL_TEXT: &str = "/usr/share/common-licenses/GPL-3";
const PPL_RUNS: usize = 3;

/// Wall seconds of `cmd`, its stdout and its stderr; panics when it
/// fails.
fn timed(cmd: &mut Command) -> (f64, String, String) {
    let t = std::time::Instant::now();
    let out = cmd.output().unwrap();
    let secs = t.elapsed().as_secs_f64();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{stderr}");
    (secs, stdout, stderr)
}

/// Best wall time of `qforge verify` and of `llama-perplexity` over the
/// same windows, and the perplexity each printed.
fn perplexity_step(model: &Path) -> ((f64, f64), (f64, f64)) {
    let threads = THREADS.to_string();
    let (mut ours, mut theirs) = ((f64::INFINITY, 0.0), (f64::INFINITY, 0.0));
    for _ in 0..PPL_RUNS {
        let (s, report, _) = timed(
            Command::new(env!("CARGO_BIN_EXE_qforge"))
                .arg("verify")
                .arg(model)
                .args(["--text", PPL_TEXT, "--ctx", "512", "--chunks", "8"])
                .args(["--no-speed", "--sample-tokens", "0", "--device", "cpu"])
                .args(["--threads", &threads, "--json"]),
        );
        let report: serde_json::Value = serde_json::from_str(&report).unwrap();
        ours = (ours.0.min(s), report["perplexity"]["ppl"].as_f64().unwrap());
        let (s, stdout, stderr) = timed(
            Command::new(env_path("QFORGE_LLAMA_BIN").join("llama-perplexity"))
                .arg("-m")
                .arg(model)
                .args(["-f", PPL_TEXT, "-c", "512", "--chunks", "8", "-t", &threads]),
        );
        let ppl = (stdout + &stderr)
            .split("Final estimate: PPL = ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("llama-perplexity printed no final estimate");
        theirs = (theirs.0.min(s), ppl);
    }
    (ours, theirs)
}

fn main() {
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-models");
    std::fs::create_dir_all(&dir).unwrap();
    println!(
        "SmolLM2-135M, {THREADS} threads, pp 128 / tg 64, mean of {REPS} runs after a warm-up (tokens/s)\n"
    );
    println!("| type | load | qforge pp | llama.cpp pp | pp ratio | qforge tg | llama.cpp tg | tg ratio |");
    println!("|---|---|---|---|---|---|---|---|");
    // The default set, or the named types (of either list) in list order.
    let types: Vec<&str> = if wanted.is_empty() {
        TYPES.to_vec()
    } else {
        TYPES
            .iter()
            .chain(&DECODE_TYPES)
            .copied()
            .filter(|t| wanted.iter().any(|w| w == t))
            .collect()
    };
    for &ty in &types {
        let path = model_file(&dir, ty);
        let load_before = load_average();
        let (lpp, ltg) = llama_bench(&path);
        let artifact = Artifact::open(&path).unwrap();
        let ours = match Model::load(&artifact) {
            Ok(model) => {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(THREADS)
                    .build()
                    .unwrap();
                let opts = VerifyOptions {
                    speed_reps: REPS,
                    ..VerifyOptions::default()
                };
                Some(
                    pool.install(|| measure_speed(&model, &opts, &NoProgress))
                        .unwrap(),
                )
            }
            Err(e) => {
                eprintln!("{ty}: {e}");
                None
            }
        };
        let load = format!("{load_before}-{}", load_average());
        match ours {
            Some(s) => println!(
                "| {ty} | {load} | {:.1} | {lpp:.1} | {:.2}x | {:.1} | {ltg:.1} | {:.2}x |",
                s.prompt_tok_s,
                s.prompt_tok_s / lpp,
                s.gen_tok_s,
                s.gen_tok_s / ltg
            ),
            None => println!("| {ty} | {load} | - | {lpp:.1} | - | - | {ltg:.1} | - |"),
        }
    }
    assert!(
        Path::new(PPL_TEXT).is_file(),
        "{PPL_TEXT} is missing (Debian's base-files ships it)"
    );
    println!(
        "\nPerplexity, 8 windows of 512 tokens of GPL-3, {THREADS} threads: whole command, best of {PPL_RUNS} (s)\n"
    );
    println!("| type | load | qforge verify | llama-perplexity | speed-up | qforge PPL | llama.cpp PPL |");
    println!("|---|---|---|---|---|---|---|");
    for &ty in &types {
        let path = model_file(&dir, ty);
        let load_before = load_average();
        let ((ours, ppl), (theirs, lppl)) = perplexity_step(&path);
        println!(
            "| {ty} | {load_before}-{} | {ours:.2} | {theirs:.2} | {:.2}x | {ppl:.4} | {lppl:.4} |",
            load_average(),
            theirs / ours
        );
    }
}
