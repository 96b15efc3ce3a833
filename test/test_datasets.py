"""Dataset loaders (Kinect folder, BU-3DFE VRML, Bosphorus .bnt), registry and protocols.

Every test writes small files in the real formats itself.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from cmcnn_ros.classes import BASIC_EXPRESSIONS
from cmcnn_training.datasets import (BosphorusDataset, BU3DFEDataset, DatasetError, KinectFolderDataset,
                                     load_dataset, protocol_selection, protocol_splits, read_bnt,
                                     read_vrml_mesh, select_protocol, subject_kfold)

HEADER = "colour,depth,label,subject,intensity,box_x,box_y,box_w,box_h\n"
RENDER = {"size": 64, "fit_max_side": 64, "margin": 0.1}


# ---------------------------------------------------------------------------
# Kinect folder
# ---------------------------------------------------------------------------

def _kinect_folder(root: Path, rows=None, depth_value=1234, intrinsics=None) -> Path:
    (root / "colour").mkdir(parents=True, exist_ok=True)
    (root / "depth").mkdir(exist_ok=True)
    colour = np.zeros((40, 50, 3), np.uint8)
    colour[:, :, 2] = 200
    depth = np.full((40, 50), depth_value, np.uint16)
    depth[0, 0] = 0
    cv2.imwrite(str(root / "colour" / "a.png"), colour)
    cv2.imwrite(str(root / "colour" / "b.jpg"), colour)
    cv2.imwrite(str(root / "depth" / "a.png"), depth)
    if rows is None:
        rows = ["colour/a.png,depth/a.png,anger,s1,3,5,6,20,25",
                "colour/b.jpg,,Happy,s2,,,,,",
                "colour/a.png,depth/a.png,neutral,s3,0,,,,"]
    (root / "labels.csv").write_text(HEADER + "\n".join(rows) + "\n")
    if intrinsics is not None:
        (root / "intrinsics.yaml").write_text(intrinsics)
    return root


def test_kinect_folder_values(tmp_path):
    ds = KinectFolderDataset(_kinect_folder(tmp_path))
    assert len(ds) == 3
    assert ds.labels == ["angry", "happy", "neutral"]
    assert ds.subjects == ["s1", "s2", "s3"]
    assert ds.intensities == [3, None, 0]
    s = ds[0]
    assert s.colour.dtype == np.uint8 and s.colour.shape == (40, 50, 3)
    assert s.depth_m.dtype == np.float32
    assert s.depth_m[5, 5] == pytest.approx(1.234) and s.depth_m[0, 0] == 0
    assert s.box == (5, 6, 20, 25) and s.label == "angry" and s.source.endswith("colour/a.png")
    assert ds[1].depth_m is None and ds[1].box is None
    assert ds[-1].subject == "s3"
    sub = ds[1:]
    assert len(sub) == 2 and sub.labels == ["happy", "neutral"] and sub[0].subject == "s2"
    assert list(ds.label_indices()) == [0, 3, 6]


def test_kinect_folder_depth_unit_from_intrinsics(tmp_path):
    ds = load_dataset("vt-kfer", _kinect_folder(tmp_path, intrinsics="fx: 500\nfy: 500\ndepth_unit_m: 0.0001\n"))
    assert ds.intrinsics["fx"] == 500
    assert ds[0].depth_m[5, 5] == pytest.approx(0.1234)


def test_kinect_folder_listing_is_lazy(tmp_path):
    root = _kinect_folder(tmp_path)
    ds = KinectFolderDataset(root)
    (root / "colour" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert ds.labels[0] == "angry"  # no decoding needed for the listing
    with pytest.raises(DatasetError, match=r"line 2.*a\.png"):
        ds[0]


def test_kinect_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="labels.csv not found"):
        KinectFolderDataset(tmp_path)
    bad = _kinect_folder(tmp_path / "missing", rows=["colour/a.png,depth/a.png,happy,s1,,,,,",
                                                     "colour/nope.png,,happy,s1,,,,,"])
    with pytest.raises(DatasetError, match=r"line 3: colour file .*nope\.png does not exist"):
        KinectFolderDataset(bad)
    hdr = _kinect_folder(tmp_path / "hdr")
    (hdr / "labels.csv").write_text("colour,lable,subject\ncolour/a.png,happy,s1\n")
    with pytest.raises(DatasetError,
                       match=r"malformed header.*unknown columns \['lable'\].*missing columns \['label'\]"):
        KinectFolderDataset(hdr)
    lab = _kinect_folder(tmp_path / "lab")
    with pytest.raises(DatasetError, match=r"line 4: label 'neutral' \(neutral\) is not in the requested classes"):
        KinectFolderDataset(lab, classes=BASIC_EXPRESSIONS)
    assert len(KinectFolderDataset(lab, classes=BASIC_EXPRESSIONS, skip_other_labels=True)) == 2
    unk = _kinect_folder(tmp_path / "unk", rows=["colour/a.png,,bored,s1,,,,,"])
    with pytest.raises(DatasetError, match="line 2: unknown expression label 'bored'"):
        KinectFolderDataset(unk)
    box = _kinect_folder(tmp_path / "box", rows=["colour/a.png,,happy,s1,,1,2,,"])
    with pytest.raises(DatasetError, match="line 2: box needs all"):
        KinectFolderDataset(box)
    # colour and depth of different sizes
    mism = _kinect_folder(tmp_path / "mism")
    cv2.imwrite(str(mism / "depth" / "a.png"), np.zeros((10, 10), np.uint16))
    with pytest.raises(DatasetError, match=r"colour .*a\.png is 50x40 but depth .*a\.png is 10x10"):
        KinectFolderDataset(mism)[0]
    # 8-bit depth
    d8 = _kinect_folder(tmp_path / "d8")
    cv2.imwrite(str(d8 / "depth" / "a.png"), np.zeros((40, 50), np.uint8))
    with pytest.raises(DatasetError, match="16-bit"):
        KinectFolderDataset(d8)[0]


def test_kinect_folder_10k_rows_is_fast(tmp_path):
    root = _kinect_folder(tmp_path)
    rows = [f"colour/a.png,depth/a.png,{BASIC_EXPRESSIONS[i % 6]},s{i % 50},{i % 4 + 1},1,2,10,10"
            for i in range(10000)]
    (root / "labels.csv").write_text(HEADER + "\n".join(rows) + "\n")
    t0 = time.perf_counter()
    ds = KinectFolderDataset(root)
    elapsed = time.perf_counter() - t0
    assert len(ds) == 10000 and len(set(ds.subjects)) == 50
    assert elapsed < 2.0, elapsed  # ~0.1 s on an idle core


# ---------------------------------------------------------------------------
# BU-3DFE (VRML 2.0 + BMP texture)
# ---------------------------------------------------------------------------

def _write_wrl(path: Path, texture_name: str, n=24, m=28, bump=0.0, truncate=False) -> None:
    """A face-like dome as a VRML 2.0 IndexedFaceSet with a *separately indexed* texture list."""
    xs, ys = np.meshgrid(np.linspace(-50, 50, n), np.linspace(-60, 60, m))
    x, y = xs.ravel(), ys.ravel()
    z = 40.0 * np.sqrt(np.clip(1 - (x / 60) ** 2 - (y / 70) ** 2, 0, 1)) + bump
    uv = np.c_[(x + 50) / 100, (y + 60) / 120]
    perm = np.random.default_rng(1).permutation(len(x))  # texcoord k = uv[perm[k]]
    inv = np.argsort(perm)
    faces = []
    for i in range(m - 1):
        for j in range(n - 1):
            a, b, c, d = i * n + j, i * n + j + 1, (i + 1) * n + j, (i + 1) * n + j + 1
            faces += [(a, b, d), (a, d, c)]
    coord_index = ", ".join(f"{p}, {q}, {r}, -1" for p, q, r in faces)
    tex_index = ", ".join(f"{inv[p]}, {inv[q]}, {inv[r]}, -1" for p, q, r in faces)
    text = ("#VRML V2.0 utf8\n# BU-3DFE-like test scan\nTransform { children [ Shape {\n"
            f"  appearance Appearance {{ texture ImageTexture {{ url \"{texture_name}\" }} }}\n"
            "  geometry IndexedFaceSet {\n    coord Coordinate { point [\n"
            + ",\n".join(f"      {a:.4f} {b:.4f} {c:.4f}" for a, b, c in zip(x, y, z))
            + " ] }\n    texCoord TextureCoordinate { point [\n"
            + ",\n".join(f"      {u:.6f} {v:.6f}" for u, v in uv[perm])
            + f" ] }}\n    coordIndex [ {coord_index} ]\n    texCoordIndex [ {tex_index} ]\n"
            "  } } ] }\n")
    if truncate:
        text = text[: len(text) // 2]
    path.write_text(text)


def _bu_texture() -> np.ndarray:
    tex = np.full((200, 200, 3), 128, np.uint8)
    tex[20:60, 120:160] = (0, 0, 255)  # u 0.6-0.8, v 0.7-0.9 (v from the bottom) -> x 10..30, y 24..48
    return tex


def _bu3dfe(root: Path, subjects=("F0001", "M0002"), codes=("AN", "HA", "NE"), levels=(3, 4)) -> Path:
    for s in subjects:
        d = root / s
        d.mkdir(parents=True, exist_ok=True)
        for code in codes:
            for lvl in ((0,) if code == "NE" else levels):
                stem = f"{s}_{code}{lvl:02d}WH"
                cv2.imwrite(str(d / f"{stem}_F2D.bmp"), _bu_texture())
                _write_wrl(d / f"{stem}_F3D.wrl", f"{stem}_F2D.bmp", bump=lvl)
    return root


def test_vrml_parser_maps_texcoords_through_texcoordindex(tmp_path):
    _write_wrl(tmp_path / "a.wrl", "a.bmp")
    mesh = read_vrml_mesh(tmp_path / "a.wrl")
    assert mesh.points.shape == (24 * 28, 3) and mesh.texture_url == "a.bmp"
    uv = mesh.vertex_uv()
    np.testing.assert_allclose(uv[:, 0], (mesh.points[:, 0] + 50) / 100, atol=1e-5)
    np.testing.assert_allclose(uv[:, 1], (mesh.points[:, 1] + 60) / 120, atol=1e-5)


def test_bu3dfe_loader_registers_colour_and_depth(tmp_path):
    ds = load_dataset("bu3dfe", _bu3dfe(tmp_path), render=RENDER)
    assert len(ds) == 2 * 5
    assert sorted(set(ds.labels)) == ["angry", "happy", "neutral"]
    assert set(ds.subjects) == {"F0001", "M0002"}
    assert sorted(set(ds.intensities)) == [0, 3, 4]
    assert ds.races == ["WH"] * 10
    i = ds.labels.index("happy")
    s = ds[i]
    assert s.colour.shape == (64, 64, 3) and s.depth_m.shape == (64, 64) and s.depth_m.dtype == np.float32
    assert s.intensity in (3, 4) and s.source.endswith("_F3D.wrl")
    valid = s.depth_m > 0
    assert valid.mean() > 0.4
    # Nearest point (dome peak at x=y=0) is at 0.8 m and in the middle of the image.
    r, c = np.unravel_index(np.argmin(np.where(valid, s.depth_m, np.inf)), s.depth_m.shape)
    assert s.depth_m[r, c] == pytest.approx(0.8, abs=1e-4)
    assert abs(r - 31.5) < 4 and abs(c - 31.5) < 4
    # The red texture patch (x 10..30, y 24..48 mm) lands right of and above the centre.
    red = (s.colour == (0, 0, 255)).all(axis=2)
    rows, cols = np.nonzero(red)
    assert red.sum() > 10 and rows.mean() < 31.5 - 8 and cols.mean() > 31.5 + 4
    assert s.box is not None and s.box[2] > 30 and s.box[3] > 30
    assert (s.colour[~valid] == 0).all()


def test_bu3dfe_classes_skip_neutral_and_cache(tmp_path):
    root = _bu3dfe(tmp_path / "db")
    ds = BU3DFEDataset(root, classes=BASIC_EXPRESSIONS, render=RENDER, cache_dir=tmp_path / "cache")
    assert len(ds) == 8 and "neutral" not in ds.labels
    a = ds[0]
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    b = ds[0]  # from the cache
    np.testing.assert_array_equal(a.colour, b.colour)
    np.testing.assert_array_equal(a.depth_m, b.depth_m)
    assert a.box == b.box


def test_bu3dfe_errors(tmp_path):
    with pytest.raises(DatasetError, match="no BU-3DFE scans"):
        BU3DFEDataset(tmp_path)
    root = _bu3dfe(tmp_path / "t", subjects=("F0001",), codes=("AN",), levels=(4,))
    wrl = root / "F0001" / "F0001_AN04WH_F3D.wrl"
    _write_wrl(wrl, "F0001_AN04WH_F2D.bmp", truncate=True)
    with pytest.raises(DatasetError, match=r"F0001_AN04WH_F3D\.wrl: unbalanced braces"):
        BU3DFEDataset(root, render=RENDER)[0]
    wrl.write_text("#VRML V2.0 utf8\nShape { geometry IndexedFaceSet { coord Coordinate { point [ 1 2 x ] } } }\n")
    with pytest.raises(DatasetError, match=r"F3D\.wrl: Coordinate point holds a value that is not a number"):
        BU3DFEDataset(root, render=RENDER)[0]
    wrl.write_text("solid stl\n")
    with pytest.raises(DatasetError, match="not a VRML file"):
        BU3DFEDataset(root, render=RENDER)[0]
    _write_wrl(wrl, "F0001_AN04WH_F2D.bmp")
    (root / "F0001" / "F0001_AN04WH_F2D.bmp").unlink()
    with pytest.raises(DatasetError, match="texture image not found"):
        BU3DFEDataset(root, render=RENDER)[0]
    (root / "F0001" / "F0001_AN04WH_F2D.bmp").write_bytes(b"BM\x00\x01broken")
    with pytest.raises(DatasetError, match=r"cannot decode texture image .*F2D\.bmp"):
        BU3DFEDataset(root, render=RENDER)[0]
    _write_wrl(root / "F0001" / "F0001_XX01WH_F3D.wrl", "x.bmp")
    with pytest.raises(DatasetError, match=r"F0001_XX01WH_F3D\.wrl: unknown BU-3DFE expression code 'XX'"):
        BU3DFEDataset(root)


# ---------------------------------------------------------------------------
# Bosphorus (.bnt + .png)
# ---------------------------------------------------------------------------

ZMIN = -1.0e9


def _write_bnt_struct(path: Path, nrows=30, ncols=25, truncate=0, bad_len=False) -> np.ndarray:
    """The documented layout, written with struct (independent of the loader's writer)."""
    xs, ys = np.meshgrid(np.linspace(-50, 50, ncols), np.linspace(60, -60, nrows))  # row 0 = top
    x, y = xs.ravel(), ys.ravel()
    inside = (x / 55) ** 2 + (y / 65) ** 2 < 1
    z = np.where(inside, 40.0 * np.sqrt(np.clip(1 - (x / 60) ** 2 - (y / 70) ** 2, 0, 1)), ZMIN)
    u = (x + 50) / 100
    v = (60 - y) / 120  # measured from the top of the image
    data = np.c_[x, y, z, u, v]
    data[~inside] = ZMIN
    name = path.with_suffix(".png").name.encode()
    n = nrows * ncols
    blob = struct.pack("<HHdH", nrows, ncols, ZMIN, len(name)) + name
    blob += struct.pack("<I", n * 5 + (5 if bad_len else 0))
    blob += struct.pack(f"<{n * 5}d", *data.T.ravel())  # column-major: all x, then y, z, u, v
    path.write_bytes(blob[: len(blob) - truncate] if truncate else blob)
    return data


def _bosphorus(root: Path, subjects=("bs000", "bs001"), codes=("E_ANGER_0", "E_HAPPY_0", "N_N_0",
                                                                 "LFAU_9_0", "YR_R10_0")) -> Path:
    tex = np.full((240, 200, 3), 128, np.uint8)
    tex[24:72, 120:160] = (0, 0, 255)  # u 0.6-0.8, v 0.1-0.3 from the top -> x 10..30, y 24..48
    for s in subjects:
        d = root / s
        d.mkdir(parents=True, exist_ok=True)
        for code in codes:
            _write_bnt_struct(d / f"{s}_{code}.bnt")
            cv2.imwrite(str(d / f"{s}_{code}.png"), tex)
            (d / f"{s}_{code}.lm2").write_text("landmarks\n")
    return root


def test_read_bnt_values(tmp_path):
    data = _write_bnt_struct(tmp_path / "bs000_E_ANGER_0.bnt")
    scan = read_bnt(tmp_path / "bs000_E_ANGER_0.bnt")
    assert (scan.nrows, scan.ncols, scan.zmin) == (30, 25, ZMIN)
    assert scan.image_file == "bs000_E_ANGER_0.png"
    np.testing.assert_array_equal(scan.data, data)
    assert scan.valid.sum() == ((data[:, 2] != ZMIN)).sum() > 100


def test_bosphorus_loader(tmp_path):
    ds = load_dataset("bosphorus", _bosphorus(tmp_path), render=RENDER)
    assert len(ds) == 6  # AU and pose scans skipped
    assert sorted(ds.labels) == sorted(["angry", "happy", "neutral"] * 2)
    assert set(ds.subjects) == {"bs000", "bs001"} and ds.intensities == [None] * 6
    s = ds[ds.labels.index("angry")]
    assert s.colour.shape == (64, 64, 3) and s.depth_m.shape == (64, 64)
    valid = s.depth_m > 0
    assert s.depth_m[valid].min() == pytest.approx(0.8, abs=1e-4)
    red = (s.colour == (0, 0, 255)).all(axis=2)
    rows, cols = np.nonzero(red)
    assert red.sum() > 10 and rows.mean() < 31.5 - 8 and cols.mean() > 31.5 + 4


def test_bosphorus_errors(tmp_path):
    root = _bosphorus(tmp_path / "a", subjects=("bs000",), codes=("E_FEAR_0",))
    bnt = root / "bs000" / "bs000_E_FEAR_0.bnt"
    _write_bnt_struct(bnt, truncate=100)
    with pytest.raises(DatasetError, match=r"bs000_E_FEAR_0\.bnt: truncated \.bnt file"):
        BosphorusDataset(root, render=RENDER)[0]
    _write_bnt_struct(bnt, bad_len=True)
    with pytest.raises(DatasetError, match=r"bs000_E_FEAR_0\.bnt: inconsistent \.bnt header"):
        BosphorusDataset(root, render=RENDER)[0]
    bnt.write_bytes(b"\x01\x00")
    with pytest.raises(DatasetError, match="ends inside the header"):
        BosphorusDataset(root, render=RENDER)[0]
    _write_bnt_struct(bnt)
    (root / "bs000" / "bs000_E_FEAR_0.png").unlink()
    with pytest.raises(DatasetError, match="texture image not found"):
        BosphorusDataset(root, render=RENDER)[0]
    _write_bnt_struct(root / "bs000" / "bs000_E_BORED_0.bnt")
    with pytest.raises(DatasetError, match="unknown Bosphorus emotion code E_BORED"):
        BosphorusDataset(root)


# ---------------------------------------------------------------------------
# Registry and protocols
# ---------------------------------------------------------------------------

def test_registry_errors(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset 'oulu-casia'"):
        load_dataset("oulu-casia", tmp_path)
    with pytest.raises(DatasetError, match="bad arguments"):
        load_dataset("kinect", tmp_path, colour_only=True)
    assert isinstance(load_dataset("KINECT_FOLDER", _kinect_folder(tmp_path)), KinectFolderDataset)


def _bu_listing(n_subjects=70, incomplete=("S069",)):
    labels, subjects, intens = [], [], []
    for k in range(n_subjects):
        s = f"S{k:03d}"
        for e in BASIC_EXPRESSIONS:
            if s in incomplete and e == "sad":
                continue
            for lvl in (1, 2, 3, 4):
                labels.append(e), subjects.append(s), intens.append(lvl)
        labels.append("neutral"), subjects.append(s), intens.append(0)
    return SimpleNamespace(labels=labels, subjects=subjects, intensities=intens)


def test_subject_kfold_is_subject_independent():
    subjects = [f"s{i % 23}" for i in range(230)]
    folds = subject_kfold(subjects, k=10, seed=3)
    assert len(folds) == 10
    tested = np.concatenate([te for _, te in folds])
    assert sorted(tested.tolist()) == list(range(230))  # every sample tested exactly once
    per_subject_folds = {}
    for f, (tr, te) in enumerate(folds):
        tr_s = {subjects[i] for i in tr}
        te_s = {subjects[i] for i in te}
        assert not tr_s & te_s
        assert len(tr) + len(te) == 230
        for s in te_s:
            per_subject_folds.setdefault(s, []).append(f)
    assert all(len(v) == 1 for v in per_subject_folds.values()) and len(per_subject_folds) == 23
    assert [te.tolist() for _, te in folds] == [te.tolist() for _, te in subject_kfold(subjects, 10, seed=3)]
    with pytest.raises(DatasetError, match="at least 10 subjects"):
        subject_kfold(subjects[:5], 10)


def test_p1_p2_selection_sizes():
    ds = _bu_listing()
    sel = protocol_selection(ds, "P1", run=0, seed=0)
    assert len(sel.subjects) == 60 and "S069" not in sel.subjects  # only complete subjects are eligible
    assert len(sel.indices) == 60 * 6 * 2
    assert {ds.intensities[i] for i in sel.indices} == {3, 4}
    assert {ds.labels[i] for i in sel.indices} == set(BASIC_EXPRESSIONS)
    # P1: the same subjects for every run; P2: re-drawn.
    assert protocol_selection(ds, "P1", run=5).subjects == sel.subjects
    p2 = [protocol_selection(ds, "P2", run=r).subjects for r in range(3)]
    assert all(len(s) == 60 for s in p2) and p2[0] != p2[1] != p2[2]
    assert protocol_selection(ds, "p2", run=1).subjects == p2[1]  # deterministic per run
    # The paper's reading: one intensity level each, 360 samples.
    for name, lvl in (("paper-P1", 4), ("paper-P2", 3)):
        idx = select_protocol(ds, name)
        assert len(idx) == 360 and {ds.intensities[i] for i in idx} == {lvl}
    assert len(select_protocol(ds, "all")) == len(ds.labels)
    with pytest.raises(DatasetError, match="only 69 of 70 subjects"):
        select_protocol(ds, "P1", n_subjects=70)
    with pytest.raises(DatasetError, match="unknown protocol 'P3'"):
        select_protocol(ds, "P3")


def test_protocol_splits_in_dataset_indices():
    ds = _bu_listing()
    idx, folds = protocol_splits(ds, "P1", k=10, run=2, seed=0)
    assert len(folds) == 10
    assert sorted(np.concatenate([te for _, te in folds]).tolist()) == idx.tolist()
    for tr, te in folds:
        assert not {ds.subjects[i] for i in tr} & {ds.subjects[i] for i in te}
        assert len({ds.subjects[i] for i in te}) == 6  # 60 subjects / 10 folds
    _, folds_other_run = protocol_splits(ds, "P1", k=10, run=3, seed=0)
    assert [te.tolist() for _, te in folds] != [te.tolist() for _, te in folds_other_run]


def test_protocols_on_bosphorus_like_and_real_loaders(tmp_path):
    bos = SimpleNamespace(labels=[e for _ in range(12) for e in BASIC_EXPRESSIONS],
                          subjects=[f"bs{k:03d}" for k in range(12) for _ in BASIC_EXPRESSIONS],
                          intensities=[None] * 72)
    assert len(select_protocol(bos, "P1", n_subjects=10)) == 60  # no intensity filter without intensities
    with pytest.raises(DatasetError, match="no intensity labels"):
        select_protocol(bos, "paper-P1", n_subjects=10)
    bu = BU3DFEDataset(_bu3dfe(tmp_path, subjects=("F0001", "F0002", "M0003"),
                               codes=("AN", "DI", "FE", "HA", "SA", "SU", "NE"), levels=(2, 3, 4)))
    assert len(bu) == 3 * (6 * 3 + 1)
    sel = protocol_selection(bu, "P1", n_subjects=2)  # 60 in the paper; the tiny set has 3 subjects
    assert len(sel.subjects) == 2 and len(sel.indices) == 2 * 6 * 2
    assert {bu.intensities[i] for i in sel.indices} == {3, 4}
    with pytest.raises(DatasetError, match="only 3 of 3 subjects"):
        select_protocol(bu, "P1", n_subjects=4)


def test_protocol_cli_prints_subjects(tmp_path, capsys):
    from cmcnn_training.datasets.protocols import main

    root = _bu3dfe(tmp_path, subjects=("F0001", "F0002", "M0003"), codes=("AN", "DI", "FE", "HA", "SA", "SU"),
                   levels=(3,))
    assert main(["--dataset", "bu3dfe", "--root", str(root), "--protocol", "paper-P2", "--n-subjects", "2",
                 "--folds", "2"]) == 0
    import json
    out = json.loads(capsys.readouterr().out)
    assert out["count"] == 12 and len(out["subjects"]) == 2 and len(out["folds"]) == 2
    assert main(["--dataset", "bu3dfe", "--root", str(root), "--protocol", "P9"]) == 2
    assert "unknown protocol" in capsys.readouterr().err
