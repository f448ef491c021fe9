#!/usr/bin/env bash
# The guide's workflow on real data, end to end through the HTTP API: an ImageNet backbone at
# 160x160, flip + rotation 0.1, head GAP / dropout 0.2 / Dense(1); phase 1 head only (Adam 1e-3),
# phase 2 everything (Adam 1e-5) with batch norm in inference mode; train =
# cats_and_dogs_filtered/train, validation = its validation/. Then the same head phase from
# random initial weights, for comparison. Not part of CI (it takes minutes).
#
#   cargo build --release && benches/guide_run.sh                          # MobileNetV2 1.0, Keras weights
#   cargo build --release && ARCH=efficientnet_lite0 benches/guide_run.sh  # EfficientNet-Lite0
#
# Each backbone's input convention: MobileNetV2's Keras weights x / 127.5 - 1 (given in the
# spec), EfficientNet-Lite0's (x - 127) / 128 (the architecture's default, left out of the spec).
# Prints each epoch's validation accuracy and wall time. Needs curl and jq.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/tanuki}
PORT=${PORT:-8097}
HEAD_EPOCHS=${HEAD_EPOCHS:-4}
DATA=$(mktemp -d)
B="http://127.0.0.1:$PORT"
# The server sets its own allocator settings at start-up (src/process_env.rs).
TANUKI_DATA_DIR="$DATA" TANUKI_ADDR="127.0.0.1:$PORT" RUST_LOG=warn "$BIN" serve &
SERVER=$!
trap 'kill $SERVER; rm -rf "$DATA"' EXIT
until curl -sf "$B/healthz" >/dev/null; do sleep 0.2; done

SRC=../shared/data/cats_and_dogs_filtered
tar -czf "$DATA/train.tar.gz" -C "$SRC/train" cats dogs
tar -czf "$DATA/val.tar.gz" -C "$SRC/validation" cats dogs
TRAIN=$(curl -sf -X POST "$B/v1/datasets?name=train" -H 'Content-Type: application/gzip' --data-binary @"$DATA/train.tar.gz" | jq -r .id)
VAL=$(curl -sf -X POST "$B/v1/datasets?name=validation" -H 'Content-Type: application/gzip' --data-binary @"$DATA/val.tar.gz" | jq -r .id)
ARCH=${ARCH:-mobilenet_v2}
case "$ARCH" in
  mobilenet_v2)
    QUERY="architecture=mobilenet_v2&alpha=1.0&format=keras"
    FILE=mobilenet_v2_1.0_224_imagenet.keras.safetensors
    BACKBONE='{architecture: "mobilenet_v2", alpha: 1.0}'
    INPUT='{height: 160, width: 160, scale: 0.00784313725490196, offset: -1.0}' ;;
  efficientnet_lite0)
    QUERY="architecture=efficientnet_lite0&format=efficientnet_pytorch"
    FILE=efficientnet_lite0_imagenet.effnetlite_names.safetensors
    BACKBONE='{architecture: "efficientnet_lite0"}'
    INPUT='{height: 160, width: 160}' ;;
  *) echo "ARCH must be mobilenet_v2 or efficientnet_lite0" >&2; exit 2 ;;
esac
WEIGHTS=$(curl -sf -X POST "$B/v1/backbones?$QUERY" \
  -H 'Content-Type: application/octet-stream' --data-binary @"../shared/weights/$FILE" | jq -r .id)

spec() { # $1 = name, $2 = weights JSON, $3 = phases JSON
  jq -n --arg t "$TRAIN" --arg v "$VAL" --arg name "$1" --argjson w "$2" --argjson phases "$3" '{
    name: $name, dataset_id: $t, validation_dataset_id: $v,
    split: {validation: 0, test: 0, seed: 1337},
    input: '"$INPUT"',
    augmentation: {horizontal_flip: true, rotation: 0.1},
    model: {backbone: ('"$BACKBONE"' + {weights: $w}), head: {pooling: "avg", dropout: 0.2, units: 1}},
    batch_size: 32, log_every_steps: 20, phases: $phases}'
}
HEAD="{\"name\": \"head\", \"trainable\": [\"head\"], \"optimizer\": {\"type\": \"adam\", \"learning_rate\": 0.001}, \"epochs\": $HEAD_EPOCHS}"
TUNE='{"name": "fine_tune", "trainable": ["all"], "optimizer": {"type": "adam", "learning_rate": 0.00001}, "epochs": 1}'

run() { # $1 = spec JSON; follows the job's SSE stream to its end, then prints its epochs
  local job
  job=$(curl -sf -X POST "$B/v1/jobs" -H 'Content-Type: application/json' -d "$1" | jq -r .id)
  curl -sN "$B/v1/jobs/$job/events" | sed -n '/^event: end/q'
  curl -sf "$B/v1/jobs/$job/metrics" | jq -r '.events[]
    | select(.event == "epoch" or .event == "end") | .data
    | if .state then "  end: \(.state) \(.error // "")"
      else "  \(.phase) epoch \(.epoch): val_acc \(.validation.accuracy*1000|round/10)%  val_loss \(.validation.loss*1000|round/1000)  train_acc \(.train.accuracy*1000|round/10)%  \(.seconds|round) s" end'
}
echo "ImageNet $ARCH, head then fine-tune ($(lscpu | sed -n 's/^Model name: *//p')):"
time run "$(spec guide-pretrained "\"$WEIGHTS\"" "[$HEAD, $TUNE]")"
echo "Random initial weights, head only:"
time run "$(spec guide-random-init null "[$HEAD]")"
