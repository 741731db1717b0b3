#!/usr/bin/env bash
# The one GPU check (issue 22): run on a machine with a CUDA GPU; prints one markdown table to paste
# into benchmarks/README.md with the date and the machine. Each step runs under `timeout`.
#   bash benchmarks/gpu_check.sh [--authors DIR] [--cpu-smoke]
# PYTHON: the interpreter (default: .venv/bin/python where it exists, else python).
# --cpu-smoke: tiny sizes on the CPU (no suite, no GPU): checks that the script runs.
# --authors DIR: a checkout of Somedaywilldo/BM-NAS (its row is not implemented yet: reported as such).
set -uo pipefail
default_py=python; [ -x .venv/bin/python ] && default_py=.venv/bin/python  # make install's venv
py=${PYTHON:-$default_py}; smoke=0; authors=""
while [ $# -gt 0 ]; do
  case "$1" in --cpu-smoke) smoke=1 ;; --authors) authors="$2"; shift ;; *) echo "unknown option $1" >&2; exit 2 ;; esac
  shift
done
if [ "$smoke" = 1 ]; then dev=cpu; iter=(--device cpu --n 200 --C 8 --L 4 --batch 32 --epochs 1 --graphs on,off)
else dev=cuda; iter=(--device cuda); fi
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
[ "$smoke" = 0 ] && iter+=(--C "${C_MMIMDB:-192}")
[ "$smoke" = 0 ] && iter+=(--C "${C_MMIMDB:-192}")
timeout 180 $py benchmarks/gpu_iter.py "${iter[@]}" 2>/dev/null || echo "| search iteration (MM-IMDB-sized) | $dev | | | failed or timed out | | |"
[ "$smoke" = 0 ] && { timeout 120 $py benchmarks/gpu_iter.py --device cuda --C 128 --L 8 --precisions fp32 || echo "| search iteration (NTU-sized) | cuda | | | failed or timed out | | |"; }
if [ -n "$authors" ] && [ -d "$authors" ]; then echo "| authors' hypernet ($authors) | $dev | | | not implemented yet | | |"
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
