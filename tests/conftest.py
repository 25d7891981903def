"""Shared test setup: 8 simulated CPU devices, paths to the real annotation files."""
import os
import pathlib

# Must be set before JAX initialises its backend.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
ANNOTATIONS = REPO.parent / "shared" / "data" / "vad_annotations"


@pytest.fixture(scope="session")
def annotations_dir() -> pathlib.Path:
    if not ANNOTATIONS.is_dir():
        pytest.fail(f"real annotations not found at {ANNOTATIONS} (shared/ must sit beside the repo)")
    return ANNOTATIONS
