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
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .taskdata import IGNORE_INDEX, TaskData

__all__ = ["load_imagenet", "load_segmentation", "ImageFiles", "SegmentationFiles", "pad_collate",
           "CITYSCAPES_LABEL_TO_TRAIN", "ADE20K_LABEL_TO_TRAIN"]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


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

