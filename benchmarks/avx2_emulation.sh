#!/usr/bin/env bash
# The quick reproduction on a clean clone, timed, optionally with the CPU kernels capped at AVX2.
#
# The slower machine kind seen here has AVX2 only (no AVX-512, no bf16 units). On a CPU with
# AVX-512 this script mimics it by capping PyTorch's own kernels (ATEN_CPU_CAPABILITY=avx2) and
# oneDNN's convolutions and matrix products (ONEDNN_MAX_CPU_ISA=AVX2); flcore's `auto` precision
# then picks fp32, as it does on the real AVX2 machine. Clock speed, caches and memory stay this
# machine's, so the result is an estimate of the AVX2 kind, calibrated by the ideal experiment-round
# the script prints (the AVX2 kind's is about 2.8 s for Fashion-MNIST).
#
#   benchmarks/avx2_emulation.sh avx2     # capped at AVX2
#   benchmarks/avx2_emulation.sh native   # this CPU as it is
#
# Steps: clone HEAD into a temporary folder with ../shared beside it, `make setup` (untimed:
# installs the venv), the ideal experiment-round (benchmarks/engine_speed.py --ideal-only), then
# `make reproduce` with an empty result store and an empty data cache (XDG_CACHE_HOME), timed.
# The machine must be idle: anything else on the two cores makes the timing meaningless.
set -euo pipefail
mode=${1:-avx2}
root=$(cd "$(dirname "$0")/.." && pwd)
shared=$(cd "$root/../shared" && pwd)
work=$(mktemp -d /tmp/flcore-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
case "$mode" in
  avx2) export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 ;;
  native) ;;
  *) echo "usage: $0 avx2|native (got '$mode')" >&2; exit 2 ;;
esac
git clone -q "$root" "$work/flcore"
ln -s "$shared" "$work/shared"
cd "$work/flcore"
make -s setup >"$work/setup.log" 2>&1 || { cat "$work/setup.log"; exit 1; }
export XDG_CACHE_HOME="$work/cache"
echo "# mode: $mode  commit: $(git rev-parse --short HEAD)  load before: $(cut -d' ' -f1 /proc/loadavg)"
.venv/bin/python - <<'EOF'
import torch
from flcore.sim.device import cpu_name, resolve_precision
print(f"# CPU: {cpu_name()}  kernels: {torch.backends.cpu.get_cpu_capability()}  "
      f"auto precision: {resolve_precision('auto', 'cpu')}  threads: {torch.get_num_threads()}")
EOF
.venv/bin/python benchmarks/engine_speed.py --datasets fmnist --ideal-only | grep -v '^#'
start=$(date +%s)
.venv/bin/python -m flcore reproduce --profile quick
end=$(date +%s)
echo "RESULT mode=$mode reproduce_quick_s=$((end - start))"
