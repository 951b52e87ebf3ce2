"""Tiled whole-slide inference: the loop that joins tiles (:mod:`lsr.tiling`) and the network.

A slide is predicted at the working resolution in large tiles, each read with a halo that
covers the network's receptive field; only each tile's core is kept, so the result equals
one pass of the network over the whole (white-padded) slide, with no seams and
no blending (see :func:`predict_array` for that one-shot pass and docs/inference.md).
The halo is paid on every tile, so by default (``tile="auto"``) the tiles are as large as an
activation-memory budget allows (:func:`resolve_tile`: 1 GiB on CPU, half the free memory on
CUDA), which keeps memory bounded by the budget and the halo's share of compute small; and
for an :class:`lsr.model.UNet` only the encoder sees the halo (:func:`core_forward` runs
the decoder on the core), so a tile costs little more than its core.
Tiles are read by a background thread while the network runs (prefetching), stacked into
batches, moved to the device as uint8 (4× less traffic than float) and normalised there.
Tiles without tissue are skipped (probability 0). The output is written tile by tile into a
memory-mapped array, so memory is bounded by the tile size, never by the slide size.
"""

from __future__ import annotations

import collections
import contextlib
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from os import PathLike
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lsr.errors import LsrInputError
from lsr.slide import WORKING_MPP, Slide
from lsr.tiling import Tile, TileGrid, auto_tile, round_up, tile_grid, tiles_with_tissue

#: Size (longer side, px) of the thumbnail on which ``tissue_mask="auto"`` is computed.
TISSUE_THUMBNAIL_PX = 2048

#: Activation memory ``tile="auto"`` may use per batch on CPU and MPS (MiB).
CPU_TILE_MEMORY_MIB = 1024.0
#: Share of the free CUDA memory ``tile="auto"`` may use per batch.
CUDA_MEMORY_FRACTION = 0.5
#: Peak bytes per input px of one :class:`lsr.model.UNet` forward on CPU: ``a × width + b``
#: (uint8 tile → probabilities). Measured as the peak RSS rise of one 640–1824 px tile
#: (torch 2.13, 1–2 threads): the plain forward, width 4/8/16/32 → 172/253–310/490–515/1053
#: B/px with LayerNorm or BatchNorm, 637 with GroupNorm (width 16); :func:`core_forward`
#: (decoder on the core only) → 109/174–181/262–270/446.
UNET_BYTES_PER_PX = {"core": (16.0, 64.0), "group": (40.0, 64.0), "default": (32.0, 64.0)}

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(tiles_done, tiles_total)`` after each batch (and once at the start)."""


class InferenceCancelled(RuntimeError):
    """Raised by :func:`predict_slide` when its ``cancel`` event was set."""


# --- the model's input contract -----------------------------------------------------------


class Normalise:
    """uint8 RGB ``(B, H, W, 3)`` on any device → normalised float32 ``(B, 3, H, W)``.

    ``(x / 255 - mean) / std`` per channel, the same as :func:`lsr.model.normalise_rgb`.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise LsrInputError(f"bad input normalisation mean={mean!r} std={std!r}")

    def __call__(self, rgb: Tensor) -> Tensor:
        # stays channels-last in memory (a view of the HWC tiles): oneDNN convolutions on CPU
        # are as fast or faster that way than with a contiguous NCHW copy
        x = rgb.permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return x.sub_(mean).div_(std)

    def __repr__(self) -> str:
        return f"Normalise(mean={self.mean}, std={self.std})"


def model_normalise(model: nn.Module) -> Normalise:
    """The input normalisation the model was trained with: a :class:`lsr.model.UNet`'s own
    (as recorded in its checkpoint); lsr's defaults for another module."""
    from lsr import model as lsr_model

    return Normalise(
        getattr(model, "input_mean", lsr_model.INPUT_MEAN),
        getattr(model, "input_std", lsr_model.INPUT_STD),
    )


def model_halo(model: nn.Module) -> int:
    """Receptive-field reach (px on each side) the model declares as ``halo_px``."""
    halo = getattr(model, "halo_px", None)
    if halo is None:
        raise LsrInputError(
            f"{type(model).__name__} does not declare its receptive field (halo_px); "
            "pass halo= explicitly"
        )
    return int(halo)


def model_multiple(model: nn.Module) -> int:
    """Down-sampling factor of the model (``multiple``, 1 when not declared)."""
    return max(1, int(getattr(model, "multiple", 1)))


def activation_bytes_per_px(
    model: nn.Module,
    device: torch.device | str = "cpu",
    probe_px: int = 256,
    *,
    halo: int | None = None,
    core_only: bool = False,
) -> float:
    """Peak memory of one forward pass (uint8 tile → probabilities) per input px, in bytes.

    ``core_only``: the pass is :func:`core_forward` when it applies to ``model`` and
    ``halo`` (default the model's), which needs about half the memory of the plain forward.
    CUDA: measured by a probe forward of a ``probe_px``² tile (peak allocated memory).
    CPU/MPS: for an :class:`lsr.model.UNet` (or any model with an integer ``width``) the
    calibrated :data:`UNET_BYTES_PER_PX`; other modules: the sum of every layer's output on
    a probe tile (an upper bound: it assumes nothing is freed).
    """
    dev = resolve_device(device)
    if core_only:
        halo = round_up(model_halo(model) if halo is None else halo, model_multiple(model))
        core_only = _core_forward_applies(model, halo)
    if dev.type == "cuda":
        return _cuda_probe(model, dev, probe_px, halo if core_only else None)
    width = getattr(model, "width", None)
    if isinstance(width, int) and width > 0:
        kind = "core" if core_only else str(getattr(model, "norm", ""))
        a, b = UNET_BYTES_PER_PX.get(kind, UNET_BYTES_PER_PX["default"])
        return a * width + b
    return _hook_probe(model, probe_px)


def _probe_input(model: nn.Module, probe_px: int, device: torch.device) -> Tensor:
    side = round_up(max(int(probe_px), 1), model_multiple(model))
    rgb = torch.full((1, side, side, 3), 200, dtype=torch.uint8, device=device)
    return model_normalise(model)(rgb)


def _hook_probe(model: nn.Module, probe_px: int) -> float:
    """Bytes per px of the input, the normalised input and every distinct layer output."""
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    seen: dict[int, Tensor] = {}  # kept alive, so that no address is reused by another

    def record(_mod: nn.Module, _inp: Any, out: Any) -> None:
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, Tensor):
                seen[t.data_ptr()] = t  # in-place layers return their input: counted once

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(record) for m in leaves]
    try:
        with torch.inference_mode():
            x = _probe_input(model, probe_px, dev)
            logits = model.eval()(x)
    finally:
        for hdl in handles:
            hdl.remove()
    px = x.shape[-2] * x.shape[-1]
    total = 3 * px + x.numel() * x.element_size() + logits.numel() * logits.element_size()
    return (total + sum(t.numel() * t.element_size() for t in seen.values())) / px


def _cuda_probe(model: nn.Module, dev: torch.device, probe_px: int, halo: int | None) -> float:
    """Peak CUDA memory (above what was allocated before) of a probe forward, per input px.

    ``halo``: probe :func:`core_forward` on a tile with this halo (None: the plain forward).
    """
    model.eval().to(dev)
    side = round_up(max(probe_px, 512), model_multiple(model))
    forward: Callable[[Tensor], Tensor] | None = model
    if halo is not None:
        side += 2 * halo
        forward = core_forward(model, halo, (side, side))
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    with torch.inference_mode():
        x = _probe_input(model, side, dev)
        _class_probability((forward or model)(x), 0)
    torch.cuda.synchronize(dev)
    peak = torch.cuda.max_memory_allocated(dev) - base
    return max(peak, 1) / (x.shape[-2] * x.shape[-1])


def tile_memory_budget(device: torch.device | str, memory_mib: float | None = None) -> float:
    """Bytes one batch of tiles may use: ``memory_mib``, else 1 GiB on CPU/MPS or
    :data:`CUDA_MEMORY_FRACTION` of the device's free memory on CUDA."""
    if memory_mib is not None:
        if not memory_mib > 0:
            raise LsrInputError(f"tile memory must be > 0 MiB, got {memory_mib}")
        return float(memory_mib) * 2**20
    dev = resolve_device(device)
    if dev.type == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
        return CUDA_MEMORY_FRACTION * free
    return CPU_TILE_MEMORY_MIB * 2**20


def resolve_tile(
    model: nn.Module,
    shape: tuple[int, int],
    tile: int | str = "auto",
    *,
    halo: int | None = None,
    batch_size: int = 1,
    device: torch.device | str = "cpu",
    memory_mib: float | None = None,
    core_only: bool = True,
) -> int:
    """Core side (working px) for an image of ``shape``: ``tile`` itself, or for ``"auto"``
    the cheapest balanced tile whose batch fits :func:`tile_memory_budget` (see
    :func:`lsr.tiling.auto_tile`) with the memory of the forward :func:`predict_slide` runs
    (``core_only``: :func:`core_forward` where it applies)."""
    if isinstance(tile, str):
        if tile.strip().lower() != "auto":
            raise LsrInputError(f"tile must be a number of px or 'auto', got {tile!r}")
        halo = model_halo(model) if halo is None else int(halo)
        bpp = activation_bytes_per_px(model, device, halo=halo, core_only=core_only)
        return auto_tile(
            shape, halo, model_multiple(model),
            bytes_per_px=bpp,
            budget_bytes=tile_memory_budget(device, memory_mib),
            batch_size=batch_size,
        )  # fmt: skip
    if int(tile) < 1:
        raise LsrInputError(f"tile must be ≥ 1 px, got {tile}")
    return int(tile)


def _model_class(model: nn.Module, class_index: int | None) -> int:
    """``class_index``, or by default the network's cancer class (its class names, set by
    :func:`lsr.model.load`), else 0."""
    if class_index is not None:
        return int(class_index)
    return cancer_class_index({"class_names": list(getattr(model, "class_names", ()))})


def _class_probability(logits: Tensor, class_index: int) -> Tensor:
    """(B, L, H, W) logits → (B, H, W) probability of one class (sigmoid when L = 1)."""
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0].float())
    if not 0 <= class_index < logits.shape[1]:
        raise LsrInputError(f"class_index {class_index} out of range for {logits.shape[1]} classes")
    return torch.softmax(logits.float(), dim=1)[:, class_index]


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch device from a name (``auto``, ``cpu``, ``cuda``, ``mps``) or a device."""
    if isinstance(device, torch.device):
        return device
    from lsr.device import select_device

    return select_device(device)


# --- computing only the core of a tile -----------------------------------------------------


def _decoder_margins(depth: int) -> tuple[list[int], list[int]]:
    """(m, n): px beyond the core, at each level's own pitch, that the decoder must produce.

    ``m[L]``: decoder output of level L (m[0] = 0: the core itself); ``n[L] = m[L] + 2``:
    its input (two 3×3 convolutions); ``m[L + 1] = ceil(n[L] / 2)``: a 2×2 stride-2
    up-sampling doubles the pitch.
    """
    m, n = [0] * (depth + 1), [0] * depth
    for level in range(depth):
        n[level] = m[level] + 2
        m[level + 1] = -(-n[level] // 2)
    return m, n


def _core_forward_applies(model: nn.Module, halo: int) -> bool:
    """Whether :func:`core_forward` reproduces ``model`` with this halo (px, level 0)."""
    from lsr.model import UNet

    if not isinstance(model, UNet) or type(model).forward is not UNet.forward:
        return False
    depth = model.depth
    if model.norm == "group" or halo % 2**depth:
        return False
    m, n = _decoder_margins(depth)
    return all((halo >> lv) >= n[lv] for lv in range(depth)) and (halo >> depth) >= m[depth]


def core_forward(
    model: nn.Module, halo: int, read_shape: tuple[int, int]
) -> Callable[[Tensor], Tensor] | None:
    """A forward pass of an :class:`lsr.model.UNet` that returns only the tile's core.

    For inputs of ``read_shape`` (core + ``halo`` on each side) the encoder runs on the whole
    tile (the halo is its context), but the decoder, about two thirds of the compute, runs
    only on the core plus the few px its own convolutions need (:func:`_decoder_margins`),
    so the halo costs encoder time only (and about half the memory). Logits
    ``(B, L, core_h, core_w)`` equal the core of ``model(x)`` (same values; each crop keeps
    the receptive field of what follows). None when this does not apply: another module, a
    GroupNorm network (its statistics depend on the region computed), a halo too small for
    the decoder's margins or a geometry off the ``2**depth`` lattice.
    """
    if not _core_forward_applies(model, halo):
        return None
    depth = model.depth
    if any(r % 2**depth or r <= 2 * halo for r in read_shape):
        return None
    m, n = _decoder_margins(depth)
    core = (read_shape[0] - 2 * halo, read_shape[1] - 2 * halo)

    def box(level: int, margin: int) -> tuple[Any, slice, slice]:
        """Slices of a level's feature map: the core ± ``margin`` px of that level."""
        c0 = (halo >> level) - margin
        return (Ellipsis, slice(c0, c0 + (core[0] >> level) + 2 * margin),
                slice(c0, c0 + (core[1] >> level) + 2 * margin))  # fmt: skip

    def forward(x: Tensor) -> Tensor:
        skips: list[Tensor | None] = []
        for i, block in enumerate(model.encoder):
            if i > 0:
                x = torch.nn.functional.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        x = x[box(depth, m[depth])]
        for level in reversed(range(depth)):
            up = model.upsample[level](x)  # core ± 2 m[level + 1] at this level
            off = 2 * m[level + 1] - n[level]
            h, w = (core[0] >> level) + 2 * n[level], (core[1] >> level) + 2 * n[level]
            skip = skips[level]
            assert skip is not None
            skips[level] = None  # free the full-size skip as soon as it is used
            x = torch.cat([skip[box(level, n[level])], up[..., off : off + h, off : off + w]], 1)
            del up, skip
            x = model.decoder[level](x)[..., 2:-2, 2:-2]  # the border px saw zero padding
        return model.head(x)

    return forward


# --- one-shot reference -------------------------------------------------------------------


@torch.inference_mode()
def predict_array(
    model: nn.Module,
    image: np.ndarray,
    *,
    halo: int | None = None,
    class_index: int | None = None,
    normalise: Normalise | Callable[[Tensor], Tensor] | None = None,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """One pass of ``model`` over an (H, W, 3) uint8 image in memory → (H, W) float32.

    The image is padded with white (255, as slides are read beyond their edge) by ``halo``
    rounded up to the model's ``multiple`` on every side, and to a multiple on the bottom and
    right; the prediction is cropped back. This is what :func:`predict_slide` reproduces
    tile by tile; use it for regions that fit in memory.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise LsrInputError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    dev = resolve_device(device)
    model.eval().to(dev)
    class_index = _model_class(model, class_index)
    norm = normalise if normalise is not None else model_normalise(model)
    m = model_multiple(model)
    pad = round_up(model_halo(model) if halo is None else halo, m)
    h, w = image.shape[:2]
    ph, pw = round_up(h + 2 * pad, m) - h - pad, round_up(w + 2 * pad, m) - w - pad
    padded = np.pad(image, ((pad, ph), (pad, pw), (0, 0)), constant_values=255)
    x = norm(torch.from_numpy(padded[None]).to(dev))
    prob = _class_probability(model(x), class_index)[0, pad : pad + h, pad : pad + w]
    return prob.cpu().numpy().astype(np.float32)


# --- output arrays ------------------------------------------------------------------------


def _output_array(out: Any, shape: tuple[int, int]) -> tuple[Any, bool]:
    """(array to write into, whether it is freshly zeroed)."""
    if out is None:
        # an unlinked temporary file: the mapping keeps its own handle, freed when unmapped
        with tempfile.TemporaryFile(prefix="lsr-prob-") as fh:
            return np.memmap(fh, dtype=np.float32, mode="w+", shape=shape), True
    if isinstance(out, (str, PathLike)):
        return np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=shape), True
    if tuple(out.shape) != tuple(shape):
        raise LsrInputError(f"output array has shape {tuple(out.shape)}, the slide needs {shape}")
    return out, False


# --- the tiled loop -----------------------------------------------------------------------


def _read_batch(
    slide: Slide,
    tiles: list[Tile],
    working_mpp: float,
    pin: bool,
    stop: Callable[[], bool] | None = None,
) -> Tensor:
    """(B, h, w, 3) uint8 tensor of the tiles' read boxes (white beyond the slide); when
    ``stop`` says True the reads end early and the batch is not to be used."""
    rh, rw = tiles[0].read_h, tiles[0].read_w
    batch = torch.empty((len(tiles), rh, rw, 3), dtype=torch.uint8, pin_memory=pin)
    view = batch.numpy()
    for i, t in enumerate(tiles):
        view[i] = slide.read_working(*t.read_box, working_mpp=working_mpp, stop=stop)
    return batch


def resolve_tissue_mask(
    slide: Slide, tissue_mask: Any, thumbnail_px: int = TISSUE_THUMBNAIL_PX
) -> np.ndarray | None:
    """``None`` (every tile), ``"auto"`` (Otsu on a thumbnail, :mod:`lsr.tissue`) or a mask.

    A given mask is a 2-D bool array covering the whole slide at any resolution.
    """
    if tissue_mask is None:
        return None
    if isinstance(tissue_mask, str):
        if tissue_mask != "auto":
            raise LsrInputError(
                f"tissue_mask must be None, 'auto' or an array, got {tissue_mask!r}"
            )
        from lsr.tissue import tissue_mask as compute_mask

        return compute_mask(slide.thumbnail(thumbnail_px))
    return np.asarray(tissue_mask, dtype=bool)


def predict_slide(
    model: nn.Module,
    slide: Slide,
    *,
    working_mpp: float | None = None,
    tile: int | str = "auto",
    halo: int | None = None,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    tile_memory_mib: float | None = None,
    tissue_mask: Any = None,
    normalise: Normalise | Callable[[Tensor], Tensor] | None = None,
    class_index: int | None = None,
    out: Any = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    prefetch: int = 2,
    read_threads: int = 1,
    core_only: bool = True,
    timings: dict[str, float] | None = None,
) -> Any:
    """Probability of class ``class_index`` over the whole slide at ``working_mpp``.

    ``working_mpp`` (µm/px) defaults to the one the network was trained at (recorded by
    :func:`lsr.model.load`), else :data:`WORKING_MPP`: a network run at another scale sees
    tissue at another size. ``class_index`` defaults to the network's cancer class
    (:func:`cancer_class_index` of its class names), else 0.

    Returns an (H, W) float32 array in [0, 1] of shape ``slide.working_shape(working_mpp)``
    (a memory map: a temporary file, or ``out`` when it is a path to a ``.npy``; ``out`` may
    also be an array-like such as a zarr array to fill). ``model`` maps normalised RGB
    ``(B, 3, h, w)`` to logits ``(B, L, h, w)``; it is put in eval mode on ``device``.

    ``tile``: core side in working px, or ``"auto"``: the cheapest balanced tile whose
    batch fits ``tile_memory_mib`` of activations (default 1 GiB on CPU, half the free
    memory on CUDA; :func:`resolve_tile`); ``halo``: px of context per side (default the
    model's ``halo_px``); both rounded up to the model's ``multiple``. ``tissue_mask``: None, "auto"
    or a 2-D bool mask of the whole slide; tiles without tissue are skipped and stay 0.
    ``normalise``: uint8 (B, h, w, 3) tensor → float (B, 3, h, w); default the model's.
    ``progress(done, total)`` is called per batch; setting ``cancel`` stops at the next batch,
    or at the next layer of the one being computed, with :class:`InferenceCancelled`.
    ``prefetch`` batches are read ahead by ``read_threads`` background threads. ``core_only``:
    for an :class:`lsr.model.UNet`, run its decoder on the tiles' cores only
    (:func:`core_forward`: same values, the halo then costs encoder
    time only); False always runs the plain forward. ``timings`` (if given) receives
    ``read_wait_s``, ``forward_s``, ``write_s``, ``total_s``, ``tiles``, ``tiles_total``,
    ``overhead`` (input px per output px), ``tile_px`` (the tile used, e.g. chosen by
    ``"auto"``), ``core_h_px`` and ``core_w_px`` (its balanced cores), ``halo_px`` and
    ``core_only`` (1 when :func:`core_forward` was used).
    """
    t_start = time.perf_counter()
    if batch_size < 1 or prefetch < 1 or read_threads < 1:
        raise LsrInputError("batch_size, prefetch and read_threads must be ≥ 1")
    dev = resolve_device(device)
    model.eval().to(dev)
    if working_mpp is None:
        working_mpp = getattr(model, "working_mpp", None) or WORKING_MPP
    class_index = _model_class(model, class_index)
    norm = normalise if normalise is not None else model_normalise(model)
    halo = model_halo(model) if halo is None else int(halo)
    shape = slide.working_shape(working_mpp)
    tile = resolve_tile(
        model, shape, tile, halo=halo, batch_size=batch_size, device=dev,
        memory_mib=tile_memory_mib, core_only=core_only,
    )  # fmt: skip
    grid: TileGrid = tile_grid(shape, tile, halo, model_multiple(model))
    mask = resolve_tissue_mask(slide, tissue_mask)
    todo = list(grid.tiles) if mask is None else tiles_with_tissue(grid, mask)
    result, zeroed = _output_array(out, shape)
    if not zeroed:
        to_predict = {t.index for t in todo}
        for t in grid.tiles:
            if t.index not in to_predict:
                result[t.core] = 0.0
    batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    total, done = len(todo), 0
    stats = {"read_wait_s": 0.0, "forward_s": 0.0, "write_s": 0.0}
    if progress is not None:
        progress(0, total)
    pin = dev.type == "cuda"
    fast = core_forward(model, grid.halo, grid.read_shape) if core_only else None
    forward: Callable[[Tensor], Tensor] = fast or model

    def kept(t: Tile) -> tuple[slice, slice]:  # the core in the network's output
        return (slice(0, t.h), slice(0, t.w)) if fast is not None else t.core_in_output

    pending: collections.deque[tuple[list[Tile], Future[Tensor]]] = collections.deque()
    gave_up = threading.Event()  # set when the loop ends early (an error, Ctrl-C, cancel)

    def stop_reading() -> bool:
        return gave_up.is_set() or (cancel is not None and cancel.is_set())

    with (
        ThreadPoolExecutor(read_threads, thread_name_prefix="lsr-read") as pool,
        _cancel_within(model, cancel, lambda: f"cancelled during tile {done + 1} of {total}"),
    ):
        try:
            queue = iter(batches)

            def refill() -> None:
                while len(pending) < prefetch:
                    nxt = next(queue, None)
                    if nxt is None:
                        return
                    pending.append(
                        (nxt, pool.submit(_read_batch, slide, nxt, working_mpp, pin, stop_reading))
                    )

            refill()
            while pending:
                if cancel is not None and cancel.is_set():
                    raise InferenceCancelled(f"cancelled after {done} of {total} tiles")
                tiles, fut = pending.popleft()
                t0 = time.perf_counter()
                rgb = fut.result()
                if cancel is not None and cancel.is_set():  # (the read may have ended early)
                    raise InferenceCancelled(f"cancelled after {done} of {total} tiles")
                refill()
                t1 = time.perf_counter()
                with torch.inference_mode():
                    x = norm(rgb.to(dev, non_blocking=pin))
                    prob = _class_probability(forward(x), class_index)
                    prob = prob.cpu().numpy()
                t2 = time.perf_counter()
                for i, t in enumerate(tiles):
                    result[t.core] = prob[i][kept(t)]
                t3 = time.perf_counter()
                stats["read_wait_s"] += t1 - t0
                stats["forward_s"] += t2 - t1
                stats["write_s"] += t3 - t2
                done += len(tiles)
                if progress is not None:
                    progress(done, total)
        except BaseException:
            gave_up.set()  # the read under way ends at its next chunk: the pool's exit
            raise  # waits for it, and a Ctrl-C on a slide without a pyramid waited ~1 min
        finally:
            for _, fut in pending:
                fut.cancel()
    if isinstance(result, np.memmap):
        result.flush()
    if timings is not None:
        timings.update(stats)
        timings.update(
            total_s=time.perf_counter() - t_start,
            tiles=float(total),
            tiles_total=float(len(grid)),
            overhead=grid.overhead * total / max(len(grid), 1),
            tile_px=float(tile),
            core_h_px=float(grid.tile_h),
            core_w_px=float(grid.tile_w),
            halo_px=float(grid.halo),
            core_only=float(fast is not None),
        )
    return result


@contextlib.contextmanager
def _cancel_within(
    model: nn.Module, cancel: threading.Event | None, message: Callable[[], str]
) -> Iterator[None]:
    """While inside, ``cancel`` also stops a tile's forward pass, at its next layer.

    Why: a tile of the automatic size takes seconds on a CPU (a small slide is one tile),
    and Cancel waited for it to end. A pre-hook on every sub-module costs microseconds per
    tile; the hooks are removed on the way out.
    """
    if cancel is None:
        yield
        return

    def check(_module: nn.Module, _inputs: Any) -> None:
        if cancel.is_set():
            raise InferenceCancelled(message())

    handles = [m.register_forward_pre_hook(check) for m in model.modules() if m is not model]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def cancer_class_index(metadata: dict[str, Any] | None) -> int:
    """Index of the "cancer" class in the model's ``class_names`` (0 when not named)."""
    from lsr.counttable import cancer_index

    return cancer_index((metadata or {}).get("class_names") or [])
