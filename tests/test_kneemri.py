"""KneeMRI: safe reading of its pickled volumes and the one-time import to the generic layout."""

from __future__ import annotations

import csv
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from sbssl.config import load_config
from sbssl.data.cache import slice_cache_for
from sbssl.data.kneemri import import_kneemri, load_pck, read_metadata
from sbssl.data.layout import list_exams
from sbssl.data.prepare import prepare_volume, roi
from sbssl.engine.inference import load_ensemble
from sbssl.errors import DataError
from sbssl.predict import predict
from sbssl.workflow import finetune

from .conftest import FT, TINY_VIT, assert_user_error, run_cli

HEADER = "examId,seriesNo,aclDiagnosis,kneeLR,roiX,roiY,roiZ,roiHeight,roiWidth,roiDepth,volumeFilename\n"


def py2_pickle(arr: np.ndarray) -> bytes:
    """What numpy 1.x under Python 2 wrote with protocol 2: module numpy.core.multiarray, the bytes as str."""
    def s(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b

    def i(n: int) -> bytes:
        return b"J" + struct.pack("<i", n)

    out = b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + i(0) + b"\x85" + s(b"b") + b"\x87R"
    out += b"(" + i(1) + b"(" + b"".join(i(d) for d in arr.shape) + b"t"
    out += b"cnumpy\ndtype\n" + s(arr.dtype.str[1:].encode()) + i(0) + i(1) + b"\x87R"
    out += b"(" + i(3) + s(b"<") + b"NNN" + i(-1) + i(-1) + i(0) + b"tb"
    return out + b"\x89" + s(arr.tobytes()) + b"tb."


def malicious_pickle(marker: Path) -> bytes:
    """A pickle whose payload would create `marker` (os.system) if it ever ran."""
    return b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."


def volume(seed: int, slices: int = 6) -> np.ndarray:
    v = np.random.default_rng(seed).integers(0, 4096, (slices, 32, 32)).astype(np.uint16)
    v[:, 0, 0] = np.arange(slices)  # slice order is readable from one voxel
    return v


def kneemri_folder(root: Path) -> dict[str, np.ndarray]:
    """12 volumes of 10 exams (exam 105 has two series) in vol01/vol02, each pickled a different way, and one
    metadata row whose volume is missing."""
    vols, rows = {}, []
    diag = [0, 0, 1, 2, 0, 1, 0, 2, 0, 0, 1, 0]
    for k in range(12):
        exam, series = (100 + k, 1) if k < 11 else (105, 2)
        name = f"{exam}-{series}.pck"
        vols[name] = volume(k)
        folder = root / ("vol01" if k < 6 else "vol02")
        folder.mkdir(parents=True, exist_ok=True)
        data = py2_pickle(vols[name]) if k % 3 == 0 else pickle.dumps(vols[name], protocol=[2, 4, 5][k % 3])
        (folder / name).write_bytes(data)
        rows.append(f"{exam},{series},{diag[k]},{k % 2},4,5,1,20,22,3,{name}\n")
    rows.append("999,1,2,1,0,0,0,10,10,2,999-1.pck\n")  # no volume on disk
    (root / "metadata.csv").write_text(HEADER + "".join(rows))
    return vols


def test_every_pickle_protocol_reads_as_its_array(tmp_path: Path):
    vols = kneemri_folder(tmp_path)
    for name, v in vols.items():
        got = load_pck(next(tmp_path.glob(f"vol*/{name}")))
        np.testing.assert_array_equal(got, v)
        assert got.dtype == np.uint16


def test_malicious_pickle_refused_and_never_runs(tmp_path: Path):
    marker = tmp_path / "pwned"
    (tmp_path / "bad.pck").write_bytes(malicious_pickle(marker))
    with pytest.raises(DataError, match=r"bad\.pck: refused: the pickle names os\.system"):
        load_pck(tmp_path / "bad.pck")
    assert not marker.exists()
    # the payload may also hide inside an otherwise valid array pickle (its __reduce__ state)
    (tmp_path / "nested.pck").write_bytes(malicious_pickle(marker).replace(b"cos\nsystem", b"cposix\nsystem"))
    with pytest.raises(DataError, match="refused"):
        load_pck(tmp_path / "nested.pck")
    assert not marker.exists()


def test_damaged_and_non_array_pickles(tmp_path: Path):
    good = pickle.dumps(volume(0), protocol=4)
    (tmp_path / "cut.pck").write_bytes(good[: len(good) // 2])
    (tmp_path / "list.pck").write_bytes(pickle.dumps([1, 2, 3]))
    (tmp_path / "flat.pck").write_bytes(pickle.dumps(np.zeros(5)))
    for name, fault in [("cut.pck", "not a"), ("list.pck", "not a numpy array"), ("flat.pck", "wrong rank")]:
        with pytest.raises(DataError, match=fault) as e:
            load_pck(tmp_path / name)
        assert name in str(e.value) and "\n" not in str(e.value)


def test_import_labels_split_mirror_and_roi(tmp_path: Path):
    src, dst = tmp_path / "kneemri", tmp_path / "out"
    vols = kneemri_folder(src)
    res = run_cli("import", "kneemri", src, "--out", dst, "--task", "injury", "--valid-fraction", "0.3")
    assert res.returncode == 0, res.stderr
    assert "999-1.pck" in res.stderr  # the row without a volume is named and skipped
    meta = {r.case: r for r in read_metadata(src / "metadata.csv")}
    summary = json.loads((dst / "import.json").read_text())
    assert summary["skipped"] == ["999-1.pck"] and summary["train"]["exams"] + summary["valid"]["exams"] == 12
    seen = {}
    for split in ("train", "valid"):
        recs = list_exams(dst, split)
        for r in recs:
            m = meta[r.case]
            assert r.label == int(m.diagnosis >= 1)  # injury: partial or complete
            v = np.load(r.path, allow_pickle=False)
            left = m.knee_lr == 0
            np.testing.assert_array_equal(v, vols[f"{r.case}.pck"][::-1] if left else vols[f"{r.case}.pck"])
            seen[r.case] = split
        boxes = {row["case"]: row for row in csv.DictReader((dst / split / "roi.csv").read_text().splitlines())}
        assert set(boxes) == {r.case for r in recs}
        for case, b in boxes.items():
            z_want = 6 - 1 - 3 if meta[case].knee_lr == 0 else 1  # mirrored: z -> slices - z - depth
            assert (int(b["x"]), int(b["z"]), int(b["depth"])) == (4, z_want, 3)
    assert seen["105-1"] == seen["105-2"]  # the two series of one exam on the same side
    assert summary["valid"]["positives"] >= 1 and summary["train"]["positives"] >= 1  # stratified
    again = run_cli("import", "kneemri", src, "--out", dst)
    assert_user_error(again, "finished run")
    assert run_cli("check", "--data", dst).returncode == 0
    tear = run_cli("import", "kneemri", src, "--out", tmp_path / "tear", "--task", "tear")
    assert tear.returncode == 0, tear.stderr
    labels = {r.case: r.label for s in ("train", "valid") for r in list_exams(tmp_path / "tear", s)}
    assert labels == {c: int(m.diagnosis == 2) for c, m in meta.items() if c != "999-1"}


def test_import_stops_on_a_malicious_volume(tmp_path: Path):
    src, marker = tmp_path / "kneemri", tmp_path / "pwned"
    kneemri_folder(src)
    (src / "vol02" / "108-1.pck").write_bytes(malicious_pickle(marker))
    res = run_cli("import", "kneemri", src, "--out", tmp_path / "out")
    assert_user_error(res, "108-1.pck", "refused")
    assert not marker.exists() and not (tmp_path / "out" / "import.json").exists()


@pytest.mark.parametrize("row, fault", [
    ("1,1,3,0,0,0,0,1,1,1,1-1.pck", "aclDiagnosis 3"),
    ("1,1,0,0,0,0,0,1,1,1,../etc.pck", "plain .pck"),
    ("1,1,0,0,0,0,0,1,1,1", "fields"),
])
def test_bad_metadata_rows(tmp_path: Path, row: str, fault: str):
    (tmp_path / "metadata.csv").write_text(HEADER + row + "\n")
    with pytest.raises(DataError, match=fault) as e:
        read_metadata(tmp_path / "metadata.csv")
    assert "metadata.csv: row 2" in str(e.value)


def test_external_validation_of_a_model_trained_elsewhere(ft_run: Path, tmp_path: Path):
    src, dst = tmp_path / "kneemri", tmp_path / "out"
    kneemri_folder(src)
    assert run_cli("import", "kneemri", src, "--out", dst).returncode == 0
    res = run_cli("evaluate", "--model", ft_run, "--data", dst, "--out", tmp_path / "ext")
    assert res.returncode == 0, res.stderr
    m = json.loads((tmp_path / "ext" / "metrics.json").read_text())
    valid = list_exams(dst, "valid")
    assert m["n"] == len(valid) and m["positives"] == sum(r.label for r in valid)
    cases = [r["case"] for r in csv.DictReader((tmp_path / "ext" / "predictions.csv").open())]
    assert cases == [r.case for r in valid]


def test_roi_box_region_is_the_box_slices_and_its_square():
    vol = np.arange(6 * 32 * 32, dtype=np.float32).reshape(6, 32, 32)
    np.testing.assert_array_equal(roi(vol, 0.5, 0.5, box=(4, 5, 1, 20, 22, 3)), vol[1:4, 4:26, 4:26])
    # at the field's edge the square shifts inside; a box deeper than the stack keeps the slices there are
    np.testing.assert_array_equal(roi(vol, box=(28, 28, 5, 10, 10, 4)), vol[5:6, 22:32, 22:32])
    with pytest.raises(ValueError, match="outside"):
        roi(vol, box=(0, 0, 6, 4, 4, 1))


def test_finetune_and_predict_on_roi_boxes(tmp_path: Path, capsys):
    src, dst = tmp_path / "kneemri", tmp_path / "out"
    vols = kneemri_folder(src)
    import_kneemri(src, dst, valid_fraction=0.3)
    cfg = load_config(None, TINY_VIT + FT + ["finetune.ensemble=1", "train.epochs=1", "data.roi=box",
                                             "finetune.aggregator=max"])
    cache, recs = slice_cache_for(cfg, dst, "train")
    assert all(r.box is not None for r in recs) and set(np.diff(cache.offsets)) == {3}  # each box is 3 slices deep
    run = tmp_path / "run"
    finetune(cfg, dst, run)
    assert json.loads((run / "run.json").read_text())["preprocessing"]["roi"] == "box"
    exam = tmp_path / "new"
    exam.mkdir()
    np.save(exam / "101-1.npy", vols["101-1.pck"])
    assert predict(run, [exam / "101-1.npy"], tmp_path / "p0", overlays=False) == 1  # the model needs the box
    assert "roi.csv: no ROI box for 101-1" in capsys.readouterr().err
    (exam / "roi.csv").write_text("case,x,y,z,height,width,depth\n101-1,4,5,1,20,22,3\n")
    assert predict(run, [exam / "101-1.npy"], tmp_path / "p1", overlays=False) == 0
    ens = load_ensemble(run)  # the box's region, prepared as training prepared it
    want = ens.pre.prepare(np.load(exam / "101-1.npy"), (4, 5, 1, 20, 22, 3))
    np.testing.assert_array_equal(want, prepare_volume(vols["101-1.pck"], 32, box=(4, 5, 1, 20, 22, 3)))
    (exam / "roi.csv").write_text("case,x,y,z,height,width,depth\n101-1,4,5,1,0,22,3\n")
    res = run_cli("predict", "--model", run, exam / "101-1.npy", "--out", tmp_path / "p2", "--no-overlays")
    assert res.returncode != 0 and "roi.csv: row 2" in res.stderr


def test_knee_side_spelt_as_letters_mirrors_left_knees_without_a_left_value(tmp_path: Path):
    """A copy of the metadata that writes kneeLR as L / R says which knee is left; no --left is needed."""
    src = tmp_path / "src"
    kneemri_folder(src)
    meta = src / "metadata.csv"
    rows = meta.read_text().splitlines()
    lettered = [rows[0]] + [",".join(f[:3] + ["L" if f[3] == "1" else "r"] + f[4:])
                            for f in (r.split(",") for r in rows[1:])]
    meta.write_text("\n".join(lettered) + "\n")
    assert {r.knee_lr for r in read_metadata(meta)} == {"L", "R"}
    import_kneemri(src, tmp_path / "out", left=0)  # left=0 would name the wrong knee if numbers were meant
    side = {r.case: r.knee_lr for r in read_metadata(meta)}
    files = list((tmp_path / "out").glob("*/*.npy"))
    assert len(files) == 12  # 12 series on disk (exam 105 has two), the 13th row has none
    for f in files:
        first = int(np.load(f, allow_pickle=False)[0, 0, 0])  # the stored slice order (volume() marks it)
        assert first == (5 if side[f.stem] == "L" else 0), (f.stem, side[f.stem], first)
    meta.write_text(rows[0] + "\n" + rows[1].replace(",0,4,5", ",X,4,5") + "\n")
    with pytest.raises(DataError, match="kneeLR"):
        read_metadata(meta)
