#!/usr/bin/env bash
# On a machine with a CUDA GPU: the device tests, then one small search end to end on cuda (fp32,
# bf16) and on the CPU, printing samples/s and the genotype each found.
# Usage: bash benchmarks/gpu_check.sh [N_SAMPLES] [EPOCHS] [C]
set -euo pipefail
n=${1:-20000}; epochs=${2:-3}; C=${3:-192}
py=${PYTHON:-python}
$py -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name())"
$py -m pytest -q tests/test_device.py
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
$py - "$tmp/data" "$n" <<'PY'
import sys
from bmnas.data import export_generic_dir
from bmnas.synthetic import planted_interaction
export_generic_dir(planted_interaction(n=int(sys.argv[2]), L=8, seed=0), sys.argv[1])
PY
sets=(--set model.C="$C" --set model.L=8 --set search.batch_size=96 --set search.epochs="$epochs"
      --set search.rerank=0)
for run in "cuda fp32" "cuda bf16" "cpu fp32"; do
  set -- $run
  $py -m bmnas search --data "$tmp/data" --out "$tmp/$1-$2" --device "$1" --set precision="$2" \
    --quiet "${sets[@]}" > /dev/null
  $py - "$tmp/$1-$2" "$run" <<'PY'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
n = json.loads((run / "fingerprint.json").read_text())["data"]["sizes"]["train"]
cells = [c["inputs"] for c in json.loads((run / "genotype.json").read_text())["cells"]]
print(json.dumps({"run": sys.argv[2], "samples_per_s": round(n * len(rows) / sum(r["seconds"] for r in rows), 1),
                  "epoch_seconds": [round(r["seconds"], 2) for r in rows],
                  "val_accuracy": rows[-1]["val"]["accuracy"], "cells": cells}))
PY
done
