"""`fgbg export` and `fgbg predict --model`: a small trained checkpoint as ONNX and as torch.export's program, run
without fgbg, against fgbg's own inference; predictions through onnxruntime against PyTorch's."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from fgbg import checkpoints
from fgbg.batch import prepare_batch
from fgbg.cli import main
from fgbg.config import Config
from fgbg.errors import FgbgError
from fgbg.export import export
from fgbg.layout import load_manifest
from fgbg.losses import MaskDepthLoss
from fgbg.model import build_model
from fgbg.predict import Predictor, dataset_rows, predict
from fgbg.reader import decode_table
from fgbg.step import TrainStep

CFG = Config(size=32, width=0.25)


@pytest.fixture(scope="module")
def trained(synth_data, tmp_path_factory):
    """A checkpoint trained for 60 steps on the session's data (plain PyTorch, no Ray): masks it is sure of, mostly."""
    torch.manual_seed(0)
    m = load_manifest(synth_data)
    decoded = decode_table(m.with_paths(m.split()["train"]), size=32)
    model = build_model(CFG)
    step = TrainStep(model, torch.optim.AdamW(model.parameters(), lr=3e-3), MaskDepthLoss.from_config(CFG), torch.device("cpu"))
    batch = prepare_batch({k: torch.from_numpy(v) for k, v in decoded.items() if k != "bad"}, torch.device("cpu"), channels_last=False)
    for _ in range(60):
        step(batch)
    folder = tmp_path_factory.mktemp("run") / "checkpoint_000000"
    folder.mkdir()
    checkpoints.write(folder, model.state_dict(), {"epoch": 0, "best_iou": 0.0, "step": 60}, CFG, {"epoch": 1, "iou": 0.0})
    return str(folder)


@pytest.fixture(scope="module")
def pairs(synth_data):
    """The test split's pairs as a user has them: uint8 N×H×W×3."""
    m = load_manifest(synth_data)
    decoded = decode_table(m.with_paths(m.split()["test"]), size=32)
    return decoded["fg_bg"], decoded["bg"]


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    return {fmt: export(trained, fmt, str(out / f"model.{'onnx' if fmt == 'onnx' else 'pt2'}"))["out"] for fmt in ("onnx", "torch")}


def _fgbg(trained, fg_bg, bg):
    logits, depth = Predictor(trained, "unused").infer(fg_bg, bg)
    return torch.sigmoid(logits).numpy(), depth.numpy()


def test_the_exported_program_and_onnx_file_compute_what_fgbg_does_for_any_batch(trained, exported, pairs):
    import onnxruntime as ort

    fg_bg, bg = pairs
    want_mask, want_depth = _fgbg(trained, fg_bg, bg)
    session = ort.InferenceSession(exported["onnx"])
    program = torch.export.load(exported["torch"]).module()
    for n in (1, 5, len(fg_bg)):  # the batch dimension is dynamic
        onnx_mask, onnx_depth = session.run(["mask", "depth"], {"fg_bg": fg_bg[:n], "bg": bg[:n]})
        with torch.no_grad():
            torch_mask, torch_depth = (t.numpy() for t in program(torch.from_numpy(fg_bg[:n]), torch.from_numpy(bg[:n])))
        for mask, depth in ((onnx_mask, onnx_depth), (torch_mask, torch_depth)):
            assert mask.shape == (n, 1, 32, 32) and depth.shape == (n, 1, 16, 16) and mask.dtype == np.float32
            assert np.abs(mask - want_mask[:n]).max() < 1e-4 and np.abs(depth - want_depth[:n]).max() < 1e-4
            assert ((mask > 0.5) != (want_mask[:n] > 0.5)).mean() <= 1e-4  # masks equal at 0.5 on ≥ 99.99% of pixels
            assert (np.round(depth * 255) != np.round(want_depth[:n] * 255)).sum() <= 1 and 0 <= depth.min() and depth.max() <= 1


def test_the_files_say_what_made_them_and_run_where_fgbg_is_not_imported(exported, pairs, tmp_path):
    meta = json.loads(onnx.load(exported["onnx"]).metadata_props[0].value)
    assert meta["opset"] == 18 and meta["size"] == 32 and meta["config"]["width"] == 0.25 and meta["torch"] == torch.__version__
    np.save(tmp_path / "fg_bg.npy", pairs[0][:3])
    np.save(tmp_path / "bg.npy", pairs[1][:3])
    script = f"""
import sys, numpy as np, onnxruntime as ort
s = ort.InferenceSession({exported['onnx']!r})
mask, depth = s.run(["mask", "depth"], {{"fg_bg": np.load({str(tmp_path / 'fg_bg.npy')!r}), "bg": np.load({str(tmp_path / 'bg.npy')!r})}})
assert "fgbg" not in sys.modules and "torch" not in sys.modules
print(mask.shape, depth.shape)
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "(3, 1, 32, 32) (3, 1, 16, 16)", run.stderr[-2000:]
    extra = {"fgbg.json": ""}
    torch.export.load(exported["torch"], extra_files=extra)
    assert json.loads(extra["fgbg.json"])["config"]["size"] == 32


def test_predict_through_onnxruntime_writes_what_pytorch_writes(trained, exported, synth_data, tmp_path):
    rows = dataset_rows(synth_data, "test")
    by_torch = predict(trained, rows, tmp_path / "torch", concurrency=0)
    by_onnx = predict(exported["onnx"], rows, tmp_path / "onnx", concurrency=0, flip=True, raw=True)
    predict(trained, rows, tmp_path / "torch-flip", concurrency=0, flip=True)
    a, b, c = (pq.read_table(tmp_path / d / "predictions.parquet") for d in ("torch", "onnx", "torch-flip"))
    assert a.column_names == b.column_names and a["name"].to_pylist() == b["name"].to_pylist()
    assert by_onnx["samples"] == by_torch["samples"] == 24 and (tmp_path / "onnx" / "raw").is_dir()
    apart = np.mean([(np.asarray(Image.open(x)) != np.asarray(Image.open(y))).mean()
                     for x, y in zip(b["mask_file"].to_pylist(), c["mask_file"].to_pylist())])
    assert apart <= 1e-4  # mirrored and averaged by either engine: masks ≤ 0.01% of pixels apart
    np.testing.assert_allclose(b["iou"].to_numpy(), c["iou"].to_numpy(), atol=1e-3)


def test_bad_input_is_one_line_each(trained, exported, tmp_path, capsys):
    cases = [
        (["export", "--checkpoint", str(tmp_path / "nothing"), "--format", "onnx", "--out", str(tmp_path / "m.onnx")], "not a checkpoint"),
        (["export", "--checkpoint", trained, "--format", "tflite", "--out", str(tmp_path / "m.tflite")], "--format must be onnx or torch, not 'tflite'"),
        (["export", "--checkpoint", trained, "--format", "onnx", "--out", str(tmp_path / "no" / "m.onnx")], "cannot write there"),
    ]
    h, f = onnx.helper, onnx.TensorProto.FLOAT  # someone else's model: y = x
    other = h.make_model(h.make_graph([h.make_node("Identity", ["x"], ["y"])], "g", [h.make_tensor_value_info("x", f, [1])],
                                      [h.make_tensor_value_info("y", f, [1])]), opset_imports=[h.make_opsetid("", 18)], ir_version=9)
    (tmp_path / "other.onnx").write_bytes(other.SerializeToString())
    (tmp_path / "text.onnx").write_text("not onnx")
    for name, what in (("other.onnx", "not an ONNX model fgbg exported"), ("text.onnx", "not an ONNX model onnxruntime can load")):
        cases.append((["predict", "--model", str(tmp_path / name), "--fg-bg", exported["onnx"], "--bg", exported["onnx"],
                       "--out", str(tmp_path / "p")], what))
    for args, what in cases:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert what in err and err.count("\n") == 1, err
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():  # (with onnxruntime-gpu, --gpu runs there instead)
        with pytest.raises(FgbgError, match="this onnxruntime has no CUDA provider"):
            Predictor(exported["onnx"], "unused", device="cuda")
