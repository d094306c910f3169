#!/bin/bash
# The paper-scale steps on a SLURM cluster: one task per node, torchrun starting that node's
# 8 ranks (one per GPU), every node seeing the same checkout, results/, data and TORCH_HOME
# (docs/paper_scale.md). Submit from the repository root on the shared filesystem:
#   sbatch docs/slurm_paper.sh
# then run `dvc repro` once on one node: the notebooks read the checkpoints and job records.
#SBATCH --job-name=mpq-paper
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
set -eu
export TORCH_HOME="${TORCH_HOME:-/shared/torch}"   # filled once from a login node (pretrained weights)
head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
cd "$SLURM_SUBMIT_DIR" && . .venv/bin/activate
run() {
  srun torchrun --nnodes="$SLURM_NNODES" --nproc_per_node=8 \
    --rdzv_id="$SLURM_JOB_ID" --rdzv_backend=c10d --rdzv_endpoint="$head:29500" -m mpq "$@"
}
run baselines
run sensitivity --method alps --method noft
run frontier
