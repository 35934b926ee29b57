"""Semantic analysis: check a parsed file and build the IR `Program` (one `Diagram` per definition)."""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import sympy

from tncompiler.derive import autodiff, kfac, sampling, slicing
from tncompiler.errors import Span, TncError
from tncompiler.frontend import ast
from tncompiler.ir.network import Argument, AutogradSpec, Diagram, Network, Program
from tncompiler.ir.values import ConvPattern, Factor, Layout, Select, Size, SizeRule, out_size, size_symbol

__all__ = ["resolve", "MAX_TERMS"]

# Products of sums expand into sums of products; past this many terms a file is rejected.
MAX_TERMS = 256
_PATTERN_KINDS = ("conv",)
_CONV_ARGS = ("stride", "padding", "dilation")
_TRANSFORMS = ("vjp", "jvp", "jacobian", "kfac", "kfac_grad", "slice", "sample")


@dataclass(frozen=True)
class _Pattern:
    legs: tuple[str, str, str]
    value: ConvPattern


@dataclass
class _Expanded:
    """One term of a definition after inlining and distribution: coefficient times factors."""

    coefficient: sympy.Expr
    factors: list[Factor]


@dataclass
class _Scope:
    """What the file has declared so far."""

    filename: str
    source: str
    sizes: dict[str, Size] = field(default_factory=dict)
    declared_at: dict[str, tuple[str, Span]] = field(default_factory=dict)
    patterns: dict[str, _Pattern] = field(default_factory=dict)
    inputs: dict[str, Argument] = field(default_factory=dict)
    arguments: dict[str, Argument] = field(default_factory=dict)
    definitions: dict[str, Diagram] = field(default_factory=dict)
    plain: set[str] = field(default_factory=set)
    later: dict[str, Span] = field(default_factory=dict)
    fresh: itertools.count = field(default_factory=itertools.count)  # type: ignore[type-arg]
    open_indices: set[str] = field(default_factory=set)  # declared without a size, not yet given one by a pattern
    rules: list[SizeRule] = field(default_factory=list)
    derived: dict[sympy.Expr, sympy.Symbol] = field(default_factory=dict)  # output-size formula -> its index's symbol

    def declare(self, name: ast.Name, kind: str) -> None:
        if name.text in self.declared_at:
            other_kind, span = self.declared_at[name.text]
            raise TncError(
                f"{name.text!r} is already declared as {_article(other_kind)} at line {span.line}",
                name.span,
                "every index, pattern, input and definition needs its own name",
            )
        self.declared_at[name.text] = (kind, name.span)

    def index(self, name: ast.Name) -> Size:
        if name.text not in self.sizes:
            raise TncError(
                f"undeclared index {name.text!r}",
                name.span,
                _suggest(name.text, self.sizes, "declare it first: index " + name.text),
            )
        return self.sizes[name.text]


def _article(kind: str) -> str:
    return ("an " if kind[0] in "aeiou" else "a ") + kind


def _suggest(word: str, choices: object, fallback: str) -> str:
    options = sorted(choices)  # type: ignore[call-overload]
    close = difflib.get_close_matches(word, options, n=1)
    return f"did you mean {close[0]!r}?" if close else fallback


def resolve(module: ast.Module, filename: str, source: str) -> Program:
    """Check every statement in order and build the program; errors carry the file and position."""
    scope = _Scope(filename, source)
    for statement in module.statements:
        if isinstance(statement, ast.Definition | ast.TransformDef):
            scope.later.setdefault(statement.name.text, statement.span)
    try:
        for statement in module.statements:
            _STATEMENTS[type(statement)](scope, statement)
        autograd = _autograd_specs(scope)
    except TncError as error:
        raise error.located(filename, source) from None
    rules = tuple(scope.rules)
    diagrams = tuple(replace(d, size_rules=rules) for d in scope.definitions.values())
    return Program(filename, dict(scope.sizes), diagrams, autograd, rules)


def _autograd_specs(scope: _Scope) -> tuple[AutogradSpec, ...]:
    """Each plain definition with a sampled VJP gets an autograd.Function; arguments without a sampled VJP get an
    exact one, compiled as a private function."""
    sampled: dict[str, dict[str, tuple[str, str]]] = {}
    for diagram in scope.definitions.values():
        if diagram.samplers and diagram.vjp_of is not None:
            of, wrt, cotangent = diagram.vjp_of
            if of in scope.plain:
                sampled.setdefault(of, {}).setdefault(wrt, (diagram.name, cotangent))
    specs = []
    for name, by_argument in sampled.items():
        y = scope.definitions[name]
        cotangent = _fresh_argument(f"grad_{name}", y)
        vjps = []
        for argument in y.arguments:
            if argument.name not in by_argument:
                private = f"_{name}_vjp_{argument.name}"
                while private in scope.definitions:  # `_a_vjp_vjp_x` of `a` and of `a_vjp` alike: make it unique
                    private += "_"
                span = y.span or Span(1, 1)
                scope.definitions[private] = autodiff.vjp(y, argument.name, cotangent, private, span, y.source)
                by_argument[argument.name] = (private, cotangent)
            vjps.append((argument.name, *by_argument[argument.name]))
        specs.append(AutogradSpec(name, tuple(vjps)))
    return tuple(specs)


def _fresh_argument(base: str, diagram: Diagram) -> str:
    names = {a.name for a in diagram.arguments}
    while base in names:
        base += "_"
    return base


def _index_decl(scope: _Scope, decl: ast.IndexDecl) -> None:
    for item in decl.items:
        scope.declare(item.name, "index")
        scope.sizes[item.name.text] = _declared_size(scope, item)


def _declared_size(scope: _Scope, item: ast.IndexItem) -> Size:
    if item.size is None:
        scope.open_indices.add(item.name.text)
        return size_symbol(item.name.text)
    if isinstance(item.size, ast.Name):
        return scope.index(item.size)
    if item.size < 1:
        raise TncError(f"index {item.name.text!r} must have a positive size, got {item.size}", item.size_span)
    return item.size


def _pattern_decl(scope: _Scope, decl: ast.PatternDecl) -> None:
    scope.declare(decl.name, "pattern")
    if decl.kind.text not in _PATTERN_KINDS:
        raise TncError(
            f"unknown pattern kind {decl.kind.text!r}", decl.kind.span, "valid kinds: " + ", ".join(_PATTERN_KINDS)
        )
    if len(decl.legs) != 3:
        raise TncError(
            f"pattern {decl.name.text!r} has {len(decl.legs)} legs; a conv pattern has three: (i, o, k)",
            decl.span,
            "write pattern p(i, o, k) = conv(...)",
        )
    i, o, k = decl.legs
    if len({i.text, o.text, k.text}) < 3:
        raise TncError(f"pattern {decl.name.text!r} needs three different indices", decl.span)
    args = _conv_args(decl.args)
    in_size, kernel = scope.index(i), scope.index(k)
    if not isinstance(kernel, int):
        raise TncError(
            f"the kernel index {k.text!r} needs a size known in the file",
            k.span,
            f"declare it with a size: index {k.text} = 3",
        )
    stride, dilation = int(args.get("stride", 1)), int(args.get("dilation", 1))  # type: ignore[arg-type]
    left, right = _padding(args.get("padding", 0), stride, dilation, kernel, decl)
    value = ConvPattern(
        in_size, out_size(in_size, kernel, stride, left, right, dilation), kernel, stride, left, right, dilation
    )
    value = _output_size(scope, o, value, decl)
    scope.patterns[decl.name.text] = _Pattern((i.text, o.text, k.text), value)


def _conv_args(args: tuple[ast.PatternArg, ...]) -> dict[str, int | tuple[int, int] | str]:
    seen: dict[str, int | tuple[int, int] | str] = {}
    for arg in args:
        key = arg.key.text
        if key not in _CONV_ARGS:
            raise TncError(
                f"unknown argument {key!r} of conv", arg.key.span, "valid arguments: " + ", ".join(_CONV_ARGS)
            )
        if key in seen:
            raise TncError(f"argument {key!r} is given twice", arg.key.span)
        if key != "padding" and not isinstance(arg.value, int):
            raise TncError(f"{key} must be an integer", arg.value_span, f"write {key}=1, {key}=2, ...")
        if key != "padding" and isinstance(arg.value, int) and arg.value < 1:
            raise TncError(
                f"{key} must be at least 1, got {arg.value}", arg.value_span, f"{key}=1 means no {key} (the default)"
            )
        _check_padding_value(arg) if key == "padding" else None
        seen[key] = arg.value
    return seen


def _check_padding_value(arg: ast.PatternArg) -> None:
    values = arg.value if isinstance(arg.value, tuple) else (arg.value,)
    if isinstance(arg.value, str) and arg.value not in ("same", "valid"):
        raise TncError(
            f"unknown padding {arg.value!r}",
            arg.value_span,
            "padding is an integer, a pair (left, right), same or valid",
        )
    if any(isinstance(v, int) and v < 0 for v in values):
        raise TncError(
            "padding must not be negative",
            arg.value_span,
            "padding is a number of zeros added at each end: 0 or more; to crop, slice the input instead",
        )


def _padding(
    padding: int | tuple[int, int] | str, stride: int, dilation: int, kernel: int, decl: ast.PatternDecl
) -> tuple[int, int]:
    if padding == "valid":
        return 0, 0
    if padding == "same":
        if stride != 1:
            raise TncError("padding=same needs stride 1 (as in PyTorch)", decl.span)
        total = dilation * (kernel - 1)
        return total // 2, total - total // 2  # PyTorch puts the odd one on the right
    if isinstance(padding, tuple):
        return padding
    assert isinstance(padding, int)
    return padding, padding


def _output_size(scope: _Scope, o: ast.Name, value: ConvPattern, decl: ast.PatternDecl) -> ConvPattern:
    """The size of o: inferred, or checked against its declaration. Where the input size is open, o's size is a
    symbol of its own, tied to the input's by a size rule that the generated code applies at call time."""
    inferred = value.out_size
    if isinstance(inferred, int) and inferred < 1:
        raise TncError(
            f"pattern {decl.name.text!r} has output size {inferred}: the kernel (dilated extent "
            f"{value.dilation * (value.kernel_size - 1) + 1}) is larger than the padded input "
            f"({value.in_size} + {value.pad_left + value.pad_right})",
            decl.span,
            f"use a kernel of at most {_largest_kernel(value)}, more padding, or a larger input",
        )
    if o.text not in scope.sizes:
        scope.declare(o, "index")
    elif o.text in scope.open_indices and isinstance(inferred, int):
        scope.open_indices.discard(o.text)  # declared without a size: the pattern gives it one
    else:
        return _declared_output(scope, o, value, decl)
    size: Size = inferred if isinstance(inferred, int) else _derived_symbol(scope, o, value, decl)
    scope.sizes[o.text] = size
    return replace(value, out_size=size)


def _derived_symbol(scope: _Scope, o: ast.Name, value: ConvPattern, decl: ast.PatternDecl) -> sympy.Symbol:
    """One symbol per output-size formula: patterns that agree on it share it (and their o indices their size)."""
    formula = sympy.sympify(value.out_size)
    if formula not in scope.derived:
        scope.derived[formula] = size_symbol(o.text)
        rule_legs = (decl.legs[0].text, o.text)
        scope.rules.append(SizeRule(decl.name.text, rule_legs, replace(value, out_size=scope.derived[formula])))
    return scope.derived[formula]


def _declared_output(scope: _Scope, o: ast.Name, value: ConvPattern, decl: ast.PatternDecl) -> ConvPattern:
    declared = scope.sizes[o.text]
    inferred = value.out_size
    if isinstance(declared, int) and isinstance(inferred, int):
        if declared != inferred:
            raise TncError(
                f"size clash: pattern {decl.name.text!r} gives {o.text!r} size {inferred}, but it is "
                f"declared with size {declared}",
                o.span,
                f"declare {o.text} = {inferred}, or leave {o.text!r} undeclared and its size is inferred",
            )
        return value
    # an open input or output: the generated code checks (or derives) one from the other at call time
    scope.rules.append(SizeRule(decl.name.text, (decl.legs[0].text, o.text), replace(value, out_size=declared)))
    return replace(value, out_size=declared)


def _largest_kernel(value: ConvPattern) -> Size:
    """The largest kernel that still gives one output position for the pattern's input, padding and dilation."""
    return (value.in_size + value.pad_left + value.pad_right - 1) // value.dilation + 1


def _input_decl(scope: _Scope, decl: ast.InputDecl) -> None:
    scope.declare(decl.name, "input")
    layout = _layout(scope, decl.axes, f"input {decl.name.text!r}")
    scope.inputs[decl.name.text] = scope.arguments[decl.name.text] = Argument(decl.name.text, layout, decl.span)


def _layout(scope: _Scope, axes: tuple[ast.Axis, ...], what: str) -> Layout:
    names: list[tuple[str, ...]] = []
    seen: set[str] = set()
    for axis in axes:
        if isinstance(axis, ast.SliceSpec):
            raise TncError(f"the axes of {what} must be indices, not a slice", axis.span)
        for name in axis.names:
            scope.index(name)
            if name.text in seen:
                raise TncError(
                    f"index {name.text!r} appears twice in {what}",
                    name.span,
                    f"give each axis its own index; for a diagonal, use another index and delta({name.text}, ...)",
                )
            seen.add(name.text)
        names.append(tuple(n.text for n in axis.names))
    return Layout(tuple(names))


def _definition(scope: _Scope, decl: ast.Definition) -> None:
    scope.declare(decl.name, "definition")
    layout = _layout(scope, decl.axes, f"the left side of {decl.name.text!r}")
    expanded = _sum(scope, decl.body, decl.name.text)
    terms = []
    for product in expanded:
        _check_free_indices(product, layout, decl)
        sizes = {leg: _leg_size(scope, leg) for f in product.factors for leg in f.legs}
        outputs = tuple(leg for leg in layout.legs if leg in sizes)
        terms.append(Network(product.factors, outputs, sizes, product.coefficient))
    used = {f.name for t in terms for f in t.factors if f.kind == "input"}
    arguments = tuple(arg for name, arg in scope.arguments.items() if name in used)
    sizes = {leg: scope.sizes[leg] for leg in layout.legs + tuple(leg for a in arguments for leg in a.layout.legs)}
    for term in terms:
        sizes.update(term.sizes)
    diagram = Diagram(decl.name.text, layout, tuple(terms), arguments, sizes, decl.span, _text(scope, decl.span))
    scope.definitions[decl.name.text] = diagram
    scope.plain.add(decl.name.text)


def _leg_size(scope: _Scope, leg: str) -> Size:
    return scope.sizes[leg] if leg in scope.sizes else scope.sizes[leg.split("~")[0]]


def _text(scope: _Scope, span: Span) -> str:
    lines = scope.source.split("\n")[span.line - 1 : (span.end_line or span.line)]  # lines as lark counts them
    return "\n".join(line.rstrip() for line in lines)


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


def _sum(scope: _Scope, body: ast.Sum, owner: str) -> list[_Expanded]:
    result: list[_Expanded] = []
    for term in body.terms:
        for expanded in _term(scope, term, owner):
            if term.negative:
                expanded.coefficient = -expanded.coefficient
            result.append(expanded)
    return result


def _term(scope: _Scope, term: ast.Term, owner: str) -> list[_Expanded]:
    products = [_Expanded(sympy.Integer(1), [])]
    for op, factor in zip(("*",) + term.ops, term.factors):
        options = _factor(scope, factor, owner)
        if op == "/":
            products = [_Expanded(p.coefficient / _divisor(options, factor), p.factors) for p in products]
            continue
        products = [_Expanded(p.coefficient * o.coefficient, p.factors + o.factors) for p in products for o in options]
        if len(products) > MAX_TERMS:
            raise TncError(f"expanding this product gives more than {MAX_TERMS} terms", term.span)
    return products


def _divisor(options: list[_Expanded], factor: ast.Factor) -> sympy.Expr:
    if any(option.factors for option in options):
        raise TncError(
            "only a number or size(...) can divide", factor.span, "divide by scalars: x[n] / size(n) or x[n] / 2"
        )
    divisor = sympy.Add(*[option.coefficient for option in options])
    if divisor == 0:
        raise TncError("division by zero", factor.span)
    return divisor


def _factor(scope: _Scope, factor: ast.Factor, owner: str) -> list[_Expanded]:
    if isinstance(factor, ast.Number):
        return [
            _Expanded(sympy.nsimplify(factor.value) if isinstance(factor.value, int) else sympy.Float(factor.value), [])
        ]
    if isinstance(factor, ast.Paren):
        return _sum(scope, factor.body, owner)
    if isinstance(factor, ast.CallFactor):
        return [_call_factor(scope, factor)]
    return _tensor_ref(scope, factor, owner)


def _call_factor(scope: _Scope, call: ast.CallFactor) -> _Expanded:
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
    if name not in scope.patterns:
        known = ", ".join(sorted(scope.patterns)) or "none declared"
        raise TncError(f"unknown pattern {name!r}", call.name.span, f"patterns: {known}; also delta(...) and size(...)")
    pattern = scope.patterns[name]
    if len(call.args) != 3:
        raise TncError(f"pattern {name!r} takes three indices (i, o, k), got {len(call.args)}", call.span)
    expected = (pattern.value.in_size, pattern.value.out_size, pattern.value.kernel_size)
    for arg, size, role in zip(call.args, expected, pattern.legs):
        _expect_size(scope.index(arg), size, arg.span, f"index {arg.text!r} used as {role!r} of pattern {name!r}")
    return _Expanded(
        sympy.Integer(1), [Factor("pattern", name, tuple(a.text for a in call.args), call.span, pattern.value)]
    )


def _same_sizes(scope: _Scope, names: tuple[ast.Name, ...], what: str) -> None:
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


def _tensor_ref(scope: _Scope, ref: ast.TensorRef, owner: str) -> list[_Expanded]:
    name = ref.name.text
    if name in scope.arguments:
        ref, window = _unslice(scope, ref, scope.arguments[name].layout)
        legs = _ref_legs(scope, ref, scope.arguments[name].layout, f"input {name!r}")
        return [_Expanded(sympy.Integer(1), [Factor("input", name, legs, ref.span), *window])]
    if name in scope.definitions:
        ref, window = _unslice(scope, ref, scope.definitions[name].layout)
        return [_Expanded(e.coefficient, e.factors + window) for e in _inline(scope, ref, scope.definitions[name])]
    if name == owner:
        raise TncError(f"{name!r} refers to itself", ref.name.span, "a definition can only use earlier ones")
    if name in scope.later:
        raise TncError(
            f"{name!r} is defined later, at line {scope.later[name].line}",
            ref.name.span,
            "a definition can only use inputs and earlier definitions (no cycles)",
        )
    known = list(scope.arguments) + list(scope.definitions)
    hint = _suggest(name, known, "inputs and definitions so far: " + (", ".join(known) or "none"))
    raise TncError(f"unknown tensor {name!r}", ref.name.span, hint)


def _unslice(scope: _Scope, ref: ast.TensorRef, layout: Layout) -> tuple[ast.TensorRef, list[Factor]]:
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
        if not isinstance(axis, ast.SliceSpec):
            axes.append(axis)
            continue
        leg = _sliced_leg(scope, axis, legs)
        size = scope.sizes[leg]
        assert isinstance(size, int)
        try:
            start, stop, step = slicing.normalise(size, axis.start, axis.stop, axis.step)
        except TncError as error:
            raise TncError(error.message, axis.span) from None
        select = Select(size, len(range(start, stop, step)), start, step)
        full, kept = f"{leg}~{next(scope.fresh)}", f"{leg}~{next(scope.fresh)}"
        scope.sizes[full], scope.sizes[kept] = size, select.out_size
        axes.append(ast.AxisNames((ast.Name(full, axis.span),), False, axis.span))
        window += [
            Factor("select", "", (full, kept), axis.span, select),
            Factor("select", "", (leg, kept), axis.span, select),
        ]
    return replace(ref, axes=tuple(axes)), window


def _sliced_leg(scope: _Scope, axis: ast.SliceSpec, legs: tuple[str, ...]) -> str:
    if len(legs) != 1:
        raise TncError(
            "a slice in place of a grouped axis is not supported",
            axis.span,
            "name the axis's legs, e.g. (g c), and slice one of them with slice(...) on a result",
        )
    if not isinstance(scope.sizes[legs[0]], int):
        raise TncError(f"slicing {legs[0]!r} needs its size known in the file", axis.span)
    return legs[0]


def _ref_legs(scope: _Scope, ref: ast.TensorRef, layout: Layout, what: str) -> tuple[str, ...]:
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


def _inline(scope: _Scope, ref: ast.TensorRef, diagram: Diagram) -> list[_Expanded]:
    """Substitute an earlier definition: its result legs become the reference's, its summed ones fresh."""
    names = [name for axis in ref.axes for name in _axis_names(axis)]
    if len(names) != len(diagram.layout.legs):
        raise TncError(
            f"a reference to {diagram.name!r} must name its {len(diagram.layout.legs)} legs one by one, "
            f"as its left side {diagram.layout.text()} does; got {len(names)}",
            ref.span,
        )
    for leg, name in zip(diagram.layout.legs, names):
        _expect_size(scope.index(name), diagram.sizes[leg], name.span, f"leg {name.text!r} of {diagram.name!r}")
    legs = tuple(name.text for name in names)
    result = []
    for term in diagram.terms:
        mapping = dict(zip(diagram.layout.legs, legs))
        for leg in term.summed():
            mapping[leg] = f"{leg.split('~')[0]}~{next(scope.fresh)}"
            scope.sizes[mapping[leg]] = term.size(leg)
        factors = [f.renamed(mapping) for f in term.factors]
        factors += [
            Factor("delta", "", (mapping[leg],), ref.span) for leg in diagram.layout.legs if leg not in term.outputs
        ]  # a broadcast leg is a product with ones
        result.append(_Expanded(term.coefficient, factors))
    return result


def _axis_names(axis: ast.Axis) -> tuple[ast.Name, ...]:
    if isinstance(axis, ast.SliceSpec):  # slices were replaced by _unslice; what is left is a misplaced one
        raise TncError("a slice can only stand in the index list of a tensor on the right side", axis.span)
    return axis.names


def _transform_def(scope: _Scope, decl: ast.TransformDef) -> None:
    scope.declare(decl.name, "definition")
    diagram = _evaluate(scope, decl.call, decl.name.text, _text(scope, decl.span))
    scope.definitions[decl.name.text] = replace(diagram, span=decl.span)


@dataclass(frozen=True)
class _CallArgs:
    """A transform call's arguments: the diagram it acts on, its other positional names and its keywords."""

    diagram: Diagram
    names: tuple[ast.Name, ...]
    keywords: dict[str, ast.KwArg]

    def word(self, key: str, default: str | None, choices: tuple[str, ...] | None = None) -> str:
        if key not in self.keywords:
            if default is None:
                raise TncError(f"missing keyword {key}=", None)
            return default
        kwarg = self.keywords[key]
        if not isinstance(kwarg.value, ast.Name):
            raise TncError(f"{key}= takes a name", kwarg.span)
        if choices is not None and kwarg.value.text not in choices:
            raise TncError(f"unknown {key} {kwarg.value.text!r}", kwarg.value.span, "valid: " + ", ".join(choices))
        return kwarg.value.text


# Each transform: its positional arguments after the diagram, and its keywords.
_SIGNATURES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "vjp": (("input",), ("cotangent",)),
    "jvp": (("input",), ("tangent",)),
    "jacobian": (("input",), ()),
    "kfac": (("weight",), ("batch", "approx")),
    "kfac_grad": (("weight",), ("batch", "approx", "cotangent")),
    "slice": ((), ()),  # keywords: the legs to restrict
    "sample": ((), ("index", "p")),
}


def _evaluate(scope: _Scope, call: ast.Call, name: str, source: str) -> Diagram:
    transform = call.name.text
    if transform not in _TRANSFORMS:
        raise TncError(f"unknown transform {transform!r}", call.name.span, "transforms: " + ", ".join(_TRANSFORMS))
    if transform not in _SIGNATURES:
        raise TncError(
            f"transform {transform!r} is not supported yet", call.name.span, "supported: " + ", ".join(_SIGNATURES)
        )
    args = _call_args(scope, call, _SIGNATURES[transform], name)
    if args.diagram.samplers and transform not in ("slice", "sample"):
        raise TncError(
            f"{transform}() of a sampled diagram: derive first, then sample",
            call.span,
            f"write sample({transform}(...), ...) instead of {transform}(sample(...), ...)",
        )
    try:
        diagram = _DERIVE[transform](scope, args, name, call.span, source)
    except TncError as error:
        raise error if error.span else TncError(error.message, call.span, error.hint) from None
    _register_new_arguments(scope, diagram, call.span)
    return diagram


def _call_args(
    scope: _Scope, call: ast.Call, signature: tuple[tuple[str, ...], tuple[str, ...]], name: str
) -> _CallArgs:
    positional = [a for a in call.args if not isinstance(a, ast.KwArg)]
    keywords: dict[str, ast.KwArg] = {}
    for arg in call.args:
        if isinstance(arg, ast.KwArg):
            if arg.key.text in keywords:
                raise TncError(f"keyword {arg.key.text!r} is given twice", arg.key.span)
            keywords[arg.key.text] = arg
    wanted, allowed = signature
    if len(positional) != 1 + len(wanted):
        what = ", ".join(("diagram",) + wanted)
        raise TncError(
            f"{call.name.text}() takes ({what}) and keywords, got {len(positional)} positional arguments", call.span
        )
    for key, kwarg in keywords.items():
        if key not in allowed and call.name.text != "slice":
            raise TncError(
                f"unknown keyword {key!r} of {call.name.text}",
                kwarg.key.span,
                "keywords: " + (", ".join(allowed) or "none"),
            )
    target, *rest = positional
    if isinstance(target, ast.Call):
        inner = f"{target.name.text}_{name}"
        diagram = _evaluate(scope, target, inner, source="")
    else:
        diagram = _diagram(scope, target)
    names = tuple(_plain_name(a) for a in rest)
    return _CallArgs(diagram, names, keywords)


def _plain_name(arg: ast.CallArg) -> ast.Name:
    if not isinstance(arg, ast.Name):
        raise TncError("expected the name of an input here", arg.span)
    return arg


def _diagram(scope: _Scope, name: ast.Name) -> Diagram:
    if name.text in scope.definitions:
        return scope.definitions[name.text]
    if name.text in scope.later:
        raise TncError(
            f"{name.text!r} is defined later, at line {scope.later[name.text].line}",
            name.span,
            "a transform can only use earlier definitions (no cycles)",
        )
    known = list(scope.definitions)
    hint = _suggest(name.text, known, "diagrams so far: " + (", ".join(known) or "none"))
    raise TncError(f"unknown diagram {name.text!r}", name.span, hint)


def _new_name(args: _CallArgs, key: str, default: str) -> str:
    chosen = args.word(key, default)
    if any(a.name == chosen for a in args.diagram.arguments):
        span = args.keywords[key].span if key in args.keywords else None
        raise TncError(
            f"{chosen!r} is already an argument of {args.diagram.name!r}", span, f"choose another name with {key}=NAME"
        )
    return chosen


def _register_new_arguments(scope: _Scope, diagram: Diagram, span: Span) -> None:
    """New arguments (cotangents, tangents) can be used by later definitions, like inputs."""
    for argument in diagram.arguments:
        known = scope.arguments.get(argument.name)
        if known is not None and known.layout != argument.layout:
            raise TncError(
                f"argument name {argument.name!r} already stands for a tensor laid out {known.layout.text()}",
                span,
                "choose another name with cotangent= or tangent=",
            )
        scope.arguments.setdefault(argument.name, argument)


def _derive_vjp(scope: _Scope, args: _CallArgs, name: str, span: Span, source: str) -> Diagram:
    cotangent = _new_name(args, "cotangent", f"grad_{args.diagram.name}")
    return autodiff.vjp(args.diagram, args.names[0].text, cotangent, name, args.names[0].span, source)


def _derive_jvp(scope: _Scope, args: _CallArgs, name: str, span: Span, source: str) -> Diagram:
    tangent = _new_name(args, "tangent", f"tangent_{args.names[0].text}")
    return autodiff.jvp(args.diagram, args.names[0].text, tangent, name, args.names[0].span, source)


def _derive_jacobian(scope: _Scope, args: _CallArgs, name: str, span: Span, source: str) -> Diagram:
    return autodiff.jacobian(args.diagram, args.names[0].text, name, args.names[0].span, source)


def _kfac_options(args: _CallArgs) -> tuple[str, kfac.Approx]:
    batch = args.word("batch", None)
    approx = args.word("approx", "expand", kfac.APPROXIMATIONS)
    return batch, "reduce" if approx == "reduce" else "expand"


def _derive_kfac(scope: _Scope, args: _CallArgs, name: str, span: Span, source: str) -> Diagram:
    batch, approx = _kfac_options(args)
    return kfac.kfac_input(args.diagram, args.names[0].text, batch, approx, name, args.names[0].span, source)


def _derive_kfac_grad(scope: _Scope, args: _CallArgs, name: str, span: Span, source: str) -> Diagram:
    batch, approx = _kfac_options(args)
    cotangent = _new_name(args, "cotangent", f"grad_{args.diagram.name}")
    return kfac.kfac_grad(args.diagram, args.names[0].text, batch, approx, cotangent, name, args.names[0].span, source)


def _derive_slice(scope: _Scope, args: _CallArgs, name: str, span: Span, source: str) -> Diagram:
    if not args.keywords:
        raise TncError("slice() needs at least one leg=start:stop:step", span)
    layout = args.diagram.layout
    slices = {}
    for key, kwarg in args.keywords.items():
        if key not in layout.legs:
            raise TncError(f"{key!r} is not a leg of {args.diagram.name!r} {layout.text()}", kwarg.key.span)
        if not isinstance(kwarg.value, ast.SliceSpec):
            raise TncError(f"{key}= takes a slice start:stop:step", kwarg.span)
        size = args.diagram.sizes[key]
        if not isinstance(size, int):
            raise TncError(f"slicing {key!r} needs its size known in the file", kwarg.span)
        try:
            slices[key] = slicing.normalise(size, kwarg.value.start, kwarg.value.stop, kwarg.value.step)
        except TncError as error:
            raise TncError(error.message, kwarg.value.span) from None
    return slicing.slice_diagram(args.diagram, slices, name, span, source)


def _derive_sample(scope: _Scope, args: _CallArgs, name: str, span: Span, source: str) -> Diagram:
    index = args.word("index", None)
    if "p" not in args.keywords:
        raise TncError("sample() needs p=, the probability to keep each entry", span)
    p = args.keywords["p"].value
    if not isinstance(p, int | float) or isinstance(p, bool):
        raise TncError("p= takes a number in (0, 1]", args.keywords["p"].span)
    return sampling.sample_diagram(args.diagram, index, float(p), name, args.keywords["index"].span, source)


_DERIVE: dict[str, Callable[[_Scope, _CallArgs, str, Span, str], Diagram]] = {
    "vjp": _derive_vjp,
    "jvp": _derive_jvp,
    "jacobian": _derive_jacobian,
    "kfac": _derive_kfac,
    "kfac_grad": _derive_kfac_grad,
    "slice": _derive_slice,
    "sample": _derive_sample,
}


_STATEMENTS: dict[type, Callable[[_Scope, Any], None]] = {
    ast.IndexDecl: _index_decl,
    ast.PatternDecl: _pattern_decl,
    ast.InputDecl: _input_decl,
    ast.Definition: _definition,
    ast.TransformDef: _transform_def,
}
