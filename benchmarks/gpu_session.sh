#!/usr/bin/env bash
# Issue 20's GPU checks in one prepared run, for a session lent the GPU machine (the device
# tool; its image has CUDA torch, pytest and tqdm, not `higher`, Flower or Ray).
#
# Here, once, in the repository's root (higher is pure Python, 27 KB, requires only torch):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl higher==0.2.1
# Then on the device machine (carry [".whl"], timeout_s 540):
#   bash benchmarks/gpu_session.sh
#
# 1. the GPU-only tests of the CUDA code path (tests/test_devices.py, tests/test_batched.py);
# 2. benchmarks/meta_throughput.py --device cuda (quick, meta-batch 32, one CPU thread): the
#    goal is second-order MAML >= 10x `higher` on the same GPU.
# What it writes under $OUT comes back: gpu.txt, tests.log, meta_throughput_gpu.md/.json
# and its log. Copy the report into benchmarks/results/ and record it (README, issue 20).
# Not here: the federated Omniglot round with 8 devices sharing the GPU needs Flower's
# simulation engine, and Ray's wheel (74 MB) is over the device tool's 64 MiB a call.
set -uo pipefail
out=${OUT:-/tmp/fedmeta_gpu}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { echo "carry .whl with higher's wheel (see above)"; exit 2; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
  lscpu | grep -E "Model name|^CPU\(s\)"; } 2>&1 | tee "$out/gpu.txt"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_devices.py tests/test_batched.py \
    2>&1 | tee "$out/tests.log" | tail -5
timeout 330 python3 benchmarks/meta_throughput.py --quick --threads 1 --meta-batch 32 \
    --device cuda --out "$out/meta_throughput_gpu" 2>&1 | tee "$out/meta_throughput_gpu.log" \
    | grep -E "round|Goals|error" | tail -12
