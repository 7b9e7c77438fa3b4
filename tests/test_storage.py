"""Datasets and runs on an object store: a real S3 server (moto's) on loopback, reached through pyarrow.

The endpoint and test credentials are in the environment (conftest.py), the way a user's would be.
"""

import csv
import io
import json

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import BUCKET

from fgbg import checkpoints, storage
from fgbg.checkpoints import find as find_checkpoints
from fgbg.config import Config
from fgbg.errors import FgbgError
from fgbg.evaluate import evaluate
from fgbg.inspect import inspect_dataset
from fgbg.layout import MANIFEST_NAME, load_manifest
from fgbg.predict import dataset_rows, predict
from fgbg.train import fit
from fgbg.tune import sweep


def test_inspect_reads_the_zips_in_the_bucket_and_caches_the_manifest_beside_them(s3_data, synth_data):
    report = inspect_dataset(s3_data, workers=2)
    local = inspect_dataset(synth_data, workers=1)
    assert report["root"] == s3_data and not report["problems"]
    assert report["samples"] == local["samples"] == 48 and report["sizes"] == local["sizes"]
    assert storage.info(f"{s3_data}/{MANIFEST_NAME}").is_file
    assert load_manifest(s3_data).table.equals(load_manifest(synth_data).table)


def test_missing_bucket_or_prefix_is_one_error_naming_the_uri(s3_data):
    with pytest.raises(FgbgError, match=r"s3://no-such-bucket/data: no such bucket 'no-such-bucket'"):
        load_manifest("s3://no-such-bucket/data")
    with pytest.raises(FgbgError, match=rf"s3://{BUCKET}/nothing: not a dataset folder"):
        load_manifest(f"s3://{BUCKET}/nothing")
    with pytest.raises(FgbgError, match=r"s3://no-such-bucket/runs: no such bucket"):
        fit(Config(data=s3_data, out="s3://no-such-bucket/runs", workers=0, size=32, width=0.25, batch_size=8))


def test_a_bucket_that_refuses_writes_stops_training_before_ray_starts(s3_store, s3_data):
    s3_store.refuse_writes = True
    try:
        with pytest.raises(FgbgError, match=rf"s3://{BUCKET}/runs/r/.fgbg-lock: access denied \(check the AWS credentials"):
            fit(Config(data=s3_data, out=f"s3://{BUCKET}/runs", name="r", workers=1, size=32, width=0.25, batch_size=8))
    finally:
        s3_store.refuse_writes = False


def test_train_on_s3_data_with_checkpoints_in_s3_then_evaluate_and_resume_from_there(ray_cluster, s3_store, s3_data, capsys):
    runs = f"s3://{BUCKET}/runs"
    dropped = s3_store.dropped
    cfg = dict(data=s3_data, out=runs, name="s3run", workers=2, size=32, width=0.25, batch_size=8, log_every=100)
    fit(Config(**cfg, epochs=1))
    run = f"{runs}/s3run"
    assert [m["epoch"] for _, m in find_checkpoints(run)] == [1]
    assert storage.info(f"{run}/config.yaml").is_file and storage.info(f"{run}/report.md").is_file
    events = [f.path for f in storage.listdir(f"{run}/tensorboard", recursive=True)]
    assert any("events.out.tfevents" in p for p in events), events

    result = evaluate(run, s3_data)
    assert result["checkpoint"].startswith(f"{run}/checkpoint_") and result["samples"] == 24
    assert result["out"].startswith(f"{run}/evaluations/")  # each evaluation in its own folder of the run
    stored = json.loads(storage.read_bytes(f"{result['out']}/metrics.json"))
    assert stored["iou"] == result["iou"] and storage.info(f"{result['out']}/results.png").size > 0
    assert "baseline IoU" in storage.read_bytes(f"{run}/report.md").decode()  # the run's report lists it

    capsys.readouterr()
    fit(Config(**cfg, epochs=2))
    assert "resuming after epoch 1 of 2" in capsys.readouterr().out
    assert find_checkpoints(run)[-1][1]["epoch"] == 2
    assert s3_store.dropped - dropped >= 10  # the run, its checkpoints and the evaluation went through dropped requests


def test_sweep_on_s3_data_writes_its_trials_and_results_to_s3(ray_cluster, s3_data, tmp_path):
    space = tmp_path / "space.yaml"
    fixed = {"size": 32, "width": 0.25, "epochs": 1, "batch_size": 8, "log_every": 100}
    space.write_text(yaml.safe_dump({"fixed": fixed, "space": {"w_depth": {"grid": [0.5, 2.0]}}}))
    r = sweep(str(space), s3_data, out=f"s3://{BUCKET}/sweeps", name="sw", trials=1, scheduler="fifo")
    exp = f"s3://{BUCKET}/sweeps/sw"
    assert r["experiment"] == exp and len(r["trials"]) == 2
    rows = list(csv.DictReader(io.StringIO(storage.read_bytes(f"{exp}/results.csv").decode())))
    assert sorted(float(row["w_depth"]) for row in rows) == [0.5, 2.0] and all(row["epochs"] == "1" for row in rows)
    assert Config.load(f"{exp}/best_config.yaml").w_depth == r["best"]["w_depth"]
    assert storage.info(f"{exp}/sweep.png").size > 10_000
    assert all(find_checkpoints(f"{exp}/trials/{row['trial']}") for row in rows)


def test_predict_reads_a_dataset_in_the_bucket_and_writes_its_outputs_there(ray_cluster, s3_data, tmp_path):
    cfg = Config(size=32, width=0.25)
    checkpoints.write_untrained(tmp_path / "ck", cfg)
    out = f"s3://{BUCKET}/predictions"
    r = predict(str(tmp_path / "ck"), dataset_rows(s3_data), out, batch_size=8, concurrency=1)
    assert (r["samples"], r["predicted"]) == (48, 48) and r["worst"] == f"{out}/worst.png"
    table = pq.read_table(io.BytesIO(storage.read_bytes(f"{out}/predictions.parquet")))
    assert table["mask_file"][0].as_py() == f"{out}/masks/{table['name'][0].as_py()}.png"
    assert sum(f.path.endswith(".png") for f in storage.listdir(f"{out}/masks", recursive=True)) == 48
    assert predict(str(tmp_path / "ck"), dataset_rows(s3_data), out, concurrency=1)["done_before"] == 48  # resumed: nothing left
