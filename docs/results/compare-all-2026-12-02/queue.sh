#!/bin/bash
# usage: queue.sh <queue file>; each line: "<config spec> <seed>"; runs experiments.train
# into /work/runs/sweep-1202b/runs/<name>-seed<k>, skipping finished ones.
cd /work/snap5
PY=/root/.cache/prm/venv-69334453296b3492/bin/python
R=/work/runs/sweep-1202b
while read spec seed; do
  [ -z "$spec" ] && continue
  name=$($PY -c "from experiments.compare import run_name; print(run_name('$spec'))")
  wd=$R/runs/$name-seed$seed
  if $PY -c "import sys; from experiments.compare import is_finished; sys.exit(0 if is_finished('$wd') else 1)"; then echo "skip $wd"; continue; fi
  case "$spec" in *:*) full="$spec,seed=$seed";; *) full="$spec:seed=$seed";; esac
  echo "$(date +%T) start $full -> $wd"
  $PY -m experiments.train --config=$full --workdir=$wd > $wd.log 2>&1
  echo "$(date +%T) done rc=$? $full"
done < "$1"
