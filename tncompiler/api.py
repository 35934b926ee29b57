"""The library entry points: compile `.tnd` text to Python source, or straight to a module."""

from __future__ import annotations

import types
from pathlib import Path

from tncompiler.backend.pytorch import generate
from tncompiler.errors import TncError
from tncompiler.frontend.parse import parse
from tncompiler.frontend.resolve import resolve
from tncompiler.ir.network import Program

__all__ = ["build_program", "compile_source", "compile_file", "load", "load_source", "read_source"]


def read_source(path: str | Path) -> str:
    """Read a `.tnd` file as UTF-8 text, with a `TncError` for what is not one."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise TncError(f"cannot read {path}: {error.strerror or error}").located(str(path), "") from None
    if b"\x00" in data:
        raise TncError("this is a binary file, not a .tnd text file").located(str(path), "")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise TncError(f"not UTF-8 text (byte {error.start})").located(str(path), "") from None


def build_program(source: str, filename: str = "<string>") -> Program:
    """Parse and check `.tnd` text into the IR; every diagram is linted."""
    program = resolve(parse(source, filename), filename, source)
    for diagram in program.diagrams:
        diagram.lint()
    return program


def compile_source(source: str, filename: str = "<string>") -> str:
    """The generated Python module for `.tnd` text, as source."""
    program = build_program(source, filename)
    try:
        return generate(program)
    except TncError as error:
        raise error.located(filename, source) from None


def compile_file(path: str | Path) -> str:
    """The generated Python module for a `.tnd` file, as source."""
    return compile_source(read_source(path), str(path))


def load_source(source: str, filename: str = "<string>", module_name: str | None = None) -> types.ModuleType:
    """Compile `.tnd` text and import the result as a fresh module."""
    code = compile_source(source, filename)
    name = module_name or Path(filename).stem.replace("-", "_") or "tnc_module"
    module = types.ModuleType(name)
    module.__file__ = f"<tnc:{filename}>"
    exec(compile(code, module.__file__, "exec"), module.__dict__)  # the compiler's own output, never user text
    return module


def load(path: str | Path) -> types.ModuleType:
    """Compile a `.tnd` file and import the result: `tncompiler.load("conv2d.tnd").y(x, w, b)`."""
    return load_source(read_source(path), str(path))
