#!/usr/bin/env bash
# Train on one host with several GPUs: one process drives every local GPU; the batch axis of
# the mesh spans them (global batch divisible by the GPU count).
#
#   launch/multi_gpu.sh [--gpus 0,1,2,3] [--dry-run] -- --config configs/ucf.py --workdir runs/ucf
#
# --dry-run prints the command instead of running it.
set -euo pipefail
usage() { sed -n '2,8p' "$0"; exit "${1:-0}"; }
GPUS="" DRY_RUN=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --gpus) GPUS="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "multi_gpu.sh: unknown argument $1" >&2; usage 2 ;;
  esac
done
[[ $# -gt 0 ]] || { echo "multi_gpu.sh: give the pavad-train arguments after --" >&2; usage 2; }
ENV=(env XLA_PYTHON_CLIENT_MEM_FRACTION=0.9)
[[ -n "$GPUS" ]] && ENV+=("CUDA_VISIBLE_DEVICES=$GPUS")
if [[ $DRY_RUN == 1 ]]; then printf '%q ' "${ENV[@]}" pavad-train "$@"; echo; else exec "${ENV[@]}" pavad-train "$@"; fi
