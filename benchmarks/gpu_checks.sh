#!/bin/bash
# The GPU checks of docs/scale.md, as run on a lent GPU machine (no network there): the gpu-marked tests, then
# a 4-model MNIST zoo built on cuda and on 2 CPU threads of the same machine. Carry beside the checkout a
# folder .devcarry/ (git-ignored, never committed) holding data/mnist (the four MNIST files) and wheels/ (the
# project's dependencies missing from that machine's Python: opacus, pooch, pydantic, pydantic-core,
# annotated-types, typing-inspection, platformdirs). Results go to $OUT (default: ./gpu-checks).
set -u
OUT=${OUT:-$PWD/gpu-checks}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD BACKDOOR_ARENA_DATA=$PWD/.devcarry/data PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --find-links .devcarry/wheels opacus pooch pydantic pydantic-core \
  annotated-types typing-inspection platformdirs 2>&1 | tail -2
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, platform, os; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), 'python', platform.python_version(), 'cpus', os.cpu_count())" | tee -a "$OUT/gpu.txt"
timeout 200 python3 -m pytest -m gpu tests/unit/test_devices.py -q -p no:cacheprovider -o addopts="" -ra 2>&1 | tee "$OUT/gpu_tests.txt" | tail -8
for dev in cuda cpu; do
  s=$(date +%s.%N)
  timeout 150 python3 -m backdoor_arena zoo build --out /tmp/zoo-$dev --dataset mnist --clean 2 --backdoored 2 --epochs 2 \
    --train-size 20000 --threads 2 --device $dev -q > "$OUT/zoo-$dev.log" 2>&1
  echo "$dev rc=$? wall_s=$(python3 -c "import time;print(round(time.time()-$s,1))")" | tee -a "$OUT/gpu.txt"
  (cd /tmp/zoo-$dev && tar czf "$OUT/zoo-$dev-records.tgz" $(find . -name '*.json' -o -name '*.jsonl' | head -200)) 2>/dev/null
done
