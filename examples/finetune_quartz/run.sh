#!/usr/bin/env bash
# Fine-tuning example: the bundled model on alpha-quartz (QE PBE, allegro-pol), then the test-split errors before
# and after. About 15 minutes on 2 CPU cores.   examples/finetune_quartz/run.sh ALLEGRO_POL_DIR
set -euo pipefail
source=$(realpath "${1:?usage: run.sh ALLEGRO_POL_DIR}")/SiO2_alpha_quartz_201.xyz
cd "$(dirname "$0")"
python -m mtsim.training.builders.allegro_pol --data "$source" --out data
mtsim train finetune.yaml
mtsim convert runs/quartz/best.pt -o runs/quartz/mtsim-quartz.float32.onnx --precision float32
python evaluate.py data/test.extxyz ../../sdk/models/mtsim-default.float32.onnx runs/quartz/mtsim-quartz.float32.onnx
