"""Remote-root suite: a real HDFS (Hadoop's MiniDFSCluster, NameNode +
DataNode on loopback) started once per module; see ``minihdfs.py``."""
from __future__ import annotations

import pytest

from . import minihdfs


@pytest.fixture(scope="module")
def hdfs(tmp_path_factory):
    h = minihdfs.start(tmp_path_factory.mktemp("minihdfs"))
    try:
        yield h
    finally:
        h.stop()
