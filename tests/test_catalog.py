"""The table catalog knows every table once: paths, readers' errors and the
SQL runner's table checks all come from it."""
from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest
from pyspark.sql import types as T

from courier_spark.core.catalog import CATALOG, WRITE_MODES, schema_of, spec, spec_for_path
from courier_spark.core.errors import MissingTableError
from courier_spark.core.paths import TablePaths
from courier_spark.pipeline import STAGES

REPO = Path(__file__).resolve().parents[1]


def _table_properties(p: TablePaths) -> dict[str, str]:
    out = {}
    for name, member in inspect.getmembers(TablePaths):
        if isinstance(member, property):
            value = getattr(p, name)
            if spec_for_path(value) is not None:
                out[name] = value
    return out


def test_every_table_path_comes_from_the_catalog_and_every_entry_has_a_path():
    p = TablePaths.for_root("/data/root")
    tables = _table_properties(p)
    assert sorted(spec_for_path(v).name for v in tables.values()) == sorted(CATALOG)
    for v in tables.values():
        assert v == f"/data/root/{spec_for_path(v).name}"
    with pytest.raises(KeyError, match="not a catalogued table"):
        p.table("gold", "nope")


def test_entries_name_real_stages_and_resolvable_schemas():
    for s in CATALOG.values():
        assert s.made_by.split()[0] in STAGES, s
        assert s.write_modes and set(s.write_modes) <= set(WRITE_MODES) and s.write_mode and s.description
        if s.schema is not None:
            assert isinstance(schema_of(s), T.StructType), s
    assert spec("gold/centroids").made_by == "cluster"


def test_no_second_copy_of_who_makes_a_table():
    hits = [str(f.relative_to(REPO)) for f in REPO.glob("courier_spark/**/*.py")
            if "made_by=\"" in f.read_text() or "_MADE_BY" in f.read_text()]
    assert not hits, hits


def test_missing_table_error_names_the_making_stage(spark, tmp_path):
    from courier_spark.core.tables import read_table
    p = TablePaths.for_root(str(tmp_path))
    with pytest.raises(MissingTableError, match=r"run `courier cluster` first"):
        read_table(spark, p.centroids)
    with pytest.raises(MissingTableError, match=r"run `courier samples` first"):
        read_table(spark, p.ctr_samples)


def test_writers_refuse_a_mode_the_catalog_does_not_declare(spark, tmp_path):
    from courier_spark.core.catalog import APPEND_ONCE, MERGE_UPSERT, OVERWRITE, check_write
    from courier_spark.features.feature_tables import merge_upsert
    from courier_spark.core.paths import TablePaths
    from courier_spark.core.tables import write_table
    p = TablePaths.for_root(str(tmp_path / "ds"))
    check_write(p.silver_items, OVERWRITE)                      # declared: fine
    check_write(str(tmp_path / "my_output"), APPEND_ONCE)       # not catalogued: any mode
    with pytest.raises(ValueError, match="feature_store/item_visual is written by merge history, not overwrite"):
        write_table(spark.range(2), p.item_visual_features)
    with pytest.raises(ValueError, match="not merge upsert"):
        merge_upsert(spark, spark.range(2).withColumnRenamed("id", "item_id"), p.centroids, ["item_id"])
    with pytest.raises(ValueError, match="unknown write mode"):
        check_write(p.silver_items, "append")
    assert not os.path.exists(p.item_visual_features) and not os.path.exists(p.centroids)   # nothing written
    assert MERGE_UPSERT in spec("gold/item_embeddings").write_modes
