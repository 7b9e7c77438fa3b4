"""The trained model for places fgbg is not: an ONNX file (onnxruntime, C++, edge runtimes) or a PyTorch program.

Both take what a user has, the two images as uint8 N×H×W×3 at the model's size, named `fg_bg` and `bg`, and do
the rest inside (float conversion, the difference input); they give `mask`, the foreground's probability
(N×1×H×W), and `depth` (N×1×H/2×W/2, in [0, 1], brighter = nearer). The batch dimension is dynamic. The file
records what made it: fgbg's, torch's and the exporter's versions, the ONNX opset, the checkpoint and the run's
config (an ONNX model's metadata_props, or a PyTorch program's extra file `fgbg.json`).

The PyTorch program is torch.export's (`torch.export.load(FILE).module()`), not TorchScript, which torch 2.14
deprecates (torch.jit.script and trace warn that they will be removed). ONNX uses torch's dynamo exporter
(`torch.onnx.export(..., dynamo=True)`, with onnxscript).
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import torch
from torch import nn

from . import __version__, storage
from .checkpoints import load_model
from .errors import FgbgError

FORMATS = ("onnx", "torch")
OPSET = 18
INPUTS, OUTPUTS = ("fg_bg", "bg"), ("mask", "depth")


class Exported(nn.Module):
    """The model with its input conversion: uint8 N×H×W×3 pairs → mask probability N×1×H×W, depth N×1×h×w in [0, 1]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.eval()  # (the wrapper too: the exporters warn of a module in training mode)

    def forward(self, fg_bg: torch.Tensor, bg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, b = (t.permute(0, 3, 1, 2).float() / 255.0 for t in (fg_bg, bg))
        mask_logits, depth = self.model(x, b)
        return torch.sigmoid(mask_logits), depth.clamp(0.0, 1.0)


def export(checkpoint: str, fmt: str, out: str) -> dict:
    """Export a checkpoint (or a run's best) to `out` as ONNX or a PyTorch program; what was written."""
    if fmt not in FORMATS:
        raise FgbgError(f"--format must be onnx or torch, not {fmt!r}")
    out = storage.absolute(out)
    if not storage.is_uri(out):
        folder = os.path.dirname(out)
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK) or os.path.isdir(out):
            raise FgbgError(f"{out}: cannot write there (expected a file in a folder that exists and can be written)")
    model, cfg, ckpt = load_model(checkpoint)  # a checkpoint that does not load stops here, named
    wrapper = Exported(model)
    example = tuple(torch.zeros(2, cfg.size, cfg.size, 3, dtype=torch.uint8) for _ in INPUTS)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    shapes = {name: {0: batch} for name in INPUTS}
    meta = {"fgbg": __version__, "torch": torch.__version__, "format": fmt, "checkpoint": ckpt, "size": cfg.size,
            "inputs": {name: f"uint8 N×{cfg.size}×{cfg.size}×3" for name in INPUTS},
            "outputs": {"mask": f"float N×1×{cfg.size}×{cfg.size}, the foreground's probability",
                        "depth": f"float N×1×{cfg.size // 2}×{cfg.size // 2} in [0, 1], brighter = nearer"},
            "config": cfg.to_dict()}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        local = os.path.join(tmp, "model")
        if fmt == "torch":
            program = torch.export.export(wrapper, example, dynamic_shapes=shapes)
            torch.export.save(program, local, extra_files={"fgbg.json": json.dumps(meta)})
        else:
            import onnx

            meta |= {"opset": OPSET, "onnx": onnx.__version__}
            exported = torch.onnx.export(wrapper, example, dynamo=True, input_names=list(INPUTS), output_names=list(OUTPUTS),
                                         dynamic_shapes=shapes, opset_version=OPSET, verbose=False)
            exported.save(local)
            proto = onnx.load(local)
            onnx.helper.set_model_props(proto, {"fgbg": json.dumps(meta)})
            onnx.save(proto, local)
        with open(local, "rb") as f:
            data = f.read()
    try:
        storage.write_bytes(out, data)
    except OSError as e:
        raise FgbgError(f"{out}: cannot write ({e.strerror or e})") from None
    return {"out": out, "format": fmt, "bytes": len(data), "checkpoint": ckpt, "size": cfg.size, **({"opset": OPSET} if fmt == "onnx" else {})}


class OnnxModel:
    """An ONNX file fgbg exported, run by onnxruntime: `infer` as fgbg.predict.Predictor's (mask logits, depth)."""

    def __init__(self, path: str, gpu: bool = False, threads: int = 0):
        try:
            import onnxruntime as ort
        except ImportError:
            raise FgbgError("--model FILE.onnx needs onnxruntime (pip install 'fgbg[export]')") from None
        try:
            data = storage.read_bytes(storage.absolute(path))
        except OSError as e:
            raise FgbgError(f"{path}: cannot read ({e.strerror or e})") from None
        providers = ["CPUExecutionProvider"]
        if gpu:
            self.check_gpu()
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only
        try:
            self.session = ort.InferenceSession(data, options, providers=providers)
            meta = json.loads(self.session.get_modelmeta().custom_metadata_map.get("fgbg", "null"))
        except Exception as e:  # onnxruntime raises its own kinds for a file that is not ONNX
            raise FgbgError(f"{path}: not an ONNX model onnxruntime can load ({str(e).splitlines()[0][:200]})") from None
        if not isinstance(meta, dict) or "size" not in meta or [i.name for i in self.session.get_inputs()] != list(INPUTS):
            raise FgbgError(f"{path}: not an ONNX model fgbg exported (no fgbg metadata, or other inputs than fg_bg and bg)")
        self.meta, self.size = meta, int(meta["size"])

    @staticmethod
    def check_gpu() -> None:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise FgbgError("--gpu with --model: this onnxruntime has no CUDA provider (pip install onnxruntime-gpu instead of onnxruntime)")

    def __call__(self, fg_bg: np.ndarray, bg: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 N×H×W×3 pairs → mask logits (from the probability) and depth, float32 on the CPU."""
        probability, depth = self.session.run(list(OUTPUTS), {"fg_bg": np.ascontiguousarray(fg_bg), "bg": np.ascontiguousarray(bg)})
        return torch.logit(torch.from_numpy(probability), eps=1e-7), torch.from_numpy(depth)

