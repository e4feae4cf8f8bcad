#!/usr/bin/env bash
# Re-create the shipped model (kws/pretrained/) from the real data, with the project's own commands.
#   bash scripts/make_pretrained.sh [DATA] [RUN]      (default DATA=../shared/data, RUN=runs/pretrained)
# Training is repeatable bit for bit on the same machine type and library versions (seeded, deterministic
# CPU kernels, fixed thread count); the export is deterministic given the checkpoint.
set -euo pipefail
DATA=${1:-../shared/data}
RUN=${2:-runs/pretrained}
KWS=${KWS:-.venv/bin/kws}
SC="$DATA/speech_commands_test_set_v0.02 $DATA/speech_commands_v0.01_sample $DATA/speech_commands_v0.02_sample"

if [ ! -f "$RUN/best.pt" ]; then
    # shellcheck disable=SC2086
    $KWS train --data $SC --negatives "$DATA/wake_word_negatives" --threads 2 --seed 0 --out "$RUN"
fi
# shellcheck disable=SC2086
$KWS evaluate "$RUN/best.pt" --data "$DATA/speech_commands_test_set_v0.02" --split test --out "$RUN/eval-archive-test"
$KWS export "$RUN/best.pt" -o "$RUN/export" --calibration "$DATA/speech_commands_test_set_v0.02" \
    --data "$DATA/speech_commands_test_set_v0.02" --quantization both
mkdir -p kws/pretrained
cp "$RUN/export/kws.stream.int8.onnx" "$RUN/export/kws.int8.onnx" "$RUN/export/kws.export.json" kws/pretrained/
echo "shipped: $(ls kws/pretrained)"
