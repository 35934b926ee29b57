"""Derived diagrams vjp, jvp and jacobian agree with torch.autograd / torch.func through F.convNd and
F.conv_transposeNd, a dense layer, terms that use an input twice, and nested transforms."""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

import tncompiler
from tests import cases
from tests.cases import Conv, conv, linear_source, load, random_tensors, relative_error

# torch.func.jvp loads decompositions through torch.jit.script, which warns on torch 2.13.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
Tensor = torch.Tensor
TOLERANCE = 1e-10  # float64, max abs error / max abs reference
ARGUMENTS = ("x", "w", "b")
CALL_TIME_BATCH = 3

# A chosen grid: every padding kind (int, pair, same, valid), strides, dilations, groups (incl. depthwise), bias,
# 1-3 dimensions and transpose convolutions. The cases in DECLARED declare their batch size (2) in the file and also
# get Jacobians (small sizes); the others leave it open and are called with CALL_TIME_BATCH.
CASES: dict[str, Conv] = {
    "1d-plain-bias": conv([7], [3], bias=True, batch=CALL_TIME_BATCH),
    "1d-stride2-pad1-dil2": conv([9], [3], stride=2, padding=1, dilation=2, bias=True, batch=2),
    "1d-pair-pad-stride2": conv([7], [3], stride=2, padding=(2, 0), batch=CALL_TIME_BATCH),
    "1d-same-even": conv([8], [4], padding="same", c_in=3, c_out=1, bias=True, batch=CALL_TIME_BATCH),
    "1d-valid-stride3": conv([10], [2], stride=3, padding="valid", batch=2),
    "1d-depthwise": conv([8], [3], padding=1, groups=3, c_in=1, c_out=2, bias=True, batch=CALL_TIME_BATCH),
    "2d-stride2-groups2": conv([6, 6], [3, 3], stride=2, padding=1, groups=2, bias=True, batch=2),
    "2d-per-dim": conv([7, 6], [2, 3], stride=[2, 1], padding=["valid", "same"], dilation=[1, 2], c_in=3,
                       batch=CALL_TIME_BATCH),
    "2d-depthwise-same": conv([5, 5], [3, 3], padding="same", groups=3, c_in=1, c_out=1, bias=True, batch=2),
    "2d-pair-pads": conv([6, 7], [3, 2], padding=[(1, 0), (0, 2)], dilation=[2, 1], bias=True, batch=CALL_TIME_BATCH),
    "3d-mixed": conv([4, 5, 4], [2, 3, 2], stride=[1, 2, 1], padding=[1, 0, (1, 0)], bias=True, batch=2),
    "3d-groups2-dil": conv([3, 5, 4], [2, 2, 3], dilation=[1, 2, 1], padding=[0, "same", 1], groups=2, c_in=1,
                           batch=CALL_TIME_BATCH),
    # outputs of 10 and (7, 8)
    "t1d-stride2-bias": conv([5], [3], stride=2, padding=1, output_padding=1, bias=True, transpose=True, batch=2),
    "t2d-groups2-dil": conv([4, 6], [2, 3], stride=[2, 1], padding=1, dilation=[1, 2], output_padding=[1, 0],
                            groups=2, c_out=1, bias=True, transpose=True, batch=CALL_TIME_BATCH),
}
DECLARED = frozenset({"1d-stride2-pad1-dil2", "1d-valid-stride3", "2d-stride2-groups2", "2d-depthwise-same",
                      "3d-mixed", "t1d-stride2-bias"})


def _transforms(name: str) -> list[str]:
    """gx, gw, gb (vjp), tx, tw, tb (jvp), and Jx, Jw, Jb (jacobian) where the batch size is declared."""
    return _derivatives(ARGUMENTS if CASES[name].bias else ARGUMENTS[:2], jacobians=name in DECLARED)


def _derivatives(names: tuple[str, ...], jacobians: bool) -> list[str]:
    """Without a declared batch size, tb and Jb would have no argument to bind n from (a compile error)."""
    lines = [f"g{a} = vjp(y, {a})" for a in names]
    lines += [f"t{a} = jvp(y, {a})" for a in names if a != "b" or jacobians]
    return lines + ([f"J{a} = jacobian(y, {a})" for a in names] if jacobians else [])


def _setup(name: str) -> tuple[Conv, types.ModuleType, list[Tensor], Callable[..., Tensor]]:
    """The case's compiled module (cached), random x, w (b) and the PyTorch function of them."""
    spec = CASES[name]
    sizes = cases.NOTHING_OPEN if name in DECLARED else cases.OPEN_LEVELS["batch"]
    module = load(cases.source(spec, sizes, _transforms(name)))
    arguments = cases.argument_list(spec)
    return spec, module, arguments, lambda *a: cases.forward(spec, *a)


def _without(arguments: list[Tensor], position: int) -> list[Tensor]:
    """The inputs a derivative of y = x·w + b still uses: the other factor of x·w, none for b."""
    return [arguments[1 - position]] if position < 2 else []


def _ids(predicate: Callable[[str], bool], names: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(case, a) for case, spec in CASES.items() if predicate(case) for a in names
            if a != "b" or spec.bias]


@pytest.mark.parametrize(("case", "wrt"), _ids(lambda s: True, ARGUMENTS))
def test_vjp(case: str, wrt: str) -> None:
    spec, module, arguments, reference = _setup(case)
    position = ARGUMENTS.index(wrt)
    leaves = [a.clone().requires_grad_() for a in arguments]
    y = reference(*leaves)
    (grad_y,) = random_tensors([tuple(y.shape)], seed=1)
    (expected,) = torch.autograd.grad(y, leaves[position], grad_y)
    actual = getattr(module, f"g{wrt}")(*_without(arguments, position), grad_y)
    assert relative_error(actual, expected) <= TOLERANCE


@pytest.mark.parametrize(("case", "wrt"), _ids(lambda s: True, ("x", "w")) + _ids(DECLARED.__contains__, ("b",)))
def test_jvp(case: str, wrt: str) -> None:
    spec, module, arguments, reference = _setup(case)
    position = ARGUMENTS.index(wrt)
    (tangent,) = random_tensors([tuple(arguments[position].shape)], seed=2)

    def partial(value: Tensor) -> Tensor:
        return reference(*arguments[:position], value, *arguments[position + 1:])

    _, expected = torch.func.jvp(partial, (arguments[position],), (tangent,))
    actual = getattr(module, f"t{wrt}")(*_without(arguments, position), tangent)
    assert relative_error(actual, expected) <= TOLERANCE


def _no_argument_dtype(jacobian: Tensor, wrt: str) -> Tensor:
    """∂y/∂b takes no argument, so it comes in the default dtype; float64 for the comparison."""
    if wrt == "b":
        assert jacobian.dtype == torch.get_default_dtype()
        return jacobian.double()
    return jacobian


@pytest.mark.parametrize(("case", "wrt"), _ids(DECLARED.__contains__, ARGUMENTS))
def test_jacobian(case: str, wrt: str) -> None:
    spec, module, arguments, reference = _setup(case)
    position = ARGUMENTS.index(wrt)
    expected = torch.func.jacrev(reference, argnums=position)(*arguments)
    actual = _no_argument_dtype(getattr(module, f"J{wrt}")(*_without(arguments, position)), wrt)
    assert relative_error(actual, expected) <= TOLERANCE


def test_signatures_follow_the_file() -> None:
    """Derived functions take the inputs they still use, in file order, then the new argument."""
    _, module, _, _ = _setup("1d-stride2-pad1-dil2")
    expected = {"gx": "w, grad_y", "gw": "x, grad_y", "gb": "grad_y", "tx": "w, tangent_x",
                "tw": "x, tangent_w", "tb": "tangent_b", "Jx": "w", "Jw": "x", "Jb": "dtype, device"}
    for name, parameters in expected.items():
        assert ", ".join(inspect.signature(getattr(module, name)).parameters) == parameters, name


# --- a dense layer: no index patterns ----------------------------------------------------------------------------

LINEAR = linear_source(_derivatives(ARGUMENTS, jacobians=True) + ["gx2 = vjp(y, x, cotangent=v)"], batch=3)


@pytest.mark.parametrize("wrt", ARGUMENTS)
def test_linear_layer(wrt: str) -> None:
    module = load(LINEAR)
    arguments = random_tensors([(3, 4), (3, 4), (3,)])
    position = ARGUMENTS.index(wrt)
    rest = _without(arguments, position)
    (grad_y,) = random_tensors([(3, 3)], seed=1)
    leaves = [a.clone().requires_grad_() for a in arguments]
    (expected_vjp,) = torch.autograd.grad(F.linear(*leaves), leaves[position], grad_y)
    assert relative_error(getattr(module, f"g{wrt}")(*rest, grad_y), expected_vjp) <= TOLERANCE
    expected_jacobian = torch.func.jacrev(F.linear, argnums=position)(*arguments)
    assert relative_error(_no_argument_dtype(getattr(module, f"J{wrt}")(*rest), wrt), expected_jacobian) <= TOLERANCE
    (tangent,) = random_tensors([tuple(arguments[position].shape)], seed=2)
    _, expected_jvp = torch.func.jvp(lambda t: F.linear(*arguments[:position], t, *arguments[position + 1:]),
                                     (arguments[position],), (tangent,))
    assert relative_error(getattr(module, f"t{wrt}")(*rest, tangent), expected_jvp) <= TOLERANCE


def test_linear_cotangent_name() -> None:
    module = load(LINEAR)
    x, w, b = random_tensors([(3, 4), (3, 4), (3,)])
    (v,) = random_tensors([(3, 3)], seed=1)
    assert list(inspect.signature(module.gx2).parameters) == ["w", "v"]
    assert relative_error(module.gx2(w, v), v @ w) <= TOLERANCE


# --- the product rule: an input used twice in a term ---------------------------------------------------------------

TWICE = """
index n = 3, c = 4, e = 4
input x[n, c]
input m[c, e]
z[n, c] = x[n, c] * x[n, c]
q[n] = x[n, c] * m[c, e] * x[n, e]
gz = vjp(z, x)
tz = jvp(z, x)
Jz = jacobian(z, x)
gq = vjp(q, x)
tq = jvp(q, x)
Jq = jacobian(q, x)
"""


def _square(x: Tensor) -> Tensor:
    return x * x


def _quadratic(x: Tensor, m: Tensor) -> Tensor:
    return torch.einsum("nc,ce,ne->n", x, m, x)


@pytest.mark.parametrize("name", ["z", "q"])
def test_product_rule(name: str) -> None:
    """z = x ⊙ x and the (asymmetric) quadratic form q = xᵀ m x: two occurrences of x, one derivative each."""
    module = load(TWICE)
    x, m = random_tensors([(3, 4), (4, 4)])
    function, extra = (_square, []) if name == "z" else (_quadratic, [m])
    out_shape = (3, 4) if name == "z" else (3,)
    (grad, tangent) = random_tensors([out_shape, (3, 4)], seed=1)
    leaf = x.clone().requires_grad_()
    (expected_vjp,) = torch.autograd.grad(function(leaf, *extra), leaf, grad)
    _, expected_jvp = torch.func.jvp(lambda t: function(t, *extra), (x,), (tangent,))
    expected_jacobian = torch.func.jacrev(function)(x, *extra)
    assert relative_error(getattr(module, f"g{name}")(x, *extra, grad), expected_vjp) <= TOLERANCE
    assert relative_error(getattr(module, f"t{name}")(x, *extra, tangent), expected_jvp) <= TOLERANCE
    assert relative_error(getattr(module, f"J{name}")(x, *extra), expected_jacobian) <= TOLERANCE


# --- nested transforms -------------------------------------------------------------------------------------------

NESTED_SPEC = conv([6, 5], [3, 2], stride=[2, 1], padding=1, groups=2, bias=True, batch=2)
NESTED = cases.source(NESTED_SPEC, transforms=["hw = vjp(vjp(y, x), w)", "tx = jvp(vjp(y, x), w)"])


def test_vjp_of_vjp() -> None:
    """vjp(vjp(y, x), w)(grad_y, v) = ∂/∂w ⟨v, ∂y/∂x · grad_y⟩, a second-order product, by double backward."""
    module = load(NESTED)
    x, w, b = cases.argument_list(NESTED_SPEC)
    grad_y, v = random_tensors([tuple(cases.forward(NESTED_SPEC, x, w, b).shape), tuple(x.shape)], seed=1)
    xl, wl = x.clone().requires_grad_(), w.clone().requires_grad_()
    (gx,) = torch.autograd.grad(cases.forward(NESTED_SPEC, xl, wl, b), xl, grad_y, create_graph=True)
    (expected,) = torch.autograd.grad(gx, wl, v)
    assert list(inspect.signature(module.hw).parameters) == ["grad_y", "grad_vjp_hw"]
    assert relative_error(module.hw(grad_y, v), expected) <= TOLERANCE


def test_jvp_of_vjp() -> None:
    module = load(NESTED)
    x, w, b = cases.argument_list(NESTED_SPEC)
    grad_y, tangent = random_tensors([tuple(cases.forward(NESTED_SPEC, x, w, b).shape), tuple(w.shape)], seed=1)

    def gx(weight: Tensor) -> Tensor:
        return torch.func.vjp(lambda t: cases.forward(NESTED_SPEC, t, weight, b), x)[1](grad_y)[0]

    _, expected = torch.func.jvp(gx, (w,), (tangent,))
    assert relative_error(module.tx(grad_y, tangent), expected) <= TOLERANCE


def test_jacobian_of_vjp_is_the_hessian() -> None:
    """jacobian(vjp(q, x), x) for q = xᵀ m x with cotangent 1 per sample is the Hessian of Σ q: m + mᵀ per sample."""
    module = load(TWICE + "H = jacobian(vjp(q, x), x)\n")
    x, m = random_tensors([(3, 4), (4, 4)])
    ones = torch.ones(3, dtype=torch.float64)
    expected = torch.func.hessian(lambda t: _quadratic(t, m).sum())(x)
    assert relative_error(module.H(m, ones), expected) <= TOLERANCE


# --- derivatives with respect to what the diagram does not depend on -----------------------------------------------

UNUSED = """
index n, c = 3, d = 2
input x[n, c]
input w[d, c]
input v[c]
y[n, d] = x[n, c] * w[d, c]
"""


@pytest.mark.parametrize("transform", ["vjp(y, v)", "jvp(y, v)", "jacobian(y, v)", "vjp(y, nothing)",
                                       "vjp(vjp(y, x), x)", "kfac(y, v, batch=n)", "kfac_grad(y, v, batch=n)"])
def test_derivative_wrt_unused_input_is_an_error(transform: str) -> None:
    with pytest.raises(tncompiler.TncError, match=r"is not an argument of|does not depend on") as error:
        tncompiler.compile_source(UNUSED + f"g = {transform}\n", "unused.tnd")
    assert "unused.tnd:7:" in str(error.value)
