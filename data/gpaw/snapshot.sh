#!/usr/bin/env bash
# Writes the committed form of the labels: labelled.extxyz.gz (deterministic gzip) and a fresh manifest.json.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
gzip -n -9 -c "$here/labelled.extxyz" > "$here/labelled.extxyz.gz"
python - "$here" <<'PY'
import sys
from mtsim.training.builders.dft import DFTSettings, write_run_manifest
write_run_manifest(f"{sys.argv[1]}/structures.extxyz.gz", sys.argv[1], DFTSettings())
PY
