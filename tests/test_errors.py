"""One error hierarchy (courier_spark/core/errors.py): every user-facing error is a
CourierError, defined there and nowhere else, and the CLI prints each as one
line and exits 2."""
from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from courier_spark import cli
from courier_spark.core import errors

REPO = Path(__file__).resolve().parents[1]
CLASSES = [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]


def test_every_class_is_a_courier_error_with_its_standard_base():
    assert len(CLASSES) >= 20
    for c in CLASSES:
        assert issubclass(c, errors.CourierError)
    # the standard-library bases callers catch
    assert issubclass(errors.ConfigError, ValueError) and issubclass(errors.DataError, ValueError)
    for c in (errors.TableVersionError, errors.FeatureVersionError, errors.ArtifactNotFoundError):
        assert issubclass(c, errors.VersionNotFoundError) and issubclass(c, LookupError)
    assert issubclass(errors.ArtifactNotFoundError, FileNotFoundError)
    assert issubclass(errors.MissingTableError, errors.MissingArtifactError)
    assert issubclass(errors.MissingTableError, RuntimeError)
    for c in (errors.FilesystemError, errors.OnlineStoreError, errors.ConcurrentWriteError,
              errors.DistributedTrainingError, errors.StreamError):
        assert issubclass(c, errors.ServiceError) and issubclass(c, RuntimeError)


def test_no_error_class_is_defined_outside_errors_py():
    others = []
    for path in [*REPO.glob("courier_spark/**/*.py"), *REPO.glob("training/**/*.py")]:
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and (node.name.endswith("Error") or any(
                    getattr(b, "id", getattr(b, "attr", "")).endswith("Error") for b in node.bases)):
                others.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    assert not others, others


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_cli_prints_one_line_and_exits_2(cls, monkeypatch, capsys, tmp_path):
    def fail(*_a, **_k):
        raise cls(f"{cls.__name__} happened\nwith detail on a second line")
    monkeypatch.setattr(cli, "load_config", fail)
    assert cli.main(["validate", "--root", str(tmp_path / "root")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("courier: error: ")
    assert f"{cls.__name__} happened" in err and "second line" in err


def test_a_data_fault_in_the_feature_store_is_a_data_error(spark, tmp_path):
    from courier_spark.features.feature_tables import merge_upsert
    df = spark.createDataFrame([(1, "a"), (1, "b")], "item_id long, v string")
    with pytest.raises(errors.DataError, match="repeats key"):
        merge_upsert(spark, df, str(tmp_path / "t"), ["item_id"], {}, lineage=())
