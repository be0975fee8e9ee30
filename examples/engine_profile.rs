//! A fixed engine workload to run under a profiler (`perf record`):
//! prompt processing (`pp`, one batch of N tokens) or generation (`tg`, N
//! single-token steps), repeated R times, on T threads. Prints the
//! tokens/s and the process's user+system CPU seconds per token, which
//! stay meaningful on a loaded machine where wall-clock rates do not.
//!
//! ```sh
//! cargo run --release --example engine_profile -- MODEL.gguf pp 128 5 2
//! perf record -g target/release/examples/engine_profile MODEL.gguf tg 64 3 1
//! ```

use std::time::Instant;

use qforge::engine::{Artifact, Model};

/// The process's user and system CPU seconds so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesized command: utime is the 14th field.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: engine_profile MODEL pp|tg [TOKENS] [REPS] [THREADS]");
        std::process::exit(2);
    }
    let n: usize = args.get(2).map_or(128, |v| v.parse().unwrap());
    let reps: usize = args.get(3).map_or(3, |v| v.parse().unwrap());
    let threads: usize = args.get(4).map_or(2, |v| v.parse().unwrap());
    let artifact = Artifact::open(&args[0]).unwrap();
    let model = Model::load(&artifact).unwrap();
    let vocab = model.config().n_vocab as u32;
    let tokens: Vec<u32> = (0..n as u32).map(|i| (i * 7919 + 13) % vocab).collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let mut cache = model.new_cache(n);
    let run = |cache: &mut qforge::engine::KvCache| {
        cache.clear();
        if args[1] == "pp" {
            model.forward(cache, &tokens, n - 1).unwrap();
        } else {
            for &t in &tokens {
                model.forward(cache, &[t], 0).unwrap();
            }
        }
    };
    pool.install(|| run(&mut cache));
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    for _ in 0..reps {
        pool.install(|| run(&mut cache));
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let toks = (n * reps) as f64;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "{} {}: {:.1} tok/s wall, {:.3} ms CPU/token, load {}",
        args[1],
        model.weight_type(),
        toks / wall,
        cpu / toks * 1e3,
        load.split_whitespace().next().unwrap_or("?")
    );
}
