"""Lowering's kernel matcher (`match_native`, tncompiler/passes/lower.py): which terms are one call of a PyTorch
convolution kernel, in which role (forward, transpose, weight gradient) and with which leg groups (batch, groups,
the channels of each operand), on which sampled legs; and which terms are no kernel at all.

Terms are taken as the front end builds them, so each expectation reads off the file."""

from __future__ import annotations

import pytest

from tncompiler.api import build_program
from tncompiler.ir.network import Network
from tncompiler.passes.lower import match_native

# A grouped 2-d convolution (PyTorch's layouts), its input and weight gradients, and what is no kernel.
GROUPED = """index n, g = 2, c = 3, d = 4, i1 = 8, k1 = 3, i2 = 7, k2 = 2
pattern p1(i1, o1, k1) = conv(stride=2, padding=1)
pattern p2(i2, o2, k2) = conv()
input x[n, (g c), i1, i2]
input w[(g d), c, k1, k2]
input b[(g d)]
y[n, (g d), o1, o2] = x[n, (g c), i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[(g d), c, k1, k2] + b[(g d)]
gx = vjp(y, x)
gw = vjp(y, w)
u[n, (g c k1 k2), (o1 o2)] = x[n, (g c), i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2)
A = kfac(y, w, batch=n)
"""
# A transpose convolution as written (x on the patterns' o legs), and a layout with channels last and two batch legs.
WRITTEN = """index n, t = 2, c = 3, d = 4, i = 8, k = 3
pattern p(i, o, k) = conv(stride=2)
input z[n, c, o]
input w[c, d, k]
input x[n, t, i, c]
input v[d, k, c]
up[n, d, i] = z[n, c, o] * p(i, o, k) * w[c, d, k]
last[n, t, o, d] = x[n, t, i, c] * p(i, o, k) * v[d, k, c]
"""
# A depthwise layer (one input channel per group): its sampled weight gradient zeroes the dropped rows instead.
SAMPLED = """index n, g = 3, c = 1, d = 2, i1 = 8, k1 = 3, i2 = 8, k2 = 3
pattern p1(i1, o1, k1) = conv()
pattern p2(i2, o2, k2) = conv()
input x[n, (g c), i1, i2]
input w[(g d), c, k1, k2]
y[n, (g d), o1, o2] = x[n, (g c), i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[(g d), c, k1, k2]
sw = sample(vjp(y, w), index=o1, p=0.5)
sx = sample(vjp(y, x), index=o1, p=0.5)
sx2 = sample(sx, index=o2, p=0.5)
"""
# One to four spatial dimensions; PyTorch has kernels for three.
DIMS = """index n, c = 2, d = 2, i1 = 5, i2 = 5, i3 = 5, i4 = 5, k1 = 2, k2 = 2, k3 = 2, k4 = 2
pattern p1(i1, o1, k1) = conv()
pattern p2(i2, o2, k2) = conv()
pattern p3(i3, o3, k3) = conv()
pattern p4(i4, o4, k4) = conv()
input x1[n, c, i1]
input w1[d, c, k1]
input x3[n, c, i1, i2, i3]
input w3[d, c, k1, k2, k3]
input x4[n, c, i1, i2, i3, i4]
input w4[d, c, k1, k2, k3, k4]
y1[n, d, o1] = x1[n, c, i1] * p1(i1, o1, k1) * w1[d, c, k1]
y3[n, d, o1, o2, o3] = x3[n, c, i1, i2, i3] * p1(i1, o1, k1) * p2(i2, o2, k2) * p3(i3, o3, k3) * w3[d, c, k1, k2, k3]
y4[n, d, o1, o2, o3, o4] = x4[n, c, i1, i2, i3, i4] * p1(i1, o1, k1) * p2(i2, o2, k2) * p3(i3, o3, k3)
    * p4(i4, o4, k4) * w4[d, c, k1, k2, k3, k4]
"""
# Terms that look like convolutions but are none.
LOOKALIKES = """index n, c = 2, d = 3, e = 2, i = 8, k = 3, i2 = 5, k2 = 2
pattern p(i, o, k) = conv()
pattern q(i2, o2, k2) = conv()
input x[n, c, i]
input w[d, c, k]
input we[d, e, k]
input m[k, o]
input r[d, c, k, o]
input gy[n, d, o]
input xx[n, c, i, i2]
input v[k, o2]
dense[n, d] = x[n, c, i] * w[d, c, k] * delta(i) * delta(k)
tied[n, d, o] = x[n, c, i] * p(i, o, k) * we[d, e, k] * delta(c, e)
third[n, d, o] = x[n, c, i] * p(i, o, k) * w[d, c, k] * m[k, o]
local[n, d, o] = x[n, c, i] * p(i, o, k) * r[d, c, k, o]
summed_batch[d, o] = x[n, c, i] * p(i, o, k) * w[d, c, k] * delta(n)
summed_channels[d, k] = x[n, c, i] * p(i, o, k) * gy[n, d, o] * delta(n) * delta(c)
mixed[n, c, o, k2] = xx[n, c, i, i2] * p(i, o, k) * q(i2, o2, k2) * v[k, o2]
"""


def term(source: str, name: str, position: int = 0) -> Network:
    """The term as the front end builds it, less its lone deltas (`delta(n)` sums n; simplify's copy-tensor rule
    takes them out before lowering)."""
    net = build_program(source, "lower.tnd").diagram(name).terms[position]
    factors = [f for f in net.factors if not (f.kind == "delta" and len(f.legs) == 1)]
    return Network(factors, net.outputs, net.sizes, net.coefficient, net.lowering)


def matched(source: str, name: str) -> dict[str, object]:
    """What match_native says of the diagram's first term, with factor positions as the factors' names."""
    net = term(source, name)
    native = match_native(net)
    assert native is not None, f"{name} is no kernel"
    return {
        "role": native.role,
        "data": net.factors[native.data].name,
        "other": net.factors[native.other].name,
        "patterns": tuple(net.factors[k].name for k in native.patterns),
        "batch": native.batch,
        "groups": native.groups,
        "data_channels": native.data_channels,
        "other_channels": native.other_channels,
        "tiled": native.tiled,
        "masked": native.masked,
    }


def kernel(role: str, data: str, other: str, patterns: tuple[str, ...], **legs: tuple[str, ...]) -> dict[str, object]:
    """An expected match: leg groups not given are empty."""
    groups = ("batch", "groups", "data_channels", "other_channels", "tiled", "masked")
    return {"role": role, "data": data, "other": other, "patterns": patterns} | {g: legs.get(g, ()) for g in groups}


GROUPED_KERNEL = {"batch": ("n",), "groups": ("g",)}


@pytest.mark.parametrize(
    ("source", "name", "expected"),
    [
        (GROUPED, "y", kernel("forward", "x", "w", ("p1", "p2"), **GROUPED_KERNEL, data_channels=("c",),
                              other_channels=("d",))),
        (GROUPED, "gx", kernel("transpose", "grad_y", "w", ("p1", "p2"), **GROUPED_KERNEL, data_channels=("d",),
                               other_channels=("c",))),
        (GROUPED, "gw", kernel("weight", "x", "grad_y", ("p1", "p2"), **GROUPED_KERNEL, data_channels=("c",),
                               other_channels=("d",))),
        (WRITTEN, "up", kernel("transpose", "z", "w", ("p",), batch=("n",), data_channels=("c",),
                               other_channels=("d",))),
        (WRITTEN, "last", kernel("forward", "x", "v", ("p",), batch=("n", "t"), data_channels=("c",),
                                 other_channels=("d",))),
        (DIMS, "y1", kernel("forward", "x1", "w1", ("p1",), batch=("n",), data_channels=("c",),
                            other_channels=("d",))),
        (DIMS, "y3", kernel("forward", "x3", "w3", ("p1", "p2", "p3"), batch=("n",), data_channels=("c",),
                            other_channels=("d",))),
    ],
    ids=["forward", "input-vjp", "weight-vjp", "transpose-as-written", "channels-last-two-batch-legs", "1d", "3d"],
)  # fmt: skip
def test_the_kernel_each_term_is(source: str, name: str, expected: dict[str, object]) -> None:
    assert matched(source, name) == expected


def test_sampled_output_rows_run_on_the_kept_windows() -> None:
    """A sampled weight or input gradient is tiled on the sampled (primed) o leg; a depthwise weight gradient keeps
    the kernel as written, on grad_y with the dropped rows zeroed."""
    weight = kernel("weight", "x", "grad_y", ("p1", "p2"), **GROUPED_KERNEL, data_channels=("c",),
                    other_channels=("d",), masked=("o1'",))  # fmt: skip
    assert matched(SAMPLED, "sw") == weight
    tiled = kernel("transpose", "grad_y", "w", ("p1", "p2"), **GROUPED_KERNEL, data_channels=("d",),
                   other_channels=("c",), tiled=("o1'",))  # fmt: skip
    assert matched(SAMPLED, "sx") == tiled
    plain = matched(GROUPED + "sw = sample(gw, index=o1, p=0.5)\n", "sw")
    assert plain["tiled"] == ("o1'",) and plain["masked"] == ()


@pytest.mark.parametrize(
    ("source", "name", "position"),
    [
        pytest.param(GROUPED, "y", 1, id="bias-term"),  # no pattern
        pytest.param(GROUPED, "u", 0, id="unfold"),  # one tensor and its patterns
        pytest.param(GROUPED, "A", 0, id="kfac-factor"),  # x twice, with two sets of patterns
        pytest.param(SAMPLED, "sx2", 0, id="input-vjp-sampled-on-two-axes"),  # kept windows that cannot be tiled
        pytest.param(DIMS, "y4", 0, id="4d"),  # PyTorch has no 4-d kernel
        pytest.param(LOOKALIKES, "dense", 0, id="dense"),  # no pattern
        pytest.param(LOOKALIKES, "tied", 0, id="tied-by-a-delta"),  # a delta besides the two operands
        pytest.param(LOOKALIKES, "third", 0, id="third-tensor"),
        pytest.param(LOOKALIKES, "local", 0, id="locally-connected"),  # the weight varies with the output position
        pytest.param(LOOKALIKES, "summed_batch", 0, id="batch-summed"),
        pytest.param(LOOKALIKES, "summed_channels", 0, id="weight-vjp-summed-over-input-channels"),
        pytest.param(LOOKALIKES, "mixed", 0, id="two-roles"),  # one pattern's o open, the other's k
    ],
)
def test_terms_that_are_no_kernel(source: str, name: str, position: int) -> None:
    assert match_native(term(source, name, position)) is None
