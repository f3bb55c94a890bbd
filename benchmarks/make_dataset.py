#!/usr/bin/env python3
"""Builds the development benchmark: a simulated 7-date series on the real EnMAP Potsdam image.

    python benchmarks/make_dataset.py [--scenario same_day] [--data ../shared/data] [--out FOLDER]

1. Mosaic the 18 real EnMAP L2A tiles (2022-07-24, 30 m, ../shared/data/enmap_potsdam) with
   GDAL (gdalbuildvrt): 160x192 px with holes where tiles are missing, padded by two nodata
   columns to 162x192 so that the x2 and x3 coarser grids align with it exactly. The 6 bands
   EnMAP flags as bad (bbl=0, 1331-1391 nm, all nodata) are dropped: 218 bands remain.
2. Simulate the truth on 7 dates (model/scene_series.py: unmixing, per-parcel schedules, smooth
   within-field variation; the real image stays underneath as the unmixing residual).
3. Simulate the inputs (the paper's Dataset I protocol, made hard like real data): fine MS on 4
   dates (ZY1-02D VNIC-like, 30 m), dense MS on all 7 dates (measured GF-6 WFV responses,
   x2 coarser: 60 m; its violet band B7 is left out because EnMAP starts at 418 nm), coarse HS
   on the same 4 dates (x3 coarser: 90 m); misregistration, gains, noise, clouds.
4. Write GeoTIFFs (int16 reflectance x 1e4, band scale 0.0001, nodata -32768, dates in names
   and ACQUISITION_DATE, wavelengths in band metadata): inputs in --out, the truth in
   --out/truth, and dataset.json saying which dates are which and which two of the three dates
   without an HS image are HELD OUT of every tuning decision (the third is for tuning).

--scenario chooses the acquisition calendar (default same_day: the layout above, written to
benchmarks/output/dataset; any other scenario goes to benchmarks/output/dataset_<scenario>):

    same_day    fine MS and HS on the same 4 dates, dense MS on all 7 (the paper's Dataset I).
    offset_1_3  dense MS stays on the 7 dates; each fine MS and each HS date of a pair moves by its
                own 1-3 days, fine MS and HS to opposite sides (e.g. fine at D-2, HS at D+1). The
                truth is simulated on the union of all acquisition dates.
    offset_5_8  the same with 5-8 days.
    prisma_ratio_1_6  offset_1_3's calendar with other sensors and a grid ratio that is not an
                integer: fine MS ZY1-02D VNIC-like (30 m), dense MS GF-6 WFV (measured responses) at
                1.6 times the grid (48 m: the paper's 16 m on 10 m), HS PRISMA-like (Gaussian bands,
                VNIR 402-1010 nm FWHM 11 nm, SWIR 920-2505 nm FWHM 12 nm, overlapping as PRISMA's
                two spectrometers do; x3: 90 m). The grid is padded to 168x192 px (a multiple of 24).
    prisma_ratio_2_4  prisma_ratio_1_6 with the HS at 2.4 times the grid (72 m): neither coarse role
                at an integer ratio.
    swir_offset_5_8  offset_5_8's calendar with other sensors: fine MS Landsat 8 OLI-like (bands 1-7,
                SWIR included, on the 30 m grid), dense MS GF-1 WFV (4 bands, x2: 60 m), HS the
                truth's own bands (x3: 90 m). A development scene whose fine MS has SWIR bands.
    landsat_ratio_3  offset_1_3's calendar with the sensors of the most common real combination: fine MS
                Sentinel-2A MSI (the ten bands the Sentinel-2 reader stacks, 30 m), dense MS Landsat 8
                OLI bands 1-7 at 3 times the grid (90 m: Landsat's 30 m on Sentinel-2's 10 m), HS
                the truth's own bands (EnMAP, x3: 90 m). Dense MS and HS at the same ratio; GeoTIFFs.
    one_fine    same-day calendar, fine MS on one date only (DATES[3]).
    one_hs      same-day calendar, HS on one date only (DATES[3]).
    cloudy_fine same-day calendar, the fine MS cloudy on every date (20-40 % cover).
    long_cloudy a longer, cloudier series on same_day's sensors: the dense MS every 8-9 days (19 dates:
                DATES and two between each pair), the fine MS on 8 of them (the HS dates and 4
                between), cloudy on every date (20-40 % cover), the HS on DATES[HS_INDICES]; the
                dense MS and HS cloudy as drawn. Images on DATES are same_day's draws; each added
                date draws from a stream of its own.
    products_clear  same-day calendar, the inputs written as the satellite products Build MDD stack
                reads directly (model/simulation/products.py), none cloudy: fine MS as Sentinel-2 L2A
                .SAFE folders (measured S2A MSI responses, srf/S2A_MSI.txt: B02-B08, B8A, B11, B12,
                the ten bands the Sentinel-2 reader stacks; 30 m), dense MS as Landsat 8 OLI C2 L2
                folders (srf/L8_OLI.txt bands 1-7, all of which the Landsat reader stacks; x2: 60 m),
                HS as EnMAP L2A folders (the truth's own 218 bands; x3: 90 m). No NaN clouds.
    products_cloudy products_clear's images (bit for bit where no cloud is), with clouds and their
                shadows on every fine MS date (20-40 % cover), on the dense MS of DATES[1], [3], [4]
                (3 of 7: a held-out, an HS and the tuning date) and on the HS of DATES[0] and [3]
                (2 of 4), 10-30 % cover. The clouds are DATA, bright and nearly flat (0.4-0.8), with
                a thin unflagged semi-transparent rim and dark shadows beside them; only the quality
                layers (SCL, QA_PIXEL, QL_QUALITY_CLOUD/_CLOUDSHADOW) say where they are. Each image
                draws its own clouds on the fine grid (sensor pixels are flagged once a fifth of
                their footprint is cloud or shadow) from a stream of its own, apart from the noise.

Each image draws its noise, gains, misregistration and clouds from the random stream of the
same-day date it stands for, so a scenario differs from same_day only in what it changes on purpose
(e.g. offset_1_3's dense MS images are same_day's, bit for bit). In every scenario the evaluation dates are the dense-MS-only dates of the same-day calendar
(DATES[1], DATES[4], DATES[5]): two held out, one for tuning.

The products scenarios write each image as a product folder under --out/<role>/ and list them in
dataset.json ("products": role -> paths relative to --out; "clouds": the flagged shares per image);
benchmarks/run_benchmark.py passes them as FINE_MS_PRODUCTS, DENSE_MS_PRODUCTS and HS_PRODUCTS.

Everything written is simulated from real data: say so wherever results are reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import glob
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGINS = os.path.join(ROOT, ".build", "plugins")
if not os.path.exists(os.path.join(PLUGINS, "stsfusion")):
    os.makedirs(PLUGINS, exist_ok=True)
    os.symlink(os.path.join("..", ".."), os.path.join(PLUGINS, "stsfusion"))
sys.path.insert(0, PLUGINS)

from osgeo import gdal

from stsfusion.model.core.grid import Grid, coarse_grid
from stsfusion.model.core.vocabulary import ROLE_LABELS, ROLES
from stsfusion.model.simulation import products as sim_products
from stsfusion.model.simulation import sensors as sim_sensors
from stsfusion.model.simulation import srf
from stsfusion.model.simulation import truth as sim_truth
from stsfusion.model.simulation import writing as sim_writing
from stsfusion.model.simulation.srf import load_srf_file

gdal.UseExceptions()

SEED = 724
DATES = sim_truth.season_dates("2022-04-10", 7, 25)
HS_INDICES = (0, 2, 3, 6)  # fine MS and HS dates; uneven gaps, like real acquisitions
HELD_OUT = (DATES[1], DATES[5])  # never used for any tuning decision: the evaluation dates
TUNING = (DATES[4],)  # the one date without HS that tuning may look at
DENSE_FACTOR, HS_FACTOR = 2, 3
MEAN_PARCEL_AREA_PX = 40.0  # 30 m pixels: about 3.6 ha, many parcels span few dense MS pixels
ALIGN = DENSE_FACTOR * HS_FACTOR
NO_HS = [DATES[i] for i in range(len(DATES)) if i not in HS_INDICES]  # dense MS only: evaluation dates
SCENARIOS = {
    "same_day": "fine MS and HS on the same 4 dates, dense MS on all 7 dates",
    "offset_1_3": "dense MS on the 7 dates; fine MS 1-3 days from 4 of them, HS 1-3 days on the other side",
    "offset_5_8": "dense MS on the 7 dates; fine MS 5-8 days from 4 of them, HS 5-8 days on the other side",
    "one_fine": "same-day calendar, fine MS on one date only",
    "one_hs": "same-day calendar, HS on one date only",
    "cloudy_fine": "same-day calendar, fine MS cloudy on every date (20-40 % cover)",
    "long_cloudy": "dense MS every 8-9 days (19 dates), fine MS on 8 of them, cloudy on every date (20-40 %), HS on 4",
    "swir_offset_5_8": "offset_5_8's calendar with other sensors: fine MS Landsat 8 OLI-like (7 bands, SWIR "
    "included), dense MS GF-1 WFV (4 bands, x2), HS the truth's own bands (x3)",
    "prisma_ratio_1_6": "offset_1_3's calendar with other sensors and grid ratios: fine MS ZY1-02D VNIC-like, dense "
    "MS GF-6 WFV at 1.6 times the grid (the paper's 16 m on 10 m: not an integer), HS PRISMA-like (x3)",
    "prisma_ratio_2_4": "prisma_ratio_1_6 with the HS at 2.4 times the grid: neither coarse role an integer ratio",
    "landsat_ratio_3": "offset_1_3's calendar with fine MS Sentinel-2A MSI, dense MS Landsat 8 OLI at 3 times the "
    "grid (Landsat's 30 m on Sentinel-2's 10 m), HS EnMAP (x3)",
    "products_clear": "same-day calendar as products: fine MS Sentinel-2 L2A, dense MS Landsat 8 C2 L2 (x2), "
    "HS EnMAP L2A (x3); no clouds",
    "products_cloudy": "products_clear with clouds and shadows flagged only in the quality layers: every fine MS "
    "date (20-40 %), 3 of 7 dense MS dates and 2 of 4 HS dates (10-30 %)",
}
PRODUCT_SCENARIOS = ("products_clear", "products_cloudy")
PRODUCT_FAMILIES = {"fine_ms": "Sentinel-2 L2A", "dense_ms": "Landsat C2 L2", "hs": "EnMAP L2A"}
S2_BANDS = ("2", "3", "4", "5", "6", "7", "8", "8A", "11", "12")  # srf/S2A_MSI.txt names; what the reader stacks
OLI_BANDS = ("1", "2", "3", "4", "5", "6", "7")  # srf/L8_OLI.txt names; the reader stacks all seven
CLOUDY = {  # products_cloudy: role -> (DATES indices with clouds, cover range)
    "fine_ms": (HS_INDICES, (0.2, 0.4)),
    "dense_ms": ((1, 3, 4), (0.1, 0.3)),  # a held-out date, an HS date, the tuning date
    "hs": ((0, 3), (0.1, 0.3)),
}
RATIO_SCENES = {"prisma_ratio_1_6": 3, "prisma_ratio_2_4": 2.4}  # scenario -> the HS's ratio
OFFSETS = {
    "offset_1_3": (1, 3),
    "offset_5_8": (5, 8),
    "swir_offset_5_8": (5, 8),
    "landsat_ratio_3": (1, 3),
    **dict.fromkeys(RATIO_SCENES, (1, 3)),
}
LANDSAT_RATIO = 3  # landsat_ratio_3: the dense MS's ratio to the grid
# RATIO_SCENES: the dense MS 1.6 times the grid, so the grid is padded to a multiple of 24 px
# (5 dense MS pixels are 8 grid pixels; 3 for an HS at x3, 12 at x2.4) and every sensor pixel lies whole within it.
RATIO_SCENE_DENSE_FACTOR, RATIO_SCENE_ALIGN = 1.6, 24
ONE_DATE = DATES[3]
# long_cloudy's fine MS dates between DATES: (DATES index, days after it); none within a week of a
# held-out date or the tuning date
LONG_FINE = ((0, 16), (2, 8), (3, 16), (5, 16))


def shift_date(date: str, days: int) -> str:
    return (_dt.date.fromisoformat(date) + _dt.timedelta(days=int(days))).isoformat()


def pair_offsets(lo: int, hi: int, seed: int) -> tuple[list, list]:
    """(fine MS offsets, HS offsets) in days for the pairs on DATES[HS_INDICES]: each of its own
    size in [lo, hi], fine MS and HS of a pair on opposite sides, half of the pairs with the fine MS
    earlier and half later (in an order drawn from the seed)."""
    rng = sim_truth.rng_stream(seed, 900, lo, hi)
    n = len(HS_INDICES)
    signs = rng.permutation(np.resize([-1, 1], n))
    fine = [int(s * rng.integers(lo, hi + 1)) for s in signs]
    hs = [int(-s * rng.integers(lo, hi + 1)) for s in signs]
    return fine, hs


def signed(days: list) -> str:
    return "/".join(f"{d:+d}" for d in days)


def scenario_design(name: str, seed: int, sensors: dict):
    """(SeriesDesign, sensors, calendar description, extra dataset.json keys) of a scenario."""
    pairs = [DATES[i] for i in HS_INDICES]
    calendar, extra = SCENARIOS[name], {}
    if name == "same_day":
        return sim_sensors.SeriesDesign.paper(DATES, HS_INDICES), sensors, calendar, extra
    if name in PRODUCT_SCENARIOS:
        # No NaN clouds: products_cloudy's clouds are data under quality flags (product_clouds).
        clear = {role: dataclasses.replace(spec, cloud_probability=0.0) for role, spec in sensors.items()}
        if name == "products_cloudy":
            parts = [
                f"{ROLE_LABELS[role]} {', '.join(DATES[i] for i in idx)} ({lo * 100:.0f}-{hi * 100:.0f} %)"
                for role, (idx, (lo, hi)) in CLOUDY.items()
            ]
            calendar += f" (cloudy: {'; '.join(parts)})"
        return sim_sensors.SeriesDesign.paper(DATES, HS_INDICES), clear, calendar, extra
    if name in OFFSETS:
        fine_off, hs_off = pair_offsets(*OFFSETS[name], seed)
        fine = [shift_date(d, o) for d, o in zip(pairs, fine_off)]
        hs = [shift_date(d, o) for d, o in zip(pairs, hs_off)]
        role_dates = {"fine_ms": sorted(fine), "dense_ms": list(DATES), "hs": sorted(hs)}
        calendar += f" (days from {', '.join(pairs)}: fine MS {signed(fine_off)}, HS {signed(hs_off)})"
        extra = {"offsets_days": {"pair_dates": pairs, "fine_ms": fine_off, "hs": hs_off}}
        extra["nominal_dates"] = {
            "fine_ms": dict(zip(fine, pairs)),
            "hs": dict(zip(hs, pairs)),
        }
    elif name == "one_fine":
        role_dates = {"fine_ms": [ONE_DATE], "dense_ms": list(DATES), "hs": list(pairs)}
        calendar += f" ({ONE_DATE}); HS on {', '.join(pairs)}"
    elif name == "one_hs":
        role_dates = {"fine_ms": list(pairs), "dense_ms": list(DATES), "hs": [ONE_DATE]}
        calendar += f" ({ONE_DATE}); fine MS on {', '.join(pairs)}"
    elif name == "long_cloudy":
        between = [shift_date(DATES[i], o) for i in range(len(DATES) - 1) for o in (8, 16)]
        fine = sorted(pairs + [shift_date(DATES[i], o) for i, o in LONG_FINE])
        role_dates = {"fine_ms": fine, "dense_ms": sorted(DATES + between), "hs": list(pairs)}
        cloudy = dataclasses.replace(sensors["fine_ms"], cloud_probability=1.0, cloud_cover=(0.2, 0.4))
        sensors = {**sensors, "fine_ms": cloudy}
    elif name == "cloudy_fine":
        role_dates = {"fine_ms": list(pairs), "dense_ms": list(DATES), "hs": list(pairs)}
        cloudy = dataclasses.replace(sensors["fine_ms"], cloud_probability=1.0, cloud_cover=(0.2, 0.4))
        sensors = {**sensors, "fine_ms": cloudy}
    else:
        raise SystemExit(f"Unknown scenario {name!r}: choose one of {', '.join(SCENARIOS)}.")
    dates = sorted(set().union(*role_dates.values()))
    return sim_sensors.SeriesDesign(dates, role_dates), sensors, calendar, extra


def stream_index(date: str) -> int:
    """The random stream of a date: its index in DATES, or (a date long_cloudy adds) one past them
    for each day after DATES[0], so each added date has its own and DATES keep same_day's."""
    if date in DATES:
        return DATES.index(date)
    return len(DATES) + (_dt.date.fromisoformat(date) - _dt.date.fromisoformat(DATES[0])).days


def simulate_inputs(
    truth, wl, fwhm, design, sensors, seed: int, nominal: dict | None = None, clear: tuple = ()
) -> list:
    """sim_sensors.simulate_inputs, except that each image draws its noise, gains, misregistration
    and clouds from the random stream of its nominal date: the same-day calendar date it stands for
    (``nominal``: role -> {date: DATES date}; by default the date itself). So every scenario shares
    these draws with same_day (which this reproduces exactly) and differs from it only in what the
    scenario changes on purpose: which day of the truth each sensor sees, which images exist, the
    fine MS clouds."""
    images = []
    for r, role in enumerate(ROLES):
        for date in design.role_dates.get(role, []):
            t = stream_index((nominal or {}).get(role, {}).get(date, date))
            rng = sim_truth.rng_stream(seed, 100 + r, t)
            values = truth.values[truth.dates.index(date)]
            spec = sensors[role]
            if (role, date) in clear:  # --fine-every-date's added images: whole, no cloud
                spec = dataclasses.replace(spec, cloud_probability=0.0)
            images.append(sim_sensors.observe(values, wl, fwhm, spec, rng, role, date))
    return images


def _named_sensors(wl, fwhm, fine, dense, names: dict, dense_factor: float = DENSE_FACTOR) -> dict:
    """default_sensors (noise, gains, misregistration) with measured fine and dense MS responses,
    each role's spec named ``names[role]``; the dense MS ``dense_factor`` times the grid."""
    sensors = sim_sensors.default_sensors(wl, fwhm, dense_factor, HS_FACTOR, fine_response=fine, dense_response=dense)
    return {role: dataclasses.replace(spec, sensor=names[role]) for role, spec in sensors.items()}


def product_sensors(data: str, wl, fwhm, dense_factor: float = DENSE_FACTOR) -> tuple[dict, dict]:
    """(sensors, responses description) of the products scenarios: fine MS Sentinel-2A MSI, dense MS
    Landsat 8 OLI (measured responses from ../shared/data/srf), HS the truth's own bands; noise,
    gains and misregistration as in default_sensors."""
    s2 = srf.subset(load_srf_file(os.path.join(data, "srf", "S2A_MSI.txt")), S2_BANDS)
    oli = srf.subset(load_srf_file(os.path.join(data, "srf", "L8_OLI.txt")), OLI_BANDS)
    names = {
        "fine_ms": "Sentinel-2A MSI (simulated)",
        "dense_ms": "Landsat 8 OLI (simulated)",
        "hs": "EnMAP HSI (simulated)",
    }
    sensors = _named_sensors(wl, fwhm, s2, oli, names, dense_factor)
    responses = {
        "fine_ms": "measured Sentinel-2A MSI responses (srf/S2A_MSI.txt, from acolite): "
        "B02, B03, B04, B05, B06, B07, B08, B8A, B11, B12 (the ten bands the Sentinel-2 reader stacks)",
        "dense_ms": "measured Landsat 8 OLI responses (srf/L8_OLI.txt, from acolite): bands 1-7 "
        "(the Landsat reader stacks all seven SR bands)",
        "hs": "the truth's own bands (EnMAP)",
    }
    return sensors, responses


def swir_sensors(data: str, wl, fwhm) -> tuple[dict, dict]:
    """(sensors, responses description) of swir_offset_5_8: a fine MS with SWIR bands (Landsat 8
    OLI-like bands 1-7 on the 30 m grid) and a 4-band dense MS (GF-1 WFV), neither of the other
    scenes' sensor sets; noise, gains and misregistration as in default_sensors."""
    oli = srf.subset(load_srf_file(os.path.join(data, "srf", "L8_OLI.txt")), OLI_BANDS)
    wfv = load_srf_file(os.path.join(data, "srf", "GF1_WFV1.txt"))
    names = {
        "fine_ms": "Landsat 8 OLI-like at 30 m (simulated)",
        "dense_ms": "GF-1 WFV (simulated)",
        "hs": "ZY1-02D AHSI/EnMAP-like HS (simulated)",
    }
    sensors = _named_sensors(wl, fwhm, oli, wfv, names)
    responses = {
        "fine_ms": "measured Landsat 8 OLI responses (srf/L8_OLI.txt, from acolite): bands 1-7",
        "dense_ms": "measured GF-1 WFV1 responses (srf/GF1_WFV1.txt, from acolite): bands 1-4",
        "hs": "the truth's own bands (EnMAP)",
    }
    return sensors, responses


def prisma_like_response() -> srf.SpectralResponse:
    """A PRISMA-like band set (Gaussian bands): VNIR 66 bands from 402 to 1010 nm (FWHM 11 nm) and
    SWIR 173 from 920 to 2505 nm (FWHM 12 nm), the two spectrometers overlapping at 920-1010 nm as
    PRISMA's do, listed by wavelength. Bands EnMAP does not cover are left out by the simulation."""
    vnir = np.linspace(402.0, 1010.0, 66)
    swir = np.linspace(920.0, 2505.0, 173)
    centres = np.concatenate([vnir, swir])
    widths = np.concatenate([np.full(vnir.size, 11.0), np.full(swir.size, 12.0)])
    order = np.argsort(centres, kind="stable")
    names = [f"{'VNIR' if i < vnir.size else 'SWIR'} {c:.1f} nm" for i, c in zip(order, centres[order])]
    return srf.gaussian_response(names, centres[order], widths[order])


def prisma_ratio_sensors(data: str, wl, fwhm, hs_factor: float) -> tuple[dict, dict]:
    """(sensors, responses description) of RATIO_SCENES: the default fine MS (ZY1-02D VNIC-like),
    the measured GF-6 WFV responses at 1.6 times the grid (not an integer ratio) and a PRISMA-like HS
    (``prisma_like_response``; its noise by hs_noise_sigma at its own band centres) at ``hs_factor``
    times the grid; gains and misregistration as in default_sensors."""
    gf6 = load_srf_file(os.path.join(data, "srf", "GF6_WFV.txt"))
    sensors = sim_sensors.default_sensors(wl, fwhm, RATIO_SCENE_DENSE_FACTOR, hs_factor, dense_response=gf6)
    prisma = sim_sensors.covered_response(prisma_like_response(), wl, fwhm)
    sensors["hs"] = dataclasses.replace(
        sensors["hs"],
        sensor="PRISMA-like HS (simulated)",
        response=prisma,
        noise=sim_sensors.hs_noise_sigma(prisma.centres()),
    )
    responses = {
        "fine_ms": "resources/sensors/zy1_02d_vnic.json (Gaussian bands)",
        "dense_ms": "measured GF-6 WFV responses (srf/GF6_WFV.txt, from acolite), 1.6 times the grid's pixel; "
        "the bands EnMAP does not cover left out",
        "hs": f"PRISMA-like Gaussian bands (benchmarks/make_dataset.py prisma_like_response): {prisma.n_bands} of "
        "239 covered by EnMAP",
    }
    return sensors, responses


def product_clouds(images: list, shape: tuple, seed: int, cloudy: bool) -> list:
    """[(values, cloud flags, shadow flags, drawn cover)] per image: products_cloudy's clouds
    (simulation/products.py: data that look like clouds, flagged only in the quality layer) on the
    images CLOUDY names, from a stream of each image's own (apart from its noise), so that every
    pixel without a cloud keeps products_clear's value bit for bit; no flags elsewhere."""
    out = []
    for im in images:
        r, t = ROLES.index(im.role), DATES.index(im.date)
        indices, cover_range = CLOUDY[im.role]
        if not cloudy or t not in indices:
            out.append((im.values, None, None, 0.0))
            continue
        rng = sim_truth.rng_stream(seed, 300 + r, t)
        cover = float(rng.uniform(*cover_range))
        scene = sim_products.simulate_clouds(shape, cover, rng)
        values, cloud, shadow = sim_products.apply_clouds(im.values, im.wavelengths, im.factor, scene)
        out.append((values, cloud, shadow, cover))
    return out


def write_products(out: str, images: list, grid: Grid, seed: int, cloudy: bool) -> tuple[dict, dict, list]:
    """Writes every image as its role's product under ``out/<role>/``; returns (role -> product
    paths relative to ``out``, role -> {date: flagged shares}, the images with cloud_fraction set to
    their flagged share)."""
    files = {role: [] for role in ROLES}
    shares = {role: {} for role in ROLES}
    updated = []
    for im, (values, cloud, shadow, cover) in zip(
        images, product_clouds(images, (grid.height, grid.width), seed, cloudy)
    ):
        path = sim_products.write_product(
            PRODUCT_FAMILIES[im.role],
            os.path.join(out, im.role),
            values,
            im.band_names,
            im.wavelengths,
            im.fwhm,
            coarse_grid(grid, im.factor),
            im.date,
            cloud,
            shadow,
        )
        files[im.role].append(os.path.relpath(path, out))
        c = float(cloud.mean()) if cloud is not None else 0.0
        sh = float(shadow.mean()) if shadow is not None else 0.0
        shares[im.role][im.date] = {"cloud": round(c, 4), "shadow": round(sh, 4), "cover_drawn": round(cover, 4)}
        updated.append(dataclasses.replace(im, values=values, cloud_fraction=c + sh))
    return files, shares, updated


def default_out(scenario: str) -> str:
    folder = "dataset" if scenario == "same_day" else f"dataset_{scenario}"
    return os.path.join(ROOT, "benchmarks", "output", folder)


def build_mosaic(tile_dir: str, vrt_path: str, align: int = ALIGN):
    """(hs (band, row, col) reflectance with NaN, wavelengths, fwhm, Grid): the tiles mosaicked
    by GDAL, the grid padded on the right/bottom to a multiple of ``align`` pixels."""
    tiles = sorted(glob.glob(os.path.join(tile_dir, "*.tif")))
    if not tiles:
        raise SystemExit(f"No EnMAP tiles in {tile_dir}: give --data, the folder holding enmap_potsdam/.")
    probe = gdal.BuildVRT("", tiles)
    x0, px, _, y0, _, py = probe.GetGeoTransform()
    w = -(-probe.RasterXSize // align) * align
    h = -(-probe.RasterYSize // align) * align
    probe = None
    vrt = gdal.BuildVRT(vrt_path, tiles, outputBounds=(x0, y0 + py * h, x0 + px * w, y0))
    first = gdal.Open(tiles[0])
    keep, wl, fwhm = [], [], []
    for b in range(first.RasterCount):
        md = first.GetRasterBand(b + 1).GetMetadata()
        if float(md.get("bbl", 1)) > 0:
            keep.append(b)
            wl.append(float(md["wavelength"]))
            fwhm.append(float(md["fwhm"]))
    band = first.GetRasterBand(1)
    scale, nodata = band.GetScale() or 1.0, band.GetNoDataValue()
    hs = np.empty((len(keep), h, w), dtype=np.float32)
    for i, b in enumerate(keep):
        a = vrt.GetRasterBand(b + 1).ReadAsArray().astype(np.float32)
        hs[i] = np.where(a == nodata, np.nan, a * scale)
    invalid = ~np.all(np.isfinite(hs), axis=0)
    hs[:, invalid] = np.nan
    grid = Grid(vrt.GetProjection(), vrt.GetGeoTransform(), w, h)
    vrt = None
    return hs, np.array(wl), np.array(fwhm), grid, len(tiles), first.GetMetadataItem("start_time")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data",
        default=os.path.join(os.path.dirname(ROOT), "shared", "data"),
        help="folder holding enmap_potsdam/ and srf/ (default ../shared/data)",
    )
    ap.add_argument("--scenario", default="same_day", choices=list(SCENARIOS), help="acquisition calendar")
    ap.add_argument("--out", help="output folder (default benchmarks/output/dataset, or dataset_<scenario>)")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument(
        "--fine-every-date",
        action="store_true",
        help="a ceiling, not a scene: the scenario with a cloud-free fine MS on the dates without HS as well "
        "(default out: dataset_<scenario>_fine_every_date). Fused with a model trained on the scenario, it "
        "shows what a perfect temporal prediction of the fine MS would give on those dates.",
    )
    args = ap.parse_args(argv)
    args.out = args.out or default_out(args.scenario + ("_fine_every_date" if args.fine_every_date else ""))
    t0 = time.time()
    os.makedirs(args.out, exist_ok=True)
    align = RATIO_SCENE_ALIGN if args.scenario in RATIO_SCENES else ALIGN
    hs, wl, fwhm, grid, n_tiles, acquired = build_mosaic(
        os.path.join(args.data, "enmap_potsdam"), os.path.join(args.out, "enmap_mosaic.vrt"), align
    )
    t_mosaic = time.time() - t0
    gf6_file = os.path.join(args.data, "srf", "GF6_WFV.txt")
    measured = load_srf_file(gf6_file) if os.path.exists(gf6_file) else None
    dense_source = (
        "measured GF-6 WFV responses (srf/GF6_WFV.txt, from acolite)"
        if measured
        else "resources/sensors/gf6_wfv.json (Gaussian bands)"
    )
    sensors = sim_sensors.default_sensors(wl, fwhm, DENSE_FACTOR, HS_FACTOR, dense_response=measured)
    dropped = [
        n for n in (measured or srf.sensor_preset("gf6_wfv")).names if n not in sensors["dense_ms"].response.names
    ]
    responses = {
        "fine_ms": "resources/sensors/zy1_02d_vnic.json (Gaussian bands)",
        "dense_ms": f"{dense_source}; left out (outside the EnMAP range): {', '.join(dropped) or 'none'}",
    }
    products = args.scenario in PRODUCT_SCENARIOS
    if products:
        sensors, responses = product_sensors(args.data, wl, fwhm)
    elif args.scenario == "swir_offset_5_8":
        sensors, responses = swir_sensors(args.data, wl, fwhm)
    elif args.scenario == "landsat_ratio_3":
        sensors, responses = product_sensors(args.data, wl, fwhm, LANDSAT_RATIO)
        responses["dense_ms"] += f", {LANDSAT_RATIO} times the grid"
    elif args.scenario in RATIO_SCENES:
        sensors, responses = prisma_ratio_sensors(args.data, wl, fwhm, RATIO_SCENES[args.scenario])
    design, sensors, calendar, extra = scenario_design(args.scenario, args.seed, sensors)
    added = ()
    if args.fine_every_date:
        added = tuple(("fine_ms", d) for d in NO_HS if d not in design.role_dates["fine_ms"])
        design.role_dates["fine_ms"] = sorted(design.role_dates["fine_ms"] + [d for _, d in added])
        calendar += f"; a ceiling: cloud-free fine MS added on {', '.join(d for _, d in added)}"
        extra = {**extra, "fine_every_date": True}
    t_setup = time.time() - t0
    # The truth on every acquisition date (the union of the roles' dates), so each sensor sees its own day.
    truth = sim_truth.simulate_truth(hs, wl, design.dates, seed=args.seed, mean_parcel_area_px=MEAN_PARCEL_AREA_PX)
    t_truth = time.time() - t0 - t_setup
    images = simulate_inputs(truth, wl, fwhm, design, sensors, args.seed, extra.get("nominal_dates"), added)
    t_inputs = time.time() - t0 - t_setup - t_truth
    source = "simulated from the real EnMAP L2A image of Potsdam (2022-07-24) by STS Fusion benchmarks/make_dataset.py"
    if products:
        files, clouds, images = write_products(
            args.out, images, grid, args.seed, cloudy=args.scenario == "products_cloudy"
        )
        extra = {
            **extra,
            "products": files,
            "product_families": PRODUCT_FAMILIES,
            "clouds": clouds,
            "clouds_note": "shares of each image's own grid flagged cloud / cloud shadow by its quality "
            "layer (the data there look like clouds and shadows: bright, dark; not nodata)",
        }
    else:
        files = sim_writing.write_inputs(args.out, images, grid, {"SOURCE": source})
    # The truth in the HS sensor's bands: its own where it keeps the truth's (EnMAP), else (PRISMA-like)
    # the fine truth through the HS's responses, without its noise, gains or blur.
    truth_out, truth_wl, truth_fwhm = truth, wl, fwhm
    hs_response = sensors["hs"].response
    if hs_response is not None:
        values = np.stack([srf.spectral_resample(v, wl, hs_response, fwhm) for v in truth.values]).astype(np.float32)
        truth_out = dataclasses.replace(truth, values=values)
        truth_wl, truth_fwhm = hs_response.centres(), hs_response.fwhm()
    truth_files = sim_writing.write_truth(
        os.path.join(args.out, "truth"), truth_out, grid, truth_wl, truth_fwhm, {"SOURCE": source}
    )
    command = "python benchmarks/make_dataset.py"
    if args.scenario != "same_day":
        command += f" --scenario {args.scenario}"
    if args.fine_every_date:
        command += " --fine-every-date"
    summary = sim_writing.series_summary(design, images, files, grid, truth_wl)
    kinds = np.bincount(truth.schedule_kind, minlength=len(sim_truth.SCHEDULES))
    summary.update(
        {
            "description": "Development benchmark, SIMULATED from one real EnMAP image (no public "
            "multi-date hyperspectral series exists): see benchmarks/make_dataset.py.",
            "source": {
                "tiles": n_tiles,
                "folder": "../shared/data/enmap_potsdam",
                "acquired": acquired,
                "bands_kept": int(len(wl)),
                "bands_dropped": "6 with bbl=0 (1331-1391 nm)",
            },
            "responses": responses,
            "seed": args.seed,
            "command": command,
            "scenario": args.scenario,
            "calendar": calendar,
            **extra,
            "truth_dir": "truth",
            "truth_files": truth_files,
            "hs_dates": design.role_dates["hs"],
            "fine_ms_dates": design.role_dates["fine_ms"],
            "dense_ms_dates": design.role_dates["dense_ms"],
            "no_hs_dates": list(NO_HS),
            "held_out_dates": list(HELD_OUT),
            "tuning_dates": list(TUNING),
            "held_out_rule": "The held-out dates are for the final evaluation only: no parameter, "
            "architecture or stopping decision may look at their results.",
            "valid_fraction_fine_grid": round(float(np.isfinite(hs[0]).mean()), 4),
            "parcels": int(truth.parcels.max()) + 1,
            "parcel_schedules": {k: int(n) for k, n in zip(sim_truth.SCHEDULES, kinds)},
            "endmember_roles": {k: [int(i) for i in v] for k, v in truth.unmixing.roles.items()},
            "n_endmembers": int(truth.unmixing.endmembers.shape[0]),
        }
    )
    sim_writing.write_json(os.path.join(args.out, "dataset.json"), summary)
    total = time.time() - t0
    size = sum(
        os.path.getsize(p)
        for p in glob.glob(os.path.join(args.out, "**", "*"), recursive=True)
        if os.path.isfile(p) and p.lower().endswith((".tif", ".jp2"))
    )
    kind = "products" if products else "GeoTIFFs"
    print(
        f"benchmark dataset in {args.out}: {sum(len(v) for v in files.values())} input {kind} + "
        f"{len(truth_files)} truth GeoTIFFs, {size / 1e6:.1f} MB"
    )
    print(
        f"fine grid {grid.width}x{grid.height} px at {grid.pixel_size:g} m, {len(truth_wl)} HS bands; "
        f"held out: {', '.join(HELD_OUT)}; tuning: {', '.join(TUNING)}"
    )
    print(f"scenario {args.scenario}: {calendar}")
    for role in ("fine_ms", "dense_ms", "hs"):
        print(f"  {role}: {', '.join(design.role_dates[role])}")
        for date, share in summary.get("clouds", {}).get(role, {}).items():
            if share["cloud"] or share["shadow"]:
                print(f"    {date}: flagged cloud {share['cloud']:.1%}, shadow {share['shadow']:.1%}")
    print(f"time: mosaic {t_mosaic:.1f} s, truth {t_truth:.1f} s, inputs {t_inputs:.1f} s, total {total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
