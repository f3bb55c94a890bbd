"""The early stop on the self-check (``training.early_stop_epochs``, ``Withheld.probe``): where the
withheld HS's CC falls below the best probe by more than the tolerance, the first cycle ends and the
run goes on from the best probe's network; within the tolerance nothing changes; a run resumed from
its checkpoint, before or after a stop, ends bit for bit where an uninterrupted one ends."""

import os

import pytest
import torch
from helpers.mdd import make_tiny_mdd

from stsfusion.model.core.callbacks import Callbacks, Canceled
from stsfusion.model.fusion.self_check import choose_holdout
from stsfusion.model.mdd.format import MDD
from stsfusion.model.nn import training
from stsfusion.model.nn.checkpoint import checkpoint_path
from stsfusion.model.nn.training import EARLY_STOP_TOLERANCE, Withheld, early_stop_epochs, train_fusion_model

torch.set_num_threads(1)
ARGS = dict(epochs=4, patch_size=12, batch_size=2, device="cpu", seed=3, checkpoint_every=1)
STEPS = 10  # a 24 px tiny MDD: MIN_STEPS per epoch


def test_the_probes_cover_the_second_half_of_the_first_cycle_every_fifth_of_it():
    assert early_stop_epochs(15) == [9, 12, 15]  # the default EPOCHS
    assert early_stop_epochs(10) == [6, 8, 10]
    assert early_stop_epochs(20) == [12, 16, 20]
    assert early_stop_epochs(4) == [2, 3, 4]
    assert early_stop_epochs(2) == [1, 2]
    assert early_stop_epochs(1) == []  # one probe compares with nothing


class Scripted:
    """A Withheld whose probe returns a scripted CC for the epoch just trained (counted from the
    training steps, from ``start`` on a resumed run) and keeps the network's weights at each probe;
    its check keeps the weights it measures."""

    def __init__(self, manifest, scores, monkeypatch, start=0):
        mdd = MDD.open(manifest)
        holdout = choose_holdout(mdd)
        self.scores, self.states, self.checked, self.steps = scores, {}, None, start * STEPS
        real = training._training_step

        def counted(*args, **kwargs):
            self.steps += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(training, "_training_step", counted)
        self.withheld = Withheld(mdd.hiding("hs", holdout["date"], holdout["window"]), self.check, self.probe)

    @staticmethod
    def _copy(net):
        return {k: v.detach().clone() for k, v in net.state_dict().items()}

    def probe(self, net, data):
        epoch = self.steps // STEPS
        self.states[epoch] = self._copy(net)
        return self.scores[epoch]

    def check(self, net, data):
        self.checked = self._copy(net)
        return {"self_check": {"scripted": True}}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _train(manifest, model, withheld, **kwargs):
    return train_fusion_model(manifest, model, withheld=withheld, **dict(ARGS, **kwargs))


@pytest.mark.slow
def test_a_fall_beyond_the_tolerance_goes_on_from_the_best_probe(tmp_path, monkeypatch):
    manifest = make_tiny_mdd(tmp_path, size=24)
    run = Scripted(manifest, {2: 0.90, 3: 0.95, 4: 0.95 - 2 * EARLY_STOP_TOLERANCE}, monkeypatch)
    log = []
    summary = _train(manifest, str(tmp_path / "m.pt"), run.withheld, callbacks=Callbacks(log=log.append))
    assert sorted(run.states) == [2, 3, 4]
    assert _same(run.checked, run.states[3])  # the check measured epoch 3's network, not epoch 4's
    first, total = training.self_checked_epochs(3)
    info = summary["info"]
    assert info["parameters"]["self_check_epochs"] == first and info["parameters"]["epochs_in_all"] == total
    assert [h["epoch"] for h in summary["history"]] == list(range(1, total + 1))
    assert info["early_stop"]["stopped_after"] == 4 and info["early_stop"]["kept"] == 3
    assert [p["epoch"] for p in info["early_stop"]["probes"]] == [2, 3, 4]
    assert any(m.startswith("Early stop after epoch 4") for m in log)
    assert any(m.startswith(f"Epochs {first + 1}-{total}: training on everything") for m in log)


@pytest.mark.slow
def test_a_fall_within_the_tolerance_changes_nothing(tmp_path, monkeypatch):
    manifest = make_tiny_mdd(tmp_path, size=24)
    run = Scripted(manifest, {2: 0.90, 3: 0.95, 4: 0.95 - EARLY_STOP_TOLERANCE / 2}, monkeypatch)
    summary = _train(manifest, str(tmp_path / "m.pt"), run.withheld)
    assert _same(run.checked, run.states[4])
    assert "stopped_after" not in summary["info"]["early_stop"]
    assert len(summary["history"]) == training.self_checked_epochs(4)[1]
    monkeypatch.setattr(training, "EARLY_STOP", False)  # off: no probe, the same network
    off = Scripted(manifest, {}, monkeypatch)
    unprobed = _train(manifest, str(tmp_path / "off.pt"), off.withheld)
    assert not off.states and "early_stop" not in unprobed["info"]
    assert _same(off.checked, run.checked)
    a, b = torch.load(tmp_path / "m.pt", weights_only=True), torch.load(tmp_path / "off.pt", weights_only=True)
    assert _same(a["state_dict"], b["state_dict"])


def _cancel_when(model, saved_is_due):
    def canceled():
        path = checkpoint_path(model)
        return os.path.exists(path) and saved_is_due(torch.load(path, weights_only=True))

    return canceled


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["before the fall", "after the check"])
def test_a_run_resumed_around_an_early_stop_equals_an_uninterrupted_one(tmp_path, monkeypatch, stop):
    manifest = make_tiny_mdd(tmp_path, size=24)
    scores = {2: 0.90, 3: 0.95, 4: 0.90}
    whole = _train(manifest, str(tmp_path / "whole.pt"), Scripted(manifest, scores, monkeypatch).withheld)
    assert whole["info"]["early_stop"]["kept"] == 3
    model = str(tmp_path / "m.pt")
    due = (lambda s: s["epoch"] == 3) if stop == "before the fall" else (lambda s: bool(s["checked"]))
    with pytest.raises(Canceled):
        _train(
            manifest,
            model,
            Scripted(manifest, scores, monkeypatch).withheld,
            callbacks=Callbacks(is_canceled=_cancel_when(model, due)),
        )
    saved = torch.load(checkpoint_path(model), weights_only=True)
    resumed_from = int(saved["epoch"])
    assert (resumed_from, saved["first"]) == ((3, 4) if stop == "before the fall" else (3, 3))
    again = Scripted(manifest, scores, monkeypatch, start=resumed_from)
    resumed = _train(manifest, model, again.withheld, resume=True)
    assert sorted(again.states) == ([4] if stop == "before the fall" else [])  # the probes it had not made
    a, b = torch.load(tmp_path / "whole.pt", weights_only=True), torch.load(model, weights_only=True)
    assert _same(a["state_dict"], b["state_dict"])
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in whole["history"]]
    assert resumed["info"]["early_stop"] == whole["info"]["early_stop"]


def test_the_probe_block_is_the_holdout_s_centre_in_whole_hs_pixels(tmp_path):
    from stsfusion.model.fusion.self_check import PROBE_SIDE, probe_block

    mdd = MDD.open(make_tiny_mdd(tmp_path, size=24))  # HS 3 grid px
    whole = probe_block(mdd, {"date": "d", "window": None})
    assert whole["window"] == (0, 0, 24, 24) and whole["date"] == "d"
    big = probe_block(mdd, {"window": (30, 60, 600, 300)})["window"]
    side = PROBE_SIDE // 3 * 3
    assert big == (30 + (600 - side) // 2 // 3 * 3, 60 + (300 - side) // 2 // 3 * 3, side, side)
    assert all(v % 3 == 0 for v in big)


@pytest.mark.slow
def test_the_self_check_measures_the_network_the_early_stop_kept(tmp_path):
    from stsfusion.model.fusion.self_check import train_with_self_check

    manifest = make_tiny_mdd(tmp_path, size=48)  # the withheld date is whole, within one probe block
    log = []
    summary = train_with_self_check(
        manifest, str(tmp_path / "m.pt"), callbacks=Callbacks(log=log.append), **dict(ARGS, patch_size=16)
    )
    early = summary["info"]["early_stop"]
    assert [p["epoch"] for p in early["probes"]] == early_stop_epochs(4)
    kept = early.get("kept", 4)
    probed = {p["epoch"]: p["CC"] for p in early["probes"]}
    assert summary["self_check"]["network"]["CC"] == pytest.approx(probed[kept], abs=1e-9)
    assert sum(m.startswith("Early stop's probe after epoch") for m in log) == len(early["probes"]) - ("kept" in early)
