"""The benchmark's output: the results table, the per-op summary with the targets, the CSV and the chart."""

from __future__ import annotations

import csv
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["TARGETS", "Row", "Target", "check_targets", "plot", "print_summary", "print_table", "write_csv"]


@dataclass
class Row:
    """tnc against one reference, for one op on one layer (times in ms, memory in MiB; ratios are tnc / reference).
    Memory: the peak allocated during one call (output included); "tmp": the peak of its temporaries alone."""

    layer: str
    op: str
    reference: str
    tnc_ms: float
    reference_ms: float
    ratio: float
    tnc_mib: float
    reference_mib: float
    memory_ratio: float
    tnc_tmp_mib: float
    reference_tmp_mib: float
    tmp_ratio: float
    agrees: bool
    error: float  # max |tnc - reference| / max |reference| (for sampled ops: against the seeded dense estimate)


@dataclass(frozen=True)
class Target:
    """The median (and optionally the worst) ratio of `ops` against `reference` over the suite must stay below."""

    ops: tuple[str, ...]
    reference: str
    median: float
    worst: float | None = None
    memory: bool = False

    def label(self) -> str:
        what = "temporary memory" if self.memory else "time"
        worst = f", none > {self.worst}" if self.worst else ""
        return f"{what} vs {self.reference}: median <= {self.median}{worst}"


_EXACT_OPS = ("forward", "input_vjp", "weight_vjp")
_EINCONV_OPS = (*_EXACT_OPS, "unfold", "kfc", "kfac_reduce")
TARGETS: tuple[Target, ...] = (
    Target(_EXACT_OPS, "native", 1.05, 1.3),
    Target(("unfold", "kfc"), "unfold", 0.9),
    Target(("kfac_reduce",), "unfold", 0.2),
    Target(("kfac_reduce",), "unfold", 0.1, memory=True),
    Target(_EINCONV_OPS, "einconv", 0.8),
    Target(("sampled_o1_p0.5", "sampled_n_p0.5"), "exact", 0.6),
    Target(("sampled_o1_p0.25", "sampled_n_p0.25"), "exact", 0.35),
)


def _ratios(rows: Iterable[Row], op: str, reference: str, memory: bool = False) -> list[float]:
    return [r.tmp_ratio if memory else r.ratio for r in rows if r.op == op and r.reference == reference]


def check_targets(rows: Sequence[Row]) -> list[tuple[str, str, float, float, bool]]:
    """(op, target label, median, worst, met) for every op a target covers and that was run."""
    results = []
    for target in TARGETS:
        for op in target.ops:
            values = [v for v in _ratios(rows, op, target.reference, target.memory) if v == v]  # drop NaN
            if not values:
                continue
            median, worst = statistics.median(values), max(values)
            met = median <= target.median and (target.worst is None or worst <= target.worst)
            results.append((op, target.label(), median, worst, met))
    return results


def print_table(rows: Sequence[Row]) -> None:
    header = (
        f"{'layer':22} {'op':17} {'reference':9} {'tnc ms':>9} {'ref ms':>9} {'ratio':>7}"
        f" {'mem ratio':>9} {'tmp ratio':>9}  check"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        check = "ok" if r.agrees else f"MISMATCH {r.error:.1e}"
        print(
            f"{r.layer:22} {r.op:17} {r.reference:9} {r.tnc_ms:9.3f} {r.reference_ms:9.3f} {r.ratio:7.3f}"
            f" {r.memory_ratio:9.3f} {r.tmp_ratio:9.3f}  {check}"
        )


def print_summary(rows: Sequence[Row], compile_times: dict[str, float]) -> bool:
    """Per-op medians and the targets; True when every target is met."""
    print("\nPer-op medians over the suite (ratio = tnc / reference; worst = the largest ratio):")
    print(f"{'op':17} {'reference':9} {'median':>7} {'worst':>7} {'tmp mem median':>14} {'layers':>6}")
    for op in dict.fromkeys(r.op for r in rows):
        for reference in dict.fromkeys(r.reference for r in rows if r.op == op):
            times, memory = _ratios(rows, op, reference), _ratios(rows, op, reference, memory=True)
            print(
                f"{op:17} {reference:9} {statistics.median(times):7.3f} {max(times):7.3f}"
                f" {statistics.median(memory):14.3f} {len(times):6}"
            )
    print("\nTargets:")
    results = check_targets(rows)
    for op, label, median, worst, met in results:
        print(f"  [{'met' if met else 'MISSED'}] {op:17} {label:45} median {median:.3f}, worst {worst:.3f}")
    met_all = all(result[-1] for result in results)
    for what, seconds in compile_times.items():
        if what.startswith("tnc compile"):
            met_all = met_all and seconds < 1.0
            print(f"  [{'met' if seconds < 1.0 else 'MISSED'}] {what:63} {seconds:.3f} s (target < 1 s)")
        else:
            print(f"      {what:65} {seconds:.3f} s")
    return met_all


def write_csv(rows: Sequence[Row], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=[f.name for f in fields(Row)])
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))


def _target_lines(op: str, reference: str) -> list[tuple[float, str]]:
    """(ratio, line style): dashed for the median targets, dotted for the per-layer ones."""
    targets = [t for t in TARGETS if op in t.ops and t.reference == reference and not t.memory]
    return [(t.median, "--") for t in targets] + [(t.worst, ":") for t in targets if t.worst]


def plot(rows: Sequence[Row], path: Path, title: str) -> None:
    """One panel per op: bars of the ratio per layer, one colour per reference, log scale, target lines (dashed: the
    median target, dotted: the per-layer limit), a black line at 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = list(dict.fromkeys(r.op for r in rows))
    layers = list(dict.fromkeys(r.layer for r in rows))
    columns = 2
    figure, axes = plt.subplots(
        (len(ops) + 1) // columns, columns, figsize=(14, 3.2 * ((len(ops) + 1) // columns)), squeeze=False
    )
    for ax, op in zip(axes.flat, ops):
        _panel(ax, [r for r in rows if r.op == op], layers, op)
    for ax in list(axes.flat)[len(ops) :]:
        ax.set_visible(False)
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _panel(ax: Axes, rows: Sequence[Row], layers: Sequence[str], op: str) -> None:
    references = list(dict.fromkeys(r.reference for r in rows))
    width = 0.8 / max(len(references), 1)
    colours = {"native": "tab:blue", "einconv": "tab:orange", "unfold": "tab:green", "exact": "tab:purple"}
    for slot, reference in enumerate(references):
        values = {r.layer: r.ratio for r in rows if r.reference == reference}
        xs = [i + (slot - (len(references) - 1) / 2) * width for i, layer in enumerate(layers) if layer in values]
        heights = [values[layer] for layer in layers if layer in values]
        ax.bar(xs, heights, width, label=f"vs {reference}", color=colours.get(reference))
        for line, style in _target_lines(op, reference):
            ax.axhline(line, color=colours.get(reference), linestyle=style, linewidth=1)
    ax.axhline(1.0, color="black", linewidth=0.6)
    ax.set_yscale("log")
    ax.set_title(op, fontsize=10)
    ax.set_ylabel("tnc / reference time")
    ax.set_xticks(range(len(layers)), layers, rotation=30, ha="right", fontsize=7)
    ax.legend(fontsize=7)
