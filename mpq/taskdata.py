"""``TaskData``: one task's train/val/test splits, whichever loader built them.

The shared base of the data modules (``mpq.embedded``, ``mpq.folders``,
re-exported by ``mpq.data``); it imports none of them, so they can all import it.

Samples are ``(image, target)``: image float32 ``(3, H, W)`` normalized;
target an int64 scalar (classification) or an int64 ``(H, W)`` mask with
``ignore_index`` = 255 for unlabeled pixels (segmentation).

``dataset_digest`` names a split's content (results are keyed by it, so a
split of the same size with other samples is never taken for the old one);
a dataset class gives its own through a ``content_digest()`` method.
"""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

__all__ = ["TaskData", "IGNORE_INDEX", "dataset_digest"]

IGNORE_INDEX = 255


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


def hash_array(h: "hashlib._Hash", array: "torch.Tensor | np.ndarray", name: str = "") -> None:
    """Feed ``array``'s name, dtype, shape and bytes (native byte order: little-endian on x86 and ARM) to ``h``."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().contiguous()
        h.update(f"{name}|{array.dtype}|{tuple(array.shape)}|".encode())
        h.update(array.reshape(-1).view(torch.uint8).numpy().tobytes())
    else:
        array = np.ascontiguousarray(array)
        h.update(f"{name}|{array.dtype}|{array.shape}|".encode())
        h.update(array.tobytes())


def dataset_digest(dataset: Dataset) -> str | None:
    """A sha256 hex digest of ``dataset``'s samples, or None where it can't be named.

    Through ``Subset`` (its indices are hashed too); a dataset with a
    ``content_digest()`` method gives its own (the embedded splits: their bytes;
    the folder datasets: their files' relative names and labels); a
    ``TensorDataset``: its tensors. Anything else warns and gives None: results
    are then keyed by the split's size only.
    """
    h = hashlib.sha256()
    while isinstance(dataset, Subset):
        hash_array(h, np.asarray(dataset.indices, dtype=np.int64), "subset")
        dataset = dataset.dataset
    own = getattr(dataset, "content_digest", None)
    if callable(own):
        h.update(f"{type(dataset).__qualname__}|{own()}".encode())
    elif isinstance(dataset, TensorDataset):
        for i, t in enumerate(dataset.tensors):
            hash_array(h, t, f"tensor{i}")
    else:
        warnings.warn(f"{type(dataset).__qualname__} has no content_digest(): its results are keyed by its "
                      "size only; give it a content_digest() method naming its samples", stacklevel=2)
        return None
    return h.hexdigest()
