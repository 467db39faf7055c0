import mlx.core as mx
import numpy as np
import pytest

from mlx_grow.substrate.codes import gf2_rank, id_bits, padded_width
from mlx_grow.substrate.files import load_table_file
from mlx_grow.substrate.tables import (
    Substrate,
    SubstrateArgs,
    build_table,
    describe_file,
    fingerprint,
    save_table,
)


def test_binary_code_exact():
    t = id_bits(65536, 16, "msb")
    assert t.shape == (65536, 16)
    assert t[1].tolist() == [0] * 15 + [1]
    assert t[0x8000].tolist() == [1] + [0] * 15
    lsb = id_bits(65536, 16, "lsb")
    assert lsb[1].tolist() == [1] + [0] * 15
    ids = (t * (2 ** np.arange(15, -1, -1))).sum(1)
    assert np.array_equal(ids, np.arange(65536))


def test_expansion_repeat_and_tile_exact():
    args = SubstrateArgs(kind="binary", bits=4)
    s = Substrate(args, 16, 8)
    row = np.array(s(mx.array([5])))[0]  # 5 = 0101
    assert row.tolist() == [0, 0, 1, 1, 0, 0, 1, 1]
    s = Substrate(SubstrateArgs(kind="binary", bits=4, expansion="tile"), 16, 8)
    assert np.array(s(mx.array([5])))[0].tolist() == [0, 1, 0, 1, 0, 1, 0, 1]
    assert s.table.shape == (16, 4)  # the expansion is not materialised


def test_bits_not_dividing_d_are_padded():
    assert padded_width(17, 1024) == 32
    t = build_table(SubstrateArgs(kind="binary", bits=17), 131072, 1024)
    assert t.shape == (131072, 32)
    assert np.array_equal((t * (2 ** np.arange(31, -1, -1))).sum(1), np.arange(131072))


def test_gf2_code_is_a_bijection():
    t = build_table(SubstrateArgs(kind="gf2", bits=10, seed=3), 1024, 20)
    assert len({r.tobytes() for r in t}) == 1024
    assert not np.array_equal(t, id_bits(1024, 10))
    assert gf2_rank(np.eye(5, dtype=np.uint8)) == 5


def test_random_codes_collision_free_and_seeded():
    a = build_table(SubstrateArgs(kind="random", bits=16, seed=1), 4096, 64)
    b = build_table(SubstrateArgs(kind="random", bits=16, seed=1), 4096, 64)
    c = build_table(SubstrateArgs(kind="random", bits=16, seed=2), 4096, 64)
    assert len({r.tobytes() for r in a}) == 4096
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_float_rows_unit_norm_and_deterministic():
    a = build_table(SubstrateArgs(kind="float", bits=32, seed=0), 2048, 64)
    b = build_table(SubstrateArgs(kind="float", bits=32, seed=0), 2048, 64)
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    assert np.array_equal(a, b)


def test_float_code_bits_widen_the_code_before_pca():
    narrow = SubstrateArgs(kind="float", bits=16, seed=3)
    wide = SubstrateArgs(kind="float", bits=16, code_bits=64, seed=3)
    a, b = build_table(narrow, 512, 64), build_table(wide, 512, 64)
    assert a.shape == b.shape == (512, 16)
    assert np.allclose(np.linalg.norm(b, axis=1), 1, atol=1e-5) and not np.allclose(a, b)
    assert "code_bits" not in narrow.recipe()  # tables built before code_bits keep their fingerprint
    assert wide.recipe()["code_bits"] == 64
    assert SubstrateArgs(kind="float", bits=16, code_bits=16).recipe() == narrow.recipe() | {"seed": 0}
    with pytest.raises(ValueError, match="for kind float only"):
        SubstrateArgs(kind="random", bits=16, code_bits=64)
    with pytest.raises(ValueError, match="code_bits must be an integer >= bits"):
        SubstrateArgs(kind="float", bits=16, code_bits=8)


def test_trainable_materialises_full_table():
    s = Substrate(SubstrateArgs(kind="binary", bits=4, trainable=True), 16, 8)
    assert s.table.shape == (16, 8)
    from mlx.utils import tree_flatten

    assert "table" in dict(tree_flatten(s.trainable_parameters()))


def test_vocab_mismatch_is_clear():
    with pytest.raises(ValueError, match="rows but the vocabulary has"):
        Substrate(SubstrateArgs(kind="binary", bits=4), 16, 8, table=np.zeros((15, 4), np.float32))


def test_fingerprint_and_file_roundtrip(tmp_path):
    args = SubstrateArgs(kind="random", bits=8, seed=4)
    t = build_table(args, 200, 16)
    f = tmp_path / "s.safetensors"
    save_table(f, args, t)
    assert np.array_equal(load_table_file(f), t)
    d = describe_file(f)
    assert d["fingerprint"] == fingerprint(args, t)
    np.save(tmp_path / "s.npy", t)
    assert np.array_equal(load_table_file(tmp_path / "s.npy"), t)


def test_unreadable_table_file(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot read substrate table"):
        load_table_file(bad)
    with pytest.raises(FileNotFoundError):
        load_table_file(tmp_path / "missing.npy")


def test_a_fingerprint_in_words_has_one_home():
    """merge's and grow --from's messages word fingerprints with substrate.tables.describe_fingerprint."""
    from mlx_grow.substrate.tables import describe_fingerprint, fingerprint_diff

    a = fingerprint(SubstrateArgs(kind="binary", bits=8), id_bits(256, 8))
    b = fingerprint(SubstrateArgs(kind="binary", bits=8, order="lsb"), id_bits(256, 8, "lsb"))
    assert describe_fingerprint(a) == f"binary(bits=8, order=msb) [256, 8] (sha256 {a['sha256'][:12]}…)"
    assert describe_fingerprint(SubstrateArgs(kind="gf2").recipe()) == "gf2(bits=16, seed=0)"
    assert describe_fingerprint("0123456789abcdef") == "0123456789ab…" and describe_fingerprint(None) == "none recorded"
    assert fingerprint_diff(a, b) == "order=msb vs order=lsb"
    assert fingerprint_diff(a, dict(a, sha256="x")) == "the same recipe, another table"
