"""The tests' tiny training config as a config file, for tests that run the pavad-train CLI.

  pavad-train --config tests/tiny_train_config.py:/path/to/dataset --workdir /tmp/run
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from train_fixtures import tiny_config  # noqa: E402


def get_config(arg):
    return tiny_config(pathlib.Path(arg))
