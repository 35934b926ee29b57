"""Code for terms lowered to PyTorch's convolution kernels (F.conv*d, F.conv_transpose*d, conv*d_weight)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from tncompiler.ir.network import Network
from tncompiler.ir.values import ConvPattern, Size
from tncompiler.passes.lower import NativeConv

__all__ = ["native_lines", "pad_arguments", "right_pad"]


def _permute(expr: str, legs: tuple[str, ...], order: tuple[str, ...]) -> str:
    if legs == order:
        return expr
    return f"{expr}.permute({', '.join(str(legs.index(leg)) for leg in order)})"


def _product(legs: tuple[str, ...], size: Callable[[str], str]) -> str:
    return " * ".join(size(leg) for leg in legs) or "1"


def pad_arguments(pairs: list[tuple[str, str]]) -> str:
    """F.pad's argument for (left, right) pairs of the spatial axes in order (F.pad starts at the last axis)."""
    return ", ".join(f"{left}, {right}" for left, right in reversed(pairs))


def right_pad(p: ConvPattern, size: Callable[[Size], str]) -> str:
    """The right padding that makes the kernel's output size exactly O (negative: a crop)."""
    if all(isinstance(v, int) for v in (p.out_size, p.in_size)):
        return str((p.out_size - 1) * p.stride + p.dilation * (p.kernel_size - 1) + 1 - p.in_size - p.pad_left)
    extent = f"({size(p.out_size)} - 1) * {p.stride} + {p.dilation * (p.kernel_size - 1) + 1}"
    return f"{extent} - {size(p.in_size)} - {p.pad_left}"


def native_lines(
    net: Network, m: NativeConv, a: str, b: str, target: tuple[str, ...], var: str, size: Callable[[Size], str]
) -> list[str]:
    """Lines that compute the term with one native call, ending with `var` laid out as `target`."""
    factors, d = net.factors, len(m.patterns)
    patterns = [factors[k] for k in m.patterns]
    params = [p.pattern for p in patterns]
    assert all(isinstance(p, ConvPattern) for p in params)
    conv: list[ConvPattern] = params  # type: ignore[assignment]

    def leg(name: str) -> str:
        return size(net.size(name))

    def spatial(position: int) -> tuple[str, ...]:
        return tuple(p.legs[position] for p in patterns)

    strides = _tuple(str(p.stride) for p in conv)
    dilations = _tuple(str(p.dilation) for p in conv)
    groups = _product(m.groups, leg)
    channels_a = _product(m.groups + m.data_channels, leg)
    lines = []
    if m.role in ("forward", "weight"):
        order_a = m.batch + m.groups + m.data_channels + spatial(0)
        shape_a = [_product(m.batch, leg), channels_a] + [leg(x) for x in spatial(0)]
        lines.append(f"{var}_in = {_permute(a, factors[m.data].legs, order_a)}.reshape({', '.join(shape_a)})")
        pads = [(str(p.pad_left), right_pad(p, size)) for p in conv]
        if any(pair != ("0", "0") for pair in pads):
            lines.append(f"{var}_in = torch.nn.functional.pad({var}_in, ({pad_arguments(pads)}))")
    if m.role == "forward":
        order_b = m.groups + m.other_channels + m.data_channels + spatial(2)
        shape_b = [_product(m.groups + m.other_channels, leg), _product(m.data_channels, leg)]
        shape_b += [leg(x) for x in spatial(2)]
        lines.append(f"{var}_w = {_permute(b, factors[m.other].legs, order_b)}.reshape({', '.join(shape_b)})")
        lines.append(
            f"{var} = torch.nn.functional.conv{d}d({var}_in, {var}_w, None, {strides}, 0, {dilations}, {groups})"
        )
        out_legs = m.batch + m.groups + m.other_channels + spatial(1)
    elif m.role == "transpose":
        order_a = m.batch + m.groups + m.data_channels + spatial(1)
        shape_a = [_product(m.batch, leg), channels_a] + [leg(x) for x in spatial(1)]
        lines.append(f"{var}_in = {_permute(a, factors[m.data].legs, order_a)}.reshape({', '.join(shape_a)})")
        order_b = m.groups + m.data_channels + m.other_channels + spatial(2)
        shape_b = [channels_a, _product(m.other_channels, leg)] + [leg(x) for x in spatial(2)]
        lines.append(f"{var}_w = {_permute(b, factors[m.other].legs, order_b)}.reshape({', '.join(shape_b)})")
        lines.append(
            f"{var} = torch.nn.functional.conv_transpose{d}d({var}_in, {var}_w, None, {strides}, 0, 0, "
            f"{groups}, {dilations})"
        )
        # The kernel writes positions o·S + k·D; ours are those minus P_left, cut (or zero-padded) to I.
        crops = [(str(-p.pad_left), _crop_right(p, size)) for p in conv]
        lines.append(f"{var} = torch.nn.functional.pad({var}, ({pad_arguments(crops)}))")
        out_legs = m.batch + m.groups + m.other_channels + spatial(0)
    else:
        order_b = m.batch + m.groups + m.other_channels + spatial(1)
        shape_b = [_product(m.batch, leg), _product(m.groups + m.other_channels, leg)] + [leg(x) for x in spatial(1)]
        lines.append(f"{var}_grad = {_permute(b, factors[m.other].legs, order_b)}.reshape({', '.join(shape_b)})")
        weight = [_product(m.groups + m.other_channels, leg), _product(m.data_channels, leg)]
        weight += [str(p.kernel_size) for p in conv]
        lines.append(
            f"{var} = torch.nn.grad.conv{d}d_weight({var}_in, ({', '.join(weight)},), {var}_grad, "
            f"{strides}, 0, {dilations}, {groups})"
        )
        out_legs = m.groups + m.other_channels + m.data_channels + spatial(2)
    lines.append(f"{var} = {_permute(f'{var}.reshape({_shape(out_legs, leg)})', out_legs, target)}")
    return lines


def _crop_right(p: ConvPattern, size: Callable[[Size], str]) -> str:
    """I + P_left − (the kernel's full output size): what to add (or, negative, cut) on the right."""
    full = (p.out_size - 1) * p.stride + p.dilation * (p.kernel_size - 1) + 1 if isinstance(p.out_size, int) else None
    if full is not None and isinstance(p.in_size, int):
        return str(p.in_size + p.pad_left - full)
    return (
        f"{size(p.in_size)} + {p.pad_left} - (({size(p.out_size)} - 1) * {p.stride} + "
        f"{p.dilation * (p.kernel_size - 1) + 1})"
    )


def _tuple(items: Iterable[str]) -> str:
    items = list(items)
    return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"


def _shape(legs: tuple[str, ...], leg: Callable[[str], str]) -> str:
    return ", ".join(leg(x) for x in legs) or "()"
