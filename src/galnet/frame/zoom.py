"""The network zooms out: rebinning chosen from the network's own estimate of each source's size.

The detection sizes each cutout from its segment (2.5 Kron radii), which at S/N 30-100 sees only
the core of a large, high-n galaxy: such a galaxy reaches the network at rebin 1, its light runs
past the network's reach and the network under-estimates re (measured on the VST frame: truth
re 14.9 px -> 8.0, 14.2 -> 3.6). GaLNet was trained with at least ``preset.containment`` (90 %)
of the PSF-free light inside ``preset.containment_radius`` (27 px of the 61 px stamp).

:func:`zoom_out` checks the network's first answer against that rule: the predicted light
fraction inside the reach, ``preset.light_in_stamp(re_pix / k, n, q)`` at the source's rebin
``k``. A source below :data:`ZOOM_FRACTION` is run again at ``k' = max(2k, ceil(r90 / R))``
(``r90``: radius holding 90 % of the predicted light, :func:`light_radius`; ``R`` the reach in
frame px at k = 1), at most ``max_rebin``. The zoomed answer is kept when it is self-consistent
(its own fraction at ``k'`` >= :data:`ZOOM_FRACTION`); otherwise the source zooms again, up to
:data:`ZOOM_ROUNDS` rounds, and the last (most zoomed) answer is kept: the known failure is an
under-estimate, which a larger factor reduces. A zoomed answer with a *smaller* re than the
answer it replaces is rejected (the previous answer and factor stay, the source stops zooming):
light past the reach can only make re larger once seen, and on real frames (injected galaxies
in the VST and KiDS r frames) the rebinned stamps of some galaxies give erratic, smaller re.
Only the sources that need it are re-run.

:func:`plan_sizes` then grows each native cutout to hold the accepted prediction: the side whose
central :data:`galnet.io.detect.REACH` holds ``r90`` (as :func:`galnet.io.detect.cutout_plan`),
quantised by :func:`galnet.frame.sources.quantise_sizes`, capped at the network's largest view
(``stamp * max_rebin``), never smaller than the detection's size.

:func:`match_psf` smooths every rebinned network stamp (and its PSF) back to the training seeing:
block-summing shrinks the PSF by ``k``, below anything the network was trained on, and it then
under-estimates re (the pipeline applies it to every rebinned stamp, zoomed or not).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from galnet.flags import Flag

__all__ = ["ZOOM_FRACTION", "ZOOM_ROUNDS", "ZOOM_SNR_MIN", "light_radius", "reach_fraction",
           "zoom_out", "plan_sizes", "match_psf"]

log = logging.getLogger(__name__)

#: A source whose predicted light fraction inside the network's reach (at its rebin) is below this
#: is zoomed out. Training put >= 0.90 inside the reach; the margin of 0.03 covers the network's
#: under-estimate of re for sources at the edge of its reach (the failure this module fixes):
#: a prediction at 0.90-0.93 is already suspect, and a zoom to 2k costs one extra network pass.
ZOOM_FRACTION = 0.93
#: At most this many zoom rounds (re-runs of the network) per source.
ZOOM_ROUNDS = 3
#: Sources detected below this S/N are not zoomed: their first answer is too noisy to say that
#: light runs past the reach (measured: a S/N 13 source of true re 0.5 px, predicted 5.2 px at
#: k = 1, zoomed to 12.3 px at k = 2).
ZOOM_SNR_MIN = 20.0

#: A network pass on a subset: ``run(index, rebin) -> (values dict of (m,) arrays in frame px,
#: flags (m,))`` for the sources ``index`` (into the source list) at rebin factors ``rebin``.
NetworkPass = Callable[[np.ndarray, np.ndarray], tuple[dict, np.ndarray]]


def _clean(re_pix, n, q):
    re_pix = np.where(np.isfinite(re_pix) & (re_pix > 0), re_pix, 1e-3)
    n = np.where(np.isfinite(n), np.clip(n, 0.2, 10.0), 1.0)
    q = np.where(np.isfinite(q), np.clip(q, 0.02, 1.0), 1.0)
    return np.asarray(re_pix, float), np.asarray(n, float), np.asarray(q, float)


def reach_fraction(re_pix, n, q, rebin, preset) -> np.ndarray:
    """Fraction of the (PSF-free) light of the Sérsic ``re_pix`` (frame px, major axis), ``n``,
    ``q`` inside the network's reach at rebin ``k``: ``preset.light_in_stamp(re_pix / k, n, q)``
    (circle of ``preset.containment_radius`` stamp px). Non-finite values count as tiny."""
    re_pix, n, q = _clean(np.asarray(re_pix, float), np.asarray(n, float), np.asarray(q, float))
    k = np.asarray(rebin, float)
    return np.asarray(preset.light_in_stamp(re_pix / k, n, q), float)


def light_radius(re_pix, n, q, preset, fraction: float | None = None) -> np.ndarray:
    """Radius (same units as ``re_pix``) of the centred circle holding ``fraction`` [default:
    ``preset.containment``] of the PSF-free light of a Sérsic (``q`` <= 1; bisection in log
    radius, relative precision 1e-4)."""
    re_pix, n, q = _clean(np.asarray(re_pix, float), np.asarray(n, float), np.asarray(q, float))
    f = preset.containment if fraction is None else float(fraction)
    lo = np.full(re_pix.shape, np.log(1e-3))
    hi = np.full(re_pix.shape, np.log(1e3))
    for _ in range(30):  # on r / re; 6.9 / 2**30 < 1e-8 in log
        mid = 0.5 * (lo + hi)
        inside = _fraction(np.exp(mid), n, q, preset)
        big = inside >= f
        hi = np.where(big, mid, hi)
        lo = np.where(big, lo, mid)
    return re_pix * np.exp(hi)


def _fraction(ratio, n, q, preset) -> np.ndarray:
    """Light fraction inside radius ``ratio * re`` (``light_in_stamp`` with re = 1/ratio at the
    preset's radius: it depends only on radius / re)."""
    R = float(preset.containment_radius)
    return np.asarray(preset.light_in_stamp(R / ratio, n, q), float)


def zoom_out(run: NetworkPass, nn: dict, flags: np.ndarray, rebin: np.ndarray, preset, *,
             max_rebin: int | None = None, rounds: int | None = None,
             threshold: float | None = None, snr=None) -> tuple[dict, np.ndarray, np.ndarray]:
    """Re-run the network, rebinned, on the sources whose prediction runs past its reach.

    Parameters
    ----------
    run : a network pass on a subset (:data:`NetworkPass`).
    nn : the first pass's values, frame px (``re_pix``, ``n``, ``q``, ...; (N,) arrays).
    flags : (N,) int64 flags of the first pass.   rebin : (N,) rebin factors of the first pass.
    preset : the survey preset (containment rule).   max_rebin : largest factor
        [default: :data:`galnet.io.prepare.MAX_REBIN`].   rounds, threshold : [default:
        :data:`ZOOM_ROUNDS`, :data:`ZOOM_FRACTION`].
    snr : (N,) detection S/N; sources below :data:`ZOOM_SNR_MIN` are not zoomed (NaN: no
        detection S/N, zoomed) [default: all may zoom].

    Returns
    -------
    (nn, flags, rebin): new arrays (inputs are not modified); zoomed sources carry the zoomed
    pass's values and flags, ``REBINNED`` and their new factor.
    """
    from galnet.io.prepare import MAX_REBIN

    kmax = MAX_REBIN if max_rebin is None else int(max_rebin)
    rounds = ZOOM_ROUNDS if rounds is None else int(rounds)
    threshold = ZOOM_FRACTION if threshold is None else float(threshold)
    nn = {k: np.array(v, copy=True) for k, v in nn.items()}
    flags = np.array(flags, np.int64, copy=True)
    rebin = np.array(rebin, np.int64, copy=True)
    R = float(preset.containment_radius)
    todo = np.arange(rebin.size)
    if snr is not None:
        with np.errstate(invalid="ignore"):
            todo = todo[~(np.asarray(snr, float) < ZOOM_SNR_MIN)]
    for r in range(rounds):
        frac = reach_fraction(nn["re_pix"][todo], nn["n"][todo], nn["q"][todo], rebin[todo],
                              preset)
        need = (frac < threshold) & (rebin[todo] < kmax)
        todo = todo[need]
        if todo.size == 0:
            break
        r90 = light_radius(nn["re_pix"][todo], nn["n"][todo], nn["q"][todo], preset)
        k_new = np.maximum(2 * rebin[todo], np.ceil(r90 / R)).astype(np.int64)
        k_new = np.clip(k_new, 1, kmax)
        vals, fl = run(todo, k_new)
        re_new = np.asarray(vals["re_pix"], float)
        with np.errstate(invalid="ignore"):
            grown = np.isfinite(re_new) & ~(re_new < nn["re_pix"][todo])
        keep = todo[grown]
        for key in nn:
            if key in vals:
                nn[key][keep] = np.asarray(vals[key], nn[key].dtype)[grown]
        flags[keep] = np.asarray(fl, np.int64)[grown] | int(Flag.REBINNED)
        rebin[keep] = k_new[grown]
        log.info("zoom round %d: %d sources re-run at rebin %s, %d kept", r + 1, todo.size,
                 np.unique(k_new).tolist(), keep.size)
        todo = keep
    return nn, flags, rebin


def plan_sizes(nn: dict, size: np.ndarray, preset, *, max_rebin: int | None = None
               ) -> np.ndarray:
    """Native cutout sides (odd, frame px) that hold the predicted profiles (module docstring);
    never smaller than ``size``."""
    from galnet.frame.sources import quantise_sizes
    from galnet.io.detect import REACH
    from galnet.io.prepare import MAX_REBIN

    kmax = MAX_REBIN if max_rebin is None else int(max_rebin)
    S = int(preset.stamp)
    r90 = light_radius(nn["re_pix"], nn["n"], nn["q"], preset)
    cap = S * kmax | 1
    half = np.ceil(np.minimum(r90, cap) / REACH)
    want = np.minimum(2 * half + 1, cap).astype(np.int64)
    size = np.asarray(size, np.int64)
    grow = want > size
    out = size.copy()
    out[grow] = np.minimum(quantise_sizes(want[grow], S), cap)
    return out | 1


def match_psf(b, preset, fwhm: float | None = None) -> np.ndarray:
    """Bring the rebinned stamps of batch ``b`` back to the seeing the network was trained on.

    Block-summing by ``k`` shrinks the PSF to ``1/k`` of its FWHM, below the training seeing
    (``preset.seeing.low / preset.pixel_scale`` stamp px): the network then under-estimates re
    (measured, synthetic frame, PSF FWHM 3 px, S/N 68: re 15 px, n 1 gives 14.8 / 13.7 / 12.2 px
    at k = 1 / 2 / 4; smoothed: 14.8 / 15.2 / 15.2). Every stamp whose
    PSF FWHM (:func:`galnet.frame.sources.psf_fwhm_pix`) is below ``fwhm`` [default: the
    training seeing's mean, stamp px] is smoothed, with its PSF, by the Gaussian that adds in
    quadrature to reach it (normalised convolution: masked pixels do not leak in; a pixel whose
    smoothing window is mostly masked stays masked); its sigma map is scaled by the kernel's
    ``sqrt(sum g^2)`` (the rms of smoothed white noise). The model stays exact: image and PSF are
    convolved by the same kernel. Modifies ``b`` in place; returns the (N,) bool smoothed.
    """
    from scipy.ndimage import gaussian_filter

    from galnet.frame.sources import psf_fwhm_pix

    target = (preset.seeing.mean / preset.pixel_scale) if fwhm is None else float(fwhm)
    done = np.zeros(len(b.images), bool)
    for i in np.flatnonzero(np.asarray(b.rebin) > 1):
        f = psf_fwhm_pix(b.psfs[i])
        if f >= target:
            continue
        s = np.sqrt(target**2 - f**2) / (2.0 * np.sqrt(2.0 * np.log(2.0)))
        w = (~b.mask[i]).astype(np.float64)
        norm = gaussian_filter(w, s, mode="constant")
        img = gaussian_filter(b.images[i] * w, s, mode="constant")
        bad = norm < 0.5
        img = np.where(bad, 0.0, img / np.where(bad, 1.0, norm))
        delta = np.zeros((int(8 * s) | 1,) * 2)
        delta[delta.shape[0] // 2, delta.shape[1] // 2] = 1.0
        g = gaussian_filter(delta, s, mode="constant")
        b.images[i] = img
        b.sigma[i] = b.sigma[i] * np.sqrt((g**2).sum() / g.sum() ** 2)
        b.mask[i] = b.mask[i] | bad
        p = gaussian_filter(b.psfs[i].astype(np.float64), s, mode="constant")
        b.psfs[i] = p / p.sum()
        done[i] = True
    return done
