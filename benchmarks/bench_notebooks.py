"""Figure 6: notebook time per notebook of the quick book, from its run manifest."""

from __future__ import annotations

import json

import common
from common import Row

MANIFEST = common.ROOT / "outputs" / "quick" / "manifest.json"


def run(quick: bool) -> list[Row]:
    method = f"read from {MANIFEST.relative_to(common.ROOT)} (papermill run, not re-measured)"
    if not MANIFEST.is_file():
        return [Row("notebooks", "quick book", "notebook_seconds", float("nan"), "s",
                    f"not available: {MANIFEST.relative_to(common.ROOT)} does not exist")]
    manifest = json.loads(MANIFEST.read_text())
    rows = []
    for notebook in manifest.get("notebooks", []):
        name = notebook.get("notebook", "?")
        status = notebook.get("status", "?")
        if "seconds" in notebook:
            rows.append(Row("notebooks", name, "notebook_seconds", float(notebook["seconds"]),
                            "s", f"{method}; status {status}"))
        if "peak_memory_mb" in notebook:
            rows.append(Row("notebooks", name, "peak_memory_mb",
                            float(notebook["peak_memory_mb"]), "MB", f"{method}; status {status}"))
    for key, metric in (("total_notebook_seconds", "total_notebook_seconds"),
                        ("wall_seconds", "wall_seconds")):
        if key in manifest:
            rows.append(Row("notebooks", "quick book", metric, float(manifest[key]), "s",
                            f"{method}; run status {manifest.get('status', '?')}, "
                            f"cpu_count {manifest.get('cpu_count', '?')}"))
    return rows


if __name__ == "__main__":
    args = common.parse_args(__doc__.splitlines()[0])
    common.finish("notebooks", run(args.quick), args.out)
