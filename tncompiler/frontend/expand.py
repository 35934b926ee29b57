"""Definitions: right sides expanded into sums of products, earlier definitions inlined, slices made selections."""

from __future__ import annotations

from dataclasses import dataclass, replace

import sympy

from tncompiler.errors import Span, TncError
from tncompiler.frontend import ast
from tncompiler.frontend.scope import Scope, suggest
from tncompiler.ir.network import Diagram, Network
from tncompiler.ir.slices import normalise
from tncompiler.ir.values import Factor, Layout, Select, Size

__all__ = ["define", "MAX_TERMS", "MAX_FACTORS", "MAX_SUM_FACTORS"]

# Limits that keep a compile to seconds (docs/errors.md lists them; past one, the file is refused where it passes it).
# Products of sums expand into sums of products: at most this many terms from one product.
MAX_TERMS = 1024
# A product (with the definitions it uses inlined) is planned and simplified whole, and the rewrites that remove
# copy tensors and slices take time that grows with the square of its factors: at most this many in one product.
MAX_FACTORS = 1000
# The rest of the compile takes time in proportion to the factors of all terms (a term without any counts as one):
# at most this many in one sum.
MAX_SUM_FACTORS = 10000


@dataclass
class _Expanded:
    """One term of a definition after inlining and distribution: coefficient times factors."""

    coefficient: sympy.Expr
    factors: list[Factor]


def define(scope: Scope, decl: ast.Definition) -> Diagram:
    """The diagram of `y[...] = ...`: one network per term of the expanded right side."""
    layout = scope.layout(decl.axes, f"the left side of {decl.name.text!r}")
    terms = []
    for product in _sum(scope, decl.body, decl.name.text):
        _check_free_indices(product, layout, decl)
        sizes = {leg: scope.sizes[leg] for f in product.factors for leg in f.legs}
        outputs = tuple(leg for leg in layout.legs if leg in sizes)
        terms.append(Network(product.factors, outputs, sizes, product.coefficient))
    used = {f.name for t in terms for f in t.factors if f.kind == "input"}
    arguments = tuple(arg for name, arg in scope.arguments.items() if name in used)
    sizes = {leg: scope.sizes[leg] for leg in layout.legs + tuple(leg for a in arguments for leg in a.layout.legs)}
    for term in terms:
        sizes.update(term.sizes)
    return Diagram(decl.name.text, layout, tuple(terms), arguments, sizes, decl.span, scope.text(decl.span))


def _check_free_indices(term: _Expanded, layout: Layout, decl: ast.Definition) -> None:
    """An index met once on the right and not on the left is a mistake, unless that one use is delta(a): the
    copy tensor with one leg is the file's explicit way to sum over a."""
    counts: dict[str, int] = {}
    spans: dict[str, Span | None] = {}
    explicit: set[str] = set()
    for factor in term.factors:
        for leg in factor.legs:
            counts[leg] = counts.get(leg, 0) + 1
            spans.setdefault(leg, factor.span)
        if factor.kind == "delta" and len(factor.legs) == 1:
            explicit.add(factor.legs[0])
    for leg, count in counts.items():
        if count == 1 and leg not in layout.legs and leg not in explicit:
            raise TncError(
                f"index {leg!r} appears once on the right and not on the left of {decl.name.text!r}",
                spans[leg],
                f"add {leg!r} to the left side, or multiply by delta({leg}) to sum over it",
            )


def _sum(scope: Scope, body: ast.Sum, owner: str) -> list[_Expanded]:
    result: list[_Expanded] = []
    total = 0
    for term in body.terms:
        for expanded in _term(scope, term, owner):
            if term.negative:
                expanded.coefficient = -expanded.coefficient
            result.append(expanded)
            total += max(len(expanded.factors), 1)
        if total > MAX_SUM_FACTORS:
            raise _too_large_sum(term)
    return result


def _term(scope: Scope, term: ast.Term, owner: str) -> list[_Expanded]:
    products = [_Expanded(sympy.Integer(1), [])]
    for op, factor in zip(("*",) + term.ops, term.factors):
        options = _factor(scope, factor, owner)
        if op == "/":
            products = [_Expanded(p.coefficient / _divisor(options, factor), p.factors) for p in products]
            continue
        products = [_Expanded(p.coefficient * o.coefficient, p.factors + o.factors) for p in products for o in options]
        if len(products) > MAX_TERMS:
            raise _too_many_terms(factor)
        if any(len(p.factors) > MAX_FACTORS for p in products):
            raise _too_many_factors(factor)
    return products


def _too_large_sum(term: ast.Term) -> TncError:
    return TncError(
        f"this sum passes {MAX_SUM_FACTORS} factors here (all its terms together, with the definitions they use "
        "inlined)",
        term.span,
        "split the sum into several definitions and add what they return in Python (a definition that uses "
        "them inlines them, and counts their factors)",
    )


def _too_many_terms(factor: ast.Factor) -> TncError:
    return TncError(
        f"expanding this product passes {MAX_TERMS} terms here",
        factor.span,
        "each sum in a product multiplies the terms by its own; multiply fewer sums in one product",
    )


def _too_many_factors(factor: ast.Factor) -> TncError:
    return TncError(
        f"this product passes {MAX_FACTORS} factors here (with the definitions it uses inlined)",
        factor.span,
        "tnc compiles a product whole, with the definitions it uses inlined, so splitting it into definitions does "
        "not help: write fewer factors",
    )


def _divisor(options: list[_Expanded], factor: ast.Factor) -> sympy.Expr:
    if any(option.factors for option in options):
        raise TncError(
            "only a number or size(...) can divide", factor.span, "divide by scalars: x[n] / size(n) or x[n] / 2"
        )
    divisor = sympy.Add(*[option.coefficient for option in options])
    if divisor == 0:
        raise TncError("division by zero", factor.span)
    return divisor


def _factor(scope: Scope, factor: ast.Factor, owner: str) -> list[_Expanded]:
    if isinstance(factor, ast.Number):
        value = factor.value
        return [_Expanded(sympy.nsimplify(value) if isinstance(value, int) else sympy.Float(value), [])]
    if isinstance(factor, ast.Paren):
        return _sum(scope, factor.body, owner)
    if isinstance(factor, ast.CallFactor):
        return [_call_factor(scope, factor)]
    return _tensor_ref(scope, factor, owner)


def _call_factor(scope: Scope, call: ast.CallFactor) -> _Expanded:
    name = call.name.text
    if name == "size":
        if len(call.args) != 1:
            raise TncError("size(...) takes exactly one index", call.span)
        return _Expanded(sympy.sympify(scope.index(call.args[0])), [])
    if name == "delta":
        if not call.args:
            raise TncError("delta(...) needs at least one index", call.span)
        _same_sizes(scope, call.args, "the legs of a delta")
        return _Expanded(sympy.Integer(1), [Factor("delta", "", tuple(a.text for a in call.args), call.span)])
    return _pattern_factor(scope, call)


def _pattern_factor(scope: Scope, call: ast.CallFactor) -> _Expanded:
    name = call.name.text
    if name not in scope.patterns:
        known = ", ".join(sorted(scope.patterns)) or "none declared"
        raise TncError(f"unknown pattern {name!r}", call.name.span, f"patterns: {known}; also delta(...) and size(...)")
    pattern = scope.patterns[name]
    if len(call.args) != 3:
        raise TncError(f"pattern {name!r} takes three indices (i, o, k), got {len(call.args)}", call.span)
    expected = (pattern.value.in_size, pattern.value.out_size, pattern.value.kernel_size)
    for arg, size, role in zip(call.args, expected, pattern.legs):
        _expect_size(scope.index(arg), size, arg.span, f"index {arg.text!r} used as {role!r} of pattern {name!r}")
    legs = tuple(a.text for a in call.args)
    return _Expanded(sympy.Integer(1), [Factor("pattern", name, legs, call.span, pattern.value)])


def _same_sizes(scope: Scope, names: tuple[ast.Name, ...], what: str) -> None:
    first = scope.index(names[0])
    for name in names[1:]:
        _expect_size(scope.index(name), first, name.span, f"{what} ({names[0].text!r} and {name.text!r})")


def _expect_size(actual: Size, expected: Size, span: Span, what: str) -> None:
    if sympy.simplify(sympy.sympify(actual) - sympy.sympify(expected)) != 0:
        raise TncError(
            f"size clash: {what} has size {actual}, expected {expected}",
            span,
            f"an index has one size wherever it is used; use one of size {expected} here",
        )


def _tensor_ref(scope: Scope, ref: ast.TensorRef, owner: str) -> list[_Expanded]:
    name = ref.name.text
    if name in scope.arguments:
        ref, window = _unslice(scope, ref, scope.arguments[name].layout)
        legs = _ref_legs(scope, ref, scope.arguments[name].layout, f"input {name!r}")
        return [_Expanded(sympy.Integer(1), [Factor("input", name, legs, ref.span), *window])]
    if name in scope.definitions:
        ref, window = _unslice(scope, ref, scope.definitions[name].layout)
        return [_Expanded(e.coefficient, e.factors + window) for e in _inline(scope, ref, scope.definitions[name])]
    raise _unknown_tensor(scope, ref.name, owner)


def _unknown_tensor(scope: Scope, name: ast.Name, owner: str) -> TncError:
    if name.text == owner:
        return TncError(f"{name.text!r} refers to itself", name.span, "a definition can only use earlier ones")
    if name.text in scope.later:
        return TncError(
            f"{name.text!r} is defined later, at line {scope.later[name.text].line}",
            name.span,
            "a definition can only use inputs and earlier definitions (no cycles)",
        )
    known = list(scope.arguments) + list(scope.definitions)
    hint = suggest(name.text, known, "inputs and definitions so far: " + (", ".join(known) or "none"))
    return TncError(f"unknown tensor {name.text!r}", name.span, hint)


def _unslice(scope: Scope, ref: ast.TensorRef, layout: Layout) -> tuple[ast.TensorRef, list[Factor]]:
    """`x[n, c, 0:16]`: the axis keeps its declared index, and entries outside the slice count as zero. Written
    as a network: x's axis gets a fresh leg u, and select(u, j) · select(i, j) joins it to i through the kept
    entries j; the rewrite rules then turn the selections into a slice of x and push the rest into the patterns."""
    if not any(isinstance(axis, ast.SliceSpec) for axis in ref.axes):
        return ref, []
    if len(ref.axes) != len(layout.axes):
        raise TncError(f"{ref.name.text!r} has {len(layout.axes)} axes {layout.text()}, got {len(ref.axes)}", ref.span)
    axes: list[ast.Axis] = []
    window: list[Factor] = []
    for axis, legs in zip(ref.axes, layout.axes):
        if isinstance(axis, ast.SliceSpec):
            axis = _select(scope, axis, legs, window)
        axes.append(axis)
    return replace(ref, axes=tuple(axes)), window


def _select(scope: Scope, axis: ast.SliceSpec, legs: tuple[str, ...], window: list[Factor]) -> ast.AxisNames:
    """The sliced axis as a fresh leg, joined to its declared index by two selections added to `window`."""
    leg = _sliced_leg(scope, axis, legs)
    size = scope.sizes[leg]
    assert isinstance(size, int)
    try:
        start, stop, step = normalise(size, axis.start, axis.stop, axis.step)
    except TncError as error:
        raise TncError(error.message, axis.span) from None
    select = Select(size, len(range(start, stop, step)), start, step)
    full, kept = scope.fresh_index(leg, size), scope.fresh_index(leg, select.out_size)
    window += [
        Factor("select", "", (full, kept), axis.span, select),
        Factor("select", "", (leg, kept), axis.span, select),
    ]
    return ast.AxisNames((ast.Name(full, axis.span),), False, axis.span)


def _sliced_leg(scope: Scope, axis: ast.SliceSpec, legs: tuple[str, ...]) -> str:
    if len(legs) != 1:
        raise TncError(
            "a slice in place of a grouped axis is not supported",
            axis.span,
            "name the axis's legs, e.g. (g c), and slice one of them with slice(...) on a result",
        )
    if not isinstance(scope.sizes[legs[0]], int):
        raise TncError(f"slicing {legs[0]!r} needs its size known in the file", axis.span)
    return legs[0]


def _ref_legs(scope: Scope, ref: ast.TensorRef, layout: Layout, what: str) -> tuple[str, ...]:
    if len(ref.axes) != len(layout.axes):
        raise TncError(f"{what} has {len(layout.axes)} axes {layout.text()}, got {len(ref.axes)}", ref.span)
    legs: list[str] = []
    for position, (axis, declared) in enumerate(zip(ref.axes, layout.axes)):
        names = _axis_names(axis)
        expected = sympy.Mul(*[sympy.sympify(scope.sizes[n]) for n in declared])
        actual = sympy.Mul(*[sympy.sympify(scope.index(n)) for n in names])
        used = " ".join(n.text for n in names)
        where = f"{used!r} at axis {position} of {what} (declared as {layout.axis_text(position)})"
        _expect_size(actual, expected, axis.span, where)
        legs.extend(n.text for n in names)
    return tuple(legs)


def _inline(scope: Scope, ref: ast.TensorRef, diagram: Diagram) -> list[_Expanded]:
    """Substitute an earlier definition: its result legs become the reference's, its summed ones fresh."""
    legs = _inlined_legs(scope, ref, diagram)
    result = []
    for term in diagram.terms:
        mapping = dict(zip(diagram.layout.legs, legs))
        mapping.update({leg: scope.fresh_index(leg, term.size(leg)) for leg in term.summed()})
        factors = [f.renamed(mapping) for f in term.factors]
        factors += [
            Factor("delta", "", (mapping[leg],), ref.span) for leg in diagram.layout.legs if leg not in term.outputs
        ]  # a broadcast leg is a product with ones
        result.append(_Expanded(term.coefficient, factors))
    return result


def _inlined_legs(scope: Scope, ref: ast.TensorRef, diagram: Diagram) -> tuple[str, ...]:
    """The names a reference gives a definition's result legs: one per leg, each of the leg's size."""
    names = [name for axis in ref.axes for name in _axis_names(axis)]
    if len(names) != len(diagram.layout.legs):
        raise TncError(
            f"a reference to {diagram.name!r} must name its {len(diagram.layout.legs)} legs one by one, "
            f"as its left side {diagram.layout.text()} does; got {len(names)}",
            ref.span,
        )
    for leg, name in zip(diagram.layout.legs, names):
        _expect_size(scope.index(name), diagram.sizes[leg], name.span, f"leg {name.text!r} of {diagram.name!r}")
    return tuple(name.text for name in names)


def _axis_names(axis: ast.Axis) -> tuple[ast.Name, ...]:
    if isinstance(axis, ast.SliceSpec):  # slices were replaced by _unslice; what is left is a misplaced one
        raise TncError("a slice can only stand in the index list of a tensor on the right side", axis.span)
    return axis.names
