"""Multi-host start-up and the device mesh shared by pavad-train, pavad-sweep and pavad-bench."""
from __future__ import annotations

import logging
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def _on_multi_host_slurm() -> bool:
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ


def _on_multi_host_tpu() -> bool:
    # Cloud TPU VMs export the worker list; a single-host TPU has one entry.
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return len([h for h in hosts.split(",") if h]) > 1


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Calls jax.distributed.initialize when the run spans several processes.

    Explicit flags win; otherwise a multi-host TPU slice or a Slurm job with several tasks is
    detected and JAX's own auto-detection fills in the addresses. A single process does nothing.
    """
    explicit = coordinator_address is not None or (num_processes or 1) > 1
    if explicit:
        if coordinator_address is None or num_processes is None or process_id is None:
            raise ValueError("--coordinator_address, --num_processes and --process_id go together")
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    elif _on_multi_host_tpu() or _on_multi_host_slurm():
        jax.distributed.initialize()
    else:
        return
    logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())


def define_run_flags(config_help: str, workdir_help: str, doc: str) -> None:
    """The absl flags of pavad-train and pavad-sweep: --config, --workdir and the multi-host ones.

    `doc` becomes the text of --help (absl prints the __main__ module's docstring, which is
    empty for a console script).
    """
    import sys

    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, config_help, lock_config=True)
    flags.DEFINE_string("workdir", None, workdir_help)
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-host runs.")
    flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-host run.")
    flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run.")
    flags.mark_flags_as_required(["config", "workdir"])
    main_module = sys.modules["__main__"]
    if not main_module.__doc__:
        main_module.__doc__ = doc


def initialize_from_flags() -> None:
    """jax.distributed.initialize from the flags of define_run_flags (or auto-detection)."""
    from absl import flags

    FLAGS = flags.FLAGS
    initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh over all devices (or the first ``num_devices``), batch axis "data"."""
    devices = jax.devices() if num_devices is None else jax.devices()[:num_devices]
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))
