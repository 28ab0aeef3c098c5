#!/usr/bin/env bash
# The README's quick start as a new user runs it: a fresh virtual environment (no cuBLAS or NCCL
# wheels), a copy of this checkout without its build folders, and the README's line exactly as
# written (`pip install torch==2.13.0 . && gptcore train`). Passes when the run trained all its
# steps and the loss fell by more than 2.
#   bash tests/quickstart.sh                 the whole quick start, in a temporary folder
#   bash tests/quickstart.sh --check RUN     only the check, on a finished run's save folder
# PYTHON picks the interpreter the venv is made from (default python3); the default corpus is
# built into $GPTCORE_CACHE (default ~/.cache/gptcore) on first use, as for any user.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}

check() {  # $1: the run's save folder (metrics.jsonl; the last checkpoint)
  "$PY" - "$1" <<'EOF'
import json, pathlib, sys

run = pathlib.Path(sys.argv[1])
steps = 200  # configs/tiny-cpu.yaml's train_steps
records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
losses = [(r["step"], r["loss"]) for r in records if "loss" in r]
problems = []
if not losses:
    problems.append("no training loss was logged")
else:
    (first_step, first), (last_step, last) = losses[0], losses[-1]
    print(f"quickstart: loss {first:.3f} at step {first_step} -> {last:.3f} at step {last_step}")
    if last_step != steps:
        problems.append(f"training stopped at step {last_step}, not {steps}")
    if not last < first - 2:
        problems.append(f"the loss did not fall by more than 2 ({first:.3f} -> {last:.3f})")
if not (run / f"step_{steps:08d}" / "COMPLETE").is_file():
    problems.append(f"no complete checkpoint step_{steps:08d} in {run}")
for p in problems:
    print(f"quickstart: FAILED: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
}

if [ "${1:-}" = "--check" ]; then
  check "${2:?usage: tests/quickstart.sh --check RUN_FOLDER}"
  exit
fi

line=$(awk '/^## Quick start/ { q = 1 } q && /^```bash/ { getline; print; exit }' "$root/README.md")
[ -n "$line" ] || { echo "quickstart: no command found under the README's '## Quick start'" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The checkout's files as git sees them (tracked and new, not ignored): no build folder, no runs/.
mkdir "$work/src"
(cd "$root" && git ls-files -z --cached --others --exclude-standard |
  while IFS= read -r -d '' f; do if [ -e "$f" ]; then printf '%s\0' "$f"; fi; done |
  xargs -0 cp --parents -t "$work/src")
"$PY" -m venv "$work/venv"

echo "quickstart: in a fresh venv, from a copy of the checkout: $line"
start=$SECONDS
(cd "$work/src" && source "$work/venv/bin/activate" && bash -euo pipefail -c "$line")
echo "quickstart: the quick start took $((SECONDS - start)) s"
"$work/venv/bin/gptcore" info
check "$work/src/runs/tiny-cpu"
