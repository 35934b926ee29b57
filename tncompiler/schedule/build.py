"""The schedule pass: one function's ops from its optimised diagram. Every decision about the generated code is
made here (checks, bindings, draws, kernels and their bias, contraction forms and orders, scaling, the sum of the
terms), and what each op allocates (`Assign.entries`, `scratch`, which the memory guard sums); the peephole rules
then tidy the ops and the printer writes them."""

from __future__ import annotations

from pathlib import PurePath

import sympy

from tncompiler.binding import Binding
from tncompiler.ir.network import Diagram, Network, Program, Shared
from tncompiler.ir.values import ConvPattern, Layout, Sampler, kept_symbol, p_symbol
from tncompiler.passes.lower import folded_bias
from tncompiler.schedule.checks import checks, device_and_dtype
from tncompiler.schedule.context import Context
from tncompiler.schedule.contract import contract_term, scale
from tncompiler.schedule.kernels import kernel_term, output_axes
from tncompiler.schedule.names import ModuleNames
from tncompiler.schedule.operands import LegNames, Operands, entries_of
from tncompiler.schedule.ops import (
    Assign,
    BinOp,
    Comment,
    Expr,
    Function,
    Lit,
    Name,
    Return,
    SizeOf,
    Tuple,
    call,
    method,
)

__all__ = ["schedule_function"]

# Terms summed per line: Python nests `a + b + ...` one level per term, and a sum of thousands would not compile.
TERMS_PER_LINE = 20


def schedule_function(
    program: Program, built: Diagram, diagram: Diagram, binding: Binding, module: ModuleNames, rewrites: tuple[str, ...]
) -> Function:
    """The function of `diagram` (the optimised form of `built`), before the peephole rules."""
    return _Scheduler(program, built, diagram, binding, module, rewrites).function()


class _Scheduler:
    def __init__(
        self, program: Program, built: Diagram, diagram: Diagram, binding: Binding, module: ModuleNames,
        rewrites: tuple[str, ...],
    ) -> None:  # fmt: skip
        self.program, self.built, self.diagram, self.rewrites = program, built, diagram, rewrites
        self.name = module.functions[diagram.name]
        self.ctx = Context(diagram, binding, self.name, module.taken())
        self.operands = Operands(self.ctx)
        self.choosers: list[Function] = []

    def function(self) -> Function:
        ctx = self.ctx
        checks(ctx)
        device_and_dtype(ctx)
        self._draws()
        for shared in self.diagram.shared:
            self._shared(shared)
        bias = folded_bias(self.diagram)
        results = []
        for position, term in enumerate(self.diagram.terms):
            if bias is not None and position == bias[1]:
                continue  # passed to the kernel
            folded = self.diagram.terms[bias[1]] if bias is not None and position == bias[0] else None
            results.append((term, *self._term(position, term, folded)))
        self._assemble(results)
        keywords: list[tuple[str, Expr | None]] = [(ctx.symbols[s], None) for s in ctx.binding.keywords]
        keywords += [(ctx.rates[s.index], Lit(s.p if s.count is None else s.count)) for s in self.diagram.samplers]
        keywords += [("generator", Lit(None))] if self.diagram.samplers else []
        keywords += [] if self.diagram.arguments else [("dtype", Lit(None)), ("device", Lit(None))]
        params = tuple(ctx.args[a.name] for a in self.diagram.arguments)
        return Function(
            self.name, params, tuple(keywords), self._doc(), tuple(ctx.ops), dict(ctx.symbols), tuple(self.choosers),
            frozenset(ctx.helpers),
        )  # fmt: skip

    def _draws(self) -> None:
        """Tensor dropout: the kept entries of each sampled index, drawn once per call on the host (or on the
        generator's device), so nothing waits for the arguments' device, then moved there without waiting."""
        if self.diagram.samplers:
            checked = call(self.ctx.helper("_generator_keyword"), Lit(self.ctx.name), Name("generator"))
            self.ctx.emit(Assign("generator", checked, "check"))
        for sampler in self.diagram.samplers:
            host = self._draw(sampler)
            moved = method(Name(host), "to", Name("device"), non_blocking=Lit(True))
            # a view-kind op: dropped where nothing reads the entries on the device (a masked kernel reads the host's)
            self.ctx.samplers[sampler.index] = self.ctx.assign(f"keep_{sampler.index}", moved, "view").id
            self.ctx.drawn[sampler.index] = host

    def _draw(self, sampler: Sampler) -> str:
        """The checked keyword argument, and the variable of the drawn entries (the number kept: a size symbol)."""
        ctx, index, size = self.ctx, sampler.index, SizeOf(sampler.size)
        keyword, function = ctx.rates[index], Lit(ctx.name)
        if sampler.count is None:
            checked = call(ctx.helper("_keep_probability"), function, Lit(keyword), Name(keyword))
            ctx.emit(Assign(keyword, checked, "check"))
            note = f"each entry of {index} kept with probability {keyword}, drawn on the host"
            drawn = ctx.assign(f"drawn_{index}", call(ctx.helper("_keep"), size, Name(keyword), Name("generator")),
                               "draw", note)  # fmt: skip
            ctx.symbols[kept_symbol(index)] = ctx.assign(f"{index}_kept", method(drawn, "numel"), "view").id
            ctx.symbols[p_symbol(index)] = keyword
            return drawn.id
        checked = call(ctx.helper("_keep_count"), function, Lit(keyword), Name(keyword), Lit(index), size)
        ctx.emit(Assign(keyword, checked, "check"))
        note = f"{keyword} distinct entries of {index}, drawn uniformly on the host"
        drawn = ctx.assign(f"drawn_{index}", call(ctx.helper("_choose"), size, Name(keyword), Name("generator")),
                           "draw", note)  # fmt: skip
        ctx.symbols[kept_symbol(index)] = keyword
        ctx.fixed.add(index)
        return drawn.id

    def _shared(self, shared: Shared) -> None:
        """A sub-network that a term reads twice, computed once: one axis per leg, in the order of its outputs (of
        its kernel's output, for a kernel: `Operands.legs` tells its readers)."""
        ctx, net = self.ctx, shared.network
        names = self.operands.shown(net)
        ctx.emit(Comment(f"{shared.name}{names.text(net.outputs)} = {_term_text(net, names)}, computed once"))
        var = ctx.var(shared.name)
        if net.lowering.native is not None:
            # held in the kernel's order (its readers' steps take any order): no permuted view for a later reshape
            # (a Gram product's rows) to copy
            order = tuple(leg for axis in output_axes(net, net.lowering.native) for leg in axis)
            ctx.emit(Comment(net.lowering.native.describe()))
            kernel_term(ctx, self.operands, net, net.lowering.native, Layout(tuple((leg,) for leg in order)), var)
            self.operands.stored[shared.name] = order
        else:
            chooser, _ = contract_term(ctx, self.operands, shared.name, net, net.outputs, var)
            if chooser is not None:
                self.choosers.append(chooser)
        ctx.shared[shared.name] = var

    def _bias(self, term: Network) -> Expr:
        """The argument of a bias term, 1-d as the kernels take it (`b[g, d]` with g = 1 has two axes)."""
        factor = term.factors[0]
        argument = Name(self.ctx.args[factor.name])
        layout = next(a.layout for a in self.diagram.arguments if a.name == factor.name)
        if len(layout.axes) == 1:
            return argument
        entries = sympy.Mul(*[sympy.sympify(term.size(leg)) for leg in factor.legs])
        return self.ctx.assign(f"{factor.name}_flat", method(argument, "reshape", SizeOf(entries)), "view")

    def _term(self, position: int, term: Network, bias: Network | None) -> tuple[str, Layout]:
        """The term's ops (with the `bias` term added by its kernel); its variable and how its axes hold its legs."""
        ctx, total = self.ctx, len(self.diagram.terms)
        label = f"term {position + 1} of {total}: " if total > 1 else ""
        text = _term_text(term, self.operands.shown(term))
        ctx.emit(Comment(f"{label}{text}" + (" + bias" if bias is not None else "")))
        target = tuple(leg for leg in self.diagram.layout.legs if leg in term.outputs)
        var = ctx.var("result" if total == 1 or (bias is not None and total == 2) else f"term{position + 1}")
        native = term.lowering.native
        if native is not None:
            ctx.emit(Comment(native.describe()))
            added = None if bias is None else self._bias(bias)
            axes = kernel_term(ctx, self.operands, term, native, _grouped(self.diagram.layout, term), var, added)
            scale(ctx, term, var, True, False)
            return var, axes
        chooser, fresh = contract_term(ctx, self.operands, position, term, target, var)
        if chooser is not None:
            self.choosers.append(chooser)
        if not fresh and not any(f.kind in ("input", "shared") for f in term.factors):
            # a term of constants alone (a pattern, a selection) may be the cached constant or a view of it: the
            # caller gets a copy, which it may change without changing every later result
            value, copy = method(Name(var), "clone"), entries_of(term.size(leg) for leg in target)
            ctx.emit(Assign(var, value, "view", "not the cached constant itself", True, entries=copy))
        return var, Layout(tuple((leg,) for leg in target))

    def _assemble(self, results: list[tuple[Network, str, Layout]]) -> None:
        """The sum of the terms, broadcast over the legs a term lacks, laid out as the file's result."""
        ctx, diagram = self.ctx, self.diagram
        if not results:
            ctx.emit(Comment("no term depends on the argument: the result is zero"))
            zeros = call("torch.zeros", Tuple(self._grouped()), device=Name("device"), dtype=Name("dtype"))
            ctx.emit(Return(zeros, entries=self._entries()))
            return
        if len(results) == 1 and self._as_laid_out(*results[0][1:]):
            return
        result = self._sum([self._flat(term, var, held, len(results) > 1) for term, var, held in results])
        legs, full = diagram.layout.legs, [SizeOf(diagram.sizes[leg]) for leg in diagram.layout.legs]
        covered = set().union(*(term.outputs for term, _, _ in results))
        strided = Name(result) in self.operands.strided
        if covered != set(legs):
            if len(results) == 1:
                shape = [s if leg in covered else SizeOf(1) for leg, s in zip(legs, full)]
                ctx.emit(Assign(result, method(Name(result), "reshape", *shape), "view"))
            ctx.emit(Assign(result, method(Name(result), "expand", *full), "view"))
            strided = True  # an expanded view
        if any(len(axis) != 1 for axis in diagram.layout.axes):
            self._regroup(result, strided)
        ctx.emit(Return(Name(result)))

    def _regroup(self, var: str, strided: bool) -> None:
        """The result's axes grouped as the file writes them: a reshape, which copies a strided view where it merges
        axes (of more than one entry)."""
        sizes = self.diagram.sizes
        merges = any(sum(sizes[leg] != 1 for leg in axis) > 1 for axis in self.diagram.layout.axes)
        value = method(Name(var), "reshape", *self._grouped())
        copy = self._entries() if strided and merges else None
        self.ctx.emit(Assign(var, value, "view", self.diagram.layout.text(), entries=copy))

    def _entries(self) -> sympy.Expr:
        """The entries of the function's result."""
        return entries_of(self.diagram.sizes[leg] for leg in self.diagram.layout.legs)

    def _as_laid_out(self, var: str, held: Layout) -> bool:
        """The one term's result returned as it is, or after one reshape, where it holds the file's result in order:
        the same legs of more than one entry in the same order (a size-1 leg, written or squeezed, changes no entry's
        place). Its own axes are the file's where they group those legs alike (a kernel's output)."""
        ctx, layout, sizes = self.ctx, self.diagram.layout, self.diagram.sizes

        def wide(legs: tuple[str, ...]) -> tuple[str, ...]:
            return tuple(leg for leg in legs if sizes[leg] != 1)

        if wide(held.legs) != wide(layout.legs):
            return False
        if [wide(axis) for axis in held.axes] != [wide(axis) for axis in layout.axes]:
            self._regroup(var, Name(var) in self.operands.strided)
        ctx.emit(Return(Name(var)))
        return True

    def _grouped(self) -> tuple[SizeOf, ...]:
        sizes = self.diagram.sizes
        return tuple(
            SizeOf(sympy.Mul(*[sympy.sympify(sizes[leg]) for leg in axis])) for axis in self.diagram.layout.axes
        )

    def _flat(self, term: Network, var: str, held: Layout, broadcast: bool) -> Name:
        """A term's result with one axis per leg, and size-1 axes for the legs it lacks (where it is summed)."""
        ctx, diagram = self.ctx, self.diagram
        if held.axes != tuple((leg,) for leg in held.legs):  # a kernel's grouped axes: one axis per leg first
            shape = [SizeOf(diagram.sizes[leg]) for leg in held.legs]
            ctx.emit(Assign(var, method(Name(var), "reshape", *shape), "view"))
        if broadcast and len(term.outputs) != len(diagram.layout.legs):
            shape = [SizeOf(diagram.sizes[leg] if leg in term.outputs else 1) for leg in diagram.layout.legs]
            ctx.emit(Assign(var, method(Name(var), "reshape", *shape), "view", "broadcast over the missing legs"))
        return Name(var)

    def _sum(self, names: list[Name]) -> str:
        """The terms added a few per line (Python nests `a + b + ...` one level per term: thousands would not
        compile)."""
        if len(names) == 1:
            return names[0].id
        result, full = self.ctx.var("result"), self._entries()
        for start in range(0, len(names), TERMS_PER_LINE):
            chunk = names[start : start + TERMS_PER_LINE]
            if start == 0:  # term1 + term2 (+ ...): one temporary past two terms
                brief = full if len(chunk) > 2 else None
                self.ctx.emit(Assign(result, _sum(chunk), "sum", "", True, entries=full, scratch=brief))
            else:  # the chunk's sum and the new result, while the old one lives
                brief = full * (2 if len(chunk) > 1 else 1)
                self.ctx.emit(Assign(result, BinOp("+", Name(result), _sum(chunk)), "sum", "", True, scratch=brief))
        return result

    # -- the docstring ---------------------------------------------------------------------------------------
    def _doc(self) -> str:
        d, ctx = self.diagram, self.ctx
        layout = self.built.layout  # as the file wrote it, before rewrites split any open leg
        lines = [
            f"{d.name}{layout.text()}: compiled from {_location(self.program, d)}.",
            "",
            "    " + "\n    ".join(d.source.split("\n")),  # only "\n" ends a line of a .tnd file
            "",
        ]
        args = [
            f"    {ctx.args[a.name]}: {_renamed(ctx, a.name)}{a.layout.text()}, sizes {_shape_text(d, a.layout)}"
            for a in d.arguments
        ]
        args += [
            f"    {ctx.symbols[s]}: keyword-only int, the size of index {s} (no argument carries it)"
            for s in ctx.binding.keywords
        ]
        args += [_rate_doc(ctx.rates[s.index], s) for s in d.samplers]
        if d.samplers:
            args.append("    generator: keyword-only torch.Generator or None (torch's default CPU one), for the draws")
        if not d.arguments:
            args.append("    dtype: keyword-only torch.dtype or None (torch's default), of the result")
            args.append("    device: keyword-only torch.device or None (torch's default), of the result")
        lines += ["Args:", *args] if args else []
        lines += ["", "Returns:", f"    {layout.text()}, sizes {_shape_text(d, d.layout)}"]
        if self.rewrites:
            lines += ["", "Rewrites applied:"] + [f"    {note}" for note in self.rewrites]
        patterns = {f.name: f.pattern for t in d.networks() for f in t.factors if isinstance(f.pattern, ConvPattern)}
        if patterns:
            lines += ["", "Index patterns:"]
            lines += [
                f"    {name}: {p.describe()}, (I, O, K) = ({p.in_size}, {p.out_size}, {p.kernel_size})"
                for name, p in sorted(patterns.items())
            ]
        return "\n".join(lines)


def _rate_doc(keyword: str, sampler: Sampler) -> str:
    if sampler.count is None:
        return f"    {keyword}: keyword-only float in (0, 1], the probability to keep each entry of {sampler.index}"
    return f"    {keyword}: keyword-only int, the number of entries of {sampler.index} to keep (1 to {sampler.size})"


def _grouped(layout: Layout, term: Network) -> Layout:
    """The file's grouping of the result's axes, restricted to the legs a term has."""
    axes = tuple(tuple(leg for leg in axis if leg in term.outputs) for axis in layout.axes)
    return Layout(tuple(axis for axis in axes if axis))


def _sum(names: list[Name]) -> Expr:
    total: Expr = names[0]
    for name in names[1:]:
        total = BinOp("+", total, name)
    return total


def _term_text(term: Network, names: LegNames) -> str:
    """The term as a comment shows it, in the file's names for its legs."""
    factors = []
    for f in term.factors:
        legs = names.text(f.legs)
        factors.append(f"{f.name}{legs}" if f.kind in ("input", "shared") else f"{f.name or f.kind}({legs[1:-1]})")
    body = " * ".join(factors) or "1"
    return body if term.coefficient == 1 else f"{term.coefficient} * {body}"


def _location(program: Program, diagram: Diagram) -> str:
    line = f":{diagram.span.line}" if diagram.span else ""
    return f"{PurePath(program.filename).name}{line}"


def _renamed(ctx: Context, name: str) -> str:
    return f"the file's {name!r}, " if ctx.args[name] != name else ""


def _shape_text(diagram: Diagram, layout: Layout) -> str:
    sizes = [sympy.Mul(*[sympy.sympify(diagram.sizes[leg]) for leg in axis]) for axis in layout.axes]
    return "[" + ", ".join(str(s) for s in sizes) + "]"
