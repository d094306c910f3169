"""``TaskData``: one task's train/val/test splits, whichever loader built them.

The shared base of the data modules (``mpq.embedded``, ``mpq.folders``,
re-exported by ``mpq.data``); it imports none of them, so they can all import it.

Samples are ``(image, target)``: image float32 ``(3, H, W)`` normalized;
target an int64 scalar (classification) or an int64 ``(H, W)`` mask with
``ignore_index`` = 255 for unlabeled pixels (segmentation).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import Dataset

__all__ = ["TaskData", "IGNORE_INDEX"]

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

