#!/usr/bin/env bash
# A shell pipeline: initialize a checkpoint read from standard input, write it to standard output,
# and read the effective LSTM forget-gate bias of every layer back from `inspect --json`.
#   bash examples/pipeline.sh examples/out/model.pt
set -euo pipefail
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
