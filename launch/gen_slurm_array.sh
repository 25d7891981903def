#!/usr/bin/env bash
# Run PA-VAD generation steps as Slurm job arrays: array task i runs shard i of N.
# Every task runs the same `pavad-gen run --steps STEP ...` command; pavad-gen reads its shard
# from Slurm's environment (SLURM_ARRAY_TASK_ID minus SLURM_ARRAY_TASK_MIN, out of
# SLURM_ARRAY_TASK_COUNT; see generation/workers.py) and takes a round-robin slice of the items.
#
#   launch/gen_slurm_array.sh --step synthesize --shards 16 [--max-running 8] [--partition P] \
#       [--time 24:00:00] [--gpus 1] [--cpus 8] [--mem 128G] [--after JOBID] [--dry-run] \
#       -- --config configs/generation/sht.py --workdir /shared/gen_sht [--config.X=Y ...]
#   --step all: select, refine, synthesize, extract as four arrays, each starting after the
#   previous one succeeded (sbatch --dependency=afterok).
#
# Rerunning a step resumes it: finished items are skipped, failures are listed in the step's
# errors.jsonl. --dry-run prints each batch script, its sbatch command and every task's command.
set -euo pipefail
usage() { sed -n '2,15p' "$0"; exit "${1:-0}"; }
STEP="" SHARDS=1 MAX_RUNNING="" PARTITION="" TIME="24:00:00" GPUS=1 CPUS=8 MEM="128G" AFTER="" DRY_RUN=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --step) STEP="$2"; shift 2 ;;
    --shards) SHARDS="$2"; shift 2 ;;
    --max-running) MAX_RUNNING="$2"; shift 2 ;;
    --partition) PARTITION="$2"; shift 2 ;;
    --time) TIME="$2"; shift 2 ;;
    --gpus) GPUS="$2"; shift 2 ;;
    --cpus) CPUS="$2"; shift 2 ;;
    --mem) MEM="$2"; shift 2 ;;
    --after) AFTER="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "gen_slurm_array.sh: unknown argument $1" >&2; usage 2 ;;
  esac
done
case "$STEP" in
  select|refine|synthesize|extract) STEPS=("$STEP") ;;
  all) STEPS=(select refine synthesize extract) ;;
  *) echo "gen_slurm_array.sh: --step must be select, refine, synthesize, extract or all" >&2; usage 2 ;;
esac
[[ "$SHARDS" =~ ^[1-9][0-9]*$ ]] || { echo "gen_slurm_array.sh: --shards must be a positive integer" >&2; exit 2; }
[[ $# -gt 0 ]] || { echo "gen_slurm_array.sh: give the pavad-gen run arguments after --" >&2; usage 2; }
ARGS=$(printf '%q ' "$@")

batch_script() {  # $1: step
  cat <<SBATCH
#!/usr/bin/env bash
#SBATCH --job-name=pavad-gen-$1
#SBATCH --array=0-$((SHARDS - 1))${MAX_RUNNING:+%$MAX_RUNNING}
#SBATCH --ntasks=1
#SBATCH --gpus=$GPUS
#SBATCH --cpus-per-task=$CPUS
#SBATCH --mem=$MEM
#SBATCH --time=$TIME
#SBATCH --output=pavad-gen-$1-%A_%a.out
${PARTITION:+#SBATCH --partition=$PARTITION}
# The shard comes from SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT (generation/workers.py).
srun pavad-gen run --steps $1 $ARGS
SBATCH
}

previous="$AFTER"
for step in "${STEPS[@]}"; do
  dependency=()
  [[ -n "$previous" ]] && dependency=(--dependency="afterok:$previous")
  if [[ $DRY_RUN == 1 ]]; then
    echo "# ---- step $step: batch script"
    batch_script "$step"
    echo "# ---- submit: sbatch --parsable ${dependency[*]:+${dependency[*]} }< <the script above>"
    for ((i = 0; i < SHARDS; i++)); do
      echo "task $i: SLURM_ARRAY_TASK_ID=$i SLURM_ARRAY_TASK_MIN=0 SLURM_ARRAY_TASK_COUNT=$SHARDS pavad-gen run --steps $step $ARGS"
    done
    previous="<job id of $step>"
  else
    previous=$(batch_script "$step" | sbatch --parsable "${dependency[@]}")
    previous="${previous%%;*}"  # --parsable prints "jobid[;cluster]"
    echo "submitted $step as job array $previous ($SHARDS tasks)"
  fi
done
