"""Packaging contract: the SDK and kernels never need torch; the distribution's layout."""

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
