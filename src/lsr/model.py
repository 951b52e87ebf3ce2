"""The segmentation network: a small, configurable U-Net and its input contract.

Input: normalised RGB ``(B, 3, H, W)`` at working resolution (see :func:`normalise_rgb`);
output: ``(B, L, H, W)`` class logits, for any ``H, W`` (inputs not divisible by
``2**depth`` are padded by edge replication and the output is cropped back).

Why our own U-Net rather than MONAI's ``BasicUNet`` (docs/training.md): depth and width
are free parameters here (``BasicUNet`` has a fixed 4 levels), there is no torchvision or
MONAI dependency at inference time, the normalisation layer is a choice (GroupNorm by
default, see :data:`NORMS`), and the receptive field is known in closed form
(:meth:`UNet.halo_px`), which tiled inference needs to size its overlap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lsr.errors import LsrInputError

ARCHITECTURE = "lsr-unet"

#: Per-channel constants that map RGB in [0, 1] to roughly zero mean, unit spread for H&E
#: slides (bright, pink/purple). Recorded in every checkpoint; inference must use the same.
INPUT_MEAN: tuple[float, float, float] = (0.7, 0.55, 0.7)
INPUT_STD: tuple[float, float, float] = (0.2, 0.2, 0.2)

#: ``layer`` (default): LayerNorm over the channels of each pixel. Local (a pixel's output
#: depends only on its receptive field, so tiled whole-slide inference equals one-shot
#: inference), independent of the other blocks in the batch (the inter loss cannot be
#: satisfied through batch statistics; DDP needs no synchronisation), same in training and
#: inference. ``group``: GroupNorm (per-image spatial statistics: NOT local, a prediction
#: depends on the tile it is computed in); ``batch``: BatchNorm (couples the blocks of a
#: batch in training, local at inference); ``none``.
NORMS: tuple[str, ...] = ("layer", "group", "batch", "none")


class ChannelLayerNorm(nn.Module):
    """LayerNorm across channels at every pixel of a (B, C, H, W) tensor (affine)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        y = nn.functional.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight,
                                     self.bias, self.eps)  # fmt: skip
        return y.permute(0, 3, 1, 2)


def normalise_rgb(image: np.ndarray | Tensor) -> Tensor:
    """RGB ``(h, w, 3)`` uint8 (or float in [0, 1]) → normalised ``(3, h, w)`` float32.

    Also accepts a ``(3, h, w)`` float tensor already in [0, 1] (the augmentation output).
    """
    t = torch.as_tensor(image)
    t = t.float().div_(255.0) if t.dtype == torch.uint8 else t.float()
    if t.ndim != 3:
        raise ValueError(f"expected one RGB image, got shape {tuple(t.shape)}")
    if t.shape[-1] == 3 and t.shape[0] != 3:
        t = t.permute(2, 0, 1)
    mean = torch.tensor(INPUT_MEAN, dtype=t.dtype).view(3, 1, 1)
    std = torch.tensor(INPUT_STD, dtype=t.dtype).view(3, 1, 1)
    return ((t - mean) / std).contiguous()


def _channel_values(values: Any, name: str, positive: bool) -> tuple[float, float, float]:
    """Three finite per-channel numbers (RGB), > 0 when ``positive``; else LsrInputError."""
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or not all(math.isfinite(v) and (v > 0 or not positive) for v in out):
        need = "three numbers > 0" if positive else "three finite numbers"
        raise LsrInputError(f"bad {name} {values!r}: {need}, one per RGB channel")
    return out  # type: ignore[return-value]


def _norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "layer":
        return ChannelLayerNorm(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(channels, 8), channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.Identity()


class _DoubleConv(nn.Sequential):
    """Two 3×3 convolutions, each followed by normalisation and ReLU."""

    def __init__(self, c_in: int, c_out: int, norm: str):
        bias = norm == "none"
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias),
            _norm_layer(norm, c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=bias),
            _norm_layer(norm, c_out),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """U-Net: ``depth`` down-samplings, ``width`` channels at full resolution, doubling.

    Encoder level ``i`` has ``width * 2**i`` channels; the bottleneck ``width * 2**depth``.
    Down-sampling is 2×2 max-pooling, up-sampling a 2×2 stride-2 transposed convolution,
    skips are concatenated. The head is a 1×1 convolution to ``num_classes`` logits.
    """

    def __init__(
        self,
        num_classes: int = 2,
        width: int = 16,
        depth: int = 4,
        norm: str = "layer",
        in_channels: int = 3,
        input_mean: Sequence[float] = INPUT_MEAN,
        input_std: Sequence[float] = INPUT_STD,
    ):
        super().__init__()
        if norm not in NORMS:
            raise LsrInputError(f"unknown norm '{norm}' (choose one of {', '.join(NORMS)})")
        if width < 1 or depth < 0 or num_classes < 1:
            raise LsrInputError(
                f"bad network size: width={width}, depth={depth}, classes={num_classes}"
            )
        self.num_classes = int(num_classes)
        self.width = int(width)
        self.depth = int(depth)
        self.norm = norm
        self.in_channels = int(in_channels)
        # the input normalisation the weights were trained with (recorded in checkpoints;
        # inference takes it from here, training uses normalise_rgb's INPUT_MEAN/INPUT_STD)
        self.input_mean = _channel_values(input_mean, "input_mean", positive=False)
        self.input_std = _channel_values(input_std, "input_std", positive=True)
        # what the run trained at, set by load() from the checkpoint (None/() when unknown):
        # predict_slide's defaults, so a loaded network is run as it was trained
        self.working_mpp: float | None = None
        self.class_names: tuple[str, ...] = ()
        chans = [width * 2**i for i in range(depth + 1)]
        self.encoder = nn.ModuleList(
            [_DoubleConv(in_channels, chans[0], norm)]
            + [_DoubleConv(chans[i - 1], chans[i], norm) for i in range(1, depth + 1)]
        )
        self.upsample = nn.ModuleList(
            nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2) for i in range(depth)
        )
        self.decoder = nn.ModuleList(
            _DoubleConv(2 * chans[i], chans[i], norm) for i in range(depth)
        )
        self.head = nn.Conv2d(chans[0], num_classes, 1)

    # ------------------------------------------------------------------ geometry
    @property
    def multiple(self) -> int:
        """Inputs whose sides are multiples of this need no padding (``2**depth``)."""
        return 2**self.depth

    @property
    def halo_px(self) -> int:
        """One-sided reach of the receptive field, in working-resolution pixels.

        An output pixel depends only on inputs within ``halo_px`` of it (through the
        convolutions; see the note on GroupNorm below), so tiled inference with an overlap
        of ``halo_px`` on each side reproduces whole-image predictions away from the slide
        border. Per level ``i`` (pixel pitch ``2**i``): two 3×3 convs in the encoder (1 px
        each at that pitch), the pool (1), the up-sampling (1) and two convs in the decoder;
        plus two convs at the bottleneck: ``6 (2**depth − 1) + 2**(depth + 1)``.

        With ``norm="group"`` the normalisation statistics are computed over the whole
        input, so predictions also depend (weakly) on the tile's content as a whole; infer
        with tiles of about the training input size to match training conditions.
        """
        return 6 * (2**self.depth - 1) + 2 ** (self.depth + 1)

    def receptive_field(self) -> int:
        """Side of the (conservative) receptive field in pixels: ``2 * halo_px + 1``."""
        return 2 * self.halo_px + 1

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` normalised RGB → ``(B, L, H, W)`` logits."""
        h, w = x.shape[-2:]
        m = self.multiple
        pad_h, pad_w = (-h) % m, (-w) % m
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        skips = []
        for i, block in enumerate(self.encoder):
            if i > 0:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for i in reversed(range(self.depth)):
            x = self.upsample[i](x)
            x = self.decoder[i](torch.cat([skips[i], x], dim=1))
        logits = self.head(x)
        if pad_h or pad_w:
            logits = logits[..., :h, :w]
        return logits

    # ------------------------------------------------------------------ set-up
    @torch.no_grad()
    def init_prior(self, prior: Sequence[float], head_scale: float = 0.1) -> None:
        """Start from predicting ``prior`` (L,) class fractions everywhere.

        The head's bias is set to ``log(prior)`` (softmax of it is ``prior``) and its weights
        shrunk by ``head_scale`` so that features move the start only a little. A prior of
        exactly 0 is clipped to 1e-4 (a logit of −inf would have no gradient).
        """
        p = np.clip(np.asarray(prior, dtype=np.float64), 1e-4, 1.0)
        if p.shape != (self.num_classes,):
            raise LsrInputError(f"prior must have {self.num_classes} values, got {p.shape}")
        p = p / p.sum()
        self.head.bias.copy_(torch.as_tensor(np.log(p), dtype=self.head.bias.dtype))
        self.head.weight.mul_(head_scale)

    def config(self) -> dict[str, Any]:
        """What :func:`build` needs to rebuild this network (stored in checkpoints)."""
        return {
            "architecture": ARCHITECTURE,
            "num_classes": self.num_classes,
            "width": self.width,
            "depth": self.depth,
            "norm": self.norm,
            "in_channels": self.in_channels,
            "input_mean": list(self.input_mean),
            "input_std": list(self.input_std),
            "halo_px": self.halo_px,
        }


def build(config: dict[str, Any]) -> UNet:
    """Rebuild a network from :meth:`UNet.config` (raises :class:`LsrInputError` if foreign)."""
    if config.get("architecture") != ARCHITECTURE:
        raise LsrInputError(f"unknown network architecture {config.get('architecture')!r}")
    try:
        return UNet(
            num_classes=int(config["num_classes"]),
            width=int(config["width"]),
            depth=int(config["depth"]),
            norm=str(config["norm"]),
            in_channels=int(config.get("in_channels", 3)),
            input_mean=config.get("input_mean", INPUT_MEAN),
            input_std=config.get("input_std", INPUT_STD),
        )
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, LsrInputError):
            raise
        raise LsrInputError(f"malformed network description ({err})") from None


def _first_mismatch(message: str) -> str:
    """The first line that names a tensor in PyTorch's ``load_state_dict`` error (which
    lists every mismatch on dozens of lines), with how many more there are."""
    lines = [ln.strip().rstrip(".") for ln in message.splitlines()[1:] if ln.strip()]
    if not lines:
        return message.strip()
    more = f"; and {len(lines) - 1} more" if len(lines) > 1 else ""
    return lines[0] + more


def load(
    path: str | PathLike[str], device: str | torch.device = "cpu"
) -> tuple[UNet, dict[str, Any]]:
    """Load a trained network for inference in one call: ``(model in eval mode, metadata)``.

    ``path`` is a training output folder (its latest checkpoint is used), a checkpoint
    folder, or the ``model.safetensors`` inside one. The model carries the run's
    ``working_mpp`` and ``class_names``, which :func:`lsr.infer.predict_slide` defaults to.
    ``metadata`` holds the training config, the count table (dict), loss, distance, seed,
    step, versions and ``model`` (see :meth:`UNet.config`). Weights are read with
    safetensors: nothing is unpickled.
    """
    from lsr.checkpoint import METADATA, MODEL, read_model

    state, meta = read_model(path)
    folder = Path(meta["path"])
    try:
        model = build(meta["model"])
    except LsrInputError as err:  # the description is checkpoint.json's "model"
        raise LsrInputError(f'{err.problem} (its "model")', folder / METADATA) from None
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise LsrInputError(
            f"the weights do not match the network its {METADATA} describes "
            f"({_first_mismatch(str(err))})",
            folder / MODEL,
        ) from None
    trained = meta.get("working_mpp")
    if isinstance(trained, (int, float)) and not isinstance(trained, bool) and trained > 0:
        model.working_mpp = float(trained)
    names = meta.get("class_names")
    if isinstance(names, list) and len(names) == model.num_classes:
        model.class_names = tuple(str(n) for n in names)
    model.to(device).eval()
    return model, meta
