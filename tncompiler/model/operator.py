"""`KFACOperator`: KFAC's curvature of a model as a linear operator on its parameters, with its damped inverse, its
matrix functions and its eigenvalue-corrected variant (EKFAC), on the factors of `kfac_factors`.

    K = KFACOperator(model, loss_func, data, approx="expand", fisher="type-2")
    K @ v, K.inverse(damping=1e-3) @ v, K.trace(), K.logdet(), K.frobenius_norm(), K.to_dense()
    E = K.eigenvalue_corrected(); E @ v, E.inverse(damping=1e-3) @ v

The conventions are curvlinops 3.0.1's (`KFACLinearOperator`, `KFACInverseLinearOperator`, `EKFACLinearOperator`):

- The operator acts on the parameters of `model.parameters()` that require grad, in that order: `@` takes a list of
  tensors shaped as those parameters (a vector), or with one trailing axis of K columns (a matrix), or one flat
  tensor [D] or [D, K]; the result comes in the same form.
- Each layer is a block A ⊗ B acting on its weight as a matrix [out, in] (a transpose convolution's weight
  [(g c), d, k...] is read as [d, (c k...)]): M ↦ B M A. With `separate_weight_and_bias=False` a trained bias is one
  more column of that matrix and A holds its row and column last; with `True` (the default) the weight has A without
  that row and the bias is a block of its own with A = [[1]], M ↦ B M. A grouped layer is block-diagonal over its
  groups, each group with its own A and B (curvlinops averages the groups into one pair instead).
- `inverse(damping=λ)` applies (A + λ_A I)⁻¹ ⊗ (B + λ_B I)⁻¹ by Cholesky factorisations, λ_A = λ_B = λ (or a pair)
  (curvlinops forms the inverses from them at once; tnc solves with them on a first application to few columns, which
  costs well under forming the inverses, and forms them for the next);
  a bias on its own gets (B + λ I)⁻¹: its A = [[1]] is not damped. `heuristic=True` takes Martens and Grosse's
  π-split of λ (each at least `min_damping`), `exact=True` applies (A ⊗ B + λ I)⁻¹ through the factors'
  eigendecompositions. A Cholesky factorisation that fails is retried in float64 (with a warning) before it raises.
- `eigenvalue_corrected()` is EKFAC: the eigenbases of A and B, with the eigenvalues replaced by the second moments
  of the per-example gradients in that basis, Σ_n (Q_Bᵀ G_n Q_A)² over the examples n (and over the Fisher's
  cotangents), normalised as B is. It passes over the data once more; for fisher="mc" it draws the same labels as the
  factors did (a snapshot of the generator), as curvlinops reseeds its generator for both passes.

Where tnc differs from curvlinops: it supports Conv1d/3d and the transpose convolutions too; grouped layers are exact
per-group blocks; a trained parameter outside the supported layers, a parametrized weight or bias (whose factors are
those of the computed tensor, which is no parameter) and a parameter two layers share are refused with a
`ValueError` that names them (curvlinops raises NotImplementedError for the first, and misreads the others); a
trained layer that no batch calls has zero factors (curvlinops fails); EKFAC's per-example gradient of a layer called
several times in one forward pass sums all its calls (curvlinops' uses the last call's input for every call).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import torch
from torch import nn

from tncompiler.model.distributed import all_reduce_sums, process_group_of, unwrap
from tncompiler.model.factors import (
    Approx,
    FactorLayer,
    Recorder,
    backpropagate,
    batches,
    check_options,
    factor_layers,
    kfac_factors,
    no_layers,
)
from tncompiler.model.layers import LayerSpec, parametrization_of, stored_tensor, with_sizes
from tncompiler.model.losses import Fisher, LossSpec, cotangents, loss_spec

__all__ = ["BlockOperator", "EKFACOperator", "KFACOperator"]

Tensor = torch.Tensor
Damping = float | tuple[float, float]
Data = Iterable[tuple[Any, Tensor]] | tuple[Tensor, Tensor]


# --- where each block's matrices sit among the parameters -------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    """One block: its layer, and the positions in the parameter list of the weight and bias it covers (None for
    one it does not). Its matrices are [g, out, K, in'] (in' = the weight's in-features, plus one for a bias): the K
    columns sit between the two axes the factors act on, so that B M and M A are each one matrix product."""

    name: str
    spec: LayerSpec
    weight: int | None
    bias: int | None

    def gather(self, columns: Sequence[Tensor]) -> Tensor:
        """The block's matrices from the parameters' columns [*shape, K]."""
        parts = []
        if self.weight is not None:
            parts.append(_weight_matrix(self.spec, columns[self.weight]))
        if self.bias is not None:
            parts.append(columns[self.bias].reshape(self.spec.groups, self.spec.out_channels, -1, 1))
        return torch.cat(parts, dim=3) if len(parts) > 1 else parts[0]

    def scatter(self, matrix: Tensor, out: list[Tensor], shapes: Sequence[torch.Size]) -> None:
        """The inverse of `gather`: the block's matrices back into `out`'s columns."""
        if self.bias is not None:
            out[self.bias] = matrix[..., -1].reshape(*shapes[self.bias], -1)
            matrix = matrix[..., :-1]
        if self.weight is not None:
            out[self.weight] = _weight_columns(self.spec, matrix, shapes[self.weight])


def _weight_matrix(spec: LayerSpec, columns: Tensor) -> Tensor:
    """[*weight.shape, K] -> [g, out, K, in]; a transpose convolution's weight is [(g c), d, k...]."""
    g, c, d, k = spec.groups, spec.in_channels, spec.out_channels, columns.shape[-1]
    if spec.kind == "transpose":
        return columns.reshape(g, c, d, -1, k).permute(0, 2, 4, 1, 3).reshape(g, d, k, -1)
    return columns.reshape(g, d, -1, k).transpose(2, 3)


def _weight_columns(spec: LayerSpec, matrix: Tensor, shape: torch.Size) -> Tensor:
    """[g, out, K, in] -> [*weight.shape, K]."""
    g, d, k = matrix.shape[0], matrix.shape[1], matrix.shape[2]
    if spec.kind == "transpose":
        matrix = matrix.reshape(g, d, k, spec.in_channels, -1).permute(0, 3, 1, 4, 2)
        return matrix.reshape(*shape, k)
    return matrix.transpose(2, 3).reshape(*shape, k)


# --- what a block does to its matrices --------------------------------------------------------------------------------


def _left(factor: Tensor, matrix: Tensor) -> Tensor:
    """factor [g, out, out] times each column's matrix [g, out, K, in]: one product over the out axis."""
    g, out, k, features = matrix.shape
    return (factor @ matrix.reshape(g, out, k * features)).view(g, out, k, features)


def _right(matrix: Tensor, factor: Tensor) -> Tensor:
    """Each column's matrix [g, out, K, in] times factor [g, in, in]: one product over the in axis."""
    g, out, k, features = matrix.shape
    return (matrix.reshape(g, out * k, features) @ factor).view(g, out, k, features)


@dataclass(frozen=True)
class _Kronecker:
    """M ↦ left M right (`right` None: a bias on its own, M ↦ left M)."""

    left: Tensor  # [g, out, out]
    right: Tensor | None  # [g, in', in']

    def __call__(self, matrix: Tensor) -> Tensor:
        matrix = _left(self.left, matrix)
        return matrix if self.right is None else _right(matrix, self.right)


class _DampedFactor:
    """One damped factor F = L Lᵀ, from its Cholesky factor L, applied as F⁻¹: by two triangular solves with L while
    that is the cheaper way, else through F⁻¹ formed from L (curvlinops' way, cholesky_inverse) and kept. A solve costs
    about twice a matrix product per column (measured), forming F⁻¹ two thirds of n³: so the first application to
    r < n/3 columns solves, any other forms F⁻¹. One application then costs the factorisation and a solve, well under
    forming the inverse; repeated ones are matrix products."""

    def __init__(self, root: Tensor) -> None:
        self.root = root  # [g, n, n], lower triangular
        self._inverse: Tensor | None = None
        self._applied = False

    def _formed(self, columns: int) -> Tensor | None:
        if self._inverse is None and (self._applied or 3 * columns >= self.root.shape[1]):
            self._inverse = torch.cholesky_inverse(self.root)
        self._applied = True
        return self._inverse

    def left(self, matrix: Tensor) -> Tensor:
        """F⁻¹ M for M [g, n, r]."""
        inverse = self._formed(matrix.shape[2])
        return torch.cholesky_solve(matrix, self.root) if inverse is None else inverse @ matrix

    def right(self, matrix: Tensor) -> Tensor:
        """M F⁻¹ for M [g, r, n] (= (F⁻¹ Mᵀ)ᵀ: F is symmetric)."""
        inverse = self._formed(matrix.shape[1])
        return torch.cholesky_solve(matrix.mT, self.root).mT if inverse is None else matrix @ inverse


class _CholeskySolve:
    """M ↦ (B + λ_B I)⁻¹ M (A + λ_A I)⁻¹ from the damped factors' Cholesky factors (`a` None: a bias on its own)."""

    def __init__(self, b: _DampedFactor, a: _DampedFactor | None) -> None:
        self.b, self.a = b, a

    def __call__(self, matrix: Tensor) -> Tensor:
        g, out, k, features = matrix.shape
        matrix = self.b.left(matrix.reshape(g, out, k * features))
        if self.a is not None:
            matrix = self.a.right(matrix.reshape(g, out * k, features))
        return matrix.reshape(g, out, k, features)


@dataclass(frozen=True)
class _Eigenbasis:
    """M ↦ Q_B (values ⊙ Q_Bᵀ M Q_A) Q_Aᵀ: a diagonal operator in a Kronecker-factored eigenbasis (`q_a` None: a
    bias on its own)."""

    q_b: Tensor  # [g, out, out]
    q_a: Tensor | None  # [g, in', in']
    values: Tensor  # [g, out, in'] (a bias: [g, out, 1])

    def __call__(self, matrix: Tensor) -> Tensor:
        rotated = _left(self.q_b.mT, matrix)
        if self.q_a is not None:
            rotated = _right(rotated, self.q_a)
        rotated = rotated * self.values.unsqueeze(2)
        if self.q_a is not None:
            rotated = _right(rotated, self.q_a.mT)
        return _left(self.q_b, rotated)

    def mapped(self, function: Callable[[Tensor], Tensor]) -> _Eigenbasis:
        return _Eigenbasis(self.q_b, self.q_a, function(self.values))


_Map = _Kronecker | _CholeskySolve | _Eigenbasis


# --- the operator on parameter lists and flat tensors ----------------------------------------------------------------


class BlockOperator:
    """A block-diagonal linear operator on a model's trained parameters, one block per layer (or per weight and bias).

    `op @ v` takes a list of tensors shaped as the parameters (with an optional trailing axis of K columns), or a
    flat tensor [D] or [D, K], and gives the same form back; `to_dense()` is the [D, D] matrix."""

    def __init__(self, shapes: Sequence[torch.Size], layouts: Sequence[_Layout], maps: Sequence[_Map]) -> None:
        self._shapes, self._layouts, self._maps = list(shapes), list(layouts), list(maps)
        dimension = sum(s.numel() for s in self._shapes)
        self.shape = (dimension, dimension)

    @property
    def dtype(self) -> torch.dtype:
        return self._reference().dtype

    @property
    def device(self) -> torch.device:
        return self._reference().device

    def _reference(self) -> Tensor:
        first = self._maps[0]
        if isinstance(first, _Kronecker):
            return first.left
        return first.b.root if isinstance(first, _CholeskySolve) else first.q_b

    @overload
    def __matmul__(self, vectors: Tensor) -> Tensor: ...

    @overload
    def __matmul__(self, vectors: list[Tensor]) -> list[Tensor]: ...

    def __matmul__(self, vectors: Tensor | list[Tensor]) -> Tensor | list[Tensor]:
        if isinstance(vectors, Tensor):
            columns, is_vector = _flat_columns(vectors, self._shapes)
            return _flat_result(self._apply(columns), is_vector)
        if isinstance(vectors, (list, tuple)) and all(isinstance(v, Tensor) for v in vectors):
            columns, is_vector = _list_columns(list(vectors), self._shapes)
            results = self._apply(columns)
            return [r.squeeze(-1) for r in results] if is_vector else results
        raise TypeError(
            f"tncompiler: a curvature operator multiplies a tensor or a list of tensors, got {type(vectors).__name__}"
        )

    def _apply(self, columns: list[Tensor]) -> list[Tensor]:
        """Every block on the columns [*shape, K], in the operator's dtype."""
        columns = [c.to(self.dtype) for c in columns]
        out = list(columns)  # every position is overwritten: each trained parameter is in exactly one block
        for layout, apply in zip(self._layouts, self._maps):
            layout.scatter(apply(layout.gather(columns)), out, self._shapes)
        return out

    def to_dense(self) -> Tensor:
        """The operator as a [D, D] matrix in the order of the parameters (for small models: it applies the operator
        to the D columns of the identity)."""
        return self @ torch.eye(self.shape[1], dtype=self.dtype, device=self.device)


def _flat_columns(vectors: Tensor, shapes: Sequence[torch.Size]) -> tuple[list[Tensor], bool]:
    dimension = sum(s.numel() for s in shapes)
    if vectors.dim() not in (1, 2) or vectors.shape[0] != dimension:
        raise ValueError(
            f"tncompiler: a curvature operator on {dimension} parameters takes a flat tensor of shape ({dimension},) "
            f"or ({dimension}, K), got {tuple(vectors.shape)}"
        )
    is_vector = vectors.dim() == 1
    matrix = vectors.reshape(dimension, -1)
    parts = torch.split(matrix, [s.numel() for s in shapes])
    return [part.reshape(*shape, matrix.shape[1]) for part, shape in zip(parts, shapes)], is_vector


def _flat_result(results: list[Tensor], is_vector: bool) -> Tensor:
    columns = results[0].shape[-1]
    flat = torch.cat([r.reshape(-1, columns) for r in results])
    return flat.squeeze(1) if is_vector else flat


def _list_columns(vectors: list[Tensor], shapes: Sequence[torch.Size]) -> tuple[list[Tensor], bool]:
    expected = [tuple(s) for s in shapes]
    got = [tuple(v.shape) for v in vectors]
    if len(vectors) == len(shapes) and got == expected:
        return [v.unsqueeze(-1) for v in vectors], True
    trailing = {v.shape[-1] for v in vectors if v.dim() > 0}
    if len(vectors) == len(shapes) and len(trailing) == 1 and [g[:-1] for g in got] == expected:
        return vectors, False
    raise ValueError(
        f"tncompiler: a curvature operator takes a list of {len(shapes)} tensors shaped as the trained parameters "
        f"{expected} (or each with one trailing axis of K columns), got {got}"
    )


# --- KFAC --------------------------------------------------------------------------------------------------------


class KFACOperator(BlockOperator):
    """KFAC's curvature of the model's trained parameters over `data`, as curvlinops' `KFACLinearOperator` (the
    module docstring has the conventions and the differences).

    Args:
        model: a model of nn.Linear, nn.Conv*d and nn.ConvTranspose*d layers (any other trained parameter is refused:
            freeze it with requires_grad_(False) to leave it out), or its DistributedDataParallel wrapper.
        loss_func: nn.CrossEntropyLoss, nn.MSELoss or nn.BCEWithLogitsLoss with a "mean" or "sum" reduction.
        data: an iterable of (x, y) batches, or one pair; `eigenvalue_corrected()` iterates it again.
        approx, fisher, mc_samples, process_group: as for `kfac_factors`.
        separate_weight_and_bias: the bias a block of its own (True, curvlinops' default) or folded into A.
        generator: for the labels fisher="mc" draws (by default one seeded from torch's global generator).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_func: nn.Module,
        data: Data,
        *,
        approx: Approx,
        fisher: Fisher,
        mc_samples: int = 1,
        separate_weight_and_bias: bool = True,
        process_group: Any = None,
        generator: torch.Generator | None = None,
    ) -> None:
        check_options(approx, fisher, mc_samples)
        self._model, self._loss = model, loss_spec(loss_func)
        self._fisher, self._mc_samples = fisher, mc_samples
        self._group = process_group_of(model, process_group)
        parameters = [p for p in unwrap(model).parameters() if p.requires_grad]
        self._layers = factor_layers(unwrap(model))
        if not self._layers:
            raise ValueError(no_layers("KFACOperator", unwrap(model)))
        positions = _positions(unwrap(model), self._layers, parameters)
        self._generator = _generator(fisher, generator, parameters[0].device)
        self._draws = None if self._generator is None else self._generator.get_state()  # for EKFAC's second pass
        self._data: Data | None = None if isinstance(data, Iterator) else data  # a one-shot iterator: no second pass
        factors = kfac_factors(
            model, loss_func, data, approx=approx, fisher=fisher, mc_samples=mc_samples,
            process_group=process_group, generator=self._generator,
        )  # fmt: skip
        blocks = list(_blocks(self._layers, positions, factors, separate_weight_and_bias))
        self._factors = [(a, b) for _, a, b in blocks]
        layouts = [layout for layout, _, _ in blocks]
        super().__init__([p.shape for p in parameters], layouts, [_Kronecker(b, a) for a, b in self._factors])

    def trace(self) -> Tensor:
        """tr(A ⊗ B) = tr A · tr B, summed over the blocks and groups (a bias on its own: tr B)."""
        return _total(_kronecker_trace(a, b) for a, b in self._factors)

    def logdet(self) -> Tensor:
        """log det(A ⊗ B) = dim B · log det A + dim A · log det B, summed (a bias on its own: log det B)."""
        return _total(_kronecker_logdet(a, b) for a, b in self._factors)

    def frobenius_norm(self) -> Tensor:
        """‖A ⊗ B‖_F = ‖A‖_F ‖B‖_F, combined over the blocks and groups as the root of the sum of squares."""
        return _total(_kronecker_squared_norm(a, b) for a, b in self._factors).sqrt()

    def inverse(
        self, damping: Damping = 0.0, *, heuristic: bool = False, exact: bool = False, min_damping: float = 1e-8
    ) -> BlockOperator:
        """The damped inverse, as curvlinops' `KFACInverseLinearOperator(K, damping, use_heuristic_damping=heuristic,
        min_damping=min_damping, use_exact_damping=exact)`: by default (A + λ_A I)⁻¹ ⊗ (B + λ_B I)⁻¹ with
        λ_A = λ_B = damping, or the pair (λ_A, λ_B); heuristic: λ_A = max(π√λ, min_damping), λ_B = max(√λ/π,
        min_damping) with π² = (tr A / dim A) / (tr B / dim B); exact: (A ⊗ B + λ I)⁻¹. A bias on its own gets
        (B + λ_B I)⁻¹ (exact: (B + λ I)⁻¹), its λ_B the heuristic one of its layer's weight where it has one."""
        _check_damping(damping, heuristic, exact)
        if exact:
            assert not isinstance(damping, tuple)
            maps: list[_Map] = [_exact_inverse(a, b, damping) for a, b in self._factors]
        else:
            weight_a = {layout.name: a for layout, (a, _) in zip(self._layouts, self._factors) if a is not None}
            maps = [
                _damped_inverse(
                    layout.name, a, b, _dampings(weight_a.get(layout.name), b, damping, heuristic, min_damping)
                )
                for layout, (a, b) in zip(self._layouts, self._factors)
            ]
        return BlockOperator(self._shapes, self._layouts, maps)

    def eigenvalue_corrected(self) -> EKFACOperator:
        """EKFAC, as curvlinops' `EKFACLinearOperator`: the eigenbases of these factors, the eigenvalues corrected to
        the per-example gradients' second moments in them (one more pass over the data)."""
        if self._data is None:
            raise ValueError(
                "tncompiler.KFACOperator.eigenvalue_corrected passes over the data again, but the data was a one-shot "
                "iterator that the factors used up; give the KFACOperator a list of batches or a DataLoader"
            )
        bases = _eigenbases(self._layouts, self._factors)
        values = self._corrections(bases)
        maps = [_Eigenbasis(q_b, q_a, v) for (q_b, q_a), v in zip(bases, values)]
        return EKFACOperator(self._shapes, self._layouts, maps)

    def _replayed_generator(self) -> torch.Generator | None:
        """A generator in the state the factors' pass started from: the same labels again."""
        if self._generator is None or self._draws is None:
            return None
        generator = torch.Generator(device=self._generator.device)
        generator.set_state(self._draws)
        return generator

    def _corrections(self, bases: Sequence[tuple[Tensor, Tensor | None]]) -> list[Tensor]:
        """Σ over the data and the cotangents of (Q_Bᵀ G_n Q_A)² per block, normalised as B is."""
        sums = [q_b.new_zeros(q_b.shape[0], q_b.shape[1], 1 if q_a is None else q_a.shape[1]) for q_b, q_a in bases]
        terms, generator, inner = 0.0, self._replayed_generator(), unwrap(self._model)
        by_layer = _blocks_by_layer(self._layouts)
        assert self._data is not None
        with Recorder(self._layers) as recorder, torch.enable_grad():
            for inputs, target in batches(self._data):
                recorder.calls.clear()
                output = inner(inputs)
                if output.shape[0] == 0:
                    continue
                _add_corrections(sums, bases, by_layer, recorder, output, target, self._loss, self._fisher,
                                 self._mc_samples, generator)  # fmt: skip
                terms += self._loss.terms(output)
        sums, (terms,) = all_reduce_sums(sums, [terms], self._group)
        scale = (terms if self._loss.reduction == "mean" else 1.0) * (self._mc_samples if self._fisher == "mc" else 1)
        return [total / scale for total in sums]


class EKFACOperator(BlockOperator):
    """EKFAC (eigenvalue-corrected KFAC), from `KFACOperator.eigenvalue_corrected()`: Q diag(s) Qᵀ per block."""

    def _values(self) -> list[Tensor]:
        return [m.values for m in self._maps if isinstance(m, _Eigenbasis)]

    def trace(self) -> Tensor:
        return _total(v.sum() for v in self._values())

    def logdet(self) -> Tensor:
        return _total(v.log().sum() for v in self._values())

    def frobenius_norm(self) -> Tensor:
        return _total(v.square().sum() for v in self._values()).sqrt()

    def inverse(self, damping: float = 0.0) -> BlockOperator:
        """(EKFAC + λ I)⁻¹: the corrected eigenvalues plus λ, inverted (curvlinops' exact damping, the only one it
        allows for EKFAC)."""
        if isinstance(damping, tuple):
            raise ValueError("tncompiler: EKFACOperator.inverse takes one damping, λ in (EKFAC + λ I)⁻¹, not a pair")
        maps = [m.mapped(lambda v: (v + damping).reciprocal()) for m in self._maps if isinstance(m, _Eigenbasis)]
        return BlockOperator(self._shapes, self._layouts, maps)


# --- building the blocks -------------------------------------------------------------------------------------------


def _positions(
    model: nn.Module, layers: Sequence[FactorLayer], parameters: Sequence[Tensor]
) -> dict[str, tuple[int | None, int | None]]:
    """The positions in the parameter list of each layer's trained weight and bias; every trained parameter must
    belong to exactly one layer."""
    index = {id(p): j for j, p in enumerate(parameters)}
    positions: dict[str, tuple[int | None, int | None]] = {}
    claimed: dict[int, str] = {}
    for layer in layers:
        pair = tuple(_position(layer, name, trained, index) for name, trained in _tensors(layer))
        for j in pair:
            if j is not None and j in claimed:
                raise ValueError(
                    f"tncompiler.KFACOperator: layers {claimed[j]!r} and {layer.name!r} share a parameter; KFAC has "
                    "one block per layer, so a shared (tied) parameter has no block of its own"
                )
            if j is not None:
                claimed[j] = layer.name
        positions[layer.name] = (pair[0], pair[1])
    _check_unclaimed(model, parameters, set(claimed))
    return positions


def _tensors(layer: FactorLayer) -> tuple[tuple[str, bool], tuple[str, bool]]:
    return ("weight", layer.trains_weight), ("bias", layer.trains_bias)


def _position(layer: FactorLayer, name: str, trained: bool, index: dict[int, int]) -> int | None:
    if not trained:
        return None
    if parametrization_of(layer.module, name) is not None:
        raise ValueError(
            f"tncompiler.KFACOperator: the {name} of layer {layer.name!r} is parametrized; its KFAC factors are those "
            "of the tensor the parametrization computes, which is no parameter the operator could act on (use "
            "kfac_factors or KFAC for it, or remove the parametrization)"
        )
    return index[id(getattr(layer.module, name))]


def _check_unclaimed(model: nn.Module, parameters: Sequence[Tensor], claimed: set[int]) -> None:
    """curvlinops refuses trained parameters outside the layers it knows (NotImplementedError); so does tnc, naming
    them."""
    names = {id(p): name for name, p in model.named_parameters()}
    left = [names.get(id(p), "?") for j, p in enumerate(parameters) if j not in claimed]
    if left:
        raise ValueError(
            f"tncompiler.KFACOperator: the trained parameters {', '.join(left)} are not in an nn.Linear, nn.Conv*d or "
            "nn.ConvTranspose*d layer, so KFAC has no factors for them; freeze them (requires_grad_(False)) to leave "
            "them out of the operator"
        )


def _generator(fisher: str, generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    """The generator of the mc labels: the one given, or one seeded from torch's global generator (so that EKFAC's
    pass can replay the factors' draws)."""
    if fisher != "mc" or generator is not None:
        return generator
    seeded = torch.Generator(device=device)
    seeded.manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
    return seeded


def _blocks(
    layers: Sequence[FactorLayer],
    positions: dict[str, tuple[int | None, int | None]],
    factors: dict[str, tuple[Tensor, Tensor]],
    separate: bool,
) -> Iterator[tuple[_Layout, Tensor | None, Tensor]]:
    """(layout, A or None for a bias on its own, B) per block, with group axes."""
    for layer in layers:
        a, b = _grouped_factors(layer, factors)
        weight, bias = positions[layer.name]
        if weight is None:
            yield _Layout(layer.name, layer.spec, None, bias), None, b
        elif bias is not None and separate:
            yield _Layout(layer.name, layer.spec, weight, None), a[:, :-1, :-1].contiguous(), b
            yield _Layout(layer.name, layer.spec, None, bias), None, b
        else:
            yield _Layout(layer.name, layer.spec, weight, bias), a, b


def _grouped_factors(layer: FactorLayer, factors: dict[str, tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """The layer's factors with their group axis; zeros for a trained layer that no batch called (its gradient is
    always zero)."""
    if layer.name in factors:
        a, b = factors[layer.name]
        return (a, b) if a.dim() == 3 else (a.unsqueeze(0), b.unsqueeze(0))
    weight = stored_tensor(layer.module, "weight")
    assert weight is not None
    a_shape, b_shape = layer.shapes()
    return weight.new_zeros(a_shape), weight.new_zeros(b_shape)


# --- matrix functions of Kronecker blocks ----------------------------------------------------------------------------


def _total(values: Iterable[Tensor]) -> Tensor:
    return torch.stack(list(values)).sum()


def _kronecker_trace(a: Tensor | None, b: Tensor) -> Tensor:
    trace_b = b.diagonal(dim1=1, dim2=2).sum(1)
    return trace_b.sum() if a is None else (a.diagonal(dim1=1, dim2=2).sum(1) * trace_b).sum()


def _kronecker_logdet(a: Tensor | None, b: Tensor) -> Tensor:
    if a is None:
        return torch.logdet(b).sum()
    return (b.shape[1] * torch.logdet(a) + a.shape[1] * torch.logdet(b)).sum()


def _kronecker_squared_norm(a: Tensor | None, b: Tensor) -> Tensor:
    squared_b = b.square().sum((1, 2))
    return squared_b.sum() if a is None else (a.square().sum((1, 2)) * squared_b).sum()


# --- inverses ------------------------------------------------------------------------------------------------------


def _check_damping(damping: Damping, heuristic: bool, exact: bool) -> None:
    pair = isinstance(damping, tuple)
    if heuristic and exact:
        raise ValueError("tncompiler: KFACOperator.inverse: choose heuristic=True or exact=True, not both")
    if (heuristic or exact) and pair:
        raise ValueError("tncompiler: KFACOperator.inverse: heuristic and exact damping take one damping, not a pair")
    values = damping if isinstance(damping, tuple) else (damping,)
    if len(values) not in (1, 2) or any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError(f"tncompiler: KFACOperator.inverse: damping must be ≥ 0 (or a pair of them), got {damping!r}")


def _dampings(
    a: Tensor | None, b: Tensor, damping: Damping, heuristic: bool, min_damping: float
) -> tuple[Tensor | float, Tensor | float]:
    """λ_A and λ_B per group; heuristic where both mean eigenvalues allow it (tr A ≥ 0, tr B > 0), else λ. `a` is
    the A of the block's layer (for a bias on its own, that of the layer's weight, as curvlinops damps it), or None
    for a layer without a trained weight."""
    if isinstance(damping, tuple):
        return damping
    if not heuristic or a is None:
        return damping, damping
    mean_a, mean_b = a.diagonal(dim1=1, dim2=2).mean(1), b.diagonal(dim1=1, dim2=2).mean(1)
    usable = (mean_a >= 0) & (mean_b > 0)
    ratio = torch.where(usable, mean_a / torch.where(usable, mean_b, 1.0), 1.0).sqrt()
    root = math.sqrt(damping)
    damping_a = torch.where(usable, (root * ratio).clamp(min=min_damping), damping)
    damping_b = torch.where(usable, (root / ratio).clamp(min=min_damping), damping)
    return damping_a, damping_b


def _damped_inverse(
    name: str, a: Tensor | None, b: Tensor, dampings: tuple[Tensor | float, Tensor | float]
) -> _CholeskySolve:
    damping_a, damping_b = dampings
    root_a = None if a is None else _damped_cholesky(a, damping_a, f"input factor A of layer {name!r}")
    root_b = _damped_cholesky(b, damping_b, f"gradient factor B of layer {name!r}")
    return _CholeskySolve(_DampedFactor(root_b), None if root_a is None else _DampedFactor(root_a))


def _damped_cholesky(matrix: Tensor, shift: Tensor | float, what: str) -> Tensor:
    """The Cholesky factor of matrix + shift I per group; retried in float64 when the factorisation fails (as
    curvlinops does), then a ValueError that names the factor."""
    root = _cholesky(matrix, shift)
    if root is None and matrix.dtype != torch.float64:
        warnings.warn(f"tncompiler: the Cholesky factorisation of the {what} failed in {matrix.dtype}; retrying in "
                      "float64", stacklevel=3)  # fmt: skip
        wide = _cholesky(matrix.double(), shift.double() if isinstance(shift, Tensor) else shift)
        root = None if wide is None else wide.to(matrix.dtype)
    if root is None:
        raise ValueError(
            f"tncompiler: the {what} plus the damping is not positive definite (damping {_describe(shift)}); "
            "use a larger damping"
        )
    return root


def _cholesky(matrix: Tensor, shift: Tensor | float) -> Tensor | None:
    eye = torch.eye(matrix.shape[1], dtype=matrix.dtype, device=matrix.device)
    scaled = eye * (shift.view(-1, 1, 1) if isinstance(shift, Tensor) else shift)
    root, info = torch.linalg.cholesky_ex(matrix + scaled)
    return None if bool(info.any()) else root


def _describe(shift: Tensor | float) -> str:
    return f"{shift:g}" if isinstance(shift, float) else ", ".join(f"{v:g}" for v in shift.tolist())


def _exact_inverse(a: Tensor | None, b: Tensor, damping: float) -> _Eigenbasis:
    """(A ⊗ B + λ I)⁻¹ in the factors' eigenbases: 1 / (λ_B λ_Aᵀ + λ) (a bias on its own: 1 / (λ_B + λ))."""
    values_b, q_b = torch.linalg.eigh(b)
    if a is None:
        return _Eigenbasis(q_b, None, (values_b.unsqueeze(2) + damping).reciprocal())
    values_a, q_a = torch.linalg.eigh(a)
    return _Eigenbasis(q_b, q_a, (values_b.unsqueeze(2) * values_a.unsqueeze(1) + damping).reciprocal())


# --- EKFAC's corrected eigenvalues -----------------------------------------------------------------------------------


def _eigenbases(
    layouts: Sequence[_Layout], factors: Sequence[tuple[Tensor | None, Tensor]]
) -> list[tuple[Tensor, Tensor | None]]:
    """(Q_B, Q_A or None) per block; a layer's weight and bias blocks share B, decomposed once."""
    of_b: dict[str, Tensor] = {}
    bases = []
    for layout, (a, b) in zip(layouts, factors):
        if layout.name not in of_b:
            of_b[layout.name] = torch.linalg.eigh(b).eigenvectors
        bases.append((of_b[layout.name], None if a is None else torch.linalg.eigh(a).eigenvectors))
    return bases


def _blocks_by_layer(layouts: Sequence[_Layout]) -> dict[str, list[int]]:
    by_layer: dict[str, list[int]] = {}
    for j, layout in enumerate(layouts):
        by_layer.setdefault(layout.name, []).append(j)
    return by_layer


def _add_corrections(
    sums: list[Tensor],
    bases: Sequence[tuple[Tensor, Tensor | None]],
    by_layer: dict[str, list[int]],
    recorder: Recorder,
    output: Tensor,
    target: Tensor | None,
    loss: LossSpec,
    fisher: Fisher,
    mc_samples: int,
    generator: torch.Generator | None,
) -> None:
    """Add one forward pass's Σ (Q_Bᵀ G Q_A)² per block: G the per-example gradient for each cotangent (of the summed
    loss), summed over the layer's calls in this pass before it is squared."""
    calls = recorder.calls
    unfolded = [_unfolded(call.layer, call.x, call.output_shape, sums[0].dtype) for call in calls]
    vectors = cotangents(loss, fisher, output, target, mc_samples, generator)
    for gradients in backpropagate(output, [call.edge for call in calls], vectors):
        per_layer: dict[str, list[tuple[Tensor, Tensor]]] = {}
        for call, u, gradient in zip(calls, unfolded, gradients):
            if gradient is not None:
                rows = _output_rows(call.layer.spec, gradient.to(u.dtype), u.shape[0])
                per_layer.setdefault(call.layer.name, []).append((u, rows))
        for name, pairs in per_layer.items():
            for j in by_layer[name]:
                rotated = _rotated_gradients(bases[j], pairs)
                sums[j].add_(rotated.square().sum((0, 1)))


def _unfolded(layer: FactorLayer, x: Tensor, output_shape: torch.Size, dtype: torch.dtype) -> Tensor:
    """ū [n, g, in, positions]: the layer's unfolded input (a linear layer's positions are its weight-sharing axes)."""
    x = x.detach().to(dtype)
    n, spec = x.shape[0], layer.spec
    if spec.kind == "linear":
        return x.reshape(n, -1, x.shape[-1]).transpose(1, 2).unsqueeze(1)
    if spec.kind == "transpose":  # its unfold's sizes are those of its output (which output_size= may set)
        sizes = {f"i{j + 1}": size for j, size in enumerate(output_shape[2:])}
    else:
        sizes = spec.sizes(x)
    u = with_sizes(layer.functions.unfold, sizes)(x)
    return u.reshape(n, spec.groups, -1, u[0, 0].numel())


def _output_rows(spec: LayerSpec, gradient: Tensor, n: int) -> Tensor:
    """ĝ [V, n, g, out, positions] from the backpropagated gradients [V·n, ...] of the layer's output."""
    vectors = gradient.shape[0] // n
    if spec.kind == "linear":
        rows = gradient.reshape(vectors, n, -1, gradient.shape[-1]).transpose(2, 3)
        return rows.unsqueeze(2)
    return gradient.reshape(vectors, n, spec.groups, spec.out_channels, -1)


def _rotated_gradients(basis: tuple[Tensor, Tensor | None], pairs: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
    """Q_Bᵀ G Q_A [V, n, g, out, in'] with G = Σ over the calls and positions of ĝ ūᵀ (ū with a row of ones when
    A covers a bias too); a bias on its own: Q_Bᵀ Σ ĝ [V, n, g, out, 1]."""
    q_b, q_a = basis
    total: Tensor | None = None
    for u, rows in pairs:
        rotated_rows = torch.einsum("gde,vngdp->vngep", q_b, rows)
        if q_a is None:
            part = rotated_rows.sum(-1, keepdim=True)
        else:
            if q_a.shape[1] == u.shape[2] + 1:  # A holds the bias's row: ū gets a row of ones
                u = torch.cat([u, u.new_ones(u.shape[0], u.shape[1], 1, u.shape[3])], dim=2)
            rotated_u = torch.einsum("gfe,ngfp->ngep", q_a, u)
            part = torch.einsum("vngdp,ngfp->vngdf", rotated_rows, rotated_u)
        total = part if total is None else total + part
    assert total is not None
    return total
