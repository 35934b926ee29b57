"""A term that is not a kernel: its contraction order (or several, chosen at call time by their cost), each
pairwise step as a tensordot, an einsum, a plain sum, a Gram product or window sums, and the term's coefficient.
Each step's op says what it allocates (`_allocates`): its result, the operands a GEMM lays out, `.sum` temporaries."""

from __future__ import annotations

import math

import sympy

from tncompiler.cost import evaluate, symbols_of
from tncompiler.ir.network import Network, Plan, Step
from tncompiler.ir.values import Size
from tncompiler.order import summed_runs
from tncompiler.schedule.context import Context
from tncompiler.schedule.names import safe_identifier
from tncompiler.schedule.operands import LegNames, Operands, einsum, entries_of
from tncompiler.schedule.ops import (
    Assign,
    Attr,
    BinOp,
    Branch,
    Call,
    Effect,
    Expr,
    Function,
    IfExp,
    Lit,
    Method,
    Name,
    Op,
    Return,
    SizeOf,
    Tuple,
    Unary,
    call,
    method,
)
from tncompiler.schedule.window_sums import known_long, summed_pattern, threshold, window_sum_factors, window_sum_step

__all__ = ["contract_term", "pairwise", "scale", "step_kind", "tensordot_dims"]


def contract_term(
    ctx: Context, operands: Operands, position: int | str, term: Network, target: tuple[str, ...], var: str
) -> tuple[Function | None, bool]:
    """Ops computing `term` (the diagram's term at `position`, or the shared sub-network of that name) into `var`,
    laid out as `target`; the plan chooser (if the order depends on the call-time sizes) and whether `var` is new
    storage."""
    expected = ctx.expected
    plans = term.lowering.plans  # found once, by lowering (passes/lower.py)
    summed = window_sum_factors(term, plans)  # applied as window sums: no constant to build
    unmerged = _unmerged(operands, term, plans, target, summed)
    starts = [
        Name("") if k in summed else unmerged[k][0] if k in unmerged else operands.of(f, term)
        for k, f in enumerate(term.factors)
    ]
    # a shared result may hold its legs in its kernel's order
    held = [unmerged[k][1] if k in unmerged else operands.legs(f, term) for k, f in enumerate(term.factors)]
    if len(plans) == 1:
        return None, scale(ctx, term, var, *_contract(ctx, term, plans[0], starts, held, target, var, operands))
    chooser = _chooser(ctx, position, plans, expected)
    picked = call(chooser.name, *(Name(ctx.symbols[s]) for s in chooser.symbols))
    arms: list[tuple[Expr | None, tuple[Op, ...]]] = []
    notes, all_fresh = [], True
    for k, plan in enumerate(plans):
        with ctx.block() as body:
            fresh = scale(ctx, term, var, *_contract(ctx, term, plan, starts, held, target, var, operands))
        all_fresh = all_fresh and fresh
        test = None if k == len(plans) - 1 else BinOp("==", picked, Lit(k))
        arms.append((test, tuple(body)))
        notes.append(f"plan {k + 1}: {plan.flops} multiply-adds")
    ctx.emit(Branch(tuple(arms), "contract", tuple(notes)))
    return chooser, all_fresh


def _chooser(ctx: Context, position: int | str, plans: tuple[Plan, ...], expected: dict[sympy.Symbol, int]) -> Function:
    """A cached module-level function that picks the cheapest plan for the call-time sizes. Sampled sizes count at
    their expected value, so that the choice never depends on the data (torch.compile can trace it)."""
    costs = tuple(sympy.sympify(p.flops).subs(expected) for p in plans)
    params = sorted(set().union(*(c.free_symbols for c in costs)), key=str)
    name, what = (
        (f"_{ctx.name}_plan{position + 1}", f"term {position + 1}")
        if isinstance(position, int)
        else (f"_{ctx.name}_{position}_plan", position)
    )
    symbols = {symbol: safe_identifier(str(symbol)) for symbol in params}
    body = (
        Assign("costs", Tuple(tuple(SizeOf(cost) for cost in costs)), "contract"),
        Return(method(Name("costs"), "index", call("min", Name("costs")))),
    )
    doc = f"The cheapest order for {ctx.name} {what}, chosen once per shape."
    cached = "functools.lru_cache(maxsize=None)"
    return Function(name, tuple(symbols.values()), (), doc, body, symbols, decorators=(cached,))


def _contract(
    ctx: Context,
    term: Network,
    plan: Plan,
    starts: list[Expr],
    held: list[tuple[str, ...]],
    target: tuple[str, ...],
    var: str,
    source: Operands,
) -> tuple[bool, bool]:
    """The plan's steps from the factors' tensors `starts` (made by `source`), whose axes hold the legs `held`;
    whether the result is new storage, and whether it carries the coefficient already."""
    names, legs, shown = list(starts), list(held), source.shown(term)
    sizes = _sizes(term, starts, held, source)
    fresh = scaled = False
    done: dict[Expr, Name] = {}  # a step equal to an earlier one (the two copies of x in KFAC) reuses its result
    consumed: set[int] = set()
    made: set[Expr] = set()  # intermediates in new storage (a one-operand step may return a view of an argument)
    for k, step in enumerate(plan.steps):
        last = k == len(plan.steps) - 1
        result_legs = target if last else step.legs
        operands = [names[i] for i in step.operands]
        consumed.update(step.operands)
        owned = _owned(ctx, term, names, consumed, step.operands, made)
        value = _window_sum(ctx, term, step, names, legs, result_legs) or pairwise(
            operands, [legs[i] for i in step.operands], result_legs, owned
        )
        if owned:  # squared in place: no later step may reuse it as an earlier value
            done = {earlier: name for earlier, name in done.items() if name != operands[0]}
        if value in done and not last:
            names.append(done[value])
            legs.append(result_legs)
            continue
        result = var if last else ctx.var(f"t{k + 1}")
        gram = _gram(ctx, term, operands, [legs[i] for i in step.operands], result_legs, result, last, shown)
        scaled = gram == "scaled"
        if not gram:
            read = [term.factors[i].legs if i < len(term.factors) else legs[i] for i in step.operands]
            cost = sympy.Mul(*[term.size(leg) for leg in sorted(set().union(*read))])
            wide = [names[i] in source.strided for i in step.operands]
            entries, scratch, strided = _allocates([legs[i] for i in step.operands], wide, result_legs, sizes)
            new = len(step.operands) == 2
            ctx.emit(Assign(result, value, "contract", shown.text(result_legs), new, cost, entries, scratch=scratch))
            if strided:
                source.strided.add(Name(result))
        fresh = True if gram else len(step.operands) == 2
        if fresh:
            made.add(Name(result))
        done.setdefault(value, Name(result))
        names.append(Name(result))
        legs.append(result_legs)
    if not plan.steps:
        return _single(ctx, source, term, starts, held, target, var, sizes), False
    return fresh, scaled


def _sizes(term: Network, starts: list[Expr], held: list[tuple[str, ...]], source: Operands) -> dict[str, Size]:
    """The size of every leg a step reads: the term's, and those of the legs that an unmerged view holds apart."""
    sizes = dict(term.sizes)
    for start, legs in zip(starts, held, strict=True):
        shape = source.shapes.get(start, ())
        if len(shape) == len(legs):
            for leg, size in zip(legs, shape, strict=True):
                sizes.setdefault(leg, size)
    return sizes


def _allocates(
    legs: list[tuple[str, ...]], strided: list[bool], result: tuple[str, ...], sizes: dict[str, Size]
) -> tuple[sympy.Expr | None, sympy.Expr, bool]:
    """What a step's op allocates as PyTorch runs it, from its operands' legs and whether each is a strided view:
    the entries of its result (None for a view), the entries it copies for itself while it runs, and whether its
    result is a strided view (which a later GEMM or merge copies)."""

    def count(of: tuple[str, ...]) -> sympy.Expr:
        return entries_of(sizes[leg] for leg in of)

    none = sympy.Integer(0)
    if len(legs) == 1:
        (a,) = legs
        if set(a) == set(result):  # the same legs, or a permutation: a view
            return None, none, strided[0] or a != result
        if _is_sum(a, result):  # one .sum per run of summed axes (order.summed_runs): each but the last leaves one
            scratch, left = none, count(a)
            for run in summed_runs(a, result)[:-1]:
                left = left / count(tuple(a[axis] for axis in run))
                scratch += left
            return count(result), scratch, False
        return count(result), none, False  # a one-operand einsum that sums
    a, b = legs
    if a == b and len(set(a)) == len(a):  # a product, then a sum (x ⊙ x, J ⊙ J)
        kept = tuple(leg for leg in a if leg in result)
        return count(result), count(a) if set(result) != set(a) else none, kept != result
    # torch.tensordot and torch.einsum lay an operand out as a matrix (a batch of them) where it is not one already
    pairs = ((a, b, strided[0]), (b, a, strided[1]))
    copies = [count(t) for t, other, view in pairs if view or _copied(t, other, result)]
    batch = tuple(leg for leg in a if leg in b and leg in result)
    natural = batch + tuple(leg for leg in a if leg not in b) + tuple(leg for leg in b if leg not in a)
    return count(result), sympy.Add(*copies), natural != result


def _copied(t: tuple[str, ...], other: tuple[str, ...], result: tuple[str, ...]) -> bool:
    """Whether torch.tensordot / torch.einsum copy a (dense) operand on legs `t` to make it a matrix (or a batch of
    matrices): where its legs are not [batch..., free..., summed...] or [batch..., summed..., free...], or where it
    has legs of its own to sum first."""
    kinds: list[str] = []
    for leg in t:
        kind = ("batch" if leg in result else "summed") if leg in other else ("free" if leg in result else "own")
        if not kinds or kinds[-1] != kind:
            kinds.append(kind)
    if "own" in kinds:
        return True
    while kinds and kinds[0] == "batch":
        kinds.pop(0)
    return "batch" in kinds or len(kinds) > 2


def _unmerged(
    source: Operands, term: Network, plans: tuple[Plan, ...], target: tuple[str, ...], summed: set[int]
) -> dict[int, tuple[Expr, tuple[str, ...]]]:
    """The factors that every plan only sums (alone, or times themselves) over legs that their view merged last:
    each factor's tensor before the merges, and its legs. A sum needs no merged legs, and the reshape copies a
    strided view (a strided slice of x squared and summed: twice as fast without it, measured)."""
    found = {}
    for k, factor in enumerate(term.factors):
        if k in summed or factor.view is None or not all(_only_summed(term, plan, k, target) for plan in plans):
            continue
        before = source.unmerged(factor, term)
        if before is not None and not any(leg in _step_result(plan, k, target) for plan in plans for leg in before[1]):
            found[k] = (source.of(before[0], term), before[0].legs)
    return found


def _only_summed(term: Network, plan: Plan, k: int, target: tuple[str, ...]) -> bool:
    """The one step of the plan that reads factor k sums it, alone or times an equal factor."""
    legs = term.factors[k].legs
    steps = [step for step in plan.steps if k in step.operands]
    if len(steps) > 1 or (plan.steps and not steps):
        return False
    if not steps or len(steps[0].operands) == 1:
        return _is_sum(legs, _step_result(plan, k, target))
    return len(steps[0].operands) == 2 and all(_same(term, i, k) for i in steps[0].operands)


def _step_result(plan: Plan, k: int, target: tuple[str, ...]) -> tuple[str, ...]:
    """The legs of the result of the plan's (first) step that reads factor k: `target` for its last step."""
    j = next((j for j, step in enumerate(plan.steps) if k in step.operands), len(plan.steps) - 1)
    return target if j == len(plan.steps) - 1 else plan.steps[j].legs


def _same(term: Network, i: int, k: int) -> bool:
    """Factors i and k (i may be a step's result) are one tensor on the same legs."""
    if i >= len(term.factors):
        return False
    a, b = term.factors[i], term.factors[k]
    return (a.kind, a.name, a.pattern, a.view, a.legs) == (b.kind, b.name, b.pattern, b.view, b.legs)


def _owned(
    ctx: Context, term: Network, names: list[Expr], consumed: set[int], step: tuple[int, ...], made: set[Expr]
) -> bool:
    """The step reads one tensor twice (J ⊙ J) that nothing reads after it and that the function made itself: an
    intermediate of this plan, or a shared sub-network that only this step reads. It may then be squared in place,
    which saves a buffer as large as J (and the page faults of fresh memory)."""
    if len(step) != 2 or names[step[0]] != names[step[1]]:
        return False
    if any(names[i] == names[step[0]] for i in range(len(names)) if i not in consumed):
        return False  # read again later
    factors = [term.factors[i] for i in step if i < len(term.factors)]
    if not factors:
        return names[step[0]] in made  # an intermediate this plan wrote
    if len(factors) != 2 or factors[0].kind != "shared":
        return False
    reads = [f for t in ctx.diagram.terms for f in t.factors if f.kind == "shared" and f.name == factors[0].name]
    return len(reads) == 2


def _single(
    ctx: Context,
    source: Operands,
    term: Network,
    starts: list[Expr],
    held: list[tuple[str, ...]],
    target: tuple[str, ...],
    var: str,
    sizes: dict[str, Size],
) -> bool:
    if not starts:
        ones = call("torch.ones", Tuple(()), device=Name("device"), dtype=Name("dtype"))
        ctx.emit(Assign(var, ones, "constant", entries=1))
        return True
    if held[0] == target:
        ctx.emit(Assign(var, starts[0], "view"))
        if starts[0] in source.strided:
            source.strided.add(Name(var))
        return False
    value = pairwise([starts[0]], [held[0]], target)  # a plain sum, or an einsum that permutes
    entries, scratch, strided = _allocates([held[0]], [starts[0] in source.strided], target, sizes)
    ctx.emit(Assign(var, value, "contract", source.shown(term).text(target), entries=entries, scratch=scratch))
    if strided:
        source.strided.add(Name(var))
    return _is_sum(held[0], target)  # a sum is new storage; a one-operand einsum may return a view


def scale(ctx: Context, term: Network, var: str, fresh: bool, scaled: bool) -> bool:
    """The coefficient: in place on the term's own new tensor (saves a buffer), else as a new tensor."""
    coefficient = term.coefficient
    if coefficient == 1 or scaled:
        return fresh
    entries = entries_of(term.size(leg) for leg in term.outputs)  # a new tensor, but in place
    if coefficient == -1:
        ctx.emit(Assign(var, Unary("-", Name(var)), "scale", entries=entries))
    elif fresh:
        ctx.emit(Effect(method(Name(var), "mul_", SizeOf(coefficient)), "scale"))
    else:
        ctx.emit(Assign(var, BinOp("*", Name(var), SizeOf(coefficient)), "scale", entries=entries))
    return True


def _window_sum(
    ctx: Context, term: Network, step: Step, names: list[Expr], legs: list[tuple[str, ...]], result: tuple[str, ...]
) -> Expr | None:
    """A step that contracts Σ_o Π(i, o, k) with a tensor on i: summed windows of that tensor (a few strided sums)
    instead of a product with the 0/1 matrix, which PyTorch's GEMM runs at memory speed at best."""
    found = window_sum_step(term, step, legs)
    if found is None:
        return None
    position, other, axis = found
    p = summed_pattern(term.factors[position])
    assert p is not None
    hyper = (Lit(p.kernel_size), Lit(p.stride), Lit(p.pad_left), Lit(p.dilation))
    value: Expr = call(
        ctx.helper("_window_sum"), names[other], Lit(axis), SizeOf(p.in_size), SizeOf(p.out_size), *hyper
    )
    i, k = term.factors[position].legs
    out = tuple(leg for leg in legs[other] if leg != i) + (k,)
    if out != result:
        value = method(value, "permute", *(Lit(out.index(leg)) for leg in result))
    if known_long(p):
        return value
    # the length is known at call time only: the product with Σ_o Π where it is short
    product = pairwise([names[i] for i in step.operands], [legs[i] for i in step.operands], result)
    return IfExp(BinOp(">=", SizeOf(p.in_size), Lit(threshold(p))), value, product)


def _gram(
    ctx: Context,
    term: Network,
    names: list[Expr],
    legs: list[tuple[str, ...]],
    result: tuple[str, ...],
    var: str,
    last: bool,
    shown: LegNames,
) -> str:
    """A tensor contracted with a renamed copy of itself (KFC: u uᵀ) is laid out once as [batch, free, summed]
    and multiplied by its own transpose, instead of being copied once per operand. "" where the step is not one,
    "scaled" where the product took the term's coefficient on its (smaller) operand, else "made"."""
    if len(names) != 2 or names[0] != names[1] or len(legs[0]) != len(legs[1]):
        return ""
    a, b = legs
    shared = [j for j in range(len(a)) if a[j] == b[j]]
    free = [j for j in range(len(a)) if a[j] != b[j]]
    batch = [j for j in shared if a[j] in result]
    summed = [j for j in shared if a[j] not in result]
    if not free or not summed or len(set(a)) != len(a) or len(set(b)) != len(b):
        return ""
    if any(b[j] in a for j in free):
        return ""  # v[c, a, d] * v[d, a, c]: the copy's legs are the same indices swapped, a diagonal, no outer product
    if set(result) != {a[j] for j in batch + free} | {b[j] for j in free}:
        return ""
    # Lay the (small) operand out in the order the (large) result wants, so the product needs no permute.
    batch.sort(key=lambda j: result.index(a[j]))
    free.sort(key=lambda j: result.index(a[j]))

    def product(positions: list[int]) -> SizeOf:
        return SizeOf(sympy.Mul(*[sympy.sympify(term.size(a[j])) for j in positions]))

    # laid out [batch, free, summed] and multiplied by its transpose; or, where the tensor holds its legs as
    # [batch, summed, free] already, its transpose multiplied by it, with no permuted copy
    identity = list(range(len(a)))
    columns = batch + free + summed != identity and batch + summed + free == identity
    groups = (batch, summed, free) if columns else (batch, free, summed)
    axes = [j for group in groups for j in group]
    permuted = names[0] if axes == sorted(axes) else method(names[0], "permute", *(Lit(j) for j in axes))
    used = groups if batch else groups[1:]
    laid = permuted if axes == sorted(axes) and all(len(group) == 1 for group in used) else (
        method(permuted, "reshape", *(product(group) for group in used))
    )  # fmt: skip
    if batch:  # bmm copies a batch of strided matrices one matrix at a time: lay a real batch out densely once
        laid = method(laid, "contiguous")
    copied = None if laid == names[0] else entries_of(term.size(leg) for leg in a)
    rows = ctx.assign(f"{var}_rows", laid, "view", "laid out once", entries=copied)
    middle = ctx.regimes.middle(symbols_of(*[term.size(leg) for leg in a]))
    smaller = math.prod(evaluate(term.size(a[j]), middle) for j in summed) < math.prod(
        evaluate(term.size(a[j]), middle) for j in free
    )  # the operand is batch·free·summed, the result batch·free²
    scale = last and term.coefficient != 1 and smaller
    left: Expr = BinOp("*", rows, SizeOf(term.coefficient)) if scale else rows
    order = tuple(a[j] for j in batch + free) + tuple(b[j] for j in free)
    shape = [SizeOf(term.size(a[j])) for j in batch + free] + [SizeOf(term.size(a[j])) for j in free]
    gram = _gram_product(left, rows, bool(batch), columns)
    # the product's own axes are (batch, free, free): regrouped where more than one leg makes one of them
    value: Expr = gram if len(batch) <= 1 and len(free) == 1 else method(gram, "reshape", *shape)
    if order != result:
        value = method(value, "permute", *(Lit(order.index(leg)) for leg in result))
    cost = sympy.Mul(*[term.size(leg) for leg in sorted(set(a) | set(b))])
    entries = sympy.Mul(*[term.size(leg) for leg in result])
    scaled = entries_of(term.size(leg) for leg in a) if scale else None  # the operand times the coefficient
    ctx.emit(Assign(var, value, "contract", shown.text(result), True, cost, entries, scratch=scaled))
    return "scaled" if scale else "made"


def _gram_product(left: Expr, rows: Expr, batch: bool, columns: bool) -> Expr:
    """left · rowsᵀ (rows laid out [batch, free, summed]) or leftᵀ · rows ([batch, summed, free]): bmm over a batch,
    else a plain matrix product (not bmm over a batch of one)."""
    if batch:
        if columns:
            return call("torch.bmm", method(left, "transpose", Lit(1), Lit(2)), rows)
        return call("torch.bmm", left, method(rows, "transpose", Lit(1), Lit(2)))
    return BinOp("@", Attr(left, "T"), rows) if columns else BinOp("@", left, Attr(rows, "T"))


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


def pairwise(names: list[Expr], legs: list[tuple[str, ...]], result: tuple[str, ...], owned: bool = False) -> Expr:
    """tensordot where the step is a plain contraction in the natural order, a plain sum, a product of two tensors
    with the same legs then a sum (J ⊙ J; squared in place where the step `owned` the tensor), einsum otherwise."""
    if len(names) == 1 and _is_sum(legs[0], result):
        return _sum(names[0], legs[0], result)
    if len(names) == 2 and legs[0] == legs[1] and len(set(legs[0])) == len(legs[0]):
        return _hadamard(names, legs[0], result, owned)
    dims = tensordot_dims(legs, result)
    if dims is not None:
        spec = Tuple((Tuple(tuple(Lit(d) for d in dims[0])), Tuple(tuple(Lit(d) for d in dims[1]))))
        return Call("torch.tensordot", (names[0], names[1]), (("dims", spec),))
    return einsum(names, legs, result)


def _hadamard(names: list[Expr], legs: tuple[str, ...], result: tuple[str, ...], owned: bool) -> Expr:
    """a ⊙ b summed over the legs the result lacks: one product and one reduction, where einsum would lay both
    operands out for a batched matrix product (two copies and a bmm of 1x1 matrices)."""
    square = "square_" if owned else "square"
    product: Expr = method(names[0], square) if names[0] == names[1] else BinOp("*", names[0], names[1])
    kept = tuple(leg for leg in legs if leg in result)
    value = _sum(product, legs, kept) if kept != legs else product
    if kept != result:
        value = method(value, "permute", *(Lit(kept.index(leg)) for leg in result))
    return value


def step_kind(value: Expr) -> str:
    """How a contraction op computes its step, in a word or two (for `tnc explain`)."""
    if isinstance(value, IfExp):
        return f"{step_kind(value.then)} where long, else {step_kind(value.other)}"
    node: Expr = value
    while isinstance(node, Method):
        if node.name in ("square", "square_"):
            return "square and sum" + (" (in place)" if node.name == "square_" else "")
        node = node.obj
    if isinstance(node, BinOp):
        return "Gram product (matmul)" if node.op == "@" else "product and sum"
    names = {"torch.tensordot": "tensordot", "torch.einsum": "einsum", "torch.bmm": "Gram product (bmm)"}
    if isinstance(node, Call):
        if node.func == "_window_sum":
            return "window sums of the tensor (no GEMM with Σ_o Π)"
        return names.get(node.func, node.func)
    return "sum"


def _is_sum(legs: tuple[str, ...], result: tuple[str, ...]) -> bool:
    """The step only sums some axes away, keeping the others in order."""
    return len(set(legs)) == len(legs) and tuple(leg for leg in legs if leg in result) == result != legs


def _sum(name: Expr, legs: tuple[str, ...], result: tuple[str, ...]) -> Expr:
    """The summed axes as `order.summed_runs` groups them, one `.sum` per group."""
    runs = summed_runs(legs, result)
    value, removed = name, 0
    for run in runs:
        axes = [axis - removed for axis in run]
        value = method(value, "sum", Lit(axes[0]) if len(axes) == 1 else Tuple(tuple(Lit(a) for a in axes)))
        removed += len(run)
    return value
