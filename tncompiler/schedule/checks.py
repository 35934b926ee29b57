"""The start of every function: argument checks, call-time sizes, the device and dtype.

Checks cost little on the common path: one condition tests every argument's type, rank, dtype and device, and one
comparison of whole shapes tests every size; only when one fails does a helper look at each argument in turn and
raise a ValueError that names the function, the argument, the axis and the index."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sympy

from tncompiler.binding import AxisSize, CheckAxis, CheckRule, DerivedSize, KeywordSize, SolvedSize, axis_size
from tncompiler.ir.network import Argument
from tncompiler.ir.values import Size, SizeRule
from tncompiler.schedule.context import Context
from tncompiler.schedule.ops import (
    Assign,
    Attr,
    BinOp,
    Branch,
    Chain,
    Effect,
    Expr,
    Index,
    Lit,
    Name,
    SizeOf,
    Tuple,
    Unary,
    call,
    method,
)

__all__ = ["checks", "device_and_dtype"]


def checks(ctx: Context) -> None:
    """Argument checks, bindings of the call-time sizes, size checks, and the nonzero sizes results divide by."""
    _arguments(ctx)
    for step in ctx.binding.steps:
        if not isinstance(step, CheckAxis | CheckRule):
            _STEPS[type(step)](ctx, step)
    _shapes(ctx)
    for step in ctx.binding.steps:
        if isinstance(step, CheckRule):
            _check_rule(ctx, step)
    for symbol in _divisors(ctx):
        ctx.emit(
            Effect(call(ctx.helper("_nonzero"), Lit(ctx.name), Lit(str(symbol)), Name(ctx.symbols[symbol])), "check")
        )


def _all(conditions: list[Expr]) -> Expr:
    return _balanced("and", conditions)


def _any(conditions: list[Expr]) -> Expr:
    return _balanced("or", conditions)


def _balanced(op: str, conditions: list[Expr]) -> Expr:
    """`c0 op c1 op ...` as a tree of depth log2(n), not a chain of depth n: a function of hundreds of arguments has
    thousands of conditions, and the walks over expressions recurse (`and`/`or` are associative, so the grouping
    changes nothing; the printer writes the operands flat, left to right)."""
    if len(conditions) == 1:
        return conditions[0]
    middle = len(conditions) // 2
    return BinOp(op, _balanced(op, conditions[:middle]), _balanced(op, conditions[middle:]))


def _arguments(ctx: Context) -> None:
    """Type, rank, a dense layout, one real floating dtype, one device: tested in one condition, diagnosed by
    `_check_arguments`. The layouts, dtypes and devices are chained comparisons (each read once), and a rank is
    tested here only where something reads the argument's axes before the shape check compares its whole shape
    (`_check_shapes` diagnoses a wrong rank too): 0.2 us of the 1.4 us a tiny convolution's checks took."""
    arguments = ctx.diagram.arguments
    if not arguments:
        return
    params = [Name(ctx.args[a.name]) for a in arguments]
    first, compared = params[0], _compared(ctx)
    conditions: list[Expr] = [call("isinstance", p, Attr(Name("torch"), "Tensor")) for p in params]
    conditions += [
        BinOp("==", method(p, "dim"), Lit(len(a.layout.axes)))
        for p, a in zip(params, arguments)
        if a.name not in compared
    ]
    # a sparse tensor passes every other test and fails inside a kernel
    conditions.append(Chain("==", (*(Attr(p, "layout") for p in params), Attr(Name("torch"), "strided"))))
    conditions.append(method(first, "is_floating_point"))
    if len(params) > 1:
        conditions += [Chain("==", tuple(Attr(p, "dtype") for p in params))]
        conditions += [Chain("==", tuple(Attr(p, "device") for p in params))]
    described = Tuple(tuple(Tuple((Lit(a.name), p, _axes_text(a))) for p, a in zip(params, arguments)))
    diagnose = Effect(call(ctx.helper("_check_arguments"), Lit(ctx.name), described), "check")
    ctx.emit(Branch(((Unary("not", _all(conditions)), (diagnose,)),), "check"))


def _compared(ctx: Context) -> set[str]:
    """Arguments whose whole shape `_shapes` compares and whose axes no binding reads before it."""
    read = {s.argument for s in ctx.binding.steps if isinstance(s, AxisSize)}
    return {a.name for a in _checked(ctx)} - read


def _checked(ctx: Context) -> list[Argument]:
    """The arguments whose shape `_shapes` compares: those with an axis the binding checks."""
    steps = ctx.binding.steps
    return [a for a in ctx.diagram.arguments if any(isinstance(s, CheckAxis) and s.argument == a.name for s in steps)]


def _axes_text(argument: Argument) -> Tuple:
    return Tuple(tuple(Lit(argument.layout.axis_text(k)) for k in range(len(argument.layout.axes))))


def _shapes(ctx: Context) -> None:
    """Every argument's whole shape against its sizes, once all are bound; `_check_shapes` names the axis."""
    checked = _checked(ctx)
    if not checked:
        return
    expected = {
        a.name: Tuple(tuple(SizeOf(axis_size(ctx.diagram, a, k)) for k in range(len(a.layout.axes)))) for a in checked
    }
    params = {a.name: Name(ctx.args[a.name]) for a in checked}
    condition = _any([BinOp("!=", Attr(params[a.name], "shape"), expected[a.name]) for a in checked])
    described = Tuple(tuple(Tuple((Lit(a.name), params[a.name], _axes_text(a), expected[a.name])) for a in checked))
    diagnose = Effect(call(ctx.helper("_check_shapes"), Lit(ctx.name), described), "check")
    ctx.emit(Branch(((condition, (diagnose,)),), "check"))


def _bound(ctx: Context, symbol: sympy.Symbol, where: str) -> str:
    var = ctx.symbols.get(symbol) or ctx.var(str(symbol))
    ctx.symbols[symbol], ctx.where[symbol] = var, where
    return var


def _layout_text(ctx: Context, argument: str, axis: int) -> str:
    return next(a.layout for a in ctx.diagram.arguments if a.name == argument).axis_text(axis)


def _axis(ctx: Context, step: AxisSize) -> None:
    text = _layout_text(ctx, step.argument, step.axis)
    var = _bound(ctx, step.symbol, f"argument {step.argument!r} axis {step.axis} ({text})")
    actual = Index(Attr(Name(ctx.args[step.argument]), "shape"), (Lit(step.axis),))
    if step.known == 1:
        ctx.emit(Assign(var, actual, "bind", f"index {step.symbol}, bound at call time"))
        return
    bound = call(
        ctx.helper("_bind_size"),
        Lit(ctx.name),
        Lit(step.argument),
        Lit(step.axis),
        Lit(text),
        actual,
        SizeOf(step.known),
    )
    ctx.emit(Assign(var, bound, "bind"))


def _keyword(ctx: Context, step: KeywordSize) -> None:
    var = _bound(ctx, step.symbol, f"keyword {ctx.symbols[step.symbol]}=")
    ctx.emit(Assign(var, call(ctx.helper("_size_keyword"), Lit(ctx.name), Lit(var), Name(var)), "bind"))


def _rule(rule: SizeRule) -> tuple[Expr, ...]:
    p = rule.conv
    return tuple(Lit(v) for v in (rule.pattern, p.kernel_size, p.stride, p.pad_left, p.pad_right, p.dilation))


def _where(ctx: Context, size: Size, index: str) -> str:
    return ctx.where.get(size, f"index {index}") if isinstance(size, sympy.Symbol) else f"index {index}"


def _derived(ctx: Context, step: DerivedSize) -> None:
    i = step.rule.conv.in_size
    where = _where(ctx, i, step.rule.legs[0])
    var = _bound(ctx, step.symbol, f"index {step.rule.legs[1]} (from pattern {step.rule.pattern!r})")
    value = call(ctx.helper("_out_size"), Lit(ctx.name), Lit(where), SizeOf(i), *_rule(step.rule))
    ctx.emit(Assign(var, value, "bind"))


def _solved(ctx: Context, step: SolvedSize) -> None:
    o = step.rule.conv.out_size
    where = _where(ctx, o, step.rule.legs[1])
    var = _bound(ctx, step.symbol, f"index {step.rule.legs[0]} (from pattern {step.rule.pattern!r})")
    value = call(ctx.helper("_in_size"), Lit(ctx.name), Lit(where), SizeOf(o), *_rule(step.rule))
    ctx.emit(Assign(var, value, "bind"))


def _check_rule(ctx: Context, step: CheckRule) -> None:
    rule = step.rule
    i, o = rule.conv.in_size, rule.conv.out_size
    where_i, where_o = _where(ctx, i, rule.legs[0]), _where(ctx, o, rule.legs[1])
    if not isinstance(o, sympy.Symbol):
        where_o = f"index {rule.legs[1]} (size {o} in the file)"
    value = call(
        ctx.helper("_check_out_size"), Lit(ctx.name), Lit(where_o), SizeOf(o), Lit(where_i), SizeOf(i), *_rule(rule)
    )
    ctx.emit(Effect(value, "check"))


_STEPS: dict[type, Callable[[Context, Any], None]] = {
    AxisSize: _axis,
    KeywordSize: _keyword,
    DerivedSize: _derived,
    SolvedSize: _solved,
}


def _divisors(ctx: Context) -> list[sympy.Symbol]:
    """The call-time sizes some term's coefficient divides by."""
    found: set[sympy.Symbol] = set()
    for term in ctx.diagram.terms:
        found |= sympy.fraction(sympy.sympify(term.coefficient))[1].free_symbols
    return sorted((s for s in found if s in ctx.symbols), key=str)


def device_and_dtype(ctx: Context) -> None:
    """`device` and `dtype`: those of the first argument, or of the keywords of a function without arguments (torch's
    defaults where they are None); the peephole pass drops the first argument's where nothing uses them."""
    if ctx.diagram.arguments:
        first = Name(ctx.args[ctx.diagram.arguments[0].name])
        ctx.emit(Assign("device", Attr(first, "device"), "device"))
        ctx.emit(Assign("dtype", Attr(first, "dtype"), "device"))
    else:  # the caller's choice, as for torch.zeros: keywords `dtype=` and `device=` (see the scheduler)
        ctx.emit(Assign("device", call(ctx.helper("_device_keyword"), Lit(ctx.name), Name("device")), "check"))
        ctx.emit(Assign("dtype", call(ctx.helper("_dtype_keyword"), Lit(ctx.name), Name("dtype")), "check"))
