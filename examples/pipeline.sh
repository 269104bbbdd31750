#!/usr/bin/env bash
# A shell pipeline: initialize a checkpoint read from standard input, write it to standard output,
# and read the effective LSTM forget-gate bias of every layer back from `inspect --json`.
#   bash examples/pipeline.sh examples/out/model.pt
# It uses the rnninit on PATH, else the one in the .venv that README.md's set-up line makes.
set -euo pipefail
if ! command -v rnninit >/dev/null; then
  venv_bin="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin"
  if [ ! -x "$venv_bin/rnninit" ]; then
    echo "error: rnninit is not on PATH and $venv_bin/rnninit does not exist; run README.md's set-up line" >&2
    exit 1
  fi
  PATH="$venv_bin:$PATH"
fi
input=${1:-examples/out/model.pt}
rnninit apply - --scheme keras --seed 0 --quiet -o - < "$input" \
  | rnninit inspect - --json \
  | python3 -c '
import json, sys
for layer in json.load(sys.stdin)["layers"]:
    where = "{} layer {} {}".format(layer["prefix"], layer["layer"], layer["direction"])
    for gate in layer["effective_bias"]:
        if layer["cell"] == "lstm" and gate["gate"] == "f":
            print("{}: effective forget bias {:.3f}".format(where, gate["mean"]))
'
