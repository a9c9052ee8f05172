"""One Spark session for the petastorm read-path tests: the project's
``spark`` fixture (tests/conftest.py) when it is there; a plain local session
when these tests run on their own (``--confcutdir tests/petastorm``, as in a
side environment that has petastorm's stack but not the platform's)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def pst_spark(request):
    try:
        yield request.getfixturevalue("spark")
        return
    except pytest.FixtureLookupError:
        pass
    from pyspark.sql import SparkSession
    s = (SparkSession.builder.master("local[2]").appName("petastorm-read-paths")
         .config("spark.sql.shuffle.partitions", "4").config("spark.ui.enabled", "false")
         .config("spark.driver.memory", "1g").getOrCreate())
    yield s
    s.stop()
