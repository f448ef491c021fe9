#!/usr/bin/env bash
# Fuzzes the API against its own OpenAPI document with schemathesis (all its default checks and
# phases) and fails on any finding. A server with a worker first trains one small job on real
# photos, so the operations on a dataset, a job, a checkpoint and uploaded weights have an id
# that exists; the fuzzing then runs on a server with no worker, so nothing it submits trains.
#
#   bash .ci/schemathesis.sh              (from the repository root; needs ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

VENV=${SCHEMATHESIS_VENV:-$ROOT/target/schemathesis-venv}
if [ ! -x "$VENV/bin/schemathesis" ]; then
    python3 -m venv "$VENV" || { apt-get update && apt-get install -y --no-install-recommends python3-venv && python3 -m venv --clear "$VENV"; }
    "$VENV/bin/pip" install --quiet 'schemathesis==4.32.5'
fi

cargo build --locked --quiet
BIN=target/debug/tanuki
WORK=$(mktemp -d)
SERVER_PID=
stop_server() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=
    fi
}
trap 'stop_server; rm -rf "$WORK"' EXIT

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BASE=http://127.0.0.1:$PORT
start_server() { # workers
    TANUKI_ADDR=127.0.0.1:$PORT TANUKI_DATA_DIR=$WORK/data TANUKI_WORKERS=$1 "$BIN" serve >>"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do
        curl -sf "$BASE/healthz" >/dev/null && return 0
        sleep 0.1
    done
    cat "$WORK/server.log" >&2
    echo "the server did not start" >&2
    return 1
}

# Seed: a dataset of real photos, a finished job (with checkpoints), uploaded weights.
start_server 1
python3 - "$BASE" "$WORK" ../shared/data/cats_and_dogs_filtered/train <<'EOF'
import io, json, os, sys, time, urllib.request, zipfile

base, work, photos = sys.argv[1:4]

def call(method, path, body=None, content_type=None):
    request = urllib.request.Request(base + path, data=body, method=method)
    if content_type:
        request.add_header("Content-Type", content_type)
    with urllib.request.urlopen(request) as response:
        data = response.read()
        return json.loads(data) if response.headers.get_content_type().endswith("json") else data

archive = io.BytesIO()
with zipfile.ZipFile(archive, "w") as z:
    for label in ("cats", "dogs"):
        for name in sorted(os.listdir(os.path.join(photos, label)))[:12]:
            z.write(os.path.join(photos, label, name), f"{label}/{name}")
dataset = call("POST", "/v1/datasets?name=fuzz", archive.getvalue(), "application/zip")

spec = {
    "dataset_id": dataset["id"],
    "input": {"height": 32, "width": 32},
    "model": {"backbone": {"architecture": "small_cnn"}},
    "batch_size": 8,
    "phases": [{"name": "head", "trainable": ["all"], "optimizer": {"type": "adam", "learning_rate": 0.001}, "epochs": 1}],
}
job = call("POST", "/v1/jobs", json.dumps(spec).encode(), "application/json")
for _ in range(600):
    job = call("GET", f"/v1/jobs/{job['id']}")
    if job["state"] in ("succeeded", "failed", "canceled"):
        break
    time.sleep(0.5)
assert job["state"] == "succeeded", job
checkpoint = call("GET", f"/v1/jobs/{job['id']}/checkpoints")["checkpoints"][0]
weights = call("GET", f"/v1/jobs/{job['id']}/weights")
backbone = call("POST", "/v1/backbones?architecture=small_cnn&format=tanuki&name=fuzz", weights, "application/octet-stream")
with open(os.path.join(work, "ids"), "w") as f:
    for kind, row in (("datasets", dataset), ("jobs", job), ("checkpoints", checkpoint), ("backbones", backbone)):
        f.write(f"{kind} {row['id']}\n")
EOF
stop_server

# Where a schema-valid request may still be refused, and why. Everything else is the defaults;
# the one health check suppressed (`filter_too_much`, on the command line) is about the
# generator: a multipart form with a binary part is often drawn and then dropped.
cat >"$WORK/schemathesis.toml" <<EOF
# JSON text is UTF-8 (RFC 8259, 8.1), and a lone surrogate escape is no character: the server
# answers it 400 malformed_json, so strings are drawn from what UTF-8 can encode.
generation.codec = "utf-8"

EOF
# Each resource's seeded id half the time on its `{id}` operations, generated ones (404) the rest.
while read -r kind id; do
    echo "dictionaries.$kind = { values = [\"$id\"] }"
done <"$WORK/ids" >>"$WORK/schemathesis.toml"
while read -r kind id; do
    printf '\n[[operations]]\ninclude-path-regex = "^/v1/%s/"\nparameters = { "path.id" = { dictionary = "%s", probability = 0.5 } }\n' "$kind" "$kind"
done <"$WORK/ids" >>"$WORK/schemathesis.toml"
cat >>"$WORK/schemathesis.toml" <<'EOF'

# A spec's cross-field rules are beyond JSON Schema: a selector must name a layer of the chosen
# architecture, the least input side depends on it, alpha is only for mobilenet_v2 and widths
# only for small_cnn, and the dataset must exist. Each is a 422 naming the field.
[[operations]]
include-operation-id = ["create_job", "summarize_model"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422"]

# What a file holds is beyond JSON Schema: bytes that are not an archive, a safetensors file
# of the architecture, or an image are a 400 or 422 naming what is wrong.
[[operations]]
include-operation-id = ["create_dataset", "create_backbone", "predict_job"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "413", "422"]
EOF

start_server 0
status=0
(cd "$WORK" && "$VENV/bin/schemathesis" --config-file "$WORK/schemathesis.toml" run "$BASE/openapi.json" \
    --seed "${SCHEMATHESIS_SEED:-1}" --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-50}" --no-color \
    --suppress-health-check filter_too_much) || status=$?
stop_server
# A 5xx is a finding already; the log says its cause.
if grep -q '"request failed"\|panicked' "$WORK/server.log"; then
    grep '"request failed"\|panicked' "$WORK/server.log" | head -20 >&2
    status=1
fi
exit $status
