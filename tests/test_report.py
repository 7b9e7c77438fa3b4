"""Run reports, `fgbg report` / `fgbg compare`, and `--profile`: real short runs on the session's Ray cluster."""

import contextlib
import io
import json
import pstats

import pytest
import torch

from fgbg.cli import main
from fgbg.config import Config
from fgbg.model import UNet
from fgbg.profiling import RunProfiler
from fgbg.train import fit

TINY = dict(size=32, width=0.25, batch_size=4, log_every=100, epochs=1, profile_steps=2)
SECTIONS = ["## Model", "## Metrics per epoch", "## Time", "## Evaluations", "## Pictures", "## Config"]


def _hooks(model: torch.nn.Module) -> int:
    per_module = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
                     for m in model.modules())
    from torch.nn.modules import module as nn_module

    return per_module + len(nn_module._global_forward_hooks) + len(nn_module._global_forward_pre_hooks) + len(nn_module._global_backward_hooks)


def test_profiling_off_installs_nothing_and_memory_hooks_last_only_their_steps(tmp_path):
    model = UNet(width=0.25)
    x = torch.rand(2, 3, 32, 32)
    off = RunProfiler(None, model, str(tmp_path), 0, torch.device("cpu"))
    model(x, x)
    off.step()
    assert _hooks(model) == 0 and off.finish() is None and not list(tmp_path.iterdir())

    memory = RunProfiler("memory", model, str(tmp_path), 0, torch.device("cpu"), steps=2)
    leaves = [m for m in model.modules() if not any(m.children())]
    assert _hooks(model) == len(leaves)
    for _ in range(2):
        model(x, x)
        memory.step()
    assert _hooks(model) == 0  # gone after their steps, before the run goes on
    assert "activation memory per layer" in memory.finish()
    layers = json.loads((tmp_path / "profile" / "memory.json").read_text())["layers"]
    leaf_names = {name for name, m in model.named_modules() if not any(m.children())}
    assert len(layers) > 10 and {layer["layer"] for layer in layers} <= leaf_names and all(layer["bytes"] > 0 for layer in layers)


@pytest.fixture(scope="module")
def profiled(ray_cluster, synth_data, tmp_path_factory):
    """One 1-epoch run per profile mode (cProfile on 2 workers; the others in-process): run dir and what it printed."""
    out, runs = tmp_path_factory.mktemp("profiled"), {}
    for mode, workers in (("cprofile", 2), ("torch", 0), ("memory", 0)):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            result = fit(Config(data=str(synth_data), out=str(out), name=mode, workers=workers, profile=mode, **TINY))
        assert result["report"] == str(out / mode / "report.md")
        runs[mode] = (out / mode, printed.getvalue())
    return runs


def test_cprofile_writes_a_prof_per_worker_and_prints_the_top_functions(profiled):
    run, printed = profiled["cprofile"]
    for rank in (0, 1):
        assert pstats.Stats(str(run / "profile" / f"cprofile-rank{rank}.prof")).total_calls > 0
    assert "cProfile of rank 0" in printed and "cumulative" in printed


def test_torch_profile_writes_a_trace_beside_the_tensorboard_logs(profiled):
    run, printed = profiled["torch"]
    traces = list((run / "tensorboard" / "profile").glob("*.pt.trace.json"))
    assert traces and json.loads(traces[0].read_text())["traceEvents"]
    assert "PyTorch profiler trace" in printed


def test_memory_profile_records_activation_bytes_per_layer(profiled):
    run, printed = profiled["memory"]
    memory = json.loads((run / "profile" / "memory.json").read_text())
    assert memory["activation_bytes"] > 0 and len(memory["layers"]) > 10
    assert [layer["bytes"] for layer in memory["layers"]] == sorted((layer["bytes"] for layer in memory["layers"]), reverse=True)
    assert "activation memory per layer" in printed


def test_report_has_every_section_and_fgbg_report_adds_the_evaluation(profiled, synth_data, capsys):
    run, _ = profiled["cprofile"]
    report = (run / "report.md").read_text()
    assert all(section in report for section in SECTIONS) and "No `fgbg evaluate` yet" in report
    assert "## Profiles" in report and "profile/cprofile-rank1.prof" in report
    for key in ("compute", "waiting for data", "other", "parameters", "MACs", "throughput", "| 1 |"):
        assert key in report, key
    assert (run / "curves.png").stat().st_size > 10_000 and (run / "times.png").stat().st_size > 10_000

    assert main(["evaluate", "--checkpoint", str(run), "--data", str(synth_data)]) == 0
    assert main(["evaluate", "--checkpoint", str(run), "--data", str(synth_data), "--split", "all", "--flip"]) == 0
    # evaluate updated the report: both evaluations listed, latest first, each in its own folder under evaluations/
    report = (run / "report.md").read_text()
    assert "No `fgbg evaluate` yet" not in report and report.index("| all split of") < report.index("| test split of")
    assert report.count("mirrored too (--flip)") == 1 and report.index("mirrored too") < report.index("| test split of")
    assert len(list((run / "evaluations").glob("*/metrics.json"))) == 2 and "baseline IoU" in report
    (run / "report.md").unlink()
    capsys.readouterr()
    assert main(["report", str(run)]) == 0 and capsys.readouterr().out.strip() == str(run / "report.md")
    assert "`fgbg evaluate` of" in (run / "report.md").read_text()


def test_compare_prints_metrics_times_and_what_the_configs_change(profiled, capsys):
    assert main(["compare", str(profiled["cprofile"][0]), str(profiled["memory"][0])]) == 0
    out = capsys.readouterr().out
    assert "B − A" in out and "iou" in out and "time_data (median)" in out
    assert "config differs in: profile ('cprofile' → 'memory'), workers (2 → 0)" in out
