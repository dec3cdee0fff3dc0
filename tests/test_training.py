"""Training package: datasets with partial labels, the masked loss, exact resume, fine-tuning, config validation,
the ``mtsim train`` command and the ensemble uncertainty (mtsim.training.{data,loss,trainer,config})."""

import copy
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import ase  # noqa: E402
import ase.db  # noqa: E402
import ase.io  # noqa: E402
from ase.build import bulk  # noqa: E402
from ase.calculators.emt import EMT  # noqa: E402
from ase.calculators.singlepoint import SinglePointCalculator  # noqa: E402
from ase.units import GPa  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from mtsim.cli import main  # noqa: E402
from mtsim.graph import build_graph  # noqa: E402
from mtsim.training import build_model, load_checkpoint, save_checkpoint  # noqa: E402
from mtsim.training.checkpoint import file_sha256  # noqa: E402
from mtsim.training.config import ConfigError, TrainConfig, load_config  # noqa: E402
from mtsim.training.data import AtomsDataset, collate, extract_labels  # noqa: E402
from mtsim.training.exporter import export_metadata  # noqa: E402
from mtsim.training.loss import DEFAULT_WEIGHTS, multitask_loss  # noqa: E402
from mtsim.training.model import PROPERTIES, with_repulsion  # noqa: E402
from mtsim.training.trainer import (  # noqa: E402
    HEADS,
    Trainer,
    ensemble_uncertainty,
    fit_normalisation,
    force_spread,
    prepare_model,
    rank_by_uncertainty,
    train,
)

TINY = dict(num_blocks=1, dim=32, ffn_dim=32, num_heads=4, num_gaussians=16)
Z_AL = np.diag([1.5, 1.4, 1.6]) + 0.1 * np.eye(3)[[1, 2, 0]]  # made-up Born charge of Al in B2 NiAl (Ni: -Z_AL)


def labelled_frames() -> list:
    """Eight small EMT-labelled cells (energy, forces, stress); the NiAl ones also carry made-up Born charges and
    eps_inf under the phonopy-style keys, the Ni ones magnetic moments."""
    prototypes = [
        bulk("Cu", "fcc", a=3.61),
        bulk("Al", "fcc", a=4.05),
        bulk("Ni", "fcc", a=3.52),
        bulk("NiAl", "cesiumchloride", a=2.88),
    ]
    rng = np.random.default_rng(0)
    frames = []
    for k in range(8):
        atoms = prototypes[k % 4].repeat((1, 1, 2))
        atoms.set_cell(atoms.cell[:] @ (np.eye(3) + rng.uniform(-0.03, 0.03, (3, 3))), scale_atoms=True)
        atoms.rattle(0.08, seed=k)
        atoms.calc = EMT()
        results = dict(energy=atoms.get_potential_energy(), forces=atoms.get_forces(), stress=atoms.get_stress())
        if "Ni" in atoms.get_chemical_symbols() and "Al" not in atoms.get_chemical_symbols():
            results["magmoms"] = np.full(len(atoms), 0.6)
        atoms.calc = SinglePointCalculator(atoms, **results)
        if atoms.get_chemical_formula() == "Al2Ni2":
            sign = np.where(atoms.numbers == 13, 1.0, -1.0)
            atoms.arrays["born_effective_charge"] = (sign[:, None, None] * Z_AL).reshape(-1, 9)
            atoms.info["eps_inf"] = (np.diag([4.0, 4.2, 4.1]) + 0.05 * k).reshape(9)
        frames.append(atoms)
    return frames


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Run torch and numba on one thread: the tiny models here gain nothing from more, and on a busy machine
    spinning OpenMP workers slow every step many-fold. (Numba's OpenMP layer resets the OpenMP thread count that
    torch uses at each parallel launch, so both are set.)"""
    import numba

    threads = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    yield
    torch.set_num_threads(threads[0])
    numba.set_num_threads(threads[1])


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.extxyz"
    ase.io.write(path, labelled_frames(), format="extxyz")
    return path


@pytest.fixture(scope="module")
def dataset(data_file):
    return AtomsDataset.from_files([data_file], cutoff=5.0)


def make_config(data_file, run_dir, model=None, **sections) -> TrainConfig:
    """A tiny float64 run on ``data_file``; ``model`` replaces the model section, ``sections`` update theirs."""
    raw = {
        "run_dir": str(run_dir),
        "data": {"train": [str(data_file)], "batch_size": 3, "val_fraction": 0.25},
        "model": {"dtype": "float64", **TINY} if model is None else model,
        "optimizer": {"lr": 2e-3},
        "schedule": {"epochs": 2, "warmup_epochs": 0.5, "patience": None},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return TrainConfig.from_dict(raw)


def tiny_model(seed=0):
    return build_model("1M", dtype=torch.float64, seed=seed, **TINY)


# ------------------------------------------------------------------------------------------------- data
def test_labels_read_from_extxyz_and_database(tmp_path, data_file, dataset):
    frames = labelled_frames()
    assert len(dataset) == 8
    assert dataset.label_counts() == {
        "energy": 8,
        "forces": 8,
        "stress": 8,
        "magmoms": 2,
        "charges": 0,
        "born_charges": 2,
        "dielectric": 2,
    }
    nial = dataset[3]
    np.testing.assert_allclose(nial.labels["stress"], frames[3].get_stress(voigt=False))
    np.testing.assert_allclose(nial.labels["born_charges"][nial.graph["numbers"] == 13][0], Z_AL)
    np.testing.assert_allclose(nial.labels["dielectric"], np.diag([4.0, 4.2, 4.1]) + 0.15)

    db_path = tmp_path / "frames.db"
    with ase.db.connect(db_path) as db:  # per-atom labels of a database live in the row's data
        for atoms in frames:
            extra = {key: atoms.arrays[key] for key in ("born_effective_charge",) if key in atoms.arrays}
            db.write(atoms, data={**extra, **{k: v for k, v in atoms.info.items() if k == "eps_inf"}})
    from_db = AtomsDataset.from_files([db_path], cutoff=5.0)
    assert from_db.label_counts() == dataset.label_counts()
    for a, b in zip(from_db.samples, dataset.samples):
        assert a.labels.keys() == b.labels.keys()
        for key in a.labels:
            np.testing.assert_allclose(a.labels[key], b.labels[key], rtol=1e-6, atol=1e-8)  # extxyz rounds

    # the key mapping is configurable: an empty list ignores a label, a new name finds a renamed one
    atoms = frames[3].copy()
    atoms.info["eps"] = atoms.info.pop("eps_inf")
    atoms.arrays["becs"] = atoms.arrays.pop("born_effective_charge")
    assert "dielectric" in extract_labels(atoms) and "born_charges" in extract_labels(atoms)
    only_eps = extract_labels(atoms, {"born_charges": [], "dielectric": ["eps"], "stress": []})
    assert "born_charges" not in only_eps and "stress" not in only_eps and "dielectric" in only_eps
    atoms.info["eps"] = np.ones(4)
    with pytest.raises(ValueError, match="'eps'"):
        extract_labels(atoms)


def test_collate_matches_one_graph_of_the_batch(data_file, dataset):
    frames = ase.io.read(data_file, index=":")
    batch = collate([dataset[k] for k in (0, 3, 2)])
    reference = build_graph([frames[0], frames[3], frames[2]], 5.0)
    for key, value in reference.items():
        np.testing.assert_array_equal(batch.inputs[key].numpy(), value, err_msg=key)
    assert batch.masks["born_charges"].tolist() == [False, True, False]
    assert batch.masks["magmoms"].tolist() == [False, False, True]
    per_atom = batch.masks["born_charges"][batch.inputs["batch"]]
    assert torch.isnan(batch.labels["born_charges"][~per_atom]).all()
    assert torch.isfinite(batch.labels["born_charges"][per_atom]).all()
    assert "charges" not in batch.labels


# ------------------------------------------------------------------------------------------------- loss
def test_loss_terms_average_only_over_labelled_structures(dataset):
    model = tiny_model().train()
    alone = collate([dataset[3]])
    mixed = collate([dataset[0], dataset[3], dataset[1]])
    loss_alone, terms_alone = multitask_loss(model(**alone.inputs), alone)
    loss_mixed, terms_mixed = multitask_loss(model(**mixed.inputs), mixed)
    # NaN labels of the unlabelled structures would poison the sums if they leaked
    assert torch.isfinite(loss_mixed)
    for task in ("born_charges", "dielectric"):
        torch.testing.assert_close(terms_mixed[task], terms_alone[task])
    assert "magmoms" not in terms_mixed and "charges" not in terms_mixed  # no structure carries them
    assert set(terms_alone) == {"energy", "forces", "stress", "born_charges", "dielectric"}
    torch.testing.assert_close(loss_alone, sum(DEFAULT_WEIGHTS[t] * v for t, v in terms_alone.items()))

    # the Born charge term's gradient comes from the labelled structure only
    model.zero_grad()
    terms_mixed["born_charges"].backward(retain_graph=True)
    grad_mixed = model.born_head.mlp[-1].weight.grad.clone()
    model.zero_grad()
    terms_alone["born_charges"].backward()
    torch.testing.assert_close(grad_mixed, model.born_head.mlp[-1].weight.grad)

    # per-task MAE definitions: E per atom, stress in GPa
    predictions = {k: v.detach() for k, v in model(**alone.inputs).items()}
    _, terms = multitask_loss(predictions, alone)
    n = alone.num_atoms[0]
    assert float(terms["energy"]) == pytest.approx(abs(float(predictions["energy"][0] - alone.labels["energy"][0])) / n)
    assert float(terms["stress"]) == pytest.approx(
        float((predictions["stress"] - alone.labels["stress"]).abs().mean()) / GPa
    )


def test_normalisation_fits_reference_energies_and_scales(dataset):
    model = tiny_model()
    fitted = fit_normalisation(model, dataset)
    references = model.reference_energies.numpy()
    assert set(np.flatnonzero(references)) == {13, 28, 29}
    counts = np.stack([np.bincount(s.graph["numbers"], minlength=95) for s in dataset.samples])
    residual = np.array([float(s.labels["energy"]) for s in dataset.samples]) - counts @ references
    np.testing.assert_allclose(counts.T @ residual, 0.0, atol=1e-10)  # least squares: normal equations hold
    assert fitted["energy_shift"] == pytest.approx(np.mean(residual / counts.sum(axis=1)))
    forces = np.concatenate([s.labels["forces"] for s in dataset.samples])
    assert fitted["energy_scale"] == pytest.approx(np.sqrt(np.mean(forces**2)))
    assert float(model.born_scale) == pytest.approx(np.sqrt(np.mean(Z_AL**2)))
    assert float(model.magmom_scale) == pytest.approx(0.6)
    assert float(model.charge_scale) == 1.0  # no labels: left alone


# ------------------------------------------------------------------------------------------------- training
def test_a_few_steps_lower_the_loss(tmp_path, data_file, dataset):
    config = make_config(data_file, tmp_path, schedule={"epochs": 8, "warmup_epochs": 1, "checkpoint_every": 2})
    lines = []
    trainer = Trainer(config, prepare_model(config, dataset), dataset, log=lines.append)
    before = trainer.evaluate(dataset)
    assert trainer.fit() == "finished"
    after = trainer.evaluate(dataset)
    assert trainer.step == 8 * 3
    assert after["loss"] < 0.7 * before["loss"]
    assert after["forces"] < before["forces"]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, 9))
    assert records[-1]["lr"]["head"] == 0.0  # linear decay to zero
    assert set(records[0]["train"]) == {"loss", "energy", "forces", "stress", "magmoms", "born_charges", "dielectric"}
    steps = [line for line in lines if line.startswith("step ")]  # progress inside epochs, every 2 steps
    assert [line.split()[1] for line in steps] == [f"{k}/24" for k in range(2, 25, 2)]
    assert sum(line.startswith("epoch ") for line in lines) == 8


def test_resume_is_bitwise_exact(tmp_path, data_file):
    straight = make_config(data_file, tmp_path / "straight", schedule={"epochs": 3})
    train(straight)
    pieces = make_config(data_file, tmp_path / "pieces", schedule={"epochs": 3})
    train(pieces, max_steps=3)  # pauses mid-epoch 2 (2 steps per epoch)
    with pytest.raises(FileExistsError):
        train(pieces)
    train(pieces, resume=True, max_steps=2)
    train(pieces, resume=True)

    a, b = (torch.load(tmp_path / run / "last.pt", weights_only=True) for run in ("straight", "pieces"))
    assert a["training"]["step"] == b["training"]["step"] == 6
    for key in a["state_dict"]:  # EMA weights
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for key in a["training"]["model"]:  # raw weights
        assert torch.equal(a["training"]["model"][key], b["training"]["model"][key]), key
    for pa, pb in zip(a["training"]["optimizer"]["state"].values(), b["training"]["optimizer"]["state"].values()):
        assert all(torch.equal(pa[k], pb[k]) for k in ("step", "exp_avg", "exp_avg_sq"))
    assert a["training"]["scheduler"] == b["training"]["scheduler"]
    assert (tmp_path / "straight" / "metrics.jsonl").read_text() == (tmp_path / "pieces" / "metrics.jsonl").read_text()


def test_non_finite_loss_stops_before_the_weights_change(tmp_path, data_file, dataset):
    """A batch whose loss is not finite raises FloatingPointError naming the step and the batch's structures; the
    weights are those before the step."""
    config = make_config(data_file, tmp_path / "run")
    trainer = Trainer(config, prepare_model(config, dataset), dataset)
    before = {key: value.clone() for key, value in trainer.model.state_dict().items()}
    sample = copy.deepcopy(dataset.samples[0])
    sample.labels["energy"] = np.array(np.inf)
    with pytest.raises(FloatingPointError, match=r"step 1: the loss is not finite \(MAEs: energy inf") as error:
        trainer.train_step(collate([sample, dataset.samples[1]], trainer.model.dtype))
    formula = ase.Atoms(numbers=sample.graph["numbers"]).get_chemical_formula()
    assert f"batch of 2: {formula}" in str(error.value)
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_finetuning_freezes_the_backbone_and_reinitialises_heads(tmp_path, data_file, dataset):
    pretrained = tiny_model(seed=1)
    fit_normalisation(pretrained, dataset)
    save_checkpoint(pretrained, tmp_path / "pretrained.pt", {"name": "pretrained"})
    config = make_config(
        data_file,
        tmp_path / "run",
        model={"dtype": "float64"},  # sizes from the checkpoint
        finetune={"checkpoint": str(tmp_path / "pretrained.pt"), "reinit_heads": ["born_charges"]},
        optimizer={"lr": 1e-3, "backbone_lr": 0.0},
    )
    model = prepare_model(config, dataset)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    reference = pretrained.state_dict()
    assert not torch.equal(start["born_head.mlp.3.weight"], reference["born_head.mlp.3.weight"])
    assert torch.equal(start["energy_head.mlp.3.weight"], reference["energy_head.mlp.3.weight"])
    assert torch.equal(start["reference_energies"], reference["reference_energies"])  # energy head kept

    trainer = Trainer(config, model, dataset)
    trainer.fit(max_steps=2)
    heads = tuple(f"{name}." for name in HEADS.values())
    for weights in (trainer.model.state_dict(), trainer.ema.state_dict()):
        for key, value in weights.items():
            if key.startswith(heads):
                continue
            assert torch.equal(value, start[key]), f"frozen {key} changed"
    assert not torch.equal(trainer.model.energy_head.mlp[3].weight, start["energy_head.mlp.3.weight"])
    assert not torch.equal(trainer.model.born_head.mlp[3].weight, start["born_head.mlp.3.weight"])
    assert [g["name"] for g in trainer.optimizer.param_groups] == ["head"]
    base = load_checkpoint(trainer.last_path).metadata["finetuned_from"]
    assert base == {"file": "pretrained.pt", "sha256": file_sha256(tmp_path / "pretrained.pt")}


def test_finetuning_adds_the_repulsion_to_a_checkpoint_without_it(tmp_path, data_file, dataset):
    """``model.repulsion: true`` on a checkpoint without the repulsion: same weights, repulsion on, and the
    fine-tuned checkpoint keeps it; unset keeps the checkpoint's choice."""
    pretrained = with_repulsion(tiny_model(seed=1), False)
    save_checkpoint(pretrained, tmp_path / "old.pt")
    finetune = {"checkpoint": str(tmp_path / "old.pt")}
    kept = prepare_model(make_config(data_file, tmp_path / "a", model={"dtype": "float64"}, finetune=finetune), dataset)
    assert kept.repulsion is None
    config = make_config(data_file, tmp_path / "b", model={"dtype": "float64", "repulsion": True}, finetune=finetune)
    model = prepare_model(config, dataset)
    assert model.repulsion is not None
    for key, value in pretrained.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    trainer = Trainer(config, model, dataset)
    trainer.fit(max_steps=1)
    assert load_checkpoint(trainer.last_path).config.repulsion


def test_finetuning_moves_the_energy_scale_by_the_offsets(tmp_path, data_file, dataset):
    """``finetune.energy_offsets``: every energy moves by -sum of the atoms' offsets, forces stay; recorded."""
    save_checkpoint(tiny_model(seed=1), tmp_path / "base.pt")
    offsets = {"Cu": 1.25, "Al": -0.5}
    (tmp_path / "offsets.json").write_text(json.dumps({"offsets_eV_per_atom": offsets}))
    finetune = {"checkpoint": str(tmp_path / "base.pt"), "energy_offsets": str(tmp_path / "offsets.json")}
    model = prepare_model(
        make_config(data_file, tmp_path / "run", model={"dtype": "float64"}, finetune=finetune), dataset
    )
    base = load_checkpoint(tmp_path / "base.pt")
    atoms = labelled_frames()[0]
    shift = -sum(offsets.get(symbol, 0.0) for symbol in atoms.get_chemical_symbols())
    assert shift != 0.0
    before, after = base.predict(atoms), model.predict(atoms)
    assert after["energy"] == pytest.approx(before["energy"] + shift, abs=1e-9)
    np.testing.assert_allclose(after["forces"], before["forces"], atol=1e-12)
    assert model.metadata["energy_offsets"]["eV"] == offsets
    # exported files state the moved scale; a model never moved has no such entry
    assert json.loads(export_metadata(model, "float64")["energy_offsets"])["eV"] == offsets
    assert "energy_offsets" not in export_metadata(base, "float64")
    (tmp_path / "bad.json").write_text(json.dumps({"offsets_eV_per_atom": {"Xx": 1.0}}))
    finetune["energy_offsets"] = str(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="Xx"):
        prepare_model(make_config(data_file, tmp_path / "bad", model={"dtype": "float64"}, finetune=finetune), dataset)


def test_provenance_names_untrained_heads_and_data(tmp_path, data_file, dataset):
    config = make_config(data_file, tmp_path / "run", loss={"charges": 0.0, "magmoms": 0.0})
    config.model_name, config.training_data = "test-model", "EMT labels"
    model = prepare_model(config, dataset)
    # the data carry no charges and magmoms have weight 0: those heads stay untrained
    assert model.metadata["untrained_heads"] == ["charges", "magmoms"]
    assert model.metadata["training_data"]["files"] == [{"file": "train.extxyz", "sha256": file_sha256(data_file)}]
    meta = export_metadata(model, "float32")
    assert json.loads(meta["untrained_outputs"]) == ["magmoms", "charges"]
    assert meta["model_name"] == "test-model" and "EMT labels" in meta["training_data"]
    # fine-tuning with the energy head re-initialised but no energy-type loss: energy is untrained again, magmoms
    # now trains, born_charges (weight 0) stays as the base model had it (trained)
    save_checkpoint(model, tmp_path / "base.pt")
    tuned = make_config(
        data_file,
        tmp_path / "tuned",
        model={"dtype": "float64"},
        finetune={"checkpoint": str(tmp_path / "base.pt"), "reinit_heads": ["energy"]},
        loss={"born_charges": 0.0, "energy": 0.0, "forces": 0.0, "stress": 0.0},
    )
    tuned_model = prepare_model(tuned, dataset)
    assert tuned_model.metadata["untrained_heads"] == ["charges", "energy"]
    assert tuned_model.metadata["training_data"]["base"]["description"] == "EMT labels"
    assert json.loads(export_metadata(tuned_model, "float32")["untrained_outputs"]) == [
        "energy",
        "forces",
        "stress",
        "charges",
    ]
    # a fresh model marks everything untrained
    assert json.loads(export_metadata(tiny_model(), "float32")["untrained_outputs"]) == list(PROPERTIES)


# ------------------------------------------------------------------------------------------------- config
def test_config_validation_names_the_offending_key(tmp_path):
    base = {"data": {"train": ["a.extxyz"]}}
    assert TrainConfig.from_dict(base).optimizer.lr == 5e-5
    cases = [
        ({**base, "epochs": 3}, "unknown key 'epochs'"),
        ({**base, "optimizer": {"lrr": 1e-3}}, "unknown key 'optimizer.lrr'"),
        ({**base, "optimizer": {"lr": "fast"}}, "'optimizer.lr' must be float, got str"),
        ({**base, "schedule": {"epochs": 2.5}}, "'schedule.epochs' must be int"),
        ({**base, "schedule": {"patience": True}}, "'schedule.patience' must be int"),
        ({**base, "model": {"dtype": "float16"}}, "'model.dtype' must be one of"),
        ({"data": {"train": "a.extxyz"}}, "'data.train' must be a list"),
        ({"data": {"train": ["a"], "keys": {"born": ["becs"]}}}, "'data.keys key' must be one of"),
        ({"data": {"train": ["a"], "keys": {"born_charges": "becs"}}}, "'data.keys.born_charges' must be a list"),
        ({"data": {}}, "missing required key 'data.train'"),
        ({**base, "loss": {"forces": -1}}, "'loss.forces' must be non-negative"),
        ({**base, "optimizer": {"head_lr": 0.0, "backbone_lr": 0.0}}, "freezes every parameter"),
        ({**base, "model": {"dim": 30}}, "not divisible"),
        ({**base, "finetune": {"reinit_heads": ["energy"]}}, "needs finetune.checkpoint"),
        (
            {**base, "finetune": {"energy_offsets": "offsets.json"}},
            "'finetune.energy_offsets' needs finetune.checkpoint",
        ),
        ({**base, "finetune": {"checkpoint": "x.pt"}, "model": {"dim": 64}}, "'model.dim' cannot be set"),
        (
            {**base, "finetune": {"checkpoint": "x.pt", "reinit_heads": ["forces"]}},
            r"'finetune.reinit_heads\[0\]' must be one of",
        ),
    ]
    for raw, message in cases:
        with pytest.raises(ConfigError, match=message):
            TrainConfig.from_dict(raw)

    path = tmp_path / "run.yaml"
    path.write_text("data:\n  train: [data/a.extxyz]\noptimizer:\n  lr: 5e-5\n  head_lr: 2e-4\nrun_dir: out\n")
    config = load_config(path)
    assert config.optimizer.lr == 5e-5 and config.optimizer.head_lr == 2e-4  # YAML 1.2 floats
    assert config.data.train == [str(tmp_path / "data" / "a.extxyz")] and config.run_dir == str(tmp_path / "out")
    path.write_text("data: {train: [a]\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


@pytest.mark.parametrize("name", ["train_tiny.yaml", "default_model/train.yaml"])
def test_example_configs_are_valid(name):
    from pathlib import Path

    config = load_config(Path(__file__).parents[1] / "examples" / name)
    assert config.model.preset == "1M"


# ------------------------------------------------------------------------------------------------- CLI
def test_cli_trains_an_ensemble_and_writes_checkpoints_and_metrics(tmp_path, data_file):
    config = tmp_path / "tiny.yaml"
    config.write_text(f"""
run_dir: run
ensemble: 2
data: {{train: ["{data_file}"], batch_size: 4, val_fraction: 0.25}}
model: {{dtype: float64, num_blocks: 1, dim: 32, ffn_dim: 32, num_heads: 4, num_gaussians: 16}}
optimizer: {{lr: 1.0e-3}}
schedule: {{epochs: 2, warmup_epochs: 0.5}}
""")
    runner = CliRunner()
    result = runner.invoke(main, ["train", str(config)])
    assert result.exit_code == 0, result.output
    assert "epoch 2/2" in result.output and "forces" in result.output and "born_charges" in result.output
    assert result.output.count("best checkpoint:") == 2
    for member in ("member_0", "member_1"):
        run = tmp_path / "run" / member
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert len(records) == 2 and records[0]["val"]["loss"] > 0
        model = load_checkpoint(run / "best.pt")
        assert model.metadata["training"]["labels"]["born_charges"] >= 1
        assert (run / "last.pt").is_file()
    members = [load_checkpoint(tmp_path / "run" / m / "best.pt") for m in ("member_0", "member_1")]
    assert not torch.equal(members[0].energy_head.mlp[3].weight, members[1].energy_head.mlp[3].weight)

    again = runner.invoke(main, ["train", str(config)])
    assert again.exit_code != 0 and "already holds a run" in again.output
    resumed = runner.invoke(main, ["train", str(config), "--resume"])
    assert resumed.exit_code == 0 and "epoch" not in resumed.output  # nothing left to do
    config.write_text(config.read_text() + "optimiser: {lr: 1}\n")
    bad = runner.invoke(main, ["train", str(config)])
    assert bad.exit_code != 0 and "unknown key 'optimiser'" in bad.output


# ------------------------------------------------------------------------------------------------- uncertainty
def test_force_spread_is_eq_22():
    forces = np.array([[[1.0, 0, 0], [0, 0, 0]], [[0, 1.0, 0], [0, 0, 2.0]]])  # 2 members, 2 atoms
    mean_norm = np.array([np.sqrt(0.5), 1.0])
    expected = max(((1 - mean_norm[0]) ** 2 + (1 - mean_norm[0]) ** 2) / 2, ((0 - 1) ** 2 + (2 - 1) ** 2) / 2)
    assert force_spread(forces) == pytest.approx(expected)
    assert force_spread(np.repeat(forces[:1], 3, axis=0)) == 0.0


def test_ensemble_uncertainty_ranks_structures(dataset):
    frames = labelled_frames()[:4]
    identical = [tiny_model(seed=3), tiny_model(seed=3)]
    assert np.all(ensemble_uncertainty(identical, frames) == 0.0)
    different = [tiny_model(seed=3), tiny_model(seed=4), tiny_model(seed=5)]
    scores = ensemble_uncertainty(different, frames, batch_size=3)
    assert scores.shape == (4,) and np.all(scores > 0)
    order, all_scores = rank_by_uncertainty(different, frames, max_count=2)
    # other batches (default 16 vs 3 here): matrix-product blocking may round differently in the last bits
    np.testing.assert_allclose(all_scores, scores, rtol=1e-6)
    assert order == list(np.argsort(-scores)[:2])
    above, _ = rank_by_uncertainty(different, frames, threshold=float(np.median(scores)))
    assert set(above) == {k for k in range(4) if scores[k] > np.median(scores)}
