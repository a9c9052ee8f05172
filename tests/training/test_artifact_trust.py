"""Model artefacts read back from a (shared) store are data: a truncated or
tampered file is an CorruptModelError naming it, and no code runs."""
from __future__ import annotations

import io
import pickle

import pytest
import torch

from courier_spark.core.errors import CorruptModelError
from training.artifact import load_artifact, save_artifact
from training.backbones import build_backbone


class _Evil:
    def __reduce__(self):
        return (print, ("code ran on load",))


@pytest.fixture
def saved(tmp_path):
    enc = build_backbone("small_cnn", 8)
    art = save_artifact(str(tmp_path), "courier", enc, None, backbone="small_cnn", embed_dim=8, image_size=16,
                        config={}, data_versions={}, metrics={})
    return str(tmp_path), art


def test_intact_artefact_loads(saved):
    models, art = saved
    assert load_artifact(models, "courier").load_encoder().embed_dim == 8


def test_truncated_encoder_is_a_clear_error(saved):
    models, art = saved
    path = art.encoder_uri
    data = open(path, "rb").read()
    open(path, "wb").write(data[:100])
    with pytest.raises(CorruptModelError, match=r"courier/v0001: .*encoder.pt is not a readable small_cnn"):
        load_artifact(models, "courier").load_encoder()


def test_encoder_with_code_is_refused(saved, capsys):
    models, art = saved
    buf = io.BytesIO()
    torch.save({"x": _Evil()}, buf, pickle_module=pickle)
    open(art.encoder_uri, "wb").write(buf.getvalue())
    with pytest.raises(CorruptModelError, match="truncated or tampered"):
        load_artifact(models, "courier").load_encoder()
    assert "code ran on load" not in capsys.readouterr().out


def test_tampered_description_is_a_clear_error(saved):
    models, art = saved
    meta = f"{art.path}/artifact.json"
    open(meta, "w").write('{"method": "courier", "version": ')
    with pytest.raises(CorruptModelError, match=r"artifact.json is not a valid artefact description"):
        load_artifact(models, "courier")
    open(meta, "w").write('{"method": "courier", "version": "v0001", "evil": 1}')
    with pytest.raises(CorruptModelError, match="not a valid artefact description"):
        load_artifact(models, "courier")
