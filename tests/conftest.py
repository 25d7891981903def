"""Shared test setup: 8 simulated CPU devices, paths to the real annotation files."""
import os
import pathlib

# Must be set before JAX initialises its backend. LLVM at -O0: the suite's programs are tiny, so
# XLA compiling them is most of its time, and -O0 compiles ~40 % faster (the tiny training
# config's step: 9.9 s -> 5.4 s); results are compared within the suite, always under one flag set.
FAST_COMPILE = "--xla_backend_optimization_level=0"


def xla_flags(devices: int | None) -> str:
    """XLA_FLAGS for a test process (or a subprocess): `devices` simulated CPU devices (None: one)."""
    return FAST_COMPILE + ("" if devices is None else f" --xla_force_host_platform_device_count={devices}")


os.environ.setdefault("XLA_FLAGS", xla_flags(8))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import shutil
import tempfile

import pytest

# One persistent XLA compilation cache per test run, shared by the xdist workers and every
# subprocess they start (they inherit the environment): most of this suite's time is XLA
# compiling the same tiny programs again in another test or another pavad-train process, and a
# hit skips that (a fresh process running the tiny training config: ~54 s to ~15 s on a loaded
# 2-core machine). Entries are keyed by the program, the XLA flags and the devices, so a hit is
# the program that would have been compiled. The run that made the folder removes it.
if "PAVAD_TEST_COMPILATION_CACHE" not in os.environ:
    os.environ["PAVAD_TEST_COMPILATION_CACHE"] = tempfile.mkdtemp(prefix="pavad-test-xla-cache-")
    _OWNS_CACHE = True
else:
    _OWNS_CACHE = False
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.environ["PAVAD_TEST_COMPILATION_CACHE"])
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def pytest_unconfigure(config):
    if _OWNS_CACHE:
        shutil.rmtree(os.environ["PAVAD_TEST_COMPILATION_CACHE"], ignore_errors=True)

REPO = pathlib.Path(__file__).resolve().parents[1]
ANNOTATIONS = REPO.parent / "shared" / "data" / "vad_annotations"


@pytest.fixture(scope="session")
def annotations_dir() -> pathlib.Path:
    if not ANNOTATIONS.is_dir():
        pytest.fail(f"real annotations not found at {ANNOTATIONS} (shared/ must sit beside the repo)")
    return ANNOTATIONS
