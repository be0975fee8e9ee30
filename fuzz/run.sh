#!/usr/bin/env bash
# One fuzzing campaign, one process on one core (libFuzzer without -jobs
# runs a single job in-process; -jobs=1 would only move its output to
# fuzz-0.log): seeds the corpus from the fixtures if it is missing
# (src/bin/make_seeds.rs), then runs TARGET for SECONDS (default 600) on one
# core at low priority, with the limits the campaigns in RUNS.md use:
# no input over 64 KiB, no run over 10 s, no allocation or RSS over 1 GiB.
#
#   fuzz/run.sh TARGET [SECONDS]
#
# Needs nightly Rust and cargo-fuzz (`cargo install cargo-fuzz`). Prints
# libFuzzer's final stats; the log is in fuzz/logs/TARGET.log, and a crash
# input in fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
target=${1:?usage: fuzz/run.sh TARGET [SECONDS]}
seconds=${2:-600}

if [ ! -d "corpus/$target" ]; then
  cargo +nightly run --release --bin make_seeds
fi
mkdir -p logs "artifacts/$target"
echo "$(date -u +%FT%TZ) start $target, load: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "logs/$target.log"
# ASan is on (cargo fuzz's default): it is what makes -malloc_limit_mb work.
# A smaller quarantine keeps its own memory out of the 1 GiB RSS budget.
ASAN_OPTIONS=quarantine_size_mb=64 nice -n 10 cargo +nightly fuzz run "$target" "corpus/$target" -- \
  -max_total_time="$seconds" -max_len=65536 -timeout=10 \
  -rss_limit_mb=1024 -malloc_limit_mb=1024 -print_final_stats=1 \
  -artifact_prefix="artifacts/$target/" 2>&1 | tee -a "logs/$target.log" | grep -E '^(#|INFO|==|stat::|Done)' | tail -25
status=${PIPESTATUS[0]}
echo "$(date -u +%FT%TZ) end $target (status $status), load: $(cut -d' ' -f1-3 /proc/loadavg), corpus: $(ls "corpus/$target" | wc -l) files" | tee -a "logs/$target.log"
exit "$status"
