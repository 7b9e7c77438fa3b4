"""Joining a Ray cluster, or starting a local one, quietly; and checking it has room for a run.

A local cluster listens on 127.0.0.1 only (`loopback_only`), has token auth on (Ray's default since
2.59) and its dashboard on 127.0.0.1; fgbg says so in one line instead of Ray's warning on every start.
Ray's own logs and notices stay in its log files unless --verbose (docs/reliability.md, "What a
local cluster listens on"; fgbg.rendezvous keeps a training group's own sockets there too).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

# Ray's notices that fgbg replaces by its own line, or that say nothing a user must act on
_NOTICES = ("ray._private.authentication.authentication_token_setup", "ray.data._internal.progress")


def connect(address: str | None = None, num_cpus: int | None = None, verbose: bool = False) -> bool:
    """Join the cluster at address (or RAY_ADDRESS); else start a local single-node one. True if it started one."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if not verbose:
        for name in _NOTICES:
            logging.getLogger(name).setLevel(logging.ERROR)
        _quiet_worker_pool_warnings()
    kwargs = dict(log_to_driver=verbose, logging_level="INFO" if verbose else "WARNING")
    if address:
        ray.init(address=address, **kwargs)
        return False
    loopback_only()
    # the dashboard listens on 127.0.0.1 only; Ray Train needs its state API to clean up after runs
    context = ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", **kwargs)
    # Ray turns token auth on for a new local cluster by setting RAY_AUTH_MODE (and warns, which is silenced above)
    auth = "token auth on" if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" else "token auth OFF (RAY_AUTH_MODE)"
    cpus = int(ray.cluster_resources().get("CPU", 0))
    # on stderr: stdout stays the verb's own output (one JSON object with --json)
    print(f"fgbg: started a local Ray cluster ({cpus} CPUs on {os.cpu_count()} cores, listening on "
          f"{ray.util.get_node_ip_address()} only, {auth}); dashboard http://{context.dashboard_url}", file=sys.stderr, flush=True)
    return True


def _quiet_worker_pool_warnings() -> None:
    """The raylet's warning that it started more worker processes than the node has cores (`WARNING: 8 PYTHON worker
    processes have been started …`, once per few workers) stays in its log (raylet.out) instead of on the terminal;
    fgbg says it once in its own words (fgbg.train). The driver prints the raylet's messages from a thread of its own,
    through ray/_private/worker.py's print_to_stdstream (listen_error_messages, 2.60), with no setting to keep them back."""
    import ray._private.worker as worker

    shown = worker.print_to_stdstream
    if getattr(shown, "fgbg", False):
        return

    def print_to_stdstream(data, ignore_prefix):
        if data.get("pid") == "raylet" and all("worker processes have been started on node" in line for line in data.get("lines", [])):
            return
        shown(data, ignore_prefix)

    print_to_stdstream.fgbg = True
    worker.print_to_stdstream = print_to_stdstream


# Ray takes a node's address from get_node_ip_address(), which is 127.0.0.1 when this variable is 0 (read at
# `import ray`: ray/_private/ray_constants.py ENABLE_RAY_CLUSTER, services.py); its servers then listen there only.
# Such a cluster takes no other nodes: `ray start --address` refuses to start with it, so it is never set for one.
LOOPBACK = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def loopback_only() -> None:
    """Make the local cluster this process starts, and every process of it, listen on 127.0.0.1 only."""
    os.environ[LOOPBACK] = "0"  # for the processes the cluster starts
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:  # ray is imported already, and read the variable then
        constants.ENABLE_RAY_CLUSTER = False


@contextlib.contextmanager
def native_stderr_in_ray_logs(verbose: bool = False):
    """What Ray's C++ core writes to this process's stderr goes, unless verbose, to a file in the Ray session's logs
    (`fgbg-driver-PID.err`); Python's sys.stderr (fgbg's lines, the progress bar, errors) stays where it was.

    For Ray Data's actor pools: the driver's core worker logs, at error level and for every actor, "has constructor
    arguments in the object store and max_restarts > 0", because Ray Data itself hands each actor its context and
    transform as object refs (ray-project/ray#57733, open for 2.60); nothing fgbg passes causes it."""
    import ray

    node = ray._private.worker._global_node
    if verbose or node is None:
        yield
        return
    sys.stderr.flush()
    terminal, python_stderr = os.dup(2), sys.stderr
    sys.stderr = open(os.dup(terminal), "w", buffering=1, encoding=python_stderr.encoding, errors="backslashreplace")
    with open(os.path.join(node.get_logs_dir_path(), f"fgbg-driver-{os.getpid()}.err"), "ab") as log:
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(terminal, 2)
        os.close(terminal)
        sys.stderr.close()
        sys.stderr = python_stderr


def quiet_ray_data() -> None:
    """Ray Data without progress bars (fgbg shows its own) and without info-level logs."""
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def check_room(workers: int, cpus_per_worker: float) -> None:
    """Say so when the cluster, as it is now, leaves no CPU for Ray Data to decode with (training would wait)."""
    import ray

    total = ray.cluster_resources().get("CPU", 0)
    need = max(workers, 1) * cpus_per_worker + 1
    if total < need:
        print(
            f"warning: the cluster has {total:g} CPUs now; {max(workers, 1)} workers × {cpus_per_worker:g} CPUs "
            f"plus 1 for decoding need {need:g}. Training waits until the cluster grows (autoscaling); on a fixed "
            f"cluster use fewer --workers or --set cpus_per_worker={max((total - 1) / max(workers, 1), 0.1):.2g}",
            flush=True,
        )

