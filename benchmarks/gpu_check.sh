#!/usr/bin/env bash
# The one GPU check (issue 22): run on a machine with a CUDA GPU; prints one markdown table to paste
# into benchmarks/README.md with the date and the machine. Each step runs under `timeout`.
#   bash benchmarks/gpu_check.sh [--authors DIR] [--cpu-smoke]
# PYTHON: the interpreter (default: .venv/bin/python where it exists, else python).
# --cpu-smoke: tiny sizes on the CPU (no suite, no GPU): checks that the script runs.
# --authors DIR: a checkout of Somedaywilldo/BM-NAS: their hypernet's search iteration on the same
#   device (benchmarks/authors_iter.py) beside bmnas' MM-IMDB- and NTU-sized rows, and the ratio.
# C_MMIMDB: the MM-IMDB rows' C (default 192, the paper's), for bmnas and the authors alike.
# THREADS: torch CPU threads of both bmnas' and the authors' rows (default: 1 with --cpu-smoke;
#   else bmnas' policy and torch's default).
set -uo pipefail
default_py=python; [ -x .venv/bin/python ] && default_py=.venv/bin/python  # make install's venv
py=${PYTHON:-$default_py}; smoke=0; authors=""
while [ $# -gt 0 ]; do
  case "$1" in --cpu-smoke) smoke=1 ;; --authors) authors="$2"; shift ;; *) echo "unknown option $1" >&2; exit 2 ;; esac
  shift
done
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
[ "$smoke" = 1 ] && THREADS=${THREADS:-1}
th=(); [ -n "${THREADS:-}" ] && th=(--threads "$THREADS")
if [ "$smoke" = 1 ]; then
  dev=cpu; tiny=(--C 8 --L 4 --batch 8)
  bm=(--device cpu --n 200 --epochs 1 "${tiny[@]}" "${th[@]}"); mm=(--graphs on,off); nt=(--precisions fp32 --graphs off)
  au=(--device cpu --iters 2 --warmup 1 "${tiny[@]}" "${th[@]}"); au_mm=(); t_au=120
else
  dev=cuda; bm=(--device cuda "${th[@]}"); mm=(--C "${C_MMIMDB:-192}"); nt=(--precisions fp32)
  au=(--device cuda "${th[@]}"); au_mm=(--C "${C_MMIMDB:-192}"); t_au=300
fi
machine=$($py -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')")
echo "## GPU check $(date -u +%F) on ${machine} (torch $($py -c 'import torch; print(torch.__version__)'))"
echo
echo "| what | device | precision | graphs | time | kernels/iter | GPU busy |"
echo "|---|---|---|---|---|---|---|"
if [ "$smoke" = 0 ]; then
  if timeout 300 env BMNAS_TEST_DEVICE=cuda $py -m pytest -q -p no:cacheprovider -x tests > /tmp/gpu_check_suite.log 2>&1
  then echo "| test suite, BMNAS_TEST_DEVICE=cuda | cuda | | | $(tail -1 /tmp/gpu_check_suite.log) | | |"
  else echo "| test suite, BMNAS_TEST_DEVICE=cuda | cuda | | | FAILED: $(tail -1 /tmp/gpu_check_suite.log) | | |"; fi
fi
timeout 180 $py benchmarks/gpu_iter.py --preset mmimdb "${bm[@]}" "${mm[@]}" --json "$tmp/bm_mmimdb.json" 2>/dev/null \
  || echo "| search iteration (MM-IMDB-sized) | $dev | | | failed or timed out | | |"
timeout 120 $py benchmarks/gpu_iter.py --preset ntu "${bm[@]}" "${nt[@]}" --json "$tmp/bm_ntu.json" 2>/dev/null \
  || echo "| search iteration (NTU-sized) | $dev | | | failed or timed out | | |"
if [ -n "$authors" ]; then
  for d in mmimdb ntu; do
    extra=(); [ "$d" = mmimdb ] && extra=("${au_mm[@]}")
    timeout "$t_au" $py benchmarks/authors_iter.py --authors "$authors" --dataset "$d" "${au[@]}" "${extra[@]}" \
      --json "$tmp/au_$d.json" 2> "$tmp/au_$d.err" \
      || echo "| authors' hypernet iteration ($d) | $dev | fp32 | | failed or over ${t_au} s: $(tail -1 "$tmp/au_$d.err" | tr '|' '/') | | |"
  done
  $py - "$tmp" "$dev" <<'PY'
import json, pathlib, sys
tmp, dev = pathlib.Path(sys.argv[1]), sys.argv[2]
for d in ("mmimdb", "ntu"):
    bm, au = tmp / f"bm_{d}.json", tmp / f"au_{d}.json"
    if not (bm.is_file() and au.is_file()):
        print(f"| bmnas ÷ authors ({d}) | {dev} | fp32 | | missing a row | | |")
        continue
    a = json.loads(au.read_text())
    for r in json.loads(bm.read_text()):
        if r["precision"] == "fp32":
            q = r["ms"] / a["ms"]
            print(f"| bmnas ÷ authors ({d}, b={r['batch']}) | {dev} | fp32 | {r['graphs']} | "
                  f"{r['ms']:.2f} / {a['ms']:.2f} ms = {q:.3f} (authors {1 / q:.1f}× slower) | | |")
PY
else echo "| authors' hypernet | | | | skipped (no --authors DIR) | | |"; fi
if [ "$smoke" = 0 ]; then
  for d in cuda cpu auto; do  # auto: the probe's choice per phase (run.log's "device auto:" lines)
    t0=$(date +%s.%N); out="$(mktemp -d)/run"
    if timeout 240 $py -m bmnas run --dataset avmnist --device "$d" --out "$out" > /dev/null 2>&1
    then chose=$(grep -o 'device auto: .*' "$out/run.log" 2>/dev/null | paste -sd ';' -)
      echo "| bmnas run --dataset avmnist ${chose:+($chose)} | $d | fp32 | auto | $(echo "$(date +%s.%N) - $t0" | bc) s | | |"
    else echo "| bmnas run --dataset avmnist | $d | fp32 | auto | failed or over 240 s | | |"; fi
  done
fi
