"""``lsr predict --scheduler tcp://...``: slides predicted by the workers of a real dask
cluster reached over TCP, with the same outputs as in this process."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
from typer.testing import CliRunner

from lsr.checkpoint import write_checkpoint
from lsr.cli import _register, app
from lsr.errors import LsrInputError
from lsr.predict import PredictOptions, predict_cohort, read_summary

distributed = pytest.importorskip("distributed")

WMPP = 4.0


def model_dir(tmp_path):
    """A depth-0 U-Net whose cancer probability is high on dark pixels (see test_predict)."""
    from test_predict import dark_square_net

    net = dark_square_net()
    meta = {"model": net.config(), "class_names": ["cancer", "rest"], "loss": "intra",
            "working_mpp": WMPP}  # fmt: skip
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    write_checkpoint(tmp_path / "run", 1, model_state=net.state_dict(), metadata=meta,
                     optimizer_state=opt.state_dict(), trainer_state={})  # fmt: skip
    return tmp_path / "run"


class Finished(distributed.diagnostics.plugin.SchedulerPlugin):
    """Records the keys of tasks the scheduler saw finish (and on which worker)."""

    def __init__(self):
        self.done: dict[str, str] = {}

    def transition(self, key, start, finish, *args, **kwargs):
        if finish == "memory":
            self.done[str(key)] = str(kwargs.get("worker", ""))


def test_cli_predicts_on_a_tcp_scheduler(tmp_path):
    from test_predict import make_slide

    model = model_dir(tmp_path)
    slides = [make_slide(tmp_path / "s1.tif"), make_slide(tmp_path / "s2.tif", (8, 24, 8, 72))]
    local = predict_cohort(
        slides, model, tmp_path / "local",
        PredictOptions(working_mpp=WMPP, device="cpu", tissue="none", min_area_mm2=0),
    )  # fmt: skip
    _register()
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, protocol="tcp://",
        dashboard_address=None, silence_logs=40,
    ) as cluster:  # fmt: skip
        address = cluster.scheduler_address
        assert address.startswith("tcp://")
        seen = Finished()
        cluster.scheduler.add_plugin(seen)
        out = tmp_path / "dist"
        args = [str(s) for s in slides] + [
            "--model", str(model), "--out", str(out), "--working-mpp", str(WMPP),
            "--device", "cpu", "--tissue", "none", "--min-area-mm2", "0",
            "--scheduler", address,
        ]  # fmt: skip
        res = CliRunner().invoke(app, ["predict", *args])
    assert res.exit_code == 0, res.output
    assert "2 predicted, 0 skipped, 0 failed" in res.output
    # the work ran as tasks on the cluster, one per slide
    assert sorted(k for k in seen.done if k.startswith("lsr-predict-")) == [
        "lsr-predict-0-s1", "lsr-predict-1-s2",
    ]  # fmt: skip
    cohort = json.loads((out / "cohort.json").read_text())
    assert (cohort["done"], cohort["failed"]) == (2, 0)
    for r in local:
        summary = read_summary(out / r.name)
        assert summary is not None and summary["cancer_area_mm2"] == pytest.approx(
            r.cancer_area_mm2
        )
        a = tifffile.imread(out / r.name / "probability.tif")
        b = tifffile.imread(tmp_path / "local" / r.name / "probability.tif")
        assert np.array_equal(a, b)
        m = tifffile.imread(out / r.name / "mask.tif")
        assert m.any() and not m.all()
    assert local[0].cancer_area_mm2 != local[1].cancer_area_mm2


@pytest.mark.parametrize(
    ("address", "checked_first"),
    [("foo", True), ("tcp://head:port", True), ("xyz://head:8786", True), ("inproc://x", False)],
)
def test_a_malformed_scheduler_address_is_the_options_error(tmp_path, address, checked_first):
    """``--scheduler foo`` ended in dask's traceback ``ValueError: missing port number in
    address 'foo'``. A TCP-like address is checked before any work, others as dask reads it."""
    from test_predict import make_slide

    model = model_dir(tmp_path)
    slide = make_slide(tmp_path / "s1.tif")
    _register()
    out = tmp_path / "out"
    args = [str(slide), "--model", str(model), "--out", str(out), "--device", "cpu"]
    res = CliRunner().invoke(app, ["predict", *args, "--scheduler", address])
    assert isinstance(res.exception, LsrInputError), res.output
    assert f"--scheduler {address!r}" in str(res.exception)
    if checked_first:
        assert not out.exists()
