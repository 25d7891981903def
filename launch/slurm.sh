#!/usr/bin/env bash
# Train across Slurm nodes: one task per node, each driving its node's GPUs. pavad-train
# detects the Slurm job (SLURM_NTASKS > 1) and calls jax.distributed.initialize(), which
# reads the coordinator and process ids from Slurm's environment.
#
#   launch/slurm.sh --nodes 4 --gpus-per-node 8 [--partition P] [--time 04:00:00] [--dry-run] \
#       -- --config configs/ucf.py --workdir /shared/runs/ucf
#
# --dry-run prints the batch script and the sbatch command instead of submitting.
set -euo pipefail
usage() { sed -n '2,10p' "$0"; exit "${1:-0}"; }
NODES=1 GPUS=8 PARTITION="" TIME="04:00:00" DRY_RUN=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --nodes) NODES="$2"; shift 2 ;;
    --gpus-per-node) GPUS="$2"; shift 2 ;;
    --partition) PARTITION="$2"; shift 2 ;;
    --time) TIME="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "slurm.sh: unknown argument $1" >&2; usage 2 ;;
  esac
done
[[ $# -gt 0 ]] || { echo "slurm.sh: give the pavad-train arguments after --" >&2; usage 2; }
SCRIPT=$(cat <<SBATCH
#!/usr/bin/env bash
#SBATCH --job-name=pavad-train
#SBATCH --nodes=$NODES
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=$GPUS
#SBATCH --time=$TIME
${PARTITION:+#SBATCH --partition=$PARTITION}
#SBATCH --signal=TERM@120
# SIGTERM two minutes before the time limit: pavad-train saves a checkpoint and exits;
# resubmitting the same script resumes from it.
srun pavad-train $(printf '%q ' "$@")
SBATCH
)
if [[ $DRY_RUN == 1 ]]; then echo "$SCRIPT"; echo "sbatch <the script above>"; else echo "$SCRIPT" | sbatch; fi
