"""The documentation cannot lie: every ```python snippet of README.md and docs/{api,fit,
evaluate,export,bank}.md runs (bank.md only
where ../shared/data exists).

Convention (for whoever writes a snippet):
- The ```python blocks of one page run in order, in ONE namespace (a later block may use the
  names of an earlier one), with the working directory a fresh temporary folder.
- Before the first block, :data:`PRELUDE` writes the files the snippets read, so that a snippet
  reads like user code: ``stamps.fits`` (3 noisy Sérsic stamps 61x61, primary HDU with a
  ``MAGZERO = 27`` card, ``SIGMA`` extension), ``psf.fits`` (a 25x25 Gaussian effective PSF),
  ``image.fits`` (a 300x500 frame with a celestial WCS, ``MAGZERO = 27`` and galaxies at
  ``(412.3, 198.7)`` and ``(120.0, 80.5)``) and ``sources.ecsv`` (those positions, ``x``, ``y``).
  Nothing else is defined: a snippet imports what it uses.
- Blocks in other languages (```bash, ```toml) are not run. The network is the shipped hsc-r
  GaLNet (the default), on the CPU; keep snippets to a few stamps.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", "docs/api.md", "docs/fit.md", "docs/evaluate.md", "docs/export.md",
         "docs/bank.md"]
#: The real survey data that docs/bank.md builds its bank from (its snippet names the path
#: ``../shared/data``, relative to the project root); that page is skipped without it.
SHARED_DATA = ROOT.parent / "shared" / "data"

PRELUDE = '''
import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

import galnet

_r = np.arange(25) - 12.0
_psf = np.exp(-(_r[None, :] ** 2 + _r[:, None] ** 2) / (2 * 1.3 ** 2))
fits.PrimaryHDU(_psf).writeto("psf.fits")
_p = dict(x=[30.2, 31.0, 29.6], y=[29.7, 30.5, 30.1], mag=[20.0, 21.0, 20.5],
          re_pix=[4.0, 3.0, 5.0], n=[2.5, 1.0, 1.5], q=[0.6, 0.8, 0.5],
          pa_deg=[35.0, 100.0, 150.0])
_rng = np.random.default_rng(0)
_st = galnet.render(_p, _psf, (61, 61), zeropoint=27.0) + _rng.normal(0, 0.5, (3, 61, 61))
_hdr = fits.Header({"MAGZERO": 27.0})
fits.HDUList([fits.PrimaryHDU(_st.astype(np.float32), header=_hdr),
              fits.ImageHDU(np.full((3, 61, 61), 0.5, np.float32), name="SIGMA")]
             ).writeto("stamps.fits")
_w = WCS(naxis=2)
_w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
_w.wcs.cdelt = [-0.168 / 3600, 0.168 / 3600]
_w.wcs.crval = [150.0, 2.0]
_w.wcs.crpix = [250.0, 150.0]
_g = dict(x=[412.3, 120.0], y=[198.7, 80.5], mag=[20.5, 21.0], re_pix=[5.0, 3.0],
          n=[1.5, 3.0], q=[0.7, 0.5], pa_deg=[20.0, 120.0])
_frame = galnet.render(_g, _psf, (300, 500), zeropoint=27.0).sum(axis=0)
_frame = (_frame + _rng.normal(0, 0.5, _frame.shape)).astype(np.float32)
_hdr = _w.to_header()
_hdr["MAGZERO"] = 27.0
fits.PrimaryHDU(_frame, header=_hdr).writeto("image.fits")
Table({"x": _g["x"], "y": _g["y"]}).write("sources.ecsv")
del _r, _psf, _p, _rng, _st, _hdr, _w, _g, _frame
for _k in ("np", "fits", "Table", "WCS", "galnet"):
    del globals()[_k]
'''

_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def snippets(page: str) -> list[tuple[int, str]]:
    """(line number, code) of every ```python block of a page, in order."""
    text = (ROOT / page).read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in _FENCE.finditer(text)]


def test_pages_have_python_snippets():
    for page in PAGES:
        assert snippets(page), f"{page}: no ```python snippet found"


@pytest.mark.parametrize("page", PAGES)
def test_snippets_run(page, tmp_path, monkeypatch):
    if page == "docs/bank.md":
        if not SHARED_DATA.is_dir():
            pytest.skip(f"docs/bank.md builds its bank from {SHARED_DATA}, which is absent")
        (tmp_path.parent / "shared").mkdir(exist_ok=True)  # "../shared/data" from tmp_path
        link = tmp_path.parent / "shared" / "data"
        if not link.exists():
            link.symlink_to(SHARED_DATA)
    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": "__docs__"}
    exec(compile(PRELUDE, "<prelude>", "exec"), ns)
    assert {"np", "galnet"}.isdisjoint(ns), "the prelude must leave the namespace empty"
    for line, code in snippets(page):
        try:
            exec(compile(code, f"{page}:{line}", "exec"), ns)
        except Exception as err:  # noqa: BLE001 - say which snippet failed, then fail
            raise AssertionError(f"{page}, snippet at line {line} failed: "
                                 f"{type(err).__name__}: {err}") from err
    assert os.getcwd() == str(tmp_path)
