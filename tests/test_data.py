"""The data layer: readers, validation (one clear line, exit 2), odd-but-valid input, cache."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from sbssl.data.cache import build_cache
from sbssl.data.check import check_dataset
from sbssl.data.datasets import ExamDataset, SliceDataset
from sbssl.data.layout import list_exams, read_labels
from sbssl.data.prepare import prepare_volume, robust_minmax
from sbssl.data.volume_io import load_volume
from sbssl.errors import DataError

from .conftest import assert_user_error, run_cli

PLANES = ("sagittal", "coronal", "axial")


def make_mrnet(root: Path, n_train: int = 4, n_valid: int = 2, shape=(3, 16, 16)) -> Path:
    rng = np.random.default_rng(0)
    for split, ids in (("train", range(n_train)), ("valid", range(n_train, n_train + n_valid))):
        for plane in PLANES:
            (root / split / plane).mkdir(parents=True, exist_ok=True)
            for i in ids:
                np.save(root / split / plane / f"{i:04d}.npy", rng.integers(0, 255, shape, dtype=np.uint8))
        for task in ("abnormal", "acl", "meniscus"):
            (root / f"{split}-{task}.csv").write_text("".join(f"{i:04d},{i % 2}\n" for i in ids))
    return root


@pytest.fixture
def mrnet(tmp_path: Path) -> Path:
    return make_mrnet(tmp_path / "MRNet-v1.0")


def test_check_summarises_a_good_set(mrnet: Path):
    res = run_cli("check", "--data", mrnet)
    assert res.returncode == 0, res.stderr
    assert "train/sagittal: 4 exams, slices 3-3" in res.stdout
    assert "valid-acl: 1/2 positive" in res.stdout


def test_check_accepts_the_parent_folder(mrnet: Path):
    rep = check_dataset(mrnet.parent)
    assert rep.ok and rep.root == mrnet


BAD = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:300]), "truncated"),
    "truncated header": (lambda p: p.write_bytes(p.read_bytes()[:60]), "truncated"),
    "not npy": (lambda p: p.write_text("hello, I am not an array"), "not a valid .npy"),
    "pickled": (lambda p: np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True), "pickle"),
    "wrong rank": (lambda p: np.save(p, np.zeros((16, 16), np.uint8)), "wrong rank"),
    "nan": (lambda p: np.save(p, np.full((2, 8, 8), np.nan, np.float32)), "NaN"),
    "inf": (lambda p: np.save(p, np.array([[[np.inf] * 4] * 4], np.float32)), "NaN or infinite"),
    "zero slices": (lambda p: np.save(p, np.zeros((0, 16, 16), np.uint8)), "zero slices"),
    "strings": (lambda p: np.save(p, np.array([[["a"]]])), "dtype"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_volume_is_one_clear_line(mrnet: Path, case: str):
    target = mrnet / "train" / "coronal" / "0002.npy"
    mutate, needle = BAD[case]
    mutate(target)
    res = run_cli("check", "--data", mrnet)
    assert_user_error(res, "0002.npy", needle)
    if case not in ("pickled", "nan"):
        return
    # and in a training command the same fault stops it before anything is written
    out = mrnet.parent / "run"
    res = run_cli("pretrain", "--data", mrnet, "--out", out, "data.plane=coronal", "data.img_size=16",
                  "model.name=vit_tiny", "model.patch_size=8", "train.batch_size=2", "train.epochs=1")
    assert_user_error(res, "0002.npy", needle)
    assert not (out / "encoder.safetensors").exists()


def test_pickle_payload_is_never_executed(mrnet: Path, tmp_path: Path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    with open(mrnet / "train" / "sagittal" / "0001.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": (1,)})
        pickle.dump(np.array([Evil()], dtype=object), f)
    with pytest.raises(DataError, match="pickle"):
        load_volume(mrnet / "train" / "sagittal" / "0001.npy")
    assert not marker.exists()


@pytest.mark.parametrize("row,needle", [("0001,2", "not 0 or 1"), ("0001,yes", "not 0 or 1"), ("0001", "want"),
                                        ("0001,1\n0001,0", "twice")])
def test_bad_label_rows(mrnet: Path, row: str, needle: str):
    (mrnet / "train-acl.csv").write_text("0000,0\n" + row + "\n0002,0\n0003,1\n")
    assert_user_error(run_cli("check", "--data", mrnet), "train-acl.csv", needle)


def test_csv_row_without_volume(mrnet: Path):
    (mrnet / "train" / "axial" / "0003.npy").unlink()
    assert_user_error(run_cli("check", "--data", mrnet), ".csv", "case 0003 has no volume train/axial/0003.npy")


def test_empty_split(tmp_path: Path):
    root = make_mrnet(tmp_path / "m", n_train=1)
    for plane in PLANES:
        (root / "train" / plane / "0000.npy").unlink()
    for task in ("abnormal", "acl", "meniscus"):
        (root / f"train-{task}.csv").write_text("")
    assert_user_error(run_cli("check", "--data", root), "empty split")


def test_missing_root(tmp_path: Path):
    assert_user_error(run_cli("check", "--data", tmp_path / "nope"), "nope", "not found")


def test_odd_but_valid_input_is_handled(mrnet: Path, caplog):
    s = mrnet / "train" / "sagittal"
    np.save(s / "0000.npy", np.random.default_rng(1).integers(0, 4000, (5, 20, 24)).astype(np.uint16))
    np.save(s / "0001.npy", np.random.default_rng(1).random((1, 16, 16)).astype(np.float64))  # 1 slice, float
    (s / ".DS_Store").write_bytes(b"\x00\x01junk")
    (s / "notes.txt").write_text("stray")
    np.save(s / "0099.npy", np.zeros((2, 16, 16), np.uint8))  # not in the CSV: warned, skipped
    (s / "0002.npy").rename(s / "2.npy")  # id without zero padding
    recs = list_exams(mrnet, "train", "sagittal", "acl")
    assert [r.case for r in recs] == ["0000", "0001", "2", "0003"]
    assert [r.label for r in recs] == [0, 1, 0, 1]
    assert "not in the label file" in caplog.text
    cache = build_cache(recs, 16, mrnet.parent / "cache", "t")
    assert cache.data.shape == (5 + 1 + 3 + 3, 16, 16) and cache.data.dtype == np.uint8
    assert list(np.diff(cache.offsets)) == [5, 1, 3, 3]
    res = run_cli("check", "--data", mrnet)
    assert res.returncode == 0, res.stderr


def test_normalisation_and_resize():
    v = np.concatenate([np.zeros((1, 40, 40)), np.full((1, 40, 40), 100.0), np.full((1, 40, 40), 1e6)])
    v[1, 0, 0] = 50
    x = robust_minmax(v)
    assert x.min() == 0 and x.max() == 1 and x.dtype == np.float32
    u = prepare_volume(np.random.default_rng(0).random((2, 30, 50)), 16)
    assert u.shape == (2, 16, 16) and u.dtype == np.uint8


def test_cache_is_built_once_and_mean_std_cached(mrnet: Path):
    recs = list_exams(mrnet, "train", "sagittal", "acl")
    c1 = build_cache(recs, 16, mrnet.parent / "cache", "x")
    files = sorted((mrnet.parent / "cache").iterdir())
    mtimes = [p.stat().st_mtime_ns for p in files]
    c2 = build_cache(recs, 16, mrnet.parent / "cache", "x")
    assert [p.stat().st_mtime_ns for p in sorted((mrnet.parent / "cache").iterdir())] == mtimes
    assert c1.mean == c2.mean and 0 < c1.mean < 1 and c1.std > 0
    full = np.concatenate([prepare_volume(load_volume(r.path), 16) for r in recs]) / 255.0
    assert abs(full.mean() - c1.mean) < 0.02


def test_datasets_batch_reads_and_exam_collation(mrnet: Path):
    recs = list_exams(mrnet, "train", "sagittal", "acl")
    cache = build_cache(recs, 16, mrnet.parent / "cache", "y")
    ds = SliceDataset(cache)
    assert len(ds) == 12 and ds[[0, 5, 3]].shape == (3, 1, 16, 16)
    ex = ExamDataset(cache, np.array([r.label for r in recs]))
    batch = ex[[1, 0]]  # a batch of exams, read whole, in the order asked
    assert batch["slices"].shape == (6, 1, 16, 16) and batch["lengths"].tolist() == [3, 3]
    assert batch["labels"].tolist() == [1, 0] and batch["exams"].tolist() == [1, 0]
    assert torch.equal(batch["slices"][:3, 0], torch.from_numpy(np.array(cache.exam(1))))
    two = ExamDataset(cache, np.array([r.label for r in recs]), slices=2)[[0]]  # 2 evenly spaced of 3 slices
    assert torch.equal(two["slices"][:, 0], torch.from_numpy(np.asarray(cache.exam(0))[[0, 2]]))
    rows = ExamDataset(cache, np.array([r.label for r in recs]), read=False)[[1]]
    assert "slices" not in rows and rows["rows"].tolist() == list(range(3, 6))


def test_generic_folder_with_nifti_dicom_and_npy(tmp_path: Path):
    import nibabel as nib

    root = tmp_path / "g"
    root.mkdir()
    vol = np.random.default_rng(0).integers(0, 1000, (20, 24, 5)).astype(np.int16)  # x, y, slices
    nib.save(nib.Nifti1Image(vol, np.eye(4)), root / "knee_a.nii.gz")
    np.save(root / "knee_b.npy", np.random.default_rng(1).integers(0, 255, (4, 16, 16), dtype=np.uint8))
    write_dicom_series(root / "knee_c", np.random.default_rng(2).integers(0, 2000, (3, 12, 12)).astype(np.uint16))
    (root / "labels.csv").write_text("case,label\nknee_a,1\nknee_b,0\nknee_c,1\n")
    recs = list_exams(root, "train")
    assert [(r.case, r.label) for r in recs] == [("knee_a", 1), ("knee_b", 0), ("knee_c", 1)]
    a = load_volume(root / "knee_a.nii.gz")
    assert a.shape == (5, 20, 24)
    np.testing.assert_allclose(a[2], vol[:, :, 2])
    c = load_volume(root / "knee_c")
    assert c.shape == (3, 12, 12)
    res = run_cli("check", "--data", root)
    assert res.returncode == 0 and "3 exams" in res.stdout, res.stderr


def write_dicom_series(folder: Path, vol: np.ndarray, reverse_files: bool = True) -> None:
    """Small valid DICOM slices; files written in reverse so that sorting by position matters."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    order = range(len(vol))
    for i in order:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        name = f"s{len(vol) - i:03d}.dcm" if reverse_files else f"s{i:03d}.dcm"
        ds = FileDataset(str(folder / name), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.Modality, ds.Rows, ds.Columns = "MR", vol.shape[1], vol.shape[2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, float(i) * 3], [1, 0, 0, 0, 1, 0]
        ds.InstanceNumber = i + 1
        ds.PixelData = vol[i].astype(np.uint16).tobytes()
        ds.save_as(folder / name, enforce_file_format=True)


def test_dicom_slices_sorted_by_position(tmp_path: Path):
    vol = np.stack([np.full((8, 8), v, np.uint16) for v in (10, 20, 30)])
    write_dicom_series(tmp_path / "d", vol)
    (tmp_path / "d" / "README").write_text("not dicom")
    got = load_volume(tmp_path / "d")
    assert got[:, 0, 0].tolist() == [10, 20, 30]


def test_label_parser_header_and_padding(tmp_path: Path):
    p = tmp_path / "labels.csv"
    p.write_text("case,label\n7,1\n0008,0\n")
    assert read_labels(p) == {"7": ("7", 1), "8": ("0008", 0)}
