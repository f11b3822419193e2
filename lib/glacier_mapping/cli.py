"""Command line: ``glacier-mapping`` run, build-book, import-weights, deploy(-many), change."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from glacier_mapping.lazy import lazy_module

# TensorFlow's C++ start-up logs would otherwise flood the terminal.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Each command loads only what it runs (deploy, deploy-many and change load TensorFlow).
book = lazy_module("glacier_mapping.book")
change = lazy_module("glacier_mapping.change_command")
deploy = lazy_module("glacier_mapping.deploy")
deploy_many = lazy_module("glacier_mapping.deploy_many")
pipeline = lazy_module("glacier_mapping.pipeline")
weights = lazy_module("glacier_mapping.models.weights")

#: Exit codes of every command.
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_CODES = f"""exit codes:
  {EXIT_OK}    success
  {EXIT_FAILED}    the work ran and failed: a notebook raised (run), jupyter-book failed
       (build-book), a scene failed (deploy-many); the details follow FAILED on stderr
  {EXIT_BAD_INPUT}    bad input, nothing done: an unknown or invalid option, profile, file or
       benchmark; one line on stderr names it and the fix
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)"""


class _Parser(argparse.ArgumentParser):
    """An argument parser that reports a bad option in one line (``--help`` shows the usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}; see {self.prog} --help.\n")


def _failed(failure: Exception) -> int:
    """Report work that ran and failed (the message may span lines)."""
    print(f"\nFAILED: {failure}", file=sys.stderr)
    return EXIT_FAILED


def _bad_input(args: argparse.Namespace, error: Exception) -> int:
    """Report bad input in one line, as argparse does."""
    print(f"glacier-mapping {args.command}: error: {error}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _run(args: argparse.Namespace) -> int:
    try:
        pipeline.run_pipeline(
            args.profile, notebook_dir=args.notebooks, output_root=args.output_dir,
            data_dir=args.data_dir, only=args.only, seed=args.seed,
        )
    except pipeline.NotebookFailed as failure:
        return _failed(failure)
    return EXIT_OK


def _build_book(args: argparse.Namespace) -> int:
    try:
        book.build_book(args.repo, args.output_dir, args.profile)
    except book.BookRenderError as failure:
        return _failed(failure)
    except book.BookBuildError as error:
        return _bad_input(args, error)
    return EXIT_OK


def _import_weights(args: argparse.Namespace) -> int:
    model_path = weights.export_imported_model(args.weights, args.out)
    print(f"Imported {args.weights} -> {model_path} (model card beside it)")
    return EXIT_OK


def _deploy(args: argparse.Namespace) -> int:
    return deploy.deploy_from_args(args)


def _deploy_many(args: argparse.Namespace) -> int:
    return deploy_many.deploy_many_from_args(args)


def _change(args: argparse.Namespace) -> int:
    return change.change_from_args(args)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of the ``glacier-mapping`` command.

    Args:
        command: The sub-command about to run: the options of deploy, deploy-many and change
            (which load TensorFlow) are added only for them; None adds every command's options.
    """
    parser = _Parser(
        prog="glacier-mapping", description="Glacier mapping with GlaViTU: book runner and tools.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help_text, epilog=EXIT_CODES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)

    run = add("run", "execute the notebooks under a profile (Papermill)")
    run.add_argument("--profile", default="quick", help="smoke, quick, paper or a YAML file")
    run.add_argument("--only", nargs="+", metavar="NN", help="notebook numbers or names to run")
    run.add_argument("--data-dir", type=Path, help="benchmark directory (real or synthetic)")
    run.add_argument("--output-dir", type=Path, default=Path("outputs"), help="outputs root")
    run.add_argument("--notebooks", type=Path, default=Path("notebooks"), help=argparse.SUPPRESS)
    run.add_argument("--seed", type=int, help="override the profile's seed")
    run.set_defaults(handler=_run)

    render = add("build-book", "render the executed notebooks with Jupyter Book")
    render.add_argument("--profile", default="quick")
    render.add_argument("--output-dir", type=Path, default=Path("outputs"))
    render.add_argument("--repo", type=Path, default=Path("."), help=argparse.SUPPRESS)
    render.set_defaults(handler=_build_book)

    imported = add("import-weights", "import an original GlaViTU weights file (Keras 2 HDF5)")
    imported.add_argument("weights", type=Path, help="<MODEL>_<STRATEGY>[...]_weights.h5")
    imported.add_argument("--out", type=Path, required=True, help="output directory")
    imported.set_defaults(handler=_import_weights)

    single = add("deploy", "map glaciers in your own GeoTIFF scene with a trained model")
    if command in (None, "deploy"):
        deploy.add_deploy_arguments(single)
    single.set_defaults(handler=_deploy)

    many = add("deploy-many", "deploy every scene of a CSV manifest on Dask (local or a cluster)")
    if command in (None, "deploy-many"):
        deploy_many.add_deploy_many_arguments(many)
    many.set_defaults(handler=_deploy_many)

    compared = add("change", "glacier change between two `deploy --inventory` outputs of one area")
    if command in (None, "change"):
        change.add_change_arguments(compared)
    compared.set_defaults(handler=_change)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code (see :data:`EXIT_CODES`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv[0] if argv else "").parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print(f"glacier-mapping {args.command}: interrupted (Ctrl-C).", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, OSError) as error:
        return _bad_input(args, error)


if __name__ == "__main__":
    sys.exit(main())
