"""Builders of training data sets from a data path (nothing here refers to a fixed data location).

- ``mtsim.training.builders.dfpt``: Born charges (field index first) and eps_inf of the DFPT crystals
  (``phonondb_bec_eps``), seeded train/val/test split by structure, manifest;
  ``python -m mtsim.training.builders.dfpt --data PATH --out DIR``.
- ``mtsim.training.builders.structures``: off-equilibrium structures (phonondb crystals, element and binary
  prototypes; rattles, strains, compression, optional teacher MD);
  ``python -m mtsim.training.builders.structures [--data PATH] --out FILE.extxyz``.
- ``mtsim.training.builders.teacher``: CHGNet 0.3.0 labels (energy, forces, stress, magmoms; ``teacher`` extra);
  ``python -m mtsim.training.builders.teacher --data FILE --out FILE.extxyz``.

Charges: no open Bader data set exists offline and no proxy is computed here; the charges head stays untrained.
"""
