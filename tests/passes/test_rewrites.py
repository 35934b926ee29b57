"""The simplify pass's rewrite rules (tncompiler/passes/simplify.py, RULES).

Per rule: a test that it fires on a realistic network (a convolution or a diagram derived from one: vjp, jvp,
kfac), and one that it does not fire just outside its condition. Then: rewritten and unrewritten networks agree
numerically over a hyper-parameter grid and on random networks (hypothesis), every intermediate network lints,
and the generated code loses the constants that the rules remove.

Rules are reached by the names the rule table gives them; notes are recognised by their prefix
(`strided-reshape` writes `dense:` or `down-sampling:`).
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest
import sympy
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tncompiler.api import build_program, compile_source, load_source
from tncompiler.driver import Compilation
from tncompiler.ir.network import Diagram, Network, Program
from tncompiler.ir.values import ConvPattern, Factor, MergeOp, Select, SliceOp, SplitOp, SqueezeOp, ViewOp
from tncompiler.passes.pipeline import Stage, run_pipeline
from tncompiler.passes.simplify import RULES, Rewrite

Tensor = torch.Tensor
TOLERANCE = 1e-10  # float64: max abs error / max abs reference
BATCH = 3
RULE: dict[str, Callable[[Network, int, bool], Rewrite | None]] = {rule.name: rule.apply for rule in RULES}
# The note prefixes each rule writes.
PREFIXES = {
    "squeeze": ("squeeze:",),
    "kernel-one": ("kernel-one:",),
    "output-one": ("output-one:",),
    "strided-reshape": ("dense:", "down-sampling:"),
    "select-identity": ("select-identity:",),
    "select-slice": ("select-slice:",),
    "copy-tensor": ("copy-tensor:",),
    "merge": ("merge:",),
    "narrow-output": ("narrow-output:",),
}


def test_rule_table_has_the_rules_under_test() -> None:
    assert set(PREFIXES) <= set(RULE)


# -- sources ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dim:
    """One spatial dimension of a convolution: input size I, kernel K, stride S, padding P, dilation D."""

    I: int  # noqa: E741 - the spec's name
    K: int
    S: int = 1
    P: int | tuple[int, int] = 0
    D: int = 1

    def pads(self) -> tuple[int, int]:
        return self.P if isinstance(self.P, tuple) else (self.P, self.P)

    @property
    def O(self) -> int:  # noqa: E743 - the spec's name
        left, right = self.pads()
        return (self.I + left + right - self.D * (self.K - 1) - 1) // self.S + 1

    def padding(self) -> str:
        return f"({self.P[0]}, {self.P[1]})" if isinstance(self.P, tuple) else str(self.P)


TRANSFORMS = {
    "gx": "gx = vjp(y, x)",
    "gw": "gw = vjp(y, w)",
    "jx": "jx = jvp(y, x)",
    "jw": "jw = jvp(y, w)",
    "A": "A = kfac(y, w, batch=n, approx=reduce)",
    "E": "E = kfac(y, w, batch=n, approx=expand)",
    "G": "G = kfac_grad(y, w, batch=n, approx=reduce)",
}


def conv_text(
    dims: list[Dim],
    transforms: tuple[str, ...] = (),
    *,
    groups: int = 1,
    c: int = 2,
    d: int = 2,
    delta: bool = False,
    unit: str | None = None,
    batch: int | None = None,
) -> str:
    """A batched (grouped) convolution `y` over `dims`, then the named transforms of TRANSFORMS.

    `delta`: w's in-channel leg is a second index e, tied to c by delta(c, e). `unit`: an index u of size 1 on
    x and w ("summed") or on x and y ("open"). `batch`: the size of n, or None to bind it at call time.
    """
    i, o, k = ([f"{a}{j + 1}" for j in range(len(dims))] for a in "iok")
    gc, gd = ("(g c)", "(g d)") if groups > 1 else ("c", "d")
    lines = [
        "index n" if batch is None else f"index n = {batch}",
        f"index c = {c}, d = {d}" + (f", g = {groups}" if groups > 1 else ""),
    ]
    lines.append("index " + ", ".join(f"{a} = {dim.I}, {b} = {dim.K}" for a, b, dim in zip(i, k, dims)))
    lines += [
        f"pattern p{j + 1}({i[j]}, {o[j]}, {k[j]}) = conv(stride={dim.S}, padding={dim.padding()}, dilation={dim.D})"
        for j, dim in enumerate(dims)
    ]
    x_legs, w_legs, y_legs = ["n", gc, *i], [gd, "e" if delta else "c", *k], ["n", gd, *o]
    if unit is not None:
        lines.append("index u = 1")
        x_legs.append("u")
        (w_legs if unit == "summed" else y_legs).append("u")
    if delta:
        lines.append("index e = c")
    x, w = f"x[{', '.join(x_legs)}]", f"w[{', '.join(w_legs)}]"
    lines += [f"input {x}", f"input {w}"]
    factors = [x] + [f"p{j + 1}({i[j]}, {o[j]}, {k[j]})" for j in range(len(dims))]
    factors += ["delta(c, e)"] * delta + [w]
    lines.append(f"y[{', '.join(y_legs)}] = " + " * ".join(factors))
    lines += [TRANSFORMS[name] for name in transforms]
    return "\n".join(lines) + "\n"


def channels_last_text(dim: Dim) -> str:
    """A 1-d convolution with channels last: x[n, i, c], w[d, k, c]."""
    return (
        f"index n\nindex c = 3, d = 2, i = {dim.I}, k = {dim.K}\n"
        f"pattern p(i, o, k) = conv(stride={dim.S}, padding={dim.padding()}, dilation={dim.D})\n"
        "input x[n, i, c]\ninput w[d, k, c]\n"
        "y[n, o, d] = x[n, i, c] * p(i, o, k) * w[d, k, c]\n"
    )


# -- helpers ----------------------------------------------------------------------------------------------------


@functools.cache
def program_of(text: str) -> Program:
    return build_program(text, "rewrites.tnd")


@functools.cache
def modules(text: str) -> tuple[types.ModuleType, types.ModuleType]:
    """The compiled file, rewritten and not; each source is compiled once per session."""
    return load_source(text, "rewrites.tnd", rewrite=True), load_source(text, "rewrites.tnd", rewrite=False)


def stages(diagram: Diagram) -> dict[str, Stage]:
    """Every pass, each intermediate network linted."""
    return {stage.name: stage for stage in run_pipeline(diagram, lint=True)}


def simplified(diagram: Diagram) -> tuple[Diagram, tuple[str, ...]]:
    stage = stages(diagram)["simplify"]
    return stage.diagram, stage.changes


def fired(notes: tuple[str, ...], rule: str) -> list[str]:
    return [note for note in notes if note.startswith(PREFIXES[rule])]


def only_term(diagram: Diagram) -> Network:
    assert len(diagram.terms) == 1, diagram.terms
    return diagram.terms[0]


def position(net: Network, kind: str, name: str | None = None) -> int:
    return next(k for k, f in enumerate(net.factors) if f.kind == kind and (name is None or f.name == name))


def kinds(net: Network) -> list[str]:
    return [f.kind for f in net.factors]


def view_ops(factor: Factor) -> tuple[ViewOp, ...]:
    assert factor.view is not None, factor
    return factor.view.ops


def apply(net: Network, rule: str, kind: str = "pattern") -> Rewrite:
    """`rule` at the first factor of `kind`; it must fire."""
    rewrite = RULE[rule](net, position(net, kind), True)
    assert rewrite is not None, f"{rule} does not fire on {net}"
    return rewrite


def factor_named(net: Network, name: str) -> list[Factor]:
    return [f for f in net.factors if f.name == name]


def arguments(diagram: Diagram, batch: int = BATCH, seed: int = 0, sizes: dict[str, int] | None = None) -> list[Tensor]:
    """Random float64 arguments in the diagram's layouts; call-time sizes from `sizes`, else `batch`."""
    generator = torch.Generator().manual_seed(seed)
    bound = sizes or {}
    tensors = []
    for argument in diagram.arguments:
        shape = []
        for axis in argument.layout.axes:
            size = sympy.Integer(1)
            for leg in axis:
                leg_size = sympy.sympify(diagram.sizes[leg])
                size *= leg_size.subs({symbol: bound.get(symbol.name, batch) for symbol in leg_size.free_symbols})
            shape.append(int(size))
        tensors.append(torch.randn(shape, generator=generator, dtype=torch.float64))
    return tensors


def relative_error(actual: Tensor, expected: Tensor) -> float:
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = expected.abs().max().item() or 1.0
    return float((actual - expected).abs().max().item() / scale)


def assert_agree(
    text: str, names: tuple[str, ...] | None = None, batch: int = BATCH, sizes: dict[str, int] | None = None
) -> None:
    """Each diagram (or those named) gives the same result rewritten and unrewritten."""
    rewritten, plain = modules(text)
    for diagram in program_of(text).diagrams:
        if names is None or diagram.name in names:
            args = arguments(diagram, batch, sizes=sizes)
            error = relative_error(getattr(rewritten, diagram.name)(*args), getattr(plain, diagram.name)(*args))
            assert error <= TOLERANCE, f"{diagram.name}: relative error {error:.3g}"


def on_every_pattern(net: Network, rule: str) -> Network:
    """`net` after `rule` was applied to each of its patterns (it must fire on every one)."""
    while "pattern" in kinds(net):
        rewrite = RULE[rule](net, position(net, "pattern"), True)
        assert rewrite is not None, f"{rule} does not fire on {net}"
        net = rewrite.value
    return net


def with_term(text: str, name: str, term: Network) -> tuple[Program, Diagram]:
    """The file's program with diagram `name` holding `term` (a network a rule has already rewritten)."""
    program = program_of(text)
    diagram = replace(program.diagram(name), terms=(term,))
    return replace(program, diagrams=tuple(diagram if d.name == name else d for d in program.diagrams)), diagram


def assert_program_agrees(program: Program, text: str, name: str) -> str:
    """`program`'s diagram `name`, compiled with rewrites, equals the file's unrewritten one; returns the code."""
    code = Compilation(program, text).text
    module = types.ModuleType("pre_rewritten")
    exec(compile(code, "<pre-rewritten>", "exec"), module.__dict__)  # the compiler's own output
    args = arguments(program.diagram(name))
    error = relative_error(getattr(module, name)(*args), getattr(modules(text)[1], name)(*args))
    assert error <= TOLERANCE, f"{name}: relative error {error:.3g}"
    return code


def function_code(code: str, name: str) -> str:
    """The generated function `name`, without its docstring (which lists the rewrites)."""
    body = code[code.index(f"\ndef {name}(") :]
    end = body.find("\n\n\n")
    body = body if end < 0 else body[:end]
    first, _, rest = body.partition('"""')
    return first + rest.partition('"""')[2]


CONSTANT_BUILDERS = ("_conv_pattern(", "_select(", "_delta(")


def constants_built(code: str, name: str) -> int:
    function = function_code(code, name)
    return sum(function.count(builder) for builder in CONSTANT_BUILDERS)


# -- squeeze ----------------------------------------------------------------------------------------------------


def test_squeeze_fires_on_unit_channels_of_a_depthwise_conv() -> None:
    """Depthwise (c = 1 per group): c is squeezed off x and w, and no factor keeps a size-1 leg."""
    text = conv_text([Dim(7, 3, 1, 1)], ("gx", "gw"), groups=2, c=1)
    for name in ("y", "gx", "gw"):
        diagram, notes = simplified(program_of(text).diagram(name))
        assert fired(notes, "squeeze"), notes
        term = only_term(diagram)
        assert all(term.size(leg) != 1 for f in term.factors for leg in f.legs)
        assert any(isinstance(op, SqueezeOp) for f in term.factors if f.view for op in view_ops(f))
    assert_agree(text)


def test_squeeze_drops_an_open_unit_leg_and_the_result_keeps_its_axis() -> None:
    text = conv_text([Dim(7, 3, 2, 1)], ("gx", "gw"), unit="open")
    diagram, notes = simplified(program_of(text).diagram("y"))
    assert any("legs u of x" in note for note in fired(notes, "squeeze")), notes
    assert "u" not in only_term(diagram).outputs and "u" in diagram.layout.legs
    assert_agree(text)
    rewritten, _ = modules(text)
    x, w = arguments(program_of(text).diagram("y"))
    assert rewritten.y(x, w).shape == (BATCH, 2, Dim(7, 3, 2, 1).O, 1)


def test_squeeze_does_not_fire_without_size_one_legs() -> None:
    """Call-time sizes are never squeezed, even when the call binds them to 1."""
    text = conv_text([Dim(7, 3, 2, 1)], ("gx", "gw", "A"))
    for diagram in program_of(text).diagrams:
        term = only_term(diagram)
        assert all(RULE["squeeze"](term, k, True) is None for k in range(len(term.factors)))
        assert not fired(simplified(diagram)[1], "squeeze")
    assert_agree(text, batch=1)


# -- kernel-one -------------------------------------------------------------------------------------------------

ONE_BY_ONE = {  # K = 1 convolutions where no window reaches the padding: (dim, expected Select)
    "stride2": (Dim(8, 1, 2), Select(8, 4, 0, 2)),
    "stride3": (Dim(8, 1, 3), Select(8, 3, 0, 3)),
    "stride1": (Dim(6, 1, 1), Select(6, 6, 0, 1)),
    "right-pad-never-reached": (Dim(9, 1, 2, (0, 1)), Select(9, 5, 0, 2)),
}


@pytest.mark.parametrize("case", list(ONE_BY_ONE))
def test_kernel_one_rule_fires(case: str) -> None:
    """Π with K = 1 -> select(i, o) with start −P and step S, and a copy tensor on the size-1 k leg."""
    dim, select = ONE_BY_ONE[case]
    term = only_term(program_of(conv_text([dim])).diagram("y"))
    rewrite = RULE["kernel-one"](term, position(term, "pattern"), True)
    assert rewrite is not None
    assert rewrite.note.startswith("kernel-one:")
    rewrite.value.lint()
    new = rewrite.value.factors[position(rewrite.value, "select")]
    assert new.legs == ("i1", "o1") and new.pattern == select
    assert "pattern" not in kinds(rewrite.value)


def test_kernel_one_then_the_pipeline_makes_a_strided_slice_of_x() -> None:
    """A 1×1 conv with stride 2: select(i, o) goes into x as x[..., 0:7:2]; no constant remains."""
    text = conv_text([Dim(8, 1, 2)])
    term = only_term(program_of(text).diagram("y"))
    program, diagram = with_term(text, "y", apply(term, "kernel-one").value)
    new, notes = simplified(diagram)
    assert fired(notes, "select-slice") and fired(notes, "squeeze"), notes
    assert kinds(only_term(new)) == ["input", "input"]
    (x,) = factor_named(only_term(new), "x")
    assert SliceOp(2, 0, 7, 2) in view_ops(x)
    code = assert_program_agrees(program, text, "y")
    assert constants_built(code, "y") == 0


@pytest.mark.parametrize("case", ["stride1", "stride2"])
def test_kernel_one_then_the_pipeline_agrees_on_derived_diagrams(case: str) -> None:
    """After kernel-one, the rest of the pipeline still computes the same weight VJP, JVP and KFAC factor."""
    dim, _ = ONE_BY_ONE[case]
    text = conv_text([dim], ("gw", "jx", "A"))
    for name in ("gw", "jx", "A"):
        term = only_term(program_of(text).diagram(name))
        program, diagram = with_term(text, name, on_every_pattern(term, "kernel-one"))
        new, _ = simplified(diagram)
        assert "pattern" not in kinds(only_term(new))
        assert_program_agrees(program, text, name)


PADDED_ONE_BY_ONE = {  # K = 1 with a window in the padding: not a pure selection
    "padding1": Dim(8, 1, 1, 1),
    "right-pad-reached": Dim(8, 1, 1, (0, 1)),
    "stride2-right-pad-reached": Dim(8, 1, 2, (0, 1)),
}


@pytest.mark.parametrize("case", list(PADDED_ONE_BY_ONE))
def test_kernel_one_does_not_fire_when_a_window_hits_the_padding(case: str) -> None:
    text = conv_text([PADDED_ONE_BY_ONE[case]], ("gx", "gw"))
    for diagram in program_of(text).diagrams:
        term = only_term(diagram)
        assert RULE["kernel-one"](term, position(term, "pattern"), True) is None
        _, notes = simplified(diagram)
        # narrow-output may first drop the windows that lie wholly in the padding; only then may kernel-one fire
        assert not fired(notes, "kernel-one") or fired(notes, "narrow-output")
    assert_agree(text)


# -- narrow-output ----------------------------------------------------------------------------------------------

WINDOWS_IN_PADDING = {  # windows that read no input row at all: (dim, the windows that do read one)
    "padding-beyond-kernel": (Dim(6, 2, 1, 3), (2, 9)),  # O = 11; windows 0, 1, 9 and 10 read padding only
    "strided": (Dim(7, 1, 2, (3, 3)), (2, 5)),  # O = 7; windows 0, 1 and 5, 6 read padding only
    "dilated": (Dim(5, 2, 1, 4, 3), (1, 9)),  # O = 10; window 0 reads rows −4 and −1, window 9 rows 5 and 8
}


@pytest.mark.parametrize("case", list(WINDOWS_IN_PADDING))
def test_narrow_output_keeps_the_windows_that_read_the_input(case: str) -> None:
    """In a VJP the output index is summed: windows wholly in the padding drop out of the pattern and of grad_y."""
    dim, (lo, stop) = WINDOWS_IN_PADDING[case]
    text = conv_text([dim], ("gx", "gw"))
    for name in ("gx", "gw"):
        term = only_term(program_of(text).diagram(name))
        rewrite = RULE["narrow-output"](term, position(term, "pattern"), True)
        assert rewrite is not None and f"windows o1[{lo}:{stop}]" in rewrite.note
    assert_agree(text)


def test_narrow_output_leaves_a_plain_convolution_alone() -> None:
    """Every window of a convolution whose O follows from I reads the input; the forward pass keeps o anyway."""
    text = conv_text([Dim(8, 3, 2, 1), Dim(7, 2, 1, 0, 2)], ("gx", "gw"))
    for diagram in program_of(text).diagrams:
        _, notes = simplified(diagram)
        assert not fired(notes, "narrow-output")


# -- output-one -------------------------------------------------------------------------------------------------

ONE_OUTPUT = {  # O = 1 and the one window inside the input: (dim, expected Select)
    "kernel-is-input": (Dim(5, 5), Select(5, 5, 0, 1)),
    "dilated": (Dim(7, 3, 1, 0, 3), Select(7, 3, 0, 3)),
    "stride-past-input": (Dim(6, 2, 5), Select(6, 2, 0, 1)),
}


@pytest.mark.parametrize("case", list(ONE_OUTPUT))
def test_output_one_rule_fires(case: str) -> None:
    """Π with O = 1 -> select(i, k) with start −P and step D, and a copy tensor on the size-1 o leg."""
    dim, select = ONE_OUTPUT[case]
    assert dim.O == 1
    text = conv_text([dim], ("gw",))
    term = only_term(program_of(text).diagram("y"))
    rewrite = RULE["output-one"](term, position(term, "pattern"), True)
    assert rewrite is not None and rewrite.note.startswith("output-one:")
    rewrite.value.lint()
    new = rewrite.value.factors[position(rewrite.value, "select")]
    assert new.legs == ("i1", "k1") and new.pattern == select
    program, diagram = with_term(text, "y", rewrite.value)
    assert "pattern" not in kinds(only_term(simplified(diagram)[0]))
    assert_program_agrees(program, text, "y")


NOT_ONE_OUTPUT = {
    "window-in-left-padding": Dim(3, 5, 1, 1),
    "window-in-right-padding": Dim(3, 4, 1, (0, 1)),
    "two-outputs": Dim(6, 5),
    "kernel-one-too": Dim(1, 1),  # K = 1 is kernel-one's case
}


@pytest.mark.parametrize("case", list(NOT_ONE_OUTPUT))
def test_output_one_does_not_fire_outside_its_condition(case: str) -> None:
    text = conv_text([NOT_ONE_OUTPUT[case]], ("gx",))
    for diagram in program_of(text).diagrams:
        term = only_term(diagram)
        assert RULE["output-one"](term, position(term, "pattern"), True) is None
        assert not fired(simplified(diagram)[1], "output-one")
    assert_agree(text)


# -- strided-reshape --------------------------------------------------------------------------------------------

PATCHIFY = conv_text([Dim(8, 2, 2), Dim(6, 3, 3)], ("gx", "gw", "jw", "A", "E"))


def test_dense_weight_vjp_of_a_patchify_conv_has_no_pattern() -> None:
    """K = S, P = 0, D = 1 in both dims: x splits into (o, k) per dim, and the weight VJP is one einsum."""
    diagram, notes = simplified(program_of(PATCHIFY).diagram("gw"))
    assert len([note for note in notes if note.startswith("dense:")]) == 2, notes
    term = only_term(diagram)
    assert kinds(term) == ["input", "input"]
    (x,) = factor_named(term, "x")
    assert x.legs == ("n", "c", "o1", "k1", "o2", "k2")
    assert [op for op in view_ops(x) if isinstance(op, SplitOp)] == [SplitOp(2, (4, 2)), SplitOp(4, (2, 3))]
    assert_agree(PATCHIFY)


@pytest.mark.parametrize("name", ["y", "jw", "A", "E"])
def test_dense_removes_every_pattern_of_a_patchify_conv(name: str) -> None:
    diagram, notes = simplified(program_of(PATCHIFY).diagram(name))
    assert fired(notes, "strided-reshape")
    assert all(f.kind == "input" for term in diagram.terms for f in term.factors)


FOLD = """index n, c = 2
index i = 8, k = 2
pattern p(i, o, k) = conv(stride=2)
input z[n, c, o, k]
u[n, c, i] = z[n, c, o, k] * p(i, o, k)
"""


def test_dense_splits_an_open_leg() -> None:
    """col2im of patches (no kernel: one tensor and a pattern): the open i = (o k), so the result axis is laid out
    (o k) and no pattern is left."""
    diagram, notes = simplified(program_of(FOLD).diagram("u"))
    assert len(fired(notes, "strided-reshape")) == 1
    assert diagram.layout.axes[2] == ("o", "k")
    assert "pattern" not in kinds(only_term(diagram))
    assert_agree(FOLD)


def test_the_input_vjp_of_a_patchify_conv_keeps_its_open_legs_for_the_kernel() -> None:
    """gx = vjp(y, x) of a patchify conv is a transpose convolution as written: its open i stays whole, and
    lowering gives it PyTorch's kernel (one call, where a reshape and a product copy the operands as well)."""
    diagram, notes = simplified(program_of(PATCHIFY).diagram("gx"))
    assert not fired(notes, "strided-reshape") and diagram.layout == program_of(PATCHIFY).diagram("gx").layout
    assert "conv_transpose2d(" in function_code(compile_source(PATCHIFY), "gx")
    assert_agree(PATCHIFY, ("gx",))


DOWN_SAMPLING = {  # K < S, P = 0, D = 1: (dim, the view ops x gets)
    "exact": (Dim(9, 2, 3), (SplitOp(2, (3, 3)), SliceOp(3, 0, 2, 1))),
    "tail-dropped": (Dim(13, 2, 3), (SliceOp(2, 0, 12, 1), SplitOp(2, (4, 3)), SliceOp(3, 0, 2, 1))),
    "dense-tail-dropped": (Dim(7, 2, 2), (SliceOp(2, 0, 6, 1), SplitOp(2, (3, 2)))),
}


@pytest.mark.parametrize("case", list(DOWN_SAMPLING))
def test_down_sampling_reshapes_and_narrows_x(case: str) -> None:
    dim, ops = DOWN_SAMPLING[case]
    text = conv_text([dim], ("gw", "jx", "A"))
    diagram, notes = simplified(program_of(text).diagram("y"))
    kind = "dense:" if dim.K == dim.S else "down-sampling:"
    assert [note for note in notes if note.startswith(kind)], notes
    (x,) = factor_named(only_term(diagram), "x")
    assert view_ops(x) == ops and x.legs == ("n", "c", "o1", "k1")
    for name in ("gw", "jx", "A"):
        assert "pattern" not in kinds(only_term(simplified(program_of(text).diagram(name))[0]))
    assert_agree(text)


NOT_STRIDED = {  # just outside K ≤ S, P = 0, D = 1, I ≥ O·S
    "padding1": Dim(8, 2, 2, 1),
    "left-padding": Dim(8, 2, 2, (1, 0)),
    "dilation2": Dim(9, 2, 2, 0, 2),
    "kernel-over-stride": Dim(8, 3, 2),
    "last-window-short-of-a-stride": Dim(5, 2, 3),  # I < O·S
}


@pytest.mark.parametrize("case", list(NOT_STRIDED))
def test_strided_reshape_does_not_fire_outside_its_condition(case: str) -> None:
    text = conv_text([NOT_STRIDED[case]], ("gx", "gw", "A"))
    for diagram in program_of(text).diagrams:
        term = only_term(diagram)
        assert RULE["strided-reshape"](term, position(term, "pattern"), True) is None
        assert not fired(simplified(diagram)[1], "strided-reshape")
    assert_agree(text)


@pytest.mark.parametrize("dim", [Dim(9, 2, 2), Dim(9, 2, 3)], ids=["I-not-O-times-K", "down-sampling"])
def test_strided_reshape_keeps_an_open_leg_it_cannot_split_exactly(dim: Dim) -> None:
    """The input VJP's open i splits only where I = O·S = O·K."""
    text = conv_text([dim], ("gx",))
    diagram = program_of(text).diagram("gx")
    term = only_term(diagram)
    assert RULE["strided-reshape"](term, position(term, "pattern"), True) is None
    new, notes = simplified(diagram)
    assert not fired(notes, "strided-reshape") and new.layout == diagram.layout
    assert_agree(text, ("gx",))


CALL_TIME = """index n
index c = 2, d = 3
index i, k = 1, k2 = 2, k3 = 1
pattern p(i, o, k) = conv(stride=2)
pattern q(i, o2, k2) = conv(stride=2)
pattern r(i, o3, k3) = conv(stride=2, padding=1)
pattern t(i, o4, k2) = conv(stride=3)
input x[n, c, i]
input w[d, c, k]
input w2[d, c, k2]
y[n, d, o] = x[n, c, i] * p(i, o, k) * w[d, c, k]
y2[n, d, o2] = x[n, c, i] * q(i, o2, k2) * w2[d, c, k2]
y3[n, d, o3] = x[n, c, i] * r(i, o3, k) * w[d, c, k]
u[n, c, o4, k2] = x[n, c, i] * t(i, o4, k2)
"""


@pytest.mark.parametrize("size", [8, 9])
def test_pattern_rules_on_call_time_sizes_fire_where_the_size_rule_makes_them_exact(size: int) -> None:
    """I bound at call time: O = floor((I + P − D(K − 1) − 1) / S) + 1 holds, so without padding a 1-wide kernel's
    windows all lie inside (kernel-one) and K = S tiles the first O·S rows (dense); with padding, or K < S, where the
    last window ends depends on I, and the rules leave the pattern."""
    cases = (("y", "kernel-one", True), ("y2", "strided-reshape", True), ("y3", "kernel-one", False))
    for name, rule, fires in cases + (("u", "strided-reshape", False),):
        diagram = program_of(CALL_TIME).diagram(name)
        term = only_term(diagram)
        assert (RULE[rule](term, position(term, "pattern"), True) is not None) == fires, name
        assert bool(fired(simplified(diagram)[1], rule)) == fires, name
    assert_agree(CALL_TIME, sizes={"i": size})


TWO_TERMS = """index n
index c = 2, i = 8, k = 2
pattern p(i, o, k) = conv(stride=2)
input x[n, c, i]
input z[n, c, o, k]
one[n, c, i] = p(i, o, k) * z[n, c, o, k]
two[n, c, i] = p(i, o, k) * z[n, c, o, k] + x[n, c, i]
"""


def test_strided_reshape_splits_an_open_leg_only_in_a_one_term_diagram() -> None:
    one, notes = simplified(program_of(TWO_TERMS).diagram("one"))
    assert fired(notes, "strided-reshape") and one.layout.axes[2] == ("o", "k")
    two = program_of(TWO_TERMS).diagram("two")
    term = two.terms[0]
    assert RULE["strided-reshape"](term, position(term, "pattern"), True) is not None
    assert RULE["strided-reshape"](term, position(term, "pattern"), False) is None
    new, notes = simplified(two)
    assert not fired(notes, "strided-reshape") and new.layout == two.layout
    assert_agree(TWO_TERMS)


# -- select-identity and select-slice ---------------------------------------------------------------------------


def selected(dim: Dim, name: str = "y", rule: str = "kernel-one", extra: tuple[str, ...] = ()) -> tuple[str, Network]:
    """The source of a conv on `dim` and diagram `name`'s term after `rule` turned its pattern into a select."""
    text = conv_text([dim], extra)
    term = only_term(program_of(text).diagram(name))
    rewrite = RULE[rule](term, position(term, "pattern"), True)
    assert rewrite is not None
    return text, rewrite.value


def test_select_identity_fires_on_a_one_by_one_stride_one_conv() -> None:
    """kernel-one gives select(i, o) with start 0, step 1, I = O: a copy tensor, renamed away."""
    text, net = selected(Dim(6, 1, 1), "gw", extra=("gw",))
    rewrite = RULE["select-identity"](net, position(net, "select"), True)
    assert rewrite is not None and rewrite.note.startswith("select-identity:")
    assert "select" not in kinds(rewrite.value) and kinds(rewrite.value).count("delta") == 2
    program, diagram = with_term(text, "gw", net)
    new, notes = simplified(diagram)
    assert fired(notes, "select-identity") and fired(notes, "copy-tensor"), notes
    assert kinds(only_term(new)) == ["input", "input"]
    code = assert_program_agrees(program, text, "gw")
    assert constants_built(code, "gw") == 0


@pytest.mark.parametrize(
    ("dim", "rule", "select"),
    [(Dim(8, 1, 2), "kernel-one", Select(8, 4, 0, 2)), (Dim(6, 2, 5), "output-one", Select(6, 2, 0, 1))],
    ids=["step2", "I-not-J"],
)
def test_select_identity_does_not_fire_on_a_proper_selection(dim: Dim, rule: str, select: Select) -> None:
    """Step 2, or I ≠ J: a real selection, which select-slice then pushes into x."""
    text, net = selected(dim, rule=rule)
    at = position(net, "select")
    assert net.factors[at].pattern == select
    assert RULE["select-identity"](net, at, True) is None
    slicing = RULE["select-slice"](net, at, True)
    assert slicing is not None and slicing.note.startswith("select-slice:")
    (x,) = factor_named(slicing.value, "x")
    assert view_ops(x) == (SliceOp(2, 0, 7 if select.step == 2 else 2, select.step),)
    program, diagram = with_term(text, "y", net)
    new, notes = simplified(diagram)
    assert not fired(notes, "select-identity") and fired(notes, "select-slice")
    assert "select" not in kinds(only_term(new))
    assert_program_agrees(program, text, "y")


def test_select_slice_does_not_fire_on_an_open_leg() -> None:
    """Input VJP of a 1×1 stride-2 conv: i is open, so the select stays (a scatter into the strided positions)."""
    text, net = selected(Dim(8, 1, 2), "gx", extra=("gx",))
    assert RULE["select-slice"](net, position(net, "select"), True) is None
    new, notes = simplified(program_of(text).diagram("gx"))
    assert fired(notes, "kernel-one") and not fired(notes, "select-slice"), notes
    assert "select" in kinds(only_term(new))
    # the lowering then prefers the transpose kernel to a product with a selection matrix
    assert "conv_transpose1d(" in function_code(compile_source(text), "gx")
    assert_agree(text)


SHARED_I = """index n
index c = 2, d = 3, i = 8, k = 1
pattern p(i, o, k) = conv(stride=2)
input x[n, c, i]
input x2[n, c, i]
input w[d, c, k]
y[n, d, o] = x[n, c, i] * x2[n, c, i] * p(i, o, k) * w[d, c, k]
"""


def test_select_slice_does_not_fire_when_two_tensors_carry_i() -> None:
    term = only_term(program_of(SHARED_I).diagram("y"))
    net = apply(term, "kernel-one").value
    assert RULE["select-slice"](net, position(net, "select"), True) is None
    new, notes = simplified(program_of(SHARED_I).diagram("y"))
    assert fired(notes, "kernel-one") and not fired(notes, "select-slice"), notes
    assert "select" in kinds(only_term(new))
    assert_agree(SHARED_I)


# -- the pattern rules in the pipeline itself -----------------------------------------------------------------

IN_PIPELINE = {  # (source, diagram, the rules that should fire)
    "1x1-stride2": (conv_text([Dim(8, 1, 2)]), "y", ("kernel-one", "select-slice", "squeeze")),
    "1x1-stride2-weight-vjp": (conv_text([Dim(8, 1, 2)], ("gw",)), "gw", ("kernel-one", "select-slice")),
    "1x1-stride1-weight-vjp": (conv_text([Dim(6, 1, 1)], ("gw",)), "gw", ("kernel-one", "select-identity")),
    "1x1-2d-weight-vjp": (conv_text([Dim(4, 1), Dim(5, 1)], ("gw",)), "gw", ("select-identity", "merge")),
    "kernel-is-input": (conv_text([Dim(5, 5)], ("gw",)), "gw", ("output-one", "select-identity")),
    "dilated-one-output": (conv_text([Dim(7, 3, 1, 0, 3)], ("gw",)), "gw", ("output-one", "select-slice")),
    "patchify-one-output": (conv_text([Dim(4, 4, 4)], ("gw",)), "gw", ("output-one",)),
}


@pytest.mark.parametrize("case", list(IN_PIPELINE))
def test_pattern_rules_fire_in_the_pipeline_on_patterns_with_a_unit_leg(case: str) -> None:
    """K = 1 or O = 1: the pattern's size-1 leg is left to kernel-one / output-one, not squeezed first (a squeezed,
    i.e. viewed, pattern is skipped by every pattern rule and would stay a dense constant)."""
    text, name, rules = IN_PIPELINE[case]
    diagram, notes = simplified(program_of(text).diagram(name))
    for rule in rules:
        assert fired(notes, rule), (rule, notes)
    assert "pattern" not in kinds(only_term(diagram))
    assert "_conv_pattern" not in compile_source(text)
    assert_agree(text)


# -- copy-tensor ------------------------------------------------------------------------------------------------


def test_copy_tensor_renames_a_summed_leg_of_a_delta() -> None:
    """y = x · Π · delta(c, e) · w[.., e, ..] and its derived diagrams: the delta goes, e is renamed to c."""
    text = conv_text([Dim(7, 3, 2, 1)], ("gx", "gw", "A"), delta=True)
    for diagram in program_of(text).diagrams:
        new, notes = simplified(diagram)
        assert fired(notes, "copy-tensor"), notes
        assert "delta" not in kinds(only_term(new))
        assert "_delta(" not in function_code(compile_source(text), diagram.name)
    assert_agree(text)


COPIES = """index n
index c = 2, e = 2, h = 2, a = 4, i = 5
input x[n, c, i]
diag[n, c, e, i] = x[n, c, i] * delta(c, e)
three[n, c, e, i] = x[n, h, i] * delta(c, e, h)
lone[n, c] = x[n, c, i] * delta(i) * delta(a, a)
"""


def test_copy_tensor_prunes_a_lone_delta_into_the_coefficient() -> None:
    """delta(i) with i on x is 1; delta(a, a) summed alone is |a| = 4."""
    diagram, notes = simplified(program_of(COPIES).diagram("lone"))
    assert len(fired(notes, "copy-tensor")) == 2 and any("size(a)" in note for note in notes), notes
    term = only_term(diagram)
    assert kinds(term) == ["input"] and term.coefficient == 4
    (x,) = arguments(diagram)
    assert relative_error(modules(COPIES)[0].lone(x), 4 * x.sum(-1)) <= TOLERANCE


def test_copy_tensor_renames_into_a_smaller_diagonal() -> None:
    """delta(c, e, h) with c, e open and h summed: h is renamed to c, delta(c, e) stays."""
    diagram, notes = simplified(program_of(COPIES).diagram("three"))
    assert fired(notes, "copy-tensor")
    term = only_term(diagram)
    (delta,) = [f for f in term.factors if f.kind == "delta"]
    assert delta.legs == ("c", "e")
    assert_agree(COPIES, ("three",))


def test_copy_tensor_does_not_fire_on_a_diagonal_between_open_legs() -> None:
    diagram = program_of(COPIES).diagram("diag")
    term = only_term(diagram)
    assert RULE["copy-tensor"](term, position(term, "delta"), True) is None
    new, notes = simplified(diagram)
    assert not fired(notes, "copy-tensor") and "delta" in kinds(only_term(new))
    assert_agree(COPIES, ("diag",))


# -- merge ------------------------------------------------------------------------------------------------------


def test_merge_fires_on_a_channels_last_patchify_conv() -> None:
    """x[n, i, c] · Π · w[d, k, c], K = S: x becomes x[n, o, k, c], and the summed k, c travel together."""
    text = channels_last_text(Dim(8, 2, 2))
    diagram, notes = simplified(program_of(text).diagram("y"))
    assert fired(notes, "strided-reshape") and fired(notes, "merge"), notes
    term = only_term(diagram)
    assert sorted(len(f.legs) for f in term.factors) == [2, 3]
    (x,) = factor_named(term, "x")
    assert isinstance(view_ops(x)[-1], MergeOp) and x.legs == ("n", "o", "k.c")
    assert_agree(text)


MATMULS = """index n
index d = 3, a = 4, b = 5, e = 2, f = 5
input m[n, a, b]
input q[d, a, b]
input mm[n, e, f]
input s[d, f, e]
input r[n, a, e, b]
lin[n, d] = m[n, a, b] * q[d, a, b]
swapped[n, d] = mm[n, e, f] * s[d, f, e]
apart[n, e, d] = r[n, a, e, b] * q[d, a, b]
opened[n, a, d] = m[n, a, b] * q[d, a, b]
"""


def test_merge_fires_on_adjacent_summed_legs() -> None:
    diagram, notes = simplified(program_of(MATMULS).diagram("lin"))
    assert fired(notes, "merge") == ["merge: a and b always travel together -> one leg a.b"]
    assert [f.legs for f in only_term(diagram).factors] == [("n", "a.b"), ("d", "a.b")]
    assert_agree(MATMULS, ("lin",))


@pytest.mark.parametrize("name", ["swapped", "apart", "opened"])
def test_merge_does_not_fire_unless_the_legs_are_adjacent_summed_and_in_order(name: str) -> None:
    diagram = program_of(MATMULS).diagram(name)
    term = only_term(diagram)
    assert all(RULE["merge"](term, k, True) is None for k in range(len(term.factors)))
    assert not fired(simplified(diagram)[1], "merge")
    assert_agree(MATMULS, (name,))


def test_merge_does_not_fire_on_a_channels_first_patchify_conv() -> None:
    """x[n, c, o, k] · w[d, c, k]: c and k are both summed on the same tensors, but o sits between them on x."""
    _, notes = simplified(program_of(conv_text([Dim(8, 2, 2)])).diagram("y"))
    assert fired(notes, "strided-reshape") and not fired(notes, "merge"), notes


# -- generated code ---------------------------------------------------------------------------------------------

SHRINKS = {  # (source, diagram, a constant builder the rewritten function must not call)
    "patchify-weight-vjp": (PATCHIFY, "gw", "_conv_pattern("),
    "patchify-input-vjp": (PATCHIFY, "gx", "_conv_pattern("),
    "patchify-kfac-reduce": (PATCHIFY, "A", "_conv_pattern("),
    "down-sampling": (conv_text([Dim(9, 2, 3)], ("gw",)), "gw", "_conv_pattern("),
    "delta": (conv_text([Dim(7, 3, 2, 1)], delta=True), "y", "_delta("),
}


@pytest.mark.parametrize("case", list(SHRINKS))
def test_generated_code_loses_the_constants_the_rules_remove(case: str) -> None:
    text, name, builder = SHRINKS[case]
    rewritten, plain = compile_source(text), compile_source(text, rewrite=False)
    assert builder not in function_code(rewritten, name)
    assert builder in function_code(plain, name)
    assert constants_built(rewritten, name) < constants_built(plain, name)


def test_generated_code_of_a_one_by_one_strided_conv_is_the_kernel() -> None:
    """The rules turn a 1x1 strided conv and its weight gradient into a strided slice and a product, but lowering
    gives both PyTorch's kernel (one call each, where the slice and the product copy too); no constant is built."""
    code = compile_source(conv_text([Dim(8, 1, 2)], ("gw",)))
    assert "_conv_pattern" not in code and "_select(" not in code
    assert "torch.nn.grad.conv1d_weight(" in function_code(code, "gw")
    assert "torch.nn.functional.conv1d(" in function_code(code, "y")


# -- numeric agreement over a grid ------------------------------------------------------------------------------


def _grid() -> list[tuple[int, int, int, int, int, int]]:
    return [
        (dims, kernel, stride, padding, dilation, groups)
        for dims in (1, 2)
        for kernel in (1, 2, 3)
        for stride in (1, 2, 3)
        for padding in (0, 1)
        for dilation in (1, 2)
        for groups in (1, 2)
    ]


@pytest.mark.parametrize(("dims", "kernel", "stride", "padding", "dilation", "groups"), _grid())
def test_rewritten_equals_unrewritten_over_the_grid(
    dims: int, kernel: int, stride: int, padding: int, dilation: int, groups: int
) -> None:
    """Forward conv, input VJP, weight VJP and KFAC-reduce factor; 1-d on I = 6, 2-d on I = (7, 6).

    The batch is declared (n = 2), so that no contraction is planned at call time: the random networks below
    bind it at call time.
    """
    sizes = (6,) if dims == 1 else (7, 6)
    dim_list = [Dim(size, kernel, stride, padding, dilation) for size in sizes]
    text = conv_text(dim_list, ("gx", "gw", "A"), groups=groups, batch=2)
    for diagram in program_of(text).diagrams:
        stages(diagram)  # lints every intermediate network
    assert_agree(text)


# -- hypothesis: random patterns and small networks ---------------------------------------------------------------


@st.composite
def dims_strategy(draw: st.DrawFn) -> Dim:
    """Random (I, K, S, P, D) with O ≥ 1."""
    kernel, stride, dilation = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 3))
    padding = draw(st.one_of(st.integers(0, 2), st.tuples(st.integers(0, 2), st.integers(0, 2))))
    left, right = padding if isinstance(padding, tuple) else (padding, padding)
    smallest = max(1, dilation * (kernel - 1) + 1 - left - right)
    return Dim(draw(st.integers(smallest, smallest + 6)), kernel, stride, padding, dilation)


@st.composite
def sources(draw: st.DrawFn) -> str:
    dims = draw(st.lists(dims_strategy(), min_size=1, max_size=2))
    transforms = draw(st.lists(st.sampled_from(sorted(TRANSFORMS)), unique=True, max_size=3))
    extra = draw(st.sampled_from([None, "delta", "summed", "open"]))
    return conv_text(
        dims,
        tuple(transforms),
        groups=draw(st.integers(1, 2)),
        c=draw(st.integers(1, 2)),
        d=draw(st.integers(1, 2)),
        delta=extra == "delta",
        unit=extra if extra in ("summed", "open") else None,
    )


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(text=sources(), batch=st.integers(1, 3))
def test_random_networks_lint_and_agree(text: str, batch: int) -> None:
    for diagram in program_of(text).diagrams:
        stages(diagram)
    assert_agree(text, batch=batch)


# -- sanity of the helpers -----------------------------------------------------------------------------------------


def test_dim_output_size_matches_the_pattern() -> None:
    term = only_term(program_of(conv_text([Dim(9, 3, 2, (1, 2), 2)])).diagram("y"))
    pattern = term.factors[position(term, "pattern")].pattern
    assert isinstance(pattern, ConvPattern) and pattern.out_size == Dim(9, 3, 2, (1, 2), 2).O == 4
