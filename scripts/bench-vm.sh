#!/usr/bin/env bash
# VM benchmark (not a test): a trivial long job (echo) on the `local` provisioner and in a
# microVM of its own (`vm` provisioner), best of three: enqueue->start (in a VM: once the
# guest agent is ready), boot->agent ready, compile in the guest, enqueue->end. Release build;
# the guest image is built for the release binary. Acceleration is probed (KVM or TCG) and
# printed as the server's wafer_vm_accel metric.
#
#   scripts/bench-vm.sh            # 3 rounds
#   BENCH_ROUNDS=5 scripts/bench-vm.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_qemu
jobs_bench_prepare
out="$(target_dir)/vm-release"
python3 scripts/vm-image.py "$out" "$wafer" >/dev/null
"$jobs_bench" vm "$wafer" functions/dist/echo.wasm "$out/image.json" "${BENCH_ROUNDS:-3}"
