"""Module-level definitions other than a diagram's function: the autograd classes and the plan choosers are ops the
one printer prints. Their lines fit the printer's width, and an autograd class saves only what its backward reads."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

import tncompiler
from tests.backend.test_golden import long_code_lines
from tncompiler.backend.printer import WIDTH, definition_text
from tncompiler.schedule.ops import Assign, ClassDef, Function, Lit, Name, Return, Tuple, call

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# Long names everywhere: the class's signature, its unpacked inputs and its VJP calls are all wider than a line.
LONG = """index batch_of_images, channels_in = 2, channels_out = 3
index input_position, output_position, kernel_position = 3
pattern pattern_of_conv(input_position, output_position, kernel_position) = conv(stride=2)
input the_input_images[batch_of_images, channels_in, output_position]
input the_weights_of_layer[channels_in, channels_out, kernel_position]
the_output_of_the_layer[batch_of_images, channels_out, input_position] = the_input_images[batch_of_images, \
channels_in, output_position] * pattern_of_conv(input_position, output_position, kernel_position) * \
the_weights_of_layer[channels_in, channels_out, kernel_position]
the_sampled_weight_gradient = sample(vjp(the_output_of_the_layer, the_weights_of_layer), index=output_position, p=1)
the_sampled_input_gradient = sample(vjp(the_output_of_the_layer, the_input_images), index=channels_out, p=1)
"""

# A chain of four matrices: its order depends on the sizes, so its module holds a chooser with long cost formulas.
CHAIN = """index first_rows, second_inner, third_inner, fourth_inner, fifth_columns
input p[first_rows, second_inner]
input q[second_inner, third_inner]
input r[third_inner, fourth_inner]
input s[fourth_inner, fifth_columns]
y[first_rows, fifth_columns] = p[first_rows, second_inner] * q[second_inner, third_inner] * \
r[third_inner, fourth_inner] * s[fourth_inner, fifth_columns]
"""


def _block(text: str, head: str) -> list[str]:
    """The lines of the module-level definition starting with `head`, up to the next one."""
    lines = text.splitlines()
    start = next(k for k, line in enumerate(lines) if line.startswith(head))
    later = range(start + 1, len(lines))
    end = next((k for k in later if lines[k][:1] not in ("", " ", ")") and not lines[k - 1]), len(lines))
    return [line for line in lines[start:end] if line]


def test_the_autograd_class_saves_only_the_tensors_its_backward_reads() -> None:
    source = (EXAMPLES / "conv2d_sampled.tnd").read_text()
    text = tncompiler.compile_source(source)
    assert "        ctx.save_for_backward(x, w)\n" in text  # not b: no VJP reads it
    module = tncompiler.load_source(source)
    x = torch.randn(2, 3, 10, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    out = module.y_sampled_autograd.apply(x, w, b, p=1.0)
    assert [t.shape for t in out.grad_fn.saved_tensors] == [x.shape, w.shape]
    out.sum().backward()
    reference = [t.detach().requires_grad_() for t in (x, w, b)]
    module.y(*reference).sum().backward()
    for got, want in zip((x, w, b), reference, strict=True):
        torch.testing.assert_close(got.grad, want.grad)


def test_autograd_lines_fit_the_width_and_its_gradients_are_exact_at_p_1() -> None:
    text = tncompiler.compile_source(LONG)
    lines = _block(text, "class ")
    assert max(len(line) for line in lines) <= WIDTH
    assert not long_code_lines(text, WIDTH)  # the functions too: a long chain's first call, a conditional's branch
    assert "    def forward(\n" in text and "        (\n            the_input_images,\n" in text  # broken, not cut
    module = tncompiler.load_source(LONG)
    x = torch.randn(2, 2, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    module.the_output_of_the_layer_sampled_autograd.apply(x, w, None, 11).sum().backward()
    reference_x, reference_w = x.detach().requires_grad_(), w.detach().requires_grad_()
    F.conv_transpose1d(reference_x, reference_w, stride=2).sum().backward()
    torch.testing.assert_close(x.grad, reference_x.grad)
    torch.testing.assert_close(w.grad, reference_w.grad)


def test_a_chooser_breaks_its_costs_within_the_width_and_still_picks_a_right_order() -> None:
    text = tncompiler.compile_source(CHAIN)
    lines = _block(text, "@functools.lru_cache(maxsize=None)")
    assert lines[1].startswith("def _y_plan1(") and lines[-1] == "    return costs.index(min(costs))"
    assert len(lines) > 6 and max(len(line) for line in lines) <= WIDTH
    module = tncompiler.load_source(CHAIN)
    for sizes in [(2, 50, 3, 40, 5), (60, 2, 70, 3, 80)]:
        tensors = [torch.randn(m, n, dtype=torch.float64) for m, n in zip(sizes, sizes[1:], strict=False)]
        torch.testing.assert_close(module.y(*tensors), tensors[0] @ tensors[1] @ tensors[2] @ tensors[3])


def test_the_printer_prints_decorators_positional_defaults_and_methods() -> None:
    method = Function(
        "forward", ("x", "generator", "p"), (), "", (Return(Name("x")),), {}, decorators=("staticmethod",),
        defaults=(Lit(None), Lit(0.5)),
    )  # fmt: skip
    unpack = Assign("x, ctx.generator, ctx.p", Name("inputs"), "bind")
    setup = Function("setup_context", ("ctx", "inputs", "output"), (), "", (unpack,), {}, decorators=("staticmethod",))
    cls = ClassDef("f_autograd", ("torch.autograd.Function",), "Doc.", (method, setup))
    assert definition_text(cls) == "\n".join(
        [
            "class f_autograd(torch.autograd.Function):",
            '    """Doc."""',
            "",
            "    @staticmethod",
            "    def forward(x, generator=None, p=0.5):",
            "        return x",
            "",
            "    @staticmethod",
            "    def setup_context(ctx, inputs, output):",
            "        x, ctx.generator, ctx.p = inputs",
        ]
    )
    many = ", ".join(f"argument_{k}" for k in range(12))
    lines = definition_text(Function("f", (), (), "", (Assign(many, Name("inputs"), "bind"),), {})).splitlines()
    assert lines[1:3] == ["    (", "        argument_0,"] and lines[-1] == "    ) = inputs"
    long = Return(Tuple(tuple(call(f"function_{k}", Name("x")) for k in range(10))))
    lines = definition_text(Function("g", ("x",), (), "", (long,), {})).splitlines()
    assert lines[1] == "    return (" and max(len(line) for line in lines) <= WIDTH
