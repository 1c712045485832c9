#!/usr/bin/env bash
# The GPU path end to end, on a machine with CUDA: one table (seconds, tokens/s, peak GPU memory
# per stage). Put its output in docs/scaling.md ("GPU check").
#
#   bash benchmarks/gpu_check.sh [WORKDIR]        # default /tmp/distill-gpu-check, ~30-60 min
#
# 1. pipelines/configs/smollm2-gpu.yaml, budgets shortened: bf16 soft labels on a GPU actor,
#    prune, ZeRO-2 KD in bf16 on the GPU(s), GPTQ int4 with CUDA kernels, evaluate;
# 2. the same run with ZeRO-3 KD (soft labels and prune are reused from the stage cache);
# 3. the ZeRO-2 student served on the GPU (Ray Serve, OpenAI API): 16 completions of 64 tokens.
# Needs `make install` where torch==2.13.0 resolves to a CUDA build (the Linux wheel on PyPI
# is one) and `nvidia-smi`. It has NOT been run by this project yet (no GPU in its sessions).
set -euo pipefail
cd "$(dirname "$0")/.."
WD=${1:-/tmp/distill-gpu-check}
BIN=.venv/bin
CONFIG=pipelines/configs/smollm2-gpu.yaml
mkdir -p "$WD"

command -v nvidia-smi >/dev/null || { echo "gpu_check: no nvidia-smi: this check needs a GPU" >&2; exit 2; }
$BIN/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" ||
  { echo "gpu_check: torch sees no CUDA device (CPU-only torch build?)" >&2; exit 2; }
NGPU=$(nvidia-smi --list-gpus | wc -l)

echo "command: bash benchmarks/gpu_check.sh $WD"
echo "machine: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | sort | uniq -c | xargs), $(nproc) cpus; date $(date +%F)"
echo "versions: $($BIN/python -c 'import torch, ray, deepspeed; print(f"torch {torch.__version__} cuda {torch.version.cuda}, ray {ray.__version__}, deepspeed {deepspeed.__version__}")')"

# peak GPU memory (MiB, summed over GPUs) while a command runs
with_gpu_peak() {  # name, command...
  local name=$1; shift
  local log="$WD/$name.mem"
  (while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | awk '{s+=$1} END {print s}'; sleep 1; done) >"$log" &
  local sampler=$!
  "$@" >"$WD/$name.log" 2>&1 || { kill $sampler; echo "gpu_check: $name failed, see $WD/$name.log" >&2; tail -40 "$WD/$name.log" >&2; exit 1; }
  kill $sampler
  sort -n "$log" | tail -1 >"$WD/$name.peak"
}

COMMON=(--set workdir="$WD/run" --set data.max_train_rows=2048 --set soft_labels.max_rows=2048
        --set distill.max_steps=200 --set distill.eval_every=100 --set distill.checkpoint_every=100
        --set distill.num_workers="$NGPU" --set soft_labels.num_actors="$NGPU")
with_gpu_peak zero2 $BIN/distill run $CONFIG "${COMMON[@]}" --set distill.zero_stage=2
cp -r "$WD/run/stages" "$WD/stages-zero2"
cp -r "$WD/run/student" "$WD/student-zero2"
with_gpu_peak zero3 $BIN/distill run $CONFIG "${COMMON[@]}" --set distill.zero_stage=3
cp -r "$WD/run/stages" "$WD/stages-zero3"

cat >"$WD/serve.py" <<'EOF'
"""Serve the ZeRO-2 student on one GPU and time 16 completions (64 tokens each)."""
import json, sys, time, urllib.request
from ray import serve
from distill.ray_config import RayConfig
from distill.raycluster import ensure_ray
from distill.serve.app import build_app

ensure_ray(RayConfig())
serve.start(http_options={"host": "127.0.0.1", "port": 8011})
student = {"model": sys.argv[1], "num_gpus": 1, "device": "cuda", "num_cpus": 1}
serve.run(build_app({"served_model_name": "gpu-check", "student": student,
                     "cascade": {"fallback": False}}), name="gpu-check", route_prefix="/")
body = json.dumps({"model": "gpu-check", "prompt": "def fib(n):", "max_tokens": 64,
                   "temperature": 0}).encode()
t0, tokens = time.perf_counter(), 0
for _ in range(16):
    req = urllib.request.Request("http://127.0.0.1:8011/v1/completions", body,
                                 {"content-type": "application/json"})
    tokens += json.load(urllib.request.urlopen(req, timeout=120))["usage"]["completion_tokens"]
print(json.dumps({"seconds": time.perf_counter() - t0, "tokens": tokens}))
serve.shutdown()
EOF
with_gpu_peak serve $BIN/python "$WD/serve.py" "$WD/student-zero2"

$BIN/python - "$WD" <<'EOF'
import json, re, sys
from pathlib import Path
wd = Path(sys.argv[1])
def seconds(run, stage):
    found = re.findall(rf"\[distill\] stage {stage}: done in (\d+)s", (wd / f"{run}.log").read_text())
    return int(found[-1]) if found else None
peak = {n: (wd / f"{n}.peak").read_text().strip() for n in ("zero2", "zero3", "serve")}
print("\n| run | stage | seconds | tokens/s | note | peak GPU MiB (whole run) |")
print("|---|---|---|---|---|---|")
for run in ("zero2", "zero3"):
    for stage in ("soft_labels", "prune", "distill", "quantize", "evaluate"):
        f = wd / f"stages-{run}" / f"{stage}.json"
        if not f.exists():
            continue
        m = json.loads(f.read_text())["metrics"]
        tps = m.get("tokens_per_s") or m.get("student.tokens_per_s")
        note = {"soft_labels": f"bf16, {m.get('bytes_per_token', 0):.0f} B/token",
                "distill": f"ppl {m.get('heldout_ppl', float('nan')):.2f}",
                "quantize": f"ppl +{100 * m.get('gptq.ppl_increase', float('nan')):.1f}%",
                "evaluate": f"int4 {m.get('int4.tokens_per_s', float('nan')):.0f} tok/s"}.get(stage, "")
        secs = seconds(run, stage)
        print(f"| {run} | {stage} | {'cached' if secs is None else secs} | "
              f"{'—' if tps is None else round(tps)} | {note} | {peak[run]} |")
s = json.loads([l for l in (wd / "serve.log").read_text().splitlines() if l.startswith("{")][-1])
print(f"| serve | student, 16 x 64 tokens, batch 1 | {s['seconds']:.1f} | "
      f"{s['tokens'] / s['seconds']:.0f} | greedy | {peak['serve']} |")
EOF
