"""Content-addressed artifact cache with atomic writes.

Every artifact (a benchmark, a trained model, predictions, metrics) lives in a directory named by
the hash of its kind, its parameters and the keys of the artifacts it was built from. Building
happens in a temporary directory that is renamed into place only when the builder returns, so an
interrupted run never leaves a half-written artifact, and a rerun with unchanged inputs reuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Environment variable naming the notebook that is running (set by the pipeline runner).
NOTEBOOK_ENV = "GLACIER_MAPPING_NOTEBOOK"
_META = "artifact.json"
_EVENTS = "events.jsonl"


@dataclass(frozen=True)
class Artifact:
    """A finished artifact: its key and the directory holding its files."""

    kind: str
    key: str
    path: Path
    reused: bool

    def file(self, name: str) -> Path:
        """Path of a file inside the artifact directory."""
        return self.path / name


def _canonical(value: Any) -> Any:  # noqa: ANN401
    """Turn parameters into plain JSON data with a stable form."""
    if isinstance(value, Artifact):
        return {"artifact": value.key}
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    raise TypeError(
        f"Artifact parameter of type {type(value).__name__} cannot be hashed; "
        "pass plain numbers, strings, lists, mappings or Artifacts."
    )


def artifact_key(kind: str, params: Mapping[str, Any], inputs: Sequence[Artifact] = ()) -> str:
    """Hash of an artifact's kind, parameters and input artifacts (16 hex digits)."""
    payload = json.dumps(
        {"kind": kind, "params": _canonical(params), "inputs": [a.key for a in inputs]},
        sort_keys=True, separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file, for keying artifacts on external inputs."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def atomic_path(path: str | Path, keep_failed: str | Path | None = None) -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces ``path`` when the block succeeds.

    The one atomic-replace helper of the project: write the file (or let a library write it)
    at the yielded path; on success it is renamed over ``path`` in one step, on failure it is
    removed (or renamed to ``keep_failed``, e.g. a failed notebook kept for its traceback), so
    readers never see a half-written file. The temporary name keeps ``path``'s suffix (writers
    that pick a format by suffix, such as Keras or GDAL, still work).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if keep_failed is not None and tmp.exists():
            os.replace(tmp, keep_failed)
        raise
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_json(path: str | Path, data: Any) -> Path:  # noqa: ANN401
    """Write JSON atomically with stable formatting."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def atomic_copy(source: str | Path, path: str | Path) -> Path:
    """Copy ``source`` to ``path`` atomically (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)
    return Path(path)


def publish_set(staged: Mapping[str, Path], out_dir: str | Path, marker: str,
                marker_data: Any) -> Path:  # noqa: ANN401
    """Move staged files into ``out_dir`` as one set, with a JSON ``marker`` written last.

    The previous marker is removed first, so a reader that trusts a folder only when its marker
    is present never takes a mix of two sets for a complete one.
    """
    out_dir = Path(out_dir)
    (out_dir / marker).unlink(missing_ok=True)
    for name, path in staged.items():
        os.replace(path, out_dir / name)
    return atomic_write_json(out_dir / marker, marker_data)


class ArtifactStore:
    """A cache of artifacts under one root directory (``outputs/<profile>/cache``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, kind: str, key: str) -> Path:
        """Directory of an artifact, whether or not it exists yet."""
        return self.root / kind / key

    def get_or_create(
        self,
        kind: str,
        params: Mapping[str, Any],
        build: Callable[[Path], Mapping[str, Any] | None],
        inputs: Sequence[Artifact] = (),
        resumable: bool = False,
    ) -> Artifact:
        """Return the artifact for ``(kind, params, inputs)``, building it if it is missing.

        Args:
            kind: Family of artifact, e.g. ``benchmark`` or ``model``; a sub-directory.
            params: Everything that determines the artifact's content.
            build: Called with an empty temporary directory to fill; may return extra
                metadata to store. The directory is renamed into place only on success.
            inputs: Artifacts this one is derived from; their keys enter the hash.
            resumable: Keep the partial directory when ``build`` is interrupted and hand it
                to the next call, so a builder that checkpoints (training) resumes. The
                artifact still appears under its final name only once complete.
        """
        key = artifact_key(kind, params, inputs)
        final = self.path_for(kind, key)
        if (final / _META).is_file():
            self._log(kind, key, reused=True, seconds=0.0)
            return Artifact(kind, key, final, reused=True)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / (f".partial-{key}" if resumable else f".tmp-{key}-{os.getpid()}")
        if not resumable:
            shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(exist_ok=True)
        start = time.perf_counter()
        try:
            extra = build(tmp) or {}
            seconds = time.perf_counter() - start
            meta = {
                "kind": kind, "key": key, "params": _canonical(params),
                "inputs": [a.key for a in inputs], "build_seconds": round(seconds, 3),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "extra": _canonical(extra),
            }
            (tmp / _META).write_text(json.dumps(meta, indent=2, sort_keys=True))
            if final.exists():  # a stale, incomplete directory from an older layout
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            if not resumable:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._log(kind, key, reused=False, seconds=seconds)
        return Artifact(kind, key, final, reused=False)

    def exists(
        self, kind: str, params: Mapping[str, Any], inputs: Sequence[Artifact] = ()
    ) -> bool:
        """Whether the artifact for ``(kind, params, inputs)`` is complete in the store."""
        return (self.path_for(kind, artifact_key(kind, params, inputs)) / _META).is_file()

    def metadata(self, artifact: Artifact) -> dict[str, Any]:
        """The stored metadata of an artifact."""
        return json.loads((artifact.path / _META).read_text())

    def events(self) -> list[dict[str, Any]]:
        """All reuse/build events logged so far (used by the run manifest)."""
        log = self.root / _EVENTS
        if not log.is_file():
            return []
        return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]

    def _log(self, kind: str, key: str, reused: bool, seconds: float) -> None:
        event = {
            "notebook": os.environ.get(NOTEBOOK_ENV, ""), "kind": kind, "key": key,
            "reused": reused, "seconds": round(seconds, 3), "time": time.time(),
        }
        with open(self.root / _EVENTS, "a") as handle:
            handle.write(json.dumps(event) + "\n")
