"""The paper-scale tasks, read from local dataset folders as ``TaskData``.

``load_imagenet`` reads an ImageFolder layout (``train/`` and ``val/``, one
folder per class); ``load_segmentation`` reads Cityscapes (``leftImg8bit/`` +
``gtFine/``) or ADE20K (``ADEChallengeData2016/``), mapping their label ids to
train ids through a 256-entry table (``CITYSCAPES_LABEL_TO_TRAIN``,
``ADE20K_LABEL_TO_TRAIN``; 255 = ignore). In every task the validation split is
carved from the training data with a fixed seed, and the test split is the
dataset's official validation set. Segmentation is evaluated at the native
resolution; ``pad_collate`` batches mixed sizes. A missing or malformed folder
raises a one-line ``FileNotFoundError`` naming the ``params.yaml`` setting to fix.

Every image is decoded to RGB uint8 ``(3, H, W)`` whatever its mode (RGB,
grayscale, CMYK JPEG, palette or RGBA PNG: ``decode_rgb``), and the geometric
transforms (resize, crop, pad, flip) run on uint8 tensors; only the final
crop is converted to float32 and normalized with the ImageNet mean/std, so a
loader worker never rescales a float copy of a full-size image.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .taskdata import IGNORE_INDEX, TaskData, hash_array

__all__ = ["load_imagenet", "load_segmentation", "ImageFiles", "SegmentationFiles", "pad_collate",
           "decode_rgb", "imagenet_transforms", "CITYSCAPES_LABEL_TO_TRAIN", "ADE20K_LABEL_TO_TRAIN"]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_TV_IO_DEPRECATION = "The image decoding and encoding capabilities of TorchVision are deprecated"


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


def _pil_rgb(path: str) -> Tensor:
    """``path`` decoded by PIL, converted to RGB: uint8 ``(3, H, W)``."""
    from PIL import Image
    from torchvision.transforms.v2.functional import pil_to_tensor

    with Image.open(path) as im:
        return pil_to_tensor(im.convert("RGB"))


def decode_rgb(path: str) -> Tensor:
    """An image file as RGB uint8 ``(3, H, W)``, whatever its mode (possibly a channels-last view).

    JPEG (CMYK included), PNG (grayscale, palette, RGBA: alpha dropped), GIF
    (first frame) and WebP, recognized by content rather than extension, go
    through ``torchvision.io.decode_image(mode=RGB)``, which gave the same
    pixels as PIL's ``convert("RGB")`` on every such mode and decoded a
    500x375 RGB JPEG about 25% faster (1.4 ms vs 1.9 ms on one CPU thread);
    16-bit PNGs are scaled to 8 bits. Other formats (BMP, TIFF, PPM...) go
    through PIL's ``convert("RGB")``, as does everything once torchvision
    drops these decoders (deprecated in 0.29 for TorchCodec; the warning that
    every call would raise is silenced here).
    """
    from torchvision.transforms.v2.functional import to_dtype

    try:
        from torchvision.io import ImageReadMode, decode_image, read_file
    except ImportError:  # a torchvision without its (deprecated) image decoders
        return _pil_rgb(path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_TV_IO_DEPRECATION, category=DeprecationWarning)
            x = decode_image(read_file(path), mode=ImageReadMode.RGB)
    except RuntimeError:  # a format torchvision.io does not decode, or no image extension
        return _pil_rgb(path)
    if x.dim() == 4:  # an animated GIF: its first frame, as PIL reads it
        x = x[0]
    return x if x.dtype == torch.uint8 else to_dtype(x, torch.uint8, scale=True)


def _files_digest(paths: Sequence[str], *extra: np.ndarray) -> str:
    """sha256 of file names relative to their common folder, and of ``extra`` arrays.

    Names, not file contents (reading 1.28 M images to key a run would cost an
    epoch); relative, so the same dataset mounted elsewhere keeps its digest.
    """
    paths = [os.fspath(p) for p in paths]
    # the common folder of the first and last names in sort order is every name's (cheap for 1.28 M)
    root = (os.path.commonpath([min(paths), max(paths)]) if len(paths) > 1
            else os.path.dirname(paths[0]) if paths else "")
    cut = len(root)
    h = hashlib.sha256()
    for p in paths:
        h.update(p[cut:].lstrip(os.sep).encode() + b"\0")
    for i, array in enumerate(extra):
        hash_array(h, array, f"extra{i}")
    return h.hexdigest()


class ImageFiles(Dataset):
    """``(path, label)`` samples decoded to RGB uint8 (``decode_rgb``), then ``transform``-ed.

    The paths live in one numpy bytes array and the labels in an int64 array,
    not in a list of Python objects, so forked DataLoader workers share them
    without copy-on-write of reference counts (1.28 M ImageNet paths would
    otherwise be copied into every worker). ``samples`` gives them back as a
    list of ``(path, label)``.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable[[Tensor], Tensor]):
        samples = list(samples)
        self._paths = np.array([os.fsencode(p) for p, _ in samples], dtype=np.bytes_)
        self._labels = np.array([label for _, label in samples], dtype=np.int64)
        self.transform = transform

    @property
    def samples(self) -> list[tuple[str, int]]:
        return [(os.fsdecode(p), int(label)) for p, label in zip(self._paths, self._labels)]

    def __len__(self) -> int:
        return len(self._labels)

    def content_digest(self) -> str:
        """The relative file names and labels (``_files_digest``; cached)."""
        if getattr(self, "_digest", None) is None:
            self._digest = _files_digest([os.fsdecode(p) for p in self._paths], self._labels)
        return self._digest

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        image = decode_rgb(os.fsdecode(self._paths[i]))
        return self.transform(image).contiguous(), torch.tensor(int(self._labels[i]), dtype=torch.int64)


def imagenet_transforms(input_size: int = 224, resize_size: int | None = None) -> tuple[Callable, Callable]:
    """``(train, eval)`` transforms from an RGB uint8 ``(3, H, W)`` image to a normalized float32 one.

    Train: ``RandomResizedCrop(input_size)`` (default scale/ratio) + horizontal
    flip (p=0.5); eval: ``Resize(resize_size)`` (shorter side) + ``CenterCrop``.
    Both resize with antialiasing on the uint8 tensor, and only then convert
    (``ToDtype(float32, scale=True)``) and normalize with ImageNet mean/std.
    ``resize_size`` None is ``round(input_size * 256 / 224)`` (256 at 224).
    Random draws come from torch's global RNG (seeded per worker by the DataLoader).
    """
    from torchvision.transforms import v2

    resize_size = round(input_size * 256 / 224) if resize_size is None else resize_size
    if resize_size < input_size:
        raise ValueError(f"resize_size must be >= input_size ({input_size}), got {resize_size}")
    to_float = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    train = v2.Compose([v2.RandomResizedCrop(input_size, antialias=True), v2.RandomHorizontalFlip(), *to_float])
    evaluate = v2.Compose([v2.Resize(resize_size, antialias=True), v2.CenterCrop(input_size), *to_float])
    return train, evaluate


def load_imagenet(folder: str | Path, *, val_size: int = 10000, seed: int = 0, input_size: int = 224,
                  resize_size: int | None = None, param: str = "data.imagenet") -> TaskData:
    """ImageNet from ``folder/train`` and ``folder/val`` (ImageFolder layout: one folder per class).

    val = a seeded subset of ``val_size`` training images (disjoint from train,
    eval transforms); test = ImageNet's ``val/``. Train: RandomResizedCrop +
    horizontal flip; eval: resize the shorter side to ``resize_size`` (None:
    ``round(input_size*256/224)``, the classic rule; torchvision's
    IMAGENET1K_V2 weights were evaluated at 232) + centre crop; both run on
    uint8 and end normalized with ImageNet mean/std (``imagenet_transforms``).
    ``param`` names the setting in error messages.
    """
    from torchvision.datasets import ImageFolder

    folder = Path(folder)
    what = "an ImageNet folder with train/ and val/ (ImageFolder layout)"
    if not folder.is_dir():
        raise FileNotFoundError(f"{param}: folder '{folder}' does not exist; set {param} in params.yaml to {what}")
    train_tf, eval_tf = imagenet_transforms(input_size, resize_size)
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


def _normalize(x: Tensor) -> Tensor:
    """RGB uint8 ``(3, H, W)`` -> contiguous float32 ``(x / 255 - mean) / std`` with the ImageNet mean/std."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x.contiguous().float() / 255.0 - mean) / std


class SegmentationFiles(Dataset):
    """(image, label-map) file pairs with a joint transform.

    Samples are a normalized float32 image ``(3, H, W)`` and an int64 train-id
    mask ``(H, W)``: label ids are mapped through ``lut`` (256 entries, 255 =
    ignore; ids above 255 count as 255). ``crop_size`` None: evaluation at the
    native resolution, normalization only (batches of different sizes are
    padded by ``collate_fn``). Otherwise training: a random scale uniform in
    ``scale`` (bilinear for the image, antialiased when shrinking; nearest for
    the mask), padding bottom/right to at least the crop (image with the mean
    colour, i.e. 0 after normalization; mask with 255), a uniformly random
    ``crop_size`` crop, and a horizontal flip with p=0.5; torch's global RNG
    (seeded per worker by the DataLoader). Scale and crop run on the uint8
    image and raw-id mask; only the crop is normalized, padded and mapped.
    """

    collate_fn = staticmethod(pad_collate)

    def __init__(self, pairs: Sequence[tuple[str, str]], lut: np.ndarray, *, crop_size: int | None,
                 scale: tuple[float, float] = (0.5, 2.0)):
        self.pairs, self.lut, self.crop_size, self.scale = list(pairs), lut, crop_size, scale

    def __len__(self) -> int:
        return len(self.pairs)

    def content_digest(self) -> str:
        """The relative image and label file names, the label map and the crop (cached)."""
        if getattr(self, "_digest", None) is None:
            crop = np.array([-1 if self.crop_size is None else self.crop_size, *self.scale], dtype=np.float64)
            self._digest = _files_digest([p for pair in self.pairs for p in pair], np.asarray(self.lut), crop)
        return self._digest

    def _read(self, i: int) -> tuple[Tensor, Tensor]:
        """RGB uint8 image ``(3, H, W)`` and raw label ids uint8 ``(H, W)`` (not yet mapped)."""
        from PIL import Image

        img_path, label_path = self.pairs[i]
        with Image.open(label_path) as lm:
            ids = np.array(lm)
        if ids.ndim == 3:  # an RGB-saved label map: the id is in every channel
            ids = np.ascontiguousarray(ids[..., 0])
        if ids.dtype != np.uint8:  # 16/32-bit or bilevel label maps
            ids = np.clip(ids.astype(np.int64), 0, 255).astype(np.uint8)
        return decode_rgb(img_path), torch.from_numpy(ids)

    def _train_ids(self, ids: Tensor) -> Tensor:
        """Raw uint8 label ids -> int64 train ids through ``lut``."""
        return torch.from_numpy(self.lut[ids.numpy()].astype(np.int64))

    def _augment(self, x: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
        from torchvision.transforms.v2.functional import InterpolationMode, resize

        crop = self.crop_size
        s = float(torch.empty(()).uniform_(*self.scale))
        h, w = max(1, round(x.shape[-2] * s)), max(1, round(x.shape[-1] * s))
        x = resize(x, [h, w], interpolation=InterpolationMode.BILINEAR, antialias=s < 1)
        ids = F.interpolate(ids[None, None], size=(h, w), mode="nearest")[0, 0]
        # the crop window of the image padded bottom/right to at least crop x crop:
        # slice the real pixels in it, then pad what falls outside
        top = int(torch.randint(0, max(h, crop) - crop + 1, ()))
        left = int(torch.randint(0, max(w, crop) - crop + 1, ()))
        x, ids = x[:, top:top + crop, left:left + crop], ids[top:top + crop, left:left + crop]
        pad = (0, crop - x.shape[-1], 0, crop - x.shape[-2])
        x = F.pad(_normalize(x), pad, value=0.0)
        m = F.pad(self._train_ids(ids), pad, value=IGNORE_INDEX)
        if bool(torch.rand(()) < 0.5):
            x, m = x.flip(-1), m.flip(-1)
        return x.contiguous(), m.contiguous()

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x, ids = self._read(i)
        if self.crop_size:
            return self._augment(x, ids)
        return _normalize(x), self._train_ids(ids)


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

