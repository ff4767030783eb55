"""How a bench report reads: the markdown table (``bench.md``) and the plots (``bench.png``)."""

from __future__ import annotations

from pathlib import Path

from edgetvm.pipeline.bench import BenchReport, BenchRow


def accuracy_text(row: BenchRow, baseline_label: str) -> str:
    """The accuracy column: top-1 agreement where the outputs are class scores, cosine and max abs error."""
    if row.error is not None:
        return f"failed: {row.error}"
    accuracy = row.accuracy or {}
    if accuracy.get("reference") == row.label:
        return "reference"
    parts = []
    if accuracy.get("top1_agreement") is not None:
        parts.append(f"top-1 {accuracy['top1_agreement']:.0%}")
    parts.append(f"cosine {accuracy['min_cosine']:.6f}")
    parts.append(f"max abs err {accuracy['max_abs_error']:.2g}")
    return ", ".join(parts)


def eval_text(row: BenchRow) -> str:
    """The eval-set column: top-1 accuracy against the labels and agreement with the float reference."""
    scored = row.eval
    if scored is None:
        return "—"
    parts = [] if scored.get("top1_accuracy") is None else [f"top-1 {scored['top1_accuracy']:.1%}"]
    if scored["reference"] != row.label:
        parts.append(f"agrees {scored['top1_agreement']:.1%}")
    return ", ".join(parts) or "reference"


def eval_caption(report: BenchReport) -> str | None:
    """What the eval-set column counts, or None when the bench had no eval set."""
    scored = next((row.eval for row in report.results if row.eval), None)
    if scored is None:
        return None
    labelled = "accuracy against its labels and " if scored.get("top1_accuracy") is not None else ""
    return (
        f"eval set: {scored['samples']} samples of {Path(scored['path']).name}; top-1 {labelled}agreement with "
        f"{scored['reference']}'s answers."
    )


def reference_label(report: BenchReport) -> str:
    """What accuracy was measured against: the baseline row on the host, the host's float run on a board."""
    for row in report.results:
        if row.accuracy:
            return row.accuracy["reference"]
    return report.baseline_label


def runner_facts(report: BenchReport) -> dict:
    """The machine that ran and timed the variants: the board for a board bench, else the host."""
    return report.board or report.host


def emulated_caption(report: BenchReport) -> str | None:
    """The warning every table of an emulated board's numbers carries, or None for real hardware."""
    board = report.board
    if not board or not board.get("emulated"):
        return None
    return (
        f"**Emulated board** ({board['cpu']}): every variant below ran under qemu-user on the host; the timings "
        "say nothing about a real board's speed."
    )


def threads_text(count: int) -> str:
    return f"{count} thread" if count == 1 else f"{count} threads"


def _number(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def _milliseconds(value: float | None) -> str:
    """Two decimals, three below 0.1 ms: a small model's 0.037 ms is not rounded to 0.04."""
    return _number(value, ".3f" if value is not None and value < 0.1 else ".2f")


def table_rows(report: BenchReport) -> list[str]:
    """The markdown table of the variants, header included."""
    baseline = report.baseline_label
    caption = emulated_caption(report)
    lines = [caption, ""] if caption else []
    scored = eval_caption(report) is not None
    lines += [
        f"| runtime | variant | median ms | p90 ms | ratio to {baseline} | GFLOP/s (% of sgemm) | "
        f"accuracy vs {reference_label(report)} |" + (" eval set |" if scored else ""),
        "| --- | --- | ---: | ---: | ---: | ---: | --- |" + (" --- |" if scored else ""),
    ]
    for row in report.results:
        latency = row.latency_ms or {}
        gflops = "—"
        if row.gflops is not None:
            gflops = f"{row.gflops:.1f} ({_number(row.roofline_fraction, '.0%')})"
        cells = [
            row.runtime,
            row.variant,
            _milliseconds(latency.get("median")),
            _milliseconds(latency.get("p90")),
            _number(row.ratio_to_baseline, ".2f"),
            gflops,
            accuracy_text(row, baseline).replace("|", "/"),
        ]
        if scored:
            cells.append(eval_text(row))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown_report(report: BenchReport) -> str:
    """``bench.md``: what was measured where, the table, and how to read it."""
    model, timing = report.model, report.timing
    shapes = ", ".join(f"{s['name']} {'x'.join(map(str, s['shape']))} {s['dtype']}" for s in model["inputs"])
    lines = [
        f"# edgetvm bench: {Path(model['path']).name}",
        "",
        *_where_lines(report),
        f"- model: {model['format']}, inputs {shapes}; {model['flops'] / 1e6:.1f} MFLOP (conv/matmul, 2 x MACs)",
        f"- timing: {timing['rounds']} rounds after {timing['warmup_rounds']} warm-up rounds, every variant once per "
        f"round in rotated order, each timed run after {timing.get('settle_ms', 0):g} ms of untimed runs of the "
        f"same variant; inputs {timing['inputs']}",
        *_roofline_lines(report.roofline),
        "",
        *table_rows(report),
        "",
        f"ratio = median / median of {report.baseline_label} (below 1 is faster). "
        "GFLOP/s = model FLOPs / median latency.",
        *filter(None, [eval_caption(report)]),
        "",
    ]
    return "\n".join(lines)


def _where_lines(report: BenchReport) -> list[str]:
    host = report.host
    if report.board is None:
        return [
            f"- host: {host['cpu']} ({host['machine']}, {host['cores']} cores), {threads_text(host['threads'])} for "
            f"every runtime (TVM pool: {host['tvm_threads']}), not emulated; {host['date']}"
        ]
    board = report.board
    versions = ", ".join(f"{name} {version}" for name, version in board["versions"].items() if version)
    emulated = "EMULATED (qemu-user on the host: not hardware timings)" if board["emulated"] else "real hardware"
    return [
        f"- board: {board['name']}, {board['cpu']} ({board['machine']}, {board['cores']} cores, {board['os']}), "
        f"{emulated}; {threads_text(board['threads'])} for every runtime; {board['date']}",
        f"- on the board: {versions}",
        f"- host (built the variants, ran the float reference): {host['cpu']} ({host['machine']})",
    ]


def _roofline_lines(roof: dict) -> list[str]:
    if "gflops" not in roof:
        return [f"- roofline: {roof.get('note', 'not measured')}"]
    return [
        f"- roofline: numpy sgemm {roof['size']}x{roof['size']} float32 on {threads_text(roof['threads'])} = "
        f"{roof['gflops']:.1f} GFLOP/s ({roof['blas']})"
    ]


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
    runner = runner_facts(report)
    boxes.set_title(f"latency, {report.timing['rounds']} interleaved rounds, {threads_text(runner['threads'])}")
    for row in measured:
        scatter.scatter([row.latency_ms["median"]], [row.accuracy["min_cosine"]], label=row.label)
    scatter.set_xlabel("median latency (ms)")
    scatter.set_ylabel(f"min cosine vs {report.baseline_label}")
    scatter.set_title("accuracy vs latency")
    scatter.grid(True, alpha=0.3)
    if measured:
        scatter.legend(fontsize=8)  # a legend, not labels by the points: close points would overlap
    where = runner["cpu"] + (" (EMULATED board: not hardware timings)" if runner.get("emulated") else "")
    figure.suptitle(f"{Path(report.model['path']).name} on {where}")
    figure.savefig(path, dpi=100)
