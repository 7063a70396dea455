#!/usr/bin/env bash
# The follow-up rows of docs/removal-defenses.md: what else was tried where fine-pruning failed.
# Needs runs/removal-report/models/ from `backdoor-arena defend compare --gtsrb ...` (see that page).
set -euo pipefail
cd "$(dirname "$0")/.."
BA=${BA:-.venv/bin/backdoor-arena}
M=runs/removal-report/models
O=runs/removal-followup
mkdir -p "$O"
"$BA" defend nc-unlearning $M/mnist-pruning-aware.safetensors --attack-spec $M/mnist-pruning-aware.attack.json \
    --detector '{"steps": 200, "batch_size": 16}' --out $O/pa-nc-unlearning.safetensors --json --quiet > $O/pa-nc-unlearning.json
"$BA" defend fine-pruning $M/mnist-pruning-aware.safetensors --attack-spec $M/mnist-pruning-aware.attack.json \
    --lr 0.05 --out $O/pa-fine-pruning-lr0.05.safetensors --json --quiet > $O/pa-fine-pruning-lr0.05.json
"$BA" defend fine-pruning $M/gtsrb-stop30.safetensors --attack-spec $M/gtsrb-stop30.attack.json \
    --lr 0.05 --out $O/gtsrb-fine-pruning-lr0.05.safetensors --json --quiet > $O/gtsrb-fine-pruning-lr0.05.json
"$BA" defend nc-unlearning $M/gtsrb-stop30.safetensors --attack-spec $M/gtsrb-stop30.attack.json \
    --detector '{"steps": 100, "batch_size": 16}' --out $O/gtsrb-nc-unlearning.safetensors --json --quiet > $O/gtsrb-nc-unlearning.json
echo "wrote $O/*.json"
