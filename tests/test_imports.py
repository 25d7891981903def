"""Import hygiene: no cycles, configs that read instantly, an install without TensorFlow."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
HEAVY = ("jax", "flax", "grain", "orbax", "optax", "torch", "tensorflow")


def _run(code: str) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


def test_every_pavad_jax_module_imports_first_with_no_cycle():
    """Each module is imported as the first of the package (the package's modules dropped from
    sys.modules before each): a cycle fails for the module that enters it."""
    code = """
import importlib, pkgutil, sys
import pavad_jax
names = sorted(m.name for m in pkgutil.walk_packages(pavad_jax.__path__, "pavad_jax."))
failed = []
for name in names:
    for loaded in [m for m in sys.modules if m == "pavad_jax" or m.startswith("pavad_jax.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as e:
        failed.append(f"{name}: {type(e).__name__}: {e}")
print(len(names))
assert not failed, failed
"""
    done = _run(code)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[-1]) > 30


def test_training_and_evaluation_modules_do_not_import_each_other():
    for module, forbidden in (("pavad_jax.evaluate", "pavad_jax.train"), ("pavad_jax.engine", "pavad_jax.train"),
                              ("pavad_jax.checkpoint", "pavad_jax.train")):
        done = _run(f"import sys, {module}; assert {forbidden!r} not in sys.modules")
        assert done.returncode == 0, f"{module} imports {forbidden}: {done.stderr[-500:]}"


def test_loading_any_config_file_imports_no_jax():
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.py"))
    code = f"""
import sys
from pavad_jax.config_loader import load_config_file
for path in {files!r}:
    load_config_file(path)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
assert not heavy, heavy
print(len({files!r}))
"""
    done = _run(code)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[-1]) == len(files) >= 15


def _installed_closure(requirements: list[str]) -> set[str]:
    """Names of the installed distributions `requirements` pull in, transitively (markers evaluated, no extras)."""
    import importlib.metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    names, todo = set(), [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in names or (req.marker and not req.marker.evaluate({"extra": ""})):
            continue
        names.add(name)
        todo += [Requirement(r) for r in importlib.metadata.distribution(name).requires or ()]
    return names


def test_the_jax_side_requirements_pull_no_tensorflow_in_this_environment():
    """Small form of the test below: setup.py's JAX_SIDE closed over the installed packages' metadata
    instead of a fresh pip resolution."""
    import ast

    tree = ast.parse((REPO / "setup.py").read_text())
    (jax_side,) = [ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                   and [t.id for t in node.targets] == ["JAX_SIDE"]]
    names = _installed_closure(jax_side)
    assert {"jax", "flax", "orbax-checkpoint", "tensorboard"} <= names
    assert not {n for n in names if n.startswith(("tensorflow", "tf-", "clu", "torch"))}, sorted(names)


@pytest.mark.slow  # small form: test_the_jax_side_requirements_pull_no_tensorflow_in_this_environment
def test_the_jax_side_install_pulls_no_tensorflow(tmp_path):
    """What `pip install -c constraints.txt -e .` would install in a fresh venv (pip's dry-run report)."""
    report = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                           "--report", str(report), "-c", "constraints.txt", "-e", "."],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert {"jax", "flax", "orbax-checkpoint", "tensorboard"} <= names
    assert not {n for n in names if n.startswith(("tensorflow", "tf-", "clu", "torch"))}, sorted(names)
