"""The memory guard's estimate (tncompiler/guard.py, `estimate_bytes`) against what the generated code allocates.

How the peak is measured (bench/measure.py's `peak_memory`, as the benchmarks measure it): the function runs once under
`torch.profiler.profile(profile_memory=True)`, which records every allocation and every free of PyTorch's CPU
allocator as an event with a signed size; the events in time order, summed, give the bytes alive at each moment, and
their maximum is the peak the call adds to what existed before it (its arguments are not counted, nor by the
estimate). Each function runs in a module of its own, freshly executed
(so the constants it caches are built, and counted, in the measured call), after one call in another fresh module
(so PyTorch's one-time set-up is not counted). Tensors are float64, as the estimate assumes (BYTES_PER_ENTRY = 8).
Everything here runs on the CPU: the kernels' unfolded input, which the estimate counts, is what PyTorch's CPU
convolutions build for float64.

The reproducers of issue 11: a one-channel conv1d over a second of 44.1 kHz audio is one native conv1d (no index
pattern is built), and an unfold of a 2048² image with a 64x64 kernel into PyTorch's [n, (c k1 k2), (o1 o2)] copies
its ~129 GB windows at the final reshape.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from functools import cache
from types import CodeType

import pytest
import torch

import tncompiler
from bench.measure import peak_memory
from tncompiler import TncError
from tncompiler.api import build_program
from tncompiler.driver import Compilation
from tncompiler.guard import BYTES_PER_ENTRY, default_limit, estimate_bytes, parse_size

NO_LIMIT = parse_size("1e999")

MIB = 2**20
FACTOR = 3  # the estimate is within this factor of the measured peak

AUDIO = """index n = 1, c = 1, d = 1, i = 44100, k = 9
pattern p(i, o, k) = conv(padding=4)
input x[n, c, i]
input w[d, c, k]
y[n, d, o] = x[n, c, i] * p(i, o, k) * w[d, c, k]
"""
UNFOLD_2048 = """index n = 1, c = 1, i1 = 2048, i2 = 2048, k1 = 64, k2 = 64
pattern p1(i1, o1, k1) = conv()
pattern p2(i2, o2, k2) = conv()
input x[n, c, i1, i2]
u[n, (c k1 k2), (o1 o2)] = x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2)
"""

# -- the sweep: small programs of every kind, each allocating a few MiB ----------------------------------------------
CONV2D = """index n = 8, c = 16, d = 32, i1 = 64, i2 = 64, k1 = 3, k2 = 3
pattern p1(i1, o1, k1) = conv(padding=1)
pattern p2(i2, o2, k2) = conv(padding=1)
input x[n, c, i1, i2]
input w[d, c, k1, k2]
input b[d]
input grad_y[n, d, o1, o2]
y[n, d, o1, o2] = x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[d, c, k1, k2] + b[d]
gx = vjp(y, x, cotangent=grad_y)
gw = vjp(y, w, cotangent=grad_y)
gb = vjp(y, b, cotangent=grad_y)
tx = jvp(y, x)
gw_sampled = sample(vjp(y, w, cotangent=grad_y), index=o1, p=1.0)
gw_batch = sample(vjp(y, w, cotangent=grad_y), index=n, p=1.0)
"""
STRIDED = """index n = 8, c = 8, d = 16, i1 = 96, i2 = 96, k1 = 5, k2 = 5
pattern p1(i1, o1, k1) = conv(stride=2, padding=2)
pattern p2(i2, o2, k2) = conv(stride=2, padding=(1, 3))
input x[n, c, i1, i2]
input w[d, c, k1, k2]
y[n, d, o1, o2] = x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[d, c, k1, k2]
gx = vjp(y, x)
gw = vjp(y, w)
"""
AUDIO_BATCH = """index n = 4, c = 1, d = 8, i = 44100, k = 9
pattern p(i, o, k) = conv(padding=4)
input x[n, c, i]
input w[d, c, k]
y[n, d, o] = x[n, c, i] * p(i, o, k) * w[d, c, k]
gw = vjp(y, w)
"""
UNFOLD = """index n = 8, c = 3, i1 = 64, i2 = 64, k1 = 3, k2 = 3
pattern p1(i1, o1, k1) = conv(padding=1)
pattern p2(i2, o2, k2) = conv(padding=1)
input x[n, c, i1, i2]
u[n, (c k1 k2), (o1 o2)] = x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2)
"""
KFAC = """index n = 16, c = 64, d = 64, i1 = 32, i2 = 32, k1 = 3, k2 = 3
pattern p1(i1, o1, k1) = conv(padding=1)
pattern p2(i2, o2, k2) = conv(padding=1)
input x[n, c, i1, i2]
input w[d, c, k1, k2]
y[n, d, o1, o2] = x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[d, c, k1, k2]
A = kfac(y, w, batch=n)
Ar = kfac(y, w, batch=n, approx=reduce)
B = kfac_grad(y, w, batch=n)
"""
KFAC_GRAD = """index n = 64, c = 4, d = 512, i1 = 8, i2 = 8, k1 = 3, k2 = 3
pattern p1(i1, o1, k1) = conv(padding=1)
pattern p2(i2, o2, k2) = conv(padding=1)
input x[n, c, i1, i2]
input w[d, c, k1, k2]
y[n, d, o1, o2] = x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[d, c, k1, k2]
Br = kfac_grad(y, w, batch=n, approx=reduce)
"""
# The GGN diagonal (BackPACK's DiagGGNExact: one weight VJP per column v of the loss Hessian's square root) and the
# Gram matrix of per-sample gradients: J is a shared sub-network, computed once and read twice.
CURVATURE = """index v = 10, n = 16, m = n, c = 16, d = 16, i1 = 32, i2 = 32, k1 = 3, k2 = 3
pattern p1(i1, o1, k1) = conv(padding=1)
pattern p2(i2, o2, k2) = conv(padding=1)
input x[n, c, i1, i2]
input s[v, n, d, o1, o2]
J[v, n, d, c, k1, k2] = s[v, n, d, o1, o2] * x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2)
diag[d, c, k1, k2] = J[v, n, d, c, k1, k2] * J[v, n, d, c, k1, k2]
G[n, m] = J[v, n, d, c, k1, k2] * J[v, m, d, c, k1, k2]
"""
DENSE = """index a = 512, b = 1024, c = 768, e = 512
input p[a, b]
input q[b, c]
input r[c, e]
z[a, e] = p[a, b] * q[b, c] * r[c, e]
s[a, c] = p[a, b] * q[b, c] * 2
t[e, a] = r[c, e] * q[b, c] * p[a, b]
"""
CONV3D = """index n = 2, c = 4, d = 8, i1 = 24, i2 = 24, i3 = 24, k1 = 3, k2 = 3, k3 = 3
pattern p1(i1, o1, k1) = conv(padding=1)
pattern p2(i2, o2, k2) = conv(padding=1)
pattern p3(i3, o3, k3) = conv(padding=1)
input x[n, c, i1, i2, i3]
input w[d, c, k1, k2, k3]
y[n, d, o1, o2, o3] = x[n, c, i1, i2, i3] * p1(i1, o1, k1) * p2(i2, o2, k2) * p3(i3, o3, k3) * w[d, c, k1, k2, k3]
"""
GROUPED = """index n = 8, g = 4, c = 8, d = 8, i1 = 48, i2 = 48, k1 = 3, k2 = 3
pattern p1(i1, o1, k1) = conv(padding=1)
pattern p2(i2, o2, k2) = conv(padding=1)
input x[n, (g c), i1, i2]
input w[(g d), c, k1, k2]
y[n, (g d), o1, o2] = x[n, (g c), i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[(g d), c, k1, k2]
A = kfac(y, w, batch=n)
gx = vjp(y, x)
top = slice(y, o1=0:24)
"""
# Not a kernel: a convolution whose output channels are summed with a second weight (window views and GEMMs).
LOCAL = """index n = 8, c = 8, d = 8, i1 = 48, i2 = 48, k1 = 3, k2 = 3
pattern p1(i1, o1, k1) = conv(padding=1)
pattern p2(i2, o2, k2) = conv(padding=1)
input x[n, c, i1, i2]
input w[d, c, k1, k2, o2]
y[n, d, o1, o2] = x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[d, c, k1, k2, o2]
"""
FILES = {
    "conv2d": CONV2D,
    "strided": STRIDED,
    "audio": AUDIO_BATCH,
    "unfold": UNFOLD,
    "kfac": KFAC,
    "kfac_grad": KFAC_GRAD,
    "curvature": CURVATURE,
    "dense": DENSE,
    "conv3d": CONV3D,
    "grouped": GROUPED,
    "local": LOCAL,
}
SWEEP = [(file, name) for file, text in FILES.items() for name in (d.name for d in build_program(text).diagrams)]


def estimated(compilation: Compilation, name: str) -> int:
    """The guard's estimate for diagram `name`, read off its scheduled ops."""
    names = [diagram.name for diagram in compilation.program.diagrams]
    function = compilation.functions[names.index(name)]
    return estimate_bytes(function, compilation.optimised(compilation.program.diagram(name)))


def peak_bytes(function: Callable[..., object], *args: torch.Tensor) -> int:
    """The most bytes that PyTorch's CPU allocator holds at once during the call, beyond what it held before."""
    return peak_memory(lambda: function(*args), "cpu").peak


@cache
def _compiled(file: str) -> tuple[Compilation, CodeType]:
    text = FILES[file]
    compilation = Compilation(build_program(text, f"{file}.tnd"), text, True, parse_size("1 TiB"))
    return compilation, compile(compilation.text, f"<tnc:{file}>", "exec")


def _fresh_function(file: str, name: str) -> Callable[..., object]:
    namespace: dict[str, object] = {}
    exec(_compiled(file)[1], namespace)  # the compiler's own output
    function = namespace[name]
    assert callable(function)
    return function


def _arguments(file: str, name: str) -> list[torch.Tensor]:
    diagram = _compiled(file)[0].program.diagram(name)
    generator = torch.Generator().manual_seed(0)
    shapes = [
        [int(torch.Size([int(diagram.sizes[leg]) for leg in axis]).numel()) for axis in a.layout.axes]
        for a in diagram.arguments
    ]
    return [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in shapes]


@cache
def _measured(file: str, name: str) -> tuple[int, int]:
    """(estimate, measured peak) in bytes."""
    compilation, _ = _compiled(file)
    estimate = estimated(compilation, name)
    args = _arguments(file, name)
    _fresh_function(file, name)(*args)  # PyTorch's one-time set-up of these ops
    return estimate, peak_bytes(_fresh_function(file, name), *args)


def test_the_sweep_is_large_enough() -> None:
    assert 15 <= len(SWEEP) <= 40, SWEEP
    assert BYTES_PER_ENTRY == 8


@pytest.mark.parametrize(("file", "name"), SWEEP, ids=[f"{file}.{name}" for file, name in SWEEP])
def test_the_estimate_is_within_a_factor_of_3_of_the_measured_peak(file: str, name: str) -> None:
    estimate, measured = _measured(file, name)
    if measured < MIB:  # a bias gradient, one sum((0, 2, 3)) into its result: the estimate must say it is small too
        assert estimate < MIB, f"{file}.{name} allocates {measured} B, estimated {estimate / MIB:.2f} MiB"
        return
    assert measured / FACTOR <= estimate <= FACTOR * measured, (
        f"{file}.{name}: estimate {estimate / MIB:.2f} MiB, measured {measured / MIB:.2f} MiB"
    )


def test_the_sweep_ratios() -> None:
    """The ratios estimate / measured over the sweep, printed with -s (captured otherwise: a quiet run stays quiet)."""
    ratios = {f"{file}.{name}": _measured(file, name) for file, name in SWEEP}
    print()
    for label, (estimate, measured) in ratios.items():
        print(f"  {label:22s} estimate {estimate / MIB:9.2f} MiB  measured {measured / MIB:9.2f} MiB  "
              f"ratio {estimate / measured:5.2f}")  # fmt: skip
    values = [estimate / measured for estimate, measured in ratios.values()]
    print(f"  {len(values)} functions: ratio min {min(values):.2f}, median {statistics.median(values):.2f}, "
          f"max {max(values):.2f}")  # fmt: skip
    assert all(1 / FACTOR <= value <= FACTOR for value in values)


# -- the reproducers ------------------------------------------------------------------------------------------------
def test_a_conv1d_over_a_second_of_audio_is_one_kernel_and_compiles_at_the_default_limit() -> None:
    program = build_program(AUDIO, "audio.tnd")
    compilation = Compilation(program, AUDIO, True, None)
    needed = estimated(compilation, "y")
    # the output, 44100 entries, and the kernel's unfolded input, 9 x 44100: no (44100, 44100, 9) pattern
    assert needed == (44100 + 9 * 44100) * BYTES_PER_ENTRY < default_limit()
    assert "torch.nn.functional.conv1d(x, w, padding=4)" in compilation.text
    assert "def y(" in tncompiler.compile_source(AUDIO, "audio.tnd")


def test_an_unfold_that_copies_its_windows_is_refused_at_16_gib() -> None:
    program = build_program(UNFOLD_2048, "unfold.tnd")
    needed = estimated(Compilation(program, UNFOLD_2048, True, NO_LIMIT), "u")
    assert needed == 64 * 64 * 1985**2 * BYTES_PER_ENTRY  # the windows, copied by the reshape into (c k1 k2)
    with pytest.raises(TncError) as caught:
        tncompiler.compile_source(UNFOLD_2048, "unfold.tnd", max_memory=parse_size("16 GiB"))
    lines = str(caught.value).split("\n")
    assert lines[0].startswith("unfold.tnd:5:1: error: diagram 'u' needs about 120.2 GiB"), lines[0]
    assert "over the limit of 16.0 GiB" in lines[0]
    assert lines[1].startswith("    u[n, (c k1 k2), (o1 o2)] =") and lines[2].startswith("    ^")
    assert caught.value.hint is not None and "--max-memory" in caught.value.hint


def test_an_unfold_laid_out_one_axis_per_leg_is_a_view_and_needs_nothing() -> None:
    """[n, c, k1, k2, o1, o2] is a strided view of x: nothing is copied, at any size."""
    text = UNFOLD_2048.replace("u[n, (c k1 k2), (o1 o2)]", "u[n, c, k1, k2, o1, o2]")
    program = build_program(text, "unfold.tnd")
    assert estimated(Compilation(program, text, True, None), "u") == 0
    small = text.replace("2048", "256").replace("64", "16")
    module = tncompiler.load_source(small, "unfold.tnd")
    x = torch.randn(1, 1, 256, 256, dtype=torch.float64)
    assert peak_bytes(module.u, x) == 0
    assert module.u(x).untyped_storage().data_ptr() == x.untyped_storage().data_ptr()


def test_a_shared_sub_network_is_counted_once() -> None:
    compilation, _ = _compiled("curvature")
    diagram = compilation.optimised(compilation.program.diagram("diag"))
    assert diagram.shared, "the GGN diagonal reads J twice: computed once"
    estimate, measured = _measured("curvature", "diag")
    j, _ = _measured("curvature", "J")
    assert estimate <= 1.5 * j and measured / FACTOR <= estimate


def test_a_native_kernel_builds_no_pattern() -> None:
    compilation, _ = _compiled("conv2d")
    diagram = compilation.optimised(compilation.program.diagram("y"))
    assert diagram.terms[0].lowering.native is not None
    # the output, 8·32·64², and the kernel's unfolded input, 8·16·9·64²: no (64, 64, 3) pattern, no bias term
    assert estimated(compilation, "y") == (8 * 32 * 64**2 + 8 * 16 * 9 * 64**2) * BYTES_PER_ENTRY
