"""Frame in, catalogue out: ``galnet predict --frame IMAGE --detect`` (and ``galnet fit``).

:func:`run_frame` does the whole job on one frame:

1. read the frame, its noise (weight / variance / sigma map, else photutils ``Background2D``)
   and mask; a sky left in the image is removed with a warning (:mod:`galnet.frame.inputs`);
2. detect and deblend the sources (photutils), or take ``positions``; deblended pieces of one
   galaxy are merged back (:mod:`galnet.io.merge`); sources below ``snr_min`` are not modelled
   and their segments are masked (:mod:`galnet.frame.sources`); then the gain's source noise
   joins the sky noise and saturated pixels leave the fits (:mod:`galnet.frame.inputs`);
3. size a cutout to each source; the network's 61 x 61 input block-averages a larger source by
   ``k`` = 2, 3, ... (flag ``REBINNED``), the PSF binned alike and the stamp smoothed back to
   the training seeing (:mod:`galnet.frame.stamps`, :mod:`galnet.frame.zoom`);
4. run GaLNet on every stamp: first parameters, mapped back to frame pixels; a source whose
   predicted light overflows the network's reach is run again at a coarser ``k``
   (:func:`galnet.frame.zoom.zoom_out`) and its cutout grown to hold it;
5. model the neighbours (:mod:`galnet.frame.neighbours`): every source's model is rendered at
   native pixels into a frame-sized model image; each target is measured (and, with ``refine``,
   fitted) on its native cutout with the other sources' model subtracted -- never masked;
6. with ``refine``: the guarded fit (:func:`galnet.fitting.runner.fit`: network prior, centre
   bound, accept-or-revert) at native pixels, as a block-coordinate (Gauss-Seidel) joint fit
   over the frame (:func:`_refine`: overlapping sources fitted in turn, up to
   :data:`REFINE_PASSES` passes, later ones only for sources whose neighbours' model moved by
   more than :data:`REFIT_SIGMA`), then a last accept-or-revert against the network with the
   final neighbours (:func:`_final_guard`; ``chi2nu_nn`` is on those same pixels);
7. on the final models: ``chi2nu`` and ``snr`` on native pixels, the point-source test
   (``POINT_SOURCE``, ``UNRESOLVED`` with the 95% upper limit as ``re_pix``, ``psf_mag``) and
   the misfit flag (``MISFIT``, after a refine only); the catalogue
   (:mod:`galnet.frame.catalogue`) and, with ``save_models``, the data / model (target +
   neighbours) / residual / mask of every cutout.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from galnet.errors import GalnetValueError
from galnet.flags import LOW_SNR_LIMIT, Flag
from galnet.frame.catalogue import count_neighbours, frame_catalog, use_point_fits
from galnet.frame.inputs import add_source_noise, frame_gain, mask_saturated, read_frame
from galnet.frame.measure import fit_stats, local_sky, point_and_misfit
from galnet.frame.neighbours import (
    LIGHT_SIGMA,
    ModelCanvas,
    colour_batches,
    crop_boxes,
    footprints,
    local_sigma,
    render_boxes,
    safe_params,
)
from galnet.frame.refine import FIT_COLUMNS, fit_cutouts
from galnet.frame.sources import find_sources, psf_fwhm_pix
from galnet.frame.stamps import native_cutouts, native_psfs, network_stamps
from galnet.presets import get_preset

__all__ = ["run_frame", "REFIT_SIGMA"]

log = logging.getLogger(__name__)

#: A later refine pass refits a source when its neighbours' model changed by more than this many
#: sigma, since its last fit, in some unmasked pixel of its footprint.
REFIT_SIGMA = 0.5
#: Block-coordinate passes of the refine over the frame.
REFINE_PASSES = 4
#: Sources whose models exceed this many sigma in overlapping boxes are fitted in turn.
COUPLE_SIGMA = 0.5


#: Rebinned network stamps are smoothed back to the training seeing (:func:`zoom.match_psf`).
MATCH_PSF = True


def _network(fd, psf, src, preset, model, device) -> tuple[dict, np.ndarray]:
    """Frame-pixel network values and errors of every source, and their flags; a source whose
    prediction runs past the network's reach is re-run rebinned (:mod:`galnet.frame.zoom`),
    and ``src.rebin`` / ``src.size`` are updated in place."""
    from galnet.frame.zoom import plan_sizes, zoom_out

    def run(index, rebin):
        return _network_pass(fd, psf, src, index, rebin, preset, model, device)

    nn, flags = run(np.arange(len(src)), src.rebin)
    nn, flags, src.rebin = zoom_out(run, nn, flags, src.rebin, preset, snr=src.snr)
    src.size = plan_sizes(nn, src.size, preset)
    return nn, flags


def _network_pass(fd, psf, src, index, rebin, preset, model, device) -> tuple[dict, np.ndarray]:
    """Network values (frame px) and flags of the sources ``index`` at rebin factors ``rebin``."""
    from galnet.frame.zoom import match_psf
    from galnet.io.batch import to_input_coords
    from galnet.nn.predict import predict_arrays

    b = network_stamps(fd, psf, src.x[index], src.y[index], src.size[index], rebin,
                       preset=preset, ids=src.ids[index])
    if MATCH_PSF:
        match_psf(b, preset)
    r = predict_arrays(b.images, b.psfs, sigma=b.sigma, mask=b.mask, model=model, device=device,
                       chi2=False)
    out = {k: np.asarray(r[k], np.float64) for k in (*FIT_COLUMNS,
                                                      *(f"{c}_err" for c in FIT_COLUMNS))}
    out.update(to_input_coords(r, b))
    out.pop("re_arcsec", None)
    out.pop("re_arcsec_err", None)
    out.pop("ra", None)
    out.pop("dec", None)
    flags = np.asarray(r["flags"], np.int64) | np.asarray(b.flags, np.int64)
    return out, flags


def _model(model, device):
    from galnet.nn.model import GaLNet, load_model

    if not isinstance(model, GaLNet):
        model = load_model(model, device=device)
    return model.folded() if hasattr(model, "folded") else model


class _Frame:
    """The state of one run: sources, groups of cutouts, PSFs, the model canvas.

    Each source's model enters the canvas on a box centred on its cutout that holds its light
    down to :data:`galnet.frame.neighbours.LIGHT_SIGMA` of the local noise
    (:func:`galnet.frame.neighbours.box_sides`), not only on its cutout: a bright neighbour's
    light does not stop at a straight edge. Its own fit uses the central cutout."""

    def __init__(self, fd, src, psf, preset):
        self.fd, self.src = fd, src
        self.psfs, self.bad_psf = native_psfs(psf, src.x, src.y, preset.psf_size)
        extra = src.unmodelled_mask()
        self.groups = [native_cutouts(fd, np.flatnonzero(src.size == s), src.x, src.y, int(s),
                                      extra) for s in np.unique(src.size)]
        self.canvas = ModelCanvas(fd.shape)
        self.level = [LIGHT_SIGMA * local_sigma(g.sigma) for g in self.groups]
        self.own: list[np.ndarray] = []   # each source's model on its cutout grid
        self.boxes: list[list] = []       # per group and row: (model, x0, y0) the canvas holds

    def psf_of(self, index: np.ndarray) -> np.ndarray:
        return self.psfs if self.psfs.shape[0] == 1 else self.psfs[index]

    def render_boxes(self, params: dict, gi: int, rows=None) -> list:
        """``(model, x0, y0)`` of the rows ``rows`` (all by default) of group ``gi`` from
        frame-px ``params``, each on its light-sized box (:func:`render_boxes`)."""
        g = self.groups[gi]
        rows = np.arange(len(g.index)) if rows is None else np.asarray(rows)
        idx = g.index[rows]
        return render_boxes(safe_params(params, idx), g.x0[rows], g.y0[rows], g.size,
                            self.level[gi][rows], self.psf_of(idx), self.fd.shape)

    def render(self, params: dict, g, rows=None) -> np.ndarray:
        """Models of group ``g`` on its cutout grid (the centres of :meth:`render_boxes`)."""
        gi = next(i for i, h in enumerate(self.groups) if h is g)
        return crop_boxes(self.render_boxes(params, gi, rows), g.size)

    def paint(self, params: dict) -> None:
        """Render every source's model (on its box) into the canvas."""
        self.own, self.boxes = [], []
        for gi, g in enumerate(self.groups):
            box = self.render_boxes(params, gi)
            for m, a, b in box:
                self.canvas.add(m[None], [a], [b])
            self.boxes.append(box)
            self.own.append(crop_boxes(box, g.size))

    def replace(self, gi: int, params: dict, rows: np.ndarray) -> None:
        """Re-render the sources ``rows`` (indices within group ``gi``) from ``params`` and
        update the canvas (Gauss-Seidel)."""
        g = self.groups[gi]
        rows = np.asarray(rows)
        new = self.render_boxes(params, gi, rows)
        for r, (m, a, b) in zip(rows, new, strict=True):
            old, oa, ob = self.boxes[gi][r]
            self.canvas.add(old[None], [oa], [ob], sign=-1.0)
            self.canvas.add(m[None], [a], [b])
            self.boxes[gi][r] = (m, a, b)
        self.own[gi][rows] = crop_boxes(new, g.size)

    def network_models(self, nn: dict) -> list[np.ndarray]:
        """The network's models of every group (rendered once)."""
        if getattr(self, "_nn_models", None) is None:
            self._nn_models = [self.render(nn, g) for g in self.groups]
        return self._nn_models

    def others(self, gi: int) -> np.ndarray:
        g = self.groups[gi]
        return self.canvas.others(self.own[gi], g.x0, g.y0)


def _refine(st: _Frame, nn: dict, flags: np.ndarray, model, device) -> tuple[dict, dict]:
    """Guarded fits, Gauss-Seidel over the frame; returns (params, refine columns).

    Sources whose footprints (model above :data:`COUPLE_SIGMA` sigma) overlap get different
    colours (:func:`colour_batches`); one colour is fitted at a time and the canvas updated
    before the next, so no source is fitted against a neighbour that moves in the same batch.
    Pass 1 fits everything; later passes (up to :data:`REFINE_PASSES`) only the sources whose
    neighbours' model changed by more than :data:`REFIT_SIGMA` sigma since their last fit in
    some unmasked pixel of their own footprint (own model above :data:`COUPLE_SIGMA` sigma).
    Every fit starts from the network's values (its prior, its centre bound, guarded against
    it) with the current neighbours subtracted.

    Called right after ``st.paint(nn)``: the canvas then holds the network's models, kept as
    :meth:`_Frame.network_models` (the guard's reference) instead of rendering them again."""
    N = len(st.src)
    if getattr(st, "_nn_models", None) is None and len(st.own) == len(st.groups):
        st._nn_models = [o.copy() for o in st.own]
    params = {k: v.copy() for k, v in nn.items()}
    extra = {"niter": np.zeros(N, np.int64), "converged": np.zeros(N, bool),
             "chi2nu_nn": np.full(N, np.nan)}
    colour = np.zeros(N, np.int64)
    boxes = np.concatenate([footprints(st.own[gi], g.x0, g.y0,
                                       COUPLE_SIGMA * np.median(g.sigma, axis=(1, 2)))
                            for gi, g in enumerate(st.groups)])
    order = np.concatenate([g.index for g in st.groups])
    colour[order] = colour_batches(boxes)
    before = [np.zeros_like(g.data, dtype=np.float64) for g in st.groups]
    for pass_ in range(1, 1 + REFINE_PASSES):
        n_fit = 0
        for c in range(int(colour.max()) + 1):
            for gi, g in enumerate(st.groups):
                rows = np.flatnonzero(colour[g.index] == c)
                if rows.size == 0:
                    continue
                others = st.canvas.others(st.own[gi][rows], g.x0[rows], g.y0[rows])
                if pass_ > 1:
                    change = np.abs(others - before[gi][rows]) / g.sigma[rows]
                    # where it matters: the source's own footprint, unmasked
                    change[g.mask[rows] | (st.own[gi][rows] < COUPLE_SIGMA * g.sigma[rows])] = 0
                    moved = change.reshape(rows.size, -1).max(axis=1) > REFIT_SIGMA
                    rows, others = rows[moved], others[moved]
                    if rows.size == 0:
                        continue
                idx = g.index[rows]
                r = fit_cutouts(st.fd, _Sub(g, rows), st.psf_of(idx),
                                {k: v[idx] for k, v in nn.items()}, others,
                                ids=st.src.ids[idx], flags=flags[idx], model=model,
                                device=device, sky="flat" if LOCAL_SKY else "none")
                for k in nn:
                    params[k][idx] = r[k]
                flags[idx] = r["flags"]
                extra["niter"][idx] += np.asarray(r["niter"], np.int64)
                extra["converged"][idx] = r["converged"]
                extra["chi2nu_nn"][idx] = r["chi2nu_nn"]
                before[gi][rows] = others  # the neighbours each source was fitted with
                st.replace(gi, params, rows)
                n_fit += rows.size
        log.info("refine pass %d: %d sources fitted (%d colours)", pass_, n_fit,
                 int(colour.max()) + 1)
        if n_fit == 0:
            break
    return params, extra


def _final_guard(st: _Frame, nn: dict, params: dict, flags: np.ndarray) -> int:
    """Accept or revert at frame level: with the *final* neighbours, a source whose fitted model
    fits its cutout worse than the network's parameters gets the network's values back (errors:
    the network's; flag ``REVERTED``) and the canvas is updated. A revert changes its
    neighbours' neighbours, so the check repeats until nothing is reverted (a reverted source
    equals the network and is never reverted again). Returns the number reverted."""
    n = 0
    dirty = [np.ones(len(g.index), bool) for g in st.groups]
    for _ in range(_GUARD_ROUNDS):
        k = _guard_round(st, nn, params, flags, dirty)
        n += k
        if k == 0:
            break
    return n


#: Most rounds of the frame-level accept-or-revert (each round reverts at least one source).
_GUARD_ROUNDS = 20


def _boxes_of(st: _Frame, gi: int, rows: np.ndarray) -> np.ndarray | None:
    """(n, 3) frame rectangles ``x0, y0, side`` the canvas holds for the rows ``rows`` of group
    ``gi`` (None when the canvas does not say: then everything counts as changed)."""
    boxes = getattr(st, "boxes", None)
    try:
        return np.array([(a, b, m.shape[-1]) for m, a, b in (boxes[gi][r] for r in rows)],
                        np.int64).reshape(-1, 3)
    except (TypeError, IndexError, ValueError, AttributeError):
        return None


def _mark_changed(st: _Frame, rects: np.ndarray | None, dirty: list[np.ndarray]) -> None:
    """Mark dirty every source whose cutout overlaps one of the frame rectangles ``rects``
    (all of them when ``rects`` is None)."""
    for gi, g in enumerate(st.groups):
        if rects is None:
            dirty[gi][:] = True
            continue
        if rects.size == 0:
            continue
        ax, ay, s = g.x0[:, None], g.y0[:, None], g.size
        bx, by, bs = rects[:, 0][None], rects[:, 1][None], rects[:, 2][None]
        hit = (ax < bx + bs) & (bx < ax + s) & (ay < by + bs) & (by < ay + s)
        dirty[gi] |= hit.any(axis=1)


def _guard_round(st: _Frame, nn: dict, params: dict, flags: np.ndarray, dirty=None) -> int:
    """One pass of :func:`_final_guard` over the groups; returns the number reverted.

    ``dirty`` (per group, (n,) bool; all by default): the sources to check, those whose
    neighbours' model changed since they were last checked. The others would give the same
    answer again (their own model and neighbours are unchanged; a reverted source equals the
    network), so they are skipped; a revert marks the sources its old and new models touch."""
    if dirty is None:
        dirty = [np.ones(len(g.index), bool) for g in st.groups]
    n = 0
    for gi, g in enumerate(st.groups):
        check = np.flatnonzero(dirty[gi])
        if check.size == 0:
            continue
        dirty[gi][check] = False
        every = check.size == len(g.index)
        sub = g if every else _Sub(g, check)
        own = st.own[gi] if every else st.own[gi][check]
        ref = st.network_models(nn)[gi]
        others = st.canvas.others(own, sub.x0, sub.y0)
        ref = ref if every else ref[check]
        c_fit = fit_stats(sub.data, sub.sigma, sub.mask, own, _with_sky(sub, own, others))[0]
        c_nn = fit_stats(sub.data, sub.sigma, sub.mask, ref, _with_sky(sub, ref, others))[0]
        with np.errstate(invalid="ignore"):
            rows = check[c_fit > c_nn * (1 + 1e-6)]
        if rows.size == 0:
            continue
        idx = g.index[rows]
        for k in nn:
            params[k][idx] = nn[k][idx]
        flags[idx] |= int(Flag.REVERTED)
        flags[idx] &= ~np.int64(Flag.BOUND_HIT | Flag.N_AT_BOUND | Flag.FIT_NOT_CONVERGED)
        old = _boxes_of(st, gi, rows)
        st.replace(gi, params, rows)
        new = _boxes_of(st, gi, rows)
        _mark_changed(st, None if old is None or new is None else np.concatenate([old, new]),
                      dirty)
        n += rows.size
    return n


#: The refine fits a flat local sky with each source (GALFIT's habit): a pedestal the frame's
#: Background2D left (faint neighbours, a galaxy's outskirts) otherwise goes into the wings of
#: the Sérsic. ``benchmarks/inject_frames.py --n-galaxies 1000`` at commit 8f733af (without)
#: and 7af1fab (with), isolated galaxies with re >= FWHM/2: refine R2 log re 0.781 -> 0.839,
#: R2 log n 0.584 -> 0.763, NMAD of re 0.117 -> 0.101 (docs/benchmarks.md).
LOCAL_SKY = True


def _with_sky(g, own, others) -> np.ndarray:
    """``others`` plus the best flat sky under ``own`` (:func:`local_sky`) when the refine fits
    one (:data:`LOCAL_SKY`)."""
    if not LOCAL_SKY:
        return others
    sky = local_sky(g.data, g.sigma, g.mask, own, others)
    return others + sky[:, None, None]


class _Sub:
    """The rows ``rows`` of a group of cutouts (the attributes the refine reads)."""

    def __init__(self, g, rows):
        self.index, self.size = g.index[rows], g.size
        for k in ("data", "sigma", "mask", "x0", "y0", "edge"):
            setattr(self, k, getattr(g, k)[rows])


def _measure(st: _Frame, params: dict, flags: np.ndarray, fwhm: float, nn=None) -> dict:
    """chi2nu, snr, the point-source test and the misfit flag (after a refine: ``nn`` given)
    of every source (frame order);
    with ``nn``, also ``chi2nu_nn``: the network's parameters against the same pixels and the
    same (final) neighbours."""
    N = len(st.src)
    keys = ("chi2nu", "snr", "psf_mag", "psf_mag_err", "rff", "rff_err", "asym", "asym_err",
            "chi2nu_in", "re_upper", "psf_flux", "psf_flux_err", "psf_x", "psf_y", "psf_x_err",
            "psf_y_err")
    out = {k: np.full(N, np.nan) for k in (*keys, "chi2nu_nn", "sky")}
    for gi, g in enumerate(st.groups):
        own = st.own[gi]
        others = st.others(gi)
        if nn is not None:  # after a refine: its local sky (LOCAL_SKY) is part of the model
            ref = st.network_models(nn)[gi]
            out["chi2nu_nn"][g.index] = fit_stats(g.data, g.sigma, g.mask, ref,
                                                  _with_sky(g, ref, others))[0]
            bare = others
            others = _with_sky(g, own, others)
            out["sky"][g.index] = (others - bare)[:, 0, 0]
        c2, snr = fit_stats(g.data, g.sigma, g.mask, own, others)
        idx = g.index
        out["chi2nu"][idx], out["snr"][idx] = c2, snr
        sp = {k: np.asarray(params[k], float)[idx] for k in
              ("re_pix", "re_pix_err", "n", "q", "pa_deg")}
        sp["x"] = params["x"][idx] - g.x0
        sp["y"] = params["y"][idx] - g.y0
        sp.update(chi2nu=c2, snr=snr)
        q = point_and_misfit(g.data, g.sigma, g.mask, own, others, st.psf_of(idx), sp,
                             fwhm=fwhm, zeropoint=st.fd.zeropoint,
                             source_noise=st.fd.meta.get("gain") is not None)
        for k in keys[2:]:
            out[k][idx] = q[k]
        out["psf_x"][idx] += g.x0  # cutout -> frame pixels
        out["psf_y"][idx] += g.y0
        flags[idx] |= np.where(q["point"], int(Flag.POINT_SOURCE), 0)
        flags[idx] |= np.where(q["unresolved"], int(Flag.UNRESOLVED), 0)
        if nn is not None:  # MISFIT after a fit only (galnet.fitting.assess.assess_stamps)
            flags[idx] |= np.where(q["misfit"], int(Flag.MISFIT), 0)
    with np.errstate(invalid="ignore"):
        flags |= np.where(out["snr"] < LOW_SNR_LIMIT, int(Flag.LOW_SNR), 0)
    return out


def _save(path, st: _Frame, overwrite: bool, meta: dict, sky=None) -> None:
    """The models file; ``sky`` (frame order): each source's local sky, part of its model."""
    from galnet.io.models import ModelWriter

    with ModelWriter(path, overwrite=overwrite) as w:
        for gi, g in enumerate(st.groups):
            idx = g.index
            model = st.own[gi] + st.others(gi)
            if sky is not None:
                model = model + np.nan_to_num(sky[idx])[:, None, None]
            w.add_arrays(ids=st.src.ids[idx], data=g.data, model=model,
                         mask=g.mask, x0=g.x0, y0=g.y0, rebin=np.ones(len(idx), np.int64),
                         input_x=st.src.x[idx], input_y=st.src.y[idx], wcs=st.fd.wcs,
                         sigma=g.sigma)
        w.meta = meta


def run_frame(frame, psf, out=None, *, detect: bool = True, positions=None, weight=None,
              variance=None, sigma=None, frame_mask=None, refine: bool = False,
              pixel_scale: float | None = None, zeropoint: float | None = None,
              preset="hsc-r", model=None, device="cpu", save_models=None, snr_min: float = 5.0,
              gain: float | None = None, progress: bool = True, overwrite: bool = False,
              command=None):
    """Catalogue of the galaxies of a frame (see the module docstring for the steps).

    Parameters
    ----------
    frame : path of a FITS image (``path[N]`` picks HDU N) or a 2-D array (image units).
    psf : PSF image, cube (one per position) or PSFEx model (evaluated at each source).
    out : catalogue path (.ecsv / .fits / .parquet, written atomically) or None.
    detect : find the sources (photutils) [True]; ``positions`` (catalogue path or table with
        ``x, y`` 0-based frame px or ``ra, dec`` deg; or (N, 2) array) replaces the detection.
    weight, variance, sigma : one noise map (inverse variance, variance or 1-sigma; path or
        array of the frame's shape) [default: the frame file's SIGMA / IVAR extension, else
        photutils Background2D].
    frame_mask : nonzero = unusable pixel (path or array) [default: the MASK extension].
    refine : the guarded forward-model fit with the neighbours modelled.
    pixel_scale, zeropoint : arcsec/px and AB mag of one image unit [default: header / WCS,
        else the preset's].
    preset, model, device : survey preset, GaLNet weights, torch device.
    save_models : FITS path for the data / model / residual / mask of every cutout.
    snr_min : sources detected with a lower S/N are not modelled (their pixels are masked).
    gain : e- per image unit: adds the sources' Poisson noise to the frame's sky noise for the
        fits, chi2nu and the misfit test (:func:`galnet.frame.inputs.add_source_noise`)
        [default: :func:`galnet.frame.inputs.frame_gain`: a header GAIN checked against the
        sky's level / variance, else that estimate, else none (the misfit test then assumes a
        sky-limited source noise); provenance ``sources.gain`` says which].
    progress : log the steps.   overwrite : replace existing outputs.
    command : the command line for the provenance [default: sys.argv].

    Returns
    -------
    astropy QTable (:mod:`galnet.frame.catalogue`); ``meta['provenance']``, ``meta['frame']``.
    """
    from galnet.io.catalog import catalog_format, provenance, write_catalog
    from galnet.io.files import check_writable
    from galnet.nn.predict import weights_provenance
    from galnet.runner import resolve_device

    if out is not None:
        catalog_format(out)
        check_writable(out, overwrite)
    if save_models is not None:
        check_writable(save_models, overwrite)
    if not detect and positions is None:
        raise GalnetValueError("give positions or detect=True", "positions")
    if not (np.isfinite(snr_min) and snr_min >= 0):
        raise GalnetValueError(f"snr_min must be a number >= 0, got {snr_min!r}", "snr_min")
    if gain is not None and not (isinstance(gain, int | float) and np.isfinite(gain) and gain > 0):
        raise GalnetValueError(f"gain must be a positive number (e-/image unit), got {gain!r}",
                               "gain")
    t0 = time.perf_counter()
    preset = get_preset(preset)
    dev = resolve_device(device)
    say = log.info if progress else log.debug
    fd = read_frame(frame, weight=weight, variance=variance, sigma=sigma, frame_mask=frame_mask,
                    pixel_scale=pixel_scale, zeropoint=zeropoint, preset=preset)
    H, W = fd.shape
    centre_psf, _ = native_psfs(psf, [(W - 1) / 2], [(H - 1) / 2], preset.psf_size)
    fwhm = psf_fwhm_pix(centre_psf[0])
    src = find_sources(fd, fwhm=fwhm, stamp=preset.stamp, detect=positions is None,
                       positions=positions, snr_min=snr_min)
    gain, fd.meta["gain_source"] = frame_gain(fd, gain)  # argument > checked header > sky
    if gain is not None:  # after detection: its thresholds are in units of the sky noise
        fd = add_source_noise(fd, gain)
    fd = mask_saturated(fd)  # after detection too: it sees a saturated star whole
    if len(src) == 0:
        raise GalnetValueError(f"{fd.name}: no source detected with S/N >= {snr_min:g}",
                               "frame")
    say("%s: %d sources (%.1f s)", fd.name, len(src), time.perf_counter() - t0)
    net = _model(model, dev)
    nn, flags = _network(fd, psf, src, preset, net, dev)
    st = _Frame(fd, src, psf, preset)
    flags |= np.where(st.bad_psf, int(Flag.BAD_PSF), 0)
    for g in st.groups:
        flags[g.index[g.edge]] |= int(Flag.EDGE)
    st.paint(nn)
    say("network done (%.1f s)", time.perf_counter() - t0)
    extra: dict = {}
    params = nn
    if refine:
        params, extra = _refine(st, nn, flags, net, dev)
        n_rev = _final_guard(st, nn, params, flags)
        say("refine done (%.1f s; %d reverted to the network)", time.perf_counter() - t0, n_rev)
    m = _measure(st, params, flags, fwhm, nn if refine else None)
    if refine:
        extra["chi2nu_nn"] = m["chi2nu_nn"]
        if LOCAL_SKY:
            extra["sky"] = m["sky"]
    res = {k: np.asarray(params[k], float).copy() for k in params}
    res["chi2nu"], res["snr"] = m["chi2nu"], m["snr"]
    unres = (flags & int(Flag.UNRESOLVED)) != 0
    res["re_pix"] = np.where(unres & np.isfinite(m["re_upper"]), m["re_upper"], res["re_pix"])
    star = use_point_fits(res, flags, m, fwhm)  # stars: position and flux of the PSF fit
    bad = ~np.all([np.isfinite(res[k]) & np.isfinite(res[f"{k}_err"]) for k in FIT_COLUMNS],
                  axis=0)
    flags |= np.where(bad & ~star, int(Flag.NONFINITE), 0)
    x0 = np.empty(len(src), np.int64)
    y0 = np.empty(len(src), np.int64)
    for g in st.groups:
        x0[g.index], y0[g.index] = g.x0, g.y0
    extra.update({k: m[k] for k in ("psf_mag", "psf_mag_err", "rff", "rff_err", "asym",
                                    "asym_err", "chi2nu_in")},
                 n_neighbours=count_neighbours(params["x"], params["y"], x0, y0, src.size),
                 cutout=src.size, rebin=src.rebin)
    options = {"detect": positions is None, "refine": bool(refine), "snr_min": float(snr_min),
               "gain": None if gain is None else float(gain),
               "preset": preset.name, "device": str(device), "pixel_scale": pixel_scale,
               "zeropoint": zeropoint, "save_models": None if save_models is None
               else str(save_models)}
    inputs = {k: (str(v) if isinstance(v, str | Path) else "<array>") for k, v in
              (("frame", frame), ("psf", psf), ("positions", positions), ("weight", weight),
               ("variance", variance), ("sigma", sigma), ("frame_mask", frame_mask))
              if v is not None}
    sources = {k: str(fd.meta[f"{k}_source"]) for k in ("zeropoint", "pixel_scale", "gain")
               if f"{k}_source" in fd.meta}
    for k, v in sources.items():
        if v.startswith("preset"):
            log.warning("%s not given and not in the frame header: using the %s default", k, v)
    meta = {"model": "galnet frame" + (" refine" if refine else ""),
            "provenance": provenance(command=command, inputs=inputs,
                                     weights=weights_provenance(model), options=options,
                                     sources=sources),
            "frame": {k: v for k, v in fd.meta.items() if not k.endswith("_source")}}
    meta["frame"]["psf_fwhm_pix"] = float(fwhm)
    t = frame_catalog(fd, src.ids, res, flags, extra, meta)
    if save_models is not None:
        _save(save_models, st, overwrite, {"provenance": meta["provenance"]},
              extra.get("sky"))
    if out is not None:
        write_catalog(t, out, overwrite=overwrite)
    dt = time.perf_counter() - t0
    say("%d sources in %.1f s (%.0f galaxies/s)", len(t), dt, len(t) / dt)
    return t
