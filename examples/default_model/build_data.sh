#!/usr/bin/env bash
# Builds the training data of the bundled model mtsim-default (see sdk/models/README.md).
#   examples/default_model/build_data.sh PHONONDB_DIR [OUT_DIR]
# PHONONDB_DIR: the phonondb_bec_eps folder (e.g. ../shared/data/phonondb_bec_eps). OUT_DIR: default data/ beside
# this script, where train.yaml and stage2-9.yaml look. Needs the teacher extra: pip install -e
# ".[train,teacher]". About 3.5 hours on 2 CPU cores. Every step is seeded: the same inputs give the same files.
set -euo pipefail
phonondb=$(realpath "${1:?usage: build_data.sh PHONONDB_DIR [OUT_DIR]}")
out=${2:-$(dirname "$0")/data}
mkdir -p "$out" && cd "$out"
structures="python -m mtsim.training.builders.structures --data $phonondb --dfpt-manifest dfpt/manifest.json --quiet"
teacher="python -m mtsim.training.builders.teacher --batch-size 16 --quiet"
# Born charges and eps_inf (DFPT), split 80/10/10 by structure with seed 0; test.extxyz is for bench/accuracy.py only
python -m mtsim.training.builders.dfpt --data "$phonondb" --out dfpt --quiet
# off-equilibrium structures from the DFPT train crystals and prototypes: training, validation, held-out report set
$structures --out gen_train.extxyz --size 10000 --seed 0
$structures --out gen_val.extxyz --size 500 --seed 2
$structures --out gen_heldout.extxyz --size 2000 --seed 1   # the first 249 are the held-out set reported until stage 7
$structures --out gen_train2.extxyz --size 30000 --seed 3   # the further training data of stages 2 and 3
# stages 4-7: many more binary prototypes (3,000 draws each; seed 4: 1,947 distinct pair/lattice bases), half
# of the samples binaries
$structures --out gen_train3.extxyz --size 12000 --seed 4 --binaries 3000 --mix phonondb=0.3 element=0.2 binary=0.5
$structures --out gen_replay.extxyz --size 4000 --seed 0    # stage 4's replay: the first 4,000 of gen_train.extxyz
$structures --out gen_train4.extxyz --size 9000 --seed 5 --binaries 3000 --mix phonondb=0.3 element=0.2 binary=0.5
$structures --out gen_train5.extxyz --size 9000 --seed 6 --binaries 3000 --mix phonondb=0.3 element=0.2 binary=0.5
$structures --out gen_train6.extxyz --size 9000 --seed 7 --binaries 3000 --mix phonondb=0.3 element=0.2 binary=0.5
# stages 8 and 9: 30,000 fresh samples of the same mix each
$structures --out gen_train7.extxyz --size 12000 --seed 8 --binaries 3000 --mix phonondb=0.3 element=0.2 binary=0.5
$structures --out gen_train8.extxyz --size 9000 --seed 9 --binaries 3000 --mix phonondb=0.3 element=0.2 binary=0.5
$structures --out gen_train9.extxyz --size 9000 --seed 10 --binaries 3000 --mix phonondb=0.3 element=0.2 binary=0.5
$structures --out gen_train10.extxyz --size 12000 --seed 11 --binaries 3000 --mix phonondb=0.3 element=0.2 binary=0.5
$structures --out gen_train11.extxyz --size 9000 --seed 12 --binaries 3000 --mix phonondb=0.3 element=0.2 binary=0.5
$structures --out gen_train12.extxyz --size 9000 --seed 13 --binaries 3000 --mix phonondb=0.3 element=0.2 binary=0.5
# CHGNet 0.3.0 energies, forces, stresses, |magmoms|; the DFPT files keep their Born charges and eps_inf
$teacher --data gen_train.extxyz --out lab_train.extxyz
$teacher --data gen_train2.extxyz --out lab_train2.extxyz
$teacher --data gen_train3.extxyz --out lab_train3.extxyz
$teacher --data gen_train4.extxyz --out lab_train4.extxyz
$teacher --data gen_train5.extxyz --out lab_train5.extxyz
$teacher --data gen_train6.extxyz --out lab_train6.extxyz
$teacher --data gen_train7.extxyz --out lab_train7.extxyz
$teacher --data gen_train8.extxyz --out lab_train8.extxyz
$teacher --data gen_train9.extxyz --out lab_train9.extxyz
$teacher --data gen_train10.extxyz --out lab_train10.extxyz
$teacher --data gen_train11.extxyz --out lab_train11.extxyz
$teacher --data gen_train12.extxyz --out lab_train12.extxyz
$teacher --data gen_replay.extxyz --out lab_replay.extxyz
$teacher --data gen_val.extxyz --out lab_val.extxyz
$teacher --data gen_heldout.extxyz --out lab_heldout.extxyz
$teacher --data dfpt/train.extxyz --out lab_dfpt_train.extxyz
$teacher --data dfpt/val.extxyz --out lab_dfpt_val.extxyz
