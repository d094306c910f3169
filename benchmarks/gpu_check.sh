#!/usr/bin/env bash
# The GPU check of the paper-scale code path: one short script, under 8 minutes on one GPU.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        (from the repository root, mpq installed)
#
# 1. the card, torch and CUDA versions;
# 2. the tests that need CUDA, and the speed/resume tests on this machine;
# 3. ResNet-50 at 224 px, batch 128: float vs LSQ 4-bit training step in img/s, bf16 autocast and
#    channels-last (target: the LSQ step at most 1.3x the float step);
# 4. loader throughput on a synthetic JPEG ImageFolder at 224 px vs the training step's img/s
#    (target: the loader with the auto worker count at least as fast as the LSQ step);
# 5. the tiny preset's three steps (baselines, sensitivity, frontier) on CUDA for ResNet-50;
# 6. `torchrun --nproc_per_node=1` with NCCL (the distributed code path on one GPU).
# Every part prints what it measured; the last lines say PASS/FAIL per target. Output goes to
# OUT_DIR (default: $OUT when set, else ./gpu_check) as gpu_check.log plus the step logs. The
# README records the card and the figures of the last run.
set -u -o pipefail
OUT_DIR="${1:-${OUT:-gpu_check}}"
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_check.log"
PY="${PYTHON:-python}"
exec > >(tee "$LOG") 2>&1
status=0
section() { printf '\n=== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }
fail() { echo "FAIL: $*"; status=1; }

section "1. device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || fail "nvidia-smi"
"$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'torchvision', torchvision.__version__, 'device', torch.cuda.get_device_name(0), \
'bf16', torch.cuda.is_bf16_supported())" || { fail "torch sees no CUDA device"; exit 1; }

section "2. tests (CUDA-only ones included)"
"$PY" -m pytest -q -x -p no:cacheprovider tests/test_train.py tests/test_quantizers.py tests/test_resume.py \
  tests/test_hessian.py 2>&1 | tail -5 || fail "tests"

section "3. ResNet-50 QAT step, 224 px, bf16, channels-last"
"$PY" benchmarks/quantized_step.py --device cuda --precision bf16 --channels-last --size 224 --batch 128 \
  --widths 1.0 | tee "$OUT_DIR/step.txt" || fail "step benchmark"

section "4. loader throughput (synthetic JPEGs) vs the step"
"$PY" benchmarks/loader_speed.py --device cuda --images 1024 --size 224 --batch-size 128 --step-batch 128 \
  --workers 0 4 8 --passes 2 --steps 10 | tee "$OUT_DIR/loader.txt" || fail "loader benchmark"

section "5. tiny pipeline on CUDA (ResNet-50: baselines, sensitivity, frontier)"
TINY="$OUT_DIR/tiny"
mkdir -p "$TINY"
"$PY" - "$TINY" <<'EOF' || fail "tiny params"
import sys, yaml
from pathlib import Path
from mpq import config
out = Path(sys.argv[1])
raw = config.resolve("params.yaml")
raw["scale"] = "tiny"
raw = config.merge(raw, yaml.safe_load(Path("presets/tiny.yaml").read_text()) or {})
raw.update(device="cuda", networks=["resnet50"])
raw["data"]["root"] = str(Path("data").resolve())
(out / "presets").mkdir(exist_ok=True)
(out / "presets" / "tiny.yaml").write_text("{}\n")
(out / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
EOF
[ -d data/classification ] || "$PY" -m mpq data build || fail "mpq data build"
for step in baselines sensitivity frontier; do
  /usr/bin/time -f "$step: %e s" "$PY" -m mpq --params "$TINY/params.yaml" "$step" --network resnet50 \
    --out "$TINY/results" --quiet || fail "tiny $step on CUDA"
done
cat "$TINY/results/resnet50/baselines.json" 2>/dev/null

section "6. torchrun --nproc_per_node=1 (NCCL)"
torchrun --nproc_per_node=1 -m mpq --params "$TINY/params.yaml" sensitivity --method noft --network resnet50 \
  --out "$TINY/results" --quiet && echo "torchrun with NCCL: ok" || fail "torchrun --nproc_per_node=1"

section "targets"
"$PY" benchmarks/gpu_targets.py "$OUT_DIR/step.txt" "$OUT_DIR/loader.txt" || status=1
echo "gpu_check: $([ $status -eq 0 ] && echo all passed || echo some parts FAILED) (log: $LOG)"
exit $status
