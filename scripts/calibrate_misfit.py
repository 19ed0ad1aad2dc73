"""Calibrate the MISFIT thresholds (galnet.quality.MISFIT_THRESHOLDS) on simulated galaxies.

Pure single-Sérsic galaxies, rendered half by galnet's renderer and half by GalSim (independent),
in 61x61 stamps with a Moffat PSF (FWHM 2.5-6 px, beta 2.5-4.5, ellipticity <= 0.05), sky noise
(sigma 1) plus the source's Poisson noise (sky level g = 10-1000 counts: variance 1 + model/g),
S/N 20-1000 (log-uniform, the sky-only optimal S/N of the truth), re 1-12 px, n 0.5-6, q 0.2-1,
centre within +-2 px. They are fitted by galnet's fitter (:func:`galnet.fitting.lm.fit_arrays`,
init = the truth jittered: 0.5 px, 20% in flux/re/n, 0.05 in q, 10 deg) with a PSF whose FWHM is
off by a uniform -5%..+5%, and with sigma = sqrt(1 + max(data, 0)/g) (what a user with the gain
computes). :func:`galnet.quality.residual_stats` then measures rff, asym (and chi2nu_in).

Thresholds: ``k`` (noise standard deviations) is chosen from {2, 3, 4, 5} for the best detection
of misfits on the calibration seed; the floors ``rff`` and ``asym`` are the quantiles of
``stat - k * stat_err`` of the calibration seed's single-Sérsic fits (S/N >= snr_min) that leave
0.25% each above them (<= 0.5% flagged together). The rates are then measured on a second seed.

Misfits (GalSim only): two-component (bulge n 2.5-5, re 1-4 px, q 0.6-1 + exponential-ish disk
n 0.8-1.2, re 1.5-4x the bulge's and 4-12 px, q 0.2-0.9, its own PA; bulge/total 0.2-0.8) and
clumpy (disk n 0.8-1.5, re 4-12 px + 2-5 point clumps, Gaussian sigma 0.5 px, at 0.3-1.5 re,
with 5-20% of the total flux). Fitted by the same single Sérsic, init = jittered
flux-weighted guesses.

Commands (torch 1 thread; measured: 25 min wall per seed, 3.5 min of CPU, the two seeds run at
once on the shared 2-core machine at load ~10)::

    python scripts/calibrate_misfit.py simulate --seed 1 --n 1000 --nmis 400 --out /tmp/misfit1.npz
    python scripts/calibrate_misfit.py simulate --seed 2 --n 1000 --nmis 400 --out /tmp/misfit2.npz
    python scripts/calibrate_misfit.py calibrate /tmp/misfit1.npz /tmp/misfit2.npz

Measured (the numbers now in galnet.quality.MISFIT_THRESHOLDS)::

    k scan on the calibration seed (floors at the 99.75% quantile each):
      k=2.0: rff floor 0.0089, asym floor 0.014, misfits detected 29.9%
      k=3.0: rff floor -0.0011, asym floor -0.0004, misfits detected 36.8%
      k=4.0: rff floor -0.0022, asym floor -0.0022, misfits detected 34.8%
      k=5.0: rff floor -0.0034, asym floor -0.0032, misfits detected 32.1%
    chosen: {'k': 3.0, 'snr_min': 20.0, 'rff': -0.0011, 'asym': -0.0004}
    flagged on the calibration seed (% of galaxies / count), by fit S/N:
      class      all(S/N>=20)  20-49     50-99     100-299    300-1000
      galnet      0.71% of 985      1.3%/235     0.0%/210     0.3%/319     1.4%/221
      galsim      0.41% of 986      0.4%/244     0.0%/197     0.6%/321     0.4%/224
      twocomp    12.53% of 391      1.1%/91      1.2%/84      5.7%/123    43.0%/93
      clumpy     60.71% of 397      0.0%/87     24.6%/61     84.8%/145    99.0%/104
    flagged on the check seed:
      class      all(S/N>=20)  20-49     50-99     100-299    300-1000
      galnet      0.51% of 989      0.0%/246     0.5%/192     0.6%/328     0.9%/223
      galsim      0.51% of 988      0.0%/236     0.0%/188     0.0%/318     2.0%/246
      twocomp    15.50% of 400      1.0%/96      0.0%/79      7.9%/114    46.8%/111
      clumpy     53.30% of 394      6.7%/105    27.3%/66     68.8%/109    96.5%/114
    calibration galnet: flagged 7, of which not converged 0, bound 1
    calibration galsim: flagged 4, of which not converged 0, bound 0
    check galnet: flagged 5, of which not converged 0, bound 0
    check galsim: flagged 5, of which not converged 0, bound 0

A sigma with the sky's noise only (a weight map) and the same thresholds (galnet renderer, 400
single Sérsics; rows: fit and statistics with the right sigma, with the sky-only sigma, and with
the sky-only sigma plus ``gain=`` given to residual_stats; % flagged at S/N >= 20, by S/N)::

    python scripts/calibrate_misfit.py sigma-check --seed 11 --n 400

    full sigma: 0.8% of 392 | 20-49 0.0%/90, 50-99 0.0%/71, 100-299 1.4%/139, 300-1000 1.1%/92
    sky-only: 25.3% of 396 | 20-49 0.0%/84, 50-99 3.2%/63, 100-299 23.0%/122, 300-1000 55.1%/127
    sky-only+gain: 0.8% of 396 | 20-49 0.0%/84, 50-99 0.0%/63, 100-299 1.6%/122, 300-1000 0.8%/127
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

SHAPE = (61, 61)
PSF_SIZE = 25
BINS = (20, 50, 100, 300, 1001)


def _galsim():
    import galsim

    return galsim


def moffat_image(fwhm: float, beta: float, g1: float, g2: float) -> np.ndarray:
    """Effective (pixel-convolved) Moffat PSF image, PSF_SIZE^2, unit sum."""
    gs = _galsim()
    p = gs.Moffat(beta=beta, fwhm=fwhm).shear(g1=g1, g2=g2)
    a = p.drawImage(nx=PSF_SIZE, ny=PSF_SIZE, scale=1.0).array
    return a / a.sum()


def draw_psfs(rng, N: int) -> dict:
    """PSF parameters per galaxy, and the fitter's PSF (FWHM off by -5%..+5%)."""
    fwhm = rng.uniform(2.5, 6.0, N)
    beta = rng.uniform(2.5, 4.5, N)
    e = rng.uniform(0, 0.05, N)
    th = rng.uniform(0, np.pi, N)
    g1, g2 = e * np.cos(2 * th), e * np.sin(2 * th)
    off = rng.uniform(-0.05, 0.05, N)
    true = np.stack([moffat_image(*a) for a in zip(fwhm, beta, g1, g2, strict=True)])
    fit = np.stack([moffat_image(f * (1 + o), b, a1, a2)
                    for f, o, b, a1, a2 in zip(fwhm, off, beta, g1, g2, strict=True)])
    return dict(fwhm=fwhm, beta=beta, g1=g1, g2=g2, off=off, true=true, fit=fit)


def sersic_params(rng, N: int) -> dict:
    H, W = SHAPE
    return dict(
        x=(W - 1) / 2 + rng.uniform(-2, 2, N),
        y=(H - 1) / 2 + rng.uniform(-2, 2, N),
        re_pix=np.exp(rng.uniform(np.log(1.0), np.log(12.0), N)),
        n=np.round(rng.uniform(0.5, 6.0, N) * 20) / 20,  # GalSim caches its Sérsic tables by n
        q=rng.uniform(0.2, 1.0, N),
        pa_deg=rng.uniform(0, 180, N),
        flux=np.ones(N),
    )


def galsim_components(comps: list[dict], psf: dict, i: int) -> np.ndarray:
    """GalSim image of a sum of components (Sérsic or clump) convolved with galaxy i's Moffat."""
    gs = _galsim()
    gsp = gs.GSParams(folding_threshold=1e-3, maximum_fft_size=16384)
    H, W = SHAPE
    objs = []
    for c in comps:
        if c["kind"] == "sersic":
            o = gs.Sersic(n=float(c["n"]), half_light_radius=float(c["re_pix"] * np.sqrt(c["q"])),
                          flux=float(c["flux"]), gsparams=gsp)
            o = o.shear(q=float(c["q"]), beta=(float(c["pa_deg"]) + 90.0) * gs.degrees)
        else:
            o = gs.Gaussian(sigma=0.5, flux=float(c["flux"]), gsparams=gsp)
        objs.append(o.shift(float(c["x"]) - (W - 1) / 2, float(c["y"]) - (H - 1) / 2))
    p = gs.Moffat(beta=psf["beta"][i], fwhm=psf["fwhm"][i]).shear(g1=psf["g1"][i],
                                                                 g2=psf["g2"][i])
    img = gs.Convolve(gs.Add(objs) if len(objs) > 1 else objs[0], p, gsparams=gsp)
    return img.drawImage(nx=W, ny=H, scale=1.0).array


def singles(rng, N: int, renderer: str):
    """Unit-flux single-Sérsic images (N, H, W), their parameters and PSFs."""
    import galnet

    p = sersic_params(rng, N)
    psf = draw_psfs(rng, N)
    if renderer == "galnet":
        img = galnet.render(p, psf["true"], SHAPE)
    else:
        img = np.stack([galsim_components([{**{k: v[i] for k, v in p.items()}, "kind": "sersic"}],
                                          psf, i) for i in range(N)])
    return img, p, psf


def composites(rng, N: int, kind: str):
    """Unit-flux two-component or clumpy galaxies (GalSim), and single-Sérsic first guesses."""
    H, W = SHAPE
    psf = draw_psfs(rng, N)
    imgs, guess = [], {k: np.zeros(N) for k in ("x", "y", "flux", "re_pix", "n", "q", "pa_deg")}
    extra = {"bt": np.full(N, np.nan), "fclump": np.full(N, np.nan), "nclump": np.zeros(N, int)}
    for i in range(N):
        x0, y0 = (W - 1) / 2 + rng.uniform(-2, 2), (H - 1) / 2 + rng.uniform(-2, 2)
        if kind == "twocomp":
            bt = rng.uniform(0.2, 0.8)
            reb = np.exp(rng.uniform(0, np.log(4.0)))
            red = float(np.clip(reb * rng.uniform(1.5, 4.0), 4.0, 12.0))
            disk = dict(kind="sersic", x=x0, y=y0, flux=1 - bt, re_pix=red,
                        n=round(rng.uniform(0.8, 1.2) * 20) / 20, q=rng.uniform(0.2, 0.9),
                        pa_deg=rng.uniform(0, 180))
            bulge = dict(kind="sersic", x=x0, y=y0, flux=bt, re_pix=reb,
                         n=round(rng.uniform(2.5, 5.0) * 20) / 20, q=rng.uniform(0.6, 1.0),
                         pa_deg=rng.uniform(0, 180))
            comps = [disk, bulge]
            extra["bt"][i] = bt
            g = dict(re_pix=bt * reb + (1 - bt) * red, n=1 + 3 * bt, q=disk["q"],
                     pa_deg=disk["pa_deg"])
        else:
            nc = int(rng.integers(2, 6))
            fc = rng.uniform(0.05, 0.20)
            red = np.exp(rng.uniform(np.log(4.0), np.log(12.0)))
            disk = dict(kind="sersic", x=x0, y=y0, flux=1 - fc, re_pix=red,
                        n=round(rng.uniform(0.8, 1.5) * 20) / 20, q=rng.uniform(0.3, 1.0),
                        pa_deg=rng.uniform(0, 180))
            comps = [disk]
            w = rng.dirichlet(np.ones(nc)) * fc
            s, c = np.sin(np.deg2rad(disk["pa_deg"])), np.cos(np.deg2rad(disk["pa_deg"]))
            for f in w:
                r, th = rng.uniform(0.3, 1.5) * red, rng.uniform(0, 2 * np.pi)
                along, across = r * np.cos(th), r * disk["q"] * np.sin(th)
                comps.append(dict(kind="clump", flux=f, x=x0 - s * along + c * across,
                                  y=y0 + c * along + s * across))
            extra["fclump"][i], extra["nclump"][i] = fc, nc
            g = dict(re_pix=red, n=disk["n"], q=disk["q"], pa_deg=disk["pa_deg"])
        imgs.append(galsim_components(comps, psf, i))
        for k, v in dict(x=x0, y=y0, flux=1.0, **g).items():
            guess[k][i] = v
    return np.stack(imgs), guess, psf, extra


def observe(rng, img: np.ndarray, N: int):
    """Scale unit-flux images to a target S/N, add sky + Poisson noise; (data, sigma, g, snr0)."""
    snr0 = np.exp(rng.uniform(np.log(20.0), np.log(1000.0), N))
    g = np.exp(rng.uniform(np.log(10.0), np.log(1000.0), N))  # sky level, counts (sky sigma 1)
    flux = snr0 / np.sqrt((img**2).sum(axis=(1, 2)))
    model = img * flux[:, None, None]
    var_true = 1.0 + np.maximum(model, 0) / g[:, None, None]
    data = model + rng.normal(size=img.shape) * np.sqrt(var_true)
    sigma = np.sqrt(1.0 + np.maximum(data, 0) / g[:, None, None])
    return data, sigma, flux, g, snr0


def jitter(rng, p: dict, flux: np.ndarray) -> dict:
    from galnet.params import SERSIC

    N = len(flux)
    j = dict(x=p["x"] + rng.normal(0, 0.5, N), y=p["y"] + rng.normal(0, 0.5, N),
             flux=p["flux"] * flux * np.exp(rng.normal(0, 0.2, N)),
             re_pix=p["re_pix"] * np.exp(rng.normal(0, 0.2, N)),
             n=p["n"] * np.exp(rng.normal(0, 0.2, N)),
             q=np.clip(p["q"] + rng.normal(0, 0.05, N), 0.1, 1.0),
             pa_deg=(p["pa_deg"] + rng.normal(0, 10, N)) % 180)
    lo, hi = SERSIC["n"].fit
    j["n"] = np.clip(j["n"], lo * 1.01, hi * 0.99)
    return j


def fit_and_measure(data, sigma, psf_fit, init) -> dict:
    """Fit one Sérsic, then the residual statistics; dict of (N,) arrays."""
    from galnet.fitting.lm import fit_arrays
    from galnet.quality import residual_stats

    res = fit_arrays(data, psf_fit, sigma=sigma, init=init, models=True)
    st = residual_stats(data, res["model"], sigma, None, x=res["x"], y=res["y"], re=res["re_pix"],
                        q=res["q"], pa_deg=res["pa_deg"])
    out = {f"fit_{k}": np.asarray(res[k]) for k in ("x", "y", "flux", "re_pix", "n", "q",
                                                    "pa_deg", "chi2nu", "snr", "converged",
                                                    "bound")}
    out.update(st)
    return out


def simulate(args) -> None:
    import torch

    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    parts = {}
    t0 = time.time()
    for cls in ("galnet", "galsim", "twocomp", "clumpy"):
        n = args.n if cls in ("galnet", "galsim") else args.nmis
        if n == 0:
            continue
        if cls in ("galnet", "galsim"):
            img, p, psf = singles(rng, n, cls)
            extra = {}
        else:
            img, p, psf, extra = composites(rng, n, cls)
        data, sigma, flux, g, snr0 = observe(rng, img, n)
        init = jitter(rng, p, flux)
        out = fit_and_measure(data, sigma, psf["fit"], init)
        out.update({f"true_{k}": np.asarray(v, float) * (flux if k == "flux" else 1.0)
                    for k, v in p.items()})
        out.update(extra, gain=g, snr0=snr0, psf_off=psf["off"], psf_fwhm=psf["fwhm"])
        parts.update({f"{cls}/{k}": v for k, v in out.items()})
        print(f"{cls}: {n} galaxies, {time.time() - t0:.0f} s", file=sys.stderr)
    np.savez_compressed(args.out, **parts)


def load(path) -> dict[str, dict]:
    z = np.load(path)
    out: dict[str, dict] = {}
    for key in z.files:
        cls, k = key.split("/", 1)
        out.setdefault(cls, {})[k] = z[key]
    return out


def flagged(d: dict, t: dict) -> np.ndarray:
    from galnet.quality import misfit

    return misfit(d, d["fit_snr"], t)


def calibrate_floors(sets: dict, k: float, snr_min: float, tail: float) -> dict:
    single = {key: np.concatenate([sets[c][key] for c in ("galnet", "galsim")])
              for key in ("rff", "rff_err", "asym", "asym_err", "fit_snr")}
    use = single["fit_snr"] >= snr_min
    t = {"k": k, "snr_min": snr_min}
    for s in ("rff", "asym"):
        v = (single[s] - k * single[f"{s}_err"])[use]
        t[s] = float(np.round(np.quantile(v[np.isfinite(v)], 1 - tail), 4))
    return t


def rates(sets: dict, t: dict) -> list[str]:
    lines = []
    head = f"  class      all(S/N>={t['snr_min']:g})" + "".join(
        f"  {lo}-{hi - 1:<5}" for lo, hi in zip(BINS[:-1], BINS[1:], strict=True))
    lines.append(head)
    for cls in ("galnet", "galsim", "twocomp", "clumpy"):
        if cls not in sets:
            continue
        d = sets[cls]
        f = flagged(d, t)
        snr = d["fit_snr"]
        use = snr >= t["snr_min"]
        row = f"  {cls:<9} {100 * f[use].mean():6.2f}% of {use.sum():<5}"
        for lo, hi in zip(BINS[:-1], BINS[1:], strict=True):
            b = (snr >= lo) & (snr < hi)
            row += f"  {100 * f[b].mean():5.1f}%/{b.sum():<4}" if b.any() else "   -        "
        lines.append(row)
    return lines


def calibrate(args) -> None:
    cal, chk = load(args.calib), load(args.check)
    snr_min = 20.0
    best = None
    print("k scan on the calibration seed (floors at the 99.75% quantile each):")
    for k in (2.0, 3.0, 4.0, 5.0):
        t = calibrate_floors(cal, k, snr_min, args.tail)
        det = np.concatenate([flagged(cal[c], t)[cal[c]["fit_snr"] >= snr_min]
                              for c in ("twocomp", "clumpy")]).mean()
        print(f"  k={k}: rff floor {t['rff']}, asym floor {t['asym']}, misfits detected "
              f"{100 * det:.1f}%")
        if best is None or det > best[0]:
            best = (det, t)
    t = best[1]
    print(f"chosen: {t}")
    print("flagged on the calibration seed (% of galaxies / count), by fit S/N:")
    print("\n".join(rates(cal, t)))
    print("flagged on the check seed:")
    print("\n".join(rates(chk, t)))
    for name, sets in (("calibration", cal), ("check", chk)):
        for cls in ("galnet", "galsim"):
            d = sets[cls]
            f = flagged(d, t) & (d["fit_snr"] >= snr_min)
            nc = (f & ~d["fit_converged"].astype(bool)).sum()
            nb = (f & d["fit_bound"].astype(bool)).sum()
            print(f"{name} {cls}: flagged {f.sum()}, of which not converged {nc}, bound {nb}")


def sigma_check(args) -> None:
    """False positives when sigma holds the sky's noise only (a weight map), with and without
    ``gain`` passed to residual_stats (galnet renderer, fitted as in ``simulate``)."""
    import torch

    from galnet.fitting.lm import fit_arrays
    from galnet.quality import MISFIT_THRESHOLDS, misfit, residual_stats

    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    img, p, psf = singles(rng, args.n, "galnet")
    data, sigma, flux, g, _ = observe(rng, img, args.n)
    init = jitter(rng, p, flux)
    sky = np.ones_like(sigma)
    for name, sig, gain in (("full sigma", sigma, None), ("sky-only", sky, None),
                            ("sky-only+gain", sky, g)):
        res = fit_arrays(data, psf["fit"], sigma=sig, init=init, models=True)
        st = residual_stats(data, res["model"], sig, None, x=res["x"], y=res["y"],
                            re=res["re_pix"], q=res["q"], pa_deg=res["pa_deg"], gain=gain)
        f, snr = misfit(st, res["snr"]), res["snr"]
        use = snr >= MISFIT_THRESHOLDS["snr_min"]
        bins = []
        for lo, hi in zip(BINS[:-1], BINS[1:], strict=True):
            b = (snr >= lo) & (snr < hi)
            bins.append(f"{lo}-{hi - 1} {100 * f[b].mean():.1f}%/{b.sum()}")
        print(f"{name}: {100 * f[use].mean():.1f}% of {use.sum()} | " + ", ".join(bins))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("simulate")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--n", type=int, default=1000, help="single-Sérsic galaxies per renderer")
    s.add_argument("--nmis", type=int, default=400, help="two-component and clumpy galaxies each")
    s.add_argument("--out", required=True)
    c = sub.add_parser("calibrate")
    c.add_argument("calib")
    c.add_argument("check")
    c.add_argument("--tail", type=float, default=0.0025)
    k = sub.add_parser("sigma-check")
    k.add_argument("--seed", type=int, default=11)
    k.add_argument("--n", type=int, default=400)
    args = ap.parse_args(argv)
    {"simulate": simulate, "calibrate": calibrate, "sigma-check": sigma_check}[args.cmd](args)


if __name__ == "__main__":
    main()
