"""Residual statistics of a single-Sérsic fit and the ``MISFIT`` flag (numpy only, core layer).

A galaxy is a *misfit* when the residual ``R = data - model`` of its single-Sérsic fit holds more
structure than the noise explains: a bulge + disk with different radii, indices or shapes, spiral
arms, bars, star-forming clumps, a merger. :func:`residual_stats` measures three numbers per stamp
and :func:`misfit` compares them with thresholds calibrated on simulations
(:data:`MISFIT_THRESHOLDS`, ``scripts/calibrate_misfit.py``).

Statistics (all in stamp pixels; conventions of docs/conventions.md: 0-based pixels with centres
at integers, ``pa_deg`` counter-clockwise from ``+y``, ``re`` along the major axis)
------------------------------------------------------------------------------------------------
Aperture ``A``: the ellipse of the fit (``q``, ``pa_deg``) with semi-major axis ``2 re`` and
semi-minor axis ``2 re q``, each at least ``APERTURE_MIN`` px. Inner region ``I``: the same
ellipse at ``1 re`` (at least ``INNER_MIN`` px). Masked pixels and pixels with a non-finite or
non-positive sigma are left out of every sum. ``F = sum_A model`` (the model's flux in ``A``;
noise-free, so never negative).

``rff``
    Residual flux fraction (Hoyos et al. 2011, MNRAS 411, 2439):
    ``(sum_A |R| - sqrt(2/pi) sum_A sigma) / F``. ``sqrt(2/pi) sigma`` (Hoyos' 0.8 sigma) is the
    mean of ``|R|`` for pure Gaussian noise, so ``rff ~ 0`` for a perfect model at any S/N.
``rff_err``
    Its standard deviation under pure noise: ``sqrt((1 - 2/pi) sum_A sigma^2) / F``.
``asym``
    Residual asymmetry: ``(sum_A |R - R180| - sqrt(2/pi) sum_A sqrt(sigma^2 + sigma180^2)) /
    (2 F)``, ``R180`` = the residual rotated by 180 deg about the fitted centre (rounded to the
    nearest half pixel); pixels whose rotated twin is off the stamp or masked are left out.
    Point-symmetric residuals (a bulge + disk, a wrong ``n``) give ``asym ~ 0``; clumps, arms and
    lopsided light give ``asym > 0``.
``asym_err``
    Its standard deviation under pure noise: ``sqrt(2 (1 - 2/pi) sum_A (sigma^2 + sigma180^2))
    / (2 F)`` (each pair of pixels is counted twice).
``chi2nu_in``
    Inner reduced chi2 ``sum_I (R / sigma)^2 / n_I`` (a diagnostic; not used by :func:`misfit`,
    because any model mismatch, e.g. a PSF off by 5% in FWHM, makes it grow as ``S/N^2``).
``npix``, ``npix_in``
    Pixels used in ``A`` and ``I``.

Decision (:func:`misfit`): flagged when ``snr >= snr_min`` and
``rff > rff_floor + k rff_err`` or ``asym > asym_floor + k asym_err`` (:data:`MISFIT_THRESHOLDS`):
``k`` noise standard deviations above a floor for the model systematics (PSF mismatch, renderer
differences), so the thresholds follow each galaxy's S/N without S/N bins. On the calibration
set (S/N 20-1000, PSF FWHM off by up to 5%) the systematics stayed below the noise: the floors
came out ~0 (slightly negative: sigma from the data overestimates the noise a little) and the
flag is in effect a 3-sigma test of each statistic. ``sigma`` must include the source's Poisson
noise (or pass ``gain``): with a sky-only sigma, bright galaxies get ``rff > 0`` from their own
photon noise (25% of single Sérsics flagged in a test, 55% at S/N 300-1000).
Calibrated on 61x61 stamps of isolated galaxies, S/N 20-1000; not flagged below ``snr_min``.

Without the gain (a sky-only sigma and no way to know the source noise): pass
``gain=assumed_gain(sigma)``, a low gain (:data:`ASSUMED_GAIN_SIGMA` = ``gain x sigma_sky``,
a sky of 225 e-/px) that allows for more source noise than most data have. Measured
(``scripts/calibrate_misfit_skyonly.py simulate --seed 1|2``, then ``rates``) on the
galaxies of ``scripts/calibrate_misfit.py`` (true ``gain x sigma_sky`` 10-1000, log-uniform),
fitted by ``fit_arrays`` and tested with the sky-only sigma, two seeds of 300 galnet + 150
GalSim single Sérsics and 120 two-component + 120 clumpy galaxies, % flagged at S/N >= 20
(single Sérsics; S/N 20-49 / 50-99 / 100-299 / 300-1000 | two-comp. | clumpy | misfits)::

    no gain:          25.8 % (1.1 / 5.6 / 25.0 / 51.9) | 38 | 63 | 50.0   (seed 1)
                      26.7 % (2.0 / 7.1 / 25.4 / 60.6) | 39 | 63 | 51.2   (seed 2)
    G = 10:           0.00 % | 0.0 | 30 | 15.0;  0.00 % | 1.7 | 36 | 18.8
    G = 15 (chosen):  0.45 % (0 / 0 / 0 / 1.3) | 2.5 | 41 | 21.7;  0.00 % | 5.0 | 43 | 24.2
    G = 20:           1.78 % (0 / 0 / 0.9 / 4.4) | 4.2 | 48 | 25.8;  0.45 % | 6.7 | 49 | 27.9
    G = 30:           5.57 % | 10.8 | 53 | 31.7;  3.81 % | 12.5 | 55 | 33.8
    the true gain:    0.67 % | 13.3 | 58 | 35.4;  1.35 % | 12.5 | 56 | 34.2

Both seeds together at S/N 20-500: single Sérsics flagged 0.28% of 716 (G = 15), 0.98% (G = 20),
0.70% (true gain), 17.9% (no gain); misfits detected 17.4% of 391 (G = 15), 20.7% (G = 20),
25.8% (true gain). G = 15 is kept for the S/N > 500 bin (G = 20: 4.4% there on seed 1).
So without the gain the flag keeps <= 0.5% false positives but finds ~2/3 of the misfits it
finds with the gain (bulge + disk mostly lost); data whose sky is below ~225 e-/px (space,
narrow band) are under-allowed: give the gain.

Speed: 1000 stamps of 61x61 in ~0.06-0.08 s of CPU when the apertures are small (re 2-8 px: only
the box that holds every aperture is read), ~0.15 s when they cover the whole stamp.
"""

from __future__ import annotations

import numpy as np

from galnet.errors import GalnetValueError

__all__ = [
    "APERTURE_MIN",
    "ASSUMED_GAIN_SIGMA",
    "INNER_MIN",
    "MISFIT_THRESHOLDS",
    "STAT_KEYS",
    "assumed_gain",
    "misfit",
    "residual_stats",
]

#: Smallest semi-axes (px) of the aperture ``A`` (2 re) and the inner region ``I`` (1 re).
APERTURE_MIN = 4.0
INNER_MIN = 3.0

#: Keys of :func:`residual_stats`' result.
STAT_KEYS = ("rff", "rff_err", "asym", "asym_err", "chi2nu_in", "npix", "npix_in")

#: Thresholds of :func:`misfit`, calibrated by ``scripts/calibrate_misfit.py`` (its docstring has
#: the command and the measured false-positive and detection rates): ``rff``, ``asym`` are the
#: systematic floors (fractions of the model's flux in the aperture), ``k`` the number of noise
#: standard deviations added, ``snr_min`` the S/N below which nothing is flagged (uncalibrated).
MISFIT_THRESHOLDS: dict[str, float] = {
    "k": 3.0,
    "snr_min": 20.0,
    "rff": -0.0011,
    "asym": -0.0004,
}

#: ``gain x sigma_sky`` (e-/image unit times image units: about the square root of the sky's
#: electrons per pixel) assumed by :func:`assumed_gain` when a frame's gain is unknown, so that
#: the misfit test allows for a source noise the sigma map does not hold (module docstring,
#: "Without the gain").
ASSUMED_GAIN_SIGMA = 15.0

_MEAN_ABS = np.sqrt(2.0 / np.pi)  # E|z| for z ~ N(0, 1)
_VAR_ABS = 1.0 - 2.0 / np.pi  # Var|z|


def _as3(a, name: str, shape=None) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise GalnetValueError(f"residual_stats: {name} must be (N, H, W), got {arr.shape}", name)
    if shape is not None and arr.shape != shape:
        raise GalnetValueError(
            f"residual_stats: {name} has shape {arr.shape}, data has {shape}", name
        )
    return arr


def _par(v, name: str, N: int) -> np.ndarray:
    arr = np.asarray(v, dtype=np.float64).reshape(-1)
    if arr.size == 1:
        arr = np.broadcast_to(arr, (N,))
    if arr.size != N:
        raise GalnetValueError(f"residual_stats: {name} has {arr.size} values for {N} stamps", name)
    return arr


def residual_stats(data, model, sigma, mask=None, *, x, y, re, q, pa_deg,
                   gain=None) -> dict[str, np.ndarray]:
    """Residual statistics of single-Sérsic fits (see the module docstring for the definitions).

    Parameters
    ----------
    data, model : (N, H, W) or (H, W) arrays, image units, stamp pixels (``model`` = the fitted
        PSF-convolved model, plus the fitted sky if any).
    sigma : 1-sigma noise like ``data`` (or broadcastable to it); ``<= 0`` or non-finite = unusable.
    mask : bool like ``data``, True = pixel ignored [default: none]. Non-finite data/model are
        ignored too.
    x, y : (N,) fitted centre, 0-based stamp pixels.   re : (N,) fitted semi-major ``re`` (px).
    q : (N,) axis ratio.   pa_deg : (N,) position angle (deg, CCW from ``+y``).
    gain : optional scalar or (N,) gain (e-/image unit) when ``sigma`` is the sky's noise only
        (a weight map): the source's Poisson noise ``max(model, 0) / gain`` is added to
        ``sigma^2``. Without it, such a sigma makes bright galaxies look like misfits.

    Returns
    -------
    dict of (N,) float arrays, keys :data:`STAT_KEYS` (NaN where the aperture has no usable pixel).
    """
    data = _as3(data, "data")
    N, H, W = data.shape
    model = _as3(model, "model", data.shape)
    x, y, re, q, pa = (_par(v, k, N) for v, k in
                       ((x, "x"), (y, "y"), (re, "re"), (q, "q"), (pa_deg, "pa_deg")))
    if N == 0:
        return {k: np.zeros(0, int if k.startswith("npix") else float) for k in STAT_KEYS}
    q = np.clip(np.nan_to_num(q, nan=1.0), 1e-3, 1.0)
    re = np.clip(np.nan_to_num(re, nan=0.0), 0.0, 4.0 * (H + W))
    x = np.clip(np.nan_to_num(x, nan=(W - 1) / 2), -W, 2 * W)
    y = np.clip(np.nan_to_num(y, nan=(H - 1) / 2), -H, 2 * H)
    # only the box that holds every aperture is read (a fraction of the stamp for small galaxies)
    ext = np.maximum(2 * re, APERTURE_MIN) + 1
    ys = slice(int(np.clip(np.floor((y - ext).min(initial=H)), 0, H)),
               int(np.clip(np.ceil((y + ext).max(initial=0)) + 1, 0, H)))
    xs = slice(int(np.clip(np.floor((x - ext).min(initial=W)), 0, W)),
               int(np.clip(np.ceil((x + ext).max(initial=0)) + 1, 0, W)))
    x, y = x - xs.start, y - ys.start
    H, W = ys.stop - ys.start, xs.stop - xs.start
    # stamps sorted by their 180-degree shift (see _rotate180): each group is then a plain slice
    sy = np.clip(H - 1 - np.rint(2 * y).astype(np.int64), -H, H)
    sx = np.clip(W - 1 - np.rint(2 * x).astype(np.int64), -W, W)
    order = np.lexsort((sx, sy))
    x, y, re, q, pa, sy, sx = (v[order] for v in (x, y, re, q, pa, sy, sx))

    def cut(a, dtype):  # the box of the sorted stamps, as a new array
        return np.asarray(np.broadcast_to(a, data.shape)[order, ys, xs], dtype=dtype)

    f32 = np.float32
    mod = cut(model, f32)
    R = cut(data, f32)
    R -= mod
    var = cut(np.asarray(sigma), f32)
    var *= var
    if gain is not None:
        g = np.broadcast_to(np.asarray(gain, dtype=np.float64), (N,))[order]
        if not (np.all(np.isfinite(g)) and np.all(g > 0)):
            raise GalnetValueError("residual_stats: gain must be finite and > 0", "gain")
        var += np.maximum(mod, 0) / g.astype(f32)[:, None, None]
    ok = (var > 0) & (var < np.inf) & np.isfinite(R)
    if mask is not None:
        ok &= ~cut(_as3(mask, "mask"), bool)
    if not ok.all():
        for arr in (R, var, mod):
            np.copyto(arr, f32(0), where=~ok)
    inA = _ellipse(x, y, 2 * re, 2 * re * q, pa, APERTURE_MIN, (H, W)) <= 1
    inA &= ok
    inI = _ellipse(x, y, re, re * q, pa, INNER_MIN, (H, W)) <= 1
    inI &= ok
    wA, wI = inA.astype(f32), inI.astype(f32)

    def tot(v, w):
        return np.einsum("nij,nij->n", v, w).astype(np.float64)

    npix = inA.sum(axis=(1, 2))
    npix_in = inI.sum(axis=(1, 2))
    F = tot(mod, wA)
    absR = np.abs(R)
    sumsd = tot(np.sqrt(var), wA)
    sumvar = tot(var, wA)
    sumabs = tot(absR, wA)
    wI /= np.maximum(var, np.finfo(f32).tiny)  # 1/var inside I (var = 0 outside ok), else 0
    chi2_in = tot(absR * absR, wI)
    R180, var180, w180 = _rotate180((R, var, wA), sy, sx)
    wA *= w180  # both pixels of the pair in A (and usable)
    R180 -= R
    np.abs(R180, out=R180)
    var180 += var
    sumdiff = tot(R180, wA)
    sumvar2 = tot(var180, wA)
    np.sqrt(var180, out=var180)
    sumsd2 = tot(var180, wA)
    with np.errstate(invalid="ignore", divide="ignore"):
        Fpos = np.where(F > 0, F, np.nan)
        rff = (sumabs - _MEAN_ABS * sumsd) / Fpos
        rff_err = np.sqrt(_VAR_ABS * sumvar) / Fpos
        chi2nu_in = chi2_in / np.where(npix_in > 0, npix_in, np.nan)
        asym = (sumdiff - _MEAN_ABS * sumsd2) / (2 * Fpos)
        asym_err = np.sqrt(2 * _VAR_ABS * sumvar2) / (2 * Fpos)
    inv = np.empty_like(order)
    inv[order] = np.arange(N)
    out = dict(rff=rff, rff_err=rff_err, asym=asym, asym_err=asym_err, chi2nu_in=chi2nu_in,
               npix=npix, npix_in=npix_in)
    return {k: v[inv] for k, v in out.items()}


def _ellipse(x, y, a, b, pa_deg, floor: float, shape) -> np.ndarray:
    """(N, H, W) squared elliptical radius in units of the semi-axes ``max(a, floor)``,
    ``max(b, floor)`` (major axis along ``(-sin pa, cos pa)``); float32."""
    H, W = shape
    f32 = np.float32
    a = np.maximum(a, floor)
    b = np.maximum(b, floor)
    s, c = np.sin(np.deg2rad(pa_deg)), np.cos(np.deg2rad(pa_deg))
    # along = -s dx + c dy, across = c dx + s dy: r2 = along^2/a^2 + across^2/b^2
    qa = (s * s / (a * a) + c * c / (b * b)).astype(f32)[:, None, None]
    qc = (c * c / (a * a) + s * s / (b * b)).astype(f32)[:, None, None]
    qb = (2 * s * c * (1 / (b * b) - 1 / (a * a))).astype(f32)[:, None, None]
    dx = np.arange(W, dtype=f32)[None, None, :] - x.astype(f32)[:, None, None]
    dy = np.arange(H, dtype=f32)[None, :, None] - y.astype(f32)[:, None, None]
    r2 = (qb * dx) * dy
    r2 += qa * dx * dx
    r2 += qc * dy * dy
    return r2


def _rotate180(arrays, sy, sx) -> list[np.ndarray]:
    """The (N, H, W) arrays rotated by 180 deg: ``rotated[i] = a[c2 - i] = flipped[i + s]`` with
    ``c2 = round(2 y)`` and the shift ``s = H - 1 - c2`` (``sy``; ``sx`` likewise), stamps sorted
    by ``(sy, sx)``. Pixels whose twin is off the stamp get 0."""
    N, H, W = arrays[0].shape
    out = [np.zeros(a.shape, a.dtype) for a in arrays]
    starts = np.flatnonzero(np.r_[True, (np.diff(sy) != 0) | (np.diff(sx) != 0), True])
    for g0, g1 in zip(starts[:-1], starts[1:], strict=True):
        dy, dx = int(sy[g0]), int(sx[g0])
        i0, i1 = max(0, -dy), min(H, H - dy)  # rows i with 0 <= i + dy < H
        j0, j1 = max(0, -dx), min(W, W - dx)
        if i0 >= i1 or j0 >= j1:
            continue
        for a, o in zip(arrays, out, strict=True):
            o[g0:g1, i0:i1, j0:j1] = a[g0:g1, ::-1, ::-1][:, i0 + dy : i1 + dy, j0 + dx : j1 + dx]
    return out


def misfit(stats: dict, snr, thresholds: dict | None = None) -> np.ndarray:
    """The ``MISFIT`` decision (-> :attr:`galnet.flags.Flag.MISFIT`) for each stamp.

    Parameters
    ----------
    stats : the result of :func:`residual_stats`.
    snr : (N,) or scalar S/N of each galaxy (the fit's model S/N, ``snr`` of the fit result).
    thresholds : [default: :data:`MISFIT_THRESHOLDS`] keys ``rff``, ``asym``, ``k``, ``snr_min``.

    Returns
    -------
    (N,) bool: True where ``snr >= snr_min`` and ``rff > rff_floor + k rff_err`` or
    ``asym > asym_floor + k asym_err``. NaN statistics (no usable pixel) are never flagged.
    """
    t = {**MISFIT_THRESHOLDS, **(thresholds or {})}
    missing = [k for k in ("rff", "rff_err", "asym", "asym_err") if k not in stats]
    if missing:
        raise GalnetValueError(f"misfit: stats lack {', '.join(missing)} (use residual_stats)",
                               "stats")
    rff, asym = np.asarray(stats["rff"], float), np.asarray(stats["asym"], float)
    snr = np.broadcast_to(np.asarray(snr, float), rff.shape)
    k = float(t["k"])
    with np.errstate(invalid="ignore"):
        bad_rff = rff > t["rff"] + k * np.asarray(stats["rff_err"], float)
        bad_asym = asym > t["asym"] + k * np.asarray(stats["asym_err"], float)
        return (snr >= t["snr_min"]) & (bad_rff | bad_asym)


def assumed_gain(sigma, mask=None) -> np.ndarray:
    """(N,) gain (e-/image unit) to pass to :func:`residual_stats` when ``sigma`` holds the sky's
    noise only and the true gain is unknown: :data:`ASSUMED_GAIN_SIGMA` divided by each stamp's
    median usable sigma (the sky noise). A conservative (low) gain: the source noise it allows
    for is that of a sky of ``ASSUMED_GAIN_SIGMA**2`` e- per pixel, so bright single Sérsics are
    not flagged for their own photon noise, at the cost of some misfits on deep, high-gain data.

    Parameters
    ----------
    sigma : (N, H, W) or (H, W) 1-sigma noise, image units.
    mask : bool like ``sigma``, True = pixel ignored [default: none].
    """
    sig = _as3(sigma, "sigma").astype(np.float64)
    ok = np.isfinite(sig) & (sig > 0)
    if mask is not None:
        ok &= ~_as3(mask, "mask").astype(bool)
    med = np.array([np.median(s[o]) if o.any() else np.nan for s, o in zip(sig, ok, strict=True)])
    with np.errstate(invalid="ignore", divide="ignore"):
        g = ASSUMED_GAIN_SIGMA / med
    return np.where(np.isfinite(g) & (g > 0), g, 1.0)
