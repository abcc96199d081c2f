"""The outputs of a profile: the text report, CSV/JSON/PNG files, and an MLflow run."""

from __future__ import annotations

import csv
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

from .analysis import AGREEMENT
from .sweep import ProfileReport

__all__ = ["format_report", "write_outputs", "log_to_mlflow"]


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def format_report(report: ProfileReport) -> str:
    """The terminal tables: time and memory by sequence length, fitted exponents, the layer comparison."""
    s = report.settings
    lens = sorted({r["seq_len"] for r in report.rows})
    lines = [f"nas profile: {s['mode']} on {report.device}, torch {report.torch}; batch {s['batch']}, heads "
             f"{s['heads']}, head_dim {s['head_dim']} (d_model {s['heads'] * s['head_dim']}); warm-up {s['warmup']}, "
             f"median of {s['repeats']}; memory = peak bytes above parameters and input"]
    by_type: dict[str, dict[int, dict[str, Any]]] = {}
    for r in report.rows:
        by_type.setdefault(r["attention"], {})[r["seq_len"]] = r
    for title, key, spec in (("time (ms)", "time_ms", ".2f"), ("peak MiB", "peak_mb", ".2f")):
        lines.append("")
        lines.append(f"{title:<16}{'dir':<6}" + "".join(f"{T:>10}" for T in lens))
        for name, points in by_type.items():
            direction = next(iter(points.values()))["direction"][:6]
            cells = [(_fmt(points[T].get(key), spec) if points.get(T, {}).get("status") == "ok" else
                      points.get(T, {}).get("status", "-")) for T in lens]
            lines.append(f"{name:<16}{direction:<6}" + "".join(f"{c:>10}" for c in cells))
    lines.append("")
    lines.append("scaling exponent p of T^p, least squares on log-log over the fit range (R^2). Analytical: FLOPs p =\n"
                 f"the counted FLOPs' exponent over the same lengths, class = the asymptotic one; ok/OFF: time within "
                 f"{AGREEMENT} of FLOPs p (of the class without a count), memory within {AGREEMENT} of its class")
    lines.append(f"{'attention':<16}{'kernel':<22}{'fit T':<11}{'time p':>7}{'R^2':>7}{'FLOPs p':>8}{'class':>6}  "
                 f"{'memory p':>8}{'R^2':>7}{'class':>6}")
    for f in report.fits:
        rng = f"{f['fit_range'][0]}-{f['fit_range'][1]}" if f["fit_range"] else "-"

        def mark(metric: str) -> str:
            agrees = f[f"{metric}_agrees"]
            return "" if agrees is None else (" ok" if agrees else " OFF")

        lines.append(f"{f['attention']:<16}{(f['kernel'] or '-'):<22}{rng:<11}{_fmt(f['time_exponent'], '.2f'):>7}"
                     f"{_fmt(f['time_r2'], '.3f'):>7}{_fmt(f['flops_exponent'], '.2f'):>8}"
                     f"{_fmt(f['expected_time'], 'd'):>6}{mark('time'):<4}"
                     f"{_fmt(f['memory_exponent'], '.2f'):>8}{_fmt(f['memory_r2'], '.3f'):>7}"
                     f"{_fmt(f['expected_memory'], 'd'):>6}{mark('memory')}")
    lines += [f"  {f['attention']}: time: {f['expected_time_why']}; memory: {f['expected_memory_why']}"
              for f in report.fits]
    if report.layer:
        lines.append("")
        lines.append("one layer's training activations (fp32, no dropout) vs Korthikanti et al. 2022, adapted: "
                     "s*b*h*(64 + 4*a*s/h) bytes")
        lines.append(f"{'variant':<14}{'kernel':<16}{'T':>6}{'stored MiB':>12}{'formula':>10}{'ratio':>7}"
                     f"{'attn term':>11}{'step peak':>11}{'16-bit paper':>14}")
        for r in report.layer:
            lines.append(f"{r['variant']:<14}{(r['kernel'] or '-'):<16}{r['seq_len']:>6}{r['stored_mb']:>12.2f}"
                         f"{r['formula_fp32_mb']:>10.2f}{r['ratio']:>7.2f}{r['formula_attention_matrix_mb']:>11.2f}"
                         f"{r['step_peak_mb']:>11.2f}{r['korthikanti_16bit_mb']:>14.2f}")
        lines.append("stored = bytes allocated by the forward and still held for backward; attn term = 4*a*s^2*b "
                     "(paper: 5*a*s^2*b in 16-bit with dropout); checkpointed formula = 4*s*b*h (layer input only)")
    if report.notes:
        lines.append("")
        lines += [f"note: {n}" for n in report.notes]
    if report.files:
        lines.append("")
        lines.append("wrote " + ", ".join(report.files.values()))
    lines.append(f"({report.seconds:.0f} s)")
    return "\n".join(lines)


def write_outputs(report: ProfileReport, out: Path) -> dict[str, str]:
    """``profile.csv``, ``activation_memory.csv``, ``profile.json``, ``time.png``, ``memory.png`` and
    ``activation_memory.png`` into ``out``; returns ``{kind: path}`` (also stored in ``report.files``)."""
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    columns = ["attention", "kernel", "direction", "mode", "batch", "heads", "head_dim", "seq_len", "time_ms",
               "time_p90_ms", "peak_mb", "flops", "repeats", "status", "reason"]
    path = out / "profile.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(report.rows)
    files["csv"] = str(path)
    if report.layer:
        path = out / "activation_memory.csv"
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(report.layer[0]))
            writer.writeheader()
            writer.writerows(report.layer)
        files["layer_csv"] = str(path)
    files.update(_plots(report, out))
    path = out / "profile.json"
    report.files = {**files, "json": str(path)}
    path.write_text(json.dumps(report.to_dict(), indent=2, default=str), encoding="utf-8")
    return report.files


def _plots(report: ProfileReport, out: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files: dict[str, str] = {}
    fits = {f["attention"]: f for f in report.fits}
    for key, label, fname in (("time_ms", "time (ms)", "time.png"), ("peak_mb", "peak memory (MiB)", "memory.png")):
        fig, ax = plt.subplots(figsize=(7, 5))
        lens: list[int] = []
        for name in fits:
            pts = [r for r in report.rows if r["attention"] == name and r["status"] == "ok"]
            if not pts:
                continue
            lens += [r["seq_len"] for r in pts]
            metric = "time" if key == "time_ms" else "memory"
            p = fits[name][f"{metric}_exponent"]
            ax.loglog([r["seq_len"] for r in pts], [r[key] for r in pts], marker="o",
                      label=f"{name} (p={_fmt(p, '.2f')})")
        if lens:  # reference slopes through the first point of the sweep
            lo, hi = min(lens), max(lens)
            ys = [r[key] for r in report.rows if r["status"] == "ok" and r["seq_len"] == lo]
            y0 = statistics.median(ys) if ys else 1.0
            for power, style in ((1, ":"), (2, "--")):
                ax.loglog([lo, hi], [y0, y0 * (hi / lo) ** power], color="grey", linestyle=style, linewidth=1,
                          label=f"T^{power}")
        ax.set_xlabel("sequence length T")
        ax.set_ylabel(label)
        s = report.settings
        ax.set_title(f"{s['mode']}, {report.device}\nbatch {s['batch']}, heads {s['heads']}, head_dim {s['head_dim']}",
                     fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
        files[fname.split(".")[0] + "_png"] = str(out / fname)
    if report.layer:
        fig, ax = plt.subplots(figsize=(7, 5))
        for variant in dict.fromkeys(r["variant"] for r in report.layer):
            pts = [r for r in report.layer if r["variant"] == variant]
            line, = ax.loglog([r["seq_len"] for r in pts], [r["stored_mb"] for r in pts], marker="o",
                              label=f"{variant} measured")
            ax.loglog([r["seq_len"] for r in pts], [r["formula_fp32_mb"] for r in pts], linestyle="--",
                      color=line.get_color(), label=f"{variant} formula")
        ax.set_xlabel("sequence length s")
        ax.set_ylabel("stored activations (MiB)")
        ax.set_title("one layer, fp32: measured vs s*b*h*(64 + 4as/h) (Korthikanti et al. 2022, adapted)", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "activation_memory.png", dpi=110)
        plt.close(fig)
        files["layer_png"] = str(out / "activation_memory.png")
    return files


def log_to_mlflow(report: ProfileReport, out: Path, root: Path, experiment: str = "nas-profile") -> str:
    """Log the profile as one MLflow run under ``root``'s tracking store; returns the run id.

    params: the settings; metrics: ``<type>.time_exponent`` / ``.memory_exponent`` (and R^2), and
    ``<type>.time_ms`` / ``.peak_mb`` stepped by sequence length; tags: device, kernels; artifacts: ``out``.
    """
    from mlflow.entities import Metric, Param, RunTag

    from ..tracking import open_experiment

    client, experiment_id = open_experiment(root, experiment)
    s = report.settings
    run = client.create_run(experiment_id, run_name=f"profile-{s['mode']}",
                            tags={"nas.kind": "profile", "device": report.device, "torch": report.torch})
    rid = run.info.run_id
    now = int(time.time() * 1000)
    params = [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in s.items()]
    metrics: list[Metric] = []
    for f in report.fits:
        for key in ("time_exponent", "time_r2", "memory_exponent", "memory_r2"):
            if f[key] is not None and math.isfinite(f[key]):
                metrics.append(Metric(f"{f['attention']}.{key}", float(f[key]), now, 0))
    for r in report.rows:
        if r["status"] == "ok":
            metrics.append(Metric(f"{r['attention']}.time_ms", float(r["time_ms"]), now, int(r["seq_len"])))
            metrics.append(Metric(f"{r['attention']}.peak_mb", float(r["peak_mb"]), now, int(r["seq_len"])))
    for r in report.layer:
        metrics.append(Metric(f"layer.{r['variant']}.stored_mb", float(r["stored_mb"]), now, int(r["seq_len"])))
        metrics.append(Metric(f"layer.{r['variant']}.ratio", float(r["ratio"]), now, int(r["seq_len"])))
    kernels_used = {f["attention"]: f["kernel"] for f in report.fits if f["kernel"]}
    tags = [RunTag("kernels", json.dumps(kernels_used)[:4000])]
    client.log_batch(rid, params=params[:90], tags=tags)
    for i in range(0, len(metrics), 900):
        client.log_batch(rid, metrics=metrics[i: i + 900])
    client.log_artifacts(rid, str(out))
    client.set_terminated(rid, "FINISHED")
    return rid

