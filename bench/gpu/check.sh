#!/usr/bin/env bash
# A GPU slot's whole check, run there from the repo root once bench/gpu/prepare.sh has filled .devrun/:
#   bash bench/gpu/check.sh OUT              sections 1-8, about 8 minutes on an H100/H200
#   bash bench/gpu/check.sh --quick OUT      sections 1-4 (info, cuda tests, HF parity, training parity)
#   bash bench/gpu/check.sh --dry-run OUT    here, with the gptcore already installed (a CPU build): every
#                                            script runs on the CPU at smoke size; CUDA sections say skipped
#   --only tests,decode   just these sections;  --tests 'PYTEST ARGS'   other tests than every cuda-marked one
#   --budget SECONDS      the whole run's limit (default 470, --quick 220)
# Sections, each under its own time limit (and within --budget seconds in all), so that one failure or
# hang costs only itself: 1 info and device, 2 the cuda-marked tests, 3 GPT-2 logits vs HF (fp32, bf16),
# 4 50 training steps vs the CPU's losses, 5 op benchmarks vs PyTorch (and the copy / matmul ceilings),
# 6 GPT-2 124M bf16 training vs torch.compile + SDPA (and its kernel profile), 7 decode vs HF generate
# (and GPT-2 1.5B against the memory-bandwidth bound), 8 compute-sanitizer memcheck and racecheck on every op.
# OUT receives report.md, report.json (every number with its baseline and ratio, every failure with its
# log tail) and check.log (every section's whole output); nothing else, since a slot returns few files.
set -uo pipefail
cd "$(dirname "$0")/../.."

MODE=full DRY=0 OUT="" BUDGET="" ONLY="" TESTS="tests/python"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) MODE=quick ;;
    --dry-run) DRY=1 ;;
    --budget) BUDGET=$2; shift ;;
    --only) ONLY=",$2,"; shift ;;
    --tests) TESTS=$2; shift ;;
    -h | --help) awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0"; exit 0 ;;
    -*) echo "check: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) OUT=$1 ;;
  esac
  shift
done
[[ -n "$OUT" ]] || { echo "usage: bash bench/gpu/check.sh [--quick] [--dry-run] [--only S,S] [--tests ARGS] [--budget SECONDS] OUTDIR" >&2; exit 2; }
[[ -n "$BUDGET" ]] || BUDGET=$([[ $MODE == quick ]] && echo 220 || echo 470)
mkdir -p "$OUT" && : >"$OUT/check.log"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/bench${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
START=$SECONDS
: >"$WORK/sections.tsv"

log() { echo "$*" | tee -a "$OUT/check.log"; }

# section NAME LIMIT KIND COMMAND...: run COMMAND under min(LIMIT, what the budget has left), keep its
# output, and record (name, kind, limit, rc, seconds). KIND: gpu (skipped in a dry run after its CPU
# smoke run) or any (judged in a dry run too).
section() {
  local name=$1 limit=$2 kind=$3 rc t0 left
  shift 3
  [[ -z "$ONLY" || "$ONLY" == *",$name,"* ]] || return 0
  left=$((BUDGET - (SECONDS - START) - 10))
  ((limit > left)) && limit=$left
  if ((limit < 15)); then
    log "=== $name: not run, the ${BUDGET}s budget is spent"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$kind" 0 out-of-time 0 >>"$WORK/sections.tsv"
    return
  fi
  log "=== $name (limit ${limit}s): $*"
  t0=$SECONDS
  timeout -k 10 "$limit" "$@" >"$WORK/$name.log" 2>&1
  rc=$?
  cat "$WORK/$name.log" >>"$OUT/check.log"
  tail -n 4 "$WORK/$name.log"
  log "=== $name: exit $rc after $((SECONDS - t0))s"
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$kind" "$limit" "$rc" "$((SECONDS - t0))" >>"$WORK/sections.tsv"
}

# 0. gptcore from the wheels in .devrun/ (no index there); the ignored folder travels with `carry`.
if ((DRY == 0)); then
  log "=== install from .devrun/"
  if ! ls .devrun/gptcore-*.whl >/dev/null 2>&1; then
    log "check: no .devrun/gptcore-*.whl; run bash bench/gpu/prepare.sh first and carry .devrun"
    exit 2
  fi
  if ! timeout 180 "$PY" -m pip install -q --no-index --no-deps --no-compile --force-reinstall .devrun/*.whl \
    >>"$OUT/check.log" 2>&1; then
    # A read-only environment: a folder of our own, with the nvidia-* libraries found beside torch's.
    log "check: pip could not install into $PY's environment; installing into /tmp/gptcore-site"
    timeout 180 "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/gptcore-site .devrun/*.whl \
      >>"$OUT/check.log" 2>&1 || { log "check: install failed (see check.log)"; exit 2; }
    export PYTHONPATH="/tmp/gptcore-site:$PYTHONPATH"
    NV=$("$PY" -c "import nvidia, os; r = list(nvidia.__path__)[0]; print(':'.join(os.path.join(r, d) for d in ('cu13/lib', 'nccl/lib')))" 2>/dev/null)
    export LD_LIBRARY_PATH="$NV:/tmp/gptcore-site/scipy_openblas32/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
fi
if ! "$PY" -c "import gptcore._C" 2>>"$OUT/check.log"; then
  # The extension (through libgptcore.so) needs libgomp.so.1; without a system copy, use the one a wheel (torch) bundles.
  GOMP=$("$PY" -c "import glob, os, site; print(next(iter(sorted(glob.glob(os.path.join(site.getsitepackages()[0], '**', 'libgomp*.so*'), recursive=True))), ''))")
  if [[ -n "$GOMP" ]]; then
    mkdir -p /tmp/gptcore-libs && ln -sf "$GOMP" /tmp/gptcore-libs/libgomp.so.1
    export LD_LIBRARY_PATH="/tmp/gptcore-libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    log "check: import gptcore._C failed; retrying with $GOMP as libgomp.so.1"
  fi
fi
TIMEOUT_OPT=()
"$PY" -c "import pytest_timeout" 2>/dev/null && TIMEOUT_OPT=(--timeout 90)

# 1. What was built, and the device (device.json also heads the report when --only leaves out section 1).
"$PY" - >"$WORK/device.json" 2>>"$OUT/check.log" <<'EOF'
import json, torch, gptcore
info = {"torch": torch.__version__, "cuda": torch.version.cuda, "build": gptcore._build_info()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info["device"] = {"name": p.name, "sm": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count,
                      "memory_gib": round(p.total_memory / 2**30, 1)}
print(json.dumps(info))
EOF
info() {
  "$PY" -m gptcore info || return 1
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm \
    --format=csv
  echo "INFO $(cat "$WORK/device.json")"
}
export PY WORK
export -f info
section info 60 any bash -c info

# 2. Every cuda-marked test (all skipped without a GPU).
# shellcheck disable=SC2086  # TESTS is a list of pytest arguments
section tests 180 gpu "$PY" -m pytest -m cuda $TESTS -q -p no:cacheprovider -o addopts="" -rfE \
  "${TIMEOUT_OPT[@]}" --junitxml="$WORK/tests.xml"

# 3. GPT-2 logits vs HF transformers, fp32 and bf16.
if ((DRY)); then
  section hf_parity 120 gpu "$PY" bench/gpu/hf_parity.py --device cpu --preset tiny --dtypes float32 --seq-len 64 \
    --json "$WORK/hf_parity.json"
else
  section hf_parity 120 gpu "$PY" bench/gpu/hf_parity.py --json "$WORK/hf_parity.json"
fi

# 4. 50 training steps on the GPU against the CPU's losses.
if ((DRY)); then
  section train_parity 240 gpu "$PY" bench/gpu/train_parity.py --devices cpu --steps 5 --json "$WORK/train_parity.json"
else
  section train_parity 150 gpu "$PY" bench/gpu/train_parity.py --json "$WORK/train_parity.json"
fi

if [[ $MODE == full ]]; then
  # 5. The ops against PyTorch's, with the device's copy and matmul ceilings measured first.
  if ((DRY)); then
    section ops 180 gpu "$PY" bench/bench_ops.py --device cpu --rows 256 --V 1000 --ops layer_norm,cross_entropy,linear,attention \
      --attn 1,2,64,64 --warmup 1 --reps 2 --json "$WORK/ops.json"
  else
    section ops 120 gpu "$PY" bench/bench_ops.py --device cuda --dtype bfloat16 \
      --ops ceilings,layer_norm,cross_entropy,adamw,linear,attention --attn-sweep --warmup 3 --reps 15 --json "$WORK/ops.json"
  fi

  # 6. GPT-2 124M bf16 training step: gptcore vs the same model under torch.compile with SDPA.
  if ((DRY)); then
    section train_bench 180 gpu "$PY" bench/bench_train.py --device cpu --preset tiny --seq-len 64 --batch 2 --warmup 1 \
      --steps 1 --rounds 1 --json "$WORK/train_bench.json"
  else
    section train_bench 150 gpu "$PY" bench/bench_train.py --device cuda --json "$WORK/train_bench.json"
  fi

  # 6b. Where gptcore's step spends its device time, kernel by kernel (what to speed up next).
  if ((DRY)); then
    section profile 120 gpu "$PY" bench/gpu/profile_step.py --device cpu --preset tiny --batch 2 --seq-len 64 \
      --json "$WORK/profile.json"
  else
    section profile 60 gpu "$PY" bench/gpu/profile_step.py --json "$WORK/profile.json"
  fi

  # 7. Decode: batch 1 and 16 against HF generate (eager attention), then GPT-2 1.5B against the bandwidth bound.
  if ((DRY)); then
    section decode 180 gpu "$PY" bench/bench_generate.py --device cpu --tiny --batch 1 2 --new-tokens 8 --rounds 1 \
      --json "$WORK/decode.json"
  else
    section decode 100 gpu "$PY" bench/bench_generate.py --device cuda --batch 1 16 --hf-attn eager --rounds 3 \
      --json "$WORK/decode.json"
    section decode_bandwidth 90 gpu "$PY" bench/bench_generate.py --device cuda --bandwidth --rounds 3 \
      --json "$WORK/decode_bandwidth.json"
  fi

  # 8. compute-sanitizer on one call of every op (where the machine's runtime allows it).
  if ((DRY)); then
    section sanitizer 120 gpu "$PY" bench/gpu/ops_smoke.py --device cpu
  elif command -v compute-sanitizer >/dev/null; then
    section memcheck 60 gpu compute-sanitizer --tool memcheck --error-exitcode 3 "$PY" bench/gpu/ops_smoke.py
    section racecheck 60 gpu compute-sanitizer --tool racecheck --error-exitcode 3 "$PY" bench/gpu/ops_smoke.py
  fi
fi

"$PY" bench/gpu/report.py --work "$WORK" --out "$OUT" --mode "$MODE" --dry-run "$DRY" --elapsed $((SECONDS - START))
rc=$?
log "check: $((SECONDS - START))s in all; report in $OUT/report.md"
exit $rc
