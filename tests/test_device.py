"""Device choice without a GPU here: CUDA's answers are monkeypatched (the GPU paths)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lsr.device import select_device
from lsr.errors import LsrInputError
from lsr.train import class_counts, class_shares, ddp_backend


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)


def test_a_cuda_index_is_checked_against_the_gpus_there(two_gpus, monkeypatch) -> None:
    """'cuda:5' on two GPUs failed later as a raw CUDA error (in set_device, or at every
    slide's model load); 'cuda:x' as a bare RuntimeError."""
    assert select_device("cuda:1") == torch.device("cuda", 1)
    assert select_device("cuda") == torch.device("cuda", 0)
    assert select_device("cuda", local_rank=3) == torch.device("cuda", 1)
    for bad in ("cuda:5", "cuda:2", "cuda:x", "cuda:-1"):
        with pytest.raises(LsrInputError, match="sees 2 CUDA GPU"):
            select_device(bad)
    monkeypatch.setenv("WORLD_SIZE", "2")  # under torchrun every rank would take cuda:0
    with pytest.raises(LsrInputError, match="torchrun"):
        select_device("cuda:0")
    assert select_device("cuda", local_rank=1) == torch.device("cuda", 1)


def test_the_ddp_backend_follows_the_device_not_the_machine(two_gpus, monkeypatch) -> None:
    """NCCL whenever a GPU was visible: `torchrun … --device cpu` on a GPU machine sent CPU
    tensors to NCCL."""
    assert ddp_backend("cpu") == "gloo"
    assert ddp_backend("cuda") == ddp_backend("cuda:1") == ddp_backend("auto") == "nccl"
    with pytest.raises(LsrInputError, match="MPS"):
        ddp_backend("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("lsr.train.mps_available", lambda: False)
    assert ddp_backend("auto") == "gloo"


def test_class_counts_and_shares_are_numpys_bincount_of_the_argmax() -> None:
    """The per-step argmax shares without torch.bincount (slow, and crashing, on MPS); ties
    go to the lower class, as argmax's."""
    rng = np.random.default_rng(0)
    for classes in (2, 3):
        p = torch.from_numpy(rng.random((4, classes, 9, 7)).astype(np.float32))
        p[0, :, 0, 0] = 0.5  # a tie
        want = np.bincount(p.argmax(1).numpy().ravel(), minlength=classes)
        np.testing.assert_array_equal(class_counts(p).numpy(), want)
        np.testing.assert_allclose(class_shares(p).numpy(), want / want.sum(), rtol=1e-6)


def test_rng_state_does_not_start_cuda_in_a_cpu_run(monkeypatch) -> None:
    """Asking for CUDA's RNG states starts CUDA: a CPU run on a GPU machine took GPU memory
    at its first checkpoint."""
    from lsr.checkpoint import rng_state

    def started(*_a):
        raise AssertionError("CUDA was started")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", started)
    assert list(rng_state()) == ["cpu"]
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(
        torch.cuda, "get_rng_state_all", lambda: [torch.zeros(3, dtype=torch.uint8)]
    )
    assert list(rng_state()) == ["cpu", "cuda0"]


def test_local_predict_workers_share_the_gpus_tile_memory(monkeypatch) -> None:
    """N local dask workers on one GPU: each sized its tiles to half of the free memory it
    saw (together N halves); now they share that half. CPU, or a budget given: unchanged."""
    import lsr.infer
    from lsr.predict import PredictOptions, shared_gpu_options

    free = 8 * 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *_a: (free, 2 * free))
    monkeypatch.setattr(lsr.infer, "resolve_device", lambda d: torch.device("cuda", 0))
    alone = lsr.infer.tile_memory_budget("cuda") / 2**20  # what each worker took by itself
    assert alone == pytest.approx(lsr.infer.CUDA_MEMORY_FRACTION * free / 2**20)
    for n in (2, 4):
        shared = shared_gpu_options(PredictOptions(device="cuda"), n)
        assert shared.tile_memory_mib == pytest.approx(alone / n)
        assert shared.device == "cuda" and shared.tile == "auto"
    given = PredictOptions(device="cuda", tile_memory_mib=300)
    assert shared_gpu_options(given, 4) == given
    assert shared_gpu_options(PredictOptions(device="cuda"), 1).tile_memory_mib is None
    monkeypatch.setattr(lsr.infer, "resolve_device", lambda d: torch.device("cpu"))
    assert shared_gpu_options(PredictOptions(), 4).tile_memory_mib is None
