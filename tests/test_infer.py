"""Tiled inference: seamless against one-shot passes, tiling geometry, tissue skipping,
prefetching, progress, cancellation and output arrays."""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lsr.errors import LsrInputError
from lsr.infer import (
    InferenceCancelled,
    Normalise,
    activation_bytes_per_px,
    core_forward,
    predict_array,
    predict_slide,
    resolve_tile,
    resolve_tissue_mask,
)
from lsr.model import INPUT_MEAN, INPUT_STD, UNet
from lsr.slide import ArraySlide
from lsr.tiling import tile_grid, tiles_with_tissue


def eval_unet(depth: int = 2, seed: int = 0) -> UNet:
    """A small U-Net with BatchNorm in eval mode (local per pixel) and non-trivial stats."""
    torch.manual_seed(seed)
    model = UNet(2, width=4, depth=depth, norm="batch")
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    return model.eval()


class DilatedNet(nn.Module):
    """A fully convolutional net with no down-sampling: halo = sum of dilations."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.body = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(),
            nn.Conv2d(6, 6, 3, padding=3, dilation=3), nn.ReLU(),
            nn.Conv2d(6, 3, 3, padding=2, dilation=2),
        )  # fmt: skip
        self.halo_px = 1 + 3 + 2

    def forward(self, x):
        return self.body(x)


def tissue_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth pink blobs plus noise on white: structure at several scales."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    field = np.sin(yy / 9.0) * np.cos(xx / 13.0) + 0.3 * rng.standard_normal((h, w))
    img = np.full((h, w, 3), 255, np.float64)
    tissue = field > 0
    img[tissue] = (200, 120, 190)
    img += 25 * rng.standard_normal((h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def reference(model: nn.Module, image: np.ndarray, pad: int, multiple: int, cls: int = 0):
    """Independent one-shot pass: white padding by ``pad``, normalise in NumPy, crop."""
    h, w = image.shape[:2]
    ph = -(-(h + 2 * pad) // multiple) * multiple - h - pad
    pw = -(-(w + 2 * pad) // multiple) * multiple - w - pad
    padded = np.pad(image, ((pad, ph), (pad, pw), (0, 0)), constant_values=255)
    x = (padded.astype(np.float64) / 255.0 - np.array(INPUT_MEAN)) / np.array(INPUT_STD)
    t = torch.from_numpy(x.transpose(2, 0, 1)[None].astype(np.float32))
    with torch.no_grad():
        p = torch.softmax(model(t), dim=1)[0, cls].numpy()
    return p[pad : pad + h, pad : pad + w]


# --- seamless: tiled == one shot ------------------------------------------------------------


@pytest.mark.parametrize("tile,batch", [(32, 3), (48, 1), (1024, 2)])
def test_tiled_equals_one_shot_unet(tile, batch):
    model = eval_unet(depth=2)
    img = tissue_image(150, 203)
    ref = reference(model, img, pad=model.halo_px + (-model.halo_px) % 4, multiple=4)
    prob = predict_slide(
        model, ArraySlide(img, mpp=1.0), working_mpp=1.0, tile=tile, batch_size=batch
    )
    assert prob.shape == (150, 203) and prob.dtype == np.float32
    assert np.abs(prob - ref).max() < 1e-3
    assert np.abs(predict_array(model, img) - ref).max() < 1e-4
    # away from the border, the plain (unpadded) forward pass agrees too
    plain = reference(model, img, pad=0, multiple=4)
    h = model.halo_px
    assert np.abs(prob - plain)[h:-h, h:-h].max() < 1e-3


@pytest.mark.parametrize("depth", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("norm", ["layer", "batch", "none"])
def test_core_forward_equals_the_core_of_the_full_forward(depth, norm):
    torch.manual_seed(depth)
    model = UNet(2, width=4, depth=depth, norm=norm).eval()
    m = 2**depth
    halo = -(-model.halo_px // m) * m
    read = (2 * halo + 3 * m, 2 * halo + 5 * m)
    fast = core_forward(model, halo, read)
    assert fast is not None
    x = torch.randn(2, 3, *read)
    with torch.inference_mode():
        full = model(x)[..., halo : read[0] - halo, halo : read[1] - halo]
        core = fast(x)
    assert core.shape == (2, 2, 3 * m, 5 * m)
    assert (core - full).abs().max() < 1e-5


def test_core_forward_declines_what_it_cannot_reproduce():
    unet = UNet(2, width=4, depth=2)
    assert core_forward(unet, 28, (88, 92)) is not None
    assert core_forward(UNet(2, width=4, depth=2, norm="group"), 28, (88, 92)) is None
    assert core_forward(unet, 2, (16, 16)) is None  # too small a halo for the decoder
    assert core_forward(unet, 28, (90, 92)) is None  # off the 4-px lattice
    assert core_forward(DilatedNet(), 6, (40, 40)) is None  # not a U-Net


@pytest.mark.parametrize("core_only", [True, False])
def test_core_only_and_plain_forward_give_the_same_tiles(core_only):
    model = eval_unet(depth=3)
    img = tissue_image(170, 140, seed=4)
    ref = reference(model, img, pad=model.halo_px + (-model.halo_px) % 8, multiple=8)
    timings: dict = {}
    prob = predict_slide(
        model, ArraySlide(img, mpp=1.0), working_mpp=1.0, tile=64, core_only=core_only,
        timings=timings,
    )  # fmt: skip
    assert timings["core_only"] == float(core_only) and timings["tiles_total"] == 9
    assert np.abs(prob - ref).max() < 1e-3


def test_default_layer_norm_unet_is_tiled_exactly():
    torch.manual_seed(2)
    model = UNet(2, width=4, depth=2).eval()  # default norm: per-pixel channel LayerNorm
    img = tissue_image(90, 110, seed=5)
    ref = reference(model, img, pad=28, multiple=4)
    prob = predict_slide(model, ArraySlide(img, mpp=1.0), working_mpp=1.0, tile=32)
    assert np.abs(prob - ref).max() < 1e-3


def test_halo_smaller_than_receptive_field_shows_seams():
    """The comparison above can fail: with no halo, tile borders differ."""
    model = eval_unet(depth=2)
    img = tissue_image(128, 128)
    ref = reference(model, img, pad=28, multiple=4)
    prob = predict_slide(model, ArraySlide(img, mpp=1.0), working_mpp=1.0, tile=32, halo=0)
    assert np.abs(prob - ref).max() > 1e-3


def test_tiled_equals_one_shot_for_any_fully_convolutional_module():
    model = DilatedNet().eval()
    img = tissue_image(77, 91, seed=3)
    ref = reference(model, img, pad=model.halo_px, multiple=1, cls=2)
    prob = predict_slide(
        model, ArraySlide(img, mpp=1.0), working_mpp=1.0, tile=20, batch_size=4, class_index=2
    )
    assert np.abs(prob - ref).max() < 1e-3


def test_tiles_at_working_resolution_of_a_finer_slide():
    """Reads go through read_working: a 2x finer slide gives the prediction of its 2x2 mean."""
    model = eval_unet(depth=2)
    fine = np.repeat(np.repeat(tissue_image(64, 80), 2, axis=0), 2, axis=1)
    prob = predict_slide(model, ArraySlide(fine, mpp=0.5), working_mpp=1.0, tile=32)
    ref = reference(model, fine[::2, ::2], pad=28, multiple=4)
    assert prob.shape == (64, 80)
    assert np.abs(prob - ref).max() < 1e-3


def test_auto_tile_stays_within_the_budget_and_equals_one_shot():
    model = eval_unet(depth=2)
    img = tissue_image(150, 203)
    ref = reference(model, img, pad=28, multiple=4)
    timings: dict = {}
    prob = predict_slide(
        model, ArraySlide(img, mpp=1.0), working_mpp=1.0, tile="auto", tile_memory_mib=6.0,
        batch_size=2, timings=timings,
    )  # fmt: skip
    assert np.abs(prob - ref).max() < 1e-3
    assert timings["tiles_total"] > 1  # the budget forced several tiles
    grid = tile_grid((150, 203), int(timings["tile_px"]), 28, 4)
    bpp = activation_bytes_per_px(model, core_only=True)  # the forward predict_slide ran
    assert timings["core_only"] == 1 and bpp < activation_bytes_per_px(model)
    assert 2 * grid.read_shape[0] * grid.read_shape[1] * bpp <= 6.0 * 2**20
    # the default ("auto", 1 GiB on CPU) covers a small image in one tile
    timings = {}
    again = predict_slide(model, ArraySlide(img, mpp=1.0), working_mpp=1.0, timings=timings)
    assert timings["tiles_total"] == 1 and timings["tile_px"] <= 204
    assert np.abs(again - ref).max() < 1e-3


def test_resolve_tile_keeps_explicit_tiles_and_rejects_other_words():
    model = eval_unet(depth=2)
    assert resolve_tile(model, (5000, 5000), 300) == 300
    big = resolve_tile(model, (5000, 5000), "auto", memory_mib=512)
    small = resolve_tile(model, (5000, 5000), "AUTO", memory_mib=16)
    assert 64 <= small < big <= 5000
    with pytest.raises(LsrInputError, match="auto"):
        resolve_tile(model, (100, 100), "largest")
    with pytest.raises(LsrInputError, match="MiB"):
        resolve_tile(model, (100, 100), "auto", memory_mib=0)


def test_activation_estimate_grows_with_the_network():
    assert activation_bytes_per_px(UNet(2, width=16, depth=4)) > activation_bytes_per_px(
        UNet(2, width=8, depth=3)
    )
    # the core-only forward needs less, except where it does not apply (GroupNorm)
    unet = UNet(2, width=16, depth=4)
    assert activation_bytes_per_px(unet, core_only=True) < activation_bytes_per_px(unet)
    group = UNet(2, width=16, depth=4, norm="group")
    assert activation_bytes_per_px(group, core_only=True) == activation_bytes_per_px(group)
    # so with the same budget "auto" picks larger tiles for it
    plain = resolve_tile(unet, (3125, 3125), "auto", core_only=False)
    assert resolve_tile(unet, (3125, 3125), "auto") > plain
    # any other module: every layer output is counted (input 3 B + 12 B normalised, then
    # 6 + 6 + 6 + 6 + 3 float channels and the 3-channel logits) -- an upper bound
    est = activation_bytes_per_px(DilatedNet().eval())
    assert est >= 3 + 12 + 4 * (6 + 6 + 3)
    assert est <= 3 + 12 + 4 * (6 * 4 + 3 + 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_probe_measures_activation_memory():
    model = UNet(2, width=8, depth=3).eval()
    cpu = activation_bytes_per_px(model)
    gpu = activation_bytes_per_px(model, "cuda")
    assert 0.3 * cpu < gpu < 3 * cpu
    assert resolve_tile(model, (2000, 2000), "auto", device="cuda") >= 256


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    model = eval_unet(depth=2)
    img = tissue_image(100, 120)
    cpu = predict_slide(model, ArraySlide(img, mpp=1.0), working_mpp=1.0, tile=48)
    gpu = predict_slide(
        model, ArraySlide(img, mpp=1.0), working_mpp=1.0, tile=48, device="cuda", batch_size=2
    )
    assert np.abs(cpu - gpu).max() < 1e-3


# --- tiling geometry ------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 300),
    w=st.integers(1, 300),
    tile=st.integers(1, 128),
    halo=st.integers(0, 40),
    multiple=st.sampled_from([1, 2, 4, 8, 16]),
)
def test_tile_cores_cover_every_pixel_once_and_reads_are_aligned(h, w, tile, halo, multiple):
    grid = tile_grid((h, w), tile, halo, multiple)
    count = np.zeros((h, w), np.int32)
    for t in grid.tiles:
        count[t.core] += 1
        ry, rx, rh, rw = t.read_box
        assert ry % multiple == 0 and rx % multiple == 0  # on the network's lattice
        assert (rh, rw) == grid.read_shape and rh % multiple == 0 and rw % multiple == 0
        assert t.halo >= halo and t.y - ry >= halo and ry + rh - (t.y + t.h) >= halo
        assert rx + rw - (t.x + t.w) >= halo
    assert (count == 1).all()
    assert grid.overhead >= 1.0
    t_max = -(-tile // multiple) * multiple
    assert grid.tile_h <= t_max and grid.tile_w <= t_max
    # balanced: as few tiles as the largest tile allows, each no larger than needed
    rows, cols = len({t.y for t in grid.tiles}), len({t.x for t in grid.tiles})
    assert (rows, cols) == (-(-h // t_max), -(-w // t_max))
    assert grid.tile_h - multiple < -(-h // rows) <= grid.tile_h


def test_tiles_with_tissue_matches_brute_force():
    rng = np.random.default_rng(0)
    mask = rng.random((37, 53)) > 0.97
    grid = tile_grid((370, 530), 64, 8)
    kept = {t.index for t in tiles_with_tissue(grid, mask)}
    for t in grid.tiles:  # mask px (i, j) covers working px [10 i, 10 i + 10)
        sub = mask[t.y // 10 : -(-(t.y + t.h) // 10), t.x // 10 : -(-(t.x + t.w) // 10)]
        assert (t.index in kept) == bool(sub.any())


def test_bad_geometry_is_an_input_error():
    with pytest.raises(LsrInputError):
        tile_grid((0, 10), 32, 4)
    with pytest.raises(LsrInputError):
        tile_grid((10, 10), 0, 4)
    with pytest.raises(LsrInputError):
        tiles_with_tissue(tile_grid((10, 10), 4, 0), np.zeros((0, 3), bool))
    with pytest.raises(LsrInputError, match="halo_px"):
        predict_slide(nn.Conv2d(3, 2, 3, padding=1), ArraySlide(tissue_image(8, 8), mpp=1.0))


# --- tissue, progress, cancel, prefetch, outputs ---------------------------------------------


class RecordingSlide(ArraySlide):
    """Records the thread and size of every region read."""

    def __init__(self, array, mpp, fail_at: int | None = None):
        super().__init__(array, mpp=mpp)
        self.calls: list[tuple[str, int, int]] = []
        self.fail_at = fail_at
        self.lock = threading.Lock()

    def _read_level(self, level, y, x, h, w):
        with self.lock:
            self.calls.append((threading.current_thread().name, h, w))
            if self.fail_at is not None and len(self.calls) > self.fail_at:
                raise OSError("simulated corrupt tile")
        return super()._read_level(level, y, x, h, w)


def half_tissue(h=96, w=192):
    img = np.full((h, w, 3), 255, np.uint8)
    img[:, w // 2 :] = tissue_image(h, w - w // 2)
    return img


def test_non_tissue_tiles_are_skipped_and_zero():
    model = eval_unet(depth=2)
    img = half_tissue()
    mask = np.zeros((96, 192), bool)
    mask[:, 96:] = img[:, 96:].min(axis=2) < 250
    seen = []
    prob = predict_slide(
        model, ArraySlide(img, mpp=1.0), working_mpp=1.0, tile=32, tissue_mask=mask,
        progress=lambda d, t: seen.append((d, t)),
    )  # fmt: skip
    assert seen[-1] == (9, 9)  # 3 rows x 3 tissue columns of 6
    assert (prob[:, :96] == 0).all()
    full = predict_slide(model, ArraySlide(img, mpp=1.0), working_mpp=1.0, tile=32)
    assert np.abs(prob[:, 96:] - full[:, 96:]).max() < 1e-6
    assert (full[:, :96] > 0).any()  # the network does not predict 0 on glass by itself


def test_auto_tissue_mask_finds_the_tissue_half():
    img = half_tissue(128, 256)
    mask = resolve_tissue_mask(ArraySlide(img, mpp=1.0), "auto")
    assert mask.shape == (128, 256)
    assert mask[:, 140:].mean() > 0.3 and mask[:, :120].mean() < 0.01
    with pytest.raises(LsrInputError):
        resolve_tissue_mask(ArraySlide(img, mpp=1.0), "otsu")


def test_progress_is_monotonic_and_reads_are_tile_sized_in_background_threads():
    model = eval_unet(depth=2)
    slide = RecordingSlide(tissue_image(100, 130), mpp=1.0)
    seen = []
    predict_slide(
        model, slide, working_mpp=1.0, tile=32, batch_size=2, read_threads=2,
        progress=lambda d, t: seen.append((d, t)),
    )  # fmt: skip
    total = 4 * 5
    assert seen[0] == (0, total) and seen[-1] == (total, total)
    assert all(a[0] < b[0] for a, b in itertools.pairwise(seen))
    assert slide.calls and all(name.startswith("lsr-read") for name, _, _ in slide.calls)
    assert max(h * w for _, h, w in slide.calls) <= (32 + 2 * 28) ** 2  # never the whole slide


def test_cancel_stops_at_the_next_batch():
    model = eval_unet(depth=2)
    slide = RecordingSlide(tissue_image(128, 128), mpp=1.0)
    cancel = threading.Event()
    seen = []

    def progress(done, total):
        seen.append(done)
        if done >= 2:
            cancel.set()

    with pytest.raises(InferenceCancelled):
        predict_slide(
            model, slide, working_mpp=1.0, tile=32, batch_size=2, prefetch=1,
            progress=progress, cancel=cancel,
        )  # fmt: skip
    assert seen == [0, 2]
    assert len(slide.calls) <= 2 * 2 * 2  # at most the batch being read and one ahead


@pytest.mark.parametrize("core_only", [True, False])
def test_cancel_stops_within_a_tile_and_leaves_the_model_as_it_was(core_only):
    """A small slide is one tile of seconds on a CPU; Cancel waited for it to end (the
    Compare widget's Cancel did nothing on a one-tile slide)."""
    model = eval_unet(depth=2)
    slide = RecordingSlide(tissue_image(96, 96), mpp=1.0)
    cancel = threading.Event()
    want = predict_slide(model, slide, working_mpp=1.0, tile=96, core_only=core_only)
    same = predict_slide(model, slide, working_mpp=1.0, tile=96, core_only=core_only,
                         cancel=cancel)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(same), np.asarray(want))  # hooks change nothing
    reached = []

    def click_cancel(module, inputs):  # the user clicks Cancel while the tile is computed
        reached.append(module)
        cancel.set()

    first = model.encoder[0]
    handle = first.register_forward_pre_hook(click_cancel)
    later = [m for m in model.modules() if m is not model and m is not first]
    calls = []
    probes = [m.register_forward_hook(lambda m, i, o: calls.append(m)) for m in later]
    with pytest.raises(InferenceCancelled, match="during tile 1 of 1"):
        predict_slide(model, slide, working_mpp=1.0, tile=96, core_only=core_only,
                      cancel=cancel)  # fmt: skip
    assert reached and len(calls) < len(later) // 2  # stopped early in the forward pass
    handle.remove()
    for p in probes:
        p.remove()
    assert all(not m._forward_pre_hooks for m in model.modules())  # lsr's hooks are gone


def test_a_ctrl_c_ends_the_read_under_way_at_its_next_chunk(monkeypatch):
    """A Ctrl-C (here: raised in the forward pass of the first batch) while the next batch
    is read: the thread pool's exit waited for that whole read (about a minute on a slide
    without a pyramid, read as one tile) before the process could end."""
    import lsr.slide

    class SlowSlide(RecordingSlide):
        def _read_level(self, level, y, x, h, w):
            time.sleep(0.002)
            return super()._read_level(level, y, x, h, w)

    monkeypatch.setattr(lsr.slide, "_CHUNK_SOURCE_PX", 64)  # 16 x 16 chunks per tile
    model = eval_unet(depth=2)
    img = np.repeat(np.repeat(tissue_image(128, 256), 4, axis=0), 4, axis=1)  # 0.25 µm/px
    kw = dict(working_mpp=1.0, tile=128, batch_size=1, prefetch=1)
    normal = SlowSlide(img, mpp=0.25)
    predict_slide(model, normal, **kw)
    per_tile = len(normal.calls) / 2  # two tiles of 128 x 128 working px

    def ctrl_c(module, inputs):
        time.sleep(0.05)  # the next batch's read is under way
        raise KeyboardInterrupt

    handle = model.encoder[0].register_forward_pre_hook(ctrl_c)
    slide = SlowSlide(img, mpp=0.25)
    with pytest.raises(KeyboardInterrupt):
        predict_slide(model, slide, **kw)
    handle.remove()
    time.sleep(0.2)  # a read still going on would add calls now
    assert per_tile >= 50 and len(slide.calls) < 1.5 * per_tile


def test_read_errors_in_the_background_thread_reach_the_caller():
    slide = RecordingSlide(tissue_image(128, 128), mpp=1.0, fail_at=3)
    with pytest.raises(LsrInputError, match="simulated corrupt tile"):
        predict_slide(eval_unet(depth=2), slide, working_mpp=1.0, tile=32)


def test_output_to_npy_path_and_to_a_given_array(tmp_path):
    model = eval_unet(depth=2)
    img = half_tissue()
    slide = ArraySlide(img, mpp=1.0)
    mask = np.zeros((96, 192), bool)
    mask[:, 100:] = True
    a = predict_slide(model, slide, working_mpp=1.0, tile=32, out=tmp_path / "p.npy")
    assert np.array_equal(np.load(tmp_path / "p.npy"), a)
    given = np.full((96, 192), 7.0, np.float32)  # stale values must not survive
    b = predict_slide(model, slide, working_mpp=1.0, tile=32, out=given, tissue_mask=mask)
    assert b is given and (b[:, :96] == 0).all() and np.abs(b[:, 96:] - a[:, 96:]).max() < 1e-6
    with pytest.raises(LsrInputError, match="shape"):
        predict_slide(model, slide, working_mpp=1.0, out=np.zeros((3, 3), np.float32))


def test_normalise_matches_the_model_input_contract():
    from lsr.model import normalise_rgb

    img = tissue_image(20, 30)
    ours = Normalise(INPUT_MEAN, INPUT_STD)(torch.from_numpy(img[None]))[0]
    assert torch.allclose(ours, normalise_rgb(img), atol=1e-6)
    with pytest.raises(LsrInputError):
        Normalise((0, 0, 0), (1, 0, 1))
