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


def test_on_device_moves_a_model_only_when_it_is_elsewhere(monkeypatch):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    moved = []
    real_to = model.to
    monkeypatch.setattr(model, "to", lambda d: moved.append(torch.device(d)) or real_to(d))
    assert training.on_device(model, torch.device("cpu")) is model and moved == []
    training.on_device(model, torch.device("meta"))  # elsewhere: moved
    assert moved == [torch.device("meta")] and model[0].weight.device.type == "meta"


def test_predict_and_logits_agree_with_the_model_batch_by_batch():
    from benchmark.data import ImageSet
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5))
    images = torch.randint(0, 256, (11, 3, 4, 4), dtype=torch.uint8)
    data = ImageSet(images, torch.zeros(11, dtype=torch.long), ["a"])
    want = model(images.float() / 255)
    got = training.logits(model, data, device=torch.device("cpu"), batch_size=4)
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.equal(training.predict(model, data, device=torch.device("cpu"), batch_size=4), want.argmax(1))
    flip = training.predict(model, data, device=torch.device("cpu"), transform=lambda x: x.flip(-1), batch_size=4)
    assert torch.equal(flip, model(images.flip(-1).float() / 255).argmax(1))
    empty = ImageSet(images[:0], torch.zeros(0, dtype=torch.long), ["a"])
    assert training.predict(model, empty, device=torch.device("cpu")).shape == (0,)
