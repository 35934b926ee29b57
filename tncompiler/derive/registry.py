"""The transforms a `.tnd` file can call, in one table: name, arguments, keywords, builder and a line of doc."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tncompiler.derive import autodiff, kfac, sampling, slicing
from tncompiler.derive.arguments import CallArgs
from tncompiler.errors import Span, TncError
from tncompiler.frontend import ast
from tncompiler.ir.network import Diagram
from tncompiler.ir.slices import normalise

__all__ = ["Transform", "Builder", "TRANSFORMS"]

# A builder: (the call's operands, the new diagram's name, the call's span, the statement's text) -> the diagram.
Builder = Callable[[CallArgs, str, Span, str], Diagram]


@dataclass(frozen=True)
class Transform:
    """A transform of the language, called as `name(diagram, *arguments, **keywords)`."""

    name: str
    arguments: tuple[str, ...]  # the roles of the positional arguments after the diagram
    keywords: tuple[str, ...] | None  # None: any (slice's keywords are the legs it restricts; its builder checks them)
    builder: Builder
    doc: str
    of_sampled: bool = False  # it may act on a sampled diagram; the others come first (derive, then sample)

    def signature(self) -> str:
        """The positional arguments, as an error message lists them: `diagram, input`."""
        return ", ".join(("diagram",) + self.arguments)


def _vjp(args: CallArgs, name: str, span: Span, source: str) -> Diagram:
    cotangent = args.new_name("cotangent", f"grad_{args.diagram.name}")
    return autodiff.vjp(args.diagram, args.names[0].text, cotangent, name, args.names[0].span, source)


def _jvp(args: CallArgs, name: str, span: Span, source: str) -> Diagram:
    tangent = args.new_name("tangent", f"tangent_{args.names[0].text}")
    return autodiff.jvp(args.diagram, args.names[0].text, tangent, name, args.names[0].span, source)


def _jacobian(args: CallArgs, name: str, span: Span, source: str) -> Diagram:
    return autodiff.jacobian(args.diagram, args.names[0].text, name, args.names[0].span, source)


def _kfac_options(args: CallArgs) -> tuple[str, kfac.Approx]:
    batch = args.word("batch", None)
    approx = args.word("approx", "expand", kfac.APPROXIMATIONS)
    return batch, "reduce" if approx == "reduce" else "expand"


def _kfac(args: CallArgs, name: str, span: Span, source: str) -> Diagram:
    batch, approx = _kfac_options(args)
    return kfac.kfac_input(args.diagram, args.names[0].text, batch, approx, name, args.names[0].span, source)


def _kfac_grad(args: CallArgs, name: str, span: Span, source: str) -> Diagram:
    batch, approx = _kfac_options(args)
    cotangent = args.new_name("cotangent", f"grad_{args.diagram.name}")
    return kfac.kfac_grad(args.diagram, args.names[0].text, batch, approx, cotangent, name, args.names[0].span, source)


def _slice(args: CallArgs, name: str, span: Span, source: str) -> Diagram:
    if not args.keywords:
        raise TncError("slice() needs at least one leg=start:stop:step", span)
    slices = {key: _leg_slice(args, key, kwarg) for key, kwarg in args.keywords.items()}
    return slicing.slice_diagram(args.diagram, slices, name, span, source)


def _leg_slice(args: CallArgs, key: str, kwarg: ast.KwArg) -> tuple[int, int, int]:
    """`o1=0:8`: a leg of the diagram, of a size known in the file, and a slice that keeps something."""
    layout = args.diagram.layout
    if key not in layout.legs:
        raise TncError(f"{key!r} is not a leg of {args.diagram.name!r} {layout.text()}", kwarg.key.span)
    if not isinstance(kwarg.value, ast.SliceSpec):
        raise TncError(f"{key}= takes a slice start:stop:step", kwarg.span)
    size = args.diagram.sizes[key]
    if not isinstance(size, int):
        raise TncError(f"slicing {key!r} needs its size known in the file", kwarg.span)
    try:
        return normalise(size, kwarg.value.start, kwarg.value.stop, kwarg.value.step)
    except TncError as error:
        raise TncError(error.message, kwarg.value.span) from None


def _sample(args: CallArgs, name: str, span: Span, source: str) -> Diagram:
    index = args.word("index", None)
    at = args.keywords["index"].span
    if "p" in args.keywords and "count" in args.keywords:
        raise TncError(
            "sample() takes p= or count=, not both", args.keywords["count"].span,
            "p= keeps each entry with probability p; count= keeps exactly count entries",
        )  # fmt: skip
    if "count" in args.keywords:
        kwarg = args.keywords["count"]
        count = kwarg.value
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise TncError("count= takes a whole number of entries, at least 1", kwarg.span)
        return sampling.sample_diagram(args.diagram, index, name, at, source, count=count, count_span=kwarg.span)
    if "p" not in args.keywords:
        raise TncError("sample() needs p=, the probability to keep each entry, or count=, the number of entries", span)
    p = args.keywords["p"].value
    if not isinstance(p, int | float) or isinstance(p, bool):
        raise TncError("p= takes a number in (0, 1]", args.keywords["p"].span)
    return sampling.sample_diagram(args.diagram, index, name, at, source, p=float(p))


_ALL = (
    Transform("vjp", ("input",), ("cotangent",), _vjp, "Σ over y's legs of cotangent · ∂y/∂x, laid out like x"),
    Transform("jvp", ("input",), ("tangent",), _jvp, "Σ over x's legs of ∂y/∂x · tangent, laid out like y"),
    Transform("jacobian", ("input",), (), _jacobian, "∂y/∂x: y's legs, then x's (primed where they clash)"),
    Transform("kfac", ("weight",), ("batch", "approx"), _kfac, "KFAC's input-based factor `[groups..., (in), (in')]`"),
    Transform(
        "kfac_grad",
        ("weight",),
        ("batch", "approx", "cotangent"),
        _kfac_grad,
        "KFAC's output-gradient factor `[groups..., (out), (out')]`",
    ),
    Transform("slice", (), None, _slice, "y restricted; the restricted legs get primed names", of_sampled=True),
    Transform(
        "sample",
        (),
        ("index", "p", "count"),
        _sample,
        "tensor dropout on the summed index c, an unbiased estimate of z: each entry kept with probability P (scaled "
        "by 1/P), or K distinct entries drawn uniformly (scaled by \\|c\\|/K)",
        of_sampled=True,
    ),
)  # docs/language.md's table of transforms shows each doc (tests/test_structure.py)
TRANSFORMS: dict[str, Transform] = {transform.name: transform for transform in _ALL}
