#!/usr/bin/env bash
# Engine throughput on the GPU against the CPU path, measured in the same
# run on the same machine (BENCH-engine-gpu.md says how it is run on the
# device tool's H100).
#
#   benches/engine-gpu.sh QFORGE TEXT MODEL.gguf...
#
# For each model: `qforge verify --json --sample-tokens 0` with --device cpu
# (every core) and --device gpu, giving llama-bench's pp 128 / tg 64 tests
# (one warm-up, then the mean of 5 repetitions), printed side by side with
# the GPU/CPU ratios; then the perplexity of TEXT (ctx 512, 4 windows) on
# both devices, whose relative difference is the GPU's error; then what
# `--device auto` picks.
set -uo pipefail
qforge="$1"
text="$2"
shift 2
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

row() {
  python3 - "$@" <<'EOF'
import json, sys
name, cpu, gpu = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
c, g = cpu["speed"], gpu["speed"]
print(f"| {name} | {cpu['weight_type']} | {c['prompt_tok_s']:.1f} | {g['prompt_tok_s']:.1f} | "
      f"{g['prompt_tok_s'] / c['prompt_tok_s']:.2f}x | {c['gen_tok_s']:.1f} | {g['gen_tok_s']:.1f} | "
      f"{g['gen_tok_s'] / c['gen_tok_s']:.2f}x | {cpu['threads']} threads / {gpu['device']} |")
EOF
}

ppl_row() {
  python3 - "$@" <<'EOF'
import json, sys
name, cpu, gpu = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
c, g = cpu["perplexity"], gpu["perplexity"]
print(f"| {name} | {c['ppl']:.4f} | {g['ppl']:.4f} | {(g['ppl'] - c['ppl']) / c['ppl']:+.2e} | "
      f"{c['scored_tokens']} | {cpu['seconds']:.1f} | {gpu['seconds']:.1f} |")
EOF
}

echo "| model | weights | CPU pp tok/s | GPU pp tok/s | pp GPU/CPU | CPU tg tok/s | GPU tg tok/s | tg GPU/CPU | devices |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for m in "$@"; do
  name="$(basename "$m" .gguf)"
  for dev in cpu gpu; do
    "$qforge" verify "$m" --device "$dev" --json --sample-tokens 0 --speed-reps 5 \
      >"$tmp/$name-$dev.json" 2>"$tmp/$name-$dev.err" || { cat "$tmp/$name-$dev.err"; exit 1; }
  done
  row "$name" "$tmp/$name-cpu.json" "$tmp/$name-gpu.json"
done
echo
echo "| model | CPU perplexity | GPU perplexity | relative difference | tokens scored | CPU s | GPU s |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for m in "$@"; do
  name="$(basename "$m" .gguf)"
  for dev in cpu gpu; do
    "$qforge" verify "$m" --device "$dev" --json --no-speed --sample-tokens 0 \
      --text "$text" --ctx 512 --chunks 4 >"$tmp/$name-ppl-$dev.json" 2>"$tmp/$name-ppl-$dev.err" \
      || { cat "$tmp/$name-ppl-$dev.err"; exit 1; }
  done
  ppl_row "$name" "$tmp/$name-ppl-cpu.json" "$tmp/$name-ppl-gpu.json"
done
echo
for m in "$@"; do
  echo "--device auto on $(basename "$m"):"
  "$qforge" verify "$m" --device auto --no-speed --sample-tokens 8 2>&1 | grep -v XDG_RUNTIME
done
