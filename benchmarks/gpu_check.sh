#!/usr/bin/env bash
# The prepared GPU check (issue 5): one script, under 8 minutes on one H100; prints everything to record in
# benchmarks/RESULTS.md. Run from the repository root on a CUDA machine:
#
#   bash benchmarks/gpu_check.sh
#
# The device machines of this workplace have torch, numpy, scipy, matplotlib, psutil, tqdm, typer, pyyaml and
# nvidia-ml-py but not nibabel, surface-distance, connected-components-3d or pydicom. Download their wheels here first
# (Python 3.12, manylinux x86_64) into .whl/, which .git/info/exclude ignores, and carry `.whl`:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl nibabel surface-distance connected-components-3d pydicom
#
# Steps: environment; training throughput of the full Swin-Unet at 224 (bf16, channels_last) from the real data
# loader and from memory, with peak memory; model forward/backward speed; the inference benchmark; a short
# end-to-end recipe on the synthetic cohort on the GPU (the paper's model at 224 for a few iterations); the CPU
# preset's recipe in bf16; two of its models as an ensemble at prediction.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
export PYTHONUNBUFFERED=1
step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }

step "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python3 -c "import torch, numpy, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, 'numpy', numpy.__version__)"
nproc

step "training throughput: full Swin-Unet 224, bf16, batch 18 (loader vs memory)"
timeout 180 python3 benchmarks/train_speed.py --preset paper --device cuda --amp bf16 --iterations 60 --workers 8

step "model speed: full Swin-Unet at 224, bf16"
timeout 120 python3 benchmarks/model_speed.py --device cuda --amp bf16 --channels-last || true

if [ -f benchmarks/infer_speed.py ]; then
  step "inference benchmark (GPU)"
  timeout 150 python3 benchmarks/infer_speed.py --device cuda || true  # batch 32, bf16 on the whole scan
fi

step "the recipe end to end on the synthetic cohort, paper model, GPU"
rm -rf /tmp/gpu_demo
timeout 150 python3 -m selflabel.cli demo-data /tmp/gpu_demo/data --labeled 4 --unlabeled 8 --test 2 --size 192 --slices 48 &&
timeout 240 python3 -m selflabel.cli run /tmp/gpu_demo/data --out /tmp/gpu_demo/work --preset paper --quiet \
  --set train.epochs=2 --set train.iterations_per_epoch=40 --set pipeline.train_fraction=0.5 --set train.num_workers=8

step "the CPU preset's recipe on the GPU: U-Net with deep supervision, phantom bodies for the students, two rounds and the fine-tuning with the encoder frozen, bf16, BatchNorm statistics of each scan (inference.adapt_bn)"
timeout 180 python3 -m selflabel.cli run /tmp/gpu_demo/data --out /tmp/gpu_demo/work_cpu --preset cpu --quiet \
  --set train.epochs=1 --set pipeline.student_epochs=1 --set train.amp=bf16 --set inference.amp=bf16

step "two of those models as an ensemble at prediction (predict -m A -m B), bf16, on the GPU"
timeout 60 python3 -m selflabel.cli predict -m /tmp/gpu_demo/work_cpu/models/student2 \
  -m /tmp/gpu_demo/work_cpu/models/student_finetuned -i /tmp/gpu_demo/data/imagesTs -o /tmp/gpu_demo/ensemble \
  --device cuda --set inference.amp=bf16
step "done"
