"""Metrics: hand-computed cases, ignore_index, and exact accumulation over batches/ranks."""
import math

import pytest
import torch

from mpq.metrics import Accuracy, MeanIoU, confusion, miou, miou_from_confusion, top1


def test_confusion_hand_case_rows_are_target():
    target = torch.tensor([0, 0, 1, 1, 2])
    pred = torch.tensor([0, 1, 1, 1, 0])
    expected = torch.tensor([[1, 1, 0],
                             [0, 2, 0],
                             [1, 0, 0]])
    conf = confusion(pred, target, num_classes=3)
    assert conf.dtype == torch.int64
    assert torch.equal(conf, expected)


def test_confusion_drops_ignore_index_and_accepts_scores():
    target = torch.tensor([[0, 255], [1, 255]])
    labels = torch.tensor([[0, 1], [1, 0]])
    conf = confusion(labels, target, num_classes=2)
    assert torch.equal(conf, torch.tensor([[1, 0], [0, 1]]))
    scores = torch.nn.functional.one_hot(labels, 2).permute(2, 0, 1).float()[None]  # (1, C, H, W)
    assert torch.equal(confusion(scores, target[None], num_classes=2), conf)


def test_confusion_rejects_labels_out_of_range():
    with pytest.raises(ValueError, match="target"):
        confusion(torch.tensor([0]), torch.tensor([3]), num_classes=3)
    with pytest.raises(ValueError, match="predicted"):
        confusion(torch.tensor([5]), torch.tensor([0]), num_classes=3)


def test_miou_hand_case_excludes_absent_classes():
    # class 0: inter 1, union 2 -> 1/2; class 1: inter 2, union 3 -> 2/3; class 2 absent
    target = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 1, 1, 1])
    assert miou(pred, target, num_classes=3) == pytest.approx(100 * (1 / 2 + 2 / 3) / 2)


def test_miou_class_only_in_prediction_counts_as_zero():
    target = torch.tensor([0, 0])
    pred = torch.tensor([0, 2])
    # class 0: 1/2, class 2: 0/1 (predicted, never true), class 1 absent
    assert miou(pred, target, num_classes=3) == pytest.approx(25.0)


def test_miou_perfect_is_100_and_ignore_does_not_count():
    target = torch.randint(0, 5, (2, 8, 8))
    pred = target.clone()
    target[0, 0] = 255
    pred[0, 0] = 3  # wrong, but ignored
    assert miou(pred, target, num_classes=5) == pytest.approx(100.0)


def test_miou_of_nothing_is_nan():
    assert math.isnan(miou_from_confusion(torch.zeros(3, 3, dtype=torch.int64)))


def test_top1_logits_and_labels():
    target = torch.tensor([0, 1, 2, 1])
    logits = torch.tensor([[5.0, 0, 0], [0, 3, 1], [1, 0, 0], [0, 2, 1]])
    assert top1(logits, target) == pytest.approx(75.0)
    assert top1(logits.argmax(1), target) == pytest.approx(75.0)
    assert top1(target, target) == 100.0
    assert math.isnan(top1(torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)))


def test_mean_iou_accumulation_equals_one_shot():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (6, 5, 5), generator=g)
    target[target == 3] = 255
    scores = torch.randn(6, 4, 5, 5, generator=g)
    metric = MeanIoU(4)
    for i in range(0, 6, 2):
        metric.update(scores[i:i + 2], target[i:i + 2])
    assert torch.equal(metric.counts, confusion(scores, target, num_classes=4))
    assert metric.compute() == pytest.approx(miou(scores, target, num_classes=4))
    metric.reset()
    assert int(metric.counts.sum()) == 0


def test_accuracy_accumulation_and_rank_sum_equal_one_shot():
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 10, (37,), generator=g)
    logits = torch.randn(37, 10, generator=g)
    ranks = [Accuracy(), Accuracy()]
    for r, acc in enumerate(ranks):  # two "DDP ranks", uneven shards, several batches each
        shard = torch.arange(r, 37, 2)
        for b in shard.split(5):
            acc.update(logits[b], target[b])
    summed = Accuracy()
    summed.counts = ranks[0].counts + ranks[1].counts  # what all_reduce does
    assert summed.counts.dtype == torch.int64
    assert summed.compute() == pytest.approx(top1(logits, target))
    assert math.isnan(Accuracy().compute())


def test_all_reduce_is_a_no_op_without_distributed():
    acc = Accuracy()
    acc.update(torch.tensor([1, 0]), torch.tensor([1, 1]))
    acc.all_reduce()
    assert acc.counts.tolist() == [1, 2]
