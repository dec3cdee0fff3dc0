"""Packaging contract: the SDK and kernels never need torch; the distribution's layout."""

import os
import subprocess
import sys

BLOCK_TORCH = "import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + code], capture_output=True, text=True, timeout=120)


def test_sdk_and_kernels_import_without_torch():
    result = run(
        "import mtsim, mtsim.kernels, mtsim.cli, mtsim.structure, mtsim.graph, mtsim.calculator\n"
        "from mtsim.kernels import neighbor_list\n"
        "assert 'torch' not in {k for k, v in sys.modules.items() if v is not None}\n"
        "print('ok')"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_training_needs_torch_and_says_so():
    result = run("import mtsim.training")
    assert result.returncode != 0
    assert "torch" in result.stderr


def test_subpackages_map_to_their_folders():
    import mtsim
    import mtsim.converters
    import mtsim.kernels
    import mtsim.training

    assert mtsim.__file__.replace("\\", "/").endswith("sdk/__init__.py") or "site-packages/mtsim" in mtsim.__file__
    for module, folder in ((mtsim.kernels, "kernels"), (mtsim.training, "training"), (mtsim.converters, "converters")):
        path = module.__file__.replace("\\", "/")
        assert path.endswith(f"{folder}/__init__.py") or f"site-packages/mtsim/{folder}" in path


def test_normal_install_from_a_wheel(tmp_path):
    """A normal (non-editable) install maps the subpackages too: build the wheel, install it into a folder, import."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(root), "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "wheel"), "-q"], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    wheel = next((tmp_path / "wheel").glob("mtsim-*.whl"))
    install = subprocess.run([sys.executable, "-m", "pip", "install", str(wheel), "--no-deps", "--target",
                              str(tmp_path / "site"), "-q"], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    code = ("import mtsim, mtsim.kernels, mtsim.cli, mtsim.phonon, mtsim.training, mtsim.converters\n"
            "print(mtsim.__file__, mtsim.kernels.__file__, mtsim.training.__file__, mtsim.phonon.__file__)\n"
            "print(mtsim.load(device='cpu').path)")  # the bundled model ships in the wheel
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(tmp_path / "site")}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert all(path.startswith(str(tmp_path / "site")) for path in result.stdout.split())
