#!/usr/bin/env bash
# Builds (or continues) the project's GPAW data set in data/gpaw/ (data card: data/gpaw/README.md).
#   data/gpaw/label.sh PHONONDB_DIR [WORKERS]
# Needs the dft extra (README: system libraries, then pip install -e ".[dft]"). Resumable: run it again after an
# interruption and it labels only what is not yet labelled or failed (on a fresh clone it continues from the
# committed labelled.extxyz.gz). Then `data/gpaw/snapshot.sh` to commit.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
phonondb=$(realpath "${1:?usage: label.sh PHONONDB_DIR [WORKERS]}")
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
if [ ! -f "$here/structures.extxyz.gz" ]; then
  tmp=$(mktemp -d)
  python -m mtsim.training.builders.dfpt --data "$phonondb" --out "$tmp/dfpt" --quiet   # the DFPT split, seed 0
  python -m mtsim.training.builders.dft structures --phonondb "$phonondb" --dfpt-manifest "$tmp/dfpt/manifest.json" \
    --out "$tmp/structures.extxyz" --seed 0
  gzip -n -9 -c "$tmp/structures.extxyz" > "$here/structures.extxyz.gz"
fi
python -m mtsim.training.builders.dft label --data "$here/structures.extxyz.gz" --out "$here" --workers "${2:-$(nproc)}" \
  --order coverage
