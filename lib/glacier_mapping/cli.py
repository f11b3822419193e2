"""Command line: ``glacier-mapping run | build-book | import-weights | deploy | deploy-many``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

# TensorFlow's C++ start-up logs would otherwise flood the terminal.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _run(args: argparse.Namespace) -> int:
    from glacier_mapping.pipeline import NotebookFailed, run_pipeline

    try:
        run_pipeline(
            args.profile, notebook_dir=args.notebooks, output_root=args.output_dir,
            data_dir=args.data_dir, only=args.only, seed=args.seed,
        )
    except NotebookFailed as failure:
        print(f"\nFAILED: {failure}", file=sys.stderr)
        return 1
    return 0


def _build_book(args: argparse.Namespace) -> int:
    from glacier_mapping.book import BookBuildError, build_book

    try:
        build_book(args.repo, args.output_dir, args.profile)
    except BookBuildError as error:
        print(f"\nFAILED: {error}", file=sys.stderr)
        return 1
    return 0


def _import_weights(args: argparse.Namespace) -> int:
    from glacier_mapping.models.weights import WeightImportError, export_imported_model

    try:
        model_path = export_imported_model(args.weights, args.out)
    except (WeightImportError, FileNotFoundError, OSError) as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 2
    print(f"Imported {args.weights} -> {model_path} (model card beside it)")
    return 0


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

    book = commands.add_parser("build-book", help="render the executed notebooks with Jupyter Book")
    book.add_argument("--profile", default="quick")
    book.add_argument("--output-dir", type=Path, default=Path("outputs"))
    book.add_argument("--repo", type=Path, default=Path("."), help=argparse.SUPPRESS)
    book.set_defaults(handler=_build_book)

    weights = commands.add_parser(
        "import-weights", help="import an original GlaViTU weights file (Keras 2 HDF5)"
    )
    weights.add_argument("weights", type=Path, help="<MODEL>_<STRATEGY>[...]_weights.h5")
    weights.add_argument("--out", type=Path, required=True, help="output directory")
    weights.set_defaults(handler=_import_weights)

    from glacier_mapping.deploy import add_deploy_arguments, deploy_from_args

    deploy = commands.add_parser(
        "deploy", help="map glaciers in your own GeoTIFF scene with a trained model"
    )
    add_deploy_arguments(deploy)
    deploy.set_defaults(handler=deploy_from_args)

    from glacier_mapping.deploy_many import add_deploy_many_arguments, deploy_many_from_args

    many = commands.add_parser(
        "deploy-many", help="deploy every scene of a CSV manifest on Dask (local or a cluster)"
    )
    add_deploy_many_arguments(many)
    many.set_defaults(handler=deploy_many_from_args)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
