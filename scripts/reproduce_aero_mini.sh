#!/usr/bin/env bash
# Reproduce aero-mini v1 (stage 2d, the first release) from nothing: synthesize the data, run the
# five training legs that made it, and evaluate the result on the held-out sets. The shipped v2
# is replayed from its lineage by `python scripts/aero_mini_v2.py replay`.
#
#   bash scripts/reproduce_aero_mini.sh [WORKDIR]          # the full recipe (~8 h on 2 CPU cores: docs/training.md)
#   bash scripts/reproduce_aero_mini.sh --smoke [WORKDIR]  # every step, a few samples and steps each
#   bash scripts/reproduce_aero_mini.sh --ship [WORKDIR]   # also ship the result (v1 replaces v2)
#
# WORKDIR (default: the repository root) receives data/, runs/ and eval-results/. Rerun the same
# command to resume: finished steps are skipped (WORKDIR/runs/.done/), an interrupted synthesis
# reuses the audio it wrote, an interrupted training leg goes on from its last checkpoint.
# Each leg's numbers (steps, data, rates) are those of v1's run; see docs/aero-mini.md.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
SMOKE=0
SHIP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --ship) SHIP=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    -*) echo "unknown option: $1" >&2; exit 2 ;;
    *) break ;;
  esac
  shift
done
WORK="${1:-$REPO}"
mkdir -p "$WORK/runs/.done"
cd "$WORK"
[ -x "$REPO/.venv/bin/aero" ] && PATH="$REPO/.venv/bin:$PATH"
command -v aero >/dev/null || { echo "aero is not installed: run bash scripts/setup.sh first" >&2; exit 1; }
PYTHON="$(dirname "$(command -v aero)")/python"

# Samples per synthesized split and steps per training leg. The smoke run keeps every step but
# shrinks it to seconds, to check that the chain holds together before spending hours on it.
if [ "$SMOKE" = 1 ]; then
  SAMPLES=(--samples 6)
  ALIGN=(max_steps=2 save_every=1 eval_every=1 eval_samples=2)
  LM=(save_every=1 eval_every=1000)
  S2_FIRST=1; S2_STEPS=2; S2B=2; S2C=2; S2D=2
  EVAL=(--limit 2 --long-limit 1)
else
  SAMPLES=()
  ALIGN=(max_steps=300)   # the shipped stage 1 stopped at step 300 of its 400-step schedule
  LM=()
  S2_FIRST=280; S2_STEPS=640; S2B=300; S2C=160; S2D=60
  EVAL=(--limit 120 --long-limit 6)
fi

# step NAME COMMAND...: run COMMAND once; a finished step leaves runs/.done/NAME.
step() {
  local name="$1"; shift
  if [ -e "runs/.done/$name" ]; then echo "== $name: done earlier"; return; fi
  echo "== $name: $*"
  "$@"
  touch "runs/.done/$name"
}

synth() {  # synth OUT RECIPE SEED
  aero data synth "$1" --recipe "$2" --seed "$3" --workers 2 "${SAMPLES[@]}"
}

step data-train synth data/aero-mini "$REPO/configs/data/aero-mini-train.yaml" 0
step data-heldout synth data/aero-mini-heldout heldout 0
step data-long synth data/aero-mini-long "$REPO/configs/data/aero-mini-long.yaml" 0
step data-flite synth data/aero-mini-flite "$REPO/configs/data/aero-mini-flite.yaml" 1

C="$REPO/configs"
step stage1-align aero train "$C/aero-mini-align.yaml" "${ALIGN[@]}"
# Stage 2 ran to step 280 on its first schedule, then went on to 640 (the cosine stretched there).
step stage2-first aero train "$C/aero-mini.yaml" max_steps=$S2_FIRST "${LM[@]}"
step stage2 aero train "$C/aero-mini.yaml" max_steps=$S2_STEPS "${LM[@]}"
step stage2b aero train "$C/aero-mini-continue.yaml" max_steps=$S2B "${LM[@]}"
step stage2c aero train "$C/aero-mini-voices.yaml" max_steps=$S2C "${LM[@]}"
step stage2d aero train "$C/aero-mini-rebalance.yaml" max_steps=$S2D "${LM[@]}"

ADAPTER=runs/aero-mini-2d/final/adapter.safetensors
step eval "$PYTHON" "$REPO/scripts/eval_aero_mini.py" data/aero-mini-heldout --adapter "$ADAPTER" \
  --output eval-results/aero-mini-2d "${EVAL[@]}"
if [ "$SHIP" = 1 ]; then
  "$PYTHON" "$REPO/scripts/ship_aero_mini.py" runs/aero-mini-2d
else
  echo "adapter: $WORK/$ADAPTER (ship it with: python scripts/ship_aero_mini.py $WORK/runs/aero-mini-2d)"
fi
