"""Reading one exam volume safely: .npy (never unpickled), NIfTI, a DICOM series folder or one DICOM file.

Every reader returns a float32 or integer array of shape (slices, H, W) or raises
DataError naming the file and the fault.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from sbssl.errors import DataError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom")
MAX_VOXELS = 2**28  # 1 GiB of float32; a knee exam is ~10M voxels, a damaged header can claim 10^15


def is_volume_path(path: Path) -> bool:
    """Files and folders that a generic layout treats as exams."""
    name = path.name.lower()
    if name.startswith("."):
        return False
    if path.is_dir():
        return True
    return name.endswith(".npy") or name.endswith(NIFTI_SUFFIXES) or name.endswith(DICOM_SUFFIXES)


def case_id(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".npy", *DICOM_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def check_volume(arr: np.ndarray, path: Path) -> np.ndarray:
    """The faults every format shares: dtype, rank, emptiness, non-finite values."""
    if arr.dtype.kind not in "uif" and arr.dtype != np.bool_:
        raise DataError(path, f"unsupported dtype {arr.dtype} (want integers or floats)")
    if arr.ndim != 3:
        raise DataError(path, f"wrong rank: shape {arr.shape}, want (slices, height, width)")
    if arr.shape[0] == 0:
        raise DataError(path, "zero slices")
    if arr.shape[1] < 2 or arr.shape[2] < 2:
        raise DataError(path, f"slices too small: shape {arr.shape}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise DataError(path, "contains NaN or infinite values")
    return arr


def load_npy(path: Path, mmap: bool = False) -> np.ndarray:
    """np.load with pickles refused and every failure turned into one DataError line."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                      else np.lib.format.read_array_header_2_0)(f)
            data_start = f.tell()
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except EOFError:
        raise DataError(path, "truncated .npy file (header cut short)") from None
    except (ValueError, OSError) as e:
        msg = _short(e)
        kind = "truncated .npy file" if "EOF" in msg else "not a valid .npy file"
        raise DataError(path, f"{kind} ({msg})") from None
    shape, _, dtype = header
    if dtype.hasobject:
        raise DataError(path, "holds Python objects (a pickle); refused, never unpickled")
    if math.prod(shape) > MAX_VOXELS:
        raise DataError(path, f"implausibly large volume {shape} in the .npy header")
    want = data_start + math.prod(shape) * dtype.itemsize
    size = path.stat().st_size
    if size < want:
        raise DataError(path, f"truncated .npy file ({size} of {want} bytes)")
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(path, f"truncated or unreadable .npy ({_short(e)})") from None
    return check_volume(arr if mmap else np.asarray(arr), path)


def load_nifti(path: Path) -> np.ndarray:
    """NIfTI volume; slices are taken along the last spatial axis."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        _check_nifti_size(img, Path(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except DataError:
        raise
    except Exception as e:  # nibabel raises many types for a broken file
        raise DataError(path, f"not a readable NIfTI file ({_short(e)})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 3:
        data = np.ascontiguousarray(np.moveaxis(data, -1, 0))
    return check_volume(data, Path(path))


def _check_nifti_size(img, path: Path) -> None:
    """Refuse a header whose volume is absurd or longer than the file, before anything is allocated."""
    shape, itemsize = img.header.get_data_shape(), img.header.get_data_dtype().itemsize
    voxels = math.prod(int(d) for d in shape)
    if voxels > MAX_VOXELS:
        raise DataError(path, f"implausibly large volume {tuple(shape)} in the NIfTI header")
    if not path.name.lower().endswith(".gz"):
        want = int(img.header.get_data_offset()) + voxels * itemsize
        size = path.stat().st_size
        if size < want:
            raise DataError(path, f"truncated NIfTI file ({size} of {want} bytes)")


def load_dicom_series(folder: Path) -> np.ndarray:
    """A folder of DICOM slices, ordered along the slice normal (or by InstanceNumber)."""
    import pydicom

    folder = Path(folder)
    slices = []
    for f in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            ds = pydicom.dcmread(f, force=False)
        except Exception:  # not DICOM: a stray file in the folder
            continue
        if "PixelData" not in ds:
            continue
        slices.append((f, ds))
    if not slices:
        raise DataError(folder, "no DICOM images in the series folder")
    slices.sort(key=lambda fd: _slice_position(fd[1]))
    images = []
    for f, ds in slices:
        img = dicom_pixels(ds, f)
        if img.ndim != 2:
            raise DataError(f, f"DICOM image of shape {img.shape}, want one 2-D slice per file")
        images.append(img)
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise DataError(folder, f"DICOM slices of different sizes {sorted(shapes)}")
    return check_volume(np.stack(images), folder)


def load_dicom_file(path: Path) -> np.ndarray:
    """One DICOM file as an exam: a single-frame image is a one-slice volume, a multi-frame (enhanced MR)
    image a whole one, its frames ordered along the slice normal when every frame says where it lies."""
    import pydicom

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as e:
        raise DataError(path, f"not a readable DICOM file ({_short(e)})") from None
    if "PixelData" not in ds:
        raise DataError(path, "DICOM file without pixel data (not an image)")
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    img = dicom_pixels(ds, path)
    if frames == 1 and img.ndim == 2:
        img = img[None]
    if img.ndim != 3 or img.shape[0] != frames:
        raise DataError(path, f"DICOM pixel data of shape {img.shape} for {frames} frame(s): not greyscale slices")
    order = _frame_order(ds, frames)
    return check_volume(np.ascontiguousarray(img[order]), path)


def dicom_pixels(ds, path: Path) -> np.ndarray:
    """Decoded, rescaled float32 pixels; a compressed transfer syntax without a decoder installed is refused in
    one line naming the syntax and what would decode it."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if int(getattr(ds, "SamplesPerPixel", 1) or 1) != 1:
        raise DataError(path, f"colour DICOM ({ds.SamplesPerPixel} samples per pixel); want greyscale MR")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = ds.pixel_array.astype(np.float32)
    except Exception as e:
        msg = str(e)
        if _is_compressed(syntax) and ("missing" in msg or "plugin" in msg or "decod" in msg):
            needs = "; ".join(ln.strip(" \t-") for ln in msg.splitlines()[1:] if ln.strip()) or _short(e)
            raise DataError(path, f"compressed transfer syntax '{syntax.name}' ({syntax}) cannot be decoded: "
                                  f"install one of: {needs}") from None
        raise DataError(path, f"unreadable DICOM pixel data ({_short(e)})") from None
    slope, intercept = _rescale(ds)
    return img * slope + intercept


def _is_compressed(syntax) -> bool:
    """A damaged header may hold a UID that is no transfer syntax at all."""
    try:
        return syntax is not None and bool(syntax.is_compressed)
    except (ValueError, AttributeError):
        return False


def _rescale(ds) -> tuple[float, float]:
    """Rescale slope and intercept: top level, or shared by every frame of an enhanced image."""
    try:
        t = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
        return _float_tag(t, "RescaleSlope", 1.0), _float_tag(t, "RescaleIntercept", 0.0)
    except (AttributeError, IndexError, KeyError):
        return _float_tag(ds, "RescaleSlope", 1.0), _float_tag(ds, "RescaleIntercept", 0.0)


def _frame_order(ds, frames: int) -> np.ndarray:
    """Frame indices sorted by position along the slice normal; stored order when positions are missing."""
    try:
        o = np.array(ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient, float)
        per = ds.PerFrameFunctionalGroupsSequence
        pos = np.array([per[i].PlanePositionSequence[0].ImagePositionPatient for i in range(frames)], float)
        return np.argsort(pos @ np.cross(o[:3], o[3:]), kind="stable")
    except Exception:  # no enhanced geometry: keep the stored order
        return np.arange(frames)


def load_volume(path: Path) -> np.ndarray:
    """Dispatch on the path: folder = DICOM series, .nii[.gz] = NIfTI, .npy = NumPy, .dcm = one DICOM file."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file not found")
    if path.is_dir():
        return load_dicom_series(path)
    if path.name.lower().endswith(NIFTI_SUFFIXES):
        return load_nifti(path)
    if path.name.lower().endswith(".npy"):
        return load_npy(path)
    if path.name.lower().endswith(DICOM_SUFFIXES) or _has_dicom_preamble(path):
        return load_dicom_file(path)
    raise DataError(path, "unknown volume format (want .npy, .nii, .nii.gz, .dcm or a DICOM folder)")


def _has_dicom_preamble(path: Path) -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble, whatever their name."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _slice_position(ds) -> float:
    try:
        pos = np.array(ds.ImagePositionPatient, float)
        o = np.array(ds.ImageOrientationPatient, float)
        return float(pos @ np.cross(o[:3], o[3:]))
    except Exception:
        try:
            return float(ds.InstanceNumber)
        except Exception:
            return 0.0


def _float_tag(ds, name: str, default: float) -> float:
    try:
        v = float(getattr(ds, name, default))
        return v if np.isfinite(v) else default
    except (TypeError, ValueError):
        return default


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg[:160]
