"""The Markdown report of an evaluation (``report.md``) and the metric definitions it lists."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["definitions", "report_markdown"]

#: Title of each figure :func:`galnet.evaluate.plots.write_plots` may write.
FIGURE_TITLES: dict[str, str] = {
    "pred_vs_true.png": "Predicted vs true",
    "residuals_vs_snr.png": "Residuals vs true S/N (median, 16/84%)",
    "calibration.png": "Uncertainty calibration: (pred - true)/σ",
    "gallery.png": "Residual gallery (image / model / residual)",
}


def definitions() -> dict[str, str]:
    """One line per metric definition (``metrics["definitions"]``; the report lists them)."""
    return {
        "r2": "1 - sum((p-t)^2)/sum((t-mean t)^2); r2_log: the same on log10 values",
        "bias": "median(d)",
        "nmad": "1.4826*median(|d-median(d)|)",
        "mean/rms": "mean(d), sqrt(mean(d^2))",
        "d.mag": "p-t (mag); outlier: |10^(-0.4 d)-1| > 0.15 (relative flux error)",
        "d.re": "log10(p/t) (dex); outlier: |p-t|/t > 0.15; *_rel on (p-t)/t",
        "d.n": "log10(p/t) (dex); outlier: |p-t|/t > 0.15; *_rel on (p-t)/t",
        "d.q": "p-t; outlier: |p-t|/t > 0.15",
        "d.x/y": "p-t (pix); outlier: |d| > 1 pix",
        "d.pa_deg": "p-t wrapped to [-90,90) (deg); outlier |d| > 15 deg; rows with true q < 0.8",
        "calib": "z=(p-t)/err in linear units (pa: wrapped); calib_frac_1sigma = mean(|z|<1)",
        "bins": "lo <= v < hi (last bin includes finite hi); snr>20: snr > 20; "
                "10<snr<=20: 10 < snr <= 20",
    }


def _f(v, fmt: str = ".4f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return format(v, fmt)


def _param_table(block: dict[str, Any]) -> list[str]:
    lines = ["| param | N | R² | bias | NMAD | mean | RMS | outlier frac | NMAD rel "
             "| ±1σ frac |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, m in block.items():
        r2 = m.get("r2_log", m.get("r2"))
        r2name = " (log)" if "r2_log" in m else ""
        lines.append(
            f"| {key} | {m['N']} | {_f(r2)}{r2name if r2 is not None else ''} | "
            f"{_f(m['bias'], '.4g')} | {_f(m['nmad'], '.4g')} | {_f(m['mean'], '.4g')} | "
            f"{_f(m['rms'], '.4g')} | {_f(m['outlier_frac'], '.4f')} | "
            f"{_f(m.get('nmad_rel'), '.4g')} | {_f(m.get('calib_frac_1sigma'), '.3f')} |")
    return lines


def _binned_table(binned: dict[str, Any]) -> list[str]:
    if not binned["bins"]:
        return [f"_Not available: {binned.get('note', 'no bins')}._"]
    keys = list(binned["bins"][0]["metrics"])
    head = "| bin | N | " + " | ".join(keys) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(keys)]
    for b in binned["bins"]:
        cells = []
        for k in keys:
            m = b["metrics"][k]
            r2 = m.get("r2_log", m.get("r2"))
            cells.append(f"{_f(r2, '.3f')} / {_f(m['nmad'], '.3g')} / "
                         f"{_f(m['outlier_frac'], '.3f')}")
        lines.append(f"| {b['label']} | {b['n_rows']} | " + " | ".join(cells) + " |")
    return lines


def report_markdown(m: dict[str, Any], subsets: Sequence[str]) -> str:
    """Text of ``report.md`` for the metrics ``m`` of :func:`galnet.evaluate.metrics.evaluate`;
    ``subsets`` names its S/N subsets (top-level keys of ``m``), in report order."""
    scopes = ["overall", *subsets]
    L = ["# galnet evaluation", "",
         f"- prediction: `{m['pred']}`", f"- truth: `{m['truth']}`",
         f"- rows: {m['n_rows']} matched by {m['matched_by']} (truth has {m['n_truth_rows']}); "
         f"failed predictions: {m['n_failed']} ({_f(m['failed_frac'], '.2%')}); "
         f"invalid truth: {m['n_truth_invalid']}; evaluated: {m['n_evaluated']}", ""]
    if m["targets"]:
        L += ["## Targets", "", "| param | metric | target | " + " | ".join(scopes) + " |",
              "|---|---|---|" + "---:|" * len(scopes)]
        for t in m["targets"]:
            cells = []
            for s in scopes:
                v = t[s]
                mark = {True: "✓", False: "✗", None: ""}[v["pass"]]
                cells.append(f"{_f(v['value'])} {mark}".strip())
            L.append(f"| {t['param']} | {t['metric']} | {t['target']} | " + " | ".join(cells)
                     + " |")
        L.append("")
    L += ["## Overall", "", *_param_table(m["overall"]), ""]
    for name in subsets:
        n = max((v["N"] for v in m[name].values()), default=0)
        L += [f"## Subset {name}", "", *(_param_table(m[name]) if n else ["_No rows._"]), ""]
    L += ["## By true S/N", "", "Cells: R² (log for re, n) / NMAD / outlier fraction.", "",
          *_binned_table(m["by_snr"]), "",
          "## By true n", "", "Cells: R² (log for re, n) / NMAD / outlier fraction.", "",
          *_binned_table(m["by_n"]), ""]
    L += ["## Definitions", ""] + [f"- `{k}`: {v}" for k, v in m["definitions"].items()] + [""]
    pngs = [f for f in m["files"] if f.endswith(".png")]
    if pngs:
        L += ["## Figures", ""]
        for f in pngs:
            title = FIGURE_TITLES.get(f, f)
            L += [f"### {title}", "", f"![{title}]({f})", ""]
    return "\n".join(L)
