"""A source date's fine MS under a cloud: the next clear fine MS date beyond it on the same side of the
target stands in, pixel by pixel (predictor.FusionPredictor._fill_sources, predictor.SOURCE_FILL)."""

from types import SimpleNamespace

import numpy as np

from stsfusion.model.nn.predictor import FusionPredictor

H = W = 6
FINE = ["2022-04-10", "2022-05-10", "2022-06-20", "2022-07-20"]  # q = 05-10 and q2 = 06-20 for 05-30
TARGET = "2022-05-30"
MDD = SimpleNamespace(roles={"fine_ms": SimpleNamespace(dates=FINE)})  # no tile cache: every date read


class _Reads:
    """What ``_fill_sources`` reads: each date's fine MS is its index + 1 in every band, its dense MS
    ten times that; the fine MS of 04-10 is clear on the left half only, every other date everywhere."""

    _fill_sources = FusionPredictor._fill_sources

    def _read(self, mdd, role, date, window, dense=None):
        i = FINE.index(date) + 1
        valid = np.ones((1, 1, H, W), np.float32)
        if role == "fine_ms" and date == FINE[0]:
            valid[..., W // 2 :] = 0
        scale = 1.0 if role == "fine_ms" else 10.0
        return np.full((1, 2, H, W), scale * i, np.float32) * valid, valid


def _inputs(cloud_q, cloud_q2):
    x = {}
    for (f, vf, d, vd), date, cloud in (
        (("fq", "vfq", "dq", "vdq"), FINE[1], cloud_q),
        (("fq2", "vfq2", "dq2", "vdq2"), FINE[2], cloud_q2),
    ):
        v = np.where(cloud, 0, 1).astype(np.float32)[None, None]
        i = FINE.index(date) + 1
        x[f], x[vf] = np.full((1, 2, H, W), i, np.float32) * v, v
        x[d], x[vd] = np.full((1, 2, H, W), 10.0 * i, np.float32), np.ones((1, 1, H, W), np.float32)
    x["gap_q"] = np.full((1, 1, 1, 1), 20 / 365.0, np.float32)
    return x


def test_a_cloudy_source_is_stood_in_for_by_the_next_clear_date_on_its_side():
    cloud_q = np.zeros((H, W), bool)
    cloud_q[1:5, 1:5] = True  # under q's cloud: 04-10 (25 days farther out) where it is clear
    cloud_q2 = np.zeros((H, W), bool)
    cloud_q2[0, :] = True  # under q2's cloud: 07-20, never a date on q's side
    x = _inputs(cloud_q, cloud_q2)
    ratios = _Reads()._fill_sources(MDD, (0, 0, W, H), x, None, None, TARGET, (FINE[1], FINE[2]))
    left = np.zeros((H, W), bool)
    left[:, : W // 2] = True
    took = cloud_q & left
    np.testing.assert_array_equal(x["fq"][0, 0], np.where(took, 1, np.where(cloud_q, 0, 2)))
    np.testing.assert_array_equal(x["vfq"][0, 0], np.where(cloud_q & ~left, 0, 1))  # no clear date: as it was
    np.testing.assert_array_equal(x["dq"][0, 0], np.where(took, 10, 20))  # the stand-in's own dense MS
    days = np.where(took, 50, 20)  # 04-10 and 05-10 to 05-30
    np.testing.assert_allclose(x["gap_q"][0, 0], days / 365.0, rtol=1e-6)
    np.testing.assert_array_equal(x["fq2"][0, 0], np.where(cloud_q2, 4, 3))
    np.testing.assert_array_equal(x["dq2"][0, 0], np.where(cloud_q2, 40, 30))
    assert x["fq"].dtype == np.float32 and x["gap_q"].shape == (1, 1, H, W)
    # The source's time gap over its stand-in's, for the blend weight: 20 / 50 days, and 21 / 51 for q2.
    np.testing.assert_allclose(ratios[0][0, 0], np.where(took, 20 / 50, 1), rtol=1e-6)
    np.testing.assert_allclose(ratios[1][0, 0], np.where(cloud_q2, 21 / 51, 1), rtol=1e-6)


def test_a_stand_in_counts_for_less_in_the_blend_the_farther_out_it_is():
    from stsfusion.model.nn.predictor import _source_weight

    rng = np.random.default_rng(0)
    d, dq, dq2 = (rng.normal(size=(1, 3, H, W)).astype(np.float32) for _ in range(3))
    plain = _source_weight(d, dq, dq2)
    assert np.array_equal(_source_weight(d, dq, dq2, (None, None)), plain)
    r = np.ones((1, 1, H, W), np.float32)
    r[..., :2, :] = 0.4  # q's stand-in 2.5 times as far as q on the first two rows
    w = _source_weight(d, dq, dq2, (r, None))
    np.testing.assert_array_equal(w[..., 2:, :], plain[..., 2:, :])  # elsewhere bit for bit
    expected = 0.4 * plain / (0.4 * plain + 1 - plain)
    np.testing.assert_allclose(w[..., :2, :], expected[..., :2, :], rtol=1e-6)
    assert (w[..., :2, :] < plain[..., :2, :]).all()


def test_clear_sources_are_left_alone():
    x = _inputs(np.zeros((H, W), bool), np.zeros((H, W), bool))
    before = {k: v.copy() for k, v in x.items()}
    _Reads()._fill_sources(MDD, (0, 0, W, H), x, None, None, TARGET, (FINE[1], FINE[2]))
    for k, v in before.items():
        np.testing.assert_array_equal(x[k], v)
    assert x["gap_q"].shape == (1, 1, 1, 1)  # still the one time gap of the date


def test_the_tiles_guide_slots_are_taken_instead_of_reading_again():
    reads = _Reads()
    window = (0, 0, W, H)
    slots = [reads._read(None, "fine_ms", d, window) for d in FINE]  # as FusionPredictor._guide keeps them

    class _NoFineReads(_Reads):
        def _read(self, mdd, role, date, window, dense=None):
            assert role == "dense_ms", "the fine MS was read again"
            return super()._read(mdd, role, date, window, dense)

    mdd = SimpleNamespace(roles=MDD.roles, derived={("guide slots", window, None): slots})
    cloud = np.ones((H, W), bool)
    x = _inputs(cloud, np.zeros((H, W), bool))
    _NoFineReads()._fill_sources(mdd, window, x, None, None, TARGET, (FINE[1], FINE[2]))
    np.testing.assert_array_equal(x["fq"][0, 0], np.where(np.arange(W) < W // 2, 1, 0)[None].repeat(H, 0))
