"""How a bench report reads: the markdown table (``bench.md``) and the plots (``bench.png``)."""

from __future__ import annotations

from pathlib import Path

from edgetvm.pipeline.bench import BenchReport, BenchRow


def accuracy_text(row: BenchRow, baseline_label: str) -> str:
    """The accuracy column: top-1 agreement where the outputs are class scores, cosine and max abs error."""
    if row.error is not None:
        return f"failed: {row.error}"
    if row.label == baseline_label:
        return "reference"
    accuracy = row.accuracy or {}
    parts = []
    if accuracy.get("top1_agreement") is not None:
        parts.append(f"top-1 {accuracy['top1_agreement']:.0%}")
    parts.append(f"cosine {accuracy['min_cosine']:.6f}")
    parts.append(f"max abs err {accuracy['max_abs_error']:.2g}")
    return ", ".join(parts)


def threads_text(count: int) -> str:
    return f"{count} thread" if count == 1 else f"{count} threads"


def _number(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def table_rows(report: BenchReport) -> list[str]:
    """The markdown table of the variants, header included."""
    baseline = report.baseline_label
    lines = [
        f"| runtime | variant | median ms | p90 ms | ratio to {baseline} | GFLOP/s (% of sgemm) | "
        f"accuracy vs {baseline} |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in report.results:
        latency = row.latency_ms or {}
        gflops = "—"
        if row.gflops is not None:
            gflops = f"{row.gflops:.1f} ({_number(row.roofline_fraction, '.0%')})"
        cells = [
            row.runtime,
            row.variant,
            _number(latency.get("median"), ".2f"),
            _number(latency.get("p90"), ".2f"),
            _number(row.ratio_to_baseline, ".2f"),
            gflops,
            accuracy_text(row, baseline).replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown_report(report: BenchReport) -> str:
    """``bench.md``: what was measured where, the table, and how to read it."""
    host, model, roof, timing = report.host, report.model, report.roofline, report.timing
    shapes = ", ".join(f"{s['name']} {'x'.join(map(str, s['shape']))} {s['dtype']}" for s in model["inputs"])
    lines = [
        f"# edgetvm bench: {Path(model['path']).name}",
        "",
        f"- host: {host['cpu']} ({host['machine']}, {host['cores']} cores), {threads_text(host['threads'])} for every "
        f"runtime (TVM pool: {host['tvm_threads']}), not emulated; {host['date']}",
        f"- model: {model['format']}, inputs {shapes}; {model['flops'] / 1e6:.1f} MFLOP (conv/matmul, 2 x MACs)",
        f"- timing: {timing['rounds']} rounds after {timing['warmup_rounds']} warm-up rounds, every variant once per "
        f"round in rotated order, each timed run after {timing.get('settle_ms', 0):g} ms of untimed runs of the "
        f"same variant; inputs {timing['inputs']}",
        f"- roofline: numpy sgemm {roof['size']}x{roof['size']} float32 on {threads_text(roof['threads'])} = "
        f"{roof['gflops']:.1f} GFLOP/s ({roof['blas']})",
        "",
        *table_rows(report),
        "",
        f"ratio = median / median of {report.baseline_label} (below 1 is faster). "
        "GFLOP/s = model FLOPs / median latency.",
        "",
    ]
    return "\n".join(lines)


def plot_report(report: BenchReport, path: Path) -> None:
    """``bench.png``: latency box plot per variant, and accuracy (min cosine) against median latency."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    measured = [row for row in report.results if row.latency_ms is not None]
    figure = Figure(figsize=(12, 5.5), layout="constrained")
    FigureCanvasAgg(figure)
    boxes, scatter = figure.subplots(1, 2)
    labels = [row.label for row in measured]
    if measured:
        boxes.boxplot([row.samples_ms for row in measured], showfliers=True)
        boxes.set_xticks(range(1, len(labels) + 1), labels, rotation=25, ha="right")
    boxes.set_ylabel("latency (ms)")
    boxes.set_title(f"latency, {report.timing['rounds']} interleaved rounds, {threads_text(report.host['threads'])}")
    for row in measured:
        scatter.scatter([row.latency_ms["median"]], [row.accuracy["min_cosine"]], label=row.label)
    scatter.set_xlabel("median latency (ms)")
    scatter.set_ylabel(f"min cosine vs {report.baseline_label}")
    scatter.set_title("accuracy vs latency")
    scatter.grid(True, alpha=0.3)
    if measured:
        scatter.legend(fontsize=8)  # a legend, not labels by the points: close points would overlap
    figure.suptitle(f"{Path(report.model['path']).name} on {report.host['cpu']}")
    figure.savefig(path, dpi=100)
