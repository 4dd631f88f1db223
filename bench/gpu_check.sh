#!/usr/bin/env bash
# gptkit's GPU check, in one command from the project root (about 8.5 minutes at most):
#   bash bench/gpu_check.sh
# 1. the tests marked cuda (tests/test_cuda.py), 2. bench/train.py --device cuda (gpt2 at
# 16 x 1024, bf16, eager and torch.compile, gptkit against the reference and Hugging Face),
# 3. the GPT-2 124M recipe (configs/gpt2-124m.toml) for 12 steps through main.py.
# Everything it saw goes under $OUT (or /tmp/gpu-check); summary.txt has the gist.
# Each part has a time limit of its own and a part that fails does not stop the others,
# so one run always reports on all three. The limits add up to 480 s, leaving time to
# start, install and print within 9 minutes.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
log() { echo "== $*" | tee -a "$out/summary.txt"; }
py=$(command -v python3 || command -v python)

log "machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else "NO GPU VISIBLE")'
} 2>&1 | tee -a "$out/summary.txt"

# A GPU image may lack the project's pure-Python dependencies and have no index to fetch
# them from: wheels in $GPTKIT_WHEELS (default ../shared/device/wheels) are used if present.
log "install"
wheels=${GPTKIT_WHEELS:-$root/../shared/device/wheels}
if ! "$py" -c 'import pydantic' 2>/dev/null && [ -d "$wheels" ]; then
  "$py" -m pip install --quiet --no-index --find-links "$wheels" pydantic >"$out/install.log" 2>&1 || echo "pydantic install failed (see install.log)" | tee -a "$out/summary.txt"
fi
"$py" -m pip install --quiet --no-deps --no-build-isolation -e . >>"$out/install.log" 2>&1 || export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
"$py" -c 'import gptkit, pydantic, tiktoken, pluggy, rich, safetensors; print("imports ok:", gptkit.__file__)' 2>&1 | tee -a "$out/summary.txt"

log "tests marked cuda, 160 s at most"
timeout 160 "$py" -m pytest -q -m cuda tests -p no:cacheprovider >"$out/tests.log" 2>&1; echo "pytest exit $?" | tee -a "$out/summary.txt"
tail -15 "$out/tests.log" | tee -a "$out/summary.txt"

# One warm-up round is enough here: a compiled variant compiles in its first turn, and every
# turn's first two steps are untimed anyway. The compiles (three models) take most of the time.
log "bench/train.py --device cuda, 190 s at most"
timeout 190 "$py" bench/train.py --device cuda --warmup 1 --rounds 5 --no-readme --json "$out/train_cuda.json" >"$out/bench.log" 2>&1; echo "bench exit $?" | tee -a "$out/summary.txt"
tail -25 "$out/bench.log" | tee -a "$out/summary.txt"

log "GPT-2 124M recipe: 1024 context, bf16, compile, 12 steps of 16x1024 (no accumulation), 130 s at most"
export GPTKIT_CACHE="$out/cache"
timeout 130 "$py" main.py --config configs/gpt2-124m.toml \
  --set run.device=cuda --set train.grad_accum_steps=1 --set train.max_steps=12 \
  --set train.eval_every=12 --set train.eval_batches=2 --set run.out_dir="$out/runs" --set run.name=gpu-check \
  >"$out/train.log" 2>&1; echo "train exit $?" | tee -a "$out/summary.txt"
metrics="$out/runs/gpu-check/metrics.jsonl"
if [ -f "$metrics" ]; then
  "$py" - "$metrics" <<'PY' | tee -a "$out/summary.txt"
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
steps = [r for r in rows if r.get("tokens_per_sec")]
late = steps[len(steps) // 2:] or steps  # the first steps compile
tps = statistics.median(r["tokens_per_sec"] for r in late) if late else None
mfu = [r["mfu"] for r in late if r.get("mfu")]
print(f"steps logged {len(steps)}; median tokens/s over the later half {tps}; median MFU {statistics.median(mfu) if mfu else 'n/a'}")
PY
else
  tail -20 "$out/train.log" | tee -a "$out/summary.txt"
fi
log "done; files in $out"
