import torch

from benchmark import training
from benchmark.scenario import Augment


def test_batched_crop_equals_per_image_crop():
    x = torch.rand(6, 3, 8, 8)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    out = training.augment(x, Augment(crop_pad=2), g1)
    # oracle: the same random offsets, applied one image at a time
    oy = torch.randint(0, 5, (6,), generator=g2)
    ox = torch.randint(0, 5, (6,), generator=g2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(6):
        assert torch.equal(out[i], padded[i, :, oy[i]:oy[i] + 8, ox[i]:ox[i] + 8])


def test_batched_flip_flips_about_half_and_only_horizontally():
    x = torch.rand(200, 1, 4, 4)
    out = training.augment(x, Augment(hflip=True), torch.Generator().manual_seed(0))
    same = torch.all((out == x).flatten(1), 1)
    flipped = torch.all((out == x.flip(-1)).flatten(1), 1)
    assert torch.all(same | flipped) and 60 < int(flipped.sum()) < 140


def test_no_augmentation_is_identity():
    x = torch.rand(3, 3, 8, 8)
    assert torch.equal(training.augment(x, Augment(), torch.Generator()), x)
