"""Where training and inference run: CUDA, then Apple MPS, then CPU, with an override.

One function picks the device (:func:`select_device`) and one says in words what was
picked (:func:`describe_device`), so the CLI, the GUI and the checkpoint metadata all show
the same string, e.g. ``"CUDA: NVIDIA H100 80GB HBM3"``, ``"MPS"`` or ``"CPU (2 threads)"``.
"""

from __future__ import annotations

import os

import torch

from lsr.errors import LsrInputError

DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")


def mps_available() -> bool:
    """True when PyTorch can use Apple's Metal backend on this machine."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def select_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """The torch device for ``name`` ∈ :data:`DEVICE_CHOICES` (or ``"cuda:N"``).

    ``auto`` prefers CUDA, then MPS, then CPU. Under ``torchrun`` pass ``local_rank`` (or
    let ``LOCAL_RANK`` be read) so each process on a node takes its own GPU. Asking for a
    device that is not there raises :class:`LsrInputError` instead of failing later.
    """
    name = str(name).strip().lower()
    if local_rank is None and "LOCAL_RANK" in os.environ:
        local_rank = int(os.environ["LOCAL_RANK"])
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif mps_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LsrInputError("device 'cuda' requested but PyTorch sees no CUDA GPU")
        count = torch.cuda.device_count()
        if name == "cuda":
            return torch.device("cuda", (local_rank or 0) % max(count, 1))
        index = name.partition(":")[2]
        if not index.isdigit() or int(index) >= count:
            raise LsrInputError(
                f"device '{name}': PyTorch sees {count} CUDA GPU(s), numbered 0 to {count - 1}"
            )
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every rank would take that one GPU
            raise LsrInputError(
                f"device '{name}' under torchrun: give 'cuda' (each process takes the GPU of "
                "its LOCAL_RANK), or choose GPUs with CUDA_VISIBLE_DEVICES"
            )
        return torch.device("cuda", int(index))
    if name == "mps":
        if not mps_available():
            raise LsrInputError("device 'mps' requested but Apple MPS is not available")
        return torch.device("mps")
    raise LsrInputError(f"unknown device '{name}' (choose one of {', '.join(DEVICE_CHOICES)})")


def describe_device(device: torch.device | str) -> str:
    """A short human description: ``"CUDA: <GPU name>"``, ``"MPS"`` or ``"CPU (N threads)"``."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"CUDA: {torch.cuda.get_device_name(index)}"
    if device.type == "mps":
        return "MPS"
    return f"CPU ({torch.get_num_threads()} threads)"
