"""GTSRB: 43 classes of German traffic signs, every whole frame resized to 32x32 RGB.

The cache is one npz, `<root>/gtsrb/gtsrb_32x32_rgb.npz`, holding x_train uint8 [N, 32, 32, 3],
y_train, track_train (per-class track id of each training image), x_test, y_test. If it is missing,
it is built from the three official zip archives of PPM images (needs Pillow).
"""

from __future__ import annotations

import csv
import io
import logging
import re
import zipfile
import zlib
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from ..errors import DatasetError
from .cache import DataFolder, RemoteFile, as_folder, atomic_write
from .dataset import Dataset, DatasetInfo

CLASS_NAMES = (
    "Speed limit (20km/h)", "Speed limit (30km/h)", "Speed limit (50km/h)",
    "Speed limit (60km/h)", "Speed limit (70km/h)", "Speed limit (80km/h)",
    "End of speed limit (80km/h)", "Speed limit (100km/h)", "Speed limit (120km/h)",
    "No passing", "No passing for vehicles over 3.5 metric tons",
    "Right-of-way at the next intersection", "Priority road", "Yield", "Stop", "No vehicles",
    "Vehicles over 3.5 metric tons prohibited", "No entry", "General caution",
    "Dangerous curve to the left", "Dangerous curve to the right", "Double curve", "Bumpy road",
    "Slippery road", "Road narrows on the right", "Road work", "Traffic signals", "Pedestrians",
    "Children crossing", "Bicycles crossing", "Beware of ice/snow", "Wild animals crossing",
    "End of all speed and passing limits", "Turn right ahead", "Turn left ahead", "Ahead only",
    "Go straight or right", "Go straight or left", "Keep right", "Keep left",
    "Roundabout mandatory", "End of no passing",
    "End of no passing by vehicles over 3.5 metric tons",
)  # fmt: skip
INFO = DatasetInfo("gtsrb", 43, (3, 32, 32), CLASS_NAMES, (0.2902, 0.2645, 0.2741), (0.2599, 0.2508, 0.2573))

NPZ = "gtsrb_32x32_rgb.npz"
BASE_URL = "https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/"
TRAIN_ZIP = "GTSRB_Final_Training_Images.zip"
TEST_ZIP = "GTSRB_Final_Test_Images.zip"
GT_ZIP = "GTSRB_Final_Test_GT.zip"
# Module-level so tests can swap in the digests of generated archives.
MD5 = {
    TRAIN_ZIP: "513f3c79a4c5141765e10e952eaa2478",
    TEST_ZIP: "c7e4e6327067d32654124b0fe9e82185",
    GT_ZIP: "fe31e9c9270bbcd7b84b7f21a9d9d9e5",
}
SIZE = 32
# Track ids restart at 0 in every class; group id = class * TRACK_STRIDE + track is unique per sign.
TRACK_STRIDE = 1000

_KEYS = ("x_train", "y_train", "track_train", "x_test", "y_test")
_TRAIN_PPM = re.compile(r"(?:^|/)Final_Training/Images/(\d{5})/(\d{5})_(\d{5})\.ppm$")
_TEST_PPM = re.compile(r"(?:^|/)Final_Test/Images/(\d{5}\.ppm)$")

log = logging.getLogger(__name__)


def _pillow() -> ModuleType:
    try:
        from PIL import Image
    except ImportError:
        raise DatasetError(
            f"building the GTSRB cache ({NPZ}) from the official archives needs Pillow: "
            f"pip install pillow (or put a ready {NPZ} in the gtsrb folder of the data root)"
        ) from None
    return Image


def _decode(image_module: ModuleType, data: bytes, name: str) -> np.ndarray:
    try:
        with image_module.open(io.BytesIO(data)) as im:
            im = im.convert("RGB").resize((SIZE, SIZE), image_module.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as e:  # Pillow raises these for bad image data
        raise DatasetError(f"cannot decode {name}: {e}") from None


def build_npz(train_zip: Path, test_zip: Path, gt_zip: Path, out: Path) -> None:
    """Build the npz cache from the official archives; `out` appears only when complete."""
    image = _pillow()
    log.info("building %s from the official GTSRB archives (about a minute)", out)
    try:
        with zipfile.ZipFile(train_zip) as z:
            found = sorted(
                (int(m[1]), int(m[2]), info.filename)
                for info in z.infolist()
                if (m := _TRAIN_PPM.search(info.filename))
            )
            if not found:
                raise DatasetError(f"{train_zip} holds no Final_Training/Images/*/*.ppm files")
            x_train = np.stack([_decode(image, z.read(name), f"{train_zip}:{name}") for _, _, name in found])
        y_train = np.array([c for c, _, _ in found], dtype=np.int64)
        track_train = np.array([t for _, t, _ in found], dtype=np.int64)

        with zipfile.ZipFile(gt_zip) as z:
            gt_names = [n for n in z.namelist() if n.endswith("GT-final_test.csv")]
            if not gt_names:
                raise DatasetError(f"{gt_zip} holds no GT-final_test.csv")
            rows = csv.DictReader(io.StringIO(z.read(gt_names[0]).decode("utf-8-sig")), delimiter=";")
            truth = {row["Filename"]: int(row["ClassId"]) for row in rows}
        with zipfile.ZipFile(test_zip) as z:
            tests = sorted((m[1], info.filename) for info in z.infolist() if (m := _TEST_PPM.search(info.filename)))
            if not tests:
                raise DatasetError(f"{test_zip} holds no Final_Test/Images/*.ppm files")
            unlabelled = [f for f, _ in tests if f not in truth]
            if unlabelled:
                raise DatasetError(
                    f"{gt_zip}: GT-final_test.csv has no class for {len(unlabelled)} test images "
                    f"(first: {unlabelled[0]})"
                )
            x_test = np.stack([_decode(image, z.read(name), f"{test_zip}:{name}") for _, name in tests])
        y_test = np.array([truth[f] for f, _ in tests], dtype=np.int64)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, KeyError, ValueError) as e:
        raise DatasetError(
            f"cannot read the GTSRB archives in {train_zip.parent} ({type(e).__name__}: {e}). "
            f"Delete the damaged archive to download it again."
        ) from None

    arrays = dict(x_train=x_train, y_train=y_train, track_train=track_train, x_test=x_test, y_test=y_test)
    _validate(arrays, out)
    with atomic_write(out) as f:
        np.savez_compressed(f, **arrays)


def _validate(arrays: dict[str, np.ndarray], path: Path) -> None:
    fix = f"Delete {path} to rebuild it (or replace it with a good copy)."
    for keys in (("x_train", "y_train", "track_train"), ("x_test", "y_test")):
        x = arrays[keys[0]]
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (SIZE, SIZE, 3):
            raise DatasetError(f"{path}: {keys[0]} is {x.dtype} {x.shape}, expected uint8 [N, 32, 32, 3]. {fix}")
        for key in keys[1:]:
            a = arrays[key]
            if a.dtype.kind not in "iu" or a.shape != (len(x),):
                raise DatasetError(f"{path}: {key} is {a.dtype} {a.shape}, expected integers [{len(x)}]. {fix}")
        y = arrays[keys[1]]
        if y.size and (y.min() < 0 or y.max() >= INFO.num_classes):
            raise DatasetError(f"{path}: {keys[1]} has labels outside 0..42. {fix}")
    track = arrays["track_train"]
    if track.size and (track.min() < 0 or track.max() >= TRACK_STRIDE):
        raise DatasetError(f"{path}: track_train has ids outside 0..{TRACK_STRIDE - 1}. {fix}")


def read_npz(path: Path, split: str) -> dict[str, np.ndarray]:
    """The arrays of the npz cache (all of them validated, but only `split` decompressed)."""
    keys = ("x_train", "y_train", "track_train") if split == "train" else ("x_test", "y_test")
    try:
        with np.load(path, allow_pickle=False) as z:
            absent = [k for k in _KEYS if k not in z.files]
            if absent:
                raise DatasetError(
                    f"{path} lacks the arrays {', '.join(absent)}. Delete it to rebuild it "
                    f"(or replace it with a good copy)."
                )
            arrays = {k: z[k] for k in keys}
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, ValueError) as e:
        raise DatasetError(
            f"{path} cannot be read ({type(e).__name__}: {e}): it is corrupt or truncated. "
            f"Delete it to rebuild it (or replace it with a good copy)."
        ) from None
    # Placeholders of the right length for the other split, so one validator covers both.
    if split == "train":
        arrays.update(x_test=np.zeros((0, SIZE, SIZE, 3), np.uint8), y_test=np.zeros(0, np.int64))
    else:
        arrays.update(
            x_train=np.zeros((0, SIZE, SIZE, 3), np.uint8),
            y_train=np.zeros(0, np.int64),
            track_train=np.zeros(0, np.int64),
        )
    _validate(arrays, path)
    return arrays


def load_gtsrb(split: str, root: DataFolder | Path, *, download: bool = True, writers: bool = False) -> Dataset:
    """GTSRB; for the training split `groups` holds a physical-sign id (class * 1000 + track)."""
    folder = as_folder(root)
    npz = folder.root / "gtsrb" / NPZ
    if not npz.is_file():
        archives = [
            RemoteFile(f"gtsrb/{name}", (BASE_URL + name,), MD5[name]) for name in (TRAIN_ZIP, TEST_ZIP, GT_ZIP)
        ]
        if download and not all((folder.root / a.relpath).is_file() for a in archives):
            _pillow()  # fail before a 300 MB download that could not be used
        hint = f"Alternatively put the ready cache {NPZ} in {npz.parent}; it is built from these archives."
        paths = folder.fetch_all(archives, dataset="gtsrb", download=download, hint=hint)
        build_npz(*paths, npz)

    arrays = read_npz(npz, split)
    if split == "train":
        x, y = arrays["x_train"], arrays["y_train"]
        groups = torch.from_numpy(y.astype(np.int64) * TRACK_STRIDE + arrays["track_train"].astype(np.int64))
    else:
        x, y, groups = arrays["x_test"], arrays["y_test"], None
    images = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    return Dataset(INFO, images, torch.from_numpy(y.astype(np.int64)), groups)
