#!/usr/bin/env bash
# Runs the GPU tests and the GPU benchmark on a lent GPU machine (see
# BENCH-gpu.md). Expects, next to this script: gpu-bench and gpu-tests
# (release binaries built on the workstation and stripped), and ../.gl/
# holding the Debian packages of the Vulkan loader and glvnd (libvulkan1,
# libglvnd0, libglx0, libegl1, libgl1, libopengl0, libgles2), which the
# NVIDIA Vulkan ICD needs. Writes logs under $OUT when set.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${OUT:-/tmp}"
for f in "$here"/../.gl/*.deb; do dpkg -x "$f" /; done
ldconfig
icd="$(find /usr/local/nvidia /usr/share/vulkan /etc/vulkan -name 'nvidia_icd*.json' 2>/dev/null | head -1)"
if [ -n "$icd" ]; then
  export VK_DRIVER_FILES="$icd"
fi
{
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv
  echo "CPU cores: $(nproc)"
  echo "Vulkan ICD: ${icd:-none found}"
} 2>&1 | tee "$out/env.txt"
echo "== GPU tests (bit-exactness on this GPU)"
timeout 120 "$here/gpu-tests" --test-threads 1 2>&1 | grep -v XDG_RUNTIME | tee "$out/tests.txt" | tail -20
echo "== benchmark"
timeout 240 "$here/gpu-bench" "$@" 2>&1 | tee "$out/bench.txt"
