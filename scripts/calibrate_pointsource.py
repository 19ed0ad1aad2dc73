"""Calibrate and measure the point-source test (galnet.fitting.pointsource; issue 13 item 4).

Simulated stamps (61 x 61, Gaussian sky noise sigma = 1 count, optionally the source's Poisson
noise with --gain; the true sigma map given to the fit):

- stars: the true PSF alone, S/N 20 .. 1e4 (log-uniform), centre within +-0.5 px;
- galaxies: Sérsic, re from 0.1 to 5 PSF FWHM (log-uniform, along the major axis), n 0.5 .. 6,
  q 0.2 .. 1, S/N 20 .. 2000 (log-uniform);

rendered by GalSim (independent of galnet) and, for the Moffat PSF, also by galnet's renderer.
PSFs: Moffat (beta 3, FWHM 3.5 px), the HSC r-band PSF image of ../shared/data
(hsc_cosmos_psf_scarlet.fits, index 1) and a DES PSFEx model (galsim.des.DES_PSFEx) at
(500, 1000). Each set is fitted with the PSF given to galnet at its true FWHM and dilated by
0.95 and 1.05 (for DES also the PSFEx model at another position, (1800, 3500)). The Sérsic
side: galnet.fitting.lm.fit_arrays from moments; then point_source_test.

Reported per case: the fraction of stars with S/N > 50 flagged POINT_SOURCE (target >= 95%)
and of fainter ones, of galaxies with re >= FWHM / 2 flagged so (target <= 2%) or UNRESOLVED,
how often the 95% upper limit of an unresolved galaxy is above its true re, and the median
upper limit of the stars in units of the FWHM.

Usage::

    python scripts/calibrate_pointsource.py [--stars 100] [--galaxies 200] [--data ../shared/data]
        [--out /tmp/pointsource.npz] [--kinds moffat hsc des] [--seed 0] [--gain G]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from galnet.conventions import galsim_sersic
from galnet.fitting.lm import fit_arrays
from galnet.fitting.pointsource import POINT_RULE, point_source_test, psf_fwhm
from galnet.profiles.render import render

S = 61
PS = 25  # PSF image side


def _draw(obj, method):
    return obj.drawImage(nx=S, ny=S, scale=1.0, method=method).array.astype(float)


def psf_set(kind: str, data: Path):
    """(true GSObject, its draw method, {label: given PSF image})."""
    import galsim

    if kind == "moffat":
        true = galsim.Convolve(galsim.Moffat(beta=3.0, fwhm=3.5), galsim.Pixel(1.0))
        method = "no_pixel"
        given = {f"x{s:.2f}": true.dilate(s) for s in (0.95, 1.0, 1.05)}
    elif kind == "hsc":
        from astropy.io import fits

        img = fits.getdata(data / "psf" / "hsc_cosmos_psf_scarlet.fits")[1].astype(float)
        true = galsim.InterpolatedImage(galsim.Image(img / img.sum(), scale=1.0))
        method = "no_pixel"
        given = {f"x{s:.2f}": true.dilate(s) for s in (0.95, 1.0, 1.05)}
    elif kind == "des":
        import galsim.des

        pex = galsim.des.DES_PSFEx(str(data / "psf" / "des_DECam_00154912_12_psfex.psf"))
        true, method = pex.getPSF(galsim.PositionD(500, 1000)), "no_pixel"
        given = {f"x{s:.2f}": true.dilate(s) for s in (0.95, 1.0, 1.05)}
        given["other_pos"] = pex.getPSF(galsim.PositionD(1800, 3500))
    else:
        raise SystemExit(f"unknown PSF kind {kind!r}")
    imgs = {k: v.drawImage(nx=PS, ny=PS, scale=1.0, method="no_pixel").array.astype(float)
            for k, v in given.items()}
    return true, method, imgs


def simulate(true, method, true_img, n_stars, n_gal, rng, renderer: str, gain=None):
    """Images (N, S, S), their sigma maps (sky noise 1; plus the source's Poisson noise
    ``model / gain`` with a gain in e-/count), truth dict, is_star (N,), FWHM."""
    import galsim

    fwhm = float(psf_fwhm(true_img)[0])
    N = n_stars + n_gal
    c = (S - 1) / 2
    t = {"x": c + rng.uniform(-0.5, 0.5, N), "y": c + rng.uniform(-0.5, 0.5, N),
         "re_pix": np.r_[np.zeros(n_stars), fwhm * np.exp(rng.uniform(np.log(0.1), np.log(5),
                                                                          n_gal))],
         "n": np.r_[np.ones(n_stars), rng.uniform(0.5, 6.0, n_gal)],
         "q": np.r_[np.ones(n_stars), rng.uniform(0.2, 1.0, n_gal)],
         "pa_deg": rng.uniform(0, 180, N),
         "snr": np.r_[np.exp(rng.uniform(np.log(20), np.log(1e4), n_stars)),
                      np.exp(rng.uniform(np.log(20), np.log(2000), n_gal))]}
    unit = np.empty((N, S, S))
    for i in range(N):
        if renderer == "galnet":
            p = {k: t[k][i] for k in ("x", "y", "n", "q", "pa_deg")}
            p.update(re_pix=max(t["re_pix"][i], 1e-3), flux=1.0)
            unit[i] = render(p, true_img, (S, S))[0]
        elif i < n_stars:
            unit[i] = _draw(true.shift(t["x"][i] - c, t["y"][i] - c), method)
        else:
            p = {k: t[k][i] for k in ("x", "y", "re_pix", "n", "q", "pa_deg")}
            p["flux"] = 1.0
            gal = galsim_sersic(p, (S, S), gsparams=galsim.GSParams(maximum_fft_size=16384))
            unit[i] = _draw(galsim.Convolve(gal, true), method)
    flux = t["snr"] / np.sqrt((unit**2).sum((1, 2)))
    t["flux"] = flux
    model = unit * flux[:, None, None]
    sig = np.sqrt(1.0 + (np.maximum(model, 0.0) / gain if gain else 0.0))
    img = model + sig * rng.normal(size=unit.shape)
    return img, sig, t, np.arange(N) < n_stars, fwhm


def measure(img, sig, given_img, fwhm_given):
    ser = fit_arrays(img, given_img, sigma=sig)
    pst = point_source_test(img, given_img, 1.0 / sig, ser, psf_fwhm_pix=fwhm_given,
                            zeropoint=0.0)
    return ser, pst


def report(label, t, star, fwhm_true, pst):
    """One line of fractions for one case (printed)."""
    point, unres, up = pst["point"], pst["unresolved"], pst["re_upper"]
    s50 = star & (t["snr"] > 50)
    faint = star & (t["snr"] <= 50)
    big = ~star & (t["re_pix"] >= 0.5 * fwhm_true)
    gun = ~star & unres
    cover = np.mean(up[gun] >= t["re_pix"][gun]) if gun.any() else np.nan
    print(f"{label:34s} stars S/N>50 point {point[s50].mean():6.1%} ({s50.sum()}), "
          f"S/N<=50 {point[faint].mean():6.1%} ({faint.sum()}) | galaxies re>=FWHM/2: point "
          f"{point[big].mean():5.1%}, unresolved {unres[big].mean():5.1%} ({big.sum()}) | "
          f"unresolved galaxies {gun.sum()}: re_upper >= true re {cover:6.1%} | stars "
          f"re_upper/FWHM median {np.nanmedian(up[star]) / fwhm_true:.2f}", flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stars", type=int, default=100)
    ap.add_argument("--galaxies", type=int, default=250)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1] / ".." /
                    "shared" / "data")
    ap.add_argument("--kinds", nargs="+", default=["moffat", "hsc", "des"])
    ap.add_argument("--out", type=Path, default=None, help="save the fit features (npz)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gain", type=float, default=None,
                    help="add the source's Poisson noise (e-/count; sky noise is 1 count)")
    ap.add_argument("--renderers", nargs="+", default=["galsim", "galnet"],
                    help="galnet renders the Moffat set only")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"rule: {POINT_RULE}")
    saved = {}
    for kind in args.kinds:
        if kind != "moffat" and not args.data.is_dir():
            print(f"{kind}: {args.data} absent, skipped")
            continue
        true, method, given = psf_set(kind, args.data)
        true_img = true.drawImage(nx=PS, ny=PS, scale=1.0, method="no_pixel").array
        for renderer in (r for r in args.renderers if r == "galsim" or kind == "moffat"):
            rng = np.random.default_rng(args.seed)
            t0 = time.time()
            img, sig, t, star, fwhm = simulate(true, method, true_img, args.stars,
                                               args.galaxies, rng, renderer, args.gain)
            for lab, g in given.items():
                fg = float(psf_fwhm(g)[0])
                ser, pst = measure(img, sig, g, fg)
                key = f"{kind}/{renderer}/{lab}"
                report(f"{key} (FWHM {fwhm:.2f}/{fg:.2f})", t, star, fwhm, pst)
                for k in ("re_pix", "re_pix_err", "n", "q", "chi2nu", "snr"):
                    saved[f"{key}/ser_{k}"] = ser[k]
                for k in ("chi2_psf", "re_upper", "point", "unresolved", "psf_mag"):
                    saved[f"{key}/{k}"] = pst[k]
                saved[f"{key}/fwhm_given"] = fg
            for k in ("re_pix", "n", "q", "snr", "flux"):
                saved[f"{kind}/{renderer}/true_{k}"] = t[k]
            saved[f"{kind}/{renderer}/star"] = star
            saved[f"{kind}/{renderer}/fwhm_true"] = fwhm
            print(f"  ({kind}/{renderer}: {time.time() - t0:.0f} s)", flush=True)
    if args.out is not None:
        np.savez(args.out, **saved)
        print(f"features saved to {args.out}")


if __name__ == "__main__":
    main()
