"""The library entry points: compile `.tnd` text to Python source, or straight to a module."""

from __future__ import annotations

import os
import stat
import types
from pathlib import Path

from tncompiler.derive.autograd import with_autograd
from tncompiler.derive.calls import derive_call
from tncompiler.dot import program_svg
from tncompiler.driver import Compilation
from tncompiler.errors import Span, TncError, escape_name
from tncompiler.frontend.parse import parse, require_definitions
from tncompiler.frontend.resolve import resolve
from tncompiler.generated import GeneratedModule, make_module
from tncompiler.generated import module_name as generated_name
from tncompiler.ir.network import Program
from tncompiler.output import file_kind

__all__ = [
    "build_program",
    "compile_source",
    "compile_program",
    "compile_file",
    "load",
    "load_source",
    "read_source",
    "MAX_SOURCE_BYTES",
]

# A .tnd file is a few kilobytes; anything past this is not one, and is refused before it is read whole.
MAX_SOURCE_BYTES = 10 * 2**20


def read_source(path: str | Path) -> str:
    """Read a `.tnd` file as UTF-8 text (a byte-order mark is dropped), with a `TncError` for what is not one.

    Only a regular file is read: a FIFO would block until something writes to it, a device may never end, and a
    folder has no text; each is refused before it is opened (and checked again once open, in case it changed).
    """
    path = Path(path)
    try:
        _require_regular(path, os.stat(path).st_mode)
        with os.fdopen(_open_without_blocking(path), "rb") as stream:
            info = os.fstat(stream.fileno())
            _require_regular(path, info.st_mode)
            if info.st_size > MAX_SOURCE_BYTES:
                raise _too_large(path, info.st_size)
            data = stream.read(MAX_SOURCE_BYTES + 1)  # never more, whatever the file claims to be
    except OSError as error:
        message = f"cannot read {escape_name(path)}: {error.strerror or error}"
        raise TncError(message).located(str(path), "") from None
    if len(data) > MAX_SOURCE_BYTES:
        raise _too_large(path, len(data))
    if b"\x00" in data:
        raise TncError(
            "this is a binary file, not a .tnd text file", hint="give the .tnd file, not a compiled or binary one"
        ).located(str(path), "")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise _not_utf8(path, data, error.start) from None


def _open_without_blocking(path: Path) -> int:
    """A descriptor for reading `path`; O_NONBLOCK, so that a FIFO put there since the check cannot hang the open.

    On a regular file the flag changes nothing: the kernel never makes a read of one wait.
    """
    return os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))


def _require_regular(path: Path, mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    hint = "give the path of a .tnd file"
    if not stat.S_ISDIR(mode):
        hint += "; to compile text from a pipe or a device, save it to a file first"
    message = f"cannot read {escape_name(path)}: it is {file_kind(mode)}, not a regular file"
    raise TncError(message, hint=hint).located(str(path), "")


def _not_utf8(path: Path, data: bytes, start: int) -> TncError:
    line_start = data.rfind(b"\n", 0, start) + 1
    where = Span(data.count(b"\n", 0, start) + 1, len(data[line_start:start].decode("utf-8", "replace")) + 1)
    return TncError(
        f"not UTF-8 text: byte 0x{data[start]:02X} is not part of a UTF-8 character",
        where,
        "save the file as UTF-8",
    ).located(str(path), data.decode("utf-8", "replace"))


def _too_large(path: str | Path, size: int) -> TncError:
    megabytes = MAX_SOURCE_BYTES // 2**20
    return TncError(
        f"file too large: {size / 2**20:.1f} MB, and the limit is {megabytes} MB",
        hint="a .tnd file is a short text file; is this the right file?",
    ).located(str(path), "")


def build_program(source: str, filename: str = "<string>") -> Program:
    """Parse and check `.tnd` text into the IR; every diagram is linted."""
    if len(source) > MAX_SOURCE_BYTES:
        raise _too_large(filename, len(source.encode("utf-8", "surrogatepass")))
    try:
        module = parse(source, filename)
        program = with_autograd(resolve(module, filename, source, derive_call), module)
        require_definitions(module)
    except TncError as error:
        raise error.located(filename, source) from None
    except RecursionError:
        raise _too_deep(filename, source) from None
    for diagram in program.diagrams:
        diagram.lint()
    return program


def _too_deep(filename: str, source: str) -> TncError:
    return TncError(
        "the file is nested too deeply to compile", hint="split deep expressions into several definitions"
    ).located(filename, source)


def compile_source(source: str, filename: str = "<string>", rewrite: bool = True, max_memory: int | None = None) -> str:
    """The generated Python module for `.tnd` text, as source; `rewrite=False` skips the rewrite passes;
    `max_memory` (bytes, default half the machine's memory) refuses diagrams that would need more."""
    return compile_program(build_program(source, filename), source, rewrite, max_memory)


def compile_program(program: Program, source: str, rewrite: bool = True, max_memory: int | None = None) -> str:
    """The generated module of a program already built from `source` (errors point into that source)."""
    return Compilation(program, source, rewrite, max_memory).text


def compile_file(path: str | Path, rewrite: bool = True) -> str:
    """The generated Python module for a `.tnd` file, as source."""
    return compile_source(read_source(path), str(path), rewrite)


class TncModule(GeneratedModule):
    """The module of a compiled `.tnd` file; a notebook shows it as its diagrams, drawn as built (`_repr_svg_`)."""

    __tnc_program__: Program

    def _repr_svg_(self) -> str:
        return program_svg(self.__tnc_program__.diagrams, self.__name__)


def load_source(
    source: str, filename: str = "<string>", module_name: str | None = None, rewrite: bool = True
) -> types.ModuleType:
    """Compile `.tnd` text and import the result as a module named `tnc_<stem>_<hash>` (the stem: `module_name`, else
    the file's name), registered in `sys.modules` so that torch.compile and pickle find it by that name."""
    program = build_program(source, filename)
    code = compile_program(program, source, rewrite)
    stem = module_name or Path(filename).stem
    name = generated_name(stem, code)  # equal code, equal name
    recipe = (load_source, (source, filename, module_name, rewrite))
    module = make_module(code, name, f"<tnc:{filename}>", recipe, TncModule)
    module.__tnc_program__ = program  # type: ignore[attr-defined]
    return module


def load(path: str | Path, rewrite: bool = True) -> types.ModuleType:
    """Compile a `.tnd` file and import the result: `tncompiler.load("conv2d.tnd").y(x, w, b)`."""
    return load_source(read_source(path), str(path), rewrite=rewrite)
