"""The three-branch multi-task fusion network (PyTorch only; see model/README.md for the design).

Every module here works on one date at a time, tensors (batch, channel, row, col), values already
normalised (MS: per-band z-scores; HS: scaled PCA scores), invalid pixels filled with 0 and
described by validity channels (batch, 1, row, col) of 0/1. The data side (model/training_data.py,
model/predictor.py) turns (time, band, row, col) stacks of an MDD into these per-date tensors.

All convolutions pad with zeros, and every fill value is a constant, so a pixel's output depends
only on the pixels within ``FusionNetwork.halo`` of it: tiled fusion equals a one-tile run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..core.degrade import psf_sigma
from .options import KERNEL_SETS


class NetworkError(ValueError):
    """An invalid network configuration."""


def parse_kernels(kernels: str) -> tuple:
    """ "1", "1/3" or "1/3/5" -> the tuple of kernel sizes (the block's cardinality is its length)."""
    key = str(kernels).strip().replace(",", "/").replace(" ", "")
    if key not in KERNEL_SETS:
        raise NetworkError(f"Unknown kernel set '{kernels}': choose one of {', '.join(KERNEL_SETS)}.")
    return KERNEL_SETS[key]


class MultiScaleResidualBlock(nn.Module):
    """y = x + sum_i F_i(x): one group per kernel size k_i, F_i = 1x1 -> kxk -> 1x1 (ResNeXt-like).

    Input and output (batch, channels, row, col). The groups run in parallel, so a larger kernel set
    adds width (cardinality), not depth.
    """

    def __init__(self, channels: int, kernels: tuple, group_width: int = 16) -> None:
        super().__init__()
        self.kernels = tuple(kernels)
        self.groups = nn.ModuleList()
        for k in self.kernels:
            group = nn.Sequential(
                nn.Conv2d(channels, group_width, 1),
                nn.ReLU(),
                nn.Conv2d(group_width, group_width, k, padding=k // 2),
                nn.ReLU(),
                nn.Conv2d(group_width, channels, 1),
            )
            with torch.no_grad():  # a small residual at start keeps a deep stack near identity
                group[-1].weight.mul_(0.1)
            self.groups.append(group)

    @property
    def radius(self) -> int:
        return max(self.kernels) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for group in self.groups:
            out = out + group(x)
        return out


class Trunk(nn.Module):
    """1x1 stem -> n multi-scale residual blocks -> 1x1 output (zero-initialised: starts at the prior).

    forward(x (B, in, H, W)) -> (output (B, out, H, W), features (B, width, H, W)).
    """

    def __init__(self, in_ch: int, out_ch: int, kernels: tuple, width: int, n_blocks: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_ch, width, 1)
        self.blocks = nn.Sequential(*[MultiScaleResidualBlock(width, kernels) for _ in range(n_blocks)])
        self.out = nn.Conv2d(width, out_ch, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.radius = n_blocks * (max(kernels) // 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Channels-last on the CPU: oneDNN runs the trunk's small convolutions about 1.5 times faster
        # there, forward and backward (the demo's training about 20 % faster); the values are those of
        # the channels-first layout to float32 rounding. GPUs keep the layout they were measured with.
        if x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        features = self.blocks(torch.relu(self.stem(x)))
        return self.out(features), features


class SpatialBranch(nn.Module):
    """Dense MS at date t -> fine MS at t: the detail the fine sensor adds over the resampled dense MS.

    Prior: a learned linear band mapping (1x1) of the dense MS; the trunk adds the spatial detail.
    forward(d (B, n_dense, H, W), vd (B, 1, H, W)) -> (fine MS (B, n_fine, H, W), features).
    """

    def __init__(self, n_dense: int, n_fine: int, kernels: tuple, width: int, n_blocks: int) -> None:
        super().__init__()
        self.linear = nn.Conv2d(n_dense, n_fine, 1)
        self.trunk = Trunk(n_dense + 1, n_fine, kernels, width, n_blocks)

    def forward(self, d: torch.Tensor, vd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        detail, features = self.trunk(torch.cat([d, vd], 1))
        return self.linear(d) + detail, features


# The most values (neighbour offsets x pixels) GuidedChange.similarity may hold at once: 32 M float32,
# 128 MB (a radius 3 guided change over a 316 px window holds 2.9 M); beyond, spread judges each offset
# as it goes.
MAX_SIMILARITY = 32_000_000


class GuidedChange(nn.Module):
    """The dense-MS change at each fine pixel as the mean change of its similar neighbours (STARFM,
    Gao et al. 2006): neighbours within ``radius`` pixels whose fine MS is within ``tol`` (z units,
    2σ/4 as STARFM's 4 classes) of the centre's in every band, weighted by 1 / (1 + distance /
    radius). A dense pixel's change is spread over the fields it covers by what the fine MS shows of
    them, instead of being smeared across their edges by the bilinear resampling. The guide is the
    fine MS at the source date, or (``FusionNetwork.multi_date_guide``) the fine MS of every date but
    the target's, band by band: a neighbour must be similar on every date, as pixels of one field are.
    Fixed (not learned); exact on any window that reaches ``radius`` beyond the pixel.
    forward(f (B, G, H, W) guide, c (B, C, H, W) change, v (B, 1, H, W) validity) -> (B, C, H, W);
    ``spread`` takes several changes (with their validities) under one guide, judging similarity once.
    """

    def __init__(self, radius: int, tol: float = 0.5) -> None:
        super().__init__()
        self.radius, self.tol = int(radius), float(tol)
        r = self.radius
        self.offsets = [
            (dy, dx, 1.0 / (1.0 + math.hypot(dy, dx) / r))
            for dy in range(-r, r + 1)
            for dx in range(-r, r + 1)
            if math.hypot(dy, dx) <= r
        ]

    def forward(self, f: torch.Tensor, c: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.spread(f, [(c, v)])[0]

    def similarity(self, f: torch.Tensor) -> list[torch.Tensor]:
        """Per neighbour offset, (B, 1, H, W): its distance weight where it is similar to the centre
        in every channel of the guide ``f``, else 0. What ``spread`` tests; a caller fusing several
        dates under one guide computes it once (``FusionPredictor``). The test is symmetric (offset o
        at p is offset -o at p + o), so each pair of opposite offsets is judged once, on the rows and
        columns both need: half the work, the same values."""
        r = self.radius
        H, W = f.shape[-2:]
        index = {(dy, dx): i for i, (dy, dx, _) in enumerate(self.offsets)}
        with torch.no_grad():
            fp = nn.functional.pad(f, (r, r, r, r))
            out = [None] * len(self.offsets)
            for i, (dy, dx, w) in enumerate(self.offsets):
                if out[i] is not None:
                    continue
                if dy == 0 and dx == 0:  # the centre is always similar to itself
                    out[i] = torch.full_like(f[:, :1], w)
                    continue
                y0, x0 = r - max(dy, 0), r - max(dx, 0)  # padded rows/cols u where both tests read
                h, wd = H + abs(dy), W + abs(dx)
                a = fp[..., y0 : y0 + h, x0 : x0 + wd]
                b = fp[..., y0 + dy : y0 + dy + h, x0 + dx : x0 + dx + wd]
                near = (b - a).abs_().amax(1, keepdim=True) <= self.tol  # near(u): |f(u + o) - f(u)|
                out[i] = near[..., r - y0 : r - y0 + H, r - x0 : r - x0 + W].to(f.dtype).mul_(w)
                j = index[(-dy, -dx)]  # -o at p: near(p - o)
                ym, xm = r - dy - y0, r - dx - x0
                out[j] = near[..., ym : ym + H, xm : xm + W].to(f.dtype).mul_(self.offsets[j][2])
            return out

    def similarity_if_small(self, f: torch.Tensor) -> list[torch.Tensor] | None:
        """``similarity(f)`` where it holds at most MAX_SIMILARITY values, else None (a large radius:
        ``spread`` then judges each offset as it goes)."""
        return self.similarity(f) if len(self.offsets) * f[:, :1].numel() <= MAX_SIMILARITY else None

    def spread(
        self,
        f: torch.Tensor,
        changes: Sequence[tuple[torch.Tensor, torch.Tensor]],
        similar: Sequence[torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        """[(change, validity)] -> [spread change], one similarity test per neighbour for them all
        (``similar``: ``similarity(f)``, computed before)."""
        r = self.radius
        H, W = f.shape[-2:]
        pad = (r, r, r, r)
        if similar is None:
            similar = self.similarity_if_small(f)
        with torch.no_grad():  # inputs only, no parameter: nothing to differentiate, so in place
            fp = nn.functional.pad(f, pad) if similar is None else None
            padded = [(nn.functional.pad(c * v, pad), nn.functional.pad(v, pad)) for c, v in changes]
            sums = [(torch.zeros_like(c), torch.zeros_like(v)) for c, v in changes]
            for i, (dy, dx, w) in enumerate(self.offsets):
                ys, xs = slice(r + dy, r + dy + H), slice(r + dx, r + dx + W)
                if similar is None:  # the plain test (similarity's, one offset at a time)
                    near = ((fp[..., ys, xs] - f).abs().amax(1, keepdim=True) <= self.tol).to(f.dtype).mul_(w)
                else:
                    near = similar[i]
                for (cp, vp), (num, den) in zip(padded, sums):
                    weight = near * vp[..., ys, xs]
                    num.addcmul_(weight, cp[..., ys, xs])
                    den.add_(weight)
            return [torch.where(den > 0, num / den.clamp_min(1e-6), c) for (c, _), (num, den) in zip(changes, sums)]


class SubpixelChange(nn.Module):
    """The dense-MS change below the dense pixel, from the fine MS guide's own detail: in each window
    of ``radius`` pixels, a ridge regression of the change (as the grid holds it: the dense pixels
    resampled) on the guide blurred by ``sigma``, its coefficients averaged over the window as a
    guided filter's are (He et al. 2013), applied to the detail the blur took out of the guide:
    detail = A (g - blur(g)). Where a field smaller than a dense pixel changes unlike its
    neighbours, the windows around it see the change follow its fine MS, so the regression puts the
    change on the field's pixels instead of over the whole dense pixel (the idea of FSDAF's unmixing,
    Zhu et al. 2016, without hard classes). Added to the temporal prediction at fusion, after the
    dense MS steps (``TemporalBranch.add_subpixel``, ``predictor.SUBPIXEL_CHANGE``); training does
    not use it.
    Sizes from the dense MS's ratio to the grid: sigma 0.3 of it, radius 1.5 of it, ridge 0.1 of the
    guide's variance, chosen on the development scenes' tuning date (BENCHMARKS.md, "The dense MS
    change below the dense pixel").

    The regressions are solved on a lattice of every ``stride``-th row and column (the dense MS's
    ratio rounded down, at most ``MAX_STRIDE``), their coefficients interpolated bilinearly to every
    pixel (a fast guided filter, He & Sun 2015): the blurred guide and the change it regresses vary at
    the dense pixel's scale, so a pixel between lattice points loses little, and the work falls by the
    stride squared. (At three times the grid a lattice every 3 px lost 0.001 CC on landsat_ratio_3's
    tuning date, every 2 px none: BENCHMARKS.md, "The change below the dense pixel on a lattice".)
    The lattice lies on the grid's own rows and columns (``origin``: the tensor's first pixel on the
    grid), so every tile, whatever its offset, uses the same lattice points. Fixed (not learned);
    exact on a window ``reach`` pixels wider, computed in strips of rows so that its memory (the
    guide's channels squared per pixel) stays bounded on large tiles.
    forward(g (B, G, H, W) guide, c (B, C, H, W) change, v (B, 1, H, W) validity, origin (row, col))
    -> (B, C, H, W).
    """

    SIGMA, RADIUS, RIDGE = 0.3, 1.5, 0.1  # of the dense ratio, of the dense ratio, of the guide's variance
    # Fusion gives it the guide's first principal components, not the guide (``FusionPredictor``):
    # the cost is the channels squared per pixel, and six keep most of what all of them give
    COMPONENTS = 6
    # ... and the change's first principal components, not each dense band's (``basis``): two kept all of
    # the gain on the development scenes' tuning date, for a third of the work of seven or eight bands
    CHANGE_COMPONENTS = 2
    FLOOR = 1e-6
    STRIP_VALUES = 2**25  # values of the per-pixel systems held at once (G x (G + C) per pixel): 128 MB
    LATTICE = True  # False: every pixel's own regression (the exact guided filter; slower by the stride squared)
    MAX_STRIDE = 2

    def __init__(self, dense_ratio: float) -> None:
        super().__init__()
        self.dense_ratio = float(dense_ratio)
        self.blur = GaussianBlur(self.SIGMA * self.dense_ratio)
        self.window = max(1, int(round(self.RADIUS * self.dense_ratio)))
        self.stride = min(self.MAX_STRIDE, max(1, int(math.floor(self.dense_ratio + 1e-6)))) if self.LATTICE else 1
        # the window in lattice steps (its extent on the grid kept; the window itself at stride 1)
        self.box = max(1, int(round(self.window / self.stride)))
        # what a pixel reads: the guide's blur, the two windows (statistics, then coefficients) and, on a
        # lattice, the lattice points up to stride - 1 px away that it is interpolated between
        self.reach = self.blur.radius + 2 * self.box * self.stride + self.stride - 1
        self._last = []  # [(guide, its version, validity, origin, _guide_part's result)]: the last two

    @property
    def side(self) -> int:
        """The regression windows' side on the grid (px)."""
        return 2 * self.box * self.stride + 1

    def _box(self, x: torch.Tensor) -> torch.Tensor:
        """The mean over the window, clipped at the tensor's edges; separable (rows, then columns)."""
        r = self.box
        x = x.contiguous(memory_format=torch.channels_last)  # many channels: pooled about 1.5 times faster
        x = nn.functional.avg_pool2d(x, (2 * r + 1, 1), stride=1, padding=(r, 0), count_include_pad=False)
        x = nn.functional.avg_pool2d(x, (1, 2 * r + 1), stride=1, padding=(0, r), count_include_pad=False)
        return x.contiguous()

    def forward(
        self,
        g: torch.Tensor,
        c: torch.Tensor,
        v: torch.Tensor,
        origin: tuple[int, int] = (0, 0),
        basis: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``basis`` (k, C): regress the change's k components on it (``FusionPredictor._change_basis``)
        and give the detail back in the change's C channels."""
        if basis is not None:
            detail = self.forward(g, torch.einsum("kc,bchw->bkhw", basis.to(c.dtype), c), v, origin)
            return torch.einsum("kc,bkhw->bchw", basis.to(c.dtype), detail)
        with torch.no_grad():  # inputs only, no parameter
            G, C, H = g.shape[1], c.shape[1], g.shape[-2]
            per_row = max(1, g.shape[0] * g.shape[-1] * G * (G + C) // (self.stride * self.stride))
            rows = max(1, self.STRIP_VALUES // per_row - 2 * self.reach)
            if rows >= H:
                return self._detail(g, c, v, origin)
            out = []
            for y0 in range(0, H, rows):
                a, b = max(0, y0 - self.reach), min(H, y0 + rows + self.reach)
                part = self._detail(g[..., a:b, :], c[..., a:b, :], v[..., a:b, :], (origin[0] + a, origin[1]))
                out.append(part[..., y0 - a : y0 - a + min(rows, H - y0), :])
            return torch.cat(out, dim=-2)

    def _lattice(self, shape: tuple, origin: tuple[int, int]) -> tuple:
        """(row slice, col slice) of the tensor's pixels on the grid's lattice (rows and columns that
        are multiples of ``stride`` on the grid)."""
        s = self.stride
        return slice((-int(origin[0])) % s, int(shape[0]), s), slice((-int(origin[1])) % s, int(shape[1]), s)

    def _upsample(self, x: torch.Tensor, where: tuple, shape: tuple) -> torch.Tensor:
        """Lattice values (B, K, h, w) at ``where`` (``_lattice``) to every pixel of ``shape``: linear
        between the lattice points along rows, then columns; constant beyond the first and last. Each
        of the ``stride`` phases between two lattice points is one weighted sum of the lattice shifted,
        interleaved; a pixel's weights depend only on its place on the grid, so tiles agree exactly."""
        s = self.stride
        for axis in (0, 1):
            dim = x.dim() - 2 + axis
            n = x.shape[dim]
            x = torch.cat([x.narrow(dim, 0, 1), x, x.narrow(dim, n - 1, 1)], dim)  # one more point each end
            lo, hi = x.narrow(dim, 0, n + 1), x.narrow(dim, 1, n + 1)
            phases = [lo if p == 0 else lo * (1 - p / s) + hi * (p / s) for p in range(s)]
            x = torch.stack(phases, dim + 1).flatten(dim, dim + 1)  # position j: lattice point j // s, phase j % s
            # position 0 is the added point, ``stride`` pixels before the tensor's first lattice point
            x = x.narrow(dim, s - where[axis].start, int(shape[axis]))
        return x

    def _guide_part(self, g: torch.Tensor, v: torch.Tensor, origin: tuple[int, int]) -> tuple:
        """What depends on the guide and the validity alone: the guide's detail (what its blur takes
        out), and on the lattice the windows' valid share, the guide's means and the inverse of its
        ridged covariance (zero where it is not positive definite), channels first. Fusion's dates of
        one tile share their guide: the last two (a date's two sources) are kept and reused, so the
        systems are inverted once and each change only multiplied (solving them for each change, as
        first built, took a third of this module's time in a fusion)."""
        for last in self._last:
            if last[0] is g and last[1] == g._version and last[3] == origin and torch.equal(last[2], v):
                return last[4]
        gb, _ = self.blur(g, torch.ones_like(g[:, :1]))
        where = self._lattice(g.shape[-2:], origin)
        gl, vl = gb[..., where[0], where[1]], v[..., where[0], where[1]]
        B, G, H, W = gl.shape
        n = self._box(vl).clamp_min(1e-6)
        gw = gl * vl
        mg = self._box(gw) / n
        i, j = torch.triu_indices(G, G, device=g.device)  # the covariance is symmetric: its upper half
        upper = (self._box(gl[:, i] * gw[:, j]) / n - mg[:, i] * mg[:, j]).permute(0, 2, 3, 1)
        gg = g.new_zeros(B, H, W, G, G)
        gg[..., i, j] = upper
        gg[..., j, i] = upper
        # the ridge, relative to the guide's variance, and a floor where the guide is flat (zero-filled
        # gaps): the normalised guide's units, so the systems stay positive definite in float32
        ridge = self.RIDGE * torch.diagonal(gg, dim1=-2, dim2=-1).mean(-1).clamp_min(0) + self.FLOOR
        gg.diagonal(dim1=-2, dim2=-1).add_(ridge[..., None])
        factor, info = torch.linalg.cholesky_ex(gg)
        inverse = torch.where((info == 0)[..., None, None], torch.cholesky_inverse(factor), torch.zeros_like(gg))
        part = (g - gb, where, gw, n, mg, inverse.permute(0, 3, 4, 1, 2).contiguous())  # (B, G, G, H, W)
        self._last = [(g, g._version, v.clone(), tuple(origin), part)] + self._last[:1]  # the two sources of a date
        return part

    def _detail(self, g: torch.Tensor, c: torch.Tensor, v: torch.Tensor, origin: tuple[int, int]) -> torch.Tensor:
        h, where, gw, n, mg, inverse = self._guide_part(g, v, tuple(int(o) for o in origin))
        B, G, H, W = gw.shape
        C = c.shape[1]
        cl, vl = c[..., where[0], where[1]], v[..., where[0], where[1]]
        mc = self._box(cl * vl) / n
        gc = self._box((gw[:, :, None] * cl[:, None]).flatten(1, 2)) / n - (mg[:, :, None] * mc[:, None]).flatten(1, 2)
        gc = gc.view(B, G, C, H, W)
        coef = inverse[:, :, 0, None] * gc[:, None, 0]  # (B, G, C, H, W): inverse @ gc, one term at a time so
        for j in range(1, G):  # that each pixel's sums do not depend on the tensor's size (tiles, strips)
            coef += inverse[:, :, j, None] * gc[:, None, j]
        coef = self._box(coef.reshape(B, G * C, H, W) * vl) / n
        if self.stride > 1:
            coef = self._upsample(coef, where, g.shape[-2:])
        detail = torch.einsum("bgchw,bghw->bchw", coef.view(B, G, C, *g.shape[-2:]), h)
        return detail * (v > 0).to(detail.dtype)


class TemporalBranch(nn.Module):
    """Fine MS at a date q plus dense MS at q and t -> fine MS at t: the change between dates.

    Prior: f_q + L(d_t - d_q) (the dense-MS change mapped to the fine bands, STARFM-like, spread over
    the fine fields by ``GuidedChange``). With ``trunk`` (models from before ``temporal_trunk``) a
    trunk corrects it where the change is finer than the dense pixel or not linear, and gives the head
    its features; without, the prediction is the prior and there are no features (None).
    forward(f_q (B, n_fine, H, W), d_q, d_t (B, n_dense, H, W)) -> (fine MS at t, features or None).
    """

    def __init__(
        self,
        n_fine: int,
        n_dense: int,
        kernels: tuple,
        width: int,
        n_blocks: int,
        guided_radius: int = 0,
        trunk: bool = True,
    ) -> None:
        super().__init__()
        self.change = nn.Conv2d(n_dense, n_fine, 1)
        self.trunk = Trunk(n_fine + 3 * n_dense, n_fine, kernels, width, n_blocks) if trunk else None
        self.guided = GuidedChange(guided_radius) if guided_radius > 0 else None
        self.subpixel = None  # fusion's SubpixelChange (``add_subpixel``); never trained with
        self.radius = (self.trunk.radius if trunk else 0) + (guided_radius if guided_radius > 0 else 0)

    def add_subpixel(self, dense_ratio: float) -> None:
        """The dense MS change below the dense pixel (``SubpixelChange``) from now on, for a dense MS
        ``dense_ratio`` times the grid (``below_dense_pixel``; ``FusionNetwork.ms_estimate`` adds it
        after the dense MS steps, so it reads ``subpixel.reach`` around a pixel beside them, not
        beyond them: ``FusionNetwork.halo_with``)."""
        self.subpixel = SubpixelChange(dense_ratio).to(self.change.weight.device)

    def below_dense_pixel(
        self,
        guides: Sequence[torch.Tensor],
        sources: Sequence[tuple],
        origin: tuple[int, int] = (0, 0),
        change_basis: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """[(d_q, d_t, v)] -> each source's change below the dense pixel on the fine bands, L0 (the
        change map without its bias) of ``SubpixelChange`` of d_t - d_q under its guide; ``origin``
        and ``change_basis``: ``SubpixelChange``'s."""
        w = self.change.weight
        return [
            nn.functional.conv2d(self.subpixel(g, d_t - d_q, v, origin, change_basis), w)
            for g, (d_q, d_t, v) in zip(guides, sources)
        ]

    def forward(
        self,
        f_q: torch.Tensor,
        d_q: torch.Tensor,
        d_t: torch.Tensor,
        v: torch.Tensor | None = None,
        guide: torch.Tensor | None = None,
        delta: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``v`` (B, 1, H, W): where f_q, d_q and d_t are all valid (for the guided change); ``guide``
        the guided change's fine MS (default f_q); ``delta`` the change already spread (``spread``)."""
        if delta is None:
            delta = self.spread(f_q if guide is None else guide, [(d_q, d_t, v)])[0]
        prior = f_q + self.change(delta)
        if self.trunk is None:
            return prior, None
        correction, features = self.trunk(torch.cat([f_q, d_q, d_t, delta], 1))
        return prior + correction, features

    def spread(
        self,
        guide: torch.Tensor,
        sources: Sequence[tuple],
        similar: Sequence[torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        """[(d_q, d_t, v)] -> the change d_t - d_q of each source, guided by ``guide`` when the branch
        has the guided change (its similarity judged once for them all, or given: ``similar``), else
        as it is."""
        deltas = [(d_t - d_q, v if v is not None else torch.ones_like(d_t[:, :1])) for d_q, d_t, v in sources]
        return [delta for delta, _ in deltas] if self.guided is None else self.guided.spread(guide, deltas, similar)


class SpectralBranch(nn.Module):
    """Fine-sensor MS -> PCA scores of the HS (learned at the HS scale, applied at any scale).

    Prior: linear regression (1x1); the trunk adds the non-linear part.
    forward(m (B, n_fine, H, W)) -> (scores (B, k, H, W), features).
    """

    def __init__(self, n_fine: int, n_components: int, kernels: tuple, width: int, n_blocks: int) -> None:
        super().__init__()
        self.linear = nn.Conv2d(n_fine, n_components, 1)
        self.trunk = Trunk(n_fine, n_components, kernels, width, n_blocks)

    def forward(self, m: torch.Tensor, wmap: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``wmap`` (B, k, n_fine + 1): a date's own linear map (weights, then the intercept) in
        place of the learned one (``FusionNetwork.date_maps``)."""
        correction, features = self.trunk(m)
        return (self.linear(m) if wmap is None else apply_map(wmap, m)) + correction, features


def apply_map(wmap: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """A per-sample linear map (B, k, C + 1: weights, then the intercept) of m (B, C, H, W)."""
    return torch.einsum("bkc,bchw->bkhw", wmap[:, :, :-1], m) + wmap[:, :, -1, None, None]


class GaussianBlur(nn.Module):
    """Normalised Gaussian convolution: blur(x * v) / blur(v), zero outside the tensor.

    sigma in pixels of the grid being processed; forward(x (B, C, H, W), v (B, 1, H, W)) ->
    (blurred x, validity (B, 1, H, W)), valid where at least 20% of the kernel weight was valid.
    """

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = float(sigma)
        self.radius = int(math.ceil(3 * self.sigma)) if self.sigma > 0 else 0
        t = torch.arange(-self.radius, self.radius + 1, dtype=torch.float32)
        k = torch.exp(-0.5 * (t / max(self.sigma, 1e-6)) ** 2)
        self.register_buffer("kernel", k / k.sum(), persistent=False)

    def _conv(self, x):
        c = x.shape[1]
        r = self.radius
        kx = self.kernel.to(x.dtype).view(1, 1, 1, -1).repeat(c, 1, 1, 1)
        ky = self.kernel.to(x.dtype).view(1, 1, -1, 1).repeat(c, 1, 1, 1)
        x = nn.functional.conv2d(x, kx, padding=(0, r), groups=c)
        return nn.functional.conv2d(x, ky, padding=(r, 0), groups=c)

    def forward(self, x: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.radius == 0:
            return x * v, v
        w = self._conv(v)
        out = self._conv(x * v) / w.clamp_min(1e-6)
        valid = (w > 0.2).to(x.dtype)
        return out * valid, valid


class FusionHead(nn.Module):
    """g: concatenated branch features -> a correction of the prior in HS PCA scores.

    The correction is blurred by `sigma` pixels (the HS PSF) when `sigma` > 0: it is supervised by
    HS images only, so it may correct what an HS image sees but not the fine detail.
    forward(x (B, in, H, W), prior (B, k, H, W), valid (B, 1, H, W)) -> prior + correction.
    """

    def __init__(
        self, in_ch: int, n_components: int, kernels: tuple, width: int, n_blocks: int, sigma: float = 0.0
    ) -> None:
        super().__init__()
        self.trunk = Trunk(in_ch, n_components, kernels, width, n_blocks)
        self.blur = GaussianBlur(sigma)
        self.radius = self.trunk.radius + self.blur.radius

    def forward(self, x: torch.Tensor, prior: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        correction, _ = self.trunk(x)
        correction, _ = self.blur(correction, valid)
        return prior + correction


class FusionNetwork(nn.Module):
    """The whole model: spatial, temporal and spectral branches, a fusion head, one date at a time.

    Sizes: n_fine / n_dense MS bands, k PCA components. hs_ratio: HS pixel size / grid pixel size.
    Inputs of ``fuse`` are a dict of normalised, zero-filled tensors (B, C, H, W) with validity
    (B, 1, H, W) (see ``fuse``); its output is the fine HS in PCA scores (B, k, H, W).
    Design switches (saved in the model file; defaults measured on the development benchmark's
    tuning date, see model/README.md): reference_in_prior adds rho to the prior instead of leaving
    it to the head; smooth_correction blurs the head's correction to the HS scale;
    reference_smoothing scales the extra blur of rho (0 = none); temporal_trunk gives the temporal
    branch a trunk (its correction and features; False: the guided prior alone).
    """

    def __init__(
        self,
        n_fine: int,
        n_dense: int,
        n_components: int,
        kernels: str | Sequence[int] = "1",
        hs_ratio: float = 3.0,
        width: int = 32,
        n_blocks: int = 2,
        reference_smoothing: float = 2.0,
        reference_in_prior: bool = False,
        smooth_correction: bool = True,
        reference_gap: bool = True,
        date_maps: bool = False,
        guided_radius: int = 0,
        hs_sigma: float | None = None,
        multi_date_guide: bool = False,
        temporal_trunk: bool = True,
    ) -> None:
        super().__init__()
        self.kernels = parse_kernels(kernels) if isinstance(kernels, str) else tuple(kernels)
        self.config = dict(
            n_fine=n_fine,
            n_dense=n_dense,
            n_components=n_components,
            kernels="/".join(str(k) for k in self.kernels),
            hs_ratio=float(hs_ratio),
            width=width,
            n_blocks=n_blocks,
            reference_smoothing=float(reference_smoothing),
            reference_in_prior=bool(reference_in_prior),
            smooth_correction=bool(smooth_correction),
            reference_gap=bool(reference_gap),
            date_maps=bool(date_maps),
            guided_radius=int(guided_radius),
            hs_sigma=float(hs_sigma) if hs_sigma else None,
            multi_date_guide=bool(multi_date_guide),
            temporal_trunk=bool(temporal_trunk),
        )
        # The HS's blur as it lies on the grid (registration.estimate_blur: its PSF and the resampling);
        # None: the PSF alone, a Gaussian of FWHM one HS pixel (models from before it).
        self.hs_sigma = float(hs_sigma) if hs_sigma else psf_sigma(hs_ratio)
        # True: the guided change judges similarity on the fine MS of every date but the target's
        # (inputs "guide", GuidedChange); False (models from before): on the source date's alone.
        self.multi_date_guide = bool(multi_date_guide)
        # True: the spectral branch's linear part is the date's own map (fitted on each HS date,
        # blended in time between them: ``date_maps.py``), given with the inputs as "wmap".
        self.date_maps = bool(date_maps)
        self.reference_in_prior = bool(reference_in_prior)
        # False when training saw a single HS date: the time to the reference was always 0 then, so
        # it is left out rather than extrapolated.
        self.reference_gap = bool(reference_gap)
        self.spatial = SpatialBranch(n_dense, n_fine, self.kernels, width, n_blocks)
        # False: the temporal prediction is its guided prior alone, no trunk and no features for the
        # head (a correction learned on the scene's few pairs of fine MS dates did not carry over to
        # other dates); True: models from before.
        self.temporal_trunk = bool(temporal_trunk)
        self.temporal = TemporalBranch(
            n_fine, n_dense, self.kernels, width, n_blocks, int(guided_radius), self.temporal_trunk
        )
        self.spectral = SpectralBranch(n_fine, n_components, self.kernels, width, n_blocks)
        self.blur = GaussianBlur(self.hs_sigma)
        # rho holds only HS-scale detail; a second HS-PSF blur keeps that and drops the HS noise and
        # the edge artefacts of a misregistered coarse sensor, which the reduced scale cannot show.
        self.rho_blur = GaussianBlur(self.hs_sigma * float(reference_smoothing))
        head_in = (3 if self.temporal_trunk else 2) * width + 3 * n_components + 5
        self.head = FusionHead(
            head_in, n_components, self.kernels, width, n_blocks, self.hs_sigma if smooth_correction else 0.0
        )

    @property
    def halo(self) -> int:
        """Pixels of context a window needs on each side for exact (seamless) outputs."""
        return self.halo_with(0)

    def halo_with(self, temporal_extra: int, input_extra: int = 0) -> int:
        """``halo`` when the temporal prediction reads ``temporal_extra`` more pixels around each pixel
        (fusion's ``dense_consistency`` steps) and the fine MS estimate's inputs themselves
        ``input_extra`` more (a dense MS made from the fine MS through its blur)."""
        below = self.temporal.subpixel.reach if self.temporal.subpixel is not None else 0  # beside the steps
        r_ms = max(self.spatial.trunk.radius, self.temporal.radius + int(temporal_extra), below) + int(input_extra)
        r_ref = self.spatial.trunk.radius + self.blur.radius + self.rho_blur.radius
        return self.head.radius + self.spectral.trunk.radius + max(r_ms, r_ref)

    def ms_estimate(self, x: dict, below_dense_pixel: bool = True) -> tuple[torch.Tensor, ...]:
        """Fine MS at date t: observed where valid, else the temporal prediction, else the spatial one.
        ``below_dense_pixel`` False: the temporal prediction without ``TemporalBranch.subpixel``.

        Returns (m, vm, spatial prediction, temporal prediction, spatial features, temporal features,
        temporal validity).
        """
        sp, sp_feat = self.spatial(x["d"], x["vd"])
        vt = x["vfq"] * x["vdq"] * x["vd"]
        sources = [(x["dq"], x["d"], vt)]
        if "fq2" in x:  # a second source on the other side of t (fusion only): blend by weight wq
            vt2 = x["vfq2"] * x["vdq2"] * x["vd"]
            sources.append((x["dq2"], x["d"], vt2))
        guide = x["guide"] if self.multi_date_guide and "guide" in x else None
        g = x["fq"] if guide is None else guide  # what guides the change and the dense MS steps' spread
        similar = x.get("guide_similar") if guide is not None else None
        origin = x.get("origin", (0, 0))  # the window's first pixel on the grid (SubpixelChange's lattice)
        basis = x.get("change_basis")  # the change's components SubpixelChange regresses
        if guide is None and len(sources) == 2:  # each source's own fine MS guides its change
            deltas = [self.temporal.spread(x[f], [src])[0] for f, src in zip(("fq", "fq2"), sources)]
            detail_guides = [x["fq"], x["fq2"]]
        else:
            detail_guide = x.get("subpixel_guide") if guide is not None else None
            deltas = self.temporal.spread(g, sources, similar)
            detail_guides = [g if detail_guide is None else detail_guide] * len(sources)
        below = None  # each source's change below the dense pixel, on the fine bands (fusion only)
        if below_dense_pixel and self.temporal.subpixel is not None:
            below = self.temporal.below_dense_pixel(detail_guides, sources, origin, basis)
        tp, t_feat = self.temporal(x["fq"], x["dq"], x["d"], vt, delta=deltas[0])
        if "fq2" in x:
            tp2, t_feat2 = self.temporal(x["fq2"], x["dq2"], x["d"], vt2, delta=deltas[1])
            w1, w2 = vt * x["wq"], vt2 * (1 - x["wq"])
            total = torch.clamp(w1 + w2, min=1e-12)
            tp = (w1 * tp + w2 * tp2) / total
            if t_feat is not None:
                t_feat = (w1 * t_feat + w2 * t_feat2) / total
            if below is not None:
                below = [(w1 * below[0] + w2 * below[1]) / total]  # blended as the predictions are
            vt = torch.maximum(vt, vt2)
        if "consistency" in x:  # fusion: put back in line with the date's own dense MS (dense_consistency.py)
            guided = self.temporal.guided
            spread = (lambda c, v: guided.spread(g, [(c, v)], similar)[0]) if guided is not None else (lambda c, v: c)
            tp = x["consistency"](tp, vt * x["vd"], x["d"], x["dense_gain"], self.temporal.change.weight, spread)
        if below is not None:  # after the steps: the dense sensor's blur takes most of it out, and so
            tp = tp + below[0]  # its reach lies beside theirs, not beyond (CC within 0.0001 on the tuning date)
        va = x["va"]
        m = va * x["a"] + (1 - va) * (vt * tp + (1 - vt) * x["vd"] * sp)
        vm = torch.maximum(va, torch.maximum(vt, x["vd"]))
        return m, vm, sp, tp, sp_feat * x["vd"], None if t_feat is None else t_feat * vt, vt

    def reference_residual(
        self,
        ar: torch.Tensor,
        var: torch.Tensor,
        dr: torch.Tensor,
        vdr: torch.Tensor,
        h: torch.Tensor,
        vh: torch.Tensor,
        wmap: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """rho = HS_r - S(MS_r at the HS scale): the spectral detail of the reference date that the
        MS cannot explain. ar/dr (B, n, H, W) MS of the reference date, h (B, k, H, W) its HS scores."""
        if bool((var > 0).all()):  # the fine MS covers the window: the spatial prediction is not used
            m_r = var * ar
        else:
            sp_r, _ = self.spatial(dr, vdr)
            m_r = var * ar + (1 - var) * vdr * sp_r
        vm_r = torch.maximum(var, vdr)
        mb, vmb = self.blur(m_r, vm_r)
        s_r, _ = self.spectral(mb, wmap)
        v = vh * vmb
        return self.rho_blur((h - s_r) * v, v)

    def fuse(self, x: dict, ms: tuple | None = None) -> dict:
        """x: dict of (B, C, H, W) tensors for target date t and references r (first valid wins):
        a/va fine MS at t, d/vd dense MS at t, fq/vfq + dq/vdq fine and dense MS at the temporal source
        date q, gap_q (B, 1, 1, 1) |t - q| in years; optionally fq2/vfq2 + dq2/vdq2 for a second source
        date on the other side of t and wq (B, 1, H, W) the weight of q's prediction (the rest goes to
        q2's; where one source is invalid the other takes all); guide (B, G, H, W) the fine MS of every
        date but t's own for the guided change (used when ``multi_date_guide``; optionally guide_similar,
        its ``GuidedChange.similarity``, a list); refs: list of dicts (ar, var, dr, vdr,
        h, vh, gap) for reference HS dates in priority order (gap = |t - r| in years).
        ``ms``: ``ms_estimate(x)`` computed by the caller (on a larger window, then cropped as x is).
        Returns dict(scores (B, k, H, W), m, vm, sp, tp, vt)."""
        m, vm, sp, tp, sp_feat, t_feat, vt = self.ms_estimate(x) if ms is None else ms
        s_t, s_feat = self.spectral(m, x.get("wmap"))
        rho = torch.zeros_like(s_t)
        h_ref = torch.zeros_like(s_t)
        v_ref = torch.zeros_like(vm)
        gap_ref = torch.zeros_like(vm)
        for ref in x["refs"]:
            if "rho" in ref:  # computed by the caller (the predictor reuses it for every date of a tile)
                r, v = ref["rho"], ref["vrho"]
            else:
                r, v = self.reference_residual(
                    ref["ar"], ref["var"], ref["dr"], ref["vdr"], ref["h"], ref["vh"], ref.get("wmap")
                )
            take = v * (1 - v_ref)
            rho = rho + take * r
            h_ref = h_ref + take * ref["h"]
            gap_ref = gap_ref + take * ref["gap"]
            v_ref = v_ref + take
            if not self.training and not bool((v_ref < 1).any()):
                break  # every pixel has its reference: the next ones would add exactly nothing
        prior = s_t + rho if self.reference_in_prior else s_t
        gap_q = x["gap_q"] * vt
        if not self.reference_gap:
            gap_ref = torch.zeros_like(gap_ref)
        branch_features = [sp_feat] if t_feat is None else [sp_feat, t_feat]
        features = torch.cat(branch_features + [s_feat, s_t, rho, h_ref, x["va"], vt, v_ref, gap_q, gap_ref], 1)
        scores = self.head(features, prior, vm)
        return {"scores": scores, "prior": prior, "m": m, "vm": vm, "sp": sp, "tp": tp, "vt": vt}
