#!/usr/bin/env bash
# The GPU check (issue 34): what a CUDA machine must confirm, in under 8 minutes on one H100 or H200.
#
#   benchmarks/gpu_check.sh [DATA_ROOT]
#
# DATA_ROOT holds DRIVE/ (default: $CONVUNEXT_DATA, else ../shared/data). Needs a CUDA build of torch with convunext
# installed (pip install -e ".[test]"); without a CUDA GPU it refuses in one line and exits 2.
#
# 1. the CUDA tests (pytest -m cuda: mixed precision and channels-last training steps of every model, the inference
#    fast path and the sliding window against the CPU, a short training run), ~1 min;
# 2. the benchmark at 480x480 (benchmarks/benchmark.py --device cuda --amp bf16): inference latency of every model and
#    of ConvUNeXt's fast and torch.compile paths, training steps at batch 4 with peak GPU memory, ~3 min;
# 3. ConvUNeXt on DRIVE with the paper's recipe (configs/drive.yaml: crop 480) for 150 of its 300
#    epochs on the GPU with AMP, then the test split evaluated: the GPU path learns, ~3 min.
#
# Everything goes to benchmarks/results/gpu-check-<date>/ (a .log per step, benchmark.md/.json, drive/, SUMMARY.md);
# each step has a time limit; a step that fails is reported in SUMMARY.md while the others still run, and the script
# then exits 1.
set -uo pipefail

python - <<'EOF' 2>/dev/null || { echo "gpu_check: no CUDA GPU here (or no torch in this Python); run it on a machine with one, convunext installed" >&2; exit 2; }
import sys

import torch

sys.exit(0 if torch.cuda.is_available() else 1)
EOF

cd "$(dirname "$0")/.."
DATA_ROOT="${1:-${CONVUNEXT_DATA:-../shared/data}}"
OUT="benchmarks/results/gpu-check-$(date +%Y%m%d-%H%M)"
mkdir -p "$OUT"
GPU="$(python -c 'import torch; print(torch.cuda.get_device_name(0))')"
STATUS=()
FAILED=0

step() {  # step NAME SECONDS COMMAND...: run it under a time limit, log it, record how it ended
    local name="$1" limit="$2"
    shift 2
    echo "== $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local code=${PIPESTATUS[0]}
    STATUS+=("| $name | $([ "$code" = 0 ] && echo ok || echo "failed (exit $code)") | $((SECONDS - start)) s |")
    [ "$code" = 0 ] || FAILED=1
}

step tests 150 python -m pytest -q -m cuda tests -p no:cacheprovider
step benchmark 240 python benchmarks/benchmark.py --device cuda --amp bf16 --sizes 480 --paths fast,compile \
    --repeats 20 --warmup 5 --train-size 480 --train-batch-size 4 --train-repeats 20 --recompute-size 0 \
    --out "$OUT/benchmark"
step drive-train 240 convunext train drive --data-root "$DATA_ROOT/DRIVE" --device cuda --epochs 150 \
    --set train.eval_every=25 --set train.run_name=drive --output-dir "$OUT"
step drive-test 60 convunext evaluate "$OUT/drive" "$DATA_ROOT/DRIVE" --device cuda --out "$OUT/drive/test"

{
    echo "# GPU check, $(date +%Y-%m-%d): $GPU"
    echo
    echo "| step | result | seconds |"
    echo "|---|---|---:|"
    printf '%s\n' "${STATUS[@]}"
    echo
    python - "$OUT" <<'EOF'
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
summary, test = out / "drive" / "summary.json", out / "drive" / "test" / "metrics.json"
if summary.is_file():
    data = json.loads(summary.read_text())
    print(f"- DRIVE, paper's recipe on the GPU: best validation Dice {data['best_val_metrics']['dice_fg_mean']:.4f} "
          f"at epoch {data['best_epoch']} of {data['epochs_run']}")
if test.is_file():
    metrics = json.loads(test.read_text())["metrics"]
    print(f"- DRIVE test: Dice {metrics['dice_fg_mean']:.4f}, mIoU {metrics['miou_cm']:.4f}")
print("- benchmark tables: benchmark.md; logs: tests.log, benchmark.log, drive-train.log, drive-test.log")
EOF
} >"$OUT/SUMMARY.md"
cat "$OUT/SUMMARY.md"
exit "$FAILED"
