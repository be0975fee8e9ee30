//! Benchmark of `qforge convert` against the tools it replaces, on the same
//! input in the same run: a Hugging Face folder to GGUF F16 (against
//! llama.cpp's convert_hf_to_gguf.py) and to MLX 4-bit, group 64 (against
//! `mlx_lm.convert -q`). Prints wall time and peak RSS of each command and
//! the ratios, as a Markdown table.
//!
//! ```text
//! cargo build --release --bin qforge --example bench_convert
//! source tests/interop/oracles.env
//! target/release/examples/bench_convert HF_DIR [--runs N] [--tokenizer-pre NAME] [--work DIR]
//! ```
//!
//! The oracles come from tests/interop/oracles.env (`QFORGE_ORACLE_PYTHON`,
//! `QFORGE_LLAMA_SRC`). The script runs through
//! tests/interop/convert_hf_to_gguf_pre.py, which only answers the BPE
//! pre-tokenizer name the script cannot tell from its hash table
//! (`--tokenizer-pre`, default `smollm`) and changes nothing it computes.
//! Each command runs `--runs` times (default 1), alternating with the
//! others so the page cache treats them alike; the table shows the fastest
//! run and the largest peak RSS (ru_maxrss of the command's process, read
//! with wait4, so one command's memory never counts for another's).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

struct Measured {
    wall: Duration,
    max_rss_kib: u64,
}

/// Runs `cmd` to completion; its wall time and peak resident set size.
fn measure(cmd: &mut Command) -> Result<Measured> {
    let start = Instant::now();
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let pid = child.id() as libc::pid_t;
    // wait4 reaps the child and gives its own rusage. stderr is piped, so
    // read it on a thread first: a chatty child must not block on a full pipe.
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
        return Err(format!(
            "wait4 on {cmd:?} failed: {}",
            std::io::Error::last_os_error()
        )
        .into());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        let tail: String = err
            .chars()
            .rev()
            .take(3000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(format!("{cmd:?} failed (status {status}):\n{tail}").into());
    }
    Ok(Measured {
        wall,
        // Linux reports ru_maxrss in KiB.
        max_rss_kib: usage.ru_maxrss as u64,
    })
}

fn env_path(name: &str) -> Result<PathBuf> {
    std::env::var_os(name)
        .map(PathBuf::from)
        .ok_or_else(|| format!("{name} is not set: source tests/interop/oracles.env").into())
}

fn clear(path: &Path) -> Result<()> {
    if path.is_dir() {
        std::fs::remove_dir_all(path)?;
    } else if path.exists() {
        std::fs::remove_file(path)?;
    }
    Ok(())
}

struct Case {
    label: &'static str,
    out: PathBuf,
    cmd: Box<dyn Fn(&Path) -> Command>,
    best: Option<Duration>,
    max_rss_kib: u64,
}

fn main() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let mut input: Option<PathBuf> = None;
    let mut runs = 1usize;
    let mut pre = "smollm".to_string();
    let mut work = std::env::temp_dir().join("qforge-bench-convert");
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--runs") => {
                runs = args
                    .next()
                    .ok_or("--runs N")?
                    .to_str()
                    .ok_or("N")?
                    .parse()?
            }
            Some("--tokenizer-pre") => {
                pre = args
                    .next()
                    .ok_or("--tokenizer-pre NAME")?
                    .into_string()
                    .map_err(|_| "NAME")?
            }
            Some("--work") => work = args.next().ok_or("--work DIR")?.into(),
            _ if input.is_none() => input = Some(a.into()),
            _ => return Err(format!("unexpected argument {a:?}").into()),
        }
    }
    let input = input
        .ok_or("usage: bench_convert HF_DIR [--runs N] [--tokenizer-pre NAME] [--work DIR]")?;
    if !input.join("config.json").is_file() {
        return Err(format!("{} is not a Hugging Face model folder", input.display()).into());
    }
    let python = env_path("QFORGE_ORACLE_PYTHON")?;
    let llama_src = env_path("QFORGE_LLAMA_SRC")?;
    let exe = std::env::current_exe()?;
    let qforge = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("qforge"))
        .filter(|p| p.is_file())
        .ok_or("build the qforge binary first: cargo build --release --bin qforge")?;
    let wrapper =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/convert_hf_to_gguf_pre.py");
    std::fs::create_dir_all(&work)?;

    let i = input.clone();
    let (q, p) = (qforge.clone(), pre.clone());
    let qforge_gguf = move |out: &Path| {
        let mut c = Command::new(&q);
        c.arg("convert").arg(&i).arg(out);
        c.args(["--type", "f16", "--tokenizer-pre", &p, "--json"]);
        c
    };
    let (i, py, w, src, p) = (input.clone(), python.clone(), wrapper, llama_src, pre);
    let script_gguf = move |out: &Path| {
        let mut c = Command::new(&py);
        c.arg(&w).arg(&src).arg(&p).arg(&i);
        c.args(["--outtype", "f16", "--outfile"]).arg(out);
        c
    };
    let (i, q) = (input.clone(), qforge);
    let qforge_mlx = move |out: &Path| {
        let mut c = Command::new(&q);
        c.arg("convert").arg(&i).arg(out);
        c.args(["--to", "mlx", "--bits", "4", "--group-size", "64", "--json"]);
        c
    };
    let (i, py) = (input.clone(), python);
    let mlx_lm = move |out: &Path| {
        let mut c = Command::new(&py);
        c.args(["-m", "mlx_lm", "convert", "--hf-path"]).arg(&i);
        c.arg("--mlx-path").arg(out);
        c.args(["-q", "--q-bits", "4", "--q-group-size", "64"]);
        c
    };
    let mut cases = vec![
        Case {
            label: "convert_hf_to_gguf.py --outtype f16",
            out: work.join("script-f16.gguf"),
            cmd: Box::new(script_gguf),
            best: None,
            max_rss_kib: 0,
        },
        Case {
            label: "qforge convert --type f16",
            out: work.join("qforge-f16.gguf"),
            cmd: Box::new(qforge_gguf),
            best: None,
            max_rss_kib: 0,
        },
        Case {
            label: "mlx_lm.convert -q --q-bits 4 --q-group-size 64",
            out: work.join("mlx-lm-4bit"),
            cmd: Box::new(mlx_lm),
            best: None,
            max_rss_kib: 0,
        },
        Case {
            label: "qforge convert --to mlx --bits 4 --group-size 64",
            out: work.join("qforge-4bit"),
            cmd: Box::new(qforge_mlx),
            best: None,
            max_rss_kib: 0,
        },
    ];
    for run in 0..runs {
        for case in &mut cases {
            clear(&case.out)?;
            let m = measure(&mut (case.cmd)(&case.out))?;
            eprintln!(
                "run {}: {}: {:.2} s, {:.0} MiB",
                run + 1,
                case.label,
                m.wall.as_secs_f64(),
                m.max_rss_kib as f64 / 1024.0
            );
            case.best = Some(case.best.map_or(m.wall, |b| b.min(m.wall)));
            case.max_rss_kib = case.max_rss_kib.max(m.max_rss_kib);
        }
    }
    for case in &cases {
        clear(&case.out)?;
    }

    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "Input: {} ({} CPUs, best of {runs} run{}, warm page cache)\n",
        input.display(),
        cpus,
        if runs == 1 { "" } else { "s" }
    );
    println!("| command | wall (s) | peak RSS (MiB) | qforge speed-up | qforge RSS share |");
    println!("|---|---:|---:|---:|---:|");
    for pair in cases.chunks(2) {
        let (base, ours) = (&pair[0], &pair[1]);
        let (bw, ow) = (
            base.best.unwrap_or_default().as_secs_f64(),
            ours.best.unwrap_or_default().as_secs_f64(),
        );
        println!(
            "| {} | {bw:.2} | {:.0} | | |",
            base.label,
            base.max_rss_kib as f64 / 1024.0
        );
        println!(
            "| {} | {ow:.2} | {:.0} | {:.1}x | {:.3} |",
            ours.label,
            ours.max_rss_kib as f64 / 1024.0,
            bw / ow.max(1e-9),
            ours.max_rss_kib as f64 / base.max_rss_kib.max(1) as f64
        );
    }
    Ok(())
}
