//! Benchmark of issue 11: `qforge convert --to mlx` with `--method search`
//! (default: with its calibration pass; and on the weights alone,
//! `--calibration-tokens 0`) against `--method rtn` (mlx_lm.convert's
//! bytes), on the same input in the same run. Prints wall and CPU time of
//! each command and the ratios to rtn, as a Markdown table.
//!
//! ```text
//! cargo build --release --bin qforge --example bench_mlx_search
//! source tests/interop/oracles.env
//! taskset -c 0,1 target/release/examples/bench_mlx_search [HF_DIR] [--runs N] [--bits 4,3] [--work DIR]
//! ```
//!
//! Without HF_DIR the input is SmolLM2-135M as a bf16 Hugging Face folder,
//! made from `$QFORGE_SMOLLM2_GGUF` by `qforge convert --to safetensors
//! --dtype bf16`. The commands run with `RAYON_NUM_THREADS=2` (issue 11's
//! budget: search under 5x rtn on two cores; `taskset` pins them to two).
//! Each runs `--runs` times (default 3), alternating, and the table shows
//! the fastest wall time and the CPU time (user + system, from wait4) of
//! that run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

#[derive(Clone, Copy)]
struct Timing {
    wall: Duration,
    cpu: Duration,
}

fn tv(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
}

/// Runs `cmd` to completion; its wall time and its own CPU time.
fn measure(cmd: &mut Command) -> Result<Timing> {
    let start = Instant::now();
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let pid = child.id() as libc::pid_t;
    let mut stderr = child.stderr.expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let mut status = 0;
    // SAFETY: rusage is plain data, fully written by wait4 on success.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own child, not yet reaped; the pointers are valid.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    let err = reader.join().unwrap_or_default();
    if rc != pid {
        return Err(format!("wait4 on {cmd:?}: {}", std::io::Error::last_os_error()).into());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        let tail = &err[err.len().saturating_sub(3000)..];
        return Err(format!("{cmd:?} failed (status {status}):\n{tail}").into());
    }
    Ok(Timing {
        wall,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
    })
}

struct Options {
    input: Option<PathBuf>,
    runs: usize,
    bits: Vec<u32>,
    work: PathBuf,
}

fn parse_args() -> Result<Options> {
    let mut o = Options {
        input: None,
        runs: 3,
        bits: vec![4, 3],
        work: std::env::temp_dir().join("qforge-bench-mlx-search"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--runs" => o.runs = value()?.parse::<usize>()?.max(1),
            "--bits" => {
                o.bits = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<std::result::Result<_, _>>()?
            }
            "--work" => o.work = value()?.into(),
            s if !s.starts_with('-') && o.input.is_none() => o.input = Some(s.into()),
            _ => return Err(format!("unknown argument {a} (see the example's doc)").into()),
        }
    }
    Ok(o)
}

fn qforge_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    // target/release/examples/bench_mlx_search -> target/release/qforge
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join("qforge"))
        .expect("target layout")
}

fn main() -> Result<()> {
    let o = parse_args()?;
    let qforge = qforge_bin();
    std::fs::create_dir_all(&o.work)?;
    let input = match &o.input {
        Some(p) => p.clone(),
        None => {
            let dir = o.work.join("smollm2-bf16");
            if !dir.join("model.safetensors").is_file() {
                let gguf = std::env::var("QFORGE_SMOLLM2_GGUF")
                    .map_err(|_| "give HF_DIR or source tests/interop/oracles.env")?;
                let _ = std::fs::remove_dir_all(&dir);
                let st = Command::new(&qforge)
                    .arg("convert")
                    .arg(&gguf)
                    .arg(&dir)
                    .args(["--to", "safetensors", "--dtype", "bf16"])
                    .status()?;
                if !st.success() {
                    return Err("making the bf16 input failed".into());
                }
            }
            dir
        }
    };
    let methods: [(&str, &[&str]); 3] = [
        ("rtn", &["--method", "rtn"]),
        ("search", &["--method", "search"]),
        (
            "search, weights only",
            &["--method", "search", "--calibration-tokens", "0"],
        ),
    ];
    println!(
        "input {}, RAYON_NUM_THREADS=2, best of {} runs",
        input.display(),
        o.runs
    );
    println!();
    println!("| bits/group | method | wall s | CPU s | wall / rtn | CPU / rtn |");
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    for &bits in &o.bits {
        let mut best: Vec<Option<Timing>> = vec![None; methods.len()];
        for _ in 0..o.runs {
            for (i, (_, extra)) in methods.iter().enumerate() {
                let out = o.work.join(format!("out-{bits}-{i}"));
                let _ = std::fs::remove_dir_all(&out);
                let t = measure(
                    Command::new(&qforge)
                        .arg("convert")
                        .arg(&input)
                        .arg(&out)
                        .args(["--to", "mlx", "--bits", &bits.to_string()])
                        .args(["--group-size", "64"])
                        .args(*extra)
                        .env("RAYON_NUM_THREADS", "2"),
                )?;
                let _ = std::fs::remove_dir_all(&out);
                if best[i].is_none_or(|b| t.wall < b.wall) {
                    best[i] = Some(t);
                }
            }
        }
        let base = best[0].expect("measured");
        for ((name, _), t) in methods.iter().zip(&best) {
            let t = t.expect("measured");
            println!(
                "| {bits}/64 | {name} | {:.2} | {:.2} | {:.2}x | {:.2}x |",
                t.wall.as_secs_f64(),
                t.cpu.as_secs_f64(),
                t.wall.as_secs_f64() / base.wall.as_secs_f64(),
                t.cpu.as_secs_f64() / base.cpu.as_secs_f64()
            );
        }
    }
    Ok(())
}
