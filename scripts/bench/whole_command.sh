#!/usr/bin/env bash
# Whole-command wall time of qforge builds against llama-quantize on the
# same file, the tools alternating (BENCH-quantize.md):
#
#   scripts/bench/whole_command.sh HF_DIR LLAMA_BIN_DIR REPEAT QFORGE...
#
# HF_DIR is converted to F16 GGUF by the first qforge (once, to
# /tmp/whole-command-f16.gguf); then per run and type (Q8_0, Q4_K_M) each
# qforge quantizes it with `--device cpu` and llama-quantize with all
# cores, and each qforge converts HF_DIR to F16 GGUF. LLAMA_BIN_DIR holds
# llama-quantize and its shared libraries. Prints one line per run and
# step, seconds per tool, "(rc N)" after a failed one.
set -u
hf=$1 lq=$2 rep=$3
shift 3
src=/tmp/whole-command-f16.gguf out=/tmp/whole-command-out.gguf
[ -f "$src" ] || "$1" convert "$hf" "$src" --outtype f16 >/dev/null 2>&1 || { echo "converting $hf failed"; exit 1; }
tm() {
  rm -f "$out"
  local s=$EPOCHREALTIME
  "$@" >/dev/null 2>&1
  local rc=$? e=$EPOCHREALTIME
  awk -v a="$s" -v b="$e" 'BEGIN { printf "%.2f", b - a }'
  [ $rc = 0 ] || printf '(rc %d)' $rc
}
for i in $(seq 1 "$rep"); do
  for ty in Q8_0 Q4_K_M; do
    line="run $i $ty:"
    for q in "$@"; do line="$line $(basename "$q") $(tm "$q" quantize "$src" "$out" --type $ty --device cpu)"; done
    line="$line llama-quantize $(tm env LD_LIBRARY_PATH="$lq" "$lq/llama-quantize" "$src" "$out" $ty "$(nproc)")"
    echo "$line"
  done
  line="run $i convert HF to F16:"
  for q in "$@"; do line="$line $(basename "$q") $(tm "$q" convert "$hf" "$out" --outtype f16)"; done
  echo "$line"
done
rm -f "$out"
