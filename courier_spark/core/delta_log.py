"""What a Delta table's log says, read without Spark.

The CLI checks a stage's inputs before the JVM starts (``courier_spark.stages.preflight``),
and ``courier sql`` checks the tables a query reads: both need "is there a
table at this path", "which partition values are live" (the centroid
versions of ``gold/centroids``) and "what are its properties" (who wrote a
``point_in_time`` output) in a fraction of a second, on any root the
filesystem layer reaches. This module replays the log itself: the newest
checkpoint (read with pyarrow) plus the JSON commits after it, following the
Delta protocol's add/remove/metaData actions. Standard library, fsspec (via
``fs``) and pyarrow only; nothing is written.
"""
from __future__ import annotations

import json
import re
from urllib.parse import unquote
from dataclasses import dataclass, field

from courier_spark.core import fs

# A Delta table exists once its log holds a commit or a checkpoint.
# (Classic, multi-part and v2 checkpoints all start "<version>.checkpoint".)
LOG_ENTRY = re.compile(r"^(\d{20}\.json|\d{20}\.checkpoint(\.[^/]+)?\.(parquet|json)|_last_checkpoint)$")
_COMMIT = re.compile(r"^(\d{20})\.json$")
_CLASSIC_CHECKPOINT = re.compile(r"^(\d{20})\.checkpoint\.parquet$")


def log_dir(path: str) -> str:
    return fs.join(path, "_delta_log")


def _entries(path: str) -> list[str]:
    try:
        return fs.ls(log_dir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []


def table_exists(path: str) -> bool:
    """Whether ``path`` holds a Delta table: its log has a commit or a checkpoint."""
    return any(LOG_ENTRY.match(name) for name in _entries(path))


def commit_versions(path: str) -> list[int]:
    """The versions of the JSON commit files in the log, ascending (what a
    test compares to prove that nothing was committed)."""
    return sorted(int(m.group(1)) for m in map(_COMMIT.match, _entries(path)) if m)


@dataclass
class Snapshot:
    """The live state of a table at its newest version: its live files (paths
    relative to the table, as the log names them) and their partition values,
    its properties (``metaData.configuration``), the table features its
    protocol names, and whether a live file carries a deletion vector."""
    version: int
    partitions: list[dict[str, str | None]] = field(default_factory=list)
    properties: dict[str, str] = field(default_factory=dict)
    features: set[str] = field(default_factory=set)
    files: list[str] = field(default_factory=list)
    deletion_vectors: bool = False

    def partition_values(self, column: str) -> set[str]:
        return {p[column] for p in self.partitions if p.get(column) is not None}


def snapshot(path: str) -> Snapshot | None:
    """Replay the log (newest classic checkpoint + the commits after it);
    None when there is no table. Multi-part and v2 checkpoints are not read:
    the JSON commits are replayed from version 0 when they are all still there,
    else ``None`` is returned as "cannot tell" (callers then leave the check to
    Spark)."""
    names = _entries(path)
    commits = sorted(int(m.group(1)) for m in map(_COMMIT.match, names) if m)
    checkpoints = sorted(int(m.group(1)) for m in map(_CLASSIC_CHECKPOINT.match, names) if m)
    if not commits and not checkpoints:
        return None
    files: dict[str, dict] = {}
    props: dict[str, str] = {}
    features: set[str] = set()
    with_dv: set[str] = set()
    start = 0
    if checkpoints:
        start = checkpoints[-1] + 1
        files, props, features, with_dv = _read_checkpoint(
            fs.join(log_dir(path), f"{checkpoints[-1]:020d}.checkpoint.parquet"))
    todo = [v for v in commits if v >= start]
    if todo and todo != list(range(start, todo[-1] + 1)):
        return None     # a gap (cleaned-up log, partial listing): cannot replay honestly
    if not checkpoints and (not commits or commits[0] != 0):
        return None
    for v in todo:
        for line in fs.read_text(fs.join(log_dir(path), f"{v:020d}.json")).splitlines():
            if not line.strip():
                continue
            action = json.loads(line)
            if "add" in action:
                files[action["add"]["path"]] = action["add"].get("partitionValues") or {}
                if action["add"].get("deletionVector"):
                    with_dv.add(action["add"]["path"])
                else:
                    with_dv.discard(action["add"]["path"])
            elif "remove" in action:
                files.pop(action["remove"]["path"], None)
                with_dv.discard(action["remove"]["path"])
            elif "metaData" in action:
                props = dict(action["metaData"].get("configuration") or {})
            elif "protocol" in action:
                features = _features(action["protocol"])
    version = max(todo[-1] if todo else -1, checkpoints[-1] if checkpoints else -1)
    return Snapshot(version, list(files.values()), props, features, list(files), bool(with_dv & set(files)))


def _features(protocol: dict) -> set[str]:
    return set(protocol.get("readerFeatures") or []) | set(protocol.get("writerFeatures") or [])


def _read_checkpoint(uri: str) -> tuple[dict[str, dict], dict[str, str], set[str], set[str]]:
    import pyarrow.parquet as pq

    with fs.open_read(uri) as f:
        pf = pq.ParquetFile(f)
        table = pf.read(columns=[c for c in ("add", "metaData", "protocol") if c in pf.schema_arrow.names])
    files: dict[str, dict] = {}
    props: dict[str, str] = {}
    features: set[str] = set()
    with_dv: set[str] = set()
    for row in table.to_pylist():
        add, meta, protocol = row.get("add"), row.get("metaData"), row.get("protocol")
        if add:
            files[add["path"]] = dict(add.get("partitionValues") or [])
            if add.get("deletionVector"):
                with_dv.add(add["path"])
        if meta:
            props = dict(meta.get("configuration") or [])
        if protocol:
            features = _features(protocol)
    return files, props, features, with_dv


# Reading a column without Spark is for checks that must answer in a second or
# two; a table of more files than this is left to the stage's own check.
COLUMN_READ_MAX_FILES = 64


def column_values(path: str, column: str, max_files: int = COLUMN_READ_MAX_FILES) -> set | None:
    """The distinct non-null values of ``column`` over the table's live rows,
    read from its data files with pyarrow; None when this reader cannot tell
    (no replayable log, more than ``max_files`` files, deletion vectors, column
    mapping, a partition column, a file without the column)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    snap = snapshot(path)
    if (snap is None or len(snap.files) > max_files or snap.deletion_vectors
            or snap.properties.get("delta.columnMapping.mode", "none") != "none"
            or any(column in p for p in snap.partitions)):
        return None
    values: set = set()
    for rel in snap.files:
        if "://" in rel or rel.startswith("/"):
            return None      # absolute paths (shallow clones): left to Spark
        with fs.open_read(fs.join(path, *unquote(rel).split("/"))) as f:
            pf = pq.ParquetFile(f)
            if column not in pf.schema_arrow.names:
                return None
            values |= set(pc.unique(pf.read(columns=[column]).column(column)).drop_null().to_pylist())
    return values
