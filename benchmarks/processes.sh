#!/usr/bin/env bash
# Search samples/s on 1 and 2 CPU processes (torchrun, gloo) on the same planted data and config.
# Usage: bash benchmarks/processes.sh [N_SAMPLES] [EPOCHS] [C]   (prints one line per process count)
set -euo pipefail
n=${1:-6000}; epochs=${2:-3}; C=${3:-64}
py=${PYTHON:-python}; torchrun=${TORCHRUN:-torchrun}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
$py - "$tmp/data" "$n" <<'PY'
import sys
from bmnas.data import export_generic_dir
from bmnas.synthetic import planted_interaction
export_generic_dir(planted_interaction(n=int(sys.argv[2]), L=4, seed=0), sys.argv[1])
PY
sets=(--set model.C="$C" --set model.L=4 --set search.batch_size=96 --set search.epochs="$epochs"
      --set search.rerank=0 --set threads=1)
for procs in 1 2; do
  OMP_NUM_THREADS=1 $torchrun --standalone --nproc-per-node "$procs" -m bmnas search --data "$tmp/data" \
    --out "$tmp/run$procs" --device cpu --quiet "${sets[@]}" > /dev/null
  $py - "$tmp/run$procs" "$procs" <<'PY'
import json, sys
from pathlib import Path
run, procs = Path(sys.argv[1]), sys.argv[2]
rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
fp = json.loads((run / "fingerprint.json").read_text())
n = fp["data"]["sizes"]["train"]
seconds = sum(r["seconds"] for r in rows)
g = json.loads((run / "genotype.json").read_text())
print(json.dumps({"processes": int(procs), "epochs": len(rows), "train_rows": n,
                  "samples_per_s": round(n * len(rows) / seconds, 1),
                  "epoch_seconds": [round(r["seconds"], 2) for r in rows],
                  "val_accuracy": rows[-1]["val"]["accuracy"],
                  "cells": [c["inputs"] for c in g["cells"]]}))
PY
done
