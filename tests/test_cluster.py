"""A real multi-node cluster on loopback: jobs through the Job Submission API, a lost worker node, a killed driver.

Each node is its own `ray start` process (tests/loopback.py); the head advertises no CPUs, as
cluster.yaml's head does, so all training and decoding happens on the worker nodes.
"""

import re
import time
from collections import Counter

import pytest

from fgbg.synth import SynthSpec, write_dataset
from fgbg.train import find_checkpoints
from loopback import LoopbackCluster, registered_epoch

TRAIN = "python jobs/train.py --size 32 --width 0.25 --workers 2 --batch-size 8 --set placement_strategy=SPREAD --set log_every=100"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head with 0 CPUs and two worker nodes of 2 CPUs: one training worker and one decoder each."""
    c = LoopbackCluster(tmp_path_factory.mktemp("cluster-logs"))
    try:
        c.workers = [c.add_node(2), c.add_node(2)]
        yield c
    finally:
        c.shutdown()


@pytest.fixture(scope="module")
def longer_data(tmp_path_factory):
    """Enough samples that an epoch lasts a few seconds: room to kill a node in the middle of one."""
    root = tmp_path_factory.mktemp("longer")
    write_dataset(SynthSpec(str(root), batches=2, per_batch=160, size=64, seed=2), workers=0)
    return root


def _epochs_done(logs: str) -> Counter:
    return Counter(int(n) for n in re.findall(r"epoch (\d+)/\d+ done", logs))


def test_job_trains_on_workers_placed_on_both_worker_nodes(cluster, synth_data, tmp_path):
    job = cluster.submit(f"{TRAIN} --data {synth_data} --out {tmp_path} --name mn --epochs 2")
    status = cluster.wait_job(job, 300)
    logs = cluster.jobs.get_job_logs(job)
    assert status == "SUCCEEDED", logs[-3000:]
    assert _epochs_done(logs) == Counter({1: 1, 2: 1})
    assert find_checkpoints(tmp_path / "mn")[-1][1]["epoch"] == 2
    workers = [a for a in cluster.actors("RayTrainWorker") if a["job_id"] == cluster.jobs.get_job_info(job).driver_info.id]
    assert {a["node_id"] for a in workers} == {n.node_id for n in cluster.workers}


def test_lost_worker_node_restarts_the_worker_group_from_the_last_checkpoint(cluster, longer_data, tmp_path):
    run = tmp_path / "ft"
    job = cluster.submit(f"{TRAIN} --data {longer_data} --out {tmp_path} --name ft --epochs 4 --size 64")
    deadline = time.time() + 240
    while registered_epoch(run) < 1 and time.time() < deadline:
        time.sleep(0.2)
    assert registered_epoch(run) >= 1, cluster.jobs.get_job_logs(job)[-3000:]
    lost = cluster.workers.pop(1)
    cluster.kill_node(lost)  # the node of one training worker, while the next epoch runs
    cluster.workers.append(cluster.add_node(2))  # the replacement the autoscaler would start
    status = cluster.wait_job(job, 400)
    logs = cluster.jobs.get_job_logs(job)
    assert status == "SUCCEEDED", logs[-3000:]
    resumed = int(re.search(r"resuming after epoch (\d+) of 4", logs).group(1))
    assert resumed >= 1
    done = _epochs_done(logs)
    assert set(done) == {1, 2, 3, 4} and sum(done.values()) - 4 <= 1  # at most the interrupted epoch again
    assert all(done[e] == 1 for e in range(1, resumed + 1))  # nothing before the checkpoint was recomputed
    assert find_checkpoints(run)[-1][1]["epoch"] == 4
