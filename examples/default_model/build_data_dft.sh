#!/usr/bin/env bash
# Builds the training data of the second-generation bundled model (stage10.yaml): the GPAW data set split for
# training, CHGNet replay on the GPAW energy scale, and the CHGNet held-out report set.
#   examples/default_model/build_data_dft.sh PHONONDB_DIR [OUT_DIR]
# PHONONDB_DIR: the phonondb_bec_eps folder (e.g. ../shared/data/phonondb_bec_eps). OUT_DIR: default data/ beside
# this script, where stage10.yaml looks. Files build_data.sh already wrote there are kept. Needs the teacher extra:
# pip install -e ".[train,teacher]". About 20 minutes on 2 CPU cores. Every step is seeded.
set -euo pipefail
phonondb=$(realpath "${1:?usage: build_data_dft.sh PHONONDB_DIR [OUT_DIR]}")
gpaw=$(realpath "$(dirname "$0")/../../data/gpaw")
out=${2:-$(dirname "$0")/data}
mkdir -p "$out" && cd "$out"
structures="python -m mtsim.training.builders.structures --data $phonondb --dfpt-manifest dfpt/manifest.json --quiet"
teacher="python -m mtsim.training.builders.teacher --batch-size 16 --quiet"
dft="python -m mtsim.training.builders.dft"
# once FILE COMMAND...: run COMMAND unless FILE exists
once() { [ -e "$1" ] || "${@:2}"; }
# Born charges and eps_inf (DFPT), split 80/10/10 by structure with seed 0, as for stages 1-9
once dfpt/manifest.json python -m mtsim.training.builders.dfpt --data "$phonondb" --out dfpt --quiet
# CHGNet-labelled structures: the replay (seed 0) and the held-out report set (seed 1), as for stages 1-9
once gen_train.extxyz $structures --out gen_train.extxyz --size 10000 --seed 0
once gen_heldout.extxyz $structures --out gen_heldout.extxyz --size 2000 --seed 1
once lab_train.extxyz $teacher --data gen_train.extxyz --out lab_train.extxyz
once lab_heldout.extxyz $teacher --data gen_heldout.extxyz --out lab_heldout.extxyz
# the GPAW set split by crystal (gpaw_train/val/test.extxyz); gpaw_test is for reports only
$dft split --labelled "$gpaw/labelled.extxyz.gz" --out gpaw
# CHGNet on the GPAW train frames: the pairs that fix the per-element offsets between the two energy scales
$teacher --data gpaw/gpaw_train.extxyz --out chgnet_pairs.extxyz
# replay: the CHGNet frames whose composition the labelled GPAW set does not hold (any split: test compositions stay
# unseen), energies moved onto the GPAW scale (offsets in lab_replay_gpaw.extxyz.offsets.json, which stage10.yaml
# hands to the trainer). Compositions of structures not yet labelled keep their replay.
$dft align --gpaw gpaw/gpaw_train.extxyz --other lab_train.extxyz --pairs chgnet_pairs.extxyz \
    --covered "$gpaw/labelled.extxyz.gz" --out lab_replay_gpaw.extxyz
