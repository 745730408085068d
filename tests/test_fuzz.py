"""Property-based fuzzing of everything that parses user input: volume readers (.npy, NIfTI,
DICOM), the label CSV parser and the config parser.

The property is always the same: a malformed input is either read into something valid
or refused with the one-line user error (DataError / ConfigError -> `error: ...`, exit
code 2); never another exception, never a hang (hypothesis' deadline per example).
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sbssl.cli import main
from sbssl.config import load_config
from sbssl.data.layout import list_exams, read_labels
from sbssl.data.volume_io import load_volume
from sbssl.errors import ConfigError, DataError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
FUZZ = settings(max_examples=60, deadline=5000, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


def _valid_volume(arr: np.ndarray) -> None:
    assert arr.ndim == 3 and min(arr.shape) >= 1 and arr.shape[1] >= 2 and arr.shape[2] >= 2
    if arr.dtype.kind == "f":
        assert np.isfinite(arr).all()


def _read_or_refuse(path: Path) -> None:
    """The property: a valid volume, or DataError naming the file (any other exception fails the test)."""
    try:
        arr = load_volume(path)
    except DataError as e:
        assert str(path) in str(e) or str(path.parent) in str(e), e
        assert "\n" not in str(e)
        return
    _valid_volume(arr)


@st.composite
def mutations(draw, blob: bytes) -> bytes:
    """A valid file damaged the way files are: truncated, bytes overwritten, junk appended."""
    data = bytearray(blob)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["truncate", "overwrite", "header", "append"]))
        if kind == "truncate" and data:
            del data[draw(st.integers(0, len(data) - 1)):]
        elif kind == "overwrite" and data:
            at = draw(st.integers(0, len(data) - 1))
            patch = draw(st.binary(min_size=1, max_size=8))
            data[at: at + len(patch)] = patch
        elif kind == "header":  # where the parsers look first
            at = draw(st.integers(0, min(len(data), 400)))
            patch = draw(st.binary(min_size=1, max_size=16))
            data[at: at + len(patch)] = patch
        else:
            data += draw(st.binary(max_size=64))
    return bytes(data)


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


NPY = _npy_bytes(np.arange(3 * 6 * 5, dtype=np.float32).reshape(3, 6, 5))


def _write(tmp: str, name: str, blob: bytes) -> Path:
    path = Path(tmp) / name
    path.write_bytes(blob)
    return path


@FUZZ
@given(st.one_of(mutations(NPY), st.binary(max_size=300)))
def test_npy_reader_survives_damage(blob: bytes):
    with tempfile.TemporaryDirectory() as tmp:
        _read_or_refuse(_write(tmp, "0001.npy", blob))


@FUZZ
@given(dtype=st.sampled_from(["<f4", "<f8", "<i2", "|u1", ">u2", "<c8", "|b1", "<U3", "|V4", "|O"]),
       shape=st.lists(st.integers(0, 2**40), max_size=5))
def test_npy_reader_header_claims(dtype: str, shape: list[int]):
    """Headers that claim absurd shapes or odd dtypes are refused before anything is allocated."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": tuple(shape)}).encode()
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    blob = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\0" * 128
    with tempfile.TemporaryDirectory() as tmp:
        _read_or_refuse(_write(tmp, "0001.npy", blob))


def _nifti_bytes() -> bytes:
    import nibabel as nib

    img = nib.Nifti1Image(np.arange(4 * 5 * 3, dtype=np.int16).reshape(4, 5, 3), np.eye(4))
    return img.to_bytes()


NII = _nifti_bytes()


@FUZZ
@given(mutations(NII), st.booleans())
def test_nifti_reader_survives_damage(blob: bytes, gz: bool):
    import gzip

    with tempfile.TemporaryDirectory() as tmp:
        name = "knee.nii.gz" if gz else "knee.nii"
        _read_or_refuse(_write(tmp, name, gzip.compress(blob) if gz else blob))


def _dicom_bytes(**tags) -> bytes:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Modality, ds.Rows, ds.Columns = "MR", 6, 5
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
    ds.PixelData = np.arange(30, dtype=np.uint16).tobytes()
    for k, v in tags.items():
        if isinstance(v, tuple):  # (tag, VR, value): a private or unusual element
            ds.add_new(*v)
        else:
            setattr(ds, k, v)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


DCM = _dicom_bytes()
_text = st.text(alphabet=st.characters(codec="ascii", exclude_categories=["Cc"]), max_size=20)
odd_tags = st.fixed_dictionaries({}, optional={
    "Rows": st.integers(0, 65535), "Columns": st.integers(0, 65535),
    "BitsAllocated": st.sampled_from([1, 8, 12, 16, 32, 64]), "PixelRepresentation": st.integers(0, 1),
    "SamplesPerPixel": st.integers(1, 4), "PhotometricInterpretation": _text,
    "NumberOfFrames": st.integers(0, 5), "RescaleSlope": st.sampled_from(["1", "-0", "1e308", "nan", "2.5"]),
    "RescaleIntercept": st.sampled_from(["0", "-1024", "1e308"]),
    "ImagePositionPatient": st.lists(st.sampled_from(["0", "1.5", "-3", "1e30"]), max_size=4),
    "ImageOrientationPatient": st.lists(st.sampled_from(["0", "1", "0.5", "-1"]), max_size=7),
    "InstanceNumber": st.integers(-2**31, 2**31 - 1),
    "PixelData": st.binary(max_size=128),
    "Private": st.tuples(st.just(0x00091010), st.just("OB"), st.binary(max_size=64)),
})


@FUZZ
@given(st.lists(st.one_of(odd_tags.map(lambda t: _dicom_bytes(**t)), mutations(DCM), st.binary(max_size=200)),
                min_size=1, max_size=3))
def test_dicom_series_with_odd_tags_or_damage(files: list[bytes]):
    with tempfile.TemporaryDirectory() as tmp:
        for i, blob in enumerate(files):
            _write(tmp, f"s{i:03d}.dcm", blob)
        _read_or_refuse(Path(tmp))


_cell = st.one_of(st.sampled_from(["0", "1", "0001", "case", "label", "", " 1 ", "2", "-1", "1.0", "²", "٣"]),
                  st.text(max_size=6))


@FUZZ
@given(st.one_of(st.lists(st.lists(_cell, max_size=3), max_size=6).map(
    lambda rows: "\n".join(",".join(r) for r in rows)), st.text(max_size=80)),
    st.sampled_from(["utf-8", "latin-1", "utf-16"]))
def test_label_csv_parser(text: str, encoding: str):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train-acl.csv"
        try:
            path.write_bytes(text.encode(encoding))
        except UnicodeEncodeError:
            path.write_bytes(text.encode("utf-8"))
        try:
            labels = read_labels(path)
        except DataError as e:
            assert str(e).startswith(str(path)) and "\n" not in str(e)
            return
        assert all(v[1] in (0, 1) for v in labels.values())


@FUZZ
@given(st.lists(st.lists(_cell, min_size=2, max_size=2), min_size=1, max_size=5))
def test_layout_with_fuzzed_labels(rows: list[list[str]]):
    """The layout reader pairs CSV rows with volumes or names the row that has none."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "train" / "sagittal").mkdir(parents=True)
        np.save(root / "train" / "sagittal" / "0001.npy", np.zeros((2, 4, 4), np.uint8))
        (root / "train-acl.csv").write_text("\n".join(",".join(r) for r in rows))
        try:
            recs = list_exams(root, "train", "sagittal", "acl")
        except DataError as e:
            assert "\n" not in str(e)
            return
        assert all(r.path.exists() and r.label in (0, 1) for r in recs)


_keys = st.sampled_from(["train.epochs", "train.lr", "data.img_size", "model.patch_size", "mask.type",
                         "mask.max_ratio", "finetune.slices", "trainer.precision", "model.skip_blocks",
                         "augment.crop_scale", "nonsense.key", "train", ""])
_values = st.one_of(st.sampled_from(["1", "0", "-3", "1e-3", "nan", "inf", "[1,2]", "{a: 1}", "null", "'x'",
                                     "[", "}", "${oops}", "${train.lr}", "!!python/object:os.system", "true"]),
                    st.text(max_size=12))


@FUZZ
@example(["train.lr=${oops}"], None)
@example(["train.epochs=${train.lr}"], None)
@example(["train.epochs=["], "train: {lr: [}")
@given(st.lists(st.one_of(st.tuples(_keys, _values).map("=".join), st.text(max_size=15)), max_size=4),
       st.one_of(st.none(), st.text(max_size=120),
                 st.lists(st.tuples(_keys, _values), max_size=4).map(
                     lambda kv: "\n".join(f"{k.replace('.', ': {')}: {v}" + "}" * k.count(".") for k, v in kv))))
def test_config_parser(overrides: list[str], yaml_text: str | None):
    with tempfile.TemporaryDirectory() as tmp:
        file = None
        if yaml_text is not None:
            file = str(Path(tmp) / "cfg.yaml")
            Path(file).write_text(yaml_text)
        try:
            cfg = load_config(file, overrides)
        except ConfigError as e:
            assert "\n" not in str(e)
            return
        assert cfg.train.epochs >= 1 and cfg.data.img_size % cfg.model.patch_size == 0


@settings(max_examples=12, deadline=10000, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture],
          derandomize=True)
@given(st.one_of(mutations(NPY), st.binary(max_size=200)), st.sampled_from(["0000", "0001"]))
def test_cli_check_on_fuzzed_volume(capsys: pytest.CaptureFixture, blob: bytes, bad: str):
    """Through the CLI: exit 0, or exit 2 with one `error:` line per fault and no traceback."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "train" / "sagittal").mkdir(parents=True)
        for case in ("0000", "0001"):
            arr = np.full((2, 8, 8), int(case) + 1, np.uint8)
            np.save(root / "train" / "sagittal" / f"{case}.npy", arr)
        (root / "train" / "sagittal" / f"{bad}.npy").write_bytes(blob)
        (root / "train-acl.csv").write_text("0000,0\n0001,1\n")
        capsys.readouterr()
        try:
            code = main(["check", "--data", str(root)])
        except SystemExit as e:
            code = e.code
        err = capsys.readouterr().err
        assert code in (0, 2), (code, err)
        assert "Traceback" not in err
        if code == 2:
            lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
            assert lines and all(str(root) in ln for ln in lines), err


def _encoder_bytes() -> bytes:
    import torch
    from safetensors.torch import save

    meta = {"format": "sbssl-gmml-encoder", "name": "vit_tiny", "patch_size": "8", "in_chans": "1",
            "img_size": "32", "mean": "0.3", "std": "0.2"}
    return save({"pos_embed": torch.zeros(1, 17, 4), "cls_token": torch.zeros(1, 1, 4)}, metadata=meta)


ENC = _encoder_bytes()


@FUZZ
@given(st.one_of(mutations(ENC), st.binary(max_size=200)))
def test_encoder_file_survives_damage(blob: bytes):
    """An encoder handed to `init=` is safetensors only: damage is one SbsslError line, never a pickle load."""
    from sbssl.errors import SbsslError
    from sbssl.models.encoder_file import encoder_init

    with tempfile.TemporaryDirectory() as tmp:
        path = _write(tmp, "encoder.safetensors", blob)
        try:
            init = encoder_init(str(path))
        except SbsslError as e:
            assert "\n" not in str(e) and str(path) in str(e)
            return
        assert init.meta["format"] == "sbssl-gmml-encoder" and isinstance(init.weights, dict)


def test_pickled_pt_as_encoder_is_refused_unexecuted(tmp_path: Path):
    import torch

    from sbssl.errors import SbsslError
    from sbssl.models.encoder_file import encoder_init

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"state_dict": Evil()}, tmp_path / "encoder.pt")
    with pytest.raises(SbsslError, match="encoder.pt: not a readable weights file"):  # read as ImageNet weights
        encoder_init(str(tmp_path / "encoder.pt"))
    assert not marker.exists()
    torch.save({"state_dict": Evil()}, tmp_path / "encoder.safetensors")  # a pickle under another name
    with pytest.raises(SbsslError, match="encoder.safetensors: not a readable"):
        encoder_init(str(tmp_path / "encoder.safetensors"))
    assert not marker.exists()
