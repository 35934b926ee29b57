"""The one cost model: the call-time sizes at which compile-time choices are priced, the multiply-adds of a kernel
and of a lowered network, and the constants measured on PyTorch's kernels that tip a choice one way. Every pass
that weighs two forms asks here (share, fuse, lower); the planner (`order.py`) applies the measured step order.
The entries a lowered network moves and a time model (`Machine`, fitted by bench/cost_model.py) are for `tnc
explain` only: no pass decides by them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import sympy

from tncompiler.ir.network import Network
from tncompiler.ir.values import ConvPattern, NativeConv, Sampler, Size, SizeRule, kept_symbol, out_size

__all__ = [
    "MACHINE",
    "REGIMES",
    "SKINNY",
    "WITHOUT_RULES",
    "Kind",
    "Machine",
    "Regimes",
    "bytes_moved",
    "evaluate",
    "expected_sizes",
    "fewer",
    "flops",
    "kernel_wins",
    "lowered_cost",
    "masks_sampled",
    "native_flops",
    "predicted_seconds",
    "seconds",
    "symbols_of",
]

# Call-time sizes are unknown when planning; we plan at these values and keep every distinct order, so that
# the generated code can pick the cheapest one once per shape.
REGIMES = (1, 32, 1024)

# A matrix product A·B where B has at most this many columns runs faster as (Bᵀ·Aᵀ)ᵀ with PyTorch's CPU GEMM
# (measured 2-5x for 3 to 9 columns, the Σ_o Π factors of KFAC-reduce; even at 16). The planner puts such a B first.
SKINNY = 12


def evaluate(size: Size | sympy.Expr, at: Mapping[sympy.Symbol, int]) -> int:
    """A size at concrete call-time sizes (those not in `at` count as 1)."""
    if isinstance(size, int):
        return size
    return int(size.xreplace({s: at.get(s, 1) for s in size.free_symbols}))


def symbols_of(*sizes: Size | sympy.Expr) -> set[sympy.Symbol]:
    found: set[sympy.Symbol] = set()
    for size in sizes:
        if isinstance(size, sympy.Expr):
            found |= size.free_symbols
    return found


@dataclass(frozen=True)
class Regimes:
    """Representative call-time sizes for compile-time choices: every open index at each of REGIMES, and every
    size a pattern derives from open ones by its size rule (a stride-4 output a quarter of its input, as it will be
    at call time, not as large as it)."""

    rules: tuple[SizeRule, ...] = ()

    def at(
        self, regime: int, symbols: Iterable[sympy.Symbol], expected: Mapping[sympy.Symbol, int] | None = None
    ) -> dict[sympy.Symbol, int]:
        """Values for `symbols` (and what they derive from); `expected` fixes some (sampled sizes)."""
        values = {s: (expected or {}).get(s, regime) for s in symbols}
        derived: dict[sympy.Symbol, int] = {}
        for rule in self.rules:  # file order: a rule's input is open or derived by an earlier rule
            out, conv = rule.conv.out_size, rule.conv
            if isinstance(out, sympy.Symbol):
                at = {s: derived.get(s, regime) for s in sympy.sympify(conv.in_size).free_symbols}
                i = evaluate(conv.in_size, at)
                derived[out] = max(1, evaluate(out_size(i, conv.kernel_size, conv.stride, conv.pad_left,
                                                         conv.pad_right, conv.dilation), {}))  # fmt: skip
        return values | {s: derived[s] for s in values if s in derived and s not in (expected or {})}

    def middle(
        self, symbols: Iterable[sympy.Symbol], expected: Mapping[sympy.Symbol, int] | None = None
    ) -> dict[sympy.Symbol, int]:
        return self.at(REGIMES[len(REGIMES) // 2], symbols, expected)


WITHOUT_RULES = Regimes()  # for networks whose open sizes are all independent


def expected_sizes(
    samplers: Iterable[Sampler], at: Mapping[sympy.Symbol, int] | None = None
) -> dict[sympy.Symbol, int]:
    """The kept entries of each sampled index of known size, at their expected value: plans are priced there, so that
    the choice never depends on the data. Given call-time sizes `at`, those of open size too (estimates only)."""
    return {
        kept_symbol(s.index): s.count or max(1, round(s.p * evaluate(s.size, at or {})))
        for s in samplers
        if isinstance(s.size, int) or at is not None
    }


def fewer(a: sympy.Expr, b: sympy.Expr, regimes: Regimes) -> bool:
    """a < b at the middle regime of every call-time size."""
    at = regimes.middle(symbols_of(a, b))
    return evaluate(a, at) < evaluate(b, at)


def _kernel_sizes(term: Network, native: NativeConv) -> dict[str, Size]:
    """The legs a kernel runs over, with their sizes but the pattern's i legs: a sampled leg that is masked rather
    than tiled counts its full size, since the kernel runs over every position."""
    legs = set().union(*(term.factors[k].legs for k in (native.data, native.other, *native.patterns)))
    inputs = {term.factors[k].legs[0] for k in native.patterns}
    full = {
        f.legs[1]: f.pattern.out_size
        for f in (term.factors[k] for k in native.patterns)
        if isinstance(f.pattern, ConvPattern) and f.legs[1] in native.masked
    }
    return {leg: full.get(leg, term.size(leg)) for leg in sorted(legs - inputs)}


def native_flops(term: Network, native: NativeConv) -> sympy.Expr:
    """Multiply-adds of a direct convolution (all three kinds): every leg it runs over, multiplied."""
    return sympy.Mul(*_kernel_sizes(term, native).values())


def flops(lowered: Network) -> sympy.Expr:
    """Multiply-adds per call of a lowered network: its kernel's, or its cheapest plan's."""
    native = lowered.lowering.native
    return native_flops(lowered, native) if native is not None else lowered.lowering.plans[0].flops


def bytes_moved(lowered: Network) -> sympy.Expr:
    """Entries read and written per call of a lowered network (times `Machine.entry_bytes` for bytes): a kernel's
    operands and result (a masked leg at its full size), or each step of its cheapest plan's operands and result (a
    window view counted as the windows it reads); a network without steps (a permuted copy) reads its factors."""
    native, plans = lowered.lowering.native, lowered.lowering.plans
    tensors = [f.legs for f in lowered.factors]
    full = _kernel_sizes(lowered, native) if native is not None else {}
    if native is not None:
        read = [tensors[native.data], tensors[native.other], lowered.outputs]
    elif plans and plans[0].steps:
        read = []
        for step in plans[0].steps:
            read += [tensors[k] for k in step.operands] + [step.legs]
            tensors.append(step.legs)
    else:
        read = [*tensors, lowered.outputs]
    return sympy.Add(*[sympy.Mul(*[full.get(leg, lowered.size(leg)) for leg in legs]) for legs in read])


Kind = Literal["kernel", "contract"]


@dataclass(frozen=True)
class Machine:
    """A roofline with a fixed cost per call: seconds = max(multiply-adds / rate, bytes / bandwidth) + overhead, for
    PyTorch's convolution kernels ("kernel") and for tensordot, einsum and matrix products ("contract"). Defaults:
    fitted by `python -m bench.cost_model --all` on one thread of this project's CPU, float32 (bench/README.md):
    predicted / measured has median 0.98 and 90th percentile 1.66 over the suite's and three small calls' 180
    functions."""

    kernel_rate: float = 7.3e10  # multiply-adds per second
    contract_rate: float = 4.0e10
    bandwidth: float = 1.1e10  # bytes per second
    kernel_overhead: float = 3.7e-5  # seconds per call, as timed by bench/measure.py (its own cost included)
    contract_overhead: float = 1.4e-5
    entry_bytes: int = 4  # float32


MACHINE = Machine()


def seconds(flops: float, entries: float, kind: Kind, machine: Machine = MACHINE) -> float:
    """The time model: the slower of the arithmetic and the memory traffic, plus a fixed cost per call."""
    rate, overhead = (machine.kernel_rate, machine.kernel_overhead) if kind == "kernel" else (
        machine.contract_rate, machine.contract_overhead)  # fmt: skip
    return max(flops / rate, entries * machine.entry_bytes / machine.bandwidth) + overhead


def predicted_seconds(lowered: Network, at: Mapping[sympy.Symbol, int], machine: Machine = MACHINE) -> float:
    """One lowered network's predicted time at call-time sizes `at` (a CPU estimate: see `Machine`)."""
    kind: Kind = "kernel" if lowered.lowering.native is not None else "contract"
    return seconds(evaluate(flops(lowered), at), evaluate(bytes_moved(lowered), at), kind, machine)


def lowered_cost(net: Network, regimes: Regimes) -> float:
    """Multiply-adds per call once lowered (native kernel, or window views and the cheapest order), at the middle
    regime of the call-time sizes: what share and fuse weigh their rewrites by."""
    # lowering takes its own costs from here: imported when first asked, which closes the cycle at call time
    from tncompiler.passes.lower import lower_network

    work = flops(lower_network(net, regimes)[0])
    return float(evaluate(work, regimes.middle(symbols_of(work))))


def kernel_wins(
    rewritten: Network, native: NativeConv | None, written: Network, kernel: NativeConv, regimes: Regimes
) -> bool:
    """Between the kernel on the term as written and the rewritten term (`native`: its own kernel, if it is one).
    Two kernels: the file's layout needs no permuted copies, so it wins unless the rewrite does less work (a slice
    that drops windows). Otherwise the kernel wins: one call of PyTorch's, where the rewritten convolution, weight
    gradient or transpose convolution (patchify: reshapes and a matrix product) copies its operands for the product
    as well; but not on sampled positions where the rewrite needs no constant (a 1x1 kernel: a strided slice, a
    gather and a product, measured faster than the kernel on gathered windows), nor for a 1x1 kernel's weight
    gradient per example (a strided slice and one batched product)."""
    if set(rewritten.outputs) - set(written.outputs):
        return False  # an open leg split: the result is laid out otherwise (a unit leg that went is broadcast)
    if native is not None:
        return not fewer(native_flops(rewritten, native), native_flops(written, kernel), regimes)
    if kernel.tiled or _per_example_products(written, kernel):
        return any(f.kind in ("pattern", "select", "delta", "fused") for f in rewritten.factors)
    return True


def _per_example_products(net: Network, kernel: NativeConv) -> bool:
    """A weight gradient of a 1x1 kernel kept per example (J of the GGN diagonal: nothing summed but positions, the
    batch on the groups): one matrix product per example, which PyTorch's kernel runs as a convolution of batch 1
    over n groups, where the rewritten network (a strided slice and a batched matrix product) is one bmm."""
    sizes = [
        f.pattern.kernel_size for f in (net.factors[k] for k in kernel.patterns) if isinstance(f.pattern, ConvPattern)
    ]
    return (
        kernel.role == "weight"
        and not kernel.batch
        and all(size == 1 for size in sizes)
        and any(net.size(leg) != 1 for leg in kernel.groups)
    )


def masks_sampled(net: Network, m: NativeConv) -> bool:
    """A depthwise weight gradient is memory-bound, and PyTorch's depthwise kernel is slow at stride K (2.4x per
    row measured on MobileNetV2's layers): grad_y's dropped rows are zeroed instead of the kept windows tiled."""
    return m.role == "weight" and bool(m.groups) and all(net.size(leg) == 1 for leg in m.data_channels)
