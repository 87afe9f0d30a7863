#!/usr/bin/env bash
# Run ON the lent GPU machine (the device tool, carry [".whl"] made by bench/gpu_wheels.sh): every GPU figure
# issue 15 asks for, in one go (about 5 minutes on an H200), written to $OUT (or ./gpu-out):
#   - SD1.5-shaped random 4-expert top-2 MoE, 512 px, float16, 25 steps: plain SegMoE, Fast EMoE, the gate
#     alone at batch 1 / 8 / 32, renders of accepted jobs at batch 1 / 4 / 8 (images/s), peak GPU memory;
#   - the same figures on the shipped reference ensemble (32 px), for comparison with the CPU tables.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-out}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$out/gpu.txt"
python3 bench/gate_cost.py --sd15 --size 512 --steps 25 --repeats 3 --device cuda --dtype float16 \
  --gate-batches 8,32 --render-batches 1,4,8 --json 2>&1 | tee "$out/gate_cost_sd15.txt"
python3 bench/gate_cost.py --ensemble default --steps 25 --repeats 5 --device cuda --dtype float32 \
  --gate-batches 8,32 --render-batches 1,4,8 --json 2>&1 | tee "$out/gate_cost_default.txt"
