"""The training report: one self-contained HTML file (plots embedded as PNG) written beside the model.

It shows, per task, the loss and the learned task weight c_τ of every epoch (one plot a task), then
the run's parameters, device, time, peak memory and the PCA explained variance of the HS basis.
Plots are drawn with matplotlib's Agg canvas (no pyplot, no Qt), so this works headless and never
changes the global matplotlib backend of the QGIS session that calls it.
No QGIS import here.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import time

from ..mdd.geotiff import write_text_atomic


class ReportError(ValueError):
    """The report cannot be written as asked; the message says what is wrong and how to fix it."""


def write_training_report(path: str, history: list, info: dict) -> str:
    """Writes the HTML report to ``path`` atomically and returns ``path``.

    ``history``: per-epoch dicts ``{"epoch": int, "loss": {task: float}, "c": {task: float},
    "time_s": float}``. ``info``: ``{"parameters": dict, "device": str, "time_s": float,
    "peak_memory_mb": float, "pca_explained_variance": [float, ...], "tasks": [names]}``.
    """
    if not isinstance(history, (list, tuple)):
        raise ReportError("The training history must be a list of per-epoch dicts.")
    tasks = list(info.get("tasks") or _tasks_from_history(history))
    body = [
        _summary_section(info, history),
        _self_check_section(info.get("self_check")) + _early_stop_section(info.get("early_stop")),
        _task_section(history, tasks),
        _pca_section(info.get("pca_explained_variance") or []),
        _parameters_section(info.get("parameters") or {}),
        _epochs_section(history, tasks),
    ]
    document = _PAGE.format(
        title="STS Fusion training report",
        created=html.escape(time.strftime("%Y-%m-%d %H:%M:%S")),
        body="\n".join(body),
    )
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ReportError(f"The report folder {folder} does not exist: choose a report path in an existing folder.")
    write_text_atomic(path, document)
    return path


def _tasks_from_history(history) -> list:
    names = []
    for epoch in history:
        for task in list(epoch.get("loss", {})) + list(epoch.get("c", {})):
            if task not in names:
                names.append(task)
    return names


def _num(value, digits=4) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return html.escape(str(value))
    if not math.isfinite(v):
        return str(v)
    return f"{v:.{digits}g}"


def _summary_section(info, history) -> str:
    rows = [
        ("Device", html.escape(str(info.get("device", "unknown")))),
        ("Epochs", str(len(history))),
        ("Training time", f"{_num(info.get('time_s', float('nan')))} s"),
        ("Peak memory", f"{_num(info.get('peak_memory_mb', float('nan')))} MB"),
    ]
    if history:
        last = history[-1]
        rows.append(
            ("Final loss", ", ".join(f"{html.escape(str(t))} {_num(v)}" for t, v in last.get("loss", {}).items()))
        )
        rows.append(
            ("Final c<sub>τ</sub>", ", ".join(f"{html.escape(str(t))} {_num(v)}" for t, v in last.get("c", {}).items()))
        )
    table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<section id="summary"><h2>Run</h2><table class="kv">{table}</table></section>'


def _task_section(history, tasks) -> str:
    if not history:
        return (
            '<section id="tasks"><h2>Loss and task weight per epoch</h2>'
            "<p>No epoch completed: there is nothing to plot.</p></section>"
        )
    parts = [
        '<section id="tasks"><h2>Loss and task weight per epoch</h2>',
        "<p>Loss L<sub>τ</sub> (left axis) and the learned weight c<sub>τ</sub> of the joint "
        "loss Σ L<sub>τ</sub>/(2c<sub>τ</sub>²) + ln(1 + c<sub>τ</sub>²) (right axis).</p>",
    ]
    for task in tasks:
        png = _task_plot_png(history, task)
        label = html.escape(str(task))
        parts.append(
            f'<figure><img class="task-plot" data-task="{label}" alt="loss and c for task '
            f'{label}" src="data:image/png;base64,{png}"><figcaption>Task {label}'
            "</figcaption></figure>"
        )
    parts.append("</section>")
    return "\n".join(parts)


def _series(history, key, task):
    epochs, values = [], []
    for e in history:
        v = e.get(key, {}).get(task)
        if v is not None:
            epochs.append(e.get("epoch", len(epochs) + 1))
            values.append(float(v))
    return epochs, values


def _task_plot_png(history, task) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    epochs, loss = _series(history, "loss", task)
    ax.plot(epochs, loss, color="tab:blue", marker="o" if len(epochs) < 30 else None, ms=3, label="loss")
    finite = [v for v in loss if math.isfinite(v)]
    if finite and min(finite) > 0:  # losses span decades while training converges
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"loss {task}", color="tab:blue")
    ax.grid(True, alpha=0.3)
    ax2 = ax.twinx()
    c_epochs, c = _series(history, "c", task)
    ax2.plot(c_epochs, c, color="tab:orange", marker="s" if len(c_epochs) < 30 else None, ms=3, label="c")
    ax2.set_ylabel(r"task weight $c_\tau$", color="tab:orange")
    ax.set_title(f"task {task}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _self_check_section(result) -> str:
    """The self-check: network and two-stage baseline against an HS image withheld from training."""
    if not result:
        return "<h2>Self-check</h2><p>Not run (SELF_CHECK off).</p>"
    if "skipped" in result:
        return f"<h2>Self-check</h2><p>Skipped: {html.escape(str(result['skipped']))}</p>"
    metrics = ("CC", "SAM", "PSNR", "SSIM")
    rows = "".join(
        f"<tr><td>{label}</td>" + "".join(f"<td>{_num(result[key][m])}</td>" for m in metrics) + "</tr>"
        for key, label in (("network", "Network"), ("two_stage", "Two-stage baseline"))
    )
    worse = result.get("worse_than_baseline") or []
    verdict = (
        f"<p class='warn'>The network is worse than the baseline on {html.escape(', '.join(worse))}.</p>"
        if worse
        else "<p>The network is at least as good as the baseline on every metric.</p>"
    )
    return (
        "<h2>Self-check</h2>"
        f"<p>{html.escape(str(result['withheld']))}, compared at the HS pixel size (x{result['factor']}); "
        "SAM in degrees, PSNR in dB. No truth is needed: the withheld HS is the reference.</p>"
        f"<table><tr><th></th>{''.join(f'<th>{m}</th>' for m in metrics)}</tr>{rows}</table>{verdict}"
    )


def _early_stop_section(early) -> str:
    """The early stop's probes: the network's CC on a block of the withheld HS between epochs."""
    if not early or not early.get("probes"):
        return ""
    probes = ", ".join(f"epoch {p['epoch']}: {_num(p['CC'])}" for p in early["probes"])
    if "stopped_after" in early:
        verdict = (
            f"Stopped early after epoch {early['stopped_after']}: training went on from epoch "
            f"{early['kept']}'s network, the best probe."
        )
    else:
        verdict = "No early stop: the network went on as trained."
    return f"<p>Early stop, CC on a block of the withheld HS: {html.escape(probes)}. {html.escape(verdict)}</p>"


def _pca_section(variance) -> str:
    if not variance:
        return '<section id="pca"><h2>PCA of the HS bands</h2><p>Not reported.</p></section>'
    v = [float(x) for x in variance]
    # Ratios (sum <= 1) are shown as percentages; absolute variances as they are.
    ratio = sum(v) <= 1.0 + 1e-6
    rows, cumulative = [], 0.0
    for i, x in enumerate(v):
        cumulative += x
        if ratio:
            rows.append(f"<tr><td>{i + 1}</td><td>{100 * x:.3f} %</td><td>{100 * cumulative:.3f} %</td></tr>")
        else:
            rows.append(f"<tr><td>{i + 1}</td><td>{_num(x)}</td><td>{_num(cumulative)}</td></tr>")
    head = "explained variance" + (" (share)" if ratio else "")
    return (
        f'<section id="pca"><h2>PCA of the HS bands</h2><p>{len(v)} components'
        + (f", {100 * cumulative:.3f} % of the variance of the valid HS pixels" if ratio else "")
        + f'.</p><table class="grid"><tr><th>component</th><th>{head}</th><th>cumulative</th></tr>'
        + "".join(rows)
        + "</table></section>"
    )


def _parameters_section(parameters) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in parameters.items()
    )
    return f'<section id="parameters"><h2>Parameters</h2><table class="kv">{rows}</table></section>'


def _epochs_section(history, tasks) -> str:
    if not history:
        return ""
    head = "".join(f"<th>loss {html.escape(str(t))}</th>" for t in tasks)
    head += "".join(f"<th>c {html.escape(str(t))}</th>" for t in tasks)
    rows = []
    for e in history:
        cells = "".join(f"<td>{_num(e.get('loss', {}).get(t, float('nan')))}</td>" for t in tasks)
        cells += "".join(f"<td>{_num(e.get('c', {}).get(t, float('nan')))}</td>" for t in tasks)
        rows.append(f"<tr><td>{e.get('epoch', '')}</td><td>{_num(e.get('time_s', float('nan')))}</td>{cells}</tr>")
    return (
        '<section id="epochs"><details><summary>Every epoch</summary><table class="grid">'
        f"<tr><th>epoch</th><th>time (s)</th>{head}</tr>{''.join(rows)}</table></details></section>"
    )


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; max-width: 60em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0; }}
th, td {{ border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; font-size: 0.9em; }}
table.kv th {{ background: #f4f4f4; }}
figure {{ margin: 0.5em 0; }}
figcaption {{ font-size: 0.85em; color: #555; }}
img {{ max-width: 100%; }}
</style></head>
<body><h1>{title}</h1><p>Written {created}.</p>
{body}
</body></html>
"""
