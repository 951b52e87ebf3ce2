"""U-Net: shapes, padding, receptive field (halo), prior initialisation, batch independence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lsr.errors import LsrInputError
from lsr.model import UNet, build, normalise_rgb


@pytest.mark.parametrize(("h", "w"), [(32, 32), (30, 45), (17, 8)])
@pytest.mark.parametrize("norm", ["layer", "group", "batch", "none"])
def test_output_shape_for_any_size(h: int, w: int, norm: str) -> None:
    torch.manual_seed(0)
    net = UNet(num_classes=3, width=4, depth=2, norm=norm).eval()
    out = net(torch.randn(2, 3, h, w))
    assert out.shape == (2, 3, h, w) and torch.isfinite(out).all()


def test_halo_bounds_the_receptive_field() -> None:
    torch.manual_seed(0)
    depth = 2
    net = UNet(2, width=4, depth=depth, norm="none").eval()
    halo = net.halo_px
    assert halo == 6 * (2**depth - 1) + 2 ** (depth + 1) and net.receptive_field() == 2 * halo + 1
    size = 2 * halo + 48
    x = torch.randn(1, 3, size, size, requires_grad=True)
    y0 = x0 = size // 2
    net(x)[0, 0, y0, x0].backward()
    g = x.grad.abs().sum(1)[0]
    ys, xs = torch.nonzero(g > 0, as_tuple=True)
    reach = int(max((ys - y0).abs().max(), (xs - x0).abs().max()))
    assert reach <= halo  # nothing outside the halo influences the output
    assert reach >= halo - 2**depth  # and the bound is nearly tight
    # changing every pixel outside the halo leaves the centre unchanged for the local norms
    # (layer norm across channels; batch norm in eval), but not for group norm
    base = torch.randn(1, 3, size, size)
    other = torch.randn(1, 3, size, size)
    keep = torch.zeros(size, size, dtype=torch.bool)
    keep[y0 - halo : y0 + halo + 1, x0 - halo : x0 + halo + 1] = True
    mixed = torch.where(keep, base, other)
    for norm, local in [("layer", True), ("batch", True), ("group", False)]:
        net = UNet(2, width=4, depth=depth, norm=norm).eval()
        with torch.no_grad():
            same = torch.allclose(net(base)[..., y0, x0], net(mixed)[..., y0, x0], atol=1e-5)
        assert same == local, norm


def test_prior_initialisation() -> None:
    torch.manual_seed(0)
    net = UNet(2, width=8, depth=2)
    net.init_prior([0.15, 0.85])
    with torch.no_grad():
        p = torch.softmax(net(torch.randn(4, 3, 32, 32)), 1).mean(dim=(0, 2, 3))
    np.testing.assert_allclose(p.numpy(), [0.15, 0.85], atol=0.05)
    with pytest.raises(LsrInputError):
        net.init_prior([1.0])


def test_group_norm_makes_blocks_independent_of_the_batch() -> None:
    torch.manual_seed(0)
    net = UNet(2, width=4, depth=2, norm="group").train()
    x = torch.randn(3, 3, 16, 16)
    alone = net(x[:1])
    together = net(x)[:1]
    assert torch.allclose(alone, together, atol=1e-5)


def test_build_round_trip_and_foreign_description() -> None:
    net = UNet(3, width=4, depth=3, norm="batch")
    again = build(net.config())
    assert again.config() == net.config()
    again.load_state_dict(net.state_dict())
    with pytest.raises(LsrInputError, match="architecture"):
        build({"architecture": "resnet"})
    with pytest.raises(LsrInputError):
        build({"architecture": "lsr-unet", "width": 4})
    with pytest.raises(LsrInputError, match="norm"):
        UNet(norm="instance")


def test_normalise_rgb_layouts() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    a = normalise_rgb(rgb)
    b = normalise_rgb(torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)
    assert a.shape == (3, 5, 7) and torch.allclose(a, b, atol=1e-6)


def test_inference_uses_the_normalisation_recorded_with_the_network(tmp_path) -> None:
    """A checkpoint records the input normalisation its weights were trained with; build()
    dropped it, so inference normalised with this version's constants whatever the record."""
    from lsr.checkpoint import write_checkpoint
    from lsr.infer import Normalise, model_normalise, predict_array
    from lsr.model import INPUT_MEAN, INPUT_STD, load

    assert model_normalise(UNet(2, width=4, depth=1)).mean == INPUT_MEAN
    mean, std = (0.5, 0.4, 0.6), (0.2, 0.25, 0.3)
    net = UNet(2, width=4, depth=1, input_mean=mean, input_std=std).eval()
    assert net.config()["input_mean"] == list(mean) and net.config()["input_std"] == list(std)
    opt = torch.optim.SGD(net.parameters(), lr=0.1).state_dict()
    meta = {"model": net.config()}
    write_checkpoint(tmp_path / "run", 1, model_state=net.state_dict(), metadata=meta,
                     optimizer_state=opt, trainer_state={})  # fmt: skip
    loaded, _ = load(tmp_path / "run")
    norm = model_normalise(loaded)
    assert norm.mean == mean and norm.std == std
    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    got = predict_array(loaded, rgb, class_index=1)
    recorded = predict_array(net, rgb, class_index=1, normalise=Normalise(mean, std))
    defaults = predict_array(net, rgb, class_index=1, normalise=Normalise(INPUT_MEAN, INPUT_STD))
    np.testing.assert_allclose(got, recorded, atol=1e-6)
    assert np.abs(got - defaults).max() > 1e-3  # the defaults give other probabilities
    for bad in ((0.2, 0.0, 0.3), (1.0, 2.0), ("a", 1, 1), (1.0, float("nan"), 1.0)):
        with pytest.raises(LsrInputError, match="input_std"):
            build({**net.config(), "input_std": list(bad)})


def test_a_loaded_network_is_run_at_its_training_scale_and_for_its_cancer_class(tmp_path) -> None:
    """The docs' `model, meta = load(run); predict_slide(model, slide)` ran a network trained
    at 8.33 µm/px at 4.17 (tissue at twice its size) and took class 0 whatever it was."""
    from lsr.checkpoint import write_checkpoint
    from lsr.infer import predict_array, predict_slide
    from lsr.model import load
    from lsr.slide import ArraySlide

    torch.manual_seed(0)
    net = UNet(2, width=4, depth=1).eval()
    opt = torch.optim.SGD(net.parameters(), lr=0.1).state_dict()
    meta = {"model": net.config(), "working_mpp": 2.0, "class_names": ["non-cancer", "Tumor"]}
    write_checkpoint(tmp_path / "run", 1, model_state=net.state_dict(), metadata=meta,
                     optimizer_state=opt, trainer_state={})  # fmt: skip
    loaded, _ = load(tmp_path / "run")
    assert loaded.working_mpp == 2.0 and loaded.class_names == ("non-cancer", "Tumor")
    rgb = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    slide = ArraySlide(rgb, mpp=1.0)
    prob = predict_slide(loaded, slide, tile=16)
    assert prob.shape == slide.working_shape(2.0) == (20, 24)
    want = predict_slide(net, slide, working_mpp=2.0, tile=16, class_index=1)
    np.testing.assert_allclose(prob, want, atol=1e-6)
    assert np.abs(prob - predict_slide(net, slide, working_mpp=2.0, tile=16)).max() > 1e-3
    small = rgb[:16, :16]
    cancer = predict_array(net, small, class_index=1)
    np.testing.assert_allclose(predict_array(loaded, small), cancer)
    assert predict_slide(net, slide, tile=16).shape == slide.working_shape(4.17)  # unrecorded
