#!/usr/bin/env bash
# `make gpu-check`: on a CUDA machine, the GPU numbers and the compiled-kernel tests, every result
# written as its step finishes. Works from a bare copy of the repository (no install, no native
# build): torch, triton, pytest and hypothesis are all it needs.
#
#   bash scripts/gpu_check.sh              every step (budgets below: 540 s in all)
#   bash scripts/gpu_check.sh --quick      env, the loss benchmark at M = 8192, the fast tests and
#                                          the loss table (budgets: 370 s)
#   bash scripts/gpu_check.sh --dry-run    real imports and test collection, then each step's
#                                          command, budget and output file; no CUDA needed
#
# Results: every step writes into bench/results/gpu-check/ (in the tree) and, after each step,
# into $OUT when it is set: summary.md (each step's status, time, budget and tables, appended as it
# finishes), gpu-check.log (everything printed) and results.tar.gz (every file of every step so
# far). That is 3 files, inside a device machine's limits on what comes back. A failing or slow
# step is recorded and the next one runs; the exit status is the first failure's.
#
# Budgets (seconds, `timeout` per step; a step killed at its budget keeps what it wrote):
#   env 30 · gpu_loss 150 · tests 150 · loss table 50 · augmentation 40 · data 40 · train 40 ·
#   gradcache 40 (ResNet-50 224² bf16, batch 4,096 in chunks of 512, one round: issue 21) = 540
# The first GPU session measured none of them; they are sized from the CPU dry run and the
# compile counts (~100 kernel compiles over 8 test processes).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
MODE=full
DRY=0
for arg in "$@"; do
  case "$arg" in
    --quick) MODE=quick ;;
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown option '$arg' (--quick, --dry-run)" >&2; exit 2 ;;
  esac
done
TOTAL_BUDGET=540
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # the package from this copy, never elsewhere
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
RES=${GPU_CHECK_RESULTS:-$ROOT/bench/results/gpu-check}  # where each step writes
[ "$DRY" -eq 1 ] && RES=$(mktemp -d)  # a dry run leaves the tree as it was
DEST=${OUT:-}
mkdir -p "$RES"
[ -n "$DEST" ] && mkdir -p "$DEST"
: > "$RES/gpu-check.log"
# An install maps kernels/ to fastclr.kernels; a bare copy gets the same mapping from a link.
if [ ! -e fastclr/kernels ] && ! "$PY" -c "import fastclr.kernels.triton" >/dev/null 2>&1; then
  ln -sfn ../kernels fastclr/kernels
  echo "[gpu-check] no fastclr install: linked kernels/ as fastclr/kernels" | tee -a "$RES/gpu-check.log"
fi

TESTS=(tests/test_triton_ntxent.py tests/test_triton_fused.py tests/test_augment_triton.py)
PARALLEL=()
"$PY" -c "import xdist" >/dev/null 2>&1 && PARALLEL=(-n 8)
TEST_ARGS=(-q -p no:cacheprovider -rfE ${PARALLEL[@]+"${PARALLEL[@]}"})
[ "$MODE" = quick ] && TEST_ARGS+=(-m "not slow")
LOSS_ARGS=(--out "$RES")
[ "$MODE" = quick ] && LOSS_ARGS+=(--quick)
# name | budget s | output under bench/results/gpu-check | command
STEPS=(
  "env|30|env.out|$PY scripts/gpu_env.py"
  "gpu_loss|150|gpu_loss.md|$PY bench/gpu_loss.py ${LOSS_ARGS[*]}"
  "tests|150|tests.out|env FASTCLR_TEST_COMPILED=1 FASTCLR_TRITON_AUTOTUNE=0 $PY -m pytest ${TEST_ARGS[*]} ${TESTS[*]}"
  "loss_table|50|throughput-loss|$PY bench/throughput.py --quick --only loss --out $RES/throughput-loss"
  "augment|40|throughput-augment|$PY bench/throughput.py --quick --only augment --out $RES/throughput-augment"
  "data|40|throughput-data|$PY bench/throughput.py --quick --only data --out $RES/throughput-data"
  "train|40|throughput-train|$PY bench/throughput.py --quick --only train --out $RES/throughput-train"
  "gradcache|40|gradcache|$PY bench/gradcache_bench.py --cuda --rounds 1 --out $RES/gradcache"
)
[ "$MODE" = quick ] && STEPS=("${STEPS[@]:0:3}" "${STEPS[3]/|50|/|40|}")
if [ -n "${GPU_CHECK_SELFTEST:-}" ]; then
  # The runner's own positive control (tests/test_gpu_check.py), no GPU: a step that fails, one
  # that outlives its budget, and one after them that must still run and reach $OUT.
  STEPS=("fails|5|fails.out|echo partial; exit 3" "slow|1|slow.out|echo started; sleep 30"
         "after|5|after.out|echo after ran")
fi

log() { echo "$*" | tee -a "$RES/gpu-check.log"; }

publish() {  # the results so far, into $OUT (3 files) — after every step
  [ -n "$DEST" ] || return 0
  cp "$RES/summary.md" "$RES/gpu-check.log" "$DEST/" 2>/dev/null
  tar -czf "$DEST/results.tar.gz" -C "$(dirname "$RES")" --transform "s,^$(basename "$RES"),gpu-check," \
    "$(basename "$RES")" 2>/dev/null
}

dry_run() {
  "$PY" scripts/gpu_env.py --imports-only || return 1
  log "[gpu-check] collecting the compiled-kernel tests"
  FASTCLR_TEST_COMPILED=1 FASTCLR_TRITON_AUTOTUNE=0 "$PY" -m pytest -q --collect-only \
    -p no:cacheprovider "${TESTS[@]}" | tail -n 1 | tee -a "$RES/gpu-check.log"
  "$PY" bench/gpu_loss.py --dry-run ${LOSS_ARGS[@]+"${LOSS_ARGS[@]}"} | tee -a "$RES/gpu-check.log" || return 1
  "$PY" bench/throughput.py --help >/dev/null || return 1
  local total=0
  for step in "${STEPS[@]}"; do
    IFS='|' read -r name budget output cmd <<<"$step"
    total=$((total + budget))
    log "[gpu-check] step $name: budget ${budget}s, output ${DEST:-\$OUT}/results.tar.gz:gpu-check/$output (+ summary.md): $cmd"
  done
  log "[gpu-check] $MODE: ${#STEPS[@]} steps, budgets add to ${total}s (limit ${TOTAL_BUDGET}s)"
  [ "$total" -le "$TOTAL_BUDGET" ] || { log "[gpu-check] budgets exceed ${TOTAL_BUDGET}s"; return 1; }
  log "[gpu-check] imports and collection ok"
}

if [ "$DRY" -eq 1 ]; then
  dry_run
  exit $?
fi
if [ -z "${GPU_CHECK_SELFTEST:-}" ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "[gpu-check] no CUDA device visible to torch: nothing to measure (try --dry-run)" >&2
  exit 2
fi

TABLES=$RES/tables.md
printf '# make gpu-check (%s), %s\n\n| step | status | seconds | budget | output |\n|---|---|---|---|---|\n' \
  "$MODE" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$RES/steps.md"
: > "$TABLES"
status=0
for step in "${STEPS[@]}"; do
  IFS='|' read -r name budget output cmd <<<"$step"
  log "[gpu-check] step $name (budget ${budget}s): $cmd"
  t0=$(date +%s)
  timeout --kill-after=10 "$budget" bash -c "$cmd" > "$RES/$name.out" 2>&1
  rc=$?
  dt=$(( $(date +%s) - t0 ))
  cat "$RES/$name.out" >> "$RES/gpu-check.log"
  case $rc in 0) what=ok ;; 124|137) what="timed out" ;; *) what="failed ($rc)" ;; esac
  [ "$rc" -ne 0 ] && [ "$status" -eq 0 ] && status=$rc
  echo "| $name | $what | $dt | $budget | gpu-check/$output, gpu-check/$name.out |" >> "$RES/steps.md"
  { echo; echo "## $name: $what in ${dt}s"; echo; echo '```'; tail -n 60 "$RES/$name.out"; echo '```'; } >> "$TABLES"
  cat "$RES/steps.md" "$TABLES" > "$RES/summary.md"
  publish
  log "[gpu-check] step $name: $what in ${dt}s"
done
log "[gpu-check] done ($MODE), exit $status; results in bench/results/gpu-check${DEST:+ and $DEST}"
exit "$status"
