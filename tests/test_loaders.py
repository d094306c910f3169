"""Paper-scale loading: decoding every image mode to RGB uint8, the uint8 ImageNet and
segmentation transforms, and ``make_loader`` with worker processes (persistent,
prefetching, reproducibly seeded) next to the unchanged single-process loader."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mpq import data
from mpq.data import default_workers, make_loader
from mpq.folders import (CITYSCAPES_LABEL_TO_TRAIN, IMAGENET_MEAN, IMAGENET_STD, SegmentationFiles, decode_rgb,
                         imagenet_transforms, load_imagenet, load_segmentation)

MEAN, STD = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
LOW, HIGH = (0 - MEAN) / STD, (1 - MEAN) / STD  # the normalized range of [0, 1]


def _smooth(h: int, w: int, seed: int) -> Image.Image:
    """A smooth RGB image (JPEG keeps its colours closely)."""
    small = np.random.default_rng(seed).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.BICUBIC)


def _save(im: Image.Image, path: Path, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, fmt)
    return path


# Every mode an ImageNet-like folder holds (ImageNet itself has CMYK and grayscale
# JPEGs, and one PNG named .JPEG), as (file name, PIL mode, format).
MODES = [("rgb.jpg", "RGB", "JPEG"), ("gray.jpg", "L", "JPEG"), ("cmyk.jpg", "CMYK", "JPEG"),
         ("palette.png", "P", "PNG"), ("rgba.png", "RGBA", "PNG"), ("gray_alpha.png", "LA", "PNG"),
         ("png_named.JPEG", "RGB", "PNG"), ("bitmap.bmp", "RGB", "BMP")]


def _in_range(x: torch.Tensor) -> bool:
    return bool((x >= LOW - 1e-5).all() and (x <= HIGH + 1e-5).all())


# ----------------------------------------------------------------------------- decoding

@pytest.mark.parametrize("name,mode,fmt", MODES)
def test_decode_rgb_gives_three_uint8_channels_for_every_mode(tmp_path, name, mode, fmt):
    im = _smooth(30, 40, 0).convert(mode)
    x = decode_rgb(str(_save(im, tmp_path / name, fmt)))
    assert x.shape == (3, 30, 40) and x.dtype == torch.uint8
    with Image.open(tmp_path / name) as again:  # the same pixels as PIL's RGB conversion
        expected = torch.from_numpy(np.array(again.convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(x, expected)
    if mode in ("L", "LA"):
        assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])


def test_decode_rgb_cmyk_jpeg_has_the_right_colours(tmp_path):
    im = _smooth(30, 40, 1)
    rgb = decode_rgb(str(_save(im, tmp_path / "rgb.jpg", "JPEG"))).float()
    cmyk = decode_rgb(str(_save(im.convert("CMYK"), tmp_path / "cmyk.jpg", "JPEG"))).float()
    assert (rgb - cmyk).abs().mean() < 8  # an inverted (Adobe) CMYK misread would be off by ~100


def test_decode_rgb_scales_16_bit_png(tmp_path):
    deep = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)
    x = decode_rgb(str(_save(Image.fromarray(deep), tmp_path / "deep.png")))
    assert x.shape == (3, 3, 4) and x.dtype == torch.uint8
    assert torch.equal(x[0], torch.from_numpy((deep >> 8).astype(np.uint8)))


# ----------------------------------------------------------------------------- ImageNet

@pytest.fixture(scope="module")
def mixed_imagenet(tmp_path_factory):
    """Two classes; every image mode of ``MODES`` in train/ and val/, at several sizes."""
    root = tmp_path_factory.mktemp("imagenet")
    for split, reps in (("train", 2), ("val", 1)):
        for c, cls in enumerate(("n01", "n02")):
            for r in range(reps):
                for k, (name, mode, fmt) in enumerate(MODES):
                    h, w = 24 + 6 * k, 40 - 3 * k + 5 * r  # portrait and landscape
                    _save(_smooth(h, w, 100 * c + 10 * k + r).convert(mode),
                          root / split / cls / f"{r}_{name}", fmt)
    return root


def test_imagenet_samples_are_normalized_rgb_at_every_mode(mixed_imagenet):
    data = load_imagenet(mixed_imagenet, val_size=6, input_size=16)
    assert [len(d) for d in (data.train, data.val, data.test)] == [26, 6, 16]
    torch.manual_seed(0)
    for split in (data.train, data.val, data.test):
        for i in range(len(split)):
            x, label = split[i]
            assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and x.is_contiguous()
            assert label.dtype == torch.int64 and label.item() in (0, 1)
            assert _in_range(x)
    gray = [i for i, (p, _) in enumerate(data.test.samples) if "gray" in p]
    for i in gray:  # a grayscale image: three equal channels before normalization
        raw = data.test[i][0] * STD + MEAN
        assert torch.allclose(raw[0], raw[1], atol=1e-5) and torch.allclose(raw[0], raw[2], atol=1e-5)


def test_imagenet_samples_survive_a_round_trip(mixed_imagenet):
    data = load_imagenet(mixed_imagenet, val_size=6, input_size=16)
    assert data.test.samples == [(p, label) for p, label in data.test.samples]
    assert all(isinstance(p, str) and isinstance(label, int) for p, label in data.test.samples)
    assert data.test._paths.dtype.kind == "S"  # no per-sample Python objects for workers to copy


def test_imagenet_eval_transform_resizes_then_centre_crops():
    from torchvision.transforms import v2

    def resize_of(tf):
        return next(t.size for t in tf.transforms if isinstance(t, v2.Resize))

    assert resize_of(imagenet_transforms(224)[1]) == [256]
    assert resize_of(imagenet_transforms(224, resize_size=232)[1]) == [232]
    assert resize_of(imagenet_transforms(32)[1]) == [37]  # round(32 * 256 / 224) = round(36.57)
    with pytest.raises(ValueError, match="resize_size"):
        imagenet_transforms(224, resize_size=200)
    x = torch.arange(3 * 20 * 40, dtype=torch.int64).remainder(251).to(torch.uint8).view(3, 20, 40)
    _, evaluate = imagenet_transforms(8, resize_size=10)
    expected = v2.functional.center_crop(v2.functional.resize(x, [10], antialias=True), [8])
    expected = (expected.float() / 255 - MEAN) / STD
    assert torch.allclose(evaluate(x), expected, atol=1e-5)


def test_imagenet_resize_size_reaches_the_eval_splits(mixed_imagenet):
    data = load_imagenet(mixed_imagenet, val_size=6, input_size=16, resize_size=16)
    assert data.test[0][0].shape == (3, 16, 16)
    path = data.test.samples[0][0]
    _, evaluate = imagenet_transforms(16, 16)
    assert torch.equal(data.test[0][0], evaluate(decode_rgb(path)).contiguous())


def _batches(loader, epochs: int = 1) -> list:
    return [b for _ in range(epochs) for b in loader]


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) and torch.equal(m, n) for (x, m), (y, n) in zip(a, b))


def test_imagenet_eval_batches_do_not_depend_on_workers(mixed_imagenet):
    data = load_imagenet(mixed_imagenet, val_size=6, input_size=16)
    plain = _batches(make_loader(data.test, batch_size=3, train=False))
    assert _same(_batches(make_loader(data.test, batch_size=3, train=False, num_workers=2)), plain)


def test_imagenet_training_batches_repeat_with_workers(mixed_imagenet):
    data = load_imagenet(mixed_imagenet, val_size=6, input_size=16)

    def run(seed):
        torch.manual_seed(123)
        return _batches(make_loader(data.train, batch_size=4, train=True, seed=seed, num_workers=2), epochs=2)

    first = run(7)
    assert len(first) == 12 and all(x.shape == (4, 3, 16, 16) for x, _ in first)
    assert _same(run(7), first)
    assert not _same(run(8), first)
    # the two epochs (and the two workers) draw different augmentations
    assert not _same(first[:6], first[6:])


# ----------------------------------------------------------------------------- segmentation

# Cityscapes labelIds in 8x8 blocks (7 road -> 0, 26 car -> 13, 24 person -> 11, 0 unlabeled -> 255);
# the image has one colour per block, so a crop can be checked for image/mask alignment.
BLOCK_IDS = np.array([[7, 26, 24, 0], [24, 7, 0, 26], [26, 0, 7, 24]], np.uint8)  # (3, 4) blocks
COLOURS = {7: (200, 30, 30), 26: (30, 200, 30), 24: (30, 30, 200), 0: (120, 120, 120)}


def _cityscapes(root: Path, size: int = 8) -> None:
    ids = BLOCK_IDS.repeat(size, 0).repeat(size, 1)  # (24, 32)
    rgb = np.stack([np.vectorize(lambda v, c=c: COLOURS[v][c])(ids) for c in range(3)], -1).astype(np.uint8)
    for split, n in (("train", 4), ("val", 3)):
        for i in range(n):
            stem = f"aachen_{i:06d}_000019"
            _save(Image.fromarray(np.roll(rgb, i, 1)), root / "leftImg8bit" / split / "aachen" / f"{stem}_leftImg8bit.png")
            _save(Image.fromarray(np.roll(ids, i, 1)), root / "gtFine" / split / "aachen" / f"{stem}_gtFine_labelIds.png")


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("cityscapes")
    _cityscapes(root)
    return root


def _normalized(rgb) -> torch.Tensor:
    return ((torch.tensor(rgb, dtype=torch.float32) / 255).view(3, 1, 1) - MEAN) / STD


def test_segmentation_crops_keep_image_and_mask_aligned(cityscapes):
    data = load_segmentation(cityscapes, format="cityscapes", crop_size=16, val_size=1)
    train_ids = {int(CITYSCAPES_LABEL_TO_TRAIN[k]): k for k in COLOURS}
    torch.manual_seed(0)
    checked = 0
    for _ in range(4):
        for i in range(len(data.train)):
            x, m = data.train[i]
            assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and x.is_contiguous()
            assert m.shape == (16, 16) and m.dtype == torch.int64
            assert set(m.unique().tolist()) <= {0, 11, 13, 255} and _in_range(x)
            # a pixel whose 5x5 neighbourhood (the reach of bilinear at these scales) has one
            # label shows that label's colour: the mask was scaled and cropped with its image
            inner = torch.stack([m[2 + dy:14 + dy, 2 + dx:14 + dx] == m[2:14, 2:14]
                                 for dy in range(-2, 3) for dx in range(-2, 3)]).all(0)
            for k, raw in train_ids.items():
                where = inner & (m[2:14, 2:14] == k)
                if k != 255 and where.any():
                    checked += 1
                    expected = _normalized(COLOURS[raw]).expand(3, 12, 12)[:, where]
                    assert torch.allclose(x[:, 2:14, 2:14][:, where], expected, atol=0.03)
    assert checked > 20


def test_segmentation_padding_is_mean_colour_and_ignore(cityscapes):
    data = load_segmentation(cityscapes, format="cityscapes", crop_size=16, val_size=1)
    small = SegmentationFiles(data.train.pairs, CITYSCAPES_LABEL_TO_TRAIN, crop_size=16, scale=(0.5, 0.5))
    torch.manual_seed(0)
    for i in range(len(small)):
        x, m = small[i]  # scaled to 12 x 16: the crop is the whole image and 4 padded rows
        assert x.shape == (3, 16, 16) and (x[:, 12:] == 0).all() and (m[12:] == 255).all()
        assert (m[:12] != 255).any() and (x[:, :12] != 0).any()


def test_segmentation_eval_is_native_and_exact(cityscapes):
    data = load_segmentation(cityscapes, format="cityscapes", crop_size=16, val_size=1)
    x, m = data.test[0]
    img_path, label_path = data.test.pairs[0]
    with Image.open(img_path) as im:
        rgb = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32).copy()).permute(2, 0, 1)
    assert torch.equal(x, (rgb / 255.0 - MEAN) / STD)  # the same arithmetic as the float pipeline
    with Image.open(label_path) as lm:
        assert torch.equal(m, torch.from_numpy(CITYSCAPES_LABEL_TO_TRAIN[np.asarray(lm)].astype(np.int64)))


def test_segmentation_training_batches_repeat_with_workers(cityscapes):
    data = load_segmentation(cityscapes, format="cityscapes", crop_size=16, val_size=1)

    def run(seed, workers=2):
        torch.manual_seed(0)
        return _batches(make_loader(data.train, batch_size=1, train=True, seed=seed, num_workers=workers), 2)

    first = run(3)
    assert len(first) == 6 and _same(run(3), first)
    assert not _same(run(4), first)
    plain = run(3, workers=0)  # without workers: torch.manual_seed reproduces it, as before
    torch.manual_seed(0)
    assert _same(_batches(make_loader(data.train, batch_size=1, train=True, seed=3), 2), plain)


def test_segmentation_eval_batches_do_not_depend_on_workers(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    for split, n in (("training", 3), ("validation", 5)):
        for i in range(n):
            h, w = 10 + 3 * i, 12 - i  # mixed sizes: padded batches
            _save(_smooth(h, w, i), base / "images" / split / f"ADE_{i}.jpg")
            ann = np.random.default_rng(i).integers(0, 152, (h, w), dtype=np.uint8)
            _save(Image.fromarray(ann), base / "annotations" / split / f"ADE_{i}.png")
    test = load_segmentation(tmp_path, format="ade20k", crop_size=8, val_size=1).test
    plain = _batches(make_loader(test, batch_size=2, train=False))
    assert [x.shape[-2:] for x, _ in plain] == [(13, 12), (19, 10), (22, 8)]
    assert all(set(m.unique().tolist()) <= set(range(150)) | {255} for _, m in plain)
    assert _same(_batches(make_loader(test, batch_size=2, train=False, num_workers=2)), plain)


# ----------------------------------------------------------------------------- make_loader

def test_make_loader_without_workers_is_the_plain_loader():
    """The embedded scale: no workers, the same samplers and the same batches as a plain DataLoader."""
    images = torch.randint(0, 256, (64, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    train = data.EmbeddedDataset(images, (images > 127).long(), shift=4)  # random translations
    loader = make_loader(train, batch_size=16, train=True, seed=5)
    assert (loader.num_workers, loader.persistent_workers, loader.prefetch_factor, loader.pin_memory) \
        == (0, False, None, False)
    torch.manual_seed(1)
    ours = _batches(loader, epochs=2)
    torch.manual_seed(1)
    reference = DataLoader(train, batch_size=16, shuffle=True, drop_last=True,
                           generator=torch.Generator().manual_seed(5))
    assert _same(ours, _batches(reference, epochs=2))
    assert make_loader(train, batch_size=4, train=True, prefetch_factor=4).prefetch_factor is None


def test_make_loader_with_workers_persists_and_prefetches():
    ds = torch.utils.data.TensorDataset(torch.arange(10))
    loader = make_loader(ds, batch_size=2, train=False, num_workers=2)
    assert (loader.persistent_workers, loader.prefetch_factor, loader.pin_memory) == (True, 2, False)
    loader = make_loader(ds, batch_size=2, train=True, num_workers=1, prefetch_factor=4, pin_memory=True)
    assert (loader.persistent_workers, loader.prefetch_factor, loader.pin_memory) == (True, 4, True)
    seeds = [make_loader(ds, batch_size=2, train=True, seed=1, rank=r, world_size=2, num_workers=1)
             .generator.initial_seed() for r in (0, 1, 0)]
    assert seeds[0] != seeds[1] and seeds[0] == seeds[2]  # per-rank worker seeds, reproducible
    assert make_loader(ds, batch_size=2, train=True, rank=0, world_size=2).generator is None


@pytest.mark.parametrize("cpus,local,expected", [(1, 1, 0), (2, 1, 2), (16, 1, 8), (64, 1, 8), (16, 4, 4),
                                                  (16, 8, 2), (4, 8, 1)])
def test_default_workers(monkeypatch, cpus, local, expected):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    assert default_workers(local) == expected
