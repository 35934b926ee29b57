"""The `tnc` command line: compile, check and draw `.tnd` files."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NoReturn, TextIO

import sympy

import tncompiler
from tncompiler.api import build_program, read_source
from tncompiler.dot import diagram_dot
from tncompiler.driver import Compilation
from tncompiler.errors import TncError, escape_name, escape_text
from tncompiler.explain import explain
from tncompiler.guard import parse_size
from tncompiler.ir.network import Diagram
from tncompiler.output import output_path, write_files

__all__ = ["main"]


def _compilation(args: argparse.Namespace) -> Compilation:
    """The file, read and analysed once; every later stage runs when the command first needs it."""
    source = read_source(args.file)
    rewrite = not getattr(args, "no_rewrite", False)
    return Compilation(build_program(source, str(args.file)), source, rewrite, getattr(args, "max_memory", None))


def _dot_files(compilation: Compilation) -> dict[str, str]:
    """File name -> DOT text, one per diagram and rewrite stage."""
    files = {}
    for diagram in compilation.program.diagrams:
        for stage in compilation.stages[diagram.name]:
            files[f"{diagram.name}.{stage.name}.dot"] = diagram_dot(stage.diagram, stage.name)
    return files


def _compile(args: argparse.Namespace) -> int:
    compilation = _compilation(args)
    code = compilation.text
    dots = _dot_files(compilation) if args.dot else {}
    default = Path(args.file).with_suffix(".py")
    output = default if args.output is None else output_path(args.output, default.name)  # `-o DIR/`: DIR/NAME.py
    files: list[tuple[Path, str | bytes]] = [(output, code)]
    files += [(args.dot / name, text) for name, text in dots.items()]
    write_files(files, source=args.file)  # the module and every DOT file, or nothing
    in_dot = f" and {len(dots)} DOT files in {escape_name(args.dot)}" if dots else ""
    print(f"wrote {escape_name(output)}{in_dot}", file=sys.stderr)
    return 0


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _explain(args: argparse.Namespace) -> int:
    sys.stdout.write(explain(_compilation(args)))
    return 0


def _check(args: argparse.Namespace) -> int:
    compilation = _compilation(args)
    compilation.check()  # names and call-time sizes: all a function's signature needs, and no code
    compilation.guard()  # a diagram too large to run is refused here too
    for diagram in compilation.program.diagrams:
        name = compilation.names.functions[diagram.name]
        print(_signature(diagram, name, compilation.bindings[diagram.name].keywords))
    return 0


def _signature(diagram: Diagram, name: str, keywords: tuple[sympy.Symbol, ...]) -> str:
    def shape(axes: tuple[tuple[str, ...], ...]) -> str:
        return (
            "[" + ", ".join(str(sympy.Mul(*[sympy.sympify(diagram.sizes[leg]) for leg in axis])) for axis in axes) + "]"
        )

    params = [a.name for a in diagram.arguments]
    params += ["*", *map(str, keywords)] if keywords else []
    lines = [f"{name}({', '.join(params)}) -> {diagram.layout.text()} = {shape(diagram.layout.axes)}"]
    lines += [f"    {a.name}: {a.layout.text()} = {shape(a.layout.axes)}" for a in diagram.arguments]
    lines.append(f"    {len(diagram.terms)} term{'s' if len(diagram.terms) != 1 else ''}")
    return "\n".join(lines)


def _dot(args: argparse.Namespace) -> int:
    compilation = _compilation(args)
    compilation.check()  # a file tnc compile refuses is refused here too
    compilation.guard()
    program = compilation.program
    chosen = [d for d in program.diagrams if args.diagram in (None, d.name)]
    if not chosen:
        names = ", ".join(d.name for d in program.diagrams) or "none"
        raise TncError(f"no diagram named {args.diagram!r}; diagrams: {names}").located(str(args.file), "")
    texts = []
    for diagram in chosen:
        stages = {stage.name: stage.diagram for stage in compilation.stages[diagram.name]}
        if args.stage not in stages:
            raise TncError(f"unknown stage {args.stage!r}; stages: {', '.join(stages)}").located(str(args.file), "")
        texts.append(diagram_dot(stages[args.stage], args.stage))
    text = "".join(texts)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    output = _dot_output(args.output, f"{args.diagram or Path(args.file).stem}.{args.stage}.dot")
    if output.suffix.lower() in _PICTURES:
        write_files([(output, _render(text, output))], source=args.file)
    else:
        write_files([(output, text)], source=args.file)
    return 0


def _dot_output(given: str, name: str) -> Path:
    """`-o DIR/` writes DIR/NAME, checked as `tnc compile -o DIR/` is (the folder must exist); any other path is the
    file itself, so `-o pictures` naming a folder is refused as docs/errors.md shows rather than written into."""
    as_folder = given.endswith(os.sep) or bool(os.altsep and given.endswith(os.altsep))
    return output_path(given, name) if as_folder else Path(given)


_PICTURES = (".svg", ".png", ".pdf")
_GRAPHVIZ = "install Graphviz (apt-get install graphviz, brew install graphviz or conda install graphviz)"


def _render(text: str, output: Path) -> bytes:
    """The picture Graphviz's `dot` draws of DOT text, in the format of the output's suffix, in memory."""
    program = shutil.which("dot")
    instead = f"or write the DOT text with -o {output.with_suffix('.dot')}"
    if program is None:
        raise TncError(
            f"cannot draw {output}: Graphviz's `dot` program is not installed (not found on PATH)",
            hint=f"{_GRAPHVIZ}, {instead}",
        )
    try:
        command = [program, f"-T{output.suffix[1:].lower()}"]
        done = subprocess.run(command, input=text.encode(), capture_output=True, check=False)
    except OSError as error:
        message = f"cannot draw {output}: cannot run {program}: {error.strerror or error}"
        raise TncError(message, hint=f"{_GRAPHVIZ}, {instead}") from None
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip()[-500:] or f"exit status {done.returncode}"
        hint = f"check that Graphviz works (`dot -V`) and draws this format, {instead}"
        raise TncError(f"cannot draw {output}: Graphviz's `dot` failed: {said}", hint=hint)
    return done.stdout


def _cache_clear(args: argparse.Namespace) -> int:
    from tncompiler.model.cache import cache_dir, clear_cache  # the model package imports torch: only when asked

    removed, folder = clear_cache(), cache_dir()
    where = f" from {escape_name(folder)}" if folder is not None else " (the disk cache is off: TNC_CACHE_DIR=off)"
    print(f"removed {removed} cache entr{'y' if removed == 1 else 'ies'}{where}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tnc", description="Compile tensor-network diagrams (.tnd) to PyTorch.")
    parser.add_argument("--version", action=_VersionAction, help="print tnc's version and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    compile_ = commands.add_parser("compile", help="write the Python module of a .tnd file")
    compile_.add_argument("file", type=Path, metavar="FILE.tnd")
    compile_.add_argument(  # a string: Path() would drop the trailing `/` that marks a folder
        "-o", "--output", help="output module, or a folder to write FILE.py in (default: FILE.py beside FILE.tnd)"
    )
    compile_.add_argument("--dot", type=Path, metavar="DIR", help="also write one DOT file per diagram and stage")
    compile_.add_argument("--no-rewrite", action="store_true", help="compile the networks as written (no passes)")
    compile_.set_defaults(run=_compile)
    explain = commands.add_parser("explain", help="rewrites, contraction order, FLOPs, largest intermediate, lowering")
    explain.add_argument("file", type=Path, metavar="FILE.tnd")
    explain.add_argument("--no-rewrite", action="store_true", help="explain the networks as written")
    explain.set_defaults(run=_explain)
    check = commands.add_parser("check", help="parse and validate; print each diagram's signature and sizes")
    check.add_argument("file", type=Path, metavar="FILE.tnd")
    check.set_defaults(run=_check)
    dot = commands.add_parser("dot", help="print a diagram as DOT (or render .svg/.png/.pdf with Graphviz)")
    dot.add_argument("file", type=Path, metavar="FILE.tnd")
    dot.add_argument("diagram", nargs="?", help="one diagram (default: all)")
    dot.add_argument("--stage", default="built", help="rewrite stage to draw (default: built)")
    dot.add_argument(  # a string: Path() would drop the trailing `/` that marks a folder
        "-o",
        "--output",
        help="write here instead of printing; .svg/.png/.pdf renders; DIR/ writes DIR/DIAGRAM.STAGE.dot, "
        "or DIR/FILE.STAGE.dot for all diagrams",
    )
    dot.set_defaults(run=_dot)
    cache = commands.add_parser("cache", help="manage the disk cache of compiled layers ($TNC_CACHE_DIR)")
    cache_commands = cache.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    cache_commands.add_parser("clear", help="delete every compiled layer in the cache").set_defaults(run=_cache_clear)
    for command in (compile_, explain, check, dot):  # each runs the memory guard
        command.add_argument(
            "--max-memory",
            type=_size,
            metavar="SIZE",
            default=None,
            help="refuse diagrams that need more (e.g. 4GiB; default: half of this machine's memory)",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `tnc`; errors in the input are reported as FILE:LINE:COL with exit status 1.

    A reader that stops early (`tnc check FILE | head -1`) ends tnc quietly with status 141, 128 + SIGPIPE, the
    status a shell reports for grep or cat that SIGPIPE ended; nothing is printed about it.
    """
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()  # a closed pipe shows here, where it is handled, rather than at exit (status 120)
    except BrokenPipeError:
        return _reader_gone()


def _run(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    try:
        with _termination_unwinds():
            status: int = args.run(args)
        return status
    except BrokenPipeError:  # stdout or stderr closed: not an error to report (there is no one to report it to)
        raise
    except TncError as error:  # one not about a line of the file (an output, Graphviz) is reported at the file
        print(error.located(_subject(args), ""), file=sys.stderr)
        return 1
    except OSError as error:
        print(f"tnc: error: {escape_text(str(error))}", file=sys.stderr)
        return 1
    except RecursionError:
        print("tnc: error: the input is nested too deeply", file=sys.stderr)
        return 1
    except Exception as error:  # a bug in tnc, not in the file: say so briefly (TNC_DEBUG=1 shows the traceback)
        if os.environ.get("TNC_DEBUG"):
            raise
        print(
            f"tnc: internal error: {type(error).__name__}: {escape_text(str(error))}\n"
            f"this is a bug in tnc, not in {escape_name(getattr(args, 'file', 'the input'))}; please report it with "
            "that file (set TNC_DEBUG=1 to see where it happened)",
            file=sys.stderr,
        )
        return 1


def _subject(args: argparse.Namespace) -> str:
    """What an error is reported at: the input file, or `tnc` for a command that reads none (`tnc cache clear`)."""
    file = getattr(args, "file", None)
    return "tnc" if file is None else str(file)


def _reader_gone() -> int:
    """The status for a closed stdout or stderr, after pointing the closed one at /dev/null: what it still buffers
    would fail again when Python flushes it at exit, printing `Exception ignored` and exiting with status 120."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a stream closed, or without a descriptor: no flush at exit
            _silence_if_closed(stream)
    return 128 + int(getattr(signal, "SIGPIPE", 13))  # SIGPIPE is 13 where it exists; Windows has none


def _silence_if_closed(stream: TextIO) -> None:
    try:
        stream.flush()  # the only way to tell the closed stream: the other flushes fine
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, stream.fileno())
        finally:
            os.close(devnull)


def _version() -> str:
    """The installed distribution's version; the package's own where tnc runs from a source tree not installed."""
    from importlib.metadata import PackageNotFoundError, version  # only for --version: it scans sys.path

    try:
        return version("tncompiler")
    except PackageNotFoundError:
        return tncompiler.__version__


class _VersionAction(argparse.Action):
    """`--version`: prints `tnc VERSION` on stdout and exits 0; the version is looked up only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[object] | None,
        option_string: str | None = None,
    ) -> None:
        print(f"tnc {_version()}")
        parser.exit()


@contextlib.contextmanager
def _termination_unwinds() -> Iterator[None]:
    """While a command runs, SIGTERM and SIGHUP raise SystemExit(128 + signal) instead of killing tnc on the spot.

    The default action ends the process without running a `finally` or `except` block, which would leave the output
    writer's temporary files behind. A signal someone set to be ignored (`nohup`) or handled stays as it is, and so
    does every signal outside the main thread, where Python allows no handler.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    names = ("SIGTERM", "SIGHUP")
    numbers = [getattr(signal, name) for name in names if hasattr(signal, name)]
    ours = [number for number in numbers if signal.getsignal(number) is signal.SIG_DFL]
    for number in ours:
        signal.signal(number, _exit_on_signal)
    try:
        yield
    finally:
        for number in ours:
            signal.signal(number, signal.SIG_DFL)


def _exit_on_signal(number: int, frame: types.FrameType | None) -> NoReturn:
    raise SystemExit(128 + number)  # the status a shell reports for a process the signal ended


if __name__ == "__main__":
    sys.exit(main())
