"""Many scenes: ``glacier-mapping deploy`` for every row of a CSV manifest, on Dask distributed.

Each manifest row is one scene; its columns are the ``deploy`` options (``--co-pol`` becomes
``co_pol``). Each scene is one Dask task that runs :func:`glacier_mapping.deploy.deploy_scene`.
A failed scene is reported, never stopping the others: an invalid row or input (bad value,
missing or corrupt file) fails at once; a transient failure (storage, network, memory) is
retried (Dask ``retries``), and Dask reschedules the task of a lost worker. Workers keep a
loaded model per thread (keyed by path, size and modification time) and limit TensorFlow's
threads so that the workers of one machine share its cores instead of oversubscribing them.
A remote scheduler is reached over TLS with ``--tls-ca/--tls-cert/--tls-key`` or Dask's
``distributed.comm.tls`` configuration.
"""

from __future__ import annotations

import argparse
import csv
import io
import ipaddress
import logging
import re
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import tensorflow as tf
from dask.system import CPU_COUNT
from distributed import Client, LocalCluster, WorkerPlugin, as_completed, get_worker
from distributed.comm import get_address_host, parse_address
from distributed.security import Security

import glacier_mapping.deploy as deploy
from glacier_mapping.deploy import add_deploy_arguments, run_deploy
from glacier_mapping.store import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

SUMMARY_JSON = "deploy_many_summary.json"
SUMMARY_CSV = "deploy_many_scenes.csv"
#: Columns of the per-scene CSV summary.
CSV_COLUMNS = ("scene_id", "line", "status", "seconds", "out_dir", "glacier_class", "confidence",
               "glaciers", "summary", "glacier_area_km2", "estimated_iou", "error")
REQUIRED_COLUMNS = ("scene_id", "optical", "bands", "model")
#: Manifest columns holding one ``deploy`` option value each (flag = ``--`` + dashes).
VALUE_COLUMNS = ("product", "optical_scale", "optical_offset", "quality", "dem", "slope",
                 "co_pol", "cross_pol", "coherence", "thermal", "calibrator", "region_vector",
                 "norm_stats", "mc_passes", "patch_size", "stride", "batch_size", "precision",
                 "blend", "date")
BOOLEAN_COLUMNS = ("tta", "coordinates")
MANIFEST_COLUMNS = (*REQUIRED_COLUMNS, "name", *VALUE_COLUMNS, *BOOLEAN_COLUMNS, "out")
PATH_OPTIONS = ("quality", "dem", "slope", "co_pol", "cross_pol", "coherence", "thermal",
                "model", "calibrator", "region_vector", "norm_stats", "out")
#: Separator of several optical files in the ``optical`` column.
FILE_SEPARATOR = ";"
#: Time to reach a remote scheduler.
CONNECT_TIMEOUT = "10s"
#: Seconds to wait for a first worker of a remote scheduler.
WORKER_WAIT_SECONDS = 60.0
#: Models a worker thread keeps loaded.
MODEL_CACHE_SIZE = 2
#: Failures that may pass on another attempt (storage, network, memory); Dask retries them.
TRANSIENT_ERRORS = (OSError, MemoryError, tf.errors.ResourceExhaustedError)
#: OSErrors that are the scene's input, not a transient failure: never retried.
INPUT_OS_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
#: The TLS options, in the order of :func:`cluster_security`'s file arguments.
TLS_FLAGS = ("--tls-ca", "--tls-cert", "--tls-key")
_SCENE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_TRUE, _FALSE = {"true", "yes", "1"}, {"false", "no", "0"}
_PLUGIN_NAME = "glacier-mapping-deploy"


class ManifestError(ValueError):
    """The manifest or a ``deploy-many`` option is invalid; the message names the fix."""


class SceneFailed(Exception):
    """One scene failed on a worker: a short message and the seconds it ran."""

    def __init__(self, message: str, seconds: float) -> None:
        super().__init__(message, seconds)
        self.message, self.seconds = message, seconds

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class SceneJob:
    """One manifest row: its scene id, file line and ``deploy`` options, or why it is invalid."""

    scene_id: str
    line: int
    options: argparse.Namespace | None
    error: str | None = None


class _OptionError(Exception):
    """An argparse error raised instead of exiting."""


class _RowParser(argparse.ArgumentParser):
    """The ``deploy`` argument parser, raising instead of exiting on a bad value."""

    def error(self, message: str) -> NoReturn:
        """Raise the argparse message."""
        raise _OptionError(message)


def _row_parser() -> _RowParser:
    parser = _RowParser(add_help=False)
    add_deploy_arguments(parser)
    return parser


def _check_header(manifest: Path, header: Sequence[str] | None) -> None:
    """Refuse an empty manifest, unknown or duplicate columns and missing required ones."""
    if not header:
        raise ManifestError(f"{manifest} is empty; its first line must name the columns, e.g. "
                            f"{','.join(REQUIRED_COLUMNS)},out.")
    unknown = [name for name in header if name not in MANIFEST_COLUMNS]
    if unknown:
        raise ManifestError(f"{manifest}, line 1: unknown column(s) {unknown}; allowed columns "
                            f"are {', '.join(MANIFEST_COLUMNS)}.")
    repeated = sorted({name for name in header if list(header).count(name) > 1})
    if repeated:
        raise ManifestError(f"{manifest}, line 1: column(s) {repeated} appear twice.")
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise ManifestError(f"{manifest}, line 1: required column(s) {missing} are missing.")


def _boolean(value: str, where: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ManifestError(f"{where}: {value!r} is not true/false (or yes/no, 1/0).")


def _row_argv(row: dict[str, str], out: str, where: str) -> list[str]:
    """The ``deploy`` command-line arguments of one manifest row."""
    files = [part.strip() for part in row["optical"].split(FILE_SEPARATOR) if part.strip()]
    bands = ",".join(part.strip() for part in re.split(r"[;,]", row["bands"]))
    argv = ["--optical", *files, f"--model={row['model']}", f"--out={out}",
            f"--name={row.get('name') or row['scene_id']}", "--no-progress"]
    if bands:  # may be empty with a product: its band order
        argv.append(f"--bands={bands}")
    argv += [f"--{column.replace('_', '-')}={row[column]}" for column in VALUE_COLUMNS
             if row.get(column)]
    if row.get("tta") and _boolean(row["tta"], f"{where}, column 'tta'"):
        argv.append("--tta")
    if row.get("coordinates"):
        flag = _boolean(row["coordinates"], f"{where}, column 'coordinates'")
        argv.append("--coordinates" if flag else "--no-coordinates")
    return argv


def _resolve_paths(options: argparse.Namespace, folder: Path) -> argparse.Namespace:
    """Make relative paths of the options relative to ``folder`` (the manifest's)."""
    def resolve(path: Path | str) -> Path | str:
        if isinstance(path, str):  # a URL
            return path
        path = path.expanduser()
        return path if path.is_absolute() else folder / path

    options.optical = [resolve(path) for path in options.optical]
    for name in PATH_OPTIONS:
        if getattr(options, name) is not None:
            setattr(options, name, resolve(getattr(options, name)))
    return options


def _parse_row(row: dict[str, str], parser: _RowParser, out_dir: Path, folder: Path,
               where: str) -> argparse.Namespace:
    """Validate one row and turn it into ``deploy`` options."""
    empty = [name for name in REQUIRED_COLUMNS if not row.get(name)
             and not (name == "bands" and row.get("product"))]
    if empty:
        hint = " (bands may be empty with a product)" if "bands" in empty else ""
        raise ManifestError(f"{where}: required column(s) {empty} are empty{hint}.")
    if not _SCENE_ID.match(row["scene_id"]):
        raise ManifestError(f"{where}, column 'scene_id': {row['scene_id']!r} must be letters, "
                            "digits, '.', '_' or '-' (it names the default output folder).")
    out = row.get("out") or str(out_dir / row["scene_id"])
    try:
        options = parser.parse_args(_row_argv(row, out, where))
    except _OptionError as error:
        flag = re.match(r"argument (--[a-z-]+): ", str(error))
        column = f", column '{flag.group(1)[2:].replace('-', '_')}'" if flag else ""
        problem = str(error)[flag.end():] if flag else str(error)
        raise ManifestError(f"{where}{column}: {problem}; correct it or leave the cell empty for "
                            "the default.") from None
    return _resolve_paths(options, folder)


def _rows(manifest: Path) -> Iterator[tuple[int, dict[str, str], bool]]:
    """Yield ``(line, row, too_many_values)`` with stripped values; checks the header first."""
    try:
        handle = manifest.open(newline="", encoding="utf-8-sig")
    except OSError as error:
        raise ManifestError(f"Manifest {manifest} cannot be read ({error.strerror or error}); "
                            "pass the path of a CSV file.") from None
    with handle:
        reader = csv.DictReader(handle, skipinitialspace=True)
        try:
            header = [name.strip() for name in reader.fieldnames or []]
            _check_header(manifest, header)
            reader.fieldnames = header
            for row in reader:
                too_many = row.pop(None, None) is not None
                yield (reader.line_num,
                       {key: (value or "").strip() for key, value in row.items()}, too_many)
        except (csv.Error, UnicodeDecodeError) as error:
            raise ManifestError(f"{manifest}, line {reader.line_num}: not a readable UTF-8 CSV "
                                f"({error}).") from None


def read_manifest(manifest: str | Path, out_dir: str | Path | None = None) -> list[SceneJob]:
    """Read and validate a manifest: one :class:`SceneJob` per row.

    Relative paths are resolved against the manifest's folder. An invalid row becomes a job
    with ``error`` set (its scene fails alone). Input files are not opened here: a missing file
    fails its own scene only.

    Args:
        manifest: CSV with a header of :data:`MANIFEST_COLUMNS` (``scene_id``, ``optical``,
            ``bands`` and ``model`` required; ``bands`` may be empty in a row with a
            ``product``). ``optical`` may list several files separated by
            ``;``; ``bands`` is comma- or ``;``-separated; ``tta`` and ``coordinates`` are
            true/false; ``out`` defaults to ``out_dir/scene_id``; ``name`` to ``scene_id``.
        out_dir: folder of the default per-scene outputs; default the manifest's folder.

    Raises:
        ManifestError: for an unreadable or empty manifest or an invalid header.
    """
    manifest = Path(manifest)
    folder = manifest.parent.resolve()
    out_dir = folder if out_dir is None else Path(out_dir).resolve()
    parser = _row_parser()
    jobs: list[SceneJob] = []
    seen: dict[str, int] = {}
    outputs: dict[Path, int] = {}
    for line, row, too_many in _rows(manifest):
        where = f"{manifest}, line {line}"
        scene_id = row["scene_id"]
        try:
            if too_many:
                raise ManifestError(f"{where}: more values than columns; quote values that "
                                    "contain commas.")
            options = _parse_row(row, parser, out_dir, folder, where)
            if scene_id in seen:
                raise ManifestError(f"{where}, column 'scene_id': {scene_id!r} already appears "
                                    f"on line {seen[scene_id]}; scene ids must be unique.")
            target = options.out.resolve()
            if target in outputs:
                raise ManifestError(f"{where}, column 'out': {target} is also the output of "
                                    f"line {outputs[target]}; give each scene its own folder.")
            outputs[target] = line
            jobs.append(SceneJob(scene_id, line, options))
        except ManifestError as error:
            jobs.append(SceneJob(scene_id, line, None, str(error)))
        seen.setdefault(scene_id, line)
    if not jobs:
        raise ManifestError(f"{manifest} lists no scenes; add one row per scene below the header.")
    return jobs


_THREAD = threading.local()
_load_model_uncached = deploy._load_model


def _load_model_once(model_path: Path) -> Any:
    """:func:`glacier_mapping.deploy._load_model` with a small per-thread cache.

    The key is the resolved path, size and modification time, so a replaced file is reloaded.
    The cache is per thread because MC dropout switches a model's state during a prediction.
    """
    cache: OrderedDict[tuple[str, int, int], Any] = _THREAD.__dict__.setdefault(
        "models", OrderedDict())
    if not model_path.is_file():
        return _load_model_uncached(model_path)  # raises the usual error
    stat = model_path.stat()
    key = (str(model_path.resolve()), stat.st_size, stat.st_mtime_ns)
    _THREAD.reused = key in cache
    if key not in cache:
        cache[key] = _load_model_uncached(model_path)
        while len(cache) > MODEL_CACHE_SIZE:
            cache.popitem(last=False)
    cache.move_to_end(key)
    return cache[key]


def _limit_tensorflow_threads(threads: int) -> None:
    """Cap TensorFlow's intra- and inter-op threads (possible before its first operation)."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        logger.warning("TensorFlow already runs in this worker; its thread count is unchanged.")


class _HideSceneFailures(logging.Filter):
    """Drop Dask's "Compute Failed" report of a scene failure (its short message is reported)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep every record but a failed scene's."""
        return "SceneFailed(" not in record.getMessage()


_HIDE_SCENE_FAILURES = _HideSceneFailures()


class DeployWorkerSetup(WorkerPlugin):
    """Per worker process: share the host's cores among TensorFlow and reuse loaded models.

    It also keeps Dask from logging a failed scene's task in full (one warning line remains).

    Args:
        threads_on_host: host -> total worker threads on that host; a worker on a host not
            listed (one that joined later) assumes it is the host's only worker.
    """

    def __init__(self, threads_on_host: dict[str, int]) -> None:
        self.threads_on_host = threads_on_host

    def setup(self, worker: Any) -> None:
        """Limit TensorFlow's threads to this worker's share of the cores; cache models."""
        logging.getLogger("distributed.worker").addFilter(_HIDE_SCENE_FAILURES)
        host = get_address_host(worker.address)
        share = self.threads_on_host.get(host, worker.state.nthreads)
        _limit_tensorflow_threads(max(1, CPU_COUNT // max(share, 1)))
        deploy._load_model = _load_model_once


def _tensorflow_threads() -> int:
    """TensorFlow's intra-op thread count in this process (0 = TensorFlow's default)."""
    return tf.config.threading.get_intra_op_parallelism_threads()


def _worker_address() -> str | None:
    try:
        return get_worker().address
    except ValueError:  # not running on a Dask worker
        return None


def _first_line(error: BaseException) -> str:
    """The first line of an error (at most 500 characters), without the traceback."""
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:500]


def _short_message(error: Exception, options: argparse.Namespace) -> str:
    """An error's first line; one of an unexpected type also gets the scene's files and a fix."""
    if isinstance(error, ValueError | OSError):  # deploy's input errors name the file and fix
        return _first_line(error)
    files = [*options.optical, *(getattr(options, name) for name in PATH_OPTIONS
                                 if name != "out" and getattr(options, name) is not None)]
    return (f"{type(error).__name__}: {_first_line(error)} (scene files: "
            f"{', '.join(map(str, files))}); not a known input error: run the scene alone with "
            "`glacier-mapping deploy` and the same options to see which file or step fails.")


def _is_transient(error: Exception) -> bool:
    """Whether another attempt may succeed (not an error of the scene's inputs)."""
    return isinstance(error, TRANSIENT_ERRORS) and not isinstance(error, INPUT_OS_ERRORS)


def run_scene(job: SceneJob) -> dict[str, Any]:
    """Deploy one scene (the Dask task).

    An input error returns a failed record at once; a transient one raises
    :class:`SceneFailed`, which Dask retries.
    """
    started = time.perf_counter()
    _THREAD.reused = False
    try:
        summary = run_deploy(job.options)  # the options include --no-progress
    except Exception as error:  # every failure is reported, none is fatal
        message = _short_message(error, job.options)
        seconds = round(time.perf_counter() - started, 3)
        logger.debug("Scene %s traceback", job.scene_id, exc_info=True)
        if not _is_transient(error):
            return _failure(job, message, seconds)
        logger.warning("Scene %s (manifest line %d) failed (retried while attempts remain): %s",
                       job.scene_id, job.line, message)
        raise SceneFailed(message, seconds) from None
    return {
        "scene_id": job.scene_id, "line": job.line, "status": "ok",
        "seconds": round(time.perf_counter() - started, 3), "out_dir": summary.out_dir,
        "outputs": summary.outputs, "glacier_area_km2": summary.glacier_area_km2,
        "polygon_count": summary.polygon_count, "estimated_iou": summary.estimated_iou,
        "worker": _worker_address(), "tensorflow_threads": _tensorflow_threads(),
        "model_reused": bool(getattr(_THREAD, "reused", False)), "error": None,
    }


def _failure(job: SceneJob, message: str, seconds: float | None = None) -> dict[str, Any]:
    """The record of a scene that failed with ``message``."""
    return {"scene_id": job.scene_id, "line": job.line, "status": "failed", "seconds": seconds,
            "out_dir": None if job.options is None else str(job.options.out), "outputs": {},
            "glacier_area_km2": None, "polygon_count": None, "estimated_iou": None,
            "worker": None, "tensorflow_threads": None, "model_reused": None, "error": message}


def _task_failure(job: SceneJob, error: BaseException, attempts: int) -> dict[str, Any]:
    """The record of a scene whose Dask task raised ``error`` (after its retries)."""
    if isinstance(error, SceneFailed):
        return _failure(job, f"{error.message.rstrip('.')} (failed {attempts} attempt(s); a "
                        "transient storage, network or memory failure: rerun the scene once "
                        "it is resolved).", error.seconds)
    return _failure(job, f"{type(error).__name__}: {_first_line(error)} (the Dask task failed, "
                    "e.g. its workers died: check the worker logs and memory, then rerun the "
                    "scene).")


def parse_scheduler(spec: str) -> int | str:
    """``local`` -> worker count (cores), ``local:N`` -> N, an address -> itself."""
    if spec == "local":
        return CPU_COUNT
    if spec.startswith("local:"):
        count = spec.removeprefix("local:")
        if count.isdigit() and int(count) >= 1:
            return int(count)
    elif "://" in spec:
        return spec
    raise ManifestError(f"--scheduler must be 'local', 'local:N' (N >= 1 worker processes) or "
                        f"a scheduler address such as tls://host:8786; got {spec!r}.")


def cluster_security(target: int | str, tls_ca: str | Path | None = None,
                     tls_cert: str | Path | None = None,
                     tls_key: str | Path | None = None) -> Security | None:
    """The client's Dask security for ``target`` (None for the local cluster).

    The three TLS files (CA certificate, client certificate and key, encryption required), or
    else Dask's own ``distributed.comm.tls`` configuration.

    Raises:
        ManifestError: for an incomplete, missing or unreadable set of TLS files, a
            ``tls://`` address without them or a plain address while encryption is required.
    """
    files = dict(zip(TLS_FLAGS, (tls_ca, tls_cert, tls_key), strict=True))
    given = [flag for flag, path in files.items() if path is not None]
    if given and len(given) < len(TLS_FLAGS):
        missing = [flag for flag in TLS_FLAGS if flag not in given]
        raise ManifestError(f"{', '.join(given)} given without {', '.join(missing)}; pass all "
                            "three TLS files (CA certificate, client certificate, its key) or "
                            "none.")
    if isinstance(target, int):
        if given:
            raise ManifestError("--tls-ca/--tls-cert/--tls-key secure a remote scheduler; drop "
                                "them for the local cluster or pass --scheduler tls://HOST:8786.")
        return None
    for flag, path in files.items():
        if path is not None and not Path(path).is_file():
            raise ManifestError(f"{flag} {path} does not exist; pass the path of a PEM file.")
    security = (Security(tls_ca_file=str(tls_ca), tls_client_cert=str(tls_cert),
                         tls_client_key=str(tls_key), require_encryption=True)
                if given else Security())  # Security() reads Dask's configuration
    try:
        context = security.get_connection_args("client")["ssl_context"]
    except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
        raise ManifestError(
            f"The TLS files (CA {security.tls_ca_file}, certificate {security.tls_client_cert}, "
            f"key {security.tls_client_key}) cannot be loaded ({error}); pass PEM files: the "
            "CA certificate and a certificate and key it signed.") from None
    scheme = parse_address(target)[0]
    if scheme == "tls" and context is None:
        raise ManifestError(f"{target} is a TLS scheduler; pass --tls-ca, --tls-cert and "
                            "--tls-key (or set distributed.comm.tls in Dask's configuration).")
    if scheme != "tls" and security.require_encryption:
        raise ManifestError(f"TLS is required (--tls-* or Dask's configuration) but {target} is "
                            "not a tls:// address; pass the scheduler's tls://HOST:PORT address.")
    return security


def _is_plain_remote(address: str) -> bool:
    """Whether ``address`` is an unencrypted scheduler on another host."""
    if parse_address(address)[0] not in ("tcp", "ws"):
        return False
    host = get_address_host(address)
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return host != "localhost"


def _connect(target: int | str,
             security: Security | None) -> tuple[Client, LocalCluster | None]:
    """A client of a new LocalCluster (``target`` workers) or of the scheduler at ``target``."""
    if isinstance(target, int):
        cluster = LocalCluster(n_workers=target, threads_per_worker=1, processes=True)
        client = Client(cluster)
        client.wait_for_workers(target)
        return client, cluster
    tls = parse_address(target)[0] == "tls"
    if _is_plain_remote(target):
        logger.warning("Warning: %s has no TLS: an unauthenticated Dask scheduler runs any code "
                       "sent to it by anyone who can reach its port; use tls:// with --tls-ca, "
                       "--tls-cert and --tls-key.", target)
    try:
        client = Client(target, timeout=CONNECT_TIMEOUT, security=security)
    except (OSError, TimeoutError) as error:
        hint = ("check that --tls-ca signed the scheduler's certificate and that --tls-cert and "
                "--tls-key are a certificate and key it signed" if tls else
                "start one with `dask scheduler` and pass the address it prints (tls://... with "
                "--tls-ca, --tls-cert and --tls-key for a TLS scheduler)")
        raise ManifestError(f"Cannot reach the Dask scheduler at {target} "
                            f"({_first_line(error)}); {hint}.") from None
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT_SECONDS)
    except TimeoutError:
        client.close()
        flags = " --tls-ca-file CA --tls-cert CERT --tls-key KEY" if tls else ""
        raise ManifestError(f"No Dask worker joined {target} within {WORKER_WAIT_SECONDS:.0f} s; "
                            f"start workers with `dask worker {target} --nthreads 1{flags}`."
                            ) from None
    return client, None


def _threads_on_host(client: Client) -> dict[str, int]:
    """Host -> total worker threads on it, from the scheduler."""
    totals: dict[str, int] = {}
    for address, worker in client.scheduler_info(n_workers=-1)["workers"].items():
        host = get_address_host(address)
        totals[host] = totals.get(host, 0) + int(worker["nthreads"])
    return totals


def _log_record(record: dict[str, Any]) -> None:
    logger.info("%-6s %8s s  %s%s", record["status"], record["seconds"], record["scene_id"],
                f"  {record['error']}" if record["error"] else "")


def _run_jobs(client: Client, jobs: list[SceneJob], retries: int) -> dict[int, dict[str, Any]]:
    """Submit one task per scene; manifest line -> the scene's record."""
    run = uuid.uuid4().hex[:8]
    futures = {client.submit(run_scene, job, key=f"deploy-{job.scene_id}-{run}",
                             retries=retries, pure=False): job for job in jobs}
    records: dict[int, dict[str, Any]] = {}
    for future in as_completed(futures):
        job = futures[future]
        if future.cancelled():
            error: BaseException | None = RuntimeError("the task was cancelled")
        else:
            error = future.exception() if future.status == "error" else None
        record = future.result() if error is None else _task_failure(job, error, retries + 1)
        records[job.line] = record
        _log_record(record)
    return records


def _csv_text(records: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for record in records:
        outputs = record["outputs"]
        writer.writerow({
            **{key: record[key] for key in CSV_COLUMNS if key in record},
            "glacier_class": outputs.get(deploy.CLASS_FILE, ""),
            "confidence": outputs.get(deploy.CONFIDENCE_FILE, ""),
            "glaciers": outputs.get(deploy.POLYGON_FILE, ""),
            "summary": outputs.get(deploy.SUMMARY_FILE, ""),
        })
    return buffer.getvalue()


def deploy_many(manifest: str | Path, scheduler: str = "local", retries: int = 1,
                out_dir: str | Path | None = None, tls_ca: str | Path | None = None,
                tls_cert: str | Path | None = None,
                tls_key: str | Path | None = None) -> dict[str, Any]:
    """Deploy every scene of a manifest on Dask; write and return the run summary.

    Writes ``deploy_many_summary.json`` (run settings, counts and one record per scene) and
    ``deploy_many_scenes.csv`` (per-scene status, seconds, output paths and error) atomically
    to ``out_dir``, which also holds default per-scene output folders. Invalid rows are
    reported as failed scenes; the others run.

    Args:
        manifest: the CSV manifest (see :func:`read_manifest`).
        scheduler: ``local`` (a LocalCluster with one single-threaded worker process per
            core), ``local:N`` (N such workers) or a scheduler address (``tls://host:8786``).
        retries: extra attempts of a scene after a transient failure (Dask task retries).
        out_dir: summary folder; default the manifest's folder.
        tls_ca: CA certificate (PEM) of a TLS scheduler (see :func:`cluster_security`).
        tls_cert: client certificate (PEM) signed by that CA.
        tls_key: the client certificate's private key (PEM).

    Raises:
        ManifestError: for an invalid manifest file, scheduler, TLS files or retries value, or
            an unreachable scheduler.
    """
    if retries < 0:
        raise ManifestError(f"--retries must be >= 0, got {retries}.")
    target = parse_scheduler(scheduler)
    security = cluster_security(target, tls_ca, tls_cert, tls_key)
    manifest = Path(manifest)
    out_dir = manifest.parent if out_dir is None else Path(out_dir)
    jobs = read_manifest(manifest, out_dir)
    started, wall = datetime.now(UTC), time.perf_counter()
    by_line = {job.line: _failure(job, job.error) for job in jobs if job.error is not None}
    runnable = [job for job in jobs if job.error is None]
    client, cluster = _connect(target, security) if runnable else (None, None)
    for record in by_line.values():  # after connecting: a run that cannot start lists none
        _log_record(record)
    workers = 0
    if client is not None:
        try:
            workers = len(client.scheduler_info(n_workers=-1)["workers"])
            logger.info("%d scene(s) on %d Dask worker(s) (%s); dashboard %s", len(runnable),
                        workers, scheduler, client.dashboard_link)
            client.register_plugin(DeployWorkerSetup(_threads_on_host(client)),
                                   name=_PLUGIN_NAME)
            by_line |= _run_jobs(client, runnable, retries)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    records = [by_line[job.line] for job in jobs]
    failed = sum(record["status"] != "ok" for record in records)
    summary = {
        "manifest": str(manifest.resolve()), "out_dir": str(out_dir.resolve()),
        "scheduler": scheduler, "workers": workers, "retries": retries,
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - wall, 3), "scenes": len(records),
        "succeeded": len(records) - failed, "failed": failed, "results": records,
    }
    atomic_write_json(out_dir / SUMMARY_JSON, summary)
    atomic_write_text(out_dir / SUMMARY_CSV, _csv_text(records))
    return summary


def add_deploy_many_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``glacier-mapping deploy-many`` options (and the exit codes) to ``parser``."""
    parser.epilog = ("Exit code: 0 if every scene succeeded; 1 if some failed (invalid rows "
                     "included; the others ran, see the summary); 2 if nothing ran (unreadable "
                     "manifest, invalid option or unreachable scheduler).")
    parser.add_argument("manifest", type=Path, metavar="MANIFEST.csv",
                        help=f"one row per scene; columns: {', '.join(MANIFEST_COLUMNS)}")
    parser.add_argument("--scheduler", default="local", metavar="local[:N]|ADDRESS",
                        help="'local' (one worker per core), 'local:N' or a Dask scheduler "
                             "address such as tls://host:8786 (default: local)")
    parser.add_argument("--retries", type=int, default=1, metavar="K",
                        help="extra attempts of a scene after a transient failure (storage, "
                             "network, memory); input errors are not retried (default: 1)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="summary folder and default scene output root "
                             "(default: the manifest's folder)")
    parser.add_argument("--tls-ca", type=Path, metavar="FILE",
                        help="CA certificate (PEM) of a TLS scheduler; with --tls-cert and "
                             "--tls-key (default: Dask's distributed.comm.tls configuration)")
    parser.add_argument("--tls-cert", type=Path, metavar="FILE",
                        help="client certificate (PEM) signed by the CA")
    parser.add_argument("--tls-key", type=Path, metavar="FILE", help="client private key (PEM)")


def deploy_many_from_args(args: argparse.Namespace) -> int:
    """Run ``glacier-mapping deploy-many``; exit code 0, 1 if a scene failed, 2 for bad input."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        summary = deploy_many(args.manifest, args.scheduler, args.retries, args.out,
                              args.tls_ca, args.tls_cert, args.tls_key)
    except ManifestError as error:
        print(f"glacier-mapping deploy-many: error: {error}", file=sys.stderr)
        return 2
    print(f"{summary['succeeded']} of {summary['scenes']} scene(s) succeeded in "
          f"{summary['seconds']:.1f} s on {summary['workers']} worker(s); summary in "
          f"{Path(summary['out_dir']) / SUMMARY_JSON}")
    for record in summary["results"]:
        if record["status"] != "ok":
            print(f"FAILED {record['scene_id'] or '(no scene_id)'} (line {record['line']}): "
                  f"{record['error']}", file=sys.stderr)
    return 1 if summary["failed"] else 0
