"""Where a Ray Train worker group meets: on one machine, a file and loopback sockets, not a server on the network.

Ray Train's torch backend has every worker join rank 0's TCPStore, which listens on every interface with
no authentication while the run trains. When all the group's workers are on one machine (a local
cluster, or one multi-GPU node), fgbg's backend has them meet through a FileStore in that machine's
temporary folder instead, and points gloo's and NCCL's sockets at the loopback interface. A group over
several machines meets as Ray Train's does.
"""

from __future__ import annotations

import os
import socket
import tempfile
import uuid

import ray
from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _setup_torch_process_group, _TorchBackend


class OneMachineBackend(_TorchBackend):
    """Ray Train's torch backend, but a group on one machine meets through a file, on loopback sockets."""

    def on_start(self, worker_group, backend_config):
        if len(set(worker_group.execute(machine))) > 1:
            return super().on_start(worker_group, backend_config)
        # as Ray Train's on_start does for init_method "env", with the store's URL in place of MASTER_ADDR:PORT
        store = worker_group.execute_single(0, new_store)
        worker_group.execute(_set_torch_distributed_env_vars)
        worker_group.execute(loopback_sockets)
        ray.get([worker_group.execute_single_async(rank, _setup_torch_process_group, backend=backend_config.backend, world_rank=rank,
                                                   world_size=len(worker_group), init_method=store, timeout_s=backend_config.timeout_s)
                 for rank in range(len(worker_group))])


class OneMachineConfig(TorchConfig):
    """TorchConfig with OneMachineBackend: `TorchTrainer(torch_config=OneMachineConfig())`."""

    @property
    def backend_cls(self):
        return OneMachineBackend


def machine() -> tuple[str, str]:
    """This machine: its host name and boot id (two containers may share a host name)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    return socket.gethostname(), boot


def new_store() -> str:
    """A new rendezvous file's URL (torch's FileStore deletes the file once every process of the group is done with it)."""
    return "file://" + os.path.join(tempfile.mkdtemp(prefix="fgbg-rendezvous-"), uuid.uuid4().hex)


def loopback_sockets() -> None:
    """gloo's and NCCL's own sockets on the loopback interface, unless the user chose one."""
    loopback = next((name for _, name in socket.if_nameindex() if name.startswith("lo")), "lo")  # lo on Linux, lo0 on macOS
    os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback)
    os.environ.setdefault("NCCL_SOCKET_IFNAME", loopback)
