import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from fgbg.cli import main

from original import jpeg, rewrite_zip, write_original


def _inspect(capsys, *args):
    code = main(["inspect", *map(str, args), "--json", "--workers", "1"])
    return code, json.loads(capsys.readouterr().out)


def test_clean_dataset_counts_and_exit_0(tmp_path, capsys):
    root = write_original(tmp_path / "d", batches=3, form="zip-top")
    code, r = _inspect(capsys, root)
    assert code == 0 and r["problems"] == []
    assert r["samples"] == 36
    assert r["batches"]["2"] == {"source": "batch2_images.zip", "samples": 12, "backgrounds": 2}
    assert r["splits"] == {"train": {"batches": [1, 2], "samples": 24}, "test": {"batches": [3], "samples": 12}}
    assert r["sizes"] == {"fg_bg": {"32x32": 36}, "bg": {"32x32": 6}, "mask": {"32x32": 36}, "depth": {"16x16": 36}}


def test_every_kind_of_problem_is_reported_naming_zip_and_member(tmp_path, capsys):
    root = write_original(tmp_path / "d", batches=3)
    with zipfile.ZipFile(root / "batch1_images.zip") as zf:
        good = zf.read("fg_bg_jpg/fg_bg_1_1_0_1.jpg")
    rewrite_zip(
        root / "batch1_images.zip",
        {
            "fg_bg_jpg/fg_bg_1_1_0_1.jpg": good[: len(good) // 2],  # truncated
            "mask_black_jpg/bg_mask_2_1_0_1.jpg": b"not a jpeg at all",  # no image at all
            "depth_fg_bg_jpg/depth_fg_bg_3_1_0_1.jpg": jpeg(np.zeros((20, 20), np.uint8)),  # wrong size
            "bg_jpg/bg_img_2.jpg": jpeg(np.zeros((40, 32, 3), np.uint8)),  # wrong size
            "mask_black_jpg/bg_mask_1_2_1_1.jpg": None,  # missing partner
        },
    )
    (root / "batch3_images.zip").write_bytes(b"garbage")  # unreadable zip
    code, r = _inspect(capsys, root)
    assert code == 1
    got = {(p["source"], p["member"]): p["what"] for p in r["problems"]}
    src = "batch1_images.zip"
    assert "truncated" in got[(src, "fg_bg_jpg/fg_bg_1_1_0_1.jpg")]
    assert got[(src, "mask_black_jpg/bg_mask_2_1_0_1.jpg")] == "not a JPEG image"
    assert got[(src, "depth_fg_bg_jpg/depth_fg_bg_3_1_0_1.jpg")] == "wrong size 20x20 (expected 16x16 like the other depth images)"
    assert got[(src, "bg_jpg/bg_img_2.jpg")].startswith("wrong size 32x40 (expected 32x32")
    assert "missing partner file mask_black_jpg/bg_mask_1_2_1_1.jpg" in got[(src, "fg_bg_jpg/fg_bg_1_2_1_1.jpg")]
    assert "unreadable zip" in got[("batch3_images.zip", "")]
    assert len(r["problems"]) == 6
    assert r["samples"] == 23


def test_quick_mode_checks_names_only(tmp_path, capsys):
    root = write_original(tmp_path / "d", batches=2, form="dir")
    (root / "batch1" / "fg_bg_jpg" / "fg_bg_1_1_0_1.jpg").write_bytes(b"broken")
    code, r = _inspect(capsys, root, "--quick")
    assert code == 0 and r["samples"] == 24 and r["sizes"] == {}
    code, r = _inspect(capsys, root)
    assert code == 1 and r["problems"][0]["source"] == "batch1"


def test_human_report_and_user_errors_through_the_installed_command(tmp_path, synth_data):
    fgbg = [sys.executable, "-m", "fgbg"]
    out = subprocess.run([*fgbg, "inspect", str(synth_data)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "48 samples in 2 batches" in out.stdout and "problems: none" in out.stdout
    out = subprocess.run([*fgbg, "inspect", str(tmp_path / "nope")], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"fgbg inspect: error: {tmp_path / 'nope'}: not a dataset folder (expected a folder holding batch{{K}}_images.zip or batch{{K}}/)"
    ]


@pytest.mark.parametrize("fmt", ["zip", "dir"])
def test_synth_then_inspect(tmp_path, capsys, fmt):
    args = ["--batches", "2", "--per-batch", "10", "--size", "32", "--format", fmt, "--workers", "0", "--quiet"]
    assert main(["synth", "--out", str(tmp_path / fmt), *args]) == 0
    capsys.readouterr()
    code, r = _inspect(capsys, tmp_path / fmt)
    assert code == 0 and r["samples"] == 20 and r["sizes"]["depth"] == {"16x16": 20}
