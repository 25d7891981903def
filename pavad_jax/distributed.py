"""Multi-host start-up and the one device mesh, axes ("members", "data").

Every command trains or scores on a mesh of shape (members, data): sweep members are sharded
over "members" (their params carry a leading member axis), batch rows over "data". pavad-train
is the one-member case, (1, devices); a sweep group of M members uses (m, 1) with m the largest
divisor of M that fits the devices; pavad-bench and pavad-occ use (1, d).
"""
from __future__ import annotations

import logging
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MEMBER_AXIS = "members"
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


def add_multihost_arguments(parser) -> None:
    """--coordinator_address, --num_processes, --process_id on an argparse parser."""
    group = parser.add_argument_group("multi-host (detected on TPU slices and Slurm; see launch/)")
    group.add_argument("--coordinator_address", default=None, help="host:port of process 0")
    group.add_argument("--num_processes", type=int, default=None, help="number of processes in the run")
    group.add_argument("--process_id", type=int, default=None, help="this process's index")


def initialize_from_args(args) -> None:
    initialize(args.coordinator_address, args.num_processes, args.process_id)


def largest_divisor(n: int, limit: int) -> int:
    """The largest d <= limit that divides n."""
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def make_mesh(members: int = 1, data: int | None = None) -> Mesh:
    """A (members, data) mesh over the first members * data devices (data=None: all the rest).

    Devices are taken in jax.devices() order (process-major), so the "data" axis of a
    one-member mesh spans the hosts in process order, as the grain slices expect.
    """
    devices = jax.devices()
    if data is None:
        data = len(devices) // members
    if members < 1 or data < 1 or members * data > len(devices):
        raise ValueError(f"a mesh of {members} member(s) x {data} data device(s) needs {members * data} "
                         f"devices; there are {len(devices)}")
    return Mesh(np.asarray(devices[:members * data]).reshape(members, data), (MEMBER_AXIS, DATA_AXIS))


def member_mesh(members: int, rows: int, devices: int | None = None) -> Mesh:
    """The mesh of `members` vmapped members of `rows` batch rows each: members over the most
    devices that divide them, each member's batch over the most of the rest that divide its rows."""
    devices = devices or jax.device_count()
    on_members = largest_divisor(members, devices)
    return make_mesh(on_members, largest_divisor(rows, devices // on_members))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def member_sharded(mesh: Mesh) -> NamedSharding:
    """Leading axis over the members."""
    return NamedSharding(mesh, P(MEMBER_AXIS))


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (row) axis over the data devices, replicated over the members."""
    return NamedSharding(mesh, P(DATA_AXIS))


def stacked_batch_sharded(mesh: Mesh) -> NamedSharding:
    """(k, rows, ...) batches of one dispatch: rows over the data devices."""
    return NamedSharding(mesh, P(None, DATA_AXIS))


def data_slice(mesh: Mesh) -> tuple[int, int]:
    """(index, count) of this process's slice of a batch's rows under `mesh`.

    Rows are split over the "data" axis. When every process holds devices at every data
    position (a one-process run, or a sweep whose "data" axis lies within each host), each
    process feeds the whole batch: (0, 1). When the data axis spans processes, each holds an
    equal contiguous block of it: (its block, number of blocks).
    """
    if jax.process_count() == 1:
        return 0, 1
    positions: dict[int, set[int]] = {}
    for (_, d), device in np.ndenumerate(mesh.devices):
        positions.setdefault(device.process_index, set()).add(d)
    mine = sorted(positions[jax.process_index()])
    size = mesh.shape[DATA_AXIS]
    if len(mine) == size:
        return 0, 1
    count = size // len(mine)
    if size % len(mine) or mine != list(range(mine[0], mine[0] + len(mine))) or mine[0] % len(mine):
        raise ValueError(f"process {jax.process_index()} holds data positions {mine} of {size}: "
                         "each process must hold one equal contiguous block")
    return mine[0] // len(mine), count


def gather(x) -> np.ndarray:
    """The global value of a (possibly multi-host, sharded) array as numpy, on every process."""
    if jax.process_count() == 1:
        return np.asarray(x)
    if getattr(x, "is_fully_replicated", False):
        return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def put_global(tree, sharding: NamedSharding):
    """Host numpy leaves, identical on every process, -> global arrays with `sharding`."""
    return jax.tree.map(
        lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda index: np.asarray(x)[index]), tree)


def put_process_local(tree, sharding: NamedSharding):
    """This process's slice of each leaf (see data_slice) -> global arrays with `sharding`."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is true on any (a collective: call it on all processes)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(np.max(multihost_utils.process_allgather(np.asarray([int(flag)], np.int32))))
