#!/usr/bin/env bash
# Re-create the shipped model (kws/pretrained/) from the real data, with the project's own commands.
#   bash scripts/make_pretrained.sh [DATA] [RUN]      (default DATA=../shared/data, RUN=runs/pretrained)
# Training is repeatable bit for bit on the same machine type and library versions (seeded, one thread,
# CPU kernels, fixed thread count); the export is deterministic given the checkpoint.
set -euo pipefail
DATA=${1:-../shared/data}
RUN=${2:-runs/pretrained}
KWS=${KWS:-.venv/bin/kws}
SC="$DATA/speech_commands_test_set_v0.02 $DATA/speech_commands_v0.01_sample $DATA/speech_commands_v0.02_sample"
SC="$SC $DATA/speech_commands_v0.01_partial"  # every real Speech Commands folder (issue: all the real data)

if [ ! -f "$RUN/best.pt" ]; then
    # shellcheck disable=SC2086
    $KWS train --data $SC --negatives "$DATA/wake_word_negatives" --threads 1 --seed 0 --out "$RUN"
fi
# shellcheck disable=SC2086
$KWS evaluate "$RUN/best.pt" --data "$DATA/speech_commands_test_set_v0.02" --split test --out "$RUN/eval-archive-test"
$KWS export "$RUN/best.pt" -o "$RUN/export" --calibration "$DATA/speech_commands_test_set_v0.02" \
    --data "$DATA/speech_commands_test_set_v0.02" --quantization both
$KWS bench --checkpoint "$RUN/best.pt" --models "$RUN/export" --data "$DATA/speech_commands_test_set_v0.02" \
    --negatives "$DATA/wake_word_negatives" --stream-minutes 60 --out "$RUN/bench"
mkdir -p kws/pretrained
cp "$RUN/export/kws.stream.int8.onnx" "$RUN/export/kws.int8.onnx" "$RUN/export/kws.export.json" kws/pretrained/
cp "$RUN/bench/bench.md" kws/pretrained/BENCH.md
cp "$RUN/bench/accuracy.png" "$RUN/bench/det_curve.png" kws/pretrained/
"$(dirname "$KWS")/python" scripts/model_card.py "$RUN/best.pt" kws/pretrained/kws.export.json "$RUN/bench/bench.json" \
    kws/pretrained/MODEL_CARD.md
echo "shipped: $(ls kws/pretrained)"
