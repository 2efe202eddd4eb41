"""How the CLI prints: aligned tables like kubectl's by default, JSON or YAML with `-o`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import yaml

FORMATS = ("table", "json", "yaml")


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Columns padded to their widest cell, headers in capitals; `-` for an empty cell."""
    cells = [[c.upper() for c in columns]]
    cells += [["-" if row.get(c) in (None, "") else str(row[c]) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("   ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
                     for line in cells)


def dump(data: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2, sort_keys=False, default=str)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip()


def age(timestamp: str | None, now: datetime | None = None) -> str:
    """kubectl's age: 45s, 12m, 3h, 2d."""
    if not timestamp:
        return ""
    then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = int(((now or datetime.now(UTC)) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def metrics(values: Mapping[str, float]) -> str:
    return ",".join(f"{key}={value:.4g}" for key, value in sorted(values.items()))
