"""The one aliasing rule (tncompiler/schedule/aliasing.py): a value is written in place only when the function made
it and nothing that may share its storage is read later; the peephole rules never merge a value written in place."""

from __future__ import annotations

import pytest
import torch

from tncompiler.api import compile_source, load_source
from tncompiler.schedule.aliasing import AliasingError, settle, written
from tncompiler.schedule.ops import Assign, BinOp, Branch, Effect, Function, Lit, Name, Op, Return, call, method


def _function(*body: Op, params: tuple[str, ...] = ("x",)) -> Function:
    return Function("f", params, (), "", tuple(body), {})


def _made(name: str) -> Assign:
    return Assign(name, call("torch.tensordot", Name("x"), Name("x"), dims=Lit(0)), "contract", fresh=True)


def _scale(name: str) -> Effect:
    return Effect(method(Name(name), "mul_", Lit(3)), "scale")


def test_a_value_the_function_made_and_nobody_else_holds_is_scaled_in_place() -> None:
    body = (_made("t"), _scale("t"), Return(Name("t")))
    assert settle(_function(*body)).body == body


def test_a_view_read_after_the_write_keeps_the_old_contents() -> None:
    view = Assign("v", method(Name("t"), "reshape", Lit(-1)), "view")
    body = (_made("t"), view, _scale("t"), Return(BinOp("+", Name("t"), Name("v"))))
    settled = settle(_function(*body)).body
    assert settled[2] == Assign("t", method(Name("t"), "mul", Lit(3)), "scale", "", True)


def test_an_alias_written_in_place_is_written_out_of_place() -> None:
    body = (_made("t"), Assign("u", Name("t"), "view"), _scale("u"), Return(BinOp("+", Name("t"), Name("u"))))
    assert settle(_function(*body)).body[2] == Assign("u", method(Name("u"), "mul", Lit(3)), "scale", "", True)


def test_an_argument_is_never_written_in_place() -> None:
    body = (Assign("t", Name("x"), "view"), _scale("t"), Return(Name("t")))
    assert isinstance(settle(_function(*body)).body[1], Assign)
    square = Assign("s", method(method(Name("x"), "square_"), "sum"), "contract", fresh=True)
    settled = settle(_function(square, Return(Name("s")))).body
    assert settled[0].value == method(method(Name("x"), "square"), "sum")  # type: ignore[union-attr]


def test_a_value_made_on_one_arm_only_is_not_written_in_place() -> None:
    arms = ((Name("flag"), (_made("t"),)), (None, (Assign("t", Name("x"), "view"),)))
    body = (Branch(arms, "contract"), _scale("t"), Return(Name("t")))
    assert isinstance(settle(_function(*body, params=("x", "flag"))).body[1], Assign)
    arms = ((Name("flag"), (_made("t"),)), (None, (_made("t"),)))
    body = (Branch(arms, "contract"), _scale("t"), Return(Name("t")))
    assert isinstance(settle(_function(*body, params=("x", "flag"))).body[1], Effect)


def test_an_in_place_write_without_an_out_of_place_form_is_a_compiler_error() -> None:
    fill = Effect(method(Name("x"), "masked_fill_", Name("mask"), Lit(0)), "view")
    with pytest.raises(AliasingError, match="masked_fill_"):
        settle(_function(fill, Return(Name("x")), params=("x", "mask")))


def test_written_finds_writes_inside_branches_and_expressions() -> None:
    inner = Assign("s", method(method(Name("t"), "square_"), "sum"), "contract", fresh=True)
    assert written((Branch(((None, (inner, _scale("u"))),), "contract"),)) == {"t", "u"}


def test_equal_terms_with_coefficients_are_not_merged_through_an_in_place_scale() -> None:
    """The peephole rule 'equal values once' made term 2 an alias of term 1 after term 1 was scaled in place."""
    code = compile_source("index f = 4\ninput x[f]\ny[] = x[f] * x[f] * 3\ngx = vjp(y, x)\n")
    gx = code[code.index("def gx") :]
    assert "term1 + term1" not in gx
    x = torch.arange(1.0, 5.0, dtype=torch.float64)
    module = load_source("index f = 4\ninput x[f]\ny[] = x[f] * x[f] * 3\ngx = vjp(y, x)\n")
    torch.testing.assert_close(module.gx(x, torch.tensor(1.0, dtype=torch.float64)), 6 * x)
