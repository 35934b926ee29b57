"""The tensors a term starts from: arguments split into their legs, cached constants (patterns, selections, copy
tensors, fused groups), and the views of either (slices, reshapes, windows, gathers of sampled entries). Each op says
what it allocates (`entries`): a constant its entries, kept in the module's cache; a view nothing, but for pads,
gathers of sampled entries and merges of a strided view, which copy."""

from __future__ import annotations

import string
from collections.abc import Iterable
from dataclasses import replace

import sympy

from tncompiler.errors import TncError
from tncompiler.ir.names import fresh_name
from tncompiler.ir.network import Network, natural_shape
from tncompiler.ir.values import (
    ConvPattern,
    Factor,
    Fused,
    MergeOp,
    Select,
    Size,
    SliceOp,
    SplitOp,
    SqueezeOp,
    ViewOp,
    WindowOp,
    gathers_last,
    kept_symbol,
    slice_length,
)
from tncompiler.schedule.context import Context
from tncompiler.schedule.ops import (
    Assign,
    Expr,
    Index,
    Lambda,
    Lit,
    Name,
    SizeOf,
    Slice,
    Tuple,
    call,
    method,
)

__all__ = ["LegNames", "Operands", "einsum", "entries_of", "pad"]

_LETTERS = string.ascii_lowercase + string.ascii_uppercase
_ALL = Slice()
_DOTS = Lit("...")


def einsum(operands: list[Expr], legs: list[tuple[str, ...]], result: tuple[str, ...]) -> Expr:
    """torch.einsum with letters given in order of appearance (so equal steps are equal expressions)."""
    order = list(dict.fromkeys(leg for x in [*legs, result] for leg in x))
    if len(order) > len(_LETTERS):
        raise TncError(f"an einsum step needs {len(order)} indices; torch.einsum takes at most {len(_LETTERS)}")
    letters = {leg: _LETTERS[k] for k, leg in enumerate(order)}
    spec = ",".join("".join(letters[leg] for leg in x) for x in legs) + "->" + "".join(letters[leg] for leg in result)
    return call("torch.einsum", Lit(spec), *operands)


def entries_of(sizes: Iterable[Size | sympy.Expr]) -> sympy.Expr:
    """The entries of a tensor of these sizes."""
    return sympy.Mul(*[sympy.sympify(size) for size in sizes])


def pad(ctx: Context, expr: Expr, pairs: list[tuple[Size, Size]]) -> Expr:
    """`expr` padded by (left, right) pairs of its last axes, in order: F.pad where every amount is a known
    non-negative int, else the helper `_pad`, which also crops (any amount) and copies nothing for zeros."""
    amounts = Tuple(tuple(SizeOf(amount) for left, right in reversed(pairs) for amount in (left, right)))
    if all(isinstance(amount, int) and amount >= 0 for pair in pairs for amount in pair):
        return call("torch.nn.functional.pad", expr, amounts)
    return call(ctx.helper("_pad"), expr, amounts)


class LegNames:
    """The file's own names for a network's legs, for the comments on its code: a copy the compiler made of an index
    (`i1~4`) is shown by the index's name where no other leg of the network has it (else primed: i1', i1''), and
    legs that simplify merged (`o1.o2`) as the file groups axes, (o1 o2)."""

    def __init__(self, legs: set[str]) -> None:
        atoms = {atom for leg in legs for atom in leg.split(".")}
        taken = {atom for atom in atoms if "~" not in atom}
        self.atoms = {atom: atom for atom in taken}
        for atom in sorted(atoms - taken, key=lambda atom: (atom.split("~")[0], len(atom), atom)):
            self.atoms[atom] = fresh_name(atom.split("~")[0], taken)

    def leg(self, leg: str) -> str:
        parts = [self.atoms.get(atom, atom.split("~")[0]) for atom in leg.split(".")]  # else a leg of a step's own
        return parts[0] if len(parts) == 1 else f"({' '.join(parts)})"

    def text(self, legs: tuple[str, ...]) -> str:
        """`[a, b, ..]`, as a comment shows a tensor's legs."""
        return f"[{', '.join(self.leg(leg) for leg in legs)}]"


class Operands:
    """The starting tensor of each factor, made once per function (equal factors share it)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.names: dict[int, LegNames] = {}
        self.made: dict[tuple[object, ...], Expr] = {}
        self.fused: dict[Expr, Expr] = {}
        self.stored: dict[str, tuple[str, ...]] = {}  # shared sub-network -> its open legs in its variable's order
        # tensors that are strided views (windows, a strided slice, a permutation, an expansion), which a reshape that
        # merges their axes, a GEMM or a kernel's operand layout copies
        self.strided: set[Expr] = set()
        self.shapes: dict[Expr, tuple[Size, ...]] = {}  # the shape of each view made, by its variable

    def shown(self, network: Network) -> LegNames:
        """The names that comments give the legs of `network` (a term or a shared sub-network)."""
        if id(network) not in self.names:
            self.names[id(network)] = LegNames(set(network.sizes))
        return self.names[id(network)]

    def of(self, factor: Factor, network: Network) -> Expr:
        sizes = tuple(str(network.size(leg)) if leg in network.sizes else "" for leg in factor.legs)
        key = (factor.kind, factor.name, factor.pattern, factor.view, sizes)
        if key not in self.made:
            base = self._base(factor, network)
            if factor.view is None:
                self.made[key] = base
            else:
                note = self.shown(network).text(factor.legs)
                expr, copied, strided, shape = self.chain(factor, base)
                made = self.ctx.assign(f"{factor.name or factor.kind}_view", expr, "view", note, entries=copied or None)
                self.made[key], self.shapes[made] = made, shape
                if strided:
                    self.strided.add(made)
        return self.made[key]

    def unmerged(self, factor: Factor, network: Network) -> tuple[Factor, tuple[str, ...]] | None:
        """The factor before the merges that end its view (a reshape, which copies a strided view), each merged leg
        split again, and the merged legs; None where its view ends otherwise. For a step that only sums the merged
        legs, which needs no merge. `of` makes its tensor."""
        ops = gathers_last(factor.view.ops) if factor.view is not None else ()
        kept = len(ops)
        while kept and isinstance(ops[kept - 1], MergeOp):
            kept -= 1
        if factor.view is None or kept == len(ops):
            return None
        legs, merged = list(factor.legs), []
        for op in reversed(ops[kept:]):
            assert isinstance(op, MergeOp)
            merged.append(legs[op.axis])
            legs[op.axis : op.axis + 1] = _parts(legs[op.axis], set(legs) | set(network.sizes))
        return replace(factor, legs=tuple(legs), view=replace(factor.view, ops=ops[:kept])), tuple(merged)

    def _base(self, factor: Factor, network: Network) -> Expr:
        """The factor's tensor before its view: an argument split into its legs, or a cached constant."""
        if factor.kind == "input":
            argument = Name(self.ctx.args[factor.name])
            layout = next(a.layout for a in self.ctx.diagram.arguments if a.name == factor.name)
            base = [network.size(leg) for leg in factor.legs] if factor.view is None else list(factor.view.base)
            if len(base) == len(layout.axes):
                return argument
            shape = [SizeOf(s) for s in base]
            return self.ctx.assign(f"{factor.name}_legs", method(argument, "reshape", *shape), "view")
        if factor.kind == "shared":
            return self._shared(factor, network)
        if isinstance(factor.pattern, Fused):
            return self._fused(factor.pattern)
        value, entries = self.constant(factor)
        return self.ctx.assign(factor.name or factor.kind, value, "constant", _described(factor), entries=entries)

    def _shared(self, factor: Factor, network: Network) -> Expr:
        """A shared sub-network's result, computed before the terms with one axis per open leg (in the order `stored`
        says). Simplify may have dropped size-1 open legs of the sub-network, which its readers still carry: they
        come back as size-1 axes at the end, a view."""
        var = Name(self.ctx.shared[factor.name])
        if len(self._outputs(factor.name)) == len(factor.legs):
            return var
        shape = [SizeOf(network.size(leg)) for leg in self.legs(factor, network)]
        legs = self.ctx.assign(f"{factor.name}_legs", method(var, "reshape", *shape), "view")  # size-1 axes: a view
        if var in self.strided:
            self.strided.add(legs)
        return legs

    def legs(self, factor: Factor, network: Network) -> tuple[str, ...]:
        """The legs that the axes of `of(factor)` hold, in order: the factor's own, but for a shared sub-network,
        whose reader names its open legs in their order in the network (size-1 ones perhaps dropped since) while its
        variable may hold them in its kernel's order."""
        if factor.kind != "shared":
            return factor.legs
        outputs = self._outputs(factor.name)
        stored = self.stored.get(factor.name, outputs)
        shared = self._network(factor.name)
        at = _aligned([shared.size(leg) != 1 for leg in outputs], [network.size(leg) != 1 for leg in factor.legs])
        held = [at[outputs.index(leg)] for leg in stored]
        held += [k for k in range(len(factor.legs)) if k not in held]  # the dropped size-1 legs
        return tuple(factor.legs[k] for k in held)

    def _outputs(self, name: str) -> tuple[str, ...]:
        return self._network(name).outputs

    def _network(self, name: str) -> Network:
        return next(s.network for s in self.ctx.diagram.shared if s.name == name)

    def constant(self, factor: Factor) -> tuple[Expr, sympy.Expr]:
        """A call that builds (or fetches from the cache) a pattern, selection or copy tensor, before its view; and
        its entries, which the module's cache keeps."""
        p, ctx = factor.pattern, self.ctx
        device, dtype = Name("device"), Name("dtype")
        if isinstance(p, ConvPattern):
            shape = (SizeOf(p.in_size), SizeOf(p.out_size), Lit(p.kernel_size))
            value = call(
                ctx.helper("_conv_pattern"), *shape, Lit(p.stride), Lit(p.pad_left), Lit(p.dilation), device, dtype
            )
            return value, entries_of((p.in_size, p.out_size, p.kernel_size))
        if isinstance(p, Select):
            size = (SizeOf(p.in_size), SizeOf(p.out_size))
            value = call(ctx.helper("_select"), *size, Lit(p.start), Lit(p.step), device, dtype)
            return value, entries_of((p.in_size, p.out_size))
        base = (
            factor.view.base if factor.view is not None else tuple(ctx.diagram.sizes.get(leg, 1) for leg in factor.legs)
        )
        value = call(ctx.helper("_delta"), SizeOf(base[0]), Lit(len(base)), device, dtype)
        return value, sympy.sympify(base[0]) ** len(base)  # dense: size ** legs entries

    def _fused(self, fused: Fused) -> Expr:
        """Constants contracted once per call-time shape, device and dtype, then cached (equal ones shared)."""
        constants = [self.constant(part) for part in fused.parts]
        parts = [self.chain(part, value)[0] for part, (value, _) in zip(fused.parts, constants, strict=True)]
        product = einsum(parts, [part.legs for part in fused.parts], fused.legs)
        if product not in self.fused:
            ctx = self.ctx
            var = ctx.var("fused")
            shape = [size for part in fused.parts for size in natural_shape(part) or ()]
            symbols = sorted(set().union(*(sympy.sympify(size).free_symbols for size in shape)), key=str)
            key = Tuple((Lit(f"{ctx.name}.{var}"), *(SizeOf(s) for s in symbols), Name("device"), Name("dtype")))
            value = call(ctx.helper("_cached"), key, Lambda(product))
            # the product and the parts' constants (cached by the helpers that build them)
            entries = entries_of(dict(fused.sizes)[leg] for leg in fused.legs) + sum(e for _, e in constants)
            ctx.emit(Assign(var, value, "constant", f"{fused.describe()}, contracted once per shape", entries=entries))
            self.fused[product] = Name(var)
        return self.fused[product]

    def chain(self, factor: Factor, base: Expr) -> tuple[Expr, sympy.Expr, bool, tuple[Size, ...]]:
        """The factor's view ops as PyTorch views: slicing, reshape, squeeze, windows, gathers; the entries they copy
        (pads, gathers, merges of a strided view), whether the result is a strided view, and its shape."""
        strided = base in self.strided
        if factor.view is None:
            return base, sympy.Integer(0), strided, ()
        shape: list[Size] = list(factor.view.base)
        expr, padded, copied = base, False, sympy.Integer(0)
        ops = gathers_last(factor.view.ops)
        for position, op in enumerate(ops):
            if isinstance(op, WindowOp) and not padded:  # every window axis at once
                expr, grown = self._pad_windows(expr, shape, ops, position)
                copied, padded = copied + grown, True
            expr, shape, copy, strided = self._view(expr, shape, op, strided)
            copied += copy
        return expr, copied, strided, tuple(shape)

    def _pad_windows(
        self, expr: Expr, shape: list[Size], ops: tuple[ViewOp, ...], first: int
    ) -> tuple[Expr, sympy.Expr]:
        """Pad every axis of a run of windows at once, before the first unfold: padding after an unfold would copy
        the (larger) windowed view. The entries of the padded copy (a right-hand padding known only at call time is
        not counted, as other call-time sizes are not)."""
        axes: dict[int, tuple[Size, Size]] = {}
        earlier: list[int] = []
        for op in ops[first:]:
            if not isinstance(op, WindowOp):
                break
            axis = op.axis
            for split in reversed(earlier):  # undo the axes that the run's earlier windows inserted
                axis -= 1 if axis > split else 0
            earlier.append(op.axis)
            axes[axis] = (op.pattern.pad_left, op.pattern.right_pad())
        if all(pair == (0, 0) for pair in axes.values()):
            return expr, sympy.Integer(0)
        grown = [
            size + axes[a][0] + (axes[a][1] if isinstance(axes[a][1], int) else 0) if a in axes else size
            for a, size in enumerate(shape)
        ]
        return pad(self.ctx, expr, [axes.get(a, (0, 0)) for a in range(min(axes), len(shape))]), entries_of(grown)

    def _view(
        self, expr: Expr, shape: list[Size], op: ViewOp, strided: bool
    ) -> tuple[Expr, list[Size], sympy.Expr, bool]:
        """One view op: the expression, the shape after it, the entries it copies, whether the result is strided."""
        none = sympy.Integer(0)
        if isinstance(op, SliceOp):
            step = None if op.step == 1 else Lit(op.step)
            bounds = Slice(Lit(op.start), SizeOf(op.stop), step)
            length = slice_length(op.start, op.stop, op.step)
            strided = strided or (length != shape[op.axis] and (op.axis > 0 or op.step != 1))
            shape[op.axis] = length
            return Index(expr, (*(_ALL,) * op.axis, bounds)), shape, none, strided
        if isinstance(op, SplitOp | MergeOp):
            if isinstance(op, SplitOp):
                shape[op.axis : op.axis + 1] = list(op.sizes)
                copied = none
            else:
                shape[op.axis : op.axis + 2] = [sympy.sympify(shape[op.axis]) * shape[op.axis + 1]]
                copied, strided = (entries_of(shape) if strided else none), False  # merging strided axes copies
            return method(expr, "reshape", *(SizeOf(s) for s in shape)), shape, copied, strided
        if isinstance(op, SqueezeOp):
            del shape[op.axis]
            return method(expr, "squeeze", Lit(op.axis)), shape, none, strided
        if isinstance(op, WindowOp):
            return (*_window(expr, shape, op), none, True)
        shape[op.axis] = kept_symbol(op.index)  # a gather: a copy of the kept entries
        kept = Name(self.ctx.samplers[op.index])
        if op.axis < len(shape) - 1:
            return method(expr, "index_select", Lit(op.axis), kept), shape, entries_of(shape), False
        # index_select is slow on the last axis
        return call(self.ctx.helper("_take"), expr, Lit(op.axis), kept), shape, entries_of(shape), False


def _parts(leg: str, taken: set[str]) -> tuple[str, str]:
    """Names for the two legs that simplify merged into `leg` (named `a.b`): theirs where free, else new ones."""
    first, dot, second = leg.rpartition(".")
    if dot and first != second and not {first, second} & taken:
        return first, second
    return fresh_name(f"{leg}~", set(taken)), fresh_name(f"{leg}~", set(taken) | {f"{leg}~"})


def _aligned(outputs: list[bool], reader: list[bool]) -> list[int]:
    """For each open leg of a shared sub-network (True: more than one entry), the position of its reader's leg. The
    reader's legs are the sub-network's legs as shared, of which simplify drops size-1 ones, keeping the order; a
    size-1 leg may stand for any other."""
    positions, j = [], 0
    for wide in outputs:
        while j < len(reader) and reader[j] != wide:
            assert not reader[j], "a shared sub-network lost a leg of more than one entry"
            j += 1
        assert j < len(reader), "a shared sub-network has more open legs than its reader"
        positions.append(j)
        j += 1
    assert not any(reader[j:]), "a shared sub-network lost a leg of more than one entry"
    return positions


def _window(expr: Expr, shape: list[Size], op: WindowOp) -> tuple[Expr, list[Size]]:
    """x[.., i, ..] -> x[.., o, k, ..] = x_padded[.., o·S + k·D, ..]: strided windows (padded already)."""
    p = op.pattern
    expr = method(expr, "unfold", Lit(op.axis), Lit(p.extent), Lit(p.stride))
    if p.dilation != 1:
        expr = Index(expr, (_DOTS, Slice(None, None, Lit(p.dilation))))
    shape[op.axis : op.axis + 1] = [p.out_size, p.kernel_size]
    return method(expr, "movedim", Lit(-1), Lit(op.axis + 1)), shape


def _described(factor: Factor) -> str:
    p = factor.pattern
    return p.describe() if isinstance(p, ConvPattern | Select) else "copy tensor"
