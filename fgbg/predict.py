"""Masks and depth maps for whole datasets (Ray Data) or for a user's own pairs, through one decode-and-infer path.

A job is a table of samples (`dataset_rows`, `pair_rows`) cut into parts of PART_ROWS. Each part is
decoded by `decode_rows` (the dataset reader's checks), then `Predictor` (the model, loaded once per Ray
Data actor, or once in this process with concurrency 0) writes each sample's files and returns its row
of the table; the driver writes a part's table once all its rows are in. A part whose table exists is
done, so a resumed job skips it. Every file is written whole and renamed into place (on S3: one upload),
so a killed job leaves no half-written file under a final name.

  OUT/masks/NAME.png        the mask, gray 0/255, at the input's size
  OUT/depth/NAME.png        the depth map, 8-bit gray at half the input's size (as in the dataset: brighter = nearer)
  OUT/raw/NAME.npz          with raw: mask probability and depth, float16 at the model's size
  OUT/parts/part-K.parquet  one part's rows; OUT/predictions.parquet and .csv: every row
  OUT/worst.png             the 16 samples of lowest IoU, when the data has true masks
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch
from PIL import Image

from . import storage
from .checkpoints import load_model
from .cluster import native_stderr_in_ray_logs
from .errors import BadSample, FgbgError, find_bad_sample
from .metrics import per_image
from .model import infer
from .pictures import png_bytes, result_grid, sample_files
from .progress import Meter
from .reader import decode_image, read_member
from .step import amp_dtype

PART_ROWS = 256  # samples per part: the unit of resuming and of a decoding task
INPUTS = ("name", "source", "fg_bg", "bg", "mask", "depth")  # a job's rows, with `part` and where each file lies in its zip
FILES = ("fg_bg", "bg", "mask", "depth")
PLACES = tuple(f"{kind}_{what}" for kind in FILES for what in ("offset", "bytes"))  # the index's, -1 where unknown
METRICS = ("fg_area", "mean_depth", "iou", "ssim", "rmse", "baseline_iou")
FORMATS = ("JPEG", "PNG")  # a user's own pairs may be PNGs; a dataset's are JPEGs (the reader's check)


def dataset_rows(data, split: str = "all", on_bad: str = "error") -> pa.Table:
    """The samples of a dataset in the layout (its train or test split, or all), named batchK/<fg_bg image's stem>."""
    from .layout import load_manifest

    if split not in ("train", "test", "all"):
        raise FgbgError(f"--split must be train, test or all, not {split!r}")
    manifest = load_manifest(data)
    manifest.report_problems(on_bad)
    table = manifest.table if split == "all" else manifest.split()[split]
    if table.num_rows == 0:
        raise FgbgError(f"{data}: no samples in the {split} split")
    t = manifest.with_paths(table).to_pydict()
    names = [f"batch{b}/{os.path.splitext(storage.basename(m))[0]}" for b, m in zip(t["batch"], t["fg_bg"])]
    return _job_table(names, t["source"], t["fg_bg"], t["bg"], t["mask"], t["depth"], places={k: t[k] for k in PLACES if k in t})


def pair_rows(fg_bg, bg) -> pa.Table:
    """A user's (fg_bg, bg) pairs, without truths: two images; a folder of fg_bg images with one bg; or two folders
    matched by file name (local or URIs). Each is named after its fg_bg image."""
    fg_bg, bg = storage.absolute(fg_bg), storage.absolute(bg)
    for path in (fg_bg, bg):
        if not storage.info(path).is_file and not storage.is_dir(path):
            raise FgbgError(f"{path}: no such file or folder")
    if storage.is_dir(fg_bg):
        images = sorted(storage.join(fg_bg, f.path) for f in storage.listdir(fg_bg)
                        if f.is_file and os.path.splitext(f.path)[1].lower() in (".jpg", ".jpeg", ".png"))
        if not images:
            raise FgbgError(f"{fg_bg}: no .jpg or .png images in it")
    elif storage.is_dir(bg):
        raise FgbgError(f"{bg}: a folder of backgrounds needs a folder of fg_bg images (--fg-bg DIR)")
    else:
        images = [fg_bg]
    backgrounds = [bg] * len(images)
    if storage.is_dir(bg):
        have = {f.path for f in storage.listdir(bg) if f.is_file}
        missing = [storage.basename(p) for p in images if storage.basename(p) not in have]
        if missing:
            raise FgbgError(f"{bg}: no background named like {', '.join(missing[:5])} (backgrounds are matched to fg_bg images by file name)")
        backgrounds = [storage.join(bg, storage.basename(p)) for p in images]
    names = [os.path.splitext(storage.basename(p))[0] for p in images]
    return _job_table(names, [""] * len(images), images, backgrounds, [""] * len(images), [""] * len(images))


def _job_table(*columns, places: dict | None = None) -> pa.Table:
    """A job's rows; places: where each file lies in its zip (the index's offsets and sizes), so that a decoding process
    reads each member in one read without opening the zip's directory (70 MB a process for a 40,000-sample zip)."""
    n, places = len(columns[0]), places or {}
    return pa.table({k: pa.array(v, pa.string()) for k, v in zip(INPUTS, columns)}
                    | {k: pa.array([-1 if x is None else x for x in places.get(k, [-1] * n)], pa.int64()) for k in PLACES}
                    | {"part": pa.array([i // PART_ROWS for i in range(n)], pa.int32())})


def _read(source: str, path: str, at: tuple[int, int] = (-1, -1)) -> bytes:
    """A dataset's member (in a zip or folder; at: where it lies in its zip, if known), or with no source a whole
    file (a user's image)."""
    if source:
        return read_member(source, path, at)
    try:
        return storage.read_bytes(path)
    except (OSError, FgbgError) as e:
        raise BadSample(path, "", f"unreadable ({e})") from None


def decode_rows(batch: dict, size: int, on_bad: str = "error") -> dict:
    """Job rows decoded at the model's size (uint8, channels last) with each fg_bg's own size (width, height), and
    the true mask and depth where the row has them; `error` says why a sample was skipped (on_bad="skip")."""
    n = len(batch["name"])
    out = {k: np.asarray(batch[k]).astype(str) for k in INPUTS} | {"part": np.asarray(batch["part"])}
    places = {k: np.asarray(batch[k]) if k in batch else np.full(n, -1) for k in PLACES}
    out |= {"fg_bg_rgb": np.zeros((n, size, size, 3), np.uint8), "bg_rgb": np.zeros((n, size, size, 3), np.uint8),
            "mask_true": np.zeros((n, size, size, 1), np.uint8), "depth_true": np.zeros((n, size // 2, size // 2, 1), np.uint8),
            "width": np.zeros(n, np.int32), "height": np.zeros(n, np.int32)}
    errors = [""] * n
    for i in range(n):
        source, name = out["source"][i], {k: out[k][i] for k in INPUTS}.get
        at = {kind: (int(places[f"{kind}_offset"][i]), int(places[f"{kind}_bytes"][i])) for kind in FILES}
        try:
            images = {}
            for kind in ("fg_bg", "bg"):
                data = _read(source, name(kind), at[kind])
                out[f"{kind}_rgb"][i] = decode_image(data, "RGB", (size, size), source, name(kind), FORMATS)
                images[kind] = Image.open(io.BytesIO(data)).size  # (the header again: decode_image checked it)
            if images["fg_bg"] != images["bg"]:
                (fw, fh), (bw, bh) = images["fg_bg"], images["bg"]
                raise BadSample(source or name("fg_bg"), name("fg_bg") if source else "", f"is {fw}×{fh} but its background {name('bg')} "
                                f"is {bw}×{bh}: the two images of a pair are photos of one scene, of one size")
            out["width"][i], out["height"][i] = images["fg_bg"]
            if name("mask"):
                out["mask_true"][i, ..., 0] = decode_image(_read(source, name("mask"), at["mask"]), "L", (size, size), source, name("mask"))
                out["depth_true"][i, ..., 0] = decode_image(_read(source, name("depth"), at["depth"]), "L", (size // 2,) * 2, source, name("depth"))
        except BadSample as e:
            if on_bad == "error":
                raise
            errors[i] = str(e)
    return out | {"error": np.asarray(errors, dtype=str)}


class Predictor:
    """The model, loaded once per Ray Data actor (or in this process): writes each sample's files and returns the
    sample's row of the table (no images)."""

    def __init__(self, checkpoint: str, out: str, device: str = "cpu", amp: bool = False, raw: bool = False, threads: int = 0,
                 model: torch.nn.Module | None = None, flip: bool = False):
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        if model is None and is_onnx(checkpoint):  # the other engine: an exported ONNX file, run by onnxruntime
            from .export import OnnxModel

            model = OnnxModel(checkpoint, gpu=self.device.type == "cuda", threads=threads)
        self.model = model if model is not None else load_model(checkpoint, self.device)[0]  # (in this process: the driver's)
        self.dtype = amp_dtype(self.device, amp)
        self.out, self.raw, self.flip = out, raw, flip
        ray = sys.modules.get("ray")  # imported where this runs in a Ray Data actor; the plain loop does without
        self.node = ray.get_runtime_context().get_node_id() if ray and ray.is_initialized() else ""

    @torch.no_grad()
    def infer(self, fg_bg: np.ndarray, bg: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 N×H×W×3 pairs at the model's size → mask logits N×1×H×W and depth N×1×h×w (float32, on the CPU)."""
        if not isinstance(self.model, torch.nn.Module):  # an ONNX file's session; with flip, the mirrored pairs in a second run
            mask_logits, depth = self.model(fg_bg, bg)
            if self.flip:
                mirrored_logits, mirrored_depth = self.model(fg_bg[:, :, ::-1], bg[:, :, ::-1])
                mask_logits, depth = (mask_logits + mirrored_logits.flip(-1)) / 2, (depth + mirrored_depth.flip(-1)) / 2
            return mask_logits, depth
        x, b = (torch.from_numpy(np.ascontiguousarray(a)).to(self.device).permute(0, 3, 1, 2).float().div_(255.0) for a in (fg_bg, bg))
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            mask_logits, depth = infer(self.model, x, b, self.flip)
        return mask_logits.float().cpu(), depth.float().clamp(0, 1).cpu()

    def __call__(self, batch: dict) -> dict:
        n = len(batch["name"])
        rows = {k: batch[k] for k in ("name", "source", "fg_bg", "bg", "part", "width", "height", "error")}
        rows |= {k: np.full(n, np.nan) for k in METRICS} | {"mask_file": [""] * n, "depth_file": [""] * n}
        ok = np.flatnonzero(batch["error"] == "")
        if len(ok):
            mask_logits, depth = self.infer(batch["fg_bg_rgb"][ok], batch["bg_rgb"][ok])
            pred = mask_logits > 0  # sigmoid > 0.5, as fgbg evaluate counts it
            rows["fg_area"][ok] = pred.double().mean((1, 2, 3)).numpy()
            rows["mean_depth"][ok] = depth.double().mean((1, 2, 3)).numpy()
            truth = np.flatnonzero(batch["mask"][ok] != "")  # positions among ok
            if len(truth):
                at = ok[truth]
                mask_true, depth_true = (torch.from_numpy(batch[k][at]).permute(0, 3, 1, 2).float() / 255 for k in ("mask_true", "depth_true"))
                each = per_image(mask_logits[truth], depth[truth], mask_true, depth_true,
                                 *(torch.from_numpy(batch[k][at]) for k in ("fg_bg_rgb", "bg_rgb")))
                rows["iou"][at], rows["ssim"][at], rows["baseline_iou"][at] = (each[k].numpy() for k in ("iou", "ssim", "baseline_iou"))
                rows["rmse"][at] = (each["sq_err"] / depth[0].numel()).sqrt().numpy()
            for j, i in enumerate(ok):
                probability = torch.sigmoid(mask_logits[j, 0]).numpy() if self.raw else None
                files = sample_files(pred[j, 0].numpy(), depth[j, 0].numpy(), (int(batch["width"][i]), int(batch["height"][i])), probability)
                for kind, data in files.items():
                    path = storage.join(self.out, kind, f"{batch['name'][i]}.{'npz' if kind == 'raw' else 'png'}")
                    storage.write_bytes(path, data)
                    if kind != "raw":
                        rows[f"{kind.rstrip('s')}_file"][i] = path
        return {k: np.asarray(v) for k, v in rows.items()} | {"node": np.full(n, self.node)}


def is_onnx(path) -> bool:
    return str(path).lower().endswith(".onnx")


def load_engine(path, gpu: bool = False):
    """(model, its config, where it came from): a checkpoint's PyTorch model, or an exported ONNX file's session."""
    if not is_onnx(path):
        return load_model(path)
    from .config import Config
    from .export import OnnxModel

    onnx = OnnxModel(path)  # (the driver's, for the plain loop and the worst samples' picture: on the CPU)
    if gpu:
        onnx.check_gpu()  # here, before the actors start: a missing CUDA provider is one line, not a failed actor
    return onnx, Config.from_dict(onnx.meta["config"]), storage.absolute(path)


def _part_path(out: str, part: int) -> str:
    return storage.join(out, "parts", f"part-{part:05d}.parquet")


def _done_parts(out: str) -> set[int]:
    if not storage.is_dir(storage.join(out, "parts")):
        return set()
    names = (f.path for f in storage.listdir(storage.join(out, "parts")) if f.is_file)
    return {int(p[5:10]) for p in names if p.startswith("part-") and p.endswith(".parquet") and p[5:10].isdigit()}


def _claim(out: str, job: dict) -> None:
    """OUT/job.json says what the predictions in OUT are of; a job that would mix other inputs or another model in
    with them is refused."""
    path = storage.join(out, "job.json")
    if storage.info(path).is_file:
        before = json.loads(storage.read_bytes(path))
        differ = sorted(k for k in job if before.get(k) != job[k])
        if differ:
            raise FgbgError(f"{out}: holds predictions of another job (its {', '.join(differ)} differ: see {path}); "
                            "write to another --out, or delete it to start again")
    else:
        storage.write_bytes(path, json.dumps(job, indent=2).encode())


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


class _Parts:
    """Rows coming back from the predictors, gathered by part; a complete part's table is written at once."""

    def __init__(self, out: str, rows: pa.Table):
        self.out = out
        self.expected = dict(zip(*np.unique(rows["part"].to_numpy(), return_counts=True)))
        self.pending: dict[int, list[pa.Table]] = {}
        self.samples = self.skipped = 0

    def add(self, table: pa.Table) -> None:
        self.samples += table.num_rows
        self.skipped += int(pc.sum(pc.not_equal(table["error"], "")).as_py() or 0)
        for part in np.unique(table["part"].to_numpy()):
            got = self.pending.setdefault(int(part), [])
            got.append(table.filter(pc.equal(table["part"], part)))
            if sum(t.num_rows for t in got) == self.expected[part]:
                storage.write_bytes(_part_path(self.out, int(part)), _parquet_bytes(pa.concat_tables(self.pending.pop(int(part)))))


def predict(checkpoint, rows: pa.Table, out, batch_size: int = 32, concurrency: int | None = None, gpu: bool = False,
            on_bad: str = "error", raw: bool = False, address: str | None = None, flip: bool = False, verbose: bool = False) -> dict:
    """Predict every row of a job table into out (local or a URI); returns the summary. concurrency 0 runs in this
    process without Ray; otherwise Ray Data decodes in tasks and predicts on an actor pool (default: one actor per GPU
    with gpu, else per CPU but one, which decoding keeps). flip: each pair's outputs are the mean over it and its mirror
    (fgbg.model.infer), at twice the compute."""
    if on_bad not in ("error", "skip"):
        raise FgbgError(f"--on-bad must be error or skip, not {on_bad!r}")
    if batch_size < 1:
        raise FgbgError(f"--batch-size must be at least 1, not {batch_size}")
    out = storage.absolute(out)
    model, cfg, ckpt = load_engine(checkpoint, gpu)  # a checkpoint or ONNX file that does not load stops here, named
    names = hashlib.sha256("\n".join(rows["name"].to_pylist()).encode()).hexdigest()[:16]
    _claim(out, {"checkpoint": ckpt, "samples": rows.num_rows, "names": names, "part_rows": PART_ROWS, "raw": raw,
                **({"flip": True} if flip else {})})  # (a job written before --flip has no such key)
    done = _done_parts(out)
    todo = rows.filter(pc.invert(pc.is_in(rows["part"], pa.array(sorted(done), pa.int32()))))
    parts, start = _Parts(out, todo), time.perf_counter()
    if todo.num_rows and concurrency != 0:  # a Ray Data job: the cluster first, so that what its C++ core prints is kept back
        from .cluster import connect

        connect(address, num_cpus=max(os.cpu_count() or 1, (concurrency or 0) + 1), verbose=verbose)
    with native_stderr_in_ray_logs(verbose):
        meter, first = Meter(todo.num_rows, "predict"), 0.0
        try:
            for table in _results(checkpoint, model, cfg.size, todo, out, batch_size, concurrency, gpu, on_bad, raw, address, flip):
                first = first or time.perf_counter() - start  # the start-up: Ray, actors, the model
                parts.add(table)
                meter.update(table.num_rows)
        except Exception as e:
            bad = find_bad_sample(e)
            if bad is None:
                raise
            advice = "run `fgbg inspect`, or predict with --on-bad skip" if pc.any(pc.not_equal(rows["source"], "")).as_py() else "--on-bad skip skips it"
            raise FgbgError(f"{bad} ({advice})") from None
        finally:
            meter.close()
    seconds = time.perf_counter() - start
    table = pa.concat_tables([pq.read_table(io.BytesIO(storage.read_bytes(_part_path(out, p))))
                              for p in sorted(set(rows["part"].to_pylist()))])
    storage.write_bytes(storage.join(out, "predictions.parquet"), _parquet_bytes(table))
    buf = io.BytesIO()
    pacsv.write_csv(table, buf)
    storage.write_bytes(storage.join(out, "predictions.csv"), buf.getvalue())
    summary = {"out": out, "samples": table.num_rows, "predicted": parts.samples - parts.skipped, "skipped": parts.skipped,
               "done_before": rows.num_rows - todo.num_rows, "seconds": round(seconds, 2), "first_s": round(first, 2),
               "samples_per_s": round(parts.samples / seconds, 2) if parts.samples else 0.0}
    scored = table.filter(pc.is_finite(table["iou"]))  # samples with truths, not skipped
    if scored.num_rows:
        summary |= {k: float(np.mean(scored[k].to_numpy())) for k in ("iou", "ssim", "baseline_iou")}
        summary["rmse"] = float(np.sqrt(np.mean(scored["rmse"].to_numpy() ** 2)))  # over all pixels, as fgbg evaluate
        summary["worst"] = storage.join(out, "worst.png")
        storage.write_bytes(summary["worst"], _worst_grid(Predictor(ckpt, out, model=model, flip=flip), cfg.size, scored, rows))
    return summary


def _results(checkpoint, model, size, todo: pa.Table, out, batch_size, concurrency, gpu, on_bad, raw, address, flip):
    """The predictors' output tables (rows without images), in any order; the plain loop predicts with `model`, the
    driver's, and the actors load the checkpoint."""
    if todo.num_rows == 0:
        return
    if concurrency == 0:  # the plain loop: decode, infer and write in this process, one after another
        if gpu:
            raise FgbgError("--gpu runs on the cluster's GPUs: it needs --concurrency of at least 1")
        predictor = Predictor(checkpoint, out, raw=raw, model=model, flip=flip)
        for part in np.unique(todo["part"].to_numpy()):
            block = todo.filter(pc.equal(todo["part"], part))
            decoded = decode_rows(block.to_pydict(), size, on_bad)
            for i in range(0, block.num_rows, batch_size):
                yield pa.table(predictor({k: v[i : i + batch_size] for k, v in decoded.items()}))
        return
    import ray

    from .cluster import quiet_ray_data

    quiet_ray_data()
    resources = ray.cluster_resources()
    cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
    if gpu and not gpus:
        raise FgbgError("--gpu: the Ray cluster has no GPUs")
    actors = concurrency or (gpus if gpu else max(1, cpus - 1))
    if not gpu and actors + 1 > cpus:
        raise FgbgError(f"--concurrency {actors}: the Ray cluster has {cpus} CPUs, one per predicting actor and one for decoding")
    threads = 0 if gpu else max(1, min(os.cpu_count() or 1, cpus // actors))
    # blocks of one inference batch: the unit of work an actor takes (parts, the unit of resuming, are larger)
    ds = ray.data.from_arrow([todo.slice(i, batch_size) for i in range(0, todo.num_rows, batch_size)])
    ds.context.op_resource_reservation_enabled = False  # as in training's ingest (fgbg.ingest)
    ds = ds.map_batches(decode_rows, batch_size=None, batch_format="numpy", fn_kwargs={"size": size, "on_bad": on_bad})
    # Ray Data spreads the actors over the nodes. With --gpu, decoding runs in CPU tasks beside the GPU actors; on CPUs
    # it fuses decoding into the actors (one hop less; both would share the same cores anyway)
    ds = ds.map_batches(Predictor, batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
                        fn_constructor_kwargs={"checkpoint": checkpoint, "out": out, "device": "cuda" if gpu else "cpu",
                                               "amp": gpu, "raw": raw, "threads": threads, "flip": flip},
                        num_cpus=1, num_gpus=1 if gpu else 0)
    yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")


def _worst_grid(predictor: Predictor, size: int, scored: pa.Table, rows: pa.Table) -> bytes:
    """A picture grid of the samples of lowest IoU, decoded and inferred again in this process, as the job did."""
    from .batch import prepare_batch

    worst = scored.sort_by([("iou", "ascending")]).slice(0, 16)["name"].to_pylist()
    decoded = decode_rows(rows.filter(pc.is_in(rows["name"], pa.array(worst))).to_pydict(), size, "skip")
    order = [list(decoded["name"]).index(n) for n in worst]
    mask_logits, depth = predictor.infer(decoded["fg_bg_rgb"][order], decoded["bg_rgb"][order])
    batch = {k: torch.from_numpy(decoded[f"{k}_{suffix}"][order]) for k, suffix in
             (("fg_bg", "rgb"), ("bg", "rgb"), ("mask", "true"), ("depth", "true"))}
    batch = prepare_batch(batch, torch.device("cpu"), channels_last=False)  # (uint8 → the [0, 1] floats a grid shows)
    return png_bytes(result_grid(batch, mask_logits, depth, rows=len(order)))
