#!/usr/bin/env bash
# Writes the committed form of the labels (labelled.extxyz.gz: the complete frames so far, deterministic gzip) and a
# fresh manifest.json; safe while label.sh is still running.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
python -m mtsim.training.builders.dft snapshot --data "$here/structures.extxyz.gz" --out "$here"
