"""DistributedDataParallel on CPU (gloo): two processes keep identical weights."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sources() -> list:
    from lsr.dataset import BlockSource
    from lsr.grid import BlockGrid
    from lsr.slide import ArraySlide

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    z = np.array([[0, 9, 0, 9], [9, 0, 9, 0], [0, 0, 9, 9], [9, 9, 0, 0]], dtype=np.int16)
    return [BlockSource(ArraySlide(img, 4.17), BlockGrid.from_z(z, 16))]


def _worker(rank: int, world: int, port: int, folder: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
    )  # fmt: skip
    torch.set_num_threads(1)
    from lsr.train import TrainConfig, train

    cfg = TrainConfig(
        loss="intra_inter", block_px=16, width=4, depth=2, steps=3, groups_per_batch=1,
        group_size=3, lr=1e-3, device="cpu", checkpoint_every=3,
        out_dir=str(Path(folder) / f"out-rank{rank}"),
    )  # fmt: skip
    result = train(cfg, sources=_sources())
    save_file(
        {k: v.contiguous() for k, v in result.model.state_dict().items()},
        str(Path(folder) / f"rank{rank}.safetensors"),
    )
    (Path(folder) / f"rank{rank}.json").write_text(
        json.dumps({"status": result.status, "losses": result.losses, "step": result.step})
    )


def test_two_gloo_ranks_keep_identical_weights(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    a = load_file(str(tmp_path / "rank0.safetensors"))
    b = load_file(str(tmp_path / "rank1.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ra = json.loads((tmp_path / "rank0.json").read_text())
    rb = json.loads((tmp_path / "rank1.json").read_text())
    assert ra["status"] == rb["status"] == "completed" and ra["step"] == 3
    assert ra["losses"] == rb["losses"]  # the logged loss is the mean over ranks
    # training moved the weights away from the (seeded, identical) initialisation
    from lsr.model import UNet

    torch.manual_seed(0)
    init = UNet(2, width=4, depth=2).state_dict()
    assert any(not torch.equal(init[k], a[k]) for k in a if k.endswith("weight"))
    # only rank 0 writes checkpoints
    assert (tmp_path / "out-rank0" / "latest.json").exists()
    assert not (tmp_path / "out-rank1").exists()
