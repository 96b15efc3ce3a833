#!/usr/bin/env bash
# Every accuracy and calibration figure of models/MODEL_CARD.md for one
# checkpoint, in one run (issue 20 section 4, issue 17 section 3):
#
#   scripts/model_card_figures.sh CHECKPOINT [OUT_DIR]
#
# - FER2013 PublicTest on the ground-truth crops, plain and with flip
#   averaging (the node's flip_tta);
# - synthetic RGB-D faces of 12 subjects never trained on, through the
#   detector, with depth and colour-only (--no-depth: the depth FEN's
#   contribution), for the classic renderer and the wide + Kinect-noise one;
# - calibration: the temperature refitted from the raw network on the same
#   half of PublicTest as the trainer's --calibrate (seed 0), ECE and
#   reliability diagrams before/after on the other half and on both
#   synthetic sets;
# - the astronaut photo through cmcnn-recognize.
#
# Needs `make setup` (the venv and messages) and FER2013 at $FER2013
# (default ../shared/data/fer2013/fer2013.csv.gz). The synthetic test sets
# are rendered into data/ when missing (about 3 min each on 2 cores). Each
# evaluation writes OUT_DIR/NAME/metrics.json and a confusion matrix; the
# summary lines are collected in OUT_DIR/summary.jsonl.
set -euo pipefail

ckpt=${1:?usage: scripts/model_card_figures.sh CHECKPOINT [OUT_DIR]}
out=${2:-runs/model_card}
fer=${FER2013:-../shared/data/fer2013/fer2013.csv.gz}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
[[ -f "$ckpt" ]] || { echo "[model-card] no checkpoint at $ckpt: give the file cmcnn-train wrote" >&2; exit 2; }
[[ -f "$fer" ]] || { echo "[model-card] no FER2013 at $fer: set FER2013=PATH/TO/fer2013.csv.gz" >&2; exit 2; }
[[ -f .venv/bin/activate ]] || { echo "[model-card] no .venv: run make setup first" >&2; exit 2; }
# shellcheck disable=SC1091
source .venv/bin/activate
# shellcheck disable=SC1091
[[ -f .ros_prefix/env.sh ]] && source .ros_prefix/env.sh
mkdir -p "$out"
summary="$out/summary.jsonl"
: > "$summary"

# The held-out synthetic subjects (5000-5011; training used 0-71).
synth() {
  local dir=$1; shift
  [[ -f "$dir/labels.csv" ]] && return 0
  cmcnn-synth --out "$dir" --subjects 12 --subject-offset 5000 --per-class 2 --classes 7 --seed 77 --workers 2 \
    --no-progress "$@"
}
synth data/synth_test
synth data/synth_test_wide --yaw 35 --pitch 20 --roll 30 --distance 0.5 2.6 --variation wide --depth-noise kinect

evaluate() {
  local name=$1; shift
  echo "[model-card] $name"
  cmcnn-evaluate --checkpoint "$ckpt" --output-dir "$out/$name" --no-progress --log-level WARNING "$@" \
    | tail -n 1 | python -c "import json,sys; d=json.load(sys.stdin); d['name']='$name'; print(json.dumps(d))" \
    >> "$summary"
}
evaluate publictest --dataset fer2013 --root "$fer" --dataset-option usage=PublicTest --box-mode gt
evaluate publictest_flip --dataset fer2013 --root "$fer" --dataset-option usage=PublicTest --box-mode gt --tta-flip
for set in synth_test synth_test_wide; do
  evaluate "$set" --dataset kinect --root "data/$set"
  evaluate "${set}_min3" --dataset kinect --root "data/$set" --min-intensity 3
  evaluate "${set}_min3_no_depth" --dataset kinect --root "data/$set" --min-intensity 3 --no-depth
done

echo "[model-card] calibration"
cmcnn-calibrate --checkpoint "$ckpt" --output "$out/calibration/recalibrated.pt" --overwrite \
  --dataset fer2013 --root "$fer" --dataset-option usage=PublicTest --box-mode gt --seed 0 --from-temperature 1 \
  --report kinect:data/synth_test:detect --report kinect:data/synth_test_wide:detect \
  --report-dir "$out/calibration" --no-progress --log-level WARNING > /dev/null
rm -f "$out/calibration/recalibrated.pt"   # the figures are the point, not a second checkpoint

echo "[model-card] astronaut"
python - "$ckpt" "$out/astronaut.json" <<'EOF'
import json
import sys

import cv2
import skimage.data

from cmcnn_ros.inference import Recognizer

rec = Recognizer.from_checkpoint(sys.argv[1], device="cpu")
faces = rec.recognize(cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)).faces
doc = [{"expression": f.expression, "confidence": float(f.confidence), "alignment": f.alignment} for f in faces]
with open(sys.argv[2], "w") as fh:
    json.dump(doc, fh)
EOF
cat "$out/astronaut.json"; echo
echo "[model-card] done: $summary, $out/calibration/calibration.json"
