"""`fgbg profile`: parameters, MACs and measured speed of the model on this machine."""

from __future__ import annotations

import copy
import io
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from .batch import prepare_batch
from .config import Config
from .losses import MaskDepthLoss
from .model import build_model
from .optim import build_optimizer
from .step import TrainStep, default_device, wait_for


def count_macs(model: torch.nn.Module, size: int) -> int:
    """MACs of one sample as thop counts them, on a copy (thop leaves buffers in the modules it touches)."""
    from thop import profile

    x = torch.zeros(1, 3, size, size)
    macs, _ = profile(copy.deepcopy(model).cpu().eval(), inputs=(x, x), verbose=False)
    return int(macs)


def random_batch(n: int, size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch of random images, masks and depths as fgbg.reader decodes them (uint8 N×H×W×C, depth at half size)."""
    g = torch.Generator().manual_seed(seed)

    def image(side: int, channels: int) -> torch.Tensor:
        return torch.randint(0, 256, (n, side, side, channels), dtype=torch.uint8, generator=g)

    return {"fg_bg": image(size, 3), "bg": image(size, 3), "mask": image(size, 1), "depth": image(size // 2, 1)}


def _rate(fn, batch: int, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        wait_for(device)
        t = time.perf_counter()
        fn()
        wait_for(device)
        times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def profile_model(width: float = 1.0, size: int = 160, batch: int = 8, repeats: int = 3, channels_last: bool = True, amp: bool = True,
                  device: str | None = None) -> dict:
    """params, macs, and median inference and train-step samples/s at this batch size, as fgbg runs them on the
    device (by default the GPU if there is one, else the CPU)."""
    device = torch.device(device) if device else default_device()
    cfg = Config(width=width)  # the default model, loss and optimiser at this width
    model = build_model(cfg)
    params = sum(p.numel() for p in model.parameters())
    macs = count_macs(model, size)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    batch_ = prepare_batch(random_batch(batch, size), device, channels_last)
    step = TrainStep(model, build_optimizer(cfg, model.parameters()), MaskDepthLoss.from_config(cfg), device, amp=amp)

    def infer():
        with torch.no_grad():  # float32, as evaluate and predict run
            model(batch_["fg_bg"], batch_["bg"])

    model.eval()
    inference = _rate(infer, batch, repeats, device)
    model.train()
    training = _rate(lambda: step(batch_), batch, repeats, device)
    return {
        "width": width,
        "size": size,
        "batch": batch,
        "params": params,
        "macs": macs,
        "inference_samples_per_s": round(inference, 2),
        "train_samples_per_s": round(training, 2),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "train_precision": str(step.dtype or torch.float32).removeprefix("torch."),
    }


class RunProfiler:
    """`--profile` of a training run, per worker: `step()` after every training step, `finish()` at the end.

    Off (the default) it installs nothing: no profiler, no hook. Files go to RUN/profile/ (the torch
    trace to RUN/tensorboard/profile/, where TensorBoard's profiler plugin looks).
    """

    def __init__(self, mode: str | None, model: torch.nn.Module, run_dir: str, rank: int, device: torch.device, steps: int = 5):
        self.mode, self.run_dir, self.rank, self.device, self.steps = mode, run_dir, rank, device, steps
        self.handles: list = []
        self.records: dict[str, dict] = {}
        if mode == "cprofile":
            import cProfile

            self.prof = cProfile.Profile()
            self.prof.enable()
        elif mode == "torch":
            from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

            self.local = tempfile.mkdtemp(prefix="fgbg-trace-")
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            self.prof = profile(activities=activities, schedule=schedule(wait=1, warmup=1, active=steps, repeat=1),
                                on_trace_ready=tensorboard_trace_handler(self.local, worker_name=f"rank{rank}"),
                                record_shapes=True, profile_memory=True)
            self.prof.start()
        elif mode == "memory" and rank == 0:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            self.handles = [m.register_forward_hook(self._record(name)) for name, m in model.named_modules() if not any(m.children())]

    def _record(self, name: str):
        def hook(module, inputs, output):
            tensors = [t for t in (output if isinstance(output, (tuple, list)) else (output,)) if torch.is_tensor(t)]
            entry = self.records.setdefault(
                name, {"layer": name, "type": type(module).__name__, "shape": list(tensors[0].shape) if tensors else None, "bytes": 0})
            entry["bytes"] = max(entry["bytes"], sum(t.numel() * t.element_size() for t in tensors))

        return hook

    def step(self) -> None:
        if self.mode == "torch":
            self.prof.step()
        elif self.handles:
            self.steps -= 1
            if self.steps <= 0:
                self._remove_hooks()

    def _remove_hooks(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def finish(self) -> str | None:
        """Write the profile's files; a summary to print (rank 0), or None."""
        from . import storage

        if self.mode == "cprofile":
            import pstats

            self.prof.disable()
            name = f"cprofile-rank{self.rank}.prof"
            with tempfile.TemporaryDirectory() as tmp:
                self.prof.dump_stats(f"{tmp}/{name}")
                storage.write_bytes(storage.join(self.run_dir, "profile", name), Path(tmp, name).read_bytes())
            text = io.StringIO()
            pstats.Stats(self.prof, stream=text).sort_stats("cumulative").print_stats(15)
            return f"cProfile of rank {self.rank}: profile/{name} (python -m pstats, or snakeviz)\n{text.getvalue().strip()}"
        if self.mode == "torch":
            self.prof.stop()
            target = storage.join(self.run_dir, "tensorboard", "profile")
            storage.upload_dir(self.local, target)
            shutil.rmtree(self.local, ignore_errors=True)
            table = self.prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
            return f"PyTorch profiler trace of steps 3–{self.steps + 2} in {target} (TensorBoard's profiler plugin, or ui.perfetto.dev)\n{table}"
        if self.mode == "memory" and self.rank == 0:
            self._remove_hooks()
            layers = sorted(self.records.values(), key=lambda r: -r["bytes"])
            peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
            doc = {"device": str(self.device), "activation_bytes": sum(r["bytes"] for r in layers), "peak_cuda_bytes": peak, "layers": layers}
            storage.write_bytes(storage.join(self.run_dir, "profile", "memory.json"), json.dumps(doc, indent=2).encode())
            top = "\n".join(f"  {r['bytes'] / 2**20:8.2f} MiB  {r['layer']} ({r['type']}, {r['shape']})" for r in layers[:10])
            total = doc["activation_bytes"] / 2**20
            return f"activation memory per layer of one training batch per worker: profile/memory.json ({total:.1f} MiB in all)\n{top}"
        return None
