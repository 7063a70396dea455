#!/usr/bin/env bash
# Reproduces every number in docs/results.md. Usage: docs/reproduce.sh [OUT_DIR]  (default runs/)
# Each run appends one JSON line (the `--json` output plus the command and its wall time) to OUT/results.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs}
mkdir -p "$OUT"
BA=${BA:-.venv/bin/backdoor-arena}
: > "$OUT/results.jsonl"

run() {  # run NAME ARGS...: train/attack with --json, record wall time
  local name=$1; shift
  local start end
  start=$(date +%s.%N)
  "$BA" "$@" --out "$OUT/$name.safetensors" --quiet --json > "$OUT/$name.json"
  end=$(date +%s.%N)
  python3 - "$OUT/$name.json" "$name" "$start" "$end" "$*" >> "$OUT/results.jsonl" <<'PY'
import json, sys
path, name, start, end, cmd = sys.argv[1:]
r = json.load(open(path))
r.update(run=name, wall_time_s=round(float(end) - float(start), 1), command="backdoor-arena " + cmd)
print(json.dumps(r, sort_keys=True))
PY
}

MNIST="--dataset mnist --model badnet-mnist --epochs 4 --seed 0"
run mnist-clean train $MNIST
run mnist-a2o-pattern attack badnets $MNIST --target 7 --trigger pattern --poison-rate 0.1
run mnist-a2o-pixel attack badnets $MNIST --target 7 --trigger pixel --poison-rate 0.1
run mnist-a2a-pattern attack badnets $MNIST --mode all-to-all --trigger pattern --poison-rate 0.1
run mnist-blended attack blended $MNIST --target 7 --trigger noise --alpha 0.2 --poison-rate 0.1
GTSRB="--dataset gtsrb --model gtsrb-cnn --epochs 5 --seed 0 --weight-decay 0.0005"
run gtsrb-clean train $GTSRB
run gtsrb-stop30 attack badnets $GTSRB --mode source-specific --source 14 --target 1 --trigger square \
    --trigger-size 4 --color yellow --position 22,14 --poison-rate 0.0199
# the clean models against the attacks' triggers: how often a trigger alone flips a clean model
"$BA" evaluate "$OUT/mnist-clean.safetensors" --attack-spec "$OUT/mnist-a2o-pattern.attack.json" --json > "$OUT/mnist-clean-vs-a2o.json"
"$BA" evaluate "$OUT/gtsrb-clean.safetensors" --attack-spec "$OUT/gtsrb-stop30.attack.json" --json > "$OUT/gtsrb-clean-vs-stop30.json"
echo "wrote $OUT/results.jsonl"
