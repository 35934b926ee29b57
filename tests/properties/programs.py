"""Random `.tnd` programs as a user could write them, with an independent dense reference.

Two families, each rebuilt from its seed:
- *sums*: a definition that is a sum of terms with scalar factors, where networks repeat within and across terms,
  inputs appear several times in a term (renamed legs too), with deltas and index patterns; then its VJPs, JVPs,
  sampled VJPs (called at p = 1, which is exact) and slices;
- *convolutions*: an N-d convolution (1 to 4 spatial dims) with random strides, paddings and dilations, its input
  and weight VJPs, sampled weight VJPs over every summed index (at p = 1) and kernel-tap and output slices.

The reference of a definition is one dense `torch.einsum` per term of the formula as written (patterns written out
entry by entry from their definition, deltas as copy tensors); derivatives come from `torch.autograd` and
`torch.func` on that reference, so nothing of the compiler is reused.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from tests.cases import pad_pair, pattern_tensor

__all__ = ["Program", "sums_program", "conv_program", "reference", "Transform"]


@dataclass(frozen=True)
class Pattern:
    name: str
    legs: tuple[str, str, str]  # i, o, k
    stride: int
    padding: Any  # int, (left, right), "same" or "valid"
    dilation: int

    def text(self) -> str:
        pad = self.padding if isinstance(self.padding, int | str) else f"({self.padding[0]}, {self.padding[1]})"
        i, o, k = self.legs
        options = f"stride={self.stride}, padding={pad}, dilation={self.dilation}"
        return f"pattern {self.name}({i}, {o}, {k}) = conv({options})"


@dataclass(frozen=True)
class Factor:
    kind: str  # "input", "pattern", "delta"
    name: str
    legs: tuple[str, ...]

    def text(self, merged: tuple[tuple[str, str], ...] = ()) -> str:
        if self.kind == "input":
            return f"{self.name}[{axes_text(self.legs, merged)}]"
        return f"{self.name}({', '.join(self.legs)})"


def axes_text(legs: tuple[str, ...], merged: tuple[tuple[str, str], ...]) -> str:
    """Legs as a .tnd layout: a pair of `merged` legs in a row is one grouped axis `(g c)`."""
    parts, skip = [], False
    for position, leg in enumerate(legs):
        if skip:
            skip = False
            continue
        pair = legs[position : position + 2]
        if len(pair) == 2 and pair in merged:
            parts.append(f"({pair[0]} {pair[1]})")
            skip = True
        else:
            parts.append(leg)
    return ", ".join(parts)


@dataclass(frozen=True)
class Term:
    coefficient: float
    factors: tuple[Factor, ...]

    def text(self, merged: tuple[tuple[str, str], ...] = ()) -> str:
        body = " * ".join(f.text(merged) for f in self.factors)
        return body if self.coefficient == 1 else f"{_number(self.coefficient)} * {body}"


@dataclass(frozen=True)
class Transform:
    """A derived diagram: `name = kind(of, ...)`; `wrt` an input, `index`/`slices` for sample and slice."""

    name: str
    kind: str  # "vjp", "jvp", "sample_vjp", "slice"
    of: str
    wrt: str = ""
    index: str = ""
    slices: tuple[tuple[str, int, int | None, int], ...] = ()  # (leg, start, stop, step)

    def text(self, names: dict[str, str]) -> str:
        if self.kind in ("vjp", "jvp"):
            return f"{self.name} = {self.kind}({self.of}, {self.wrt})"
        if self.kind == "sample_vjp":
            return f"{self.name} = sample(vjp({self.of}, {self.wrt}), index={self.index}, p=0.5)"
        parts = [f"{leg}={start}:{'' if stop is None else stop}:{step}" for leg, start, stop, step in self.slices]
        return f"{self.name} = slice({self.of}, {', '.join(parts)})"


@dataclass
class Program:
    sizes: dict[str, int]  # every index, patterns' o included (inferred by the compiler, computed here)
    declared: list[str]  # indices declared with their size, in order
    patterns: list[Pattern]
    inputs: dict[str, tuple[str, ...]]
    left: tuple[str, ...]
    terms: list[Term]
    transforms: list[Transform] = field(default_factory=list)
    merged: tuple[tuple[str, str], ...] = ()  # pairs of legs written as one grouped axis, `(g c)`
    open: frozenset[str] = frozenset()  # indices declared without a size: bound from the arguments at call time

    def source(self) -> str:
        lines = ["index " + ", ".join(n if n in self.open else f"{n} = {self.sizes[n]}" for n in self.declared)]
        lines += [p.text() for p in self.patterns]
        lines += [f"input {name}[{axes_text(legs, self.merged)}]" for name, legs in self.inputs.items()]
        body = "\n    + ".join(t.text(self.merged) for t in self.terms)
        lines.append(f"y[{axes_text(self.left, self.merged)}] = {body}")
        lines += [t.text({}) for t in self.transforms]
        return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


# -- the sums family ----------------------------------------------------------------------------------------------

COEFFICIENTS = (1, 1, 2, 3, 0.5, 0.25)


def sums_program(seed: int) -> Program:
    """Sums of terms with scalar factors over repeated networks, and their transforms."""
    rng = random.Random(seed)
    names = ["a", "b", "c", "d", "f"][: rng.randint(2, 5)]
    sizes = {n: rng.randint(1, 4) for n in names}
    declared = list(names)
    patterns: list[Pattern] = []
    if rng.random() < 0.5:
        sizes["i"], sizes["k"] = rng.randint(2, 6), rng.randint(1, 3)
        declared += ["i", "k"]
        patterns.append(_random_pattern(rng, "p", ("i", "o", "k"), sizes))
    legs_pool = list(sizes)
    inputs = {}
    for name in ["x", "w", "v"][: rng.randint(1, 3)]:
        inputs[name] = tuple(rng.sample(legs_pool, rng.randint(1, min(3, len(legs_pool)))))
    left = tuple(leg for leg in legs_pool if rng.random() < 0.4)
    networks = [_closed(_network(rng, inputs, patterns, sizes), left) for _ in range(rng.randint(1, 3))]
    terms = []
    for _ in range(rng.randint(2, 4)):  # networks repeat across terms, with other coefficients
        factors = rng.choice(networks)
        if rng.random() < 0.3:
            factors = tuple(rng.sample(factors, len(factors)))  # the same network, factors in another order
        terms.append(Term(rng.choice(COEFFICIENTS), factors))
    opened = frozenset(leg for leg in _openable(inputs, patterns, terms) if rng.random() < 0.2)
    program = Program(sizes, declared, patterns, inputs, left, terms, open=opened)
    program.transforms = _sum_transforms(rng, program)
    return program


def _random_pattern(rng: random.Random, name: str, legs: tuple[str, str, str], sizes: dict[str, int]) -> Pattern:
    i, o, k = legs
    for _ in range(100):
        stride, dilation = rng.choice([1, 1, 2, 3]), rng.choice([1, 1, 2])
        padding: Any = rng.choice(
            [0, rng.randint(0, 2), (rng.randint(0, 2), rng.randint(0, 2)), "valid"] + (["same"] if stride == 1 else [])
        )
        left, right = pad_pair(padding, dilation, sizes[k])
        extent = dilation * (sizes[k] - 1) + 1
        if sizes[i] + left + right >= extent:
            sizes[o] = (sizes[i] + left + right - extent) // stride + 1
            return Pattern(name, legs, stride, padding, dilation)
        sizes[i] += 1
    raise AssertionError("no pattern fits")  # pragma: no cover - the input grows until one does


def _network(
    rng: random.Random, inputs: dict[str, tuple[str, ...]], patterns: list[Pattern], sizes: dict[str, int]
) -> tuple[Factor, ...]:
    """A product of one to four factors: inputs (the same one several times, legs renamed to indices of equal
    size), the pattern, deltas."""
    factors = []
    for _ in range(rng.randint(1, 4)):
        roll = rng.random()
        if roll < 0.6 or not (patterns or roll >= 0.85):
            name = rng.choice(sorted(inputs))
            legs = inputs[name]
            if rng.random() < 0.3:
                legs = _renamed(rng, legs, sizes)
            factors.append(Factor("input", name, legs))
        elif roll < 0.85 and patterns:
            factors.append(Factor("pattern", patterns[0].name, patterns[0].legs))
        else:
            leg = rng.choice(sorted(sizes))
            twins = [other for other in sorted(sizes) if other != leg and sizes[other] == sizes[leg]]
            legs = (leg, rng.choice(twins)) if twins and rng.random() < 0.5 else (leg,)
            factors.append(Factor("delta", "delta", legs))
    return tuple(factors)


def _closed(factors: tuple[Factor, ...], left: tuple[str, ...]) -> tuple[Factor, ...]:
    """The language sums an index that the left lacks only where it links two factors: one that appears once is
    summed by a delta, as a user writes it."""
    legs = [leg for f in factors for leg in f.legs]
    alone = sorted({leg for leg in legs if legs.count(leg) == 1 and leg not in left})
    return factors + tuple(Factor("delta", "delta", (leg,)) for leg in alone)


def _openable(inputs: dict[str, tuple[str, ...]], patterns: list[Pattern], terms: list[Term]) -> list[str]:
    """Indices that may be left open: on some input, on no pattern, and never standing in for another index (a
    renamed leg or a two-leg delta needs both sizes known to be equal)."""
    carried = {leg for legs in inputs.values() for leg in legs} - {leg for p in patterns for leg in p.legs}
    for factor in (f for t in terms for f in t.factors):
        if (factor.kind == "input" and factor.legs != inputs[factor.name]) or len(factor.legs) > 1 == (
            factor.kind == "delta"
        ):
            carried -= set(factor.legs) | set(inputs.get(factor.name, ()))
    return sorted(carried)


def _renamed(rng: random.Random, legs: tuple[str, ...], sizes: dict[str, int]) -> tuple[str, ...]:
    result: list[str] = []
    for leg in legs:
        choices = [other for other in sorted(sizes) if sizes[other] == sizes[leg] and other not in result]
        result.append(rng.choice(choices) if choices else leg)
    return tuple(result) if len(set(result)) == len(result) else legs


def _sum_transforms(rng: random.Random, program: Program) -> list[Transform]:
    used = sorted({f.name for t in program.terms for f in t.factors if f.kind == "input"})
    transforms = []
    if used:
        x = rng.choice(used)
        transforms.append(Transform("gx", "vjp", "y", x))
        transforms.append(Transform("tx", "jvp", "y", x))
        summed = _summed_in_vjp(program, x)
        if summed:
            transforms.append(Transform("sx", "sample_vjp", "y", x, index=rng.choice(summed)))
    known = [leg for leg in program.left if leg not in program.open]  # a slice needs its index's size
    if known:
        leg = rng.choice(known)
        size = program.sizes[leg]
        start = rng.randrange(size)
        stop = rng.choice([None, rng.randint(start + 1, size)])
        transforms.append(Transform("cut", "slice", "y", slices=((leg, start, stop, rng.choice([1, 2])),)))
    return transforms


def _summed_in_vjp(program: Program, x: str) -> list[str]:
    """Indices summed in every term of vjp(y, x): y's legs that x lacks, and legs summed in y's terms that read x."""
    x_legs = set(program.inputs[x])
    found = None
    for term in program.terms:
        if not any(f.kind == "input" and f.name == x for f in term.factors):
            continue
        legs = {leg for f in term.factors for leg in f.legs} | set(program.left)
        summed = {leg for leg in legs if leg not in x_legs}
        found = summed if found is None else found & summed
    return sorted(found or ())


# -- the convolution family ---------------------------------------------------------------------------------------


def conv_program(seed: int) -> Program:
    """y = x * Π1 * ... * Πd * w (+ b) in 1 to 4 spatial dims; VJPs, sampled weight VJPs and slices of them."""
    rng = random.Random(seed)
    dims = rng.choice([1, 2, 3, 4])
    sizes = {"n": rng.randint(1, 3), "g": rng.choice([1, 1, 2, 3]), "c": rng.randint(1, 3), "d": rng.randint(1, 3)}
    declared = ["n", "g", "c", "d"]
    patterns = []
    for j in range(1, dims + 1):
        i, o, k = f"i{j}", f"o{j}", f"k{j}"
        sizes[i], sizes[k] = rng.randint(1, 6 if dims < 4 else 4), rng.randint(1, 3)
        declared += [i, k]
        patterns.append(_random_pattern(rng, f"p{j}", (i, o, k), sizes))
    spatial_i = tuple(f"i{j}" for j in range(1, dims + 1))
    spatial_o = tuple(f"o{j}" for j in range(1, dims + 1))
    kernel = tuple(f"k{j}" for j in range(1, dims + 1))
    inputs = {"x": ("n", "g", "c") + spatial_i, "w": ("g", "d", "c") + kernel}
    factors = (Factor("input", "x", inputs["x"]),) + tuple(Factor("pattern", p.name, p.legs) for p in patterns)
    terms = [Term(rng.choice((1, 1, 2, 0.5)), factors + (Factor("input", "w", inputs["w"]),))]
    if rng.random() < 0.5:
        inputs["b"] = ("g", "d")
        terms.append(Term(1, (Factor("input", "b", ("g", "d")),)))
    merged = (("g", "c"), ("g", "d"))  # PyTorch's layouts: x[n, (g c), ...], w[(g d), c, ...], y[n, (g d), ...]
    opened = frozenset({"n"} if rng.random() < 0.3 else ())
    program = Program(sizes, declared, patterns, inputs, ("n", "g", "d") + spatial_o, terms, merged=merged, open=opened)
    transforms = [Transform("gx", "vjp", "y", "x"), Transform("gw", "vjp", "y", "w")]
    for index in ("n",) + spatial_o:  # every index summed in the weight VJP that sampling may drop
        if rng.random() < 0.5:
            transforms.append(Transform(f"s_{index}", "sample_vjp", "y", "w", index=index))
    tap = rng.choice(kernel)
    transforms.append(Transform("tap", "slice", "gw", slices=((tap, 0, 1, 1),)))
    out = rng.choice(spatial_o)
    transforms.append(Transform("cut", "slice", "y", slices=((out, rng.randrange(sizes[out]), None, 2),)))
    program.transforms = transforms
    return program


# -- the reference --------------------------------------------------------------------------------------------------


def _operand(program: Program, factor: Factor, values: dict[str, Tensor], dtype: torch.dtype) -> Tensor:
    if factor.kind == "input":
        return values[factor.name]
    if factor.kind == "pattern":
        p = next(p for p in program.patterns if p.name == factor.name)
        i, o, k = p.legs
        left, _ = pad_pair(p.padding, p.dilation, program.sizes[k])
        sizes = program.sizes
        return pattern_tensor(sizes[i], sizes[o], sizes[k], p.stride, left, p.dilation, dtype)
    size = program.sizes[factor.legs[0]]
    if len(factor.legs) == 1:
        return torch.ones(size, dtype=dtype)
    return torch.eye(size, dtype=dtype)


def reference(program: Program, values: dict[str, Tensor]) -> Tensor:
    """y as written: each term one dense einsum, scaled, broadcast over the left legs it lacks, summed."""
    dtype = next(iter(values.values())).dtype
    ids = {leg: n for n, leg in enumerate(sorted(program.sizes))}
    total = torch.zeros([program.sizes[leg] for leg in program.left], dtype=dtype)
    for term in program.terms:
        kept = [leg for leg in program.left if any(leg in f.legs for f in term.factors)]
        operands: list[Any] = []
        for factor in term.factors:
            operands += [_operand(program, factor, values, dtype), [ids[leg] for leg in factor.legs]]
        value = torch.einsum(*operands, [ids[leg] for leg in kept])
        shape = [program.sizes[leg] if leg in kept else 1 for leg in program.left]
        total = total + term.coefficient * value.reshape(shape)
    return total


def flat(program: Program, legs: tuple[str, ...], value: Tensor) -> Tensor:
    """`value` (one axis per leg) laid out as the program writes `legs`: grouped pairs merged into one axis."""
    shape, position = [], 0
    while position < len(legs):
        if legs[position : position + 2] in program.merged:
            shape.append(value.shape[position] * value.shape[position + 1])
            position += 2
        else:
            shape.append(value.shape[position])
            position += 1
    return value.reshape(shape)


def layout(program: Program, name: str) -> tuple[str, ...]:
    """The legs of a function's result: y's, an input's for a VJP, y's for a JVP, its diagram's for a slice."""
    if name == "y":
        return program.left
    transform = next(t for t in program.transforms if t.name == name)
    if transform.kind == "slice":
        return layout(program, transform.of)
    return program.inputs[transform.wrt] if transform.kind in ("vjp", "sample_vjp") else program.left


def arguments(program: Program, generator: torch.Generator) -> dict[str, Tensor]:
    return {
        name: torch.randn([program.sizes[leg] for leg in legs], generator=generator, dtype=torch.float64)
        for name, legs in program.inputs.items()
    }


def expected(program: Program, transform: Transform, values: dict[str, Tensor], extra: Tensor | None) -> Tensor:
    """A transform's reference value; `extra` is its new argument (cotangent or tangent)."""
    if transform.kind == "slice":
        base = expected(program, _named(program, transform.of), values, extra) if transform.of != "y" else None
        value = reference(program, values) if base is None else base
        legs = program.left if transform.of == "y" else program.inputs[_named(program, transform.of).wrt]
        index: list[slice] = [slice(None)] * len(legs)
        for leg, start, stop, step in transform.slices:
            index[legs.index(leg)] = slice(start, stop, step)
        return value[tuple(index)]
    x = transform.wrt
    if transform.kind == "jvp":
        assert extra is not None

        def along(point: Tensor) -> Tensor:
            return reference(program, {**values, x: point})

        return torch.func.jvp(along, (values[x],), (extra,))[1]
    assert extra is not None
    point = values[x].clone().requires_grad_(True)
    y = reference(program, {**values, x: point})
    (grad,) = torch.autograd.grad(y, point, extra, allow_unused=True)
    return torch.zeros_like(point) if grad is None else grad


def _named(program: Program, name: str) -> Transform:
    return next(t for t in program.transforms if t.name == name)
