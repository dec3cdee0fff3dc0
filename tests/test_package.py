"""Packaging contract: the SDK and kernels never need torch; the distribution's layout."""

import ast
import os
import subprocess
import sys
from pathlib import Path

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


ROOT = Path(__file__).resolve().parents[1]
SDK_FOLDERS = {"mtsim": ROOT / "sdk", "mtsim.kernels": ROOT / "kernels"}


def sdk_modules() -> dict[str, Path]:
    """Every module of the SDK (sdk/ and kernels/) by its import name."""
    modules = {}
    for package, folder in SDK_FOLDERS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts[:-1], *([] if parts[-1] == "__init__" else parts[-1:])))
            modules[name] = path
    return modules


def imported_modules(path: Path, modules) -> set[str]:
    """The SDK modules a module imports anywhere in its body (functions included), with the packages whose
    ``__init__`` such an import runs; imports under ``if TYPE_CHECKING:`` are left out (they never run)."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and getattr(block.test, "id", None) == "TYPE_CHECKING"
        for node in ast.walk(block)
    }
    targets = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets.add(node.module)
            targets |= {f"{node.module}.{alias.name}" for alias in node.names}
    found = set()
    for target in targets:
        parts = target.split(".")
        found |= {".".join(parts[:k]) for k in range(1, len(parts) + 1)} & modules.keys()
    return found


def test_every_sdk_module_imports_without_torch():
    names = sorted(sdk_modules())
    assert {"mtsim", "mtsim.potential", "mtsim.md.state", "mtsim.kernels.skin", "mtsim.cli.common"} <= set(names)
    result = run(
        "import importlib\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "assert 'torch' not in {k for k, v in sys.modules.items() if v is not None}\n"
        "print('ok')"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of a directed graph as a list of nodes (first = last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_a_cycle_and_only_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_among_sdk_modules():
    """A module's own package is excluded: a package imports its submodules, and they run inside its import."""
    modules = sdk_modules()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        own = {".".join(package.split(".")[:k]) for k in range(1, package.count(".") + 2)}
        graph[name] = {target for target in imported_modules(path, modules) if target != name and target not in own}
    assert graph["mtsim.md.simulation"] >= {"mtsim.potential", "mtsim.md.state"}  # the graph sees the imports
    assert "mtsim.kernels.cuda" in graph["mtsim.graph"]  # and those inside functions
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


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
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(root),
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "wheel"),
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    wheel = next((tmp_path / "wheel").glob("mtsim-*.whl"))
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", str(wheel), "--no-deps", "--target", str(tmp_path / "site"), "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr
    code = (
        "import mtsim, mtsim.kernels, mtsim.cli, mtsim.md, mtsim.phonon, mtsim.training, mtsim.converters\n"
        "print(mtsim.__file__, mtsim.kernels.__file__, mtsim.training.__file__, mtsim.phonon.__file__,\n"
        "      mtsim.md.__file__)\n"
        "print(mtsim.load(device='cpu').path)"
    )  # the bundled model ships in the wheel
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert all(path.startswith(str(tmp_path / "site")) for path in result.stdout.split())
