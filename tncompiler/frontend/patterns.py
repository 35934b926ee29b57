"""Pattern declarations: their arguments, padding arithmetic, output sizes and the size rules of open sizes."""

from __future__ import annotations

from dataclasses import replace

import sympy

from tncompiler.errors import TncError
from tncompiler.frontend import ast
from tncompiler.frontend.scope import DeclaredPattern, Scope
from tncompiler.ir.values import ConvPattern, Size, SizeRule, out_size, size_symbol

__all__ = ["declare_pattern", "PATTERN_KINDS", "CONV_ARGS"]

PATTERN_KINDS = ("conv",)
CONV_ARGS = ("stride", "padding", "dilation")

_ConvArg = int | tuple[int, int] | str


def declare_pattern(scope: Scope, decl: ast.PatternDecl) -> None:
    """`pattern p(i, o, k) = conv(stride=2, ...)`: checked, and o's size inferred or checked."""
    scope.declare(decl.name, "pattern")
    i, o, k = _legs(decl)
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
    scope.patterns[decl.name.text] = DeclaredPattern((i.text, o.text, k.text), value)


def _legs(decl: ast.PatternDecl) -> tuple[ast.Name, ast.Name, ast.Name]:
    if decl.kind.text not in PATTERN_KINDS:
        raise TncError(
            f"unknown pattern kind {decl.kind.text!r}", decl.kind.span, "valid kinds: " + ", ".join(PATTERN_KINDS)
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
    return i, o, k


def _conv_args(args: tuple[ast.PatternArg, ...]) -> dict[str, _ConvArg]:
    seen: dict[str, _ConvArg] = {}
    for arg in args:
        key = arg.key.text
        if key not in CONV_ARGS:
            raise TncError(
                f"unknown argument {key!r} of conv", arg.key.span, "valid arguments: " + ", ".join(CONV_ARGS)
            )
        if key in seen:
            raise TncError(f"argument {key!r} is given twice", arg.key.span)
        if key == "padding":
            _check_padding_value(arg)
        else:
            _check_count(key, arg)
        seen[key] = arg.value
    return seen


def _check_count(key: str, arg: ast.PatternArg) -> None:
    """stride= and dilation= are positive integers."""
    if not isinstance(arg.value, int):
        raise TncError(f"{key} must be an integer", arg.value_span, f"write {key}=1, {key}=2, ...")
    if arg.value < 1:
        raise TncError(
            f"{key} must be at least 1, got {arg.value}", arg.value_span, f"{key}=1 means no {key} (the default)"
        )


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


def _padding(padding: _ConvArg, stride: int, dilation: int, kernel: int, decl: ast.PatternDecl) -> tuple[int, int]:
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


def _output_size(scope: Scope, o: ast.Name, value: ConvPattern, decl: ast.PatternDecl) -> ConvPattern:
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


def _derived_symbol(scope: Scope, o: ast.Name, value: ConvPattern, decl: ast.PatternDecl) -> sympy.Symbol:
    """One symbol per output-size formula: patterns that agree on it share it (and their o indices their size)."""
    formula = sympy.sympify(value.out_size)
    if formula not in scope.derived:
        scope.derived[formula] = size_symbol(o.text)
        rule_legs = (decl.legs[0].text, o.text)
        scope.rules.append(SizeRule(decl.name.text, rule_legs, replace(value, out_size=scope.derived[formula])))
    return scope.derived[formula]


def _declared_output(scope: Scope, o: ast.Name, value: ConvPattern, decl: ast.PatternDecl) -> ConvPattern:
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
