#!/bin/bash
# Usage: queue.sh <jobs file> <parallel>; each line: <name> <args...>; skips names whose run finished.
cd /work/snap2
jobs_file=$1; par=${2:-2}
run_one() {
  name=$1; shift
  out=/work/runs/rl2/$name
  if grep -q "held-out EM" $out.log 2>/dev/null; then return; fi
  PYTHONPATH=$PWD ~/.cache/prm/venv-69334453296b3492/bin/python -m experiments.train "$@" --config.progress=False --workdir=$out > $out.log 2>&1
}
export -f run_one
grep -v '^#' $jobs_file | xargs -P $par -L 1 bash -c 'run_one "$@"' _
