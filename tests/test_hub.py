"""Hub ids (`org/name`, `--revision`) for load, generate, eval and convert import /
inspect, read from a huggingface_hub cache that the tests lay out as the library does
(blobs, snapshots linking to them, refs). Offline throughout: a test that opens a
network connection fails."""

import hashlib
import json
import os
import shutil
import socket
from pathlib import Path
from types import SimpleNamespace

import mlx.core as mx
import pytest
from helpers import grown_and_exported
from typer.testing import CliRunner

import mlx_grow
from mlx_grow.base import UserError
from mlx_grow.cli import app
from mlx_grow.generate import encode_prompt
from mlx_grow.io.hub import is_hub_id

hub_lib = pytest.importorskip("huggingface_hub")
runner = CliRunner()
PROMPT = "In the beginning God"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{name: folder}: a grown model, its first stage, and the Starcoder2 export of each."""
    from mlx_grow.convert import export_model

    root = tmp_path_factory.mktemp("hub-models")
    run, hf = grown_and_exported(root)
    export_model(run / "stage-01", root / "hf-stage-01")
    return {"final": run / "final", "stage-01": run / "stage-01", "hf": hf, "hf-stage-01": root / "hf-stage-01"}


def cache_snapshot(cache: Path, repo_id: str, src: Path, ref: str = "main") -> str:
    """Lay out folder `src` as huggingface_hub's cache holds a downloaded snapshot of
    `repo_id`: models--org--name/blobs/<hash>, snapshots/<commit>/<path> a relative
    link to its blob, refs/<ref> holding the commit. Returns the commit."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    files = sorted(p for p in src.rglob("*") if p.is_file())
    commit = hashlib.sha1(b"".join(f.relative_to(src).as_posix().encode() + f.read_bytes() for f in files)).hexdigest()
    for f in files:
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, blob)
        link = repo / "snapshots" / commit / f.relative_to(src)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return commit


@pytest.fixture
def hub(tmp_path, monkeypatch, models):
    """An offline huggingface_hub cache holding org/grown (main: the grown model, v1: its
    first stage) and org/exported (main: the export, v1: the first stage's export)."""
    import huggingface_hub.constants as C

    cache = tmp_path / "hf-cache"
    for var, value in (("HF_HUB_OFFLINE", "1"), ("HF_HUB_CACHE", str(cache)), ("HF_HOME", str(tmp_path / "hf"))):
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(C, "HF_HUB_OFFLINE", True)  # the library read the environment when first imported
    monkeypatch.setattr(C, "HF_HUB_CACHE", str(cache))

    def no_network(*a, **k):
        raise AssertionError("a test opened a network connection")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    commits = {"grown": cache_snapshot(cache, "org/grown", models["final"]),
               "grown@v1": cache_snapshot(cache, "org/grown", models["stage-01"], ref="v1"),
               "exported": cache_snapshot(cache, "org/exported", models["hf"]),
               "exported@v1": cache_snapshot(cache, "org/exported", models["hf-stage-01"], ref="v1")}
    return SimpleNamespace(cache=cache, commits=commits)


def logits(model, tok):
    return model(mx.array([encode_prompt(tok, PROMPT)]))


def same_model(a, b) -> bool:
    return len(a[0].layers) == len(b[0].layers) and mx.array_equal(logits(*a), logits(*b)).item()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_hub_id_shapes():
    for spec in ("org/name", "Org-1/model_v2.5", "a/b"):
        assert is_hub_id(spec), spec
    for spec in ("name", "./org/name", "/org/name", "~/org/name", "org/name/extra", "org/model.safetensors",
                 "runs/c.yaml", "org//name", "-org/name", "org/na--me", "org/..", ""):
        assert not is_hub_id(spec), spec


def test_load_hub_id_revision_and_export(hub, models):
    final, first = mlx_grow.load(models["final"]), mlx_grow.load(models["stage-01"])
    assert not same_model(final, first)
    assert same_model(mlx_grow.load("org/grown"), final)
    assert same_model(mlx_grow.load("org/grown", revision="v1"), first)
    assert same_model(mlx_grow.load("org/grown", revision=hub.commits["grown@v1"]), first)  # a commit
    assert same_model(mlx_grow.load("org/exported"), final)  # our export, imported in memory
    assert same_model(mlx_grow.load("org/exported", revision="v1"), first)


def test_generate_cli_with_hub_id(hub, models):
    texts = [mlx_grow.generate(*mlx_grow.load(models[m]), PROMPT, max_tokens=6) for m in ("final", "stage-01")]
    assert texts[0] != texts[1]
    for args, want in ((["--model", "org/grown"], texts[0]), (["--model", "org/grown", "--revision", "v1"], texts[1]),
                       (["-m", "org/exported"], texts[0])):
        r = invoke("generate", *args, "-p", PROMPT, "-n", 6)
        assert r.exit_code == 0, r.output
        assert want in r.output and f"using {hub.cache}" in r.output


def test_convert_import_and_inspect_hub_id(hub, models, tmp_path):
    r = invoke("convert", "import", "org/exported", "-o", tmp_path / "a")
    assert r.exit_code == 0, r.output
    assert "imported org/exported" in r.output and r.output.strip().splitlines()[-1] == str(tmp_path / "a")
    assert same_model(mlx_grow.load(tmp_path / "a"), mlx_grow.load(models["final"]))
    r = invoke("convert", "import", "--hf-path", "org/exported", "--revision", "v1", "-o", tmp_path / "b")
    assert r.exit_code == 0, r.output
    assert same_model(mlx_grow.load(tmp_path / "b"), mlx_grow.load(models["stage-01"]))
    r = invoke("convert", "inspect", "org/exported", "--revision", "v1")
    assert r.exit_code == 0, r.output
    assert "layout: starcoder2, 1 layers" in r.output and "model.layers.0.mlp.c_fc.weight" in r.output


def test_eval_cli_with_hub_id(hub, models, tmp_path):
    text = tmp_path / "held-out.txt"
    text.write_text("In the beginning God created the heaven and the earth.\n", encoding="utf-8")
    r = invoke("eval", "--model", "org/grown", "--model", models["final"], "--revision", "v1", "--text", text,
               "-o", tmp_path / "report", "--no-progress")
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    names = [m["name"] for m in report["models"]]
    assert names == ["org/grown", "run/final"] and [m["depth"] for m in report["models"]] == [1, 2]
    ppl = [t["ppl"] for t in report["texts"]]
    assert len(ppl) == 2 and ppl[0] != ppl[1]


def test_not_cached_while_offline_is_one_line(hub):
    with pytest.raises(UserError, match=r"^org/missing is not a local path, so it was looked up as a Hub "
                                        r"repository: offline \(HF_HUB_OFFLINE is set\) and it is not in the "
                                        r"Hugging Face cache .*: unset HF_HUB_OFFLINE"):
        mlx_grow.load("org/missing")
    with pytest.raises(UserError, match=r"org/grown .* at revision v9: offline"):
        mlx_grow.load("org/grown", revision="v9")
    r = invoke("generate", "--model", "org/missing", "-p", PROMPT)
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and "HF_HUB_OFFLINE" in r.output


def http_error(kind, status):
    from huggingface_hub import errors

    return getattr(errors, kind)(f"{status} from the Hub", response=SimpleNamespace(headers={}, request=None,
                                                                                     status_code=status))


@pytest.mark.parametrize("kind,status,message", [
    ("RepositoryNotFoundError", 404, r"no such repository on the Hub \(or it is private\): check the id.*HF_TOKEN"),
    ("GatedRepoError", 403, r"it is a gated repository: accept its licence on its Hub page, then log in with "
                            r"`hf auth login` \(or set HF_TOKEN\)"),
    ("RevisionNotFoundError", 404, r"the repository has no revision 'v9': give a branch, tag or commit"),
])
def test_hub_errors_say_what_to_do(hub, monkeypatch, kind, status, message):
    import huggingface_hub.constants as C

    monkeypatch.setattr(C, "HF_HUB_OFFLINE", False)  # as online; the Hub's answer is simulated

    def refuse(repo_id, **kw):
        raise http_error(kind, status)

    monkeypatch.setattr(hub_lib, "snapshot_download", refuse)
    with pytest.raises(UserError, match=r"^org/private is not a local path, so it was looked up as a Hub repository"
                                        r"( at revision v9)?: " + message):
        mlx_grow.load("org/private", revision="v9")
    r = invoke("convert", "inspect", "org/private", "--revision", "v9")
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1


def test_connection_error_falls_back_to_the_cache(hub, monkeypatch, models):
    import huggingface_hub.constants as C

    monkeypatch.setattr(C, "HF_HUB_OFFLINE", False)
    real, calls = hub_lib.snapshot_download, []

    def unreachable(repo_id, local_files_only=False, **kw):
        calls.append(local_files_only)
        if not local_files_only:
            raise ConnectionError("connection refused")
        return real(repo_id, local_files_only=True, **kw)

    monkeypatch.setattr(hub_lib, "snapshot_download", unreachable)
    assert same_model(mlx_grow.load("org/grown"), mlx_grow.load(models["final"])) and calls == [False, True]
    with pytest.raises(UserError, match=r"the Hub could not be reached \(ConnectionError\) and it is not in the "
                                        r"Hugging Face cache"):
        mlx_grow.load("org/missing")


def test_local_paths_win_and_never_reach_the_hub(hub, monkeypatch, models, tmp_path):
    def called(*a, **k):
        raise AssertionError("a local path was sent to the Hub")

    monkeypatch.setattr(hub_lib, "snapshot_download", called)
    monkeypatch.chdir(tmp_path)
    for spec in ("./org/missing", "org/missing/deeper", "org/model.safetensors", str(tmp_path / "org" / "x"),
                 "~/org-missing"):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            mlx_grow.load(spec)
    shutil.copytree(models["stage-01"], tmp_path / "org" / "grown")  # a local folder shaped like a Hub id
    assert same_model(mlx_grow.load("org/grown"), mlx_grow.load(models["stage-01"]))
    with pytest.raises(UserError, match=r"--revision v1 applies to a Hub id, but org/grown is a local path"):
        mlx_grow.load("org/grown", revision="v1")
    (tmp_path / "t.txt").write_text("some text\n")
    for args, missing in ((["convert", "import", "./org/missing", "-o", "out"], "org/missing"),
                          (["convert", "inspect", "a/b/c"], "a/b/c"),
                          (["convert", "verify", "missing_dir", "org/grown"], "missing_dir"),
                          (["eval", "--model", "./org/missing", "--text", "t.txt"], "org/missing")):
        r = invoke(*args)
        assert r.exit_code == 2 and f"{missing} does not exist" in r.output, (args, r.output)


def test_snapshot_links_outside_the_repository_blobs_are_refused(hub, tmp_path):
    snap = hub.cache / "models--org--grown" / "snapshots" / hub.commits["grown"]
    outside = tmp_path / "config.json"
    shutil.copyfile(snap / "config.json", outside)
    (snap / "config.json").unlink()
    (snap / "config.json").symlink_to(outside)
    with pytest.raises(ValueError, match="'config.json' points outside"):
        mlx_grow.load("org/grown")
