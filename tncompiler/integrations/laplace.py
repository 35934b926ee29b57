"""`TncGGN`: a curvature back end for laplace-torch, its KFAC blocks and GGN diagonals from tnc's compiled layers.

    la = laplace.Laplace(model, "classification", subset_of_weights="all", hessian_structure="kron", backend=TncGGN)
    la.fit(train_loader)          # hessian_structure="diag" too

laplace-torch (`pip install tncompiler[laplace]`) asks a back end for `kron(x, y, N) -> (loss, Kron)` and
`diag(x, y) -> (loss, diagonal)` per batch, in the scaling of its likelihood: the summed loss times `factor` (1/2 for
regression's `MSELoss(reduction="sum")`, 1 for classification's `CrossEntropyLoss(reduction="sum")`).

- `kron` is tnc's `kfac_factors` (fisher "type-2", the GGN; "mc" with `stochastic=True`) laid out as laplace's
  curvlinops back end lays out curvlinops' factors: per parameter, in the order of the trained parameters, a weight
  block [B, A] (B on the output channels, the leading axis of the flattened weight; A on the input features, without
  a bias row) and a bias block [B]; A scaled by M/N (the batch's share of the data: B is summed over the batch, A
  averaged, so that the batches' blocks add up to the factors of all N examples), and the whole times `factor`.
- `diag` is the exact GGN diagonal of `tncompiler.model.curvature.curvature` (diag_ggn_mc with `stochastic=True`),
  in the order of the trained parameters, times `factor`.

The loss comes from the forward pass the curvature makes (a hook on the model keeps its output), not from one more.

Grouped layers. A grouped convolution's KFAC is exact per group (`kfac_factors`: A [g, in, in], B [g, out, out]),
and its weight [(g d), c, k...] holds each group's weight contiguously (the out-channels lead), as does its bias
[(g d)]: laplace's `Kron` walks its blocks along the flattened parameters, so a group is a block of its own [B_g, A_g]
(and [B_g] for the bias). laplace's `KronLaplace` however starts from `Kron.init_from_model`, one block per
parameter shaped [(g d), (g d)] and [c k..., c k...], adds each batch's blocks to it pairwise (`Kron.__add__` zips the
lists), and adds the prior precision per parameter (`KronDecomposed.__add__` wants one delta per block). A grouped
model's blocks are therefore a `GroupedKron`: a `Kron` subclass whose reflected addition takes precedence over
`Kron.__add__` (Python calls a subclass's `__radd__` first), accepts the zero blocks of `init_from_model` and keeps
the per-group blocks; it decomposes into a `GroupedKronDecomposed` that spreads a per-parameter prior precision over
the parameter's groups. (curvlinops instead averages the groups' inputs into one A: not the curvature of any group.)

Refused, naming the parameter or layer: a trained parameter that is not the weight or bias of an nn.Linear or
nn.Conv*d (KFAC has no blocks for it: freeze it, or use hessian_structure="diag", which covers every parameter); a
parametrized weight (laplace's parameter is the parametrization's original, not the weight KFAC is of); a parameter
two layers share; a transpose convolution, whose flattened weight [(g c), d, k...] interleaves the two factors' axes
(input channel, output channel, kernel), so that no [B, A] block of `Kron` is its A ⊗ B. `last_layer=True`
(laplace's last-layer Laplace) is refused too: it is the curvature of a feature extractor's last layer.
"""

from __future__ import annotations

import math
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from laplace.curvature import GGNInterface
from laplace.utils.matrix import Kron, KronDecomposed
from torch import nn

from tncompiler.model.curvature import curvature
from tncompiler.model.factors import Approx, kfac_factors
from tncompiler.model.layers import SUPPORTED, LayerSpec, spec_of
from tncompiler.model.losses import Fisher

__all__ = ["GroupedKron", "GroupedKronDecomposed", "TncGGN"]

Tensor = torch.Tensor
Inputs = Tensor | MutableMapping[str, Any]
Blocks = list[list[Tensor]]


@dataclass(frozen=True)
class _Owner:
    """The layer that holds a trained parameter, and which of its tensors the parameter is."""

    name: str
    spec: LayerSpec
    role: str  # "weight" or "bias"
    trains_bias: bool


class TncGGN(GGNInterface):
    """laplace-torch's GGN back end (as `CurvlinopsGGN` for kron, `BackPackGGN` for diag) on tnc's compiled layers.

    Args (besides laplace's own, which it passes):
        stochastic: the Monte-Carlo Fisher instead of the GGN (fisher "mc", diag_ggn_mc).
        num_samples: Monte-Carlo samples per example when stochastic.
        kfac_approx: KFAC-expand or KFAC-reduce for kron (a `kfac_approx` keyword of `kron` overrides it, as
            curvlinops' back end takes it).
        generator: a torch.Generator for the Monte-Carlo labels.
    """

    def __init__(
        self,
        model: nn.Module,
        likelihood: Any,
        last_layer: bool = False,
        subnetwork_indices: torch.LongTensor | None = None,
        dict_key_x: str = "input_ids",
        dict_key_y: str = "labels",
        stochastic: bool = False,
        num_samples: int = 1,
        kfac_approx: Approx = "expand",
        generator: torch.Generator | None = None,
    ) -> None:
        if last_layer:
            raise ValueError(
                "tncompiler.integrations.laplace.TncGGN: last_layer=True is not supported (laplace's last-layer "
                "Laplace); use subset_of_weights='all', or freeze the other layers (requires_grad_(False))"
            )
        super().__init__(model, likelihood, last_layer, subnetwork_indices, dict_key_x, dict_key_y, stochastic,
                         num_samples)  # fmt: skip
        self.kfac_approx: Approx = kfac_approx
        self.generator = generator
        self._owners: list[_Owner] | None = None

    def kron(self, x: Inputs, y: Tensor, N: int, **kwargs: Any) -> tuple[Tensor, Kron]:
        """The batch's summed loss and KFAC blocks, scaled as laplace's curvlinops back end scales them."""
        approx = kwargs.pop("kfac_approx", self.kfac_approx)
        mc_samples = kwargs.pop("mc_samples", self.num_samples)
        if kwargs:
            raise TypeError(f"tncompiler.integrations.laplace.TncGGN.kron: unknown keywords {sorted(kwargs)}")
        if self.subnetwork_indices is not None:
            raise ValueError("tncompiler.integrations.laplace.TncGGN: kron has no subnetwork form")
        owners = self._parameter_owners()
        fisher: Fisher = "mc" if self.stochastic else "type-2"
        samples = mc_samples if self.stochastic else 1
        with _Output(self.model) as output:
            factors = kfac_factors(self.model, self._loss(), [(x, y)], approx=approx, fisher=fisher,
                                   mc_samples=samples, generator=self.generator)  # fmt: skip
        blocks, counts = _blocks(owners, self.params, factors, len(y) / N)
        kron = GroupedKron(blocks, counts) if any(c > 1 for c in counts) else Kron(cast(Any, blocks))
        return self.factor * self.lossfunc(output.value(), y), kron * self.factor

    def diag(self, x: Inputs, y: Tensor, **kwargs: Any) -> tuple[Tensor, Tensor]:
        """The batch's summed loss and the GGN's diagonal (laplace's N keyword is not needed: diagonals add up)."""
        quantity = "diag_ggn_mc" if self.stochastic else "diag_ggn_exact"
        with _Output(self.model) as output:
            found = curvature(self.model, self._loss(), (x, y), quantities=[quantity], mc_samples=self.num_samples,
                              generator=self.generator)[quantity]  # fmt: skip
        diagonal = torch.cat([found[name].flatten() for name in self.params_dict])
        if self.subnetwork_indices is not None:
            diagonal = diagonal[self.subnetwork_indices]
        return self.factor * self.lossfunc(output.value(), y), self.factor * diagonal

    def _loss(self) -> nn.Module:
        """laplace's loss, an nn.MSELoss or nn.CrossEntropyLoss with reduction="sum" (its type says a callable)."""
        assert isinstance(self.lossfunc, nn.Module)
        return self.lossfunc

    def _parameter_owners(self) -> list[_Owner]:
        if self._owners is None:
            self._owners = _owners(self.model, self.params)
        return self._owners


class _Output:
    """A forward hook on the model that keeps the output of its first call (detached): the loss without one more
    forward pass. Later calls are torch.func's (`curvature` runs the model again for parameters outside the layers)."""

    def __init__(self, model: nn.Module) -> None:
        self._model, self._output = model, cast(Tensor | None, None)

    def __enter__(self) -> _Output:
        self._handle = self._model.register_forward_hook(self._keep)
        return self

    def _keep(self, _: nn.Module, __: Any, output: Tensor) -> None:
        if self._output is None:
            self._output = output.detach()

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()

    def value(self) -> Tensor:
        assert self._output is not None, "the curvature runs the model"
        return self._output


# --- which layer holds each trained parameter ----------------------------------------------------------------------


def _owners(model: nn.Module, params: Sequence[Tensor]) -> list[_Owner]:
    """The owner of each trained parameter, in laplace's order; refuses what KFAC has no `Kron` block for."""
    held: dict[int, _Owner] = {}
    for name, module in model.named_modules():
        if isinstance(module, SUPPORTED):
            _claim(held, name, module)
    names = {id(p): name for name, p in model.named_parameters()}
    owners = []
    for p in params:
        if id(p) not in held:
            raise ValueError(
                f"tncompiler.integrations.laplace.TncGGN: the trained parameter {names.get(id(p), '?')!r} is not the "
                "weight or bias of an nn.Linear or nn.Conv*d layer (a parametrized weight's original is not the "
                "weight either), so KFAC has no block for it; freeze it (requires_grad_(False)) or use "
                "hessian_structure='diag'"
            )
        owners.append(held[id(p)])
    return owners


def _claim(held: dict[int, _Owner], name: str, module: nn.Module) -> None:
    trained = {role: p for role in ("weight", "bias") if (p := module._parameters.get(role)) is not None}
    trained = {role: p for role, p in trained.items() if p.requires_grad}
    if not trained:
        return
    spec = spec_of(module, name)
    if spec.kind == "transpose":
        raise ValueError(
            f"tncompiler.integrations.laplace.TncGGN: layer {name!r} is a transpose convolution, whose flattened "
            "weight [(g c), d, k...] interleaves the axes of KFAC's two factors (in-channel, out-channel, kernel), so "
            "that no Kron block [B, A] of laplace is its A ⊗ B; freeze it or use hessian_structure='diag'"
        )
    for role, p in trained.items():
        if id(p) in held:
            raise ValueError(
                f"tncompiler.integrations.laplace.TncGGN: layers {held[id(p)].name!r} and {name!r} share a "
                "parameter; KFAC has one block per layer, so a shared parameter has no block of its own"
            )
        held[id(p)] = _Owner(name, spec, role, "bias" in trained)


# --- the blocks ----------------------------------------------------------------------------------------------------


def _blocks(
    owners: Sequence[_Owner], params: Sequence[Tensor], factors: dict[str, tuple[Tensor, Tensor]], share: float
) -> tuple[Blocks, list[int]]:
    """Per parameter, one block per group: [B, A·share] for a weight (A without the bias row), [B] for a bias; and
    the number of blocks of each parameter."""
    blocks: Blocks = []
    counts = []
    for owner, p in zip(owners, params):
        a, b = _grouped(owner, p, factors)
        if owner.role == "bias":
            blocks += [[b[j]] for j in range(b.shape[0])]
        else:
            a = a[:, :-1, :-1] if owner.trains_bias else a
            blocks += [[b[j], a[j] * share] for j in range(b.shape[0])]
        counts.append(b.shape[0])
    return blocks, counts


def _grouped(owner: _Owner, p: Tensor, factors: dict[str, tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """The owner's factors with a group axis; zeros for a layer the batch never called (its gradient is zero)."""
    spec = owner.spec
    if owner.name in factors:
        a, b = factors[owner.name]
        return (a, b) if a.dim() == 3 else (a.unsqueeze(0), b.unsqueeze(0))
    features = spec.in_channels * math.prod(spec.kernel) + int(owner.trains_bias)
    g, out = spec.groups, spec.out_channels
    return p.new_zeros(g, features, features), p.new_zeros(g, out, out)


# --- laplace's Kron, with a parameter's groups as blocks of their own ------------------------------------------------


class GroupedKron(Kron):
    """A `Kron` in which a parameter may hold several consecutive blocks (a grouped layer: one per group);
    `blocks_per_parameter` says how many. It adds to laplace's per-parameter zero blocks (`Kron.init_from_model`) by
    keeping its own, keeps its type through sums and products, and decomposes into a `GroupedKronDecomposed`."""

    def __init__(self, kfacs: Blocks, blocks_per_parameter: Sequence[int]) -> None:
        super().__init__(cast(Any, kfacs))
        self.blocks_per_parameter = list(blocks_per_parameter)
        if sum(self.blocks_per_parameter) != len(kfacs):
            raise ValueError(
                f"tncompiler: GroupedKron has {len(kfacs)} blocks, but blocks_per_parameter counts "
                f"{sum(self.blocks_per_parameter)}"
            )

    def __add__(self, other: Kron) -> GroupedKron:
        if isinstance(other, GroupedKron):
            if other.blocks_per_parameter != self.blocks_per_parameter:
                raise ValueError("tncompiler: GroupedKron: the two sums have different blocks per parameter")
            summed = [[x + z for x, z in zip(f, h)] for f, h in zip(self._factors(), other._factors())]
            return GroupedKron(summed, self.blocks_per_parameter)
        if isinstance(other, Kron) and len(other) == len(self.blocks_per_parameter) and _all_zero(other):
            return GroupedKron([list(f) for f in self._factors()], self.blocks_per_parameter)
        raise ValueError(
            "tncompiler: a GroupedKron (a grouped layer's per-group blocks) adds to another of the same model or to "
            "the zero blocks of Kron.init_from_model; a non-zero per-parameter Kron has no per-group blocks to add"
        )

    __radd__ = __add__

    def __mul__(self, scalar: float | Tensor) -> GroupedKron:
        product = super().__mul__(scalar)
        return GroupedKron(cast(Blocks, product.kfacs), self.blocks_per_parameter)

    __rmul__ = __mul__

    def decompose(self, damping: bool = False) -> GroupedKronDecomposed:
        decomposed = super().decompose(damping=damping)
        return GroupedKronDecomposed(decomposed.eigenvectors, decomposed.eigenvalues, None, damping,
                                     blocks_per_parameter=self.blocks_per_parameter)  # fmt: skip

    def _factors(self) -> list[list[Tensor]]:
        return cast(list[list[Tensor]], self.kfacs)


def _all_zero(kron: Kron) -> bool:
    return all(not bool(torch.any(f != 0)) for factors in cast(list[list[Tensor]], kron.kfacs) for f in factors)


class GroupedKronDecomposed(KronDecomposed):
    """laplace's `KronDecomposed` of a `GroupedKron`: a delta per parameter (laplace's per-layer prior precision)
    applies to each of the parameter's blocks; a scalar, or one delta per block, as `KronDecomposed` takes it."""

    def __init__(
        self,
        eigenvectors: Any,
        eigenvalues: Any,
        deltas: Tensor | None = None,
        damping: bool = False,
        *,
        blocks_per_parameter: Sequence[int],
    ) -> None:
        self.blocks_per_parameter = list(blocks_per_parameter)
        super().__init__(eigenvectors, eigenvalues, self._per_block(deltas, len(eigenvalues)), damping)

    def _per_block(self, deltas: Tensor | None, blocks: int) -> Tensor | None:
        counts = self.blocks_per_parameter
        if deltas is None or deltas.ndim != 1 or len(deltas) != len(counts) or len(counts) == blocks:
            return deltas
        return torch.repeat_interleave(deltas, torch.tensor(counts, device=deltas.device))

    def __add__(self, deltas: Tensor) -> GroupedKronDecomposed:
        return self._like(super().__add__(cast(Tensor, self._per_block(deltas, len(self)))))

    def __mul__(self, scalar: float | Tensor) -> GroupedKronDecomposed:
        return self._like(super().__mul__(scalar))

    def _like(self, plain: KronDecomposed) -> GroupedKronDecomposed:
        """`KronDecomposed`'s own result (its sums and products make plain ones), kept grouped."""
        return GroupedKronDecomposed(plain.eigenvectors, plain.eigenvalues, plain.deltas, plain.damping,
                                     blocks_per_parameter=self.blocks_per_parameter)  # fmt: skip

    __radd__ = __add__
    __rmul__ = __mul__
