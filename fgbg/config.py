"""One configuration for a training run: every default visible here, loadable from YAML, overridable by flags."""

from __future__ import annotations

import dataclasses
import numbers
import time
from dataclasses import dataclass, field

import yaml

from . import storage
from .errors import FgbgError

OBJECTIVE_METRICS = {"iou", "iou_flat", "ssim", "delta1", "rmse", "loss"}  # rmse and loss: give them negative weights


# Keys added after runs were already written, with the value that reproduces those runs: a saved config
# that lacks one (an older checkpoint, evaluated, predicted or resumed) gets this, not today's default.
# (The defaults' choices are measured in docs/benchmarks.md, "Model quality"; the original's recipe is LEGACY with lr 1e-3.)
LEGACY = {"diff_input": False, "w_dice": 0.0, "optimizer": "adam", "schedule": "plateau", "copy_paste": 0.0,
          "paste_scene": 0.0, "rescale": 0.0, "depthwise_norm": True}


# What a key allows beyond its type (checked by Config): a test and the words an error says
_AT_LEAST_0, _AT_LEAST_1, _ABOVE_0 = (lambda v: v >= 0, "≥ 0"), (lambda v: v >= 1, "≥ 1"), (lambda v: v > 0, "> 0")
RANGES = {
    **dict.fromkeys(("w_mask", "w_dice", "w_lovasz", "w_depth", "w_depth_l1", "weight_decay", "warmup_epochs", "lr_patience", "workers"), _AT_LEAST_0),
    **dict.fromkeys(("epochs", "batch_size", "log_every", "profile_steps", "train_samples", "test_samples", "widths", "test_batches",
                     "samples_per_epoch"), _AT_LEAST_1),
    **dict.fromkeys(("lr", "width", "cpus_per_worker"), _ABOVE_0),
    "size": (lambda v: v >= 16 and v % 16 == 0, "that is a multiple of 16 (the UNet halves it four times)"),
    "lr_factor": (lambda v: 0 < v < 1, "in (0, 1)"),
    **dict.fromkeys(("copy_paste", "paste_scene", "rescale", "lr_floor"), (lambda v: 0 <= v <= 1, "from 0 to 1")),
    "max_failures": (lambda v: v >= -1, "≥ -1 (-1: no limit)"),
}


def as_number(value, kind: type = float):
    """A YAML or flag value as a number of this kind; numeric strings count (PyYAML reads 1e-3 as a string). ValueError if not."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):  # (numpy's numbers too, e.g. from a sweep)
        raise ValueError(value)
    number = float(value) if isinstance(value, str) else value
    if kind is int:
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)
        if not float(number).is_integer():
            raise ValueError(value)
        return int(number)
    return float(number)


def checked_value(key: str, annotation: str, value):
    """A config value of the type its field is annotated with, in its range (RANGES), or an FgbgError naming the key,
    the value and what is allowed."""
    base = annotation.replace(" | None", "")
    if value is None and "None" in annotation:
        return None
    kind = {"int": int, "float": float, "list[int]": int}.get(base)
    expected = {"int": "an integer", "float": "a number", "list[int]": "a list of integers", "bool": "true or false",
                "str": "a string", "dict": "a mapping"}[base]
    test, words, given = *RANGES.get(key, (lambda v: True, "")), value
    expected += f" {words}" if words and base != "list[int]" else (f", each {words}" if words else "")
    try:
        if base == "list[int]":
            if not isinstance(value, list):
                raise ValueError(value)
            value = [as_number(v, int) for v in value]
            ok = all(test(v) for v in value)
        elif kind is not None:
            value = as_number(value, kind)
            ok = test(value)
        else:
            ok = isinstance(value, {"bool": bool, "str": str, "dict": dict}[base])
    except (ValueError, OverflowError):
        ok = False
    if not ok:
        raise FgbgError(f"{key}: expected {expected}, not {given!r}")
    return value


def read_yaml(path: str, what: str = "config"):
    """A YAML file's contents; an unreadable file or a syntax error is one line naming the file (and line and column)."""
    try:
        text = storage.read_bytes(path)
    except OSError as e:
        raise FgbgError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else path
        problem = " ".join(filter(None, (getattr(e, "problem", None), getattr(e, "context", None)))) or str(e).splitlines()[0]
        raise FgbgError(f"{where}: not valid YAML ({problem})") from None


# Keys a resumed run may not change: the saved weights or the test split would no longer mean what they did
FIXED_ON_RESUME = ("width", "widths", "separate_decoders", "diff_input", "depthwise_norm", "size", "test_batches")
_NOT_SETTINGS = ("name", "out", "extra")


def changes_on_resume(before: "Config", now: "Config") -> dict:
    """{key: [saved value, new value]} for the settings a resumed run changes; an FgbgError naming the keys
    that would change the model's shape or the data's meaning (FIXED_ON_RESUME)."""
    old, new = before.to_dict(), now.to_dict()
    changed = {k: [old[k], new[k]] for k in new if k not in _NOT_SETTINGS and old[k] != new[k]}
    refused = [f"{k} {v[0]!r} → {v[1]!r}" for k, v in changed.items() if k in FIXED_ON_RESUME]
    if refused:
        raise FgbgError(f"{now.run_dir}: this run was trained with other settings; resuming it cannot change {', '.join(refused)} "
                        "(train under another --name for a new run)")
    return changed


@dataclass
class Config:
    # data
    data: str = ""  # dataset root: batch{K}_images.zip files or batch{K}/ folders
    test_batches: list[int] | None = None  # default: the last batch
    size: int = 160  # input side in pixels (a multiple of 16); depth is size // 2
    size_schedule: dict | None = None  # progressive resizing, {first epoch: size}: e.g. {1: 64, 13: 96} with size 96 trains epochs 1-12 at 64
    on_bad: str = "error"  # "skip": drop bad samples and count them in the epoch's metrics
    train_samples: int | None = None  # use only the first N training samples (quick runs)
    samples_per_epoch: int | None = None  # an epoch of this many samples drawn from the whole training split, a new draw each
    # epoch: a pass over the split spread over several epochs, each pass in a new order (fgbg.ingest.drawn_dataset)
    test_samples: int | None = None  # use only the first N test samples
    test_small_epochs: bool = True  # evaluate after epochs that train below the final size too (false: their test metrics are
    # NaN, and the evaluations' time saved: a sweep's ASHA compares trials only after epochs at the final size)
    cache: str = ""  # folder or s3:// URI of decoded samples: JPEGs decoded once, read by later epochs and runs (fgbg/cache.py)
    # model
    width: float = 1.0  # multiplies every stage's width: 32-64-128-256-256 at 1.0
    widths: list[int] | None = None  # or set the five stage widths directly
    separate_decoders: bool = False  # give depth its own decoder (the original shares one)
    diff_input: bool = True  # |fg_bg − bg| as 3 more input channels (the original: only the 6 of the two images)
    depthwise_norm: bool = False  # BatchNorm and ReLU after each depthwise convolution too, not only after the pointwise
    # loss: w_mask·BCE(mask) + w_dice·(1 − soft Dice(mask)) + w_lovasz·Lovász(mask) + w_depth·(1 − SSIM(depth)) + w_depth_l1·L1(depth)
    w_mask: float = 1.0
    w_dice: float = 1.0
    w_lovasz: float = 0.0  # the Lovász hinge on the mask (fgbg/losses.py)
    w_depth: float = 1.0
    w_depth_l1: float = 0.0
    # augmentation
    copy_paste: float = 0.5  # share of training samples that get another sample's object pasted on, shadowless (fgbg/batch.py)
    paste_scene: float = 0.6  # share of the pasted objects that wear the background around them instead: camouflage
    rescale: float = 0.3  # share of training samples seen as a smaller picture enlarged to the model's side (fgbg/batch.py blow_up)
    # what "better" means for the best checkpoint's companions and for sweeps: a weighted sum of metrics
    objective: dict = field(default_factory=lambda: {"iou": 0.5, "ssim": 0.5})
    # optimisation
    epochs: int = 10
    batch_size: int = 32  # global: split evenly over the workers
    lr: float = 6e-3  # the peak learning rate
    optimizer: str = "adamw"  # or adam (the original's)
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # warm-up then cosine (fgbg/optim.py); plateau: cut by lr_factor when the test loss stalls (the original's)
    warmup_epochs: float = 1.0  # cosine: epochs of linear warm-up from lr/10
    lr_floor: float = 0.01  # cosine: the rate it ends at, as a share of lr
    lr_factor: float = 0.8  # plateau: the cut
    lr_patience: int = 2  # plateau: epochs without a better test loss before a cut
    seed: int = 0
    channels_last: bool = True
    amp: bool = True  # mixed precision: bf16 on CPUs that compute it natively and on GPUs, else fp16 on GPU (fgbg/step.py)
    # run
    out: str = "runs"  # storage path: every run is a folder under it
    name: str = ""  # run name; re-running with the same name resumes (default: derived from the time)
    workers: int = 1  # data-parallel training workers
    gpu: bool = False
    cpus_per_worker: float = 1
    placement_strategy: str = "PACK"  # of the workers over nodes: PACK fills a multi-GPU node first; SPREAD one per node
    max_failures: int = 1  # worker-group restarts from the last checkpoint
    log_every: int = 10  # steps between progress lines
    profile: str | None = None  # cprofile, torch or memory (off: nothing is installed); files in RUN/profile/
    profile_steps: int = 5  # training steps the torch and memory profiles record
    extra: dict = field(default_factory=dict)  # free-form notes carried into the run directory

    def __post_init__(self):
        for f in dataclasses.fields(self):
            setattr(self, f.name, checked_value(f.name, f.type, getattr(self, f.name)))
        if self.profile not in (None, "cprofile", "torch", "memory"):
            raise FgbgError(f"profile must be cprofile, torch or memory, not {self.profile!r}")
        if self.on_bad not in ("error", "skip"):
            raise FgbgError(f"on_bad must be 'error' or 'skip', not {self.on_bad!r}")
        if self.placement_strategy not in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"):
            raise FgbgError(f"placement_strategy must be PACK, SPREAD, STRICT_PACK or STRICT_SPREAD, not {self.placement_strategy!r}")
        if self.workers < 0:
            raise FgbgError(f"workers must be ≥ 0 (0 runs in this process), not {self.workers}")
        if self.batch_size < max(1, self.workers):
            raise FgbgError(f"batch_size {self.batch_size} is smaller than the {self.workers} workers it is split over")
        unknown = set(self.objective) - OBJECTIVE_METRICS
        if unknown or not self.objective:
            raise FgbgError(f"objective weighs metrics among {sorted(OBJECTIVE_METRICS)}, not {sorted(unknown) or 'nothing'}")
        if self.optimizer not in ("adam", "adamw"):
            raise FgbgError(f"optimizer must be adam or adamw, not {self.optimizer!r}")
        if self.schedule not in ("plateau", "cosine"):
            raise FgbgError(f"schedule must be plateau or cosine, not {self.schedule!r}")
        if self.schedule == "plateau" and not self.test_small_epochs and self.size_schedule:
            raise FgbgError("test_small_epochs false leaves the plateau schedule no test loss in the small-size epochs: use schedule cosine")
        if self.size_schedule is not None:
            try:  # (the epochs may come back as strings from JSON)
                schedule = {int(e): int(s) for e, s in dict(self.size_schedule).items()}
                ok = 1 in schedule and all(e >= 1 and s % 16 == 0 and 16 <= s <= self.size for e, s in schedule.items())
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise FgbgError(f"size_schedule maps first epochs (from 1) to sizes that are multiples of 16 up to size {self.size}, "
                                f"not {self.size_schedule}")
            self.size_schedule = schedule
        if not self.test_small_epochs and self.size_at(self.epochs) != self.size:
            raise FgbgError(f"test_small_epochs false with a size_schedule that never reaches size {self.size}: no epoch would be tested")
        if self.widths is not None and len(self.widths) != 5:
            raise FgbgError(f"widths must list 5 stage widths, not {self.widths}")

    def resolved(self) -> "Config":
        """The config a run trains with, checked again: a name (from the time, if none), absolute paths, and for a run
        written by an earlier fgbg that is being resumed, the LEGACY values of the keys its saved config lacks."""
        name = self.name or time.strftime("run-%Y%m%d-%H%M%S")
        values = {**self.to_dict(), "name": name, "out": storage.absolute(self.out),
                  "data": storage.absolute(self.data) if self.data else "", "cache": storage.absolute(self.cache) if self.cache else ""}
        saved = storage.join(values["out"], name, "config.yaml")
        if not storage.info(saved).is_file:
            return Config.from_dict(values)
        given = read_yaml(saved) or {}
        return Config.from_dict({**values, **{k: v for k, v in LEGACY.items() if k not in given}})

    def changes_since_saved(self) -> dict:
        """For a resolved config whose run exists, the settings it changes from the run's saved config.yaml
        (changes_on_resume: a change of the model's shape or the data's meaning is refused); {} for a new run."""
        saved = storage.join(self.run_dir, "config.yaml")
        return changes_on_resume(Config.load(saved, saved=True), self) if storage.info(saved).is_file else {}

    def epochs_at_size(self, epoch: int) -> int:
        """How many of epochs 1 … epoch train at the final size (where a sweep's ASHA compares trials: fgbg.tune)."""
        return sum(self.size_at(e) == self.size for e in range(1, epoch + 1))

    def size_at(self, epoch: int) -> int:
        """The side the model trains at in an epoch (1-based): size_schedule's, else size."""
        if not self.size_schedule:
            return self.size
        return self.size_schedule[max(e for e in self.size_schedule if e <= epoch)]

    @property
    def global_batch(self) -> int:
        """Samples one step takes over all workers: batch_size split evenly over them (a remainder is not used)."""
        world = max(self.workers, 1)
        return max(1, self.batch_size // world) * world

    def epoch_samples(self, train_rows: int) -> int:
        """Samples an epoch trains on: samples_per_epoch (else all the split's rows), in whole global batches."""
        return max(self.global_batch, (self.samples_per_epoch or train_rows) // self.global_batch * self.global_batch)

    @property
    def run_dir(self) -> str:
        return storage.join(self.out, self.name)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> "Config":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise FgbgError(f"{source}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        try:
            return cls(**values)
        except FgbgError as e:
            raise FgbgError(f"{source}: {e}" if source != "config" else str(e)) from None

    @classmethod
    def load(cls, path: str | None = None, saved: bool = False, **overrides) -> "Config":
        """The config from a YAML file (or the defaults), with the overrides that are not None on top.

        saved: the file is a run's or checkpoint's config, perhaps written by an earlier fgbg: keys it
        lacks take the LEGACY values that reproduce how it trained, not today's defaults.
        """
        values: dict = dict(LEGACY) if saved else {}
        if path:
            loaded = read_yaml(path) or {}
            if not isinstance(loaded, dict):
                raise FgbgError(f"{path}: expected a mapping of config keys, found {type(loaded).__name__}")
            values.update(loaded)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values, source=path or "config")
