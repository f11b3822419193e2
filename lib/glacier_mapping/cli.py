"""Command line: ``glacier-mapping run | build-book | import-weights | deploy | deploy-many``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from glacier_mapping.lazy import lazy_module

# TensorFlow's C++ start-up logs would otherwise flood the terminal.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Each command loads only what it runs (the deploy commands load TensorFlow).
book = lazy_module("glacier_mapping.book")
deploy = lazy_module("glacier_mapping.deploy")
deploy_many = lazy_module("glacier_mapping.deploy_many")
pipeline = lazy_module("glacier_mapping.pipeline")
weights = lazy_module("glacier_mapping.models.weights")


def _reporting(failures: Callable[[], tuple[type[Exception], ...]], code: int = 1,
               prefix: str = "\n") -> Callable[[Callable[[argparse.Namespace], None]],
                                                Callable[[argparse.Namespace], int]]:
    """Turn a command into one that prints the expected failures and returns an exit code."""
    def wrap(command: Callable[[argparse.Namespace], None]) -> Callable[
            [argparse.Namespace], int]:
        def run(args: argparse.Namespace) -> int:
            try:
                command(args)
            except failures() as error:
                print(f"{prefix}FAILED: {error}", file=sys.stderr)
                return code
            return 0
        return run
    return wrap


@_reporting(lambda: (pipeline.NotebookFailed,))
def _run(args: argparse.Namespace) -> None:
    pipeline.run_pipeline(
        args.profile, notebook_dir=args.notebooks, output_root=args.output_dir,
        data_dir=args.data_dir, only=args.only, seed=args.seed,
    )


@_reporting(lambda: (book.BookBuildError,))
def _build_book(args: argparse.Namespace) -> None:
    book.build_book(args.repo, args.output_dir, args.profile)


@_reporting(lambda: (weights.WeightImportError, FileNotFoundError, OSError), code=2, prefix="")
def _import_weights(args: argparse.Namespace) -> None:
    model_path = weights.export_imported_model(args.weights, args.out)
    print(f"Imported {args.weights} -> {model_path} (model card beside it)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``glacier-mapping`` command."""
    parser = argparse.ArgumentParser(
        prog="glacier-mapping", description="Glacier mapping with GlaViTU: book runner and tools."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="execute the notebooks under a profile (Papermill)")
    run.add_argument("--profile", default="quick", help="smoke, quick, paper or a YAML file")
    run.add_argument("--only", nargs="+", metavar="NN", help="notebook numbers or names to run")
    run.add_argument("--data-dir", type=Path, help="benchmark directory (real or synthetic)")
    run.add_argument("--output-dir", type=Path, default=Path("outputs"), help="outputs root")
    run.add_argument("--notebooks", type=Path, default=Path("notebooks"), help=argparse.SUPPRESS)
    run.add_argument("--seed", type=int, help="override the profile's seed")
    run.set_defaults(handler=_run)

    render = commands.add_parser("build-book",
                                 help="render the executed notebooks with Jupyter Book")
    render.add_argument("--profile", default="quick")
    render.add_argument("--output-dir", type=Path, default=Path("outputs"))
    render.add_argument("--repo", type=Path, default=Path("."), help=argparse.SUPPRESS)
    render.set_defaults(handler=_build_book)

    imported = commands.add_parser(
        "import-weights", help="import an original GlaViTU weights file (Keras 2 HDF5)"
    )
    imported.add_argument("weights", type=Path, help="<MODEL>_<STRATEGY>[...]_weights.h5")
    imported.add_argument("--out", type=Path, required=True, help="output directory")
    imported.set_defaults(handler=_import_weights)

    single = commands.add_parser(
        "deploy", help="map glaciers in your own GeoTIFF scene with a trained model"
    )
    deploy.add_deploy_arguments(single)
    single.set_defaults(handler=deploy.deploy_from_args)

    many = commands.add_parser(
        "deploy-many", help="deploy every scene of a CSV manifest on Dask (local or a cluster)"
    )
    deploy_many.add_deploy_many_arguments(many)
    many.set_defaults(handler=deploy_many.deploy_many_from_args)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
