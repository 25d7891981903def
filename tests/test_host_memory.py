"""host_memory: with its settings a freed 256 MiB block is reused without new page faults."""
import platform
import subprocess
import sys

import pytest

PROGRAM = """
import resource, sys
import numpy as np
from pavad_jax import host_memory
if sys.argv[1] == "reuse":
    assert host_memory.reuse_freed_memory()
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = np.full(2**26, 1.0, np.float32); del block  # 256 MiB, as XLA:CPU's step temporaries
before = faults()
for _ in range(3):
    block = np.full(2**26, 1.0, np.float32); del block
print(faults() - before)
"""


def page_faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt settings are glibc's")
def test_a_freed_large_block_is_reused_without_page_faults():
    assert page_faults("default") > 100  # mapped afresh at every allocation (2 MiB pages at the least)
    assert page_faults("reuse") < 20
