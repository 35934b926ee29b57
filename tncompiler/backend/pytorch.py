"""PyTorch back end: one readable, deterministic Python function per diagram, imports only torch."""

from __future__ import annotations

import string
from collections.abc import Callable
from pathlib import PurePath
from typing import Any

import sympy

from tncompiler.backend.autograd import autograd_class
from tncompiler.backend.expressions import product_expr, python_expr
from tncompiler.backend.names import (
    Namespace,
    check_keywords,
    comment_text,
    docstring,
    docstring_text,
    module_names,
    safe_identifier,
    sampling_keywords,
)
from tncompiler.backend.native import native_lines, pad_call, right_pad_size
from tncompiler.backend.runtime import HELPERS, helper_source
from tncompiler.backend.window_sums import known_long, summed_pattern, threshold, window_sum_factors, window_sum_step
from tncompiler.binding import (
    AxisSize,
    Binding,
    CheckAxis,
    CheckRule,
    DerivedSize,
    KeywordSize,
    SolvedSize,
    plan_binding,
)
from tncompiler.errors import TncError
from tncompiler.guard import check_memory, default_limit
from tncompiler.ir.network import Diagram, Network, Program, natural_shape
from tncompiler.ir.values import (
    ConvPattern,
    Factor,
    Fused,
    GatherOp,
    Layout,
    MergeOp,
    NativeConv,
    Sampler,
    Select,
    Size,
    SizeRule,
    SliceOp,
    SplitOp,
    SqueezeOp,
    ViewOp,
    WindowOp,
    kept_symbol,
    slice_length,
)
from tncompiler.order import Plan, Regimes, Step, plan_network, symbols_of
from tncompiler.passes.pipeline import run_pipeline

__all__ = ["check_names", "generate", "public_names", "step_kind", "tensordot_dims"]

_LETTERS = string.ascii_lowercase + string.ascii_uppercase
_TERMS_PER_LINE = 20


def public_names(program: Program) -> dict[str, str]:
    """Diagram name -> the generated function's name: the same (or a located TncError where it cannot be)."""
    return dict(module_names(program, HELPERS).functions)


def check_names(program: Program) -> None:
    """Every name the module will have is usable (a located TncError where one is not): checked before any code is
    written, so that `tnc check` and `tnc dot` refuse what `tnc compile` would."""
    module_names(program, HELPERS)
    for diagram in program.diagrams:
        binding = plan_binding(diagram, program.size_rules, list(program.sizes))
        check_keywords(diagram, tuple(str(s) for s in binding.keywords) + sampling_keywords(diagram))


def generate(program: Program, rewrite: bool = True, max_memory: int | None = None) -> str:
    """The source of a module with one function per diagram of `program`, each rewritten by the pipeline;
    a diagram that would need more than `max_memory` bytes (default: half the machine's memory) is refused."""
    limit = default_limit() if max_memory is None else max_memory
    module = module_names(program, HELPERS)
    names = dict(module.functions)
    helpers: set[str] = set()
    blocks: list[str] = []
    keywords: dict[str, tuple[tuple[sympy.Symbol, str], ...]] = {}
    for built in program.diagrams:
        stages = run_pipeline(built, rewrite)
        diagram = stages[-1].diagram
        rewrites = tuple(c for s in stages for c in s.changes)
        check_memory(diagram, limit)
        binding = plan_binding(built, program.size_rules, list(program.sizes))
        writer = _FunctionWriter(program, diagram, binding, names[diagram.name], module.taken(), helpers)
        writer.built_layout, writer.rewrites = built.layout, rewrites
        blocks.extend(writer.write())
        keywords[diagram.name] = tuple((symbol, writer.symbols[symbol]) for symbol in binding.keywords)
    blocks += [autograd_class(spec, program, module, keywords) for spec in program.autograd]
    exported = [n for n in names.values() if not n.startswith("_")] + list(module.classes.values())
    source = PurePath(program.filename).name
    head = [
        f'"""Tensor-network functions compiled by tnc from {docstring_text(comment_text(source))}: '
        f"{comment_text(', '.join(names.values()))}.",
        "",
        'Generated code: edit the .tnd file and recompile."""',
        "",
    ]
    imports = ["import functools", ""] if "functools" in helpers else []
    imports += ["import torch", "", f"__all__ = [{', '.join(repr(n) for n in exported)}]"]
    parts = ["\n".join(head + imports)] + helper_source(helpers - {"functools"}) + blocks
    return "\n\n\n".join(part.rstrip("\n") for part in parts) + "\n"


class _FunctionWriter:
    """Writes the function of one diagram: checks, size binding, constants, contractions, assembly."""

    def __init__(
        self, program: Program, diagram: Diagram, binding: Binding, name: str, public: set[str], helpers: set[str]
    ) -> None:
        self.program, self.diagram, self.binding, self.name, self.helpers = program, diagram, binding, name, helpers
        self.samplers_meta: tuple[Sampler, ...] = diagram.samplers
        self.built_layout, self.rewrites = diagram.layout, tuple[str, ...]()
        # Keyword arguments keep their names (the sizes are named after their indices); positional ones come next
        # and give way where they meet one (an input named `generator`), then the locals.
        self.namespace = Namespace({"functools", "device", "dtype"}, frozenset(public))  # locals every function has
        keywords = tuple(str(s) for s in binding.keywords) + sampling_keywords(diagram)
        check_keywords(diagram, keywords)
        for name in keywords:
            self.namespace.reserve(name)
        self.symbols: dict[sympy.Symbol, str] = {s: str(s) for s in binding.keywords}
        self.args = {arg.name: self.namespace.create(arg.name) for arg in diagram.arguments}
        self.where: dict[sympy.Symbol, str] = {}  # how each call-time size was given, for messages
        self.regimes = Regimes(diagram.size_rules)
        self.body: list[str] = []
        self.module_level: list[str] = []
        self.operands: dict[tuple[str, ...], str] = {}
        self.samplers: dict[str, str] = {}
        self.fused: dict[str, str] = {}
        self.fresh: set[str] = set()
        self.prescaled: set[str] = set()
        self.padded_windows: set[int] = set()

    # -- the whole function ------------------------------------------------------------------------------
    def write(self) -> list[str]:
        params = ", ".join(self.args.values())
        keywords = [self.symbols[s] for s in self.binding.keywords]
        keywords += ["generator=None"] if self.samplers_meta else []
        if keywords:
            params += (", " if params else "") + "*, " + ", ".join(keywords)
        lines = [f"def {self.name}({params}):", docstring(self._doc(), "    ")]
        self._checks()
        self._device()
        self._draw_samples()
        term_vars = [self._term(k, term) for k, term in enumerate(self.diagram.terms)]
        self._assemble(term_vars)
        return self.module_level + ["\n".join(lines + self.body)]

    def emit(self, line: str) -> None:
        self.body.append("    " + line)

    def size(self, expr: Size) -> str:
        return python_expr(expr, self.symbols)

    # -- docstring ---------------------------------------------------------------------------------------
    def _doc(self) -> str:
        d = self.diagram
        layout = self.built_layout  # as the file wrote it, before rewrites split any open leg
        lines = [
            f"{d.name}{layout.text()}: compiled from {_location(self.program, d)}.",
            "",
            "    " + "\n    ".join(d.source.split("\n")),  # only "\n" ends a line of a .tnd file
            "",
        ]
        args = [
            f"    {self.args[a.name]}: {self._renamed(a.name)}{a.layout.text()}, "
            f"sizes {self._shape_text(a.layout.axes)}"
            for a in d.arguments
        ]
        args += [
            f"    {self.symbols[s]}: keyword-only int, the size of index {s} (no argument carries it)"
            for s in self.binding.keywords
        ]
        lines += ["Args:", *args] if args else []
        lines += ["", "Returns:", f"    {layout.text()}, sizes {self._shape_text(d.layout.axes)}"]
        rewrites = self.rewrites
        if rewrites:
            lines += ["", "Rewrites applied:"] + [f"    {note}" for note in rewrites]
        patterns = {f.name: f.pattern for t in d.terms for f in t.factors if isinstance(f.pattern, ConvPattern)}
        if patterns:
            lines += ["", "Index patterns:"]
            lines += [
                f"    {name}: {p.describe()}, (I, O, K) = ({p.in_size}, {p.out_size}, {p.kernel_size})"
                for name, p in sorted(patterns.items())
            ]
        return "\n".join(lines)

    def _renamed(self, name: str) -> str:
        return f"the file's {name!r}, " if self.args[name] != name else ""

    def _shape_text(self, axes: tuple[tuple[str, ...], ...]) -> str:
        sizes = [sympy.Mul(*[sympy.sympify(self.diagram.sizes[leg]) for leg in axis]) for axis in axes]
        return "[" + ", ".join(str(s) for s in sizes) + "]"

    # -- argument checks and call-time sizes ---------------------------------------------------------------
    def _checks(self) -> None:
        d = self.diagram
        if d.arguments:
            self.helpers.add("_check_arguments")
            self.emit(f"_check_arguments({self.name!r}, (")
            for a in d.arguments:
                axes = tuple(a.layout.axis_text(k) for k in range(len(a.layout.axes)))
                self.emit(f"    ({a.name!r}, {self.args[a.name]}, {axes!r}),")
            self.emit("))")
        for step in self.binding.steps:
            _BIND_WRITERS[type(step)](self, step)
        for symbol in self._divisors():
            self.helpers.add("_nonzero")
            self.emit(f"_nonzero({self.name!r}, {str(symbol)!r}, {self.symbols[symbol]})")

    def _divisors(self) -> list[sympy.Symbol]:
        """The call-time sizes some term's coefficient divides by."""
        found: set[sympy.Symbol] = set()
        for term in self.diagram.terms:
            found |= sympy.fraction(sympy.sympify(term.coefficient))[1].free_symbols
        return sorted((s for s in found if s in self.symbols), key=str)

    def _layout(self, argument: str) -> Layout:
        return next(a.layout for a in self.diagram.arguments if a.name == argument)

    def _bound(self, symbol: sympy.Symbol, where: str) -> str:
        var = self.symbols.get(symbol) or self.namespace.create(str(symbol))
        self.symbols[symbol], self.where[symbol] = var, where
        return var

    def _axis_size(self, step: AxisSize) -> None:
        text = self._layout(step.argument).axis_text(step.axis)
        var = self._bound(step.symbol, f"argument {step.argument!r} axis {step.axis} ({text})")
        actual = f"{self.args[step.argument]}.shape[{step.axis}]"
        if step.known == 1:
            self.emit(f"{var} = {actual}  # index {step.symbol}, bound at call time")
            return
        self.helpers.add("_bind_size")
        self.emit(
            f"{var} = _bind_size({self.name!r}, {step.argument!r}, {step.axis}, {text!r}, {actual}, "
            f"{self.size(step.known)})"
        )

    def _keyword_size(self, step: KeywordSize) -> None:
        var = self._bound(step.symbol, f"keyword {self.symbols[step.symbol]}=")
        self.helpers.add("_size_keyword")
        self.emit(f"{var} = _size_keyword({self.name!r}, {var!r}, {var})")

    def _rule_arguments(self, rule: SizeRule) -> str:
        p = rule.conv
        return f"{rule.pattern!r}, {p.kernel_size}, {p.stride}, {p.pad_left}, {p.pad_right}, {p.dilation}"

    def _derived_size(self, step: DerivedSize) -> None:
        i = step.rule.conv.in_size
        where = self._where(i, step.rule.legs[0])
        var = self._bound(step.symbol, f"index {step.rule.legs[1]} (from pattern {step.rule.pattern!r})")
        self.helpers.add("_out_size")
        self.emit(f"{var} = _out_size({self.name!r}, {where!r}, {self.size(i)}, {self._rule_arguments(step.rule)})")

    def _solved_size(self, step: SolvedSize) -> None:
        o = step.rule.conv.out_size
        where = self._where(o, step.rule.legs[1])
        var = self._bound(step.symbol, f"index {step.rule.legs[0]} (from pattern {step.rule.pattern!r})")
        self.helpers.add("_in_size")
        self.emit(f"{var} = _in_size({self.name!r}, {where!r}, {self.size(o)}, {self._rule_arguments(step.rule)})")

    def _where(self, size: Size, index: str) -> str:
        return self.where.get(size, f"index {index}") if isinstance(size, sympy.Symbol) else f"index {index}"

    def _check_axis(self, step: CheckAxis) -> None:
        self.helpers.add("_check_size")
        text = self._layout(step.argument).axis_text(step.axis)
        self.emit(
            f"_check_size({self.name!r}, {step.argument!r}, {step.axis}, {text!r}, "
            f"{self.args[step.argument]}.shape[{step.axis}], {self.size(step.expected)})"
        )

    def _check_rule(self, step: CheckRule) -> None:
        rule = step.rule
        i, o = rule.conv.in_size, rule.conv.out_size
        where_i, where_o = self._where(i, rule.legs[0]), self._where(o, rule.legs[1])
        if not isinstance(o, sympy.Symbol):
            where_o = f"index {rule.legs[1]} (size {o} in the file)"
        self.helpers.add("_check_out_size")
        self.emit(
            f"_check_out_size({self.name!r}, {where_o!r}, {self.size(o)}, {where_i!r}, {self.size(i)}, "
            f"{self._rule_arguments(rule)})"
        )

    def _device(self) -> None:
        if self.diagram.arguments:
            first = self.args[self.diagram.arguments[0].name]
            self.emit(f"device, dtype = {first}.device, {first}.dtype")
        else:
            self.emit("device, dtype = torch.device('cpu'), torch.get_default_dtype()")

    def _draw_samples(self) -> None:
        """Tensor dropout: draw the kept entries of each sampled index once per call."""
        for sampler in self.samplers_meta:
            self.helpers.add("_keep")
            keep = self.namespace.create(f"keep_{sampler.index}")
            count = self.namespace.create(f"{sampler.index}_kept")
            self.emit(
                f"{keep} = _keep({self.size(sampler.size)}, {sampler.p!r}, generator, device)"
                f"  # entries of {sampler.index} kept with probability {sampler.p}"
            )
            self.emit(f"{count} = {keep}.numel()")
            self.samplers[sampler.index] = keep
            self.symbols[kept_symbol(sampler.index)] = count

    # -- operands ----------------------------------------------------------------------------------------
    def _operand(self, factor: Factor, network: Network) -> str:
        sizes = tuple(self.size(network.size(leg)) for leg in factor.legs)
        key = (factor.kind, factor.name, repr(factor.pattern), repr(factor.view), *sizes)
        if key not in self.operands:
            base = self._base_operand(factor, sizes)
            self.operands[key] = base if factor.view is None else self._viewed(factor, base)
        return self.operands[key]

    def _base_operand(self, factor: Factor, sizes: tuple[str, ...]) -> str:
        """The factor's tensor before its view: an argument split into its legs, or a cached constant."""
        p = factor.pattern
        if factor.kind == "input":
            arg = self.args[factor.name]
            layout = next(a.layout for a in self.diagram.arguments if a.name == factor.name)
            base = sizes if factor.view is None else tuple(self.size(s) for s in factor.view.base)
            if len(base) == len(layout.axes):
                return arg
            var = self.namespace.create(f"{factor.name}_legs")
            self.emit(f"{var} = {arg}.reshape({', '.join(base)})")
            return var
        if isinstance(p, Fused):
            return self._fused(factor, p)
        var = self.namespace.create(factor.name or factor.kind)
        self.emit(f"{var} = {self._constant(factor)}  # {_constant_comment(factor)}")
        return var

    def _constant(self, factor: Factor) -> str:
        """A call that builds (or fetches from the cache) a pattern, selection or copy tensor, before its view."""
        p = factor.pattern
        if isinstance(p, ConvPattern):
            self.helpers.add("_conv_pattern")
            shape = ", ".join(self.size(s) for s in (p.in_size, p.out_size, p.kernel_size))
            return f"_conv_pattern({shape}, {p.stride}, {p.pad_left}, {p.dilation}, device, dtype)"
        if isinstance(p, Select):
            self.helpers.add("_select")
            return f"_select({self.size(p.in_size)}, {self.size(p.out_size)}, {p.start}, {p.step}, device, dtype)"
        self.helpers.add("_delta")
        base = (
            factor.view.base
            if factor.view is not None
            else tuple(self.diagram.sizes.get(leg, 1) for leg in factor.legs)
        )
        return f"_delta({self.size(base[0])}, {len(base)}, device, dtype)"

    def _fused(self, factor: Factor, fused: Fused) -> str:
        """Constants contracted once per device and dtype, then cached (equal ones shared)."""
        self.helpers.add("_cached")
        parts = [self._view_chain(part, self._constant(part)) for part in fused.parts]
        einsum = _einsum(parts, [part.legs for part in fused.parts], fused.legs)
        if einsum not in self.fused:
            var = self.namespace.create("fused")
            shape = [size for part in fused.parts for size in natural_shape(part) or ()]
            symbols = sorted(set().union(*(sympy.sympify(size).free_symbols for size in shape)), key=str)
            key = ", ".join([repr(f"{self.name}.{var}")] + [self.size(s) for s in symbols] + ["device", "dtype"])
            self.emit(f"{var} = _cached(({key}), lambda: {einsum})")  # one per call-time shape
            self.emit(f"# {var}: {fused.describe()}, contracted once")
            self.fused[einsum] = var
        return self.fused[einsum]

    def _viewed(self, factor: Factor, base: str) -> str:
        """Apply a factor's view ops as PyTorch views: slicing, reshape, squeeze, index_select."""
        var = self.namespace.create(f"{factor.name or factor.kind}_view")
        self.emit(f"{var} = {self._view_chain(factor, base)}  # [{', '.join(factor.legs)}]")
        return var

    def _view_chain(self, factor: Factor, base: str) -> str:
        if factor.view is None:
            return base
        shape: list[Size] = list(factor.view.base)
        expr, before_reshape = base, None
        ops = _gathers_last(factor.view.ops)
        for position, op in enumerate(ops):
            if isinstance(op, WindowOp) and position not in self.padded_windows:
                expr = self._pad_windows(expr, shape, ops, position)
            start = before_reshape if isinstance(op, SplitOp | MergeOp) and before_reshape is not None else expr
            expr, shape = self._view_op(start, shape, op)
            before_reshape = start if isinstance(op, SplitOp | MergeOp) else None  # fold reshape chains
        self.padded_windows.clear()
        return expr

    def _pad_windows(self, expr: str, shape: list[Size], ops: tuple[ViewOp, ...], first: int) -> str:
        """Pad every axis of a run of windows at once, before the first unfold: padding after an unfold would copy
        the (larger) windowed view."""
        axes: dict[int, tuple[Size, Size]] = {}
        earlier: list[int] = []
        for position in range(first, len(ops)):
            op = ops[position]
            if not isinstance(op, WindowOp):
                break
            axis = op.axis
            for split in reversed(earlier):  # undo the axes that the run's earlier windows inserted
                axis -= 1 if axis > split else 0
            earlier.append(op.axis)
            axes[axis] = (op.pattern.pad_left, right_pad_size(op.pattern))
            self.padded_windows.add(position)
        if all(pair == (0, 0) for pair in axes.values()):
            return expr
        pairs = [axes.get(a, (0, 0)) for a in range(min(axes), len(shape))]
        return pad_call(expr, pairs, self.size, self.helpers)

    def _shape(self, shape: list[Size]) -> str:
        return ", ".join(self.size(s) for s in shape)

    def _view_op(self, expr: str, shape: list[Size], op: ViewOp) -> tuple[str, list[Size]]:
        if isinstance(op, SliceOp):
            bounds = f"{op.start}:{self.size(op.stop)}" + (f":{op.step}" if op.step != 1 else "")
            index = ", ".join([":"] * op.axis + [bounds])
            shape[op.axis] = slice_length(op.start, op.stop, op.step)
            return f"{expr}[{index}]", shape
        if isinstance(op, SplitOp):
            shape[op.axis : op.axis + 1] = list(op.sizes)
            return f"{expr}.reshape({self._shape(shape)})", shape
        if isinstance(op, SqueezeOp):
            del shape[op.axis]
            return f"{expr}.squeeze({op.axis})", shape
        if isinstance(op, MergeOp):
            shape[op.axis : op.axis + 2] = [sympy.sympify(shape[op.axis]) * shape[op.axis + 1]]
            return f"{expr}.reshape({self._shape(shape)})", shape
        if isinstance(op, WindowOp):
            return self._window(expr, shape, op)
        shape[op.axis] = kept_symbol(op.index)
        if op.axis < len(shape) - 1:
            return f"{expr}.index_select({op.axis}, {self.samplers[op.index]})", shape
        self.helpers.add("_take")  # the last axis: index_select copies single entries slowly
        return f"_take({expr}, {op.axis}, {self.samplers[op.index]})", shape

    def _window(self, expr: str, shape: list[Size], op: WindowOp) -> tuple[str, list[Size]]:
        """x[.., i, ..] -> x[.., o, k, ..] = x_padded[.., o·S + k·D, ..]: zero padding, then strided windows."""
        p = op.pattern  # padded already, by _pad_windows
        expr = f"{expr}.unfold({op.axis}, {p.dilation * (p.kernel_size - 1) + 1}, {p.stride})"
        if p.dilation != 1:
            expr += f"[..., ::{p.dilation}]"
        expr += f".movedim(-1, {op.axis + 1})"
        shape[op.axis : op.axis + 1] = [p.out_size, p.kernel_size]
        return expr, shape

    # -- one term ----------------------------------------------------------------------------------------
    def _term(self, position: int, term: Network) -> str:
        total = len(self.diagram.terms)
        label = f"term {position + 1} of {total}: " if total > 1 else ""
        self.emit(f"# {label}{comment_text(_term_text(term))}")
        target = tuple(leg for leg in self.diagram.layout.legs if leg in term.outputs)
        var = self.namespace.create("result" if total == 1 else f"term{position + 1}")
        native = term.lowering.native
        if isinstance(native, NativeConv):
            a, b = (self._operand(term.factors[k], term) for k in (native.data, native.other))
            self.emit(f"# {native.describe()}")
            lines, helpers = native_lines(term, native, (a, b), target, var, self.size, self.samplers.__getitem__)
            for line in lines:
                self.emit(line)
            self.helpers |= helpers
            self.fresh.add(var)  # a kernel's own output (perhaps reshaped): nothing else holds it
            self._scale(term, var)
            return var
        expected = {
            kept_symbol(s.index): max(1, round(s.p * int(s.size)))
            for s in self.samplers_meta
            if isinstance(s.size, int)
        }
        plans = plan_network(term, expected, self.regimes)
        summed = window_sum_factors(term, plans)  # applied as window sums: no constant to build
        operands = ["" if k in summed else self._operand(f, term) for k, f in enumerate(term.factors)]
        if len(plans) == 1:
            self._contract(term, plans[0], operands, target, var, "")
            self._scale(term, var)
            return self._own(term, var)
        chooser = self._chooser(position, plans, expected)
        for k, plan in enumerate(plans):
            keyword = "if" if k == 0 else ("else" if k == len(plans) - 1 else "elif")
            condition = "" if keyword == "else" else f" {chooser} == {k}"
            self.emit(f"{keyword}{condition}:  # plan {k + 1}: {self.size(plan.flops)} multiply-adds")
            self.prescaled.discard(var)  # each branch scales its own result
            self.fresh.discard(var)
            self._contract(term, plan, operands, target, var, "    ")
            self._scale(term, var, "    ")
        self.fresh.discard(var)  # not every branch may have made new storage
        return self._own(term, var)

    def _own(self, term: Network, var: str) -> str:
        """A term of constants alone (a pattern, a selection) may be a cached constant or a view of one: the
        caller gets a copy, which it may change without changing every later result."""
        if var not in self.fresh and not any(f.kind == "input" for f in term.factors):
            self.emit(f"{var} = {var}.clone()  # not the cached constant itself")
            self.fresh.add(var)
        return var

    def _chooser(self, position: int, plans: tuple[Plan, ...], expected: dict[sympy.Symbol, int]) -> str:
        """A cached module-level function that picks the cheapest plan for the call-time sizes. Sampled sizes
        count at their expected value, so that the choice never depends on the data (torch.compile can trace it)."""
        self.helpers.add("functools")
        flops = [sympy.sympify(p.flops).subs(expected) for p in plans]
        symbols = sorted(set().union(*(f.free_symbols for f in flops)), key=str)
        names = {s: safe_identifier(str(s)) for s in symbols}
        function = f"_{self.name}_plan{position + 1}"
        costs = ", ".join(python_expr(f, names) for f in flops)
        self.module_level.append(
            "\n".join(
                [
                    "@functools.lru_cache(maxsize=None)",
                    f"def {function}({', '.join(names.values())}):",
                    f'    """The cheapest order for {self.name} term {position + 1}, chosen once per shape."""',
                    f"    costs = ({costs},)",
                    "    return costs.index(min(costs))",
                ]
            )
        )
        return f"{function}({', '.join(self.symbols[s] for s in symbols)})"

    def _contract(
        self, term: Network, plan: Plan, operands: list[str], target: tuple[str, ...], var: str, indent: str
    ) -> None:
        names, legs = list(operands), [f.legs for f in term.factors]
        done: dict[str, str] = {}  # a step that repeats an earlier one (the two copies of x in KFAC) reuses it
        for k, step in enumerate(plan.steps):
            last = k == len(plan.steps) - 1
            result_legs = target if last else step.legs
            call = self._window_sum(term, step, names, legs, result_legs) or _pairwise(
                [names[i] for i in step.operands], [legs[i] for i in step.operands], result_legs
            )
            if call in done and not last:
                names.append(done[call])
                legs.append(result_legs)
                continue
            result = var if last else self.namespace.create(f"t{len(names) - len(operands) + 1}")
            gram = self._gram(term, [names[i] for i in step.operands], [legs[i] for i in step.operands], result_legs)
            if gram is not None and call not in done:
                # The last product takes the coefficient on its operand where that is the smaller.
                lines, operand_smaller = gram
                use = last and term.coefficient != 1 and operand_smaller
                scale = self.size(term.coefficient) if use else None
                for line in lines(result, scale):
                    self.emit(f"{indent}{line}")
                if scale is not None:
                    self.prescaled.add(result)
            else:
                self.emit(f"{indent}{result} = {done.get(call, call)}  # [{', '.join(result_legs)}]")
            if call not in done and len(step.operands) == 2:
                self.fresh.add(result)  # new storage: safe to scale in place
            done.setdefault(call, result)
            names.append(result)
            legs.append(result_legs)
        if not plan.steps:
            self._single(term, operands, target, var, indent)

    def _window_sum(
        self, term: Network, step: Step, names: list[str], legs: list[tuple[str, ...]], result: tuple[str, ...]
    ) -> str | None:
        """A step that contracts Σ_o Π(i, o, k) with a tensor on i: summed windows of that tensor (a few strided
        sums) instead of a product with the 0/1 matrix, which PyTorch's GEMM runs at memory speed at best."""
        found = window_sum_step(term, step, legs)
        if found is None:
            return None
        position, other, axis = found
        p = summed_pattern(term.factors[position])
        assert p is not None
        self.helpers.add("_window_sum")
        hyper = f"{p.kernel_size}, {p.stride}, {p.pad_left}, {p.dilation}"
        call = f"_window_sum({names[other]}, {axis}, {self.size(p.in_size)}, {self.size(p.out_size)}, {hyper})"
        i, k = term.factors[position].legs
        out = tuple(leg for leg in legs[other] if leg != i) + (k,)
        if out != result:
            call += f".permute({', '.join(str(out.index(leg)) for leg in result)})"
        if known_long(p):
            return call
        # the length is known at call time only: the product with Σ_o Π where it is short
        operands = [names[i] for i in step.operands]
        product = _pairwise(operands, [legs[i] for i in step.operands], result)
        return f"{call} if {self.size(p.in_size)} >= {threshold(p)} else {product}"

    def _gram(
        self, term: Network, names: list[str], legs: list[tuple[str, ...]], result: tuple[str, ...]
    ) -> tuple[Callable[[str, str | None], list[str]], bool] | None:
        """A tensor contracted with a renamed copy of itself (KFC: u uᵀ) is laid out once as [batch, free, summed]
        and multiplied by its own transpose, instead of being copied once per operand."""
        if len(names) != 2 or names[0] != names[1] or len(legs[0]) != len(legs[1]):
            return None
        a, b = legs
        shared = [j for j in range(len(a)) if a[j] == b[j]]
        free = [j for j in range(len(a)) if a[j] != b[j]]
        batch = [j for j in shared if a[j] in result]
        summed = [j for j in shared if a[j] not in result]
        if (
            not free
            or not summed
            or len(set(a)) != len(a)
            or set(result) != {a[j] for j in batch + free} | {b[j] for j in free}
        ):
            return None
        size = [self.size(term.size(leg)) for leg in a]
        # Lay the (small) operand out in the order the (large) result wants, so the product needs no permute.
        batch.sort(key=lambda j: result.index(a[j]))
        free.sort(key=lambda j: result.index(a[j]))

        def product(positions: list[int]) -> str:
            return product_expr([term.size(a[j]) for j in positions], self.symbols)

        order = tuple(a[j] for j in batch + free) + tuple(b[j] for j in free)
        permutation = ", ".join(str(j) for j in batch + free + summed)
        shape = ", ".join([size[j] for j in batch + free] + [size[j] for j in free])

        def lines(var: str, scale: str | None) -> list[str]:
            laid = f"{var}_rows"
            left = laid if scale is None else f"{laid} * ({scale})"
            # bmm copies a batch of strided matrices one matrix at a time: lay a real batch out densely once
            dense = ".contiguous()" if batch else ""
            out = [
                f"{laid} = {names[0]}.permute({permutation}).reshape({product(batch)}, {product(free)}, "
                f"{product(summed)}){dense}  # laid out once",
                f"{var} = torch.bmm({left}, {laid}.transpose(1, 2)).reshape({shape})  # [{', '.join(order)}]",
            ]
            if order != result:
                out.append(f"{var} = {var}.permute({', '.join(str(order.index(leg)) for leg in result)})")
            return out

        middle = self.regimes.middle(symbols_of(*[term.size(leg) for leg in a]))

        def entries(positions: list[int]) -> float:
            return float(sympy.Mul(*[sympy.sympify(term.size(a[j])) for j in positions]).subs(middle))

        return lines, entries(summed) < entries(free)  # the operand is batch·free·summed, the result batch·free²

    def _single(self, term: Network, operands: list[str], target: tuple[str, ...], var: str, indent: str) -> None:
        if not operands:
            self.emit(f"{indent}{var} = torch.ones((), device=device, dtype=dtype)")
        elif term.factors[0].legs == target:
            self.emit(f"{indent}{var} = {operands[0]}")
        else:
            self.emit(
                f"{indent}{var} = {_einsum([operands[0]], [term.factors[0].legs], target)}  # [{', '.join(target)}]"
            )

    def _scale(self, term: Network, var: str, indent: str = "") -> None:
        coefficient = term.coefficient
        if coefficient == 1 or var in self.prescaled:
            return
        if coefficient == -1:
            self.emit(f"{indent}{var} = -{var}")
        elif var in self.fresh:  # the term's own new tensor: scaling it in place saves a buffer of its size
            self.emit(f"{indent}{var}.mul_({self.size(coefficient)})")
        else:
            self.emit(f"{indent}{var} = {var} * ({self.size(coefficient)})")
        self.fresh.add(var)

    # -- the result --------------------------------------------------------------------------------------
    def _assemble(self, term_vars: list[str]) -> None:
        legs = self.diagram.layout.legs
        full = [self.size(self.diagram.sizes[leg]) for leg in legs]
        axes = self.diagram.layout.axes
        grouped = [product_expr([self.diagram.sizes[leg] for leg in axis], self.symbols) for axis in axes]
        if not term_vars:
            shape = grouped
            self.emit("# no term depends on the argument: the result is zero")
            self.emit(
                f"return torch.zeros(({', '.join(shape)}{',' if len(shape) == 1 else ''}), device=device, dtype=dtype)"
            )
            return
        for var, term in zip(term_vars, self.diagram.terms):
            if len(term.outputs) != len(legs) and len(term_vars) > 1:
                shape = [s if leg in term.outputs else "1" for leg, s in zip(legs, full)]
                self.emit(f"{var} = {var}.reshape({', '.join(shape) or '()'})  # broadcast over the missing legs")
        result = term_vars[0]
        if len(term_vars) > 1:
            result = self.namespace.create("result")
            # a few terms per line: Python nests `a + b + ...` one level per term, and a sum of thousands would
            # not compile
            for start in range(0, len(term_vars), _TERMS_PER_LINE):
                chunk = " + ".join(term_vars[start : start + _TERMS_PER_LINE])
                self.emit(f"{result} = {chunk}" if start == 0 else f"{result} = {result} + ({chunk})")
        covered = set().union(*(t.outputs for t in self.diagram.terms))
        if covered != set(legs):
            if len(term_vars) == 1:
                shape = [s if leg in covered else "1" for leg, s in zip(legs, full)]
                self.emit(f"{result} = {result}.reshape({', '.join(shape) or '()'})")
            self.emit(f"{result} = {result}.expand({', '.join(full)})")
        if any(len(axis) != 1 for axis in axes):
            self.emit(f"{result} = {result}.reshape({', '.join(grouped) or '()'})  # {self.diagram.layout.text()}")
        self.emit(f"return {result}")


def tensordot_dims(legs: list[tuple[str, ...]], result: tuple[str, ...]) -> tuple[list[int], list[int]] | None:
    """The dims of a tensordot that computes this step in this result order, or None where it takes an einsum."""
    if len(legs) != 2 or any(len(set(x)) != len(x) for x in legs):
        return None
    a, b = legs
    shared = [leg for leg in a if leg in b]
    natural = tuple(leg for leg in a if leg not in shared) + tuple(leg for leg in b if leg not in shared)
    if natural != result:
        return None
    return [a.index(leg) for leg in shared], [b.index(leg) for leg in shared]


def _gathers_last(ops: tuple[ViewOp, ...]) -> tuple[ViewOp, ...]:
    """Move each gather (a copy) after the slices of other axes that follow it (views), so that it copies less."""
    ordered = list(ops)
    changed = True
    while changed:
        changed = False
        for k in range(len(ordered) - 1):
            a, b = ordered[k], ordered[k + 1]
            if isinstance(a, GatherOp) and isinstance(b, SliceOp) and a.axis != b.axis:
                ordered[k], ordered[k + 1] = b, a
                changed = True
    return tuple(ordered)


def step_kind(term: Network, step: Step, legs: list[tuple[str, ...]]) -> str:
    """How the back end computes a step (for `tnc explain`)."""
    operands = [legs[k] for k in step.operands]
    if window_sum_step(term, step, legs) is not None:
        return "window sums of the tensor (no GEMM with Σ_o Π)"
    if len(operands) == 1 and _is_sum(operands[0], step.legs):
        return "sum"
    return "tensordot" if tensordot_dims(operands, step.legs) is not None else "einsum"


def _pairwise(names: list[str], legs: list[tuple[str, ...]], result: tuple[str, ...]) -> str:
    """tensordot where the step is a plain contraction in the natural order, einsum otherwise."""
    if len(names) == 1 and _is_sum(legs[0], result):
        return _sum(names[0], legs[0], result)
    dims = tensordot_dims(legs, result)
    if dims is not None:
        return f"torch.tensordot({names[0]}, {names[1]}, dims=({dims[0]}, {dims[1]}))"
    return _einsum(names, legs, result)


def _is_sum(legs: tuple[str, ...], result: tuple[str, ...]) -> bool:
    """The step only sums some axes away, keeping the others in order."""
    return len(set(legs)) == len(legs) and tuple(leg for leg in legs if leg in result) == result != legs


def _sum(name: str, legs: tuple[str, ...], result: tuple[str, ...]) -> str:
    """One `.sum` per run of adjacent summed axes, the outermost run first: each pass then reads whole contiguous
    rows (4x faster than one reduction over strided axes, measured on KFAC-reduce's Σ_o of a patchify)."""
    runs: list[list[int]] = []
    for axis, leg in enumerate(legs):
        if leg not in result:
            if runs and runs[-1][-1] == axis - 1:
                runs[-1].append(axis)
            else:
                runs.append([axis])
    calls, removed = [], 0
    for run in runs:
        axes = [axis - removed for axis in run]
        calls.append(f".sum({axes[0]})" if len(axes) == 1 else f".sum(({', '.join(map(str, axes))}))")
        removed += len(run)
    return name + "".join(calls)


def _einsum(names: list[str], legs: list[tuple[str, ...]], result: tuple[str, ...]) -> str:
    """An einsum call, with letters given in order of appearance (so equal steps are equal text)."""
    order = list(dict.fromkeys(leg for x in [*legs, result] for leg in x))
    if len(order) > len(_LETTERS):
        raise TncError(f"an einsum step needs {len(order)} indices; torch.einsum takes at most {len(_LETTERS)}")
    letters = {leg: _LETTERS[k] for k, leg in enumerate(order)}
    inputs = ",".join("".join(letters[leg] for leg in x) for x in legs)
    output = "".join(letters[leg] for leg in result)
    return f'torch.einsum("{inputs}->{output}", {", ".join(names)})'


def _constant_comment(factor: Factor) -> str:
    p = factor.pattern
    return p.describe() if isinstance(p, ConvPattern | Select) else "copy tensor"


def _term_text(term: Network) -> str:
    factors = []
    for f in term.factors:
        legs = ", ".join(f.legs)
        factors.append(f"{f.name}[{legs}]" if f.kind == "input" else f"{f.name or f.kind}({legs})")
    body = " * ".join(factors) or "1"
    return body if term.coefficient == 1 else f"{term.coefficient} * {body}"


_BIND_WRITERS: dict[type, Callable[[_FunctionWriter, Any], None]] = {
    AxisSize: _FunctionWriter._axis_size,
    KeywordSize: _FunctionWriter._keyword_size,
    DerivedSize: _FunctionWriter._derived_size,
    SolvedSize: _FunctionWriter._solved_size,
    CheckAxis: _FunctionWriter._check_axis,
    CheckRule: _FunctionWriter._check_rule,
}


def _location(program: Program, diagram: Diagram) -> str:
    line = f":{diagram.span.line}" if diagram.span else ""
    return f"{PurePath(program.filename).name}{line}"
