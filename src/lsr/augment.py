"""Training augmentation on tensors: flips, 90° rotations, mild stain and colour jitter.

Everything works on one RGB image ``(3, h, w)`` float in [0, 1] (before normalisation),
draws its random numbers from a ``torch.Generator`` it is handed (so the result is a pure
function of the seed: the dataset seeds it from run seed + draw key), and never changes the
block's label: flips and 90° rotations keep the class fractions of a block, and the
colour jitter is mild enough not to turn stroma into tumour.

Stain jitter follows Tellez et al. (2018): convert to optical density, unmix into
haematoxylin / eosin / DAB with the Ruifrok-Johnston matrix, scale and shift each stain
channel slightly, mix back. No torchvision.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

# Ruifrok & Johnston (2001) stain vectors (rows: H, E, DAB), as in skimage.color.rgb_from_hed.
_RGB_FROM_HED = torch.tensor(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64
)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)
_OD_EPS = 1.0 / 255.0


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations to apply and how strong (all jitters are ± fractions)."""

    flips: bool = True
    rotate90: bool = True
    hed_scale: float = 0.05  # stain amount × U(1 − s, 1 + s) per stain channel
    hed_shift: float = 0.01  # stain optical density + U(−s, s)
    brightness: float = 0.05  # RGB × U(1 − b, 1 + b), one factor for all channels
    gamma: float = 0.05  # per-channel gamma exp(U(−g, g))

    def to_dict(self) -> dict[str, float | bool]:
        return asdict(self)

    @property
    def enabled(self) -> bool:
        return bool(
            self.flips
            or self.rotate90
            or self.hed_scale
            or self.hed_shift
            or self.brightness
            or self.gamma
        )


NO_AUGMENT = AugmentConfig(False, False, 0.0, 0.0, 0.0, 0.0)


def _uniform(gen: torch.Generator, n: int, half_width: float) -> Tensor:
    return (torch.rand(n, generator=gen, dtype=torch.float64) * 2.0 - 1.0) * half_width


def hed_jitter(image: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """Scale/shift stain concentrations: ``image`` (3, h, w) in [0, 1]; ``scale``, ``shift`` (3,).

    ``scale = 1, shift = 0`` returns the image (up to clipping of pure black at 1/255).
    The whole change is linear in optical density, ``od' = A od + b`` with the 3×3 ``A``
    built once per call in float64, so the per-pixel work is one small matmul in float32.
    """
    a = _RGB_FROM_HED.T @ torch.diag(scale.double()) @ _HED_FROM_RGB.T  # (3, 3)
    b = _RGB_FROM_HED.T @ shift.double()  # (3,)
    od = -torch.log(image.float().clamp(min=_OD_EPS, max=1.0)).reshape(3, -1)
    od2 = torch.addmm(b.float().view(3, 1), a.float(), od)
    return torch.exp(-od2).reshape(image.shape).clamp(0.0, 1.0).to(image.dtype)


def augment(image: Tensor, gen: torch.Generator, cfg: AugmentConfig = AugmentConfig()) -> Tensor:
    """Random flips, rotation and colour jitter of ``image`` (3, h, w) float in [0, 1].

    The spatial transforms keep the image centred, so a central block inside a context
    margin stays the central block. Non-square images are rotated by 0° or 180° only.
    """
    out = image
    if cfg.flips:
        f = torch.randint(0, 2, (2,), generator=gen)
        if f[0]:
            out = out.flip(-1)
        if f[1]:
            out = out.flip(-2)
    if cfg.rotate90:
        k = int(torch.randint(0, 4, (1,), generator=gen))
        if out.shape[-1] != out.shape[-2]:
            k = 2 * (k % 2)
        if k:
            out = torch.rot90(out, k, dims=(-2, -1))
    if cfg.hed_scale or cfg.hed_shift:
        scale = 1.0 + _uniform(gen, 3, cfg.hed_scale)
        shift = _uniform(gen, 3, cfg.hed_shift)
        out = hed_jitter(out, scale, shift)
    if cfg.brightness:
        out = out * float(1.0 + _uniform(gen, 1, cfg.brightness))
    if cfg.gamma:
        g = torch.exp(_uniform(gen, 3, cfg.gamma)).to(out.dtype).view(3, 1, 1)
        out = out.clamp(0.0, 1.0) ** g
    return out.clamp(0.0, 1.0).contiguous()
