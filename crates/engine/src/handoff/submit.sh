#!/bin/sh
# Submits this bundle's job to Slurm (job.sbatch, from this folder, which the cluster's nodes
# must see) and prints its output as it comes until the job leaves the queue; exits 0 when it
# completed. TERM, INT or HUP cancel the job. Arguments go to the entry point (--resume).
cd "$(dirname "$0")" || exit 1
rm -f slurm.log
id=$(sbatch --parsable job.sbatch "$@") || exit 1
id=${id%%;*}
echo "slurm: submitted job $id" >&2
echo "$id" > slurm.jobid
trap 'scancel "$id"; exit 143' TERM INT HUP
shown=0
show() {
  [ -f slurm.log ] || return 0
  n=$(wc -l < slurm.log)
  if [ "$n" -gt "$shown" ]; then
    sed -n "$((shown + 1)),${n}p" slurm.log
    shown=$n
  fi
}
while [ -n "$(squeue -h -j "$id" -o %T 2>/dev/null)" ]; do
  show
  sleep 1
done
show
state=$(scontrol show job "$id" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p')
echo "slurm: job $id ended ${state:-with its state no longer known}"
[ "$state" = COMPLETED ]
