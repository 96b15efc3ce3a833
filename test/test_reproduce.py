"""``cmcnn-reproduce`` machinery and ``cmcnn-explain`` (issue 9).

The sweep runs for real on a tiny rendered set with the ``ci`` preset (two
rows, two folds, a few epochs). What is checked is the report's structure,
resume behaviour and the refusals before training, not the numbers (a
two-epoch tiny network says nothing about the paper).
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from cmcnn_synthetic import generate
from cmcnn_training.reproduce import cli
from cmcnn_training.reproduce.report import compare
from cmcnn_training.reproduce.rows import ABLATION_ROWS, CATALOGUE, FULL, RowError, resolve, select_rows

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repro") / "set"
    rc = generate.main(["--out", str(root), "--subjects", "4", "--classes", "6", "--intensities", "3", "4",
                        "--per-class", "1", "--distance", "0.7", "1.0", "--yaw", "8", "--pitch", "6",
                        "--roll", "6", "--workers", "2", "--seed", "3", "--no-progress"])
    assert rc == 0
    return root


def _args(root, work, out, cache, *extra):
    return ["--preset", "ci", "--root", str(root), "--work-dir", str(work), "--out", str(out),
            "--cache-dir", str(cache), "--no-progress", *extra]


def _section(report: str, heading: str):
    """First-column -> line of the markdown table under ``heading``."""
    text = report.split(heading, 1)[1].split("\n## ", 1)[0]
    return {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}


def _mtimes(folder: Path):
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------
# rows and claims (no training)
# ---------------------------------------------------------------------------

def test_rows_catalogue_matches_the_paper_tables():
    assert len(ABLATION_ROWS) == 15
    assert resolve("G+L").fusion == "concat" and resolve("G+L+CMFN").fusion == "cmfn"
    assert resolve("G+B+D+CMFN").modalities == ("grey", "gabor", "depth")
    assert resolve("soft-focal-2.0") is resolve(FULL)          # same training, one row
    own = resolve("soft-focal-2.0-sigma0.7")
    assert (own.loss, own.gamma, own.sigma) == ("soft_focal", 2.0, 0.7)
    assert (resolve("focal-1.5").loss, resolve("focal-1.5").gamma) == ("focal", 1.5)
    assert resolve("CCE").loss == "ce"
    assert resolve("illum:D").split == "illum" and resolve("illum:D").modalities == ("depth",)
    with pytest.raises(RowError, match=r"unknown row 'G\+X'"):
        resolve("G+X")
    # A 2-D dataset (FER2013) gets the rows without depth, and asking for a depth row is refused.
    rows, skipped = select_rows(None, has_depth=False, has_light=False, explicit=False)
    assert [r.name for r in rows] == ["G", "G+L", "G+L+CMFN", "L", "H", "B"]
    assert skipped and all("depth" in s or "illumination" in s for s in skipped)
    with pytest.raises(RowError, match="row G\\+D needs depth"):
        select_rows(["G", "G+D"], has_depth=False, has_light=False, explicit=True)
    assert len({r.name for r in CATALOGUE.values()}) == len(CATALOGUE)


def _doc(accs, in_range=None):
    def m(a):
        return {"accuracy": a, "per_intensity": {}}
    return {"folds": [{"test": m(a), **({"in_range": m(b)} if in_range else {})}
                      for a, b in zip(accs, in_range or accs)]}


def test_claim_verdicts_are_fold_paired():
    docs = {"G": _doc([0.50, 0.60, 0.55]), "L": _doc([0.40, 0.62, 0.45]), "D": _doc([0.50, 0.60, 0.55])}
    c = compare(docs, "G", "L")
    assert c["verdict"] == "agree" and c["diff"] == pytest.approx(100 * np.mean([0.10, -0.02, 0.10]))
    assert c["std"] == pytest.approx(100 * np.std([0.10, -0.02, 0.10]))
    assert compare(docs, "L", "G")["verdict"].startswith("disagree")
    assert compare(docs, "G", "D")["verdict"] == "disagree (identical)"
    assert compare(docs, "G", "H")["verdict"] == "not run"
    assert compare(docs, "G", "L")["paper_diff"] == pytest.approx(84.04 - 78.48)
    # illumination: the claim is about the drop from the training light to the shifted one
    docs = {"illum:G": _doc([0.30, 0.35], in_range=[0.60, 0.65]), "illum:D": _doc([0.50, 0.52], [0.55, 0.55])}
    c = compare(docs, "illum:D", "illum:G", illum=True)
    assert c["verdict"] == "agree" and c["diff"] == pytest.approx(100 * np.mean([0.30 - 0.05, 0.30 - 0.03]))


# ---------------------------------------------------------------------------
# the sweep
# ---------------------------------------------------------------------------

def test_sweep_writes_the_report_and_resumes(tiny_root, tmp_path, caplog):
    work, out, cache = tmp_path / "work", tmp_path / "report", tmp_path / "cache"
    assert cli.main(_args(tiny_root, work, out, cache)) == 0

    report = (out / "report.md").read_text()
    for heading in ("## Protocol and its limits", "## The paper's claims", "## Table I", "### What sigma = 0.1 does",
                    "## Tables II and III", "## Per intensity", "## Fig. 6", "## Fig. 7", "## Fig. 8", "## Rows"):
        assert heading in report, heading
    assert "PARTIAL" not in report
    assert "cmcnn-reproduce --preset ci" in report and "2-fold subject-independent" in report
    table2, table1 = _section(report, "## Tables II and III"), _section(report, "## Table I")
    assert "±" in table2["G"] and "84.04" in table2["G"]          # ours beside the paper's
    assert "not run" in table2["H"] and "±" in table2[FULL] and len(table2) == 15 + 1
    assert "not run" in table1["CCE"] and "±" in table1["soft-focal-2.0 (= G+L+D+CMFN)"]
    for png in ("fig6_confusion.png", "fig7_tsne.png", "fig8_gradcam.png", "ablation.png", "intensity.png"):
        assert (out / png).stat().st_size > 5000, png
    assert not list(out.glob("*.pt")), "checkpoints belong in the work folder, not the report"

    row = json.loads((work / "rows" / "G.json").read_text())
    assert len(row["folds"]) == 2 and row["summary"]["folds"] == 2
    tests = [set(f) for f in json.loads((work / "sweep.json").read_text())["folds_test_subjects"]]
    assert not tests[0] & tests[1] and len(tests[0] | tests[1]) == 4   # subject-independent folds
    full = json.loads((work / "rows" / "G_L_D_CMFN.json").read_text())
    fold_accs = [f["test"]["accuracy"] for f in full["folds"]]
    assert full["summary"]["accuracy_mean"] == pytest.approx(np.mean(fold_accs))

    # Resume: nothing retrained.
    before = _mtimes(work / "rows")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cmcnn_training"):
        assert cli.main(_args(tiny_root, work, out, cache)) == 0
    assert _mtimes(work / "rows") == before
    assert "finished earlier, kept" in caplog.text

    # A sweep killed during G's second fold: fold 1 is kept, fold 2 and the row are redone.
    (work / "rows" / "G.json").unlink()
    (work / "rows" / "G" / "fold_1.json").unlink()
    assert cli.main(_args(tiny_root, work, out, cache)) == 0
    after = _mtimes(work / "rows")
    assert after["G/fold_0.json"] == before["G/fold_0.json"]
    assert after["G/fold_1.json"] != before["G/fold_1.json"] and "G.json" in after
    assert after["G_L_D_CMFN.json"] == before["G_L_D_CMFN.json"]

    # --rerun retrains just that row.
    assert cli.main(_args(tiny_root, work, out, cache, "--rerun", "G")) == 0
    again = _mtimes(work / "rows")
    assert again["G/fold_0.json"] != after["G/fold_0.json"]
    assert again["G_L_D_CMFN.json"] == after["G_L_D_CMFN.json"]

    # Other settings never mix with finished rows.
    caplog.clear()
    assert cli.main(_args(tiny_root, work, out, cache, "--epochs", "3")) == 2
    assert "made with other settings" in caplog.text and "--rerun" in caplog.text
    assert _mtimes(work / "rows") == again


def test_bad_input_stops_before_training(tiny_root, tmp_path, caplog):
    work, out, cache = tmp_path / "work", tmp_path / "report", tmp_path / "cache"

    def refused(*extra, root=tiny_root):
        caplog.clear()
        rc = cli.main(_args(root, work, out, cache, *extra))
        assert rc == 2
        assert not (work / "rows").exists(), "nothing may be trained"
        return caplog.text

    assert "unknown row 'G+Q'" in refused("--rows", "G", "G+Q", root=tmp_path / "does-not-exist")
    assert "unknown row 'X'" in refused("--rerun", "X")
    assert "draws 60 subjects" in refused("--protocol", "paper-P1")
    # The same faces without depth and without truth.csv: depth rows and the illumination split are refused.
    flat = tmp_path / "no_depth"
    shutil.copytree(tiny_root / "colour", flat / "colour")
    with open(tiny_root / "labels.csv", newline="") as src, open(flat / "labels.csv", "w", newline="") as dst:
        reader = csv.DictReader(src)
        writer = csv.DictWriter(dst, fieldnames=reader.fieldnames)
        writer.writeheader()
        for r in reader:
            writer.writerow(dict(r, depth=""))
    assert "row G+D+CMFN needs depth" in refused("--rows", "G", "G+D+CMFN", root=flat)
    assert "row illum:G needs the illumination-shift split" in refused("--rows", "illum:G", root=flat)


def test_crop_size_has_one_check_for_preprocessing_model_and_sweep():
    from cmcnn_ros.model.config import ModelConfig, ModelConfigError
    from cmcnn_ros.preprocessing.params import PreprocessingError, PreprocessingParams
    from cmcnn_training.reproduce.sweep import SweepError

    def verdicts(size):
        out = []
        for build, error in ((lambda: PreprocessingParams(crop_size=size), PreprocessingError),
                             (lambda: ModelConfig(input_size=size), ModelConfigError),
                             (lambda: cli.build_sweep_config(cli.get_args_parser().parse_args(
                                 ["--crop-size", str(size)])), SweepError)):
            try:
                build()
                out.append(True)
            except error as exc:
                assert "[16, 1024]" in str(exc)
                out.append(False)
        return out

    for size in (16, 48, 148, 1024):   # 148, the paper's, was refused by the sweep (not a multiple of 16)
        assert verdicts(size) == [True] * 3, size
    for size in (8, 15, 1025):
        assert verdicts(size) == [False] * 3, size
    assert cli.build_sweep_config(cli.get_args_parser().parse_args(["--preset", "paper"])).crop_size == 148


# ---------------------------------------------------------------------------
# Grad-CAM and cmcnn-explain
# ---------------------------------------------------------------------------

def test_grad_cam_maps():
    import torch

    from cmcnn_ros.inference.gradcam import GradCamError, default_stage, grad_cam
    from cmcnn_ros.model import cmcnn

    torch.manual_seed(0)
    model = cmcnn(preset="tiny", modalities=("grey", "depth"), num_classes=6, input_size=48)
    assert default_stage(model) == 2                       # 48 -> 24 -> 12 -> 6 (>= 6 px) -> 3
    assert default_stage(cmcnn(preset="tiny", num_classes=6)) == 3   # 148 px: the FEN output (9x9)
    x = torch.rand(3, 2, 48, 48)
    maps, probs = grad_cam(model, x, "grey")
    assert maps.shape == (3, 48, 48) and probs.shape == (3, 6)
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    assert maps.min() >= 0 and maps.max() <= 1
    assert all(m.max() == pytest.approx(1.0) or m.max() == 0 for m in maps)
    # Explaining another class gives another map.
    other = torch.tensor([(int(p.argmax()) + 1) % 6 for p in probs])
    maps2, _ = grad_cam(model, x, "grey", target=other)
    assert not np.allclose(maps, maps2)
    with pytest.raises(GradCamError, match="no 'lbp' input"):
        grad_cam(model, x, "lbp")


def test_explain_cli_on_a_photo(tiny_root, tmp_path, capsys):
    from cmcnn_ros.tools import explain_cli

    out = tmp_path / "why.png"
    frames = sorted((tiny_root / "colour").glob("*.jpg"))
    for frame in frames:
        capsys.readouterr()
        rc = explain_cli.main([str(frame), "--depth", str(tiny_root / "depth" / (frame.stem + ".png")),
                               "--out", str(out)])
        if rc == 0:
            break
    assert rc == 0, "no rendered frame had a detectable face"
    faces = json.loads(capsys.readouterr().out)
    assert len(faces) >= 1
    assert sum(faces[0]["scores"].values()) == pytest.approx(1.0, abs=1e-3)
    assert faces[0]["expression"] == max(faces[0]["scores"], key=faces[0]["scores"].get)
    assert faces[0]["depth_valid"] is True
    assert out.stat().st_size > 10000

    blank = tmp_path / "blank.png"
    import cv2
    cv2.imwrite(str(blank), np.full((240, 320, 3), 128, np.uint8))
    assert explain_cli.main([str(blank), "--out", str(tmp_path / "none.png")]) == 2
    assert "no face found" in capsys.readouterr().err
    assert explain_cli.main([str(frame), "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(out)]) == 2
    assert "missing.pt" in capsys.readouterr().err


def test_explain_figure_layout_has_no_overlaps_and_no_map_without_depth():
    """Issue 18: class names over the bars, panel title under the figure title, a Grad-CAM square over no depth."""
    import skimage.data

    from cmcnn_ros import resources
    from cmcnn_ros.tools import explain_cli

    rgb = skimage.data.astronaut()
    faces, x, probs, maps, names, mods = explain_cli.explain(rgb[:, :, ::-1].copy(), None,
                                                             resources.find_file(None, resources.DEFAULT_MODEL))
    assert len(faces) == 1 and not faces[0].depth_valid
    fig = explain_cli.explanation_figure(faces, x, probs, maps, names, mods)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = fig.axes
    scores, panels = axes[-1], axes[:-1]
    labels = scores.get_yaxis().get_tightbbox(renderer)
    for ax in panels:                                     # the class names stay clear of every image panel
        assert not labels.overlaps(ax.get_window_extent(renderer)), ax.get_title()
    assert labels.x1 <= scores.get_window_extent(renderer).x0 + 1   # ... and left of the bars
    top = fig._suptitle.get_window_extent(renderer)
    for ax in axes:
        assert not top.overlaps(ax.title.get_window_extent(renderer)), ax.get_title()
    depth_ax = panels[list(mods).index("depth")]
    assert [t.get_text() for t in depth_ax.texts] == ["no depth"]
    shown = depth_ax.images[0].get_array()
    assert float(np.max(shown)) == 0.0                    # no heat map where there is no depth
