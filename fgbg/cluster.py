"""Joining a Ray cluster, or starting a local one, quietly; and checking it has room for a run.

A local cluster has token auth on (Ray's default since 2.59) and its dashboard on 127.0.0.1; fgbg
says so in one line instead of Ray's warning on every start. Ray's own logs and notices stay in
its log files unless --verbose.
"""

from __future__ import annotations

import logging
import os
import sys

# Ray's notices that fgbg replaces by its own line, or that say nothing a user must act on
_NOTICES = ("ray._private.authentication.authentication_token_setup", "ray.data._internal.progress")


def connect(address: str | None = None, num_cpus: int | None = None, verbose: bool = False) -> None:
    """Join the cluster at address (or RAY_ADDRESS); else start a local single-node one."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if not verbose:
        for name in _NOTICES:
            logging.getLogger(name).setLevel(logging.ERROR)
    kwargs = dict(log_to_driver=verbose, logging_level="INFO" if verbose else "WARNING")
    if address:
        ray.init(address=address, **kwargs)
        return
    # the dashboard listens on 127.0.0.1 only; Ray Train needs its state API to clean up after runs
    context = ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", **kwargs)
    # Ray turns token auth on for a new local cluster by setting RAY_AUTH_MODE (and warns, which is silenced above)
    auth = "token auth on" if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" else "token auth OFF (RAY_AUTH_MODE)"
    cpus = int(ray.cluster_resources().get("CPU", 0))
    # on stderr: stdout stays the verb's own output (one JSON object with --json)
    print(f"fgbg: started a local Ray cluster ({cpus} CPUs, 127.0.0.1, {auth}); dashboard http://{context.dashboard_url}",
          file=sys.stderr, flush=True)


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
