"""One DICOM file is an exam: single-frame = one slice, multi-frame (enhanced MR) = a volume in slice order;
compressed pixel data without a decoder is refused in one line."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from sbssl.data.volume_io import load_volume
from sbssl.errors import DataError
from sbssl.predict import predict

from .conftest import run_cli


def write_enhanced_mr(path: Path, vol: np.ndarray, z: list[float], slope: float = 1.0) -> None:
    """A multi-frame enhanced MR file whose frames are stored in the order given, each with its position."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"  # Enhanced MR Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Modality, ds.NumberOfFrames, ds.Rows, ds.Columns = "MR", len(vol), vol.shape[1], vol.shape[2]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    shared, orient, trans = Dataset(), Dataset(), Dataset()
    orient.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    trans.RescaleSlope, trans.RescaleIntercept, trans.RescaleType = slope, 0, "US"
    shared.PlaneOrientationSequence, shared.PixelValueTransformationSequence = [orient], [trans]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for zi in z:
        pos, fg = Dataset(), Dataset()
        pos.ImagePositionPatient = [0, 0, zi]
        fg.PlanePositionSequence = [pos]
        frames.append(fg)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = vol.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_single_frame_file_is_a_one_slice_exam(tmp_path: Path):
    src = get_testdata_file("MR_small.dcm")
    vol = load_volume(src)
    ds = pydicom.dcmread(src)
    assert vol.shape == (1, 64, 64) and vol.dtype == np.float32
    np.testing.assert_array_equal(vol[0], ds.pixel_array.astype(np.float32) * float(ds.get("RescaleSlope", 1))
                                  + float(ds.get("RescaleIntercept", 0)))
    shutil.copy(src, tmp_path / "no_suffix")  # recognised by its 'DICM' preamble, not its name
    np.testing.assert_array_equal(load_volume(tmp_path / "no_suffix"), vol)


def test_multi_frame_file_is_a_volume_in_slice_order(tmp_path: Path):
    vol = np.stack([np.full((6, 8), v, np.uint16) for v in (30, 10, 20)])  # stored out of order ...
    write_enhanced_mr(tmp_path / "e.dcm", vol, z=[6.0, 0.0, 3.0], slope=2.0)  # ... with their positions
    got = load_volume(tmp_path / "e.dcm")
    assert got.shape == (3, 6, 8)
    assert got[:, 0, 0].tolist() == [20, 40, 60]  # sorted along the normal, shared rescale slope applied


def test_compressed_without_decoder_refused_in_one_line():
    with pytest.raises(DataError) as e:
        load_volume(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    msg = str(e.value)
    assert "\n" not in msg and "MR_small_jpeg_ls_lossless.dcm" in msg
    assert "JPEG-LS" in msg and "1.2.840.10008.1.2.4.80" in msg and "pylibjpeg" in msg


def test_rle_compressed_file_is_decoded():
    vol = load_volume(get_testdata_file("MR_small_RLE.dcm"))
    np.testing.assert_array_equal(vol, load_volume(get_testdata_file("MR_small.dcm")))


def test_predict_on_dicom_files(ft_run: Path, tiny_set: Path, tmp_path: Path):
    exam = np.load(tiny_set / "valid" / "sagittal" / "0024.npy")
    write_enhanced_mr(tmp_path / "knee.dcm", exam[::-1], z=[float(-i) for i in range(len(exam))])
    shutil.copy(get_testdata_file("MR_small.dcm"), tmp_path / "one_slice.dcm")
    shutil.copy(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"), tmp_path / "jls.dcm")
    res = run_cli("predict", "--model", ft_run, tmp_path / "knee.dcm", tmp_path / "one_slice.dcm",
                  tmp_path / "jls.dcm", "--out", tmp_path / "out", "--no-overlays")
    assert res.returncode == 2 and "jls.dcm" in res.stderr and "JPEG-LS" in res.stderr
    rows = {r["case"]: float(r["probability"]) for r in
            csv.DictReader((tmp_path / "out" / "predictions.csv").read_text().splitlines())}
    assert set(rows) == {"knee", "one_slice"} and all(0 <= p <= 1 for p in rows.values())
    np.save(tmp_path / "knee.npy", exam)  # the enhanced file, reordered, is the same exam as the .npy
    assert predict(ft_run, [tmp_path / "knee.npy"], tmp_path / "ref", overlays=False) == 0  # `sbssl predict`'s call
    want = float(next(csv.DictReader((tmp_path / "ref" / "predictions.csv").read_text().splitlines()))["probability"])
    assert abs(rows["knee"] - want) < 1e-6


def test_not_dicom_with_dcm_suffix(tmp_path: Path):
    (tmp_path / "x.dcm").write_bytes(b"not a dicom file at all")
    with pytest.raises(DataError, match="x.dcm"):
        load_volume(tmp_path / "x.dcm")
