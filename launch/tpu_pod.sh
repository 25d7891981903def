#!/usr/bin/env bash
# Train on every worker of a Cloud TPU pod slice: the same pavad-train command runs on all
# hosts; jax.distributed.initialize() detects the slice, each host feeds its slice of the batch.
#
#   launch/tpu_pod.sh --tpu NAME --zone ZONE [--dry-run] -- --config configs/ucf.py --workdir gs://bucket/run
#
# --dry-run prints the commands instead of running them.
set -euo pipefail
usage() { sed -n '2,8p' "$0"; exit "${1:-0}"; }
TPU="" ZONE="" DRY_RUN=0 REPO_DIR="${REPO_DIR:-~/pavad-jax}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu) TPU="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "tpu_pod.sh: unknown argument $1" >&2; usage 2 ;;
  esac
done
[[ -n "$TPU" && -n "$ZONE" ]] || { echo "tpu_pod.sh: --tpu and --zone are required" >&2; usage 2; }
[[ $# -gt 0 ]] || { echo "tpu_pod.sh: give the pavad-train arguments after --" >&2; usage 2; }
TRAIN_ARGS=$(printf '%q ' "$@")
run() { if [[ $DRY_RUN == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi; }
run gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all \
  --command "cd $REPO_DIR && pip install -q -c constraints.txt -e . 'jax[tpu]' && pavad-train $TRAIN_ARGS"
