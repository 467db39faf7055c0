"""The torch-free .pt reader (mlx_grow.io.safe_pickle): PyTorch files load
without torch, and a pickle that would run code is refused before it runs."""

import io
import zipfile

import numpy as np
import pytest
from helpers import as_torch_zip, evil_pickle

from mlx_grow.io.safe_pickle import UnsafePickleError, load_state_dict, load_torch_file
from mlx_grow.substrate.files import load_table_file


def test_torch_file_round_trip(tmp_path):
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    f32 = torch.randn(7, 5, generator=g)
    bf16 = torch.randn(4, 6, generator=g).to(torch.bfloat16)
    torch.save(f32, tmp_path / "f32.pt")
    assert np.array_equal(load_torch_file(tmp_path / "f32.pt"), f32.numpy())
    torch.save(bf16, tmp_path / "bf16.pt")
    got = load_torch_file(tmp_path / "bf16.pt")
    assert got.dtype == np.float32 and np.array_equal(got, bf16.float().numpy())

    model = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.LayerNorm(3))
    sd = model.state_dict()
    sd["view"] = f32.t()[1:, ::2]  # offset + strides into a shared storage
    sd["half"], sd["ids"] = f32.half(), torch.arange(10)[::3]
    torch.save(sd, tmp_path / "sd.pt")
    torch.save(sd, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    for name in ("sd.pt", "legacy.pt"):
        got = load_state_dict(tmp_path / name)
        assert list(got) == list(sd)
        for k, v in sd.items():
            assert got[k].dtype == v.numpy().dtype and np.array_equal(got[k], v.numpy()), (name, k)

    torch.save(f32, tmp_path / "normalized_embeddings_weights.pt")
    table = load_table_file(tmp_path / "normalized_embeddings_weights.pt")
    assert table.dtype == np.float32 and np.array_equal(table, f32.numpy())


@pytest.mark.parametrize("container", ["zip", "plain"])
@pytest.mark.parametrize("call", ["os.system", "builtins.open"])
def test_malicious_pickle_is_refused_before_it_runs(tmp_path, container, call):
    module, name = call.split(".")
    marker = tmp_path / "pwned"
    args = (f"touch {marker}",) if call == "os.system" else (str(marker), "w")
    pkl = evil_pickle(module, name, *args)

    # the payload is real: the standard unpickler runs it
    probe = tmp_path / "probe"
    probe_args = (f"touch {probe}",) if call == "os.system" else (str(probe), "w")
    import pickle

    pickle.loads(evil_pickle(module, name, *probe_args))
    assert probe.exists()

    path = tmp_path / "model.pt"
    path.write_bytes(as_torch_zip(pkl) if container == "zip" else pkl)
    with pytest.raises(UnsafePickleError, match=rf"refusing to load {call} from model.pt"):
        load_torch_file(path)
    assert not marker.exists()
    with pytest.raises(ValueError, match="refusing"):  # the substrate loader passes it on
        load_table_file(path)
    assert not marker.exists()


def test_non_torch_files_give_clear_errors(tmp_path):
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="PyTorch"):
        load_torch_file(bad)
    z = tmp_path / "z.pt"
    z.write_bytes(_zip_without_pickle())
    with pytest.raises(ValueError, match="data.pkl"):
        load_torch_file(z)


def _zip_without_pickle() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/version", "3\n")
    return buf.getvalue()
