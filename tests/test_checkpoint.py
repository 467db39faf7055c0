import json

import mlx.core as mx
import pytest
from helpers import tiny_args

from mlx_grow.checkpoint import CheckpointError, load_model, save_model
from mlx_grow.model import Model, init_weights


def model(seed=0, **kw):
    m = Model(tiny_args(**kw))
    init_weights(m, seed)
    return m


def test_roundtrip_logits_identical(tmp_path):
    m = model()
    save_model(m, tmp_path / "m")
    m2 = load_model(tmp_path / "m")
    ids = mx.array([[1, 2, 3, 4]])
    assert mx.array_equal(m(ids), m2(ids)).item()
    meta = json.loads((tmp_path / "m" / "mlx_grow.json").read_text())
    assert meta["substrate"]["kind"] == "binary" and "model.safetensors" in meta["files"]


def test_sharded_roundtrip(tmp_path):
    m = model()
    save_model(m, tmp_path / "m", shard_bytes=20_000)
    assert (tmp_path / "m" / "model.safetensors.index.json").exists()
    ids = mx.array([[7, 8]])
    assert mx.array_equal(m(ids), load_model(tmp_path / "m")(ids)).item()


def test_existing_dir_not_overwritten(tmp_path):
    save_model(model(), tmp_path / "m")
    before = (tmp_path / "m" / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError):
        save_model(model(seed=1), tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before


def test_failed_save_leaves_nothing(tmp_path):
    def boom(tmp):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        save_model(model(), tmp_path / "m", extra_writer=boom)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_weights_detected(tmp_path, damage):
    save_model(model(), tmp_path / "m")
    f = tmp_path / "m" / "model.safetensors"
    data = bytearray(f.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[-10] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_model(tmp_path / "m")


def test_mis_shaped_tensor_named(tmp_path):
    save_model(model(), tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["intermediate_size"] = 64
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="c_fc.weight"):
        load_model(tmp_path / "m", verify=False)


def test_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nope")
