"""A multi-node Ray cluster on one machine: each node a separate `ray start --block` process on 127.0.0.1.

Tests start and stop their own clusters with it, next to the session's local cluster: every port is
picked free, and nodes are killed by their process group, never with `ray stop` (which would kill
every Ray on the machine). Jobs reach the head through the Job Submission API, as a user's would.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A port free on every address: Ray's dashboard agent binds the machine's network address as well as 127.0.0.1,
    where a port free on loopback alone may be the source port of a connection (`address already in use`)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def listeners(*pids: int) -> set[tuple[str, int, str]]:
    """(address, port, process name) of every TCP socket listening in these processes and all their descendants."""
    import psutil

    tree = set()
    for pid in pids:
        try:
            process = psutil.Process(pid)
            tree |= {process.pid, *(c.pid for c in process.children(recursive=True))}
        except psutil.NoSuchProcess:
            continue
    found = set()
    for c in psutil.net_connections("tcp"):
        if c.status == psutil.CONN_LISTEN and c.pid in tree:
            try:
                name = psutil.Process(c.pid).name()
            except psutil.NoSuchProcess:
                name = "?"
            found.add((c.laddr.ip, c.laddr.port, name))
    return found


@contextlib.contextmanager
def watching(*pids: int):
    """A set that fills, while the block runs, with every listener (`listeners`) of these processes' trees."""
    seen, done = set(), threading.Event()

    def watch():
        while not done.is_set():
            seen.update(listeners(*pids))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield seen
    finally:
        done.set()
        watcher.join()


def cluster_pids(ray) -> list[int]:
    """This process and the processes of the local cluster it started (their children, the workers, come with them)."""
    node = ray._private.worker._global_node
    return [os.getpid(), *(info.process.pid for infos in node.all_processes.values() for info in infos)]


def beyond_loopback(found: set[tuple[str, int, str]]) -> set[tuple[str, int, str]]:
    """The listeners of `listeners` that a client on the network could reach (not 127.0.0.0/8 or ::1)."""
    import ipaddress

    return {x for x in found if not ipaddress.ip_address(x[0].removeprefix("::ffff:")).is_loopback}


def registered_epoch(run) -> int:
    """The epoch of the latest checkpoint Ray Train has registered (written and reported by every worker)."""
    try:
        snapshot = json.loads((run / "checkpoint_manager_snapshot.json").read_text())
        return snapshot["latest_checkpoint_result"]["metrics"]["epoch"]
    except (OSError, ValueError, KeyError, TypeError):
        return 0



class Node(NamedTuple):
    proc: subprocess.Popen
    node_id: str


class LoopbackCluster:
    """A head with no CPUs, as cluster.yaml's (and worker nodes added on demand); token auth on, dashboard on 127.0.0.1."""

    def __init__(self, logs: Path, port: int | None = None, autoscaling_config: Path | None = None, env: dict | None = None):
        self.logs = Path(logs)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.port, self.dashboard_port = port or free_port(), free_port()
        self.env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # `python` and `ray` of this venv
            "RAY_AUTH_MODE": "token",
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_ADDRESS": "",
            **(env or {}),
        }
        # the session's local cluster is on loopback only (fgbg.cluster.loopback_only); with that, `ray start --address`
        # refuses to start a worker node
        self.env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
        self.nodes: list[subprocess.Popen] = []
        self.temp_dirs: list[str] = []
        head = ["--head", f"--port={self.port}", "--num-cpus=0", "--include-dashboard=true",
                "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={free_port()}"]
        if autoscaling_config:
            head.append(f"--autoscaling-config={autoscaling_config}")
        self.head = self._start("head", head)
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        try:
            self._wait(lambda: len(self.alive_nodes()) >= 1, 90, "the head to come up")
        except TimeoutError:
            self.shutdown()  # (no caller holds a cluster to shut down yet)
            raise
        from ray.job_submission import JobSubmissionClient

        self.jobs = JobSubmissionClient(self.address)

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        ports = [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                 f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]
        log = open(self.logs / f"{name}-{len(self.nodes)}.log", "w")
        proc = subprocess.Popen(["ray", "start", "--block", "--node-ip-address=127.0.0.1", *args, *ports], env=self.env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.nodes.append(proc)
        return proc

    def add_node(self, num_cpus: int) -> Node:
        """Start a worker node and wait until the head counts it."""
        before = {n["node_id"] for n in self.alive_nodes()}
        # each node its own /tmp/ray, as each machine has: nodes sharing one would unpack a job's working_dir
        # over the directory its driver runs in
        self.temp_dirs.append(tempfile.mkdtemp(prefix=f"ray{self.port}-"))
        proc = self._start("worker", [f"--address=127.0.0.1:{self.port}", f"--num-cpus={num_cpus}", f"--temp-dir={self.temp_dirs[-1]}"])
        self._wait(lambda: {n["node_id"] for n in self.alive_nodes()} - before, 90, "a worker node to join")
        (node_id,) = {n["node_id"] for n in self.alive_nodes()} - before
        return Node(proc, node_id)

    @staticmethod
    def kill_node(node: Node | subprocess.Popen) -> None:
        """The node dies at once, as a lost machine would: SIGKILL to its whole process group."""
        proc = node.proc if isinstance(node, Node) else node
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def alive_nodes(self) -> list[dict]:
        from ray.util.state import list_nodes

        try:
            return [n for n in list_nodes(address=self.address, detail=True, raise_on_missing_output=False) if n["state"] == "ALIVE"]
        except Exception:  # the dashboard is not up yet
            return []

    def actors(self, class_name: str) -> list[dict]:
        from ray.util.state import list_actors

        return list_actors(address=self.address, filters=[("class_name", "=", class_name)], detail=True, limit=1000,
                           raise_on_missing_output=False)

    def submit(self, entrypoint: str) -> str:
        """A job with this repository as its working dir, like `ray job submit --working-dir . -- ...`."""
        return self.jobs.submit_job(entrypoint=entrypoint, runtime_env={"working_dir": str(ROOT)})

    def wait_job(self, job_id: str, timeout: float) -> str:
        from ray.job_submission import JobStatus

        deadline = time.time() + timeout
        while time.time() < deadline:
            status = self.jobs.get_job_status(job_id)
            if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
                return status
            time.sleep(2)
        self.jobs.stop_job(job_id)
        raise TimeoutError(f"job {job_id} still {status} after {timeout:.0f} s; logs:\n{self.jobs.get_job_logs(job_id)[-3000:]}")

    @staticmethod
    def _wait(ready, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while not ready():
            if time.time() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            time.sleep(1)

    def shutdown(self) -> None:
        for proc in reversed(self.nodes):
            self.kill_node(proc)
        # `ray start --head` left its address for ray.init() to join; a dead address must not stay there
        current = Path("/tmp/ray/ray_current_cluster")
        if current.is_file() and current.read_text().strip().endswith(f":{self.port}"):
            current.unlink()
        for temp in self.temp_dirs:
            shutil.rmtree(temp, ignore_errors=True)


def fake_autoscaling_config(cluster_yaml: Path, port: int, cpu_scale: float, idle_timeout_minutes: float) -> dict:
    """cluster.yaml as Ray prepares it for `ray up`, on Ray's fake multi-node provider: the same node types,
    their CPUs scaled down to fit this machine, nodes started as local processes instead of instances."""
    import copy

    import yaml
    from ray.autoscaler._private.util import prepare_config

    config = prepare_config(yaml.safe_load(Path(cluster_yaml).read_text()))
    config["provider"] = {"type": "fake_multinode", "gcs_address": f"127.0.0.1:{port}", "use_node_id_as_ip": True,
                          "disable_node_updaters": True, "disable_launch_config_check": True}
    types = {}
    for name, node_type in config["available_node_types"].items():
        node_type = copy.deepcopy(node_type)
        cpus = node_type["resources"].get("CPU", 0)
        node_type["resources"]["CPU"] = max(1, round(cpus * cpu_scale)) if cpus else 0
        node_type["node_config"] = {}
        # the fake provider names its head node's type "ray.head.default"
        types["ray.head.default" if name == config["head_node_type"] else name] = node_type
    config["available_node_types"], config["head_node_type"] = types, "ray.head.default"
    config["idle_timeout_minutes"] = idle_timeout_minutes
    config.pop("docker", None)
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands", "initialization_commands"):
        config[key] = []
    config["file_mounts"] = {}
    return config
