#!/usr/bin/env bash
# The accelerator figures of the README, on one GPU (or TPU), in under 5 minutes:
#   1. the UR-DMU train step at the reference's batch (64 + 64 rows, T = 200, D = 1024), float32
#      and bfloat16 compute, XLA's memory estimate of the step;
#   2. sweep member-steps/s for 1, 8 and 64 members (a count over the device's memory is
#      estimated, not run) and how many members fit;
#   3. full UCF-Crime-shaped evaluation (290 test videos at their real lengths, 10 crops,
#      D = 1024) with pavad-eval;
#   4. the same train step in the PyTorch re-implementation of tests/ (the baseline), on the GPU.
#
#   benchmarks/accelerator.sh [--out DIR]           # on the accelerator machine
#   benchmarks/accelerator.sh --tiny [--out DIR]    # tiny sizes on a CPU: checks the script runs
#
# Needs an environment where pavad_jax imports and JAX sees the accelerator (e.g.
# pip install -c constraints.txt -e . "jax[cuda12]"), and torch with CUDA for step 4 (skipped,
# with a note, when torch has no GPU). Writes every figure as JSON under --out and prints a summary.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out=/tmp/pavad_accelerator
tiny=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tiny) tiny=1; shift ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "accelerator.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
cd "$repo"

if [[ $tiny == 1 ]]; then  # seconds on a CPU: the same commands at toy sizes
  shape=(--batch-size 4 --segments 16 --feature-dim 64 --hidden 32 --slots 8)
  steps=2; members=1,2,4; eval_size=small; torch_shape=(--batch-size 4 --segments 16 --feature-dim 64); torch_device=cpu
else
  shape=(--batch-size 128 --segments 200 --feature-dim 1024)
  steps=20; members=1,8,64; eval_size=ucf; torch_shape=(--batch-size 128 --segments 200 --feature-dim 1024); torch_device=cuda
fi

start=$SECONDS
python -c "import jax; print('JAX', jax.__version__, 'devices:', jax.devices())"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

echo "== 1. UR-DMU train step, float32 and bfloat16 compute"
python -m pavad_jax.bench --model urdmu "${shape[@]}" --steps "$steps" --json "$out/step_float32.json"
python -m pavad_jax.bench --model urdmu "${shape[@]}" --steps "$steps" --compute-dtype bfloat16 \
  --json "$out/step_bfloat16.json"

echo "== 2. sweep throughput: $members members"
python -m pavad_jax.bench --model urdmu "${shape[@]}" --steps "$(( steps < 5 ? steps : 5 ))" --members "$members" \
  --json "$out/sweep.json"

echo "== 3. UCF-Crime-shaped evaluation (pavad-eval)"
python benchmarks/ucf_eval.py --size "$eval_size" --work "$out/eval" --skip-torch --json "$out/ucf_eval.json"

echo "== 4. the PyTorch re-implementation's step"
if python -c "import sys, torch; sys.exit(0 if '$torch_device' == 'cpu' or torch.cuda.is_available() else 1)"; then
  python benchmarks/torch_step.py "${torch_shape[@]}" --steps "$steps" --device "$torch_device" \
    --json "$out/torch_step.json"
else
  echo "torch has no CUDA device here: baseline skipped"
fi

python - "$out" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
load = lambda name: json.loads((out / name).read_text()) if (out / name).is_file() else None
f32, bf16, sweep, ev, torch_step = (load(n) for n in ("step_float32.json", "step_bfloat16.json", "sweep.json",
                                                      "ucf_eval.json", "torch_step.json"))
print(f"\n== summary ({f32['device_kind']}, {f32['rows']} rows x T={f32['segments']}, D={f32['feature_dim']})")
for name, r in (("float32", f32), ("bfloat16", bf16)):
    print(f"train step {name:9s} {r['train_step_ms']:8.2f} ms  {r['train_segments_per_s']:10.0f} segments/s  "
          f"{r['fraction_of_peak'] * 100 if r['fraction_of_peak'] else float('nan'):5.1f} % of the f32 matmul peak  "
          f"XLA memory {r['step_memory_gb']:.2f} GiB")
if torch_step:
    print(f"torch step          {torch_step['train_step_ms']:8.2f} ms  ({torch_step['device']}; JAX float32 is "
          f"{torch_step['train_step_ms'] / f32['train_step_ms']:.2f}x faster)")
for row in sweep["sweep"]:
    what = row.get("skipped") or f"{row['member_steps_per_s']:.2f} member-steps/s"
    print(f"sweep {row['members']:3d} members   {what}")
m = sweep.get("member_memory")
if m and "note" in m:
    print(f"members that fit    n/a: {m['note']}")
elif m:
    print(f"members that fit    {m['members_fit_per_device']} per device ({m['memory_per_member_gb']:.2f} GiB each "
          f"+ {m['shared_memory_gb']:.2f} shared, of {m['device_memory_gb']:.0f} GiB)")
j = ev["pavad_eval"]
print(f"UCF-shaped eval     {j['seconds']:.1f} s wall (scoring {j['in_process_seconds']:.1f} s, "
      f"{j['segments_per_s']:.0f} segments/s), host peak RSS {j['peak_rss_gb']:.2f} GiB")
EOF
echo "total $(( SECONDS - start )) s; JSON in $out"
