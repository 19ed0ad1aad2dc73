"""The ten GAMA galaxies (KiDS r and SDSS r) and the large galaxy of the VST r frame through
galnet's frame mode (``--detect``, with and without ``--refine``), against reference fits
(issue 13, "Benchmarks").

Usage::

    .venv/bin/python benchmarks/frame_gama.py [--data ../shared/data] [--survey KiDS SDSS]
        [--cataid ...] [--no-vst] [--quick] [--out-json gama_frame.json]

Reference fits (ExampleInit.tab is only a start, not a truth; benchmarks/gama_galaxies.py):
PyImfit single-Sérsic fits (:func:`gama_galaxies.imfit_gama`: Imfit's LM from ExampleInit, on the
ProFit image, sigma map, unit-sum clipped PSF, with ``mskim`` and every non-target segment of
``segim`` masked). galnet's frame mode gets the image, the sigma map (``sigma=``), the same PSF,
``frame_mask = mskim != 0`` (the stars ProFit masks), and detects and deblends by itself; the
detection nearest the image centre is compared.

VST: ``frames/vst_r_G202627.fits`` (602 x 602, 0.2"/px; the galaxy is a grand-design spiral
with a bright star on its disc, so a single Sérsic is only a rough description). Reference:
PyImfit on the 401 x 401 cutout centred on the nucleus (the peak within 15 px of the frame
centre), minus one sky level (median of the pixels outside every segment), other photutils
segments (not deblended) masked and, within the galaxy's segment, the deblended pieces brighter
than 0.3 x the nucleus (the star), sigma = the frame's robust sky rms (the rescaled units have no
usable gain), PSF from the frame's stars
(:func:`inject_frames.star_psf`), started from :func:`galnet.fitting.init.moments_init`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gama_galaxies as gg  # noqa: E402
import inject_frames as inj  # noqa: E402
from inject_metrics import _col  # noqa: E402

KEYS = ("re_arcsec", "n", "q", "pa_deg", "mag")


def _write(path: Path, arr) -> str:
    from astropy.io import fits

    fits.PrimaryHDU(np.asarray(arr, np.float32)).writeto(path, overwrite=True)
    return str(path)


def frame_catalogue(frame: str, psf: str, *, sigma=None, frame_mask=None, scale: float,
                    refine: bool, out: Path) -> tuple[object, float, str]:
    """The frame mode's catalogue of ``frame`` (run_frame --detect; if galnet.frame cannot be
    imported: ``galnet predict --frame --positions`` at the image centre). (table, s, mode)."""
    t0 = time.perf_counter()
    try:
        from galnet.frame.pipeline import run_frame

        cat = run_frame(frame, psf, out, detect=True, sigma=sigma, frame_mask=frame_mask,
                        refine=refine, pixel_scale=scale, zeropoint=0.0, progress=False,
                        overwrite=True)
        return cat, time.perf_counter() - t0, "run_frame --detect"
    except ImportError as err:
        from astropy.io import fits
        from astropy.table import Table

        ny, nx = fits.getdata(frame).shape
        pos = out.with_suffix(".pos.ecsv")
        Table({"x": [(nx - 1) / 2], "y": [(ny - 1) / 2]}).write(pos, overwrite=True)
        kw = dict(frame=frame, positions=str(pos), psf=psf, sigma=sigma, mask=frame_mask,
                  pixel_scale=scale, zeropoint=0.0, progress=False, overwrite=True)
        if refine:
            from galnet.fitting.runner import fit_files

            cat = fit_files(out, init="nn", **kw)
        else:
            from galnet.nn.predict import predict_files

            cat = predict_files(out, **kw)
        return cat, time.perf_counter() - t0, f"fallback --positions centre ({err})"


def nearest(cat, x0: float, y0: float) -> dict:
    """The catalogue row nearest (x0, y0) as a dict (NaN when the catalogue is empty)."""
    x, y = _col(cat, "x"), _col(cat, "y")
    if len(x) == 0:
        return {k: math.nan for k in ("dist", *KEYS, "flags", "rebin", "chi2nu")}
    j = int(np.argmin(np.hypot(x - x0, y - y0)))
    out = {k: float(_col(cat, k)[j]) for k in (*KEYS, "rebin", "chi2nu")}
    out.update(dist=float(np.hypot(x[j] - x0, y[j] - y0)), flags=int(_col(cat, "flags")[j]),
               n_rows=len(x))
    return out


def _ref(r: dict, scale: float) -> dict:
    return {"re_arcsec": r["re_pix"] * scale, "n": r["n"], "q": r["q"], "pa_deg": r["pa_deg"],
            "mag": r["mag"], "chi2nu": r["chi2nu"]}


def gama_one(data_dir: Path, cid: int, survey: str, tmp: Path) -> dict:
    """Reference (PyImfit) and frame mode (network, refine) of one GAMA galaxy."""
    gal = gg.load_gama(data_dir, cid, survey)
    d = gg.gama_dir(data_dir) / survey
    ref = _ref(gg.imfit_gama(gal), gal["pixel_scale"])
    psf = _write(tmp / "psf.fits", gal["psf"])
    from astropy.io import fits

    mask = _write(tmp / "mask.fits", (fits.getdata(d / f"G{cid}mskim.fits") != 0).astype(int))
    ny, nx = gal["image"].shape
    row = {"cataid": cid, "survey": survey, "ref": ref}
    for p, refine in (("net", False), ("ref_fit", True)):
        cat, dt, mode = frame_catalogue(str(d / f"G{cid}fitim.fits"), psf,
                                        sigma=str(d / f"G{cid}sigma.fits"), frame_mask=mask,
                                        scale=gal["pixel_scale"], refine=refine,
                                        out=tmp / f"{cid}{survey}{p}.ecsv")
        row[p] = {**nearest(cat, (nx - 1) / 2, (ny - 1) / 2), "seconds": dt}
        row["mode"] = mode
    return row


def vst_large(data_dir: Path, tmp: Path) -> dict:
    """The large galaxy of the VST frame: PyImfit reference on a cutout vs the frame mode."""
    from galnet.fitting.init import moments_init
    from galnet.interop.pyimfit_runner import imfit_fit

    fr = inj.load_frame(data_dir, "vst_r", np.random.default_rng(0))
    _, seg0, _ = inj.detect_real(fr.data, fr.sigma, fr.bad, fr.fwhm, deblend=False)
    _, seg1, _ = inj.detect_real(fr.data, fr.sigma, fr.bad, fr.fwhm)
    sky = float(np.median(fr.data[(seg0 == 0) & ~fr.bad]))  # one level: no halo eaten
    img0 = fr.data - sky
    H, W = fr.data.shape
    c = np.s_[H // 2 - 15:H // 2 + 16, W // 2 - 15:W // 2 + 16]  # the nucleus: the peak near
    gy, gx = np.unravel_index(np.argmax(img0[c]), img0[c].shape)  # the frame centre
    gx, gy = float(gx + W // 2 - 15), float(gy + H // 2 - 15)
    big = seg0[int(gy), int(gx)]
    mask = (seg0 != 0) & (seg0 != big)  # other sources
    nuc = seg1[int(gy), int(gx)]
    for lab in np.unique(seg1[(seg0 == big) & (seg1 != nuc)]):  # bright stars on the galaxy
        if lab and img0[seg1 == lab].max() > 0.3 * img0[int(gy), int(gx)]:
            mask |= seg1 == lab
    h = 200
    ix, iy = int(round(gx)), int(round(gy))
    ya, xa = max(iy - h, 0), max(ix - h, 0)
    win = np.s_[ya:min(iy + h + 1, H), xa:min(ix + h + 1, W)]
    img, mask = img0[win], (mask | fr.bad)[win]
    sigma = fr.sigma[win]
    m = moments_init(img, fr.psf, mask=mask, sigma=sigma)
    init = {k: float(m[k][0]) for k in gg.FIT_KEYS}
    t0 = time.perf_counter()
    r = imfit_fit(img, fr.psf, init=init, sigma=sigma, mask=mask)
    r["mag"] = -2.5 * math.log10(r["flux"])
    ref = {**_ref(r, fr.scale), "imfit_s": time.perf_counter() - t0}
    frame = str(data_dir / inj.FRAMES["vst_r"][0])
    psf = _write(tmp / "vst_psf.fits", fr.psf)
    row = {"target_xy": [gx, gy], "ref": ref, "fwhm_pix": fr.fwhm}
    for p, refine in (("net", False), ("ref_fit", True)):
        c, dt, mode = frame_catalogue(frame, psf, scale=fr.scale, refine=refine,
                                      out=tmp / f"vst_{p}.ecsv")
        row[p] = {**nearest(c, gx, gy), "seconds": dt}
        row["mode"] = mode
    return row


def _line(name: str, row: dict) -> str:
    r = row["ref"]
    cells = [name, f"{r['re_arcsec']:.2f}", f"{r['n']:.2f}", f"{r['q']:.2f}", f"{r['mag']:.2f}"]
    for p in ("net", "ref_fit"):
        g = row[p]
        cells += [f"{g['re_arcsec']:.2f}", f"{g['n']:.2f}", f"{g['q']:.2f}", f"{g['mag']:.2f}",
                  f"{g['dist']:.1f}", f"{g.get('rebin', math.nan):.0f}", str(g["flags"])]
    return "| " + " | ".join(cells) + " |"


def summary_stats(rows: list[dict]) -> dict:
    """Median and max |re/re_ref - 1|, |dn|, |dq|, |dmag| of the network and the refine."""
    out = {}
    for p in ("net", "ref_fit"):
        dre = np.array([r[p]["re_arcsec"] / r["ref"]["re_arcsec"] - 1 for r in rows])
        dn = np.array([r[p]["n"] - r["ref"]["n"] for r in rows])
        dq = np.array([r[p]["q"] - r["ref"]["q"] for r in rows])
        dm = np.array([r[p]["mag"] - r["ref"]["mag"] for r in rows])
        out[p] = {k: {"median_abs": float(np.nanmedian(np.abs(v))),
                      "max_abs": float(np.nanmax(np.abs(v)))}
                  for k, v in (("re_rel", dre), ("n", dn), ("q", dq), ("mag", dm))}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / ".." / "shared"
                                          / "data"))
    ap.add_argument("--survey", nargs="+", default=["KiDS", "SDSS"], choices=["KiDS", "SDSS"])
    ap.add_argument("--cataid", type=int, nargs="*")
    ap.add_argument("--no-vst", action="store_true")
    ap.add_argument("--quick", action="store_true", help="3 galaxies, KiDS only, and the VST")
    ap.add_argument("--out-json", default=None)
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    data = Path(a.data)
    ids = a.cataid or gg.list_cataids(data)
    surveys = a.survey
    if a.quick:
        ids, surveys = ids[:3], ["KiDS"]
    rows = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        for cid in ids:
            for s in surveys:
                rows.append(gama_one(data, cid, s, tmp))
                print(f"G{cid} {s} done", file=sys.stderr, flush=True)
        vst = None if a.no_vst else vst_large(data, tmp)
    head = ("| galaxy | ref re\" | ref n | ref q | ref mag | net re\" | net n | net q | net mag "
            "| net d(px) | net rebin | net flags | refine re\" | refine n | refine q | "
            "refine mag | refine d(px) | refine rebin | refine flags |")
    lines = [f"# {' '.join(sys.argv)}  (mode: {rows[0]['mode'] if rows else vst['mode']})",
             head, "|---" * 19 + "|"]
    lines += [_line(f"G{r['cataid']} {r['survey']}", r) for r in rows]
    if vst is not None:
        lines.append(_line("VST large", vst))
    out = {"rows": rows, "vst": vst, "summary": summary_stats(rows) if rows else None,
           "wall_s": time.perf_counter() - t0, "command": " ".join(sys.argv)}
    print("\n".join(lines))
    if out["summary"]:
        print(json.dumps(out["summary"], indent=1))
    if a.out_json:
        Path(a.out_json).write_text(json.dumps(out, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
