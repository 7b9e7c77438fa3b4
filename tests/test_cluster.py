"""A real multi-node cluster on loopback: jobs through the Job Submission API, a lost worker node, a killed driver.

Each node is its own `ray start` process (tests/loopback.py); the head advertises no CPUs, as
cluster.yaml's head does, so all training and decoding happens on the worker nodes.
"""

import csv
import json
import re
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from fgbg import checkpoints
from fgbg.checkpoints import find as find_checkpoints
from fgbg.config import Config
from fgbg.synth import SynthSpec, write_dataset

from loopback import LoopbackCluster, fake_autoscaling_config, free_port, registered_epoch

CLUSTER_YAML = Path(__file__).parents[1] / "cluster.yaml"
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


def _training_node(cluster, job, actor="RayTrainWorker"):
    """A worker node that holds one of this job's live training workers (Ray Train's; or a sweep's trial trained in its own
    process: ImplicitFunc, Tune's actor for a function)."""
    driver = cluster.jobs.get_job_info(job).driver_info.id
    training = {a["node_id"] for a in cluster.actors(actor) if a["state"] == "ALIVE" and a["job_id"] == driver}
    return next(n for n in cluster.workers if n.node_id in training)


def test_job_trains_on_workers_placed_on_both_worker_nodes_on_samples_drawn_from_a_bucket(cluster, s3_data, tmp_path):
    """As at the original's size (bench/scale.py: 2,000 samples an epoch drawn from a batch of 40,000 in S3), at a small one."""
    job = cluster.submit(f"{TRAIN} --data {s3_data} --out {tmp_path} --name mn --epochs 2 --set samples_per_epoch=16")
    status = cluster.wait_job(job, 300)
    logs = cluster.jobs.get_job_logs(job)
    assert status == "SUCCEEDED", (cluster.jobs.get_job_info(job).message, logs[-3000:])  # (the message: a job that never started)
    assert _epochs_done(logs) == Counter({1: 1, 2: 1})
    assert find_checkpoints(tmp_path / "mn")[-1][1]["epoch"] == 2
    history = [json.loads(line) for line in (tmp_path / "mn" / "history.jsonl").read_text().splitlines()]
    assert [(m["train_samples"], m["samples_drawn"]) for m in history] == [(16, 16), (16, 32)]  # of the bucket's 24
    driver = cluster.jobs.get_job_info(job).driver_info
    workers = [a for a in cluster.actors("RayTrainWorker") if a["job_id"] == driver.id]
    assert {a["node_id"] for a in workers} == {n.node_id for n in cluster.workers}
    # the progress queue sits with the driver, on the head, where losing a worker node cannot take it
    (queue,) = [a for a in cluster.actors("_QueueActor") if a["job_id"] == driver.id]
    assert queue["node_id"] == next(n["node_id"] for n in cluster.alive_nodes() if n["is_head_node"])


def test_predict_job_spreads_its_actors_over_both_worker_nodes(cluster, longer_data, tmp_path):
    cfg = Config(size=64, width=0.25)
    checkpoints.write_untrained(tmp_path / "ck", cfg)
    job = cluster.submit(f"python jobs/predict.py --checkpoint {tmp_path / 'ck'} --data {longer_data} --out {tmp_path / 'p'} "
                         "--concurrency 2 --batch-size 16")
    status = cluster.wait_job(job, 300)
    assert status == "SUCCEEDED", cluster.jobs.get_job_logs(job)[-3000:]
    table = pq.read_table(tmp_path / "p" / "predictions.parquet")
    assert table.num_rows == 320 and len(set(table["name"].to_pylist())) == 320
    assert set(table["node"].to_pylist()) == {n.node_id for n in cluster.workers}


def test_lost_worker_node_restarts_the_worker_group_from_the_last_checkpoint(cluster, longer_data, tmp_path):
    run = tmp_path / "ft"
    # epochs of 96 samples drawn from the 160: the restarted worker group goes on in the same datasets, past what it trained
    job = cluster.submit(f"{TRAIN} --data {longer_data} --out {tmp_path} --name ft --epochs 4 --size 64 --set samples_per_epoch=96")
    deadline = time.time() + 240
    while registered_epoch(run) < 1 and time.time() < deadline:
        time.sleep(0.2)
    assert registered_epoch(run) >= 1, cluster.jobs.get_job_logs(job)[-3000:]
    lost = _training_node(cluster, job)
    cluster.workers.remove(lost)
    cluster.kill_node(lost)  # the node of a training worker, while the next epoch runs
    cluster.workers.append(cluster.add_node(2))  # the replacement the autoscaler would start
    status = cluster.wait_job(job, 400)
    logs = cluster.jobs.get_job_logs(job)
    assert status == "SUCCEEDED", logs[-3000:]
    resumed = re.search(r"resuming after epoch (\d+) of 4", logs)
    assert resumed, logs[-3000:]
    resumed = int(resumed.group(1))
    assert resumed >= 1
    done = _epochs_done(logs)
    assert set(done) == {1, 2, 3, 4} and sum(done.values()) - 4 <= 1  # at most the interrupted epoch again
    assert all(done[e] == 1 for e in range(1, resumed + 1))  # nothing before the checkpoint was recomputed
    assert find_checkpoints(run)[-1][1]["epoch"] == 4
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [m["samples_drawn"] for m in history] == [96, 192, 288, 384]


def test_lost_worker_node_during_a_sweep_resumes_its_trials(cluster, longer_data, tmp_path):
    space = tmp_path / "space.yaml"
    fixed = {"size": 64, "width": 0.25, "batch_size": 8, "epochs": 3, "log_every": 100, "placement_strategy": "SPREAD"}
    space.write_text(yaml.safe_dump({"fixed": fixed, "space": {"w_depth": {"grid": [0.5, 2.0]}}}))
    job = cluster.submit(f"python jobs/tune.py --space {space} --data {longer_data} --trials 1 --scheduler fifo --out {tmp_path} --name sw")
    trials = tmp_path / "sw" / "trials"
    deadline = time.time() + 300
    # a trial trained in its own process writes its checkpoints into its run directory as Ray Train's do
    while not any(find_checkpoints(run) for run in trials.glob("*")) and time.time() < deadline:
        time.sleep(0.2)
    assert any(find_checkpoints(run) for run in trials.glob("*")), cluster.jobs.get_job_logs(job)[-3000:]
    lost = _training_node(cluster, job, "ImplicitFunc")  # one-worker trials train in the trial's own process (the default)
    cluster.workers.remove(lost)
    cluster.kill_node(lost)
    cluster.workers.append(cluster.add_node(2))
    status = cluster.wait_job(job, 500)
    assert status == "SUCCEEDED", cluster.jobs.get_job_logs(job)[-3000:]
    rows = list(csv.DictReader((tmp_path / "sw" / "results.csv").open()))
    assert len(rows) == 2 and all(row["epochs"] == "3" for row in rows)
    for result in (tmp_path / "sw").glob("run_trial_*/result.json"):
        epochs = Counter(json.loads(line)["epoch"] for line in result.read_text().splitlines())
        assert set(epochs) == {1, 2, 3} and sum(epochs.values()) - 3 <= 1, epochs  # at most one epoch again


def test_autoscaler_starts_worker_nodes_for_a_training_job_and_stops_them_when_idle(synth_data, tmp_path):
    """Ray's fake multi-node provider with cluster.yaml's node types (CPUs scaled to a quarter)."""
    port = free_port()
    config = fake_autoscaling_config(CLUSTER_YAML, port, cpu_scale=0.25, idle_timeout_minutes=0.1)
    (tmp_path / "autoscaling.yaml").write_text(yaml.safe_dump(config))
    env = {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # nodes the provider starts use 127.0.0.1 too
    c = LoopbackCluster(tmp_path / "logs", port=port, autoscaling_config=tmp_path / "autoscaling.yaml", env=env)
    try:
        assert len(c.alive_nodes()) == 1  # the head alone: min_workers 0
        job = c.submit(f"{TRAIN} --data {synth_data} --out {tmp_path} --name as --epochs 1")
        seen = {}
        deadline = time.time() + 300
        while c.jobs.get_job_status(job) not in ("SUCCEEDED", "FAILED", "STOPPED") and time.time() < deadline:
            seen.update({n["node_id"]: n for n in c.alive_nodes() if not n["is_head_node"]})
            time.sleep(1)
        assert c.wait_job(job, 10) == "SUCCEEDED", c.jobs.get_job_logs(job)[-3000:]
        assert seen, "the autoscaler started no worker node"
        node_types = {name: t["resources"] for name, t in config["available_node_types"].items() if name != "ray.head.default"}
        assert all(n["resources_total"].get("CPU") in {r["CPU"] for r in node_types.values()} for n in seen.values())
        workers = c.actors("RayTrainWorker")
        assert len(workers) == 2 and {a["node_id"] for a in workers} <= set(seen)
        LoopbackCluster._wait(lambda: len(c.alive_nodes()) == 1, 120, "idle worker nodes to be stopped")
    finally:
        c.shutdown()
