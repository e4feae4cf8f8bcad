#!/usr/bin/env bash
# Re-create the shipped model (kws/pretrained/) from the real data, with the project's own commands.
#   bash scripts/make_pretrained.sh [DATA] [RUN]      (default DATA=../shared/data, RUN=runs/pretrained)
# Stage 1 is repeatable bit for bit on the same machine type and library versions (seeded, one thread, CPU
# kernels); stage 2 runs at the default thread count (2 here) and is seeded; the export is deterministic given
# the checkpoint. Both stages resume where they were interrupted; a finished stage (test.json) is skipped.
set -euo pipefail
DATA=${1:-../shared/data}
RUN=${2:-runs/pretrained}
KWS=${KWS:-.venv/bin/kws}
SC="$DATA/speech_commands_test_set_v0.02 $DATA/speech_commands_v0.01_sample $DATA/speech_commands_v0.02_sample"
SC="$SC $DATA/speech_commands_v0.01_partial"  # every real Speech Commands folder (issue: all the real data)

BASE="$RUN/base"      # stage 1: whole-clip training (kws train defaults, all the data)
STREAM="$RUN/stream"  # stage 2: fine-tuned on long training streams (issue #9: the state carried, one lane)
SHIP="$STREAM/last.pt"

train_stage() {  # OUT ARGS...: train into OUT unless it is finished (test.json); resume an interrupted run
    local out=$1
    shift
    if [ -f "$out/test.json" ]; then return; fi
    if [ -f "$out/last.pt" ]; then
        $KWS train --resume --out "$out"
    else
        $KWS train "$@" --out "$out"
    fi
}
# Measured, not shipped (README, "More data, measured"): stage 1 distilled from the teacher, i.e.
#   kws teacher --data $SC --negatives ... --soft-label-folds 5 --out $RUN/teacher   (needs the `teacher` extra), then
#   --seed 1 --teacher $RUN/teacher --distill-weight 0.5 --distill-temperature 2 --embed-distill-weight 1 here;
# it wins stage 1's validation on two seeds, but after stage 2 (one run) it lost 0.5 points of validation and
# 3 points of stream recall at the default threshold, so the shipped model keeps this recipe.
# shellcheck disable=SC2086
train_stage "$BASE" --data $SC --negatives "$DATA/wake_word_negatives" --threads 1 --seed 0
# Stage 2 ships its last epoch: the stream loss is what it is for, and its whole-clip validation accuracy stays
# within noise of stage 1's (seed 1 was chosen over seed 0 on that validation accuracy, 89.42% vs 89.13%).
# shellcheck disable=SC2086
train_stage "$STREAM" --data $SC --negatives "$DATA/wake_word_negatives" --init-from "$BASE/best.pt" \
    --stream-weight 1 --stream-seconds 12 --stream-batch 4 --epochs 10 --lr 1e-3 --seed 1
# shellcheck disable=SC2086
$KWS evaluate "$SHIP" --data "$DATA/speech_commands_test_set_v0.02" --split test --out "$RUN/eval-archive-test"
$KWS export "$SHIP" -o "$RUN/export" --calibration "$DATA/speech_commands_test_set_v0.02" \
    --data "$DATA/speech_commands_test_set_v0.02" --quantization both
$KWS bench --checkpoint "$SHIP" --models "$RUN/export" --data "$DATA/speech_commands_test_set_v0.02" \
    --negatives "$DATA/wake_word_negatives" --stream-minutes 60 --negative-hours 6 --out "$RUN/bench"
mkdir -p kws/pretrained
cp "$RUN/export/kws.stream.int8.onnx" "$RUN/export/kws.int8.onnx" "$RUN/export/kws.export.json" kws/pretrained/
cp "$RUN/bench/bench.md" kws/pretrained/BENCH.md
cp "$RUN/bench/accuracy.png" "$RUN/bench/det_curve.png" kws/pretrained/
"$(dirname "$KWS")/python" scripts/model_card.py "$SHIP" kws/pretrained/kws.export.json "$RUN/bench/bench.json" \
    kws/pretrained/MODEL_CARD.md
echo "shipped: $(ls kws/pretrained)"
