"""`fgbg predict`: a dataset in the layout or a user's own pairs, in one process or on a real local Ray cluster.

The model is an untrained one written as a checkpoint: what is tested is the job (files, names, sizes, the table,
resuming, bad images), not the model's quality.
"""

import io
import zipfile

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from fgbg import checkpoints, reader
from fgbg import predict as predict_module
from fgbg.cli import main
from fgbg.config import Config
from fgbg.errors import FgbgError
from fgbg.pictures import LABEL_PX, TITLE_PX
from fgbg.predict import dataset_rows, pair_rows, predict
from fgbg.synth import SynthSpec, write_dataset


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained model at 32×32, saved as a training run saves its checkpoints."""
    cfg = Config(size=32, width=0.25)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("run") / "checkpoint_000000"
    checkpoints.write_untrained(folder, cfg)
    return str(folder)


def _folder_dataset(root, per_batch=24):
    write_dataset(SynthSpec(str(root), batches=1, per_batch=per_batch, size=32, seed=3, format="dir"), workers=0)
    return root


def _true_mask(row) -> np.ndarray:
    member = row["fg_bg"].replace("fg_bg_jpg/fg_bg_", "mask_black_jpg/bg_mask_")
    with zipfile.ZipFile(row["source"]) as zf:
        return np.asarray(Image.open(io.BytesIO(zf.read(member))).convert("L")) >= 128


def test_a_dataset_gets_every_file_and_a_table_whose_iou_matches_one_done_by_hand(checkpoint, synth_data, tmp_path):
    out = tmp_path / "out"
    rows = dataset_rows(synth_data)
    assert min(rows["fg_bg_offset"].to_pylist() + rows["depth_bytes"].to_pylist()) >= 0  # where each file lies in its zip
    reader._ZIPS.clear()
    r = predict(checkpoint, rows, out, batch_size=8, concurrency=0)
    assert not reader._ZIPS  # every member read at the index's offset: no zip's directory held in memory
    assert (r["samples"], r["predicted"], r["skipped"], r["done_before"]) == (48, 48, 0, 0)
    table = pq.read_table(out / "predictions.parquet").to_pylist()
    assert pacsv.read_csv(out / "predictions.csv").num_rows == 48 and len({row["name"] for row in table}) == 48
    assert table[0]["name"].startswith("batch1/fg_bg_") and table[0]["mask_file"] == str(out / "masks" / f"{table[0]['name']}.png")
    for row in table[:6]:
        mask = np.asarray(Image.open(row["mask_file"]))
        depth = Image.open(row["depth_file"])
        assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 255}
        assert depth.size == (16, 16) and depth.mode == "L"
        pred, true = mask > 0, _true_mask(row)
        union = (pred | true).sum()
        assert row["iou"] == pytest.approx((pred & true).sum() / union if union else 1.0, abs=1e-12)
        assert row["fg_area"] == pytest.approx(pred.mean(), abs=1e-12) and 0 <= row["ssim"] <= 1 and row["rmse"] >= 0
    assert r["iou"] == pytest.approx(np.mean([row["iou"] for row in table]))
    assert Image.open(r["worst"]).size == (LABEL_PX + 6 * 128, TITLE_PX + 16 * 128)  # the titles, then 16 rows of 6 128-pixel tiles


def test_flip_predicts_the_mean_over_each_pair_and_its_mirror_and_is_not_mixed_into_a_job_without_it(checkpoint, synth_data, tmp_path):
    rows = dataset_rows(synth_data).slice(0, 8)
    r = predict(checkpoint, rows, tmp_path / "flip", batch_size=8, concurrency=0, flip=True)
    row = pq.read_table(tmp_path / "flip" / "predictions.parquet").to_pylist()[0]
    x, b = (torch.from_numpy(np.array(Image.open(io.BytesIO(zipfile.ZipFile(row["source"]).read(row[k]))).convert("RGB"))
                             ).permute(2, 0, 1)[None].float() / 255 for k in ("fg_bg", "bg"))
    model = checkpoints.load_model(checkpoint)[0]
    with torch.no_grad():
        mask_logits = (model(x, b)[0] + model(x.flip(-1), b.flip(-1))[0].flip(-1)) / 2
    assert np.array_equal(np.asarray(Image.open(row["mask_file"])) > 0, mask_logits[0, 0].numpy() > 0) and r["predicted"] == 8
    predict(checkpoint, rows, tmp_path / "plain", batch_size=8, concurrency=0)
    with pytest.raises(FgbgError, match="flip differ"):
        predict(checkpoint, rows, tmp_path / "plain", batch_size=8, concurrency=0, flip=True)


def test_a_job_stopped_half_way_resumes_without_writing_a_sample_twice_or_losing_one(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(predict_module, "PART_ROWS", 8)  # 24 samples: 3 parts
    root = _folder_dataset(tmp_path / "data")
    rows = dataset_rows(root)
    broken = root / "batch1" / rows["fg_bg"][19].as_py()  # in the last part
    good = broken.read_bytes()
    broken.write_bytes(good[: len(good) // 3])
    out = tmp_path / "out"
    with pytest.raises(FgbgError, match=rf"{broken.name}: undecodable or truncated JPEG .*--on-bad skip"):
        predict(checkpoint, rows, out, batch_size=4, concurrency=0)
    assert sorted(p.name for p in (out / "parts").iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    first = {p: p.stat().st_mtime_ns for p in (out / "masks").rglob("*.png")}
    assert len(first) == 16 and not list(out.rglob("*.tmp*"))
    broken.write_bytes(good)
    r = predict(checkpoint, dataset_rows(root), out, batch_size=4, concurrency=0)
    assert (r["done_before"], r["predicted"], r["samples"]) == (16, 8, 24)
    assert all(p.stat().st_mtime_ns == t for p, t in first.items())  # the first two parts were not written again
    names = pq.read_table(out / "predictions.parquet")["name"].to_pylist()
    assert sorted(names) == sorted(rows["name"].to_pylist())  # each once
    with pytest.raises(FgbgError, match=r"holds predictions of another job \(its names, samples differ"):
        predict(checkpoint, dataset_rows(root, "all").slice(0, 5), out, concurrency=0)


def test_a_bad_image_is_skipped_and_counted_with_on_bad_skip(checkpoint, tmp_path):
    root = _folder_dataset(tmp_path / "data", per_batch=12)
    rows = dataset_rows(root)
    (root / "batch1" / rows["fg_bg"][3].as_py()).write_bytes(b"not a jpeg")
    r = predict(checkpoint, rows, tmp_path / "out", concurrency=0, on_bad="skip")
    assert (r["predicted"], r["skipped"], r["samples"]) == (11, 1, 12)
    table = pq.read_table(tmp_path / "out" / "predictions.parquet").to_pylist()
    (bad,) = [row for row in table if row["error"]]
    assert bad["name"] == rows["name"][3].as_py() and "not a JPEG or PNG image" in bad["error"] and not bad["mask_file"]
    assert not (tmp_path / "out" / "masks" / f"{bad['name']}.png").exists()


def test_ray_data_job_writes_what_one_pair_alone_writes_pixel_for_pixel(ray_cluster, checkpoint, synth_data, tmp_path):
    rows = dataset_rows(synth_data, "test")
    r = predict(checkpoint, rows, tmp_path / "job", batch_size=8, concurrency=2)
    assert (r["samples"], r["predicted"]) == (24, 24)
    table = pq.read_table(tmp_path / "job" / "predictions.parquet").to_pylist()
    assert all(row["node"] for row in table)  # predicted by actors on the cluster's node
    row = table[5]
    with zipfile.ZipFile(row["source"]) as zf:  # the sample's two images, as a user would have them
        (tmp_path / "fg.jpg").write_bytes(zf.read(row["fg_bg"]))
        (tmp_path / "bg.jpg").write_bytes(zf.read(row["bg"]))
    assert main(["predict", "--checkpoint", checkpoint, "--fg-bg", str(tmp_path / "fg.jpg"), "--bg", str(tmp_path / "bg.jpg"),
                 "--out", str(tmp_path / "one")]) == 0
    for kind in ("masks", "depth"):
        alone = np.asarray(Image.open(tmp_path / "one" / kind / "fg.png"))
        assert np.array_equal(alone, np.asarray(Image.open(tmp_path / "job" / kind / f"{row['name']}.png")))


def test_folders_of_pairs_on_ray_data_are_written_at_their_own_size(ray_cluster, checkpoint, tmp_path, capsys):
    rng = np.random.default_rng(0)
    (tmp_path / "fg").mkdir()
    for name in ("a.jpg", "b.png", "c.jpg"):
        Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(tmp_path / "fg" / name)
    Image.new("RGB", (70, 50), (90, 120, 30)).save(tmp_path / "bg.jpg")
    assert main(["predict", "--checkpoint", checkpoint, "--fg-bg", str(tmp_path / "fg"), "--bg", str(tmp_path / "bg.jpg"),
                 "--out", str(tmp_path / "out"), "--raw", "--concurrency", "1"]) == 0
    assert "predicted 3 samples" in capsys.readouterr().out
    for name in ("a", "b", "c"):
        assert Image.open(tmp_path / "out" / "masks" / f"{name}.png").size == (70, 50)
        assert Image.open(tmp_path / "out" / "depth" / f"{name}.png").size == (35, 25)
        raw = np.load(tmp_path / "out" / "raw" / f"{name}.npz")
        assert raw["mask_probability"].shape == (32, 32) and raw["depth"].shape == (16, 16)
    table = pq.read_table(tmp_path / "out" / "predictions.parquet")
    assert table.num_rows == 3 and all(np.isnan(table["iou"].to_numpy())) and not (tmp_path / "out" / "worst.png").exists()


def test_pairs_that_do_not_match_and_inputs_that_do_not_exist_are_named(checkpoint, tmp_path, capsys):
    Image.fromarray(np.full((80, 100, 3), 200, np.uint8)).save(tmp_path / "fg_bg.jpg")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "bg.jpg")
    with pytest.raises(FgbgError, match=r"fg_bg.jpg: is 100×80 but its background .*bg.jpg is 64×64"):
        predict(checkpoint, pair_rows(tmp_path / "fg_bg.jpg", tmp_path / "bg.jpg"), tmp_path / "out", concurrency=0)
    with pytest.raises(FgbgError, match=r"nothing.jpg: no such file or folder"):
        pair_rows(tmp_path / "nothing.jpg", tmp_path / "bg.jpg")
    assert main(["predict", "--checkpoint", checkpoint, "--data", str(tmp_path), "--fg-bg", str(tmp_path / "fg_bg.jpg"), "--out", "o"]) == 2
    assert "predict takes --data DATA (a dataset in the layout), or --fg-bg and --bg" in capsys.readouterr().err
    (tmp_path / "text.jpg").write_text("not an image")
    args = ["predict", "--checkpoint", checkpoint, "--fg-bg", str(tmp_path / "text.jpg"), "--bg", str(tmp_path / "bg.jpg"), "--out", str(tmp_path / "t")]
    assert main(args) == 2
    assert capsys.readouterr().err == f"fgbg predict: error: {tmp_path / 'text.jpg'}: not a JPEG or PNG image (--on-bad skip skips it)\n"
