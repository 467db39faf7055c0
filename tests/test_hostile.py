"""Hostile input: one table of bad inputs, each run through the command line (in
this process), each asserting the exit code (2 bad input, 1 a failure during the
work, 130 Ctrl-C), the message, and that every file outside the command's
intended output is byte-identical before and after.

Every case runs in a fresh copy of one small world (models, a merge, exports, a
finished grow run, a corpus), with that copy as the working directory. `new`
marks the cases that failed before issue 15 (they were fixed with it); the others
were already handled and stay here so they keep being handled. docs/reliability.md
describes the table (`python tests/test_hostile.py` prints the counts).
"""

import hashlib
import io
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from helpers import as_torch_zip, char_tokenizer, evil_pickle, kjv_slice, tiny_args

ROOT = Path(__file__).resolve().parents[1]


# --- the world every case starts from ---


def build_world(root: Path):
    """Models a, b (one tokenizer), c (another tokenizer), long (a 4096-token context),
    merged (a + b), hf (a exported), hfm (merged exported), a finished grow run, a corpus."""
    import string

    from mlx_grow.checkpoint import save_model
    from mlx_grow.config import load_config
    from mlx_grow.convert.export import export_model
    from mlx_grow.merge.build import merge
    from mlx_grow.model import Model, init_weights
    from mlx_grow.training.grow import grow

    tok = char_tokenizer(root / "tok")
    tok2 = char_tokenizer(root / "tok2", chars=string.ascii_letters + " .")

    def model(name, t, seed, **kw):
        m = Model(tiny_args(vocab_size=t.vocab_size, substrate={"kind": "binary", "bits": 8}, **kw))
        init_weights(m, seed)
        return save_model(m, root / name, t, meta={"lineage": {"run": f"runs/{name}", "stage": 1}})

    model("a", tok, 0)
    model("b", tok, 1)
    model("c", tok2, 2)
    model("long", tok, 3, max_position_embeddings=4096)
    merge([root / "a", root / "b"], root / "merged", echo=lambda *a, **k: None)
    export_model(root / "a", root / "hf")
    export_model(root / "merged", root / "hfm")
    kjv_slice(root / "corpus.txt", 30)
    (root / "run.yaml").write_text(yaml.safe_dump({
        "tokenizer": "tok",
        "model": {"vocab_size": tok.vocab_size, "hidden_size": 32, "num_hidden_layers": 2,
                  "num_attention_heads": 2, "max_position_embeddings": 32,
                  "substrate": {"kind": "binary", "bits": 8}},
        "data": {"sources": ["corpus.txt"]},
        "grow": {"stages": [1, 1], "steps_per_stage": 2},
        "train": {"batch_size": 2, "seq_len": 16, "eval_every": 0, "val_batches": 1, "checkpoint_every": 2,
                  "warmup_steps": 1, "log_every": 1}}))
    cwd = os.getcwd()
    os.chdir(root)  # the run records relative paths, so every copy of the world resumes it
    try:
        grow(load_config("run.yaml"), "run", progress=False, echo=lambda *a, **k: None)
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile") / "world"
    root.mkdir()
    build_world(root)
    return root


def snapshot(root: Path) -> dict:
    """Every path under `root`: a sha256 for files, the target for links, the
    kind for anything else (a FIFO is never opened)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            mode = os.lstat(p).st_mode
            if stat.S_ISLNK(mode):
                out[rel] = "link -> " + os.readlink(p)
            elif stat.S_ISDIR(mode):
                out[rel] = "dir"
            elif stat.S_ISREG(mode):
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[rel] = f"special {stat.S_IFMT(mode):o}"
    return out


def outside(snap: dict, outputs) -> dict:
    return {k: v for k, v in snap.items() if not any(k == o or k.startswith(o + "/") for o in outputs)}


# --- setups: each changes the world copy `w` before the command runs ---


def edit_json(path: Path, fn):
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d, indent=1))


def edit_text(name, old, new):
    def setup(w):
        text = (w / name).read_text()
        assert old in text
        (w / name).write_text(text.replace(old, new, 1))
    return setup


def write(name, text):
    return lambda w: (w / name).write_text(text, encoding="utf-8")


def torch_file(name, payload: bytes, container="zip"):
    return lambda w: (w / name).write_bytes(as_torch_zip(payload) if container == "zip" else payload)


def bytearray_payload() -> bytes:
    """Protocol 4: builtins.bytearray(10**15) (STACK_GLOBAL, then REDUCE)."""
    def s(x):
        return b"\x8c" + bytes([len(x)]) + x.encode()
    return b"\x80\x04" + s("builtins") + s("bytearray") + b"\x93" + b"\x8a\x07" + (10**15).to_bytes(7, "little") \
        + b"\x85R."


def broadcast_tensor_zip() -> bytes:
    """A valid torch zip whose one tensor is a stride-0 view of a 4-float storage
    with shape (10**6, 10**6): 4 TB once copied."""
    def x(v):
        return b"X" + struct.pack("<I", len(v)) + v.encode()
    pid = b"(" + x("storage") + b"ctorch\nFloatStorage\n" + x("0") + x("cpu") + b"K\x04tQ"
    pkl = (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(" + pid + b"K\x00"
           + b"(J" + struct.pack("<i", 10**6) + b"J" + struct.pack("<i", 10**6) + b"t(K\x00K\x00t\x89"
           + b"ccollections\nOrderedDict\n)Rt" + b"R.")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/data/0", b"\x00" * 16)
        zf.writestr("archive/version", "3\n")
    return buf.getvalue()


def zip_bomb(w):
    with zipfile.ZipFile(w / "bomb.pt", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", b"\x00" * (20 << 20))


def unfinished(w):
    shutil.rmtree(w / "run" / "final")


def damage_all_checkpoints(w):
    unfinished(w)
    for ckpt in (w / "run" / "checkpoints").iterdir():
        f = ckpt / "model.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def damage_newest_checkpoint(w):
    unfinished(w)
    f = w / "run" / "checkpoints" / "step-000004" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-64])


def escaping_checkpoint_entry(w):
    unfinished(w)
    edit_json(w / "run" / "checkpoints" / "step-000004" / "mlx_grow.json",
              lambda d: d["files"].update({"../../../corpus.txt": "0" * 64}))


def escaping_shard_index(w):
    (w / "a" / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"lm_head.weight": "../../../../../etc/hostname"}}))


def files_entry(name):
    return lambda w: edit_json(w / "a" / "mlx_grow.json", lambda d: d["files"].update({name: "0" * 64}))


def fifo_entry(w):
    os.mkfifo(w / "a" / "pipe")
    files_entry("pipe")(w)


def symlinked_weights(w):
    (w / "a" / "model.safetensors").unlink()
    (w / "a" / "model.safetensors").symlink_to(w / "b" / "model.safetensors")


def merged_expert_outside(w):
    edit_json(w / "merged" / "mlx_grow.json", lambda d: d["experts"][0].update(dir="../a"))


def export_expert_outside(w):
    edit_json(w / "hfm" / "mlx_grow_export.json", lambda d: d["merge"]["experts"][0].update(dir="../hf"))


def hf_index_outside(w):
    (w / "hf" / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"model.norm.weight": "../a/model.safetensors"}}))


def notes_in(name):
    def setup(w):
        shutil.copytree(w / "a", w / name)
        (w / name / "notes.txt").write_text("mine")
    return setup


def folder_with(name, file="keep.txt"):
    def setup(w):
        (w / name).mkdir()
        (w / name / file).write_text("mine")
    return setup


def copy_of_a(name):
    return lambda w: shutil.copytree(w / "a", w / name)


def truncate(path, keep=0.5):
    def setup(w):
        f = w / path
        f.write_bytes(f.read_bytes()[: int(f.stat().st_size * keep)])
    return setup


def task_file(name, rows):
    return write(name, "\n".join(json.dumps(r) for r in rows) + "\n")


def both(*setups):
    def setup(w):
        for s in setups:
            s(w)
    return setup


def small_memory(monkeypatch):
    from mlx_grow.training import memory

    monkeypatch.setattr(memory, "machine_memory", lambda: (4 << 30, "test machine"))


# --- the table ---


@dataclass
class Case:
    id: str
    args: list
    code: int
    message: str  # a regex the output (stdout + stderr) must contain
    setup: object = None  # setup(w) before the command
    outputs: tuple = ()  # paths the command may create or change; everything else stays byte-identical
    new: bool = False  # failed before issue 15
    env: dict = field(default_factory=dict)
    patch: object = None  # patch(monkeypatch)
    stdout: str = None  # a regex stdout must match in full (results only, no bars or messages)


G = ["grow", "-c", "run.yaml", "--no-progress"]
GEN = ["generate", "-m", "a", "-p", "In the beginning", "-n", "3"]
PROMPT_LONG = "And God said, Let there be light: and there was light. " * 60  # 3,300 tokens

CASES = [
    # -- security: foreign code, paths that leave their folder, hostile pickles --
    Case("pickle-os-system-zip", ["convert", "inspect", "evil.pt"], 2, r"refusing to load os\.system",
         torch_file("evil.pt", evil_pickle("os", "system", "touch pwned"))),
    Case("pickle-os-system-plain", ["convert", "inspect", "evil.pt"], 2, r"refusing to load os\.system",
         torch_file("evil.pt", evil_pickle("os", "system", "touch pwned"), "plain")),
    Case("pickle-builtins-open", ["convert", "import", "evil.pt", "-o", "out"], 2, r"refusing to load builtins\.open",
         torch_file("evil.pt", evil_pickle("builtins", "open", "pwned", "w"))),
    Case("pickle-builtins-eval", ["convert", "inspect", "evil.pt"], 2, r"refusing to load builtins\.eval",
         torch_file("evil.pt", evil_pickle("builtins", "eval", "open('pwned', 'w')"))),
    Case("pickle-subprocess", ["convert", "inspect", "evil.pt"], 2, r"refusing to load subprocess\.check_call",
         torch_file("evil.pt", evil_pickle("subprocess", "check_call", "true"), "plain")),
    Case("pickle-posix-system", ["convert", "import", "evil.pt", "-o", "out"], 2, r"refusing to load posix\.system",
         torch_file("evil.pt", evil_pickle("posix", "system", "touch pwned"))),
    Case("pickle-bytearray-1e15", ["convert", "inspect", "evil.pt"], 2, r"refusing to load builtins\.bytearray",
         torch_file("evil.pt", bytearray_payload()), new=True),
    Case("pickle-broadcast-4tb", ["convert", "inspect", "evil.pt"], 2, r"refusing a tensor that large",
         lambda w: (w / "evil.pt").write_bytes(broadcast_tensor_zip()), new=True),
    Case("pickle-zip-bomb", ["convert", "inspect", "bomb.pt"], 2, r"expands to 20,971,520 bytes", zip_bomb, new=True),
    Case("pickle-not-torch", ["convert", "inspect", "x.pt"], 2, r"PyTorch", write("x.pt", "not a checkpoint")),
    Case("pickle-truncated-zip", ["convert", "inspect", "cut.pt"], 2, r"cannot read|not a PyTorch|zip",
         lambda w: (w / "cut.pt").write_bytes(as_torch_zip(evil_pickle("os", "system", "x"))[:40])),
    Case("index-escapes-folder", GEN, 2, r"model\.safetensors\.index\.json entry '\.\./.*' points outside a",
         escaping_shard_index, new=True),
    Case("manifest-lists-dev-zero", GEN, 2, r"mlx_grow\.json `files` entry '/dev/zero' points outside a",
         files_entry("/dev/zero"), new=True),
    Case("manifest-lists-parent", GEN, 2, r"`files` entry '\.\./b/model\.safetensors' points outside a",
         files_entry("../b/model.safetensors"), new=True),
    Case("manifest-lists-fifo", GEN, 2, r"`files` entry 'pipe' in a is not a regular file", fifo_entry, new=True),
    Case("weights-symlink-outside", GEN, 2, r"'model\.safetensors' points outside a", symlinked_weights, new=True),
    Case("merge-expert-dir-outside", ["generate", "-m", "merged", "-p", "x", "-n", "2"], 2,
         r"`experts\[\]\.dir` entry '\.\./a' points outside merged", merged_expert_outside, new=True),
    Case("export-expert-dir-outside", ["convert", "import", "hfm", "-o", "out"], 2,
         r"`experts\[\]\.dir` entry '\.\./hf' points outside hfm", export_expert_outside, new=True),
    Case("hf-index-outside", ["convert", "import", "hf", "-o", "out"], 2,
         r"model\.safetensors\.index\.json entry '\.\./a/model\.safetensors' points outside hf", hf_index_outside,
         new=True),
    Case("checkpoint-entry-outside", ["grow", "--resume", "run", "--no-progress"], 0,
         r"skipping damaged checkpoint run/checkpoints/step-000004: .*points outside", escaping_checkpoint_entry,
         outputs=("run",), new=True),
    # -- data loss: --overwrite, builds over existing files, finished and damaged runs --
    Case("merge-overwrite-parent-of-experts", ["merge", "a", "b", "--out", ".", "--overwrite"], 2,
         r"\. contains the input a: --overwrite never replaces a folder that holds an input", new=True),
    Case("merge-overwrite-foreign-folder", ["merge", "a", "b", "--out", "mine", "--overwrite"], 2,
         r"mine exists and has no mlx_grow\.json, so mlx-grow did not write it", folder_with("mine"), new=True),
    Case("merge-overwrite-file", ["merge", "a", "b", "--out", "corpus.txt", "--overwrite"], 2,
         r"corpus\.txt exists and is not a folder mlx-grow wrote", new=True),
    Case("merge-overwrite-model-with-notes", ["merge", "a", "b", "--out", "d", "--overwrite"], 2,
         r"d holds files mlx-grow did not write \(notes\.txt\)", notes_in("d"), new=True),
    Case("merge-overwrite-run-holding-expert", ["merge", "run/final", "b", "--out", "run", "--overwrite"], 2,
         r"run contains the input run/final", new=True),
    Case("merge-overwrite-ours", ["merge", "a", "b", "--out", "d", "--overwrite"], 0, r"merged 2 experts",
         copy_of_a("d"), outputs=("d",), stdout=r"d\n", new=True),
    Case("merge-out-exists", ["merge", "a", "b", "--out", "b2"], 2, r"b2 already exists", copy_of_a("b2")),
    Case("merge-out-is-expert", ["merge", "a", "b", "--out", "b", "--overwrite"], 2, r"--out b is one of the experts"),
    Case("merge-same-model-warns", ["merge", "a", "a", "--out", "aa"], 0,
         r"warning: experts a and a are the same model", outputs=("aa",), new=True),
    Case("merge-one-expert", ["merge", "a", "--out", "m"], 2, r"at least two expert"),
    Case("merge-missing-expert", ["merge", "a", "nope", "--out", "m"], 2,
         r"expert model directory nope does not exist"),
    Case("merge-a-merge", ["merge", "merged", "b", "--out", "m"], 2, r"merged is already a merge"),
    Case("merge-other-tokenizer", ["merge", "a", "c", "--out", "m"], 2, r"different tokenizers"),
    Case("merge-average-two-lineages", ["merge", "a", "b", "--out", "m", "--combiner", "average"], 2,
         r"one growth lineage"),
    Case("merge-bad-weights", ["merge", "a", "b", "--out", "m", "--combiner", "weighted", "--weights", "1,2,3"], 2,
         r"weights"),
    Case("export-over-input", ["convert", "export", "a", "-o", "a", "--overwrite"], 2, r"a contains the input a",
         new=True),
    Case("export-over-foreign-folder", ["convert", "export", "a", "-o", "mine", "--overwrite"], 2,
         r"mine exists and has no mlx_grow_export\.json", folder_with("mine"), new=True),
    Case("import-over-folder-of-input", ["convert", "import", "hf", "-o", ".", "--overwrite"], 2,
         r"\. contains the input hf", new=True),
    Case("import-over-ours", ["convert", "import", "hf", "-o", "d", "--overwrite"], 0, r"imported hf",
         copy_of_a("d"), outputs=("d",), stdout=r"d\n", new=True),
    Case("tokenizer-build-over-folder", ["tokenizer", "build", "2-3", "-o", "tok"], 2, r"tok already exists",
         new=True),
    Case("tokenizer-build-overwrite-not-ours", ["tokenizer", "build", "2-3", "-o", "tok", "--overwrite"], 2,
         r"tok exists and has no mlx_grow_tokenizer\.json", new=True),
    Case("tokenizer-train-over-file", ["tokenizer", "train", "corpus.txt", "--vocab-size", "300", "-o", "corpus.txt"],
         2, r"corpus\.txt already exists", new=True),
    Case("tokenizer-train-over-its-corpus", ["tokenizer", "train", "tok2/x.txt", "--vocab-size", "300", "-o", "tok2",
                                             "--overwrite"], 2, r"tok2 contains the input tok2/x\.txt",
         write("tok2/x.txt", "abc"), new=True),
    Case("substrate-build-over-file", ["substrate", "build", "tiny", "-o", "corpus.txt"], 2,
         r"corpus\.txt already exists", new=True),
    Case("substrate-build-overwrite-not-ours", ["substrate", "build", "tiny", "-o", "corpus.txt", "--overwrite"], 2,
         r"corpus\.txt is not a substrate file mlx-grow wrote", new=True),
    Case("resume-finished-run", ["grow", "--resume", "run", "--no-progress"], 0, r"run is finished: run/final holds "
         r"its model\. Nothing was changed", new=True, stdout=r"run/final\n"),
    Case("resume-every-checkpoint-damaged", ["grow", "--resume", "run", "--no-progress"], 2,
         r"every checkpoint of run is damaged \(step-000002, step-000004; .*--restart", damage_all_checkpoints,
         new=True),
    Case("resume-damaged-restart", ["grow", "--resume", "run", "--restart", "--no-progress"], 0,
         r"skipping damaged checkpoint", damage_all_checkpoints, outputs=("run",), new=True, stdout=r"run/final\n"),
    Case("resume-skips-damaged-newest", ["grow", "--resume", "run", "--no-progress"], 0,
         r"skipping damaged checkpoint run/checkpoints/step-000004: .*does not match its checksum.*\n.*resuming from "
         r"run/checkpoints/step-000002", damage_newest_checkpoint, outputs=("run",), stdout=r"run/final\n", new=True),
    Case("restart-without-resume", G + ["--restart", "-o", "new"], 2, r"--restart goes with --resume", new=True),
    # -- a failed run leaves nothing behind --
    Case("grow-missing-data", G + ["--data", "nope.txt", "-o", "new"], 2, r"data source nope\.txt not found",
         new=True),
    Case("grow-data-one-document", G + ["--data", "short.txt", "-o", "new"], 2,
         r"data source short\.txt has one document, and a validation split needs two", write("short.txt", "Short."),
         new=True),
    Case("grow-data-shorter-than-context", G + ["--data", "short", "-o", "new"], 2,
         r"data source short has \d+ training tokens, fewer than one context",
         both(lambda w: (w / "short").mkdir(), write("short/1.txt", "Hi."), write("short/2.txt", "Yo.")), new=True),
    Case("grow-depth-does-not-fit", G + ["--depth", "100000", "--stages", "50000,50000", "-o", "new"], 2,
         r"stage \d is predicted to need .* but this machine has 4\.00 GiB.*lower the depth", patch=small_memory,
         new=True),
    Case("grow-out-is-a-file", G + ["-o", "corpus.txt"], 2, r"--out corpus\.txt exists and is not a folder", new=True),
    Case("grow-out-is-someone-elses-folder", G + ["-o", "tok"], 2, r"--out tok is a folder with other files in it",
         new=True),
    Case("grow-out-under-a-file", G + ["-o", "corpus.txt/run"], 2, r"corpus\.txt/run: Not a directory", new=True),
    Case("grow-out-holds-a-run", G + ["-o", "run"], 2, r"run already holds a run; continue it with --resume run",
         new=True),
    Case("grow-tokenizer-vocab-mismatch", G + ["-o", "new"], 2, r"tokenizer tok2 has \d+ ids but model\.vocab_size",
         edit_text("run.yaml", "tokenizer: tok", "tokenizer: tok2")),
    Case("grow-ctrl-c", G + ["-o", "new"], 130,
         r"interrupted; continue with `mlx-grow grow --resume new` \(from step-000002\)", outputs=("new",),
         env={"MLX_GROW_FAULT": "interrupt@step:3"}, new=True),
    Case("grow-ctrl-c-before-checkpoint", G + ["-o", "new"], 130, r"interrupted before the first checkpoint",
         outputs=("new",), env={"MLX_GROW_FAULT": "interrupt@step:1"}, new=True),
    Case("grow-nan-loss", G + ["-o", "new"], 1, r"stopped\. The last good checkpoint is new/checkpoints/step-000002",
         outputs=("new",), env={"MLX_GROW_FAULT": "nan@step:3"}),
    Case("grow-disk-full", G + ["-o", "new"], 1, r"cannot write the step-000002 checkpoint", outputs=("new",),
         env={"MLX_GROW_FAULT": "enospc@checkpoint:2"}),
    Case("grow-results-on-stdout", G + ["-o", "new"], 0, r"stage 2/2 done", outputs=("new",), stdout=r"new/final\n",
         new=True),
    # -- ranges and types, named --
    Case("depth-zero", G + ["--depth", "0"], 2, r"model\.num_hidden_layers must be a positive integer, got 0"),
    Case("depth-negative", G + ["--depth", "-3"], 2, r"model\.num_hidden_layers must be a positive integer, got -3"),
    Case("steps-zero", G + ["--steps-per-stage", "0"], 2, r"grow\.steps_per_stage must be a positive integer"),
    Case("tokens-zero", G + ["--tokens-per-stage", "0"], 2, r"grow\.tokens_per_stage must be a positive integer"),
    Case("lr-negative", G + ["--lr", "-1"], 2, r"train\.lr must be a number > 0, got -1"),
    Case("lr-zero", G + ["--lr", "0"], 2, r"train\.lr must be a number > 0"),
    Case("batch-zero", G + ["--batch-size", "0"], 2, r"train\.batch_size must be a positive integer"),
    Case("seq-over-context", G + ["--seq-len", "100"], 2, r"train\.seq_len 100 exceeds the model context"),
    Case("stages-zero", G + ["--stages", "0,2"], 2, r"--stages must be positive block counts"),
    Case("stages-not-a-number", G + ["--stages", "1,x"], 2, r"--stages must be positive block counts.*'1,x'"),
    Case("stages-wrong-sum", G + ["--stages", "3,3"], 2, r"add up to 6 blocks but the depth is 2"),
    Case("block-init-unknown", G + ["--block-init", "magic"], 2, r"grow\.block_init must be one of"),
    Case("val-fraction-above-one", ["data", "prepare", "corpus.txt", "-t", "tok", "--val-fraction", "1.5", "-o", "sh"],
         2, r"--val-fraction must be a number from 0 to 0\.5.*got 1\.5", new=True),
    Case("val-fraction-negative", ["data", "prepare", "corpus.txt", "-t", "tok", "--val-fraction", "-0.1", "-o", "sh"],
         2, r"--val-fraction must be a number from 0 to 0\.5", new=True),
    Case("val-fraction-in-config", G + ["-o", "new"], 2, r"val_fraction must be between 0 and 0\.5",
         edit_text("run.yaml", "data:\n", "data:\n  val_fraction: 2\n")),
    # -- configs --
    Case("config-missing", ["grow", "-c", "nope.yaml"], 2, r"config nope\.yaml not found"),
    Case("config-is-a-folder", ["grow", "-c", "tok"], 2, r"config tok is not a file"),
    Case("config-system-folder", ["info", "/etc"], 2, r"config /etc is not a file"),
    Case("config-bad-yaml", ["grow", "-c", "bad.yaml"], 2, r"bad\.yaml is not valid YAML",
         write("bad.yaml", "model: [")),
    Case("config-not-utf8", ["info", "bin.yaml"], 2, r"cannot read config bin\.yaml",
         lambda w: (w / "bin.yaml").write_bytes(b"\xff\xfe\x00bad")),
    Case("config-unknown-section", ["info", "u.yaml"], 2, r"unknown key\(s\) modle in u\.yaml",
         write("u.yaml", "modle: {}\n")),
    Case("config-unknown-key", ["info", "u.yaml"], 2, r"unknown key\(s\) batch in train",
         write("u.yaml", "train: {batch: 3}\n")),
    Case("config-wrong-type", ["info", "u.yaml"], 2, r"train\.lr must be a number",
         write("u.yaml", "train: {lr: abc}\n")),
    Case("config-bad-dtype", ["info", "u.yaml"], 2, r"train\.dtype must be one of",
         write("u.yaml", "train: {dtype: int8}\n")),
    Case("config-section-not-mapping", ["info", "u.yaml"], 2, r"section train must be a mapping",
         write("u.yaml", "train: 3\n")),
    Case("config-markup-in-name", ["info", "a[/x]"], 2, r"config a\[/x\] not found"),
    Case("resume-missing", ["grow", "--resume", "nope"], 2, r"nothing to resume: nope/run\.json does not exist"),
    Case("resume-with-changing-flag", ["grow", "--resume", "run", "--lr", "1"], 2,
         r"these flags would change it: train\.lr"),
    Case("resume-with-config", ["grow", "--resume", "run", "-c", "run.yaml"], 2,
         r"these flags would change it: --config"),
    Case("resume-damaged-run-json", ["grow", "--resume", "run"], 2, r"run/run\.json is damaged",
         write("run/run.json", "{not json")),
    # -- messages: markup, OS errors, one line --
    Case("generate-help-markup", ["generate", "--help"], 0, r"\[INST\] …\s+(│\s+)*\[/INST\]", new=True),
    Case("path-with-markup-printed", ["substrate", "build", "tiny", "-o", "s[/x][v2].safetensors"], 0,
         r"wrote s\[/x\]\[v2\]\.safetensors", lambda w: (w / "s[").mkdir(), outputs=("s[/x][v2].safetensors",),
         new=True),
    Case("missing-path-with-markup", ["generate", "-m", "m[v2]", "-p", "x"], 2,
         r"model directory m\[v2\] does not exist"),
    Case("stats-on-a-folder", ["tokenizer", "stats", "tok", "tok"], 2, r"^error: tok: Is a directory; a folder is "
         r"where a file is expected", new=True),
    Case("stats-missing-file", ["tokenizer", "stats", "tok", "nope.txt"], 2, r"nope\.txt: No such file or directory",
         new=True),
    Case("eval-report-under-a-file", ["eval", "--model", "a", "--text", "corpus.txt", "-o", "corpus.txt/report"], 2,
         r"cannot create the report folder corpus\.txt/report: corpus\.txt is a file", new=True),
    Case("eval-report-is-a-file", ["eval", "--model", "a", "--text", "corpus.txt", "-o", "corpus.txt"], 2,
         r"--out corpus\.txt is a file, not a folder", new=True),
    Case("eval-nothing", ["eval", "--model", "a"], 2, r"nothing to evaluate"),
    Case("eval-protocol-unknown", ["eval", "--model", "a", "--text", "corpus.txt", "--protocol", "vibes"], 2,
         r"unknown protocol 'vibes'"),
    Case("eval-task-missing", ["eval", "--model", "a", "--task", "nope.jsonl"], 2,
         r"task file nope\.jsonl does not exist"),
    Case("eval-task-bad-row", ["eval", "--model", "a", "--task", "t.jsonl"], 2, r"t\.jsonl.*cannot tell the task kind",
         task_file("t.jsonl", [{"q": "x"}])),
    Case("eval-task-empty", ["eval", "--model", "a", "--task", "t.jsonl"], 2, r"is empty", write("t.jsonl", "")),
    Case("eval-model-missing", ["eval", "--model", "nope", "--text", "corpus.txt"], 2, r"model nope does not exist"),
    # -- generate --
    Case("generate-run-dir", ["generate", "-m", "run", "-p", "In", "-n", "2"], 0, r"using run/final", new=True),
    Case("generate-unfinished-run", ["generate", "-m", "run", "-p", "In"], 2,
         r"run is a grow run without a final/ model yet: use a stage model such as run/stage-02", unfinished, new=True),
    Case("generate-transformers-folder", ["generate", "-m", "hf", "-p", "In"], 2,
         r"hf is a Hugging Face \(transformers\) model.*`mlx-grow convert import hf -o hf-mlx`",
         lambda w: (w / "hf" / "mlx_grow_export.json").unlink(), new=True),
    Case("generate-our-export", ["generate", "-m", "hf", "-p", "In", "-n", "2"], 0, r"Generation: 2 tokens",
         new=True),
    Case("generate-prompt-over-context", ["generate", "-m", "a", "-p", PROMPT_LONG, "-n", "2"], 0,
         r"warning: the prompt has [\d,]+ tokens but the model.s context is 64: only its last 64", new=True),
    Case("generate-long-prompt-progress", ["generate", "-m", "long", "-p", PROMPT_LONG, "-n", "2"], 0,
         r"processing the prompt", new=True),
    Case("generate-mlx-lm-m-number", ["generate", "-m", "50", "-p", "x"], 2,
         r"-m means --model here; for the number of tokens use --max-tokens 50", new=True),
    Case("generate-mlx-lm-m-beside-model", ["generate", "--model", "a", "-m", "4", "-p", "In"], 0,
         r"Generation: 4 tokens", new=True),
    Case("generate-ctrl-c", GEN, 130, r"^error: interrupted$", new=True,
         patch=lambda mp: mp.setattr("mlx_grow.load", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))),
    Case("generate-missing-model", ["generate", "-m", "nope", "-p", "x"], 2, r"model directory nope does not exist"),
    Case("generate-no-prompt", ["generate", "-m", "a"], 2, r"give exactly one of --prompt"),
    Case("generate-empty-prompt", ["generate", "-m", "a", "-p", "  "], 2, r"the prompt is empty"),
    Case("generate-bad-temp", GEN + ["--temp", "-1"], 2, r"temperature must be >= 0"),
    Case("generate-bad-top-p", GEN + ["--top-p", "0"], 2, r"top_p must be in \(0, 1\]"),
    Case("generate-zero-tokens", ["generate", "-m", "a", "-p", "x", "-n", "0"], 2, r"max_tokens must be a positive"),
    Case("generate-prompt-file-missing", ["generate", "-m", "a", "--prompt-file", "nope.txt"], 2,
         r"prompt file nope\.txt does not exist"),
    Case("generate-prompt-file-empty", ["generate", "-m", "a", "--prompt-file", "e.txt"], 2, r"has no non-empty line",
         write("e.txt", "\n \n")),
    Case("generate-lone-surrogate", ["generate", "-m", "a", "-p", "a\udc80b"], 2, r"surrogate"),
    Case("generate-truncated-weights", GEN, 2, r"a/model\.safetensors does not match its checksum",
         truncate("a/model.safetensors")),
    Case("generate-corrupt-manifest", GEN, 2, r"a/mlx_grow\.json is corrupt", write("a/mlx_grow.json", "{")),
    Case("generate-missing-weights", GEN, 2, r"a/model\.safetensors is missing",
         lambda w: (w / "a" / "model.safetensors").unlink()),
    Case("generate-edited-config", GEN, 2, r"a/config\.json does not match its checksum",
         lambda w: edit_json(w / "a" / "config.json", lambda d: d.update(hidden_size=64))),
    # -- convert --
    Case("convert-both-src-and-hf-path", ["convert", "import", "hf", "--hf-path", "hf", "-o", "out"], 2,
         r"give the checkpoint \(CKPT\) once", new=True),
    Case("convert-mlx-lm-spelling", ["convert", "import", "--hf-path", "hf", "--mlx-path", "out"], 0, r"imported hf",
         outputs=("out",), new=True, stdout=r"out\n"),
    Case("convert-import-missing", ["convert", "import", "nope", "-o", "out"], 2, r"nope does not exist"),
    Case("convert-import-no-weights", ["convert", "import", "tok", "-o", "out"], 2, r"holds no \*\.safetensors"),
    Case("convert-import-truncated", ["convert", "import", "hf", "-o", "out"], 2, r"model\.safetensors",
         truncate("hf/model.safetensors", 0.3)),
    Case("convert-bad-expansion", ["convert", "import", "hf", "-o", "out", "--expansion", "wide"], 2,
         r"--expansion must be repeat or tile"),
    Case("convert-export-missing", ["convert", "export", "nope", "-o", "out"], 2, r"nope is not a mlx-grow model"),
    Case("convert-export-bad-target", ["convert", "export", "a", "-o", "out", "--to", "llama"], 2,
         r"unknown export target 'llama'"),
    Case("convert-export-bad-dtype", ["convert", "export", "a", "-o", "out", "--dtype", "int8"], 2,
         r"dtype must be one of"),
    Case("convert-export-exists", ["convert", "export", "a", "-o", "hf"], 2, r"hf already exists"),
    # -- data, tokenizer, substrate, info, plot --
    Case("data-missing-source", ["data", "prepare", "nope.txt", "-t", "tok", "-o", "sh"], 2,
         r"data source nope\.txt not found"),
    Case("data-unknown-file-type", ["data", "prepare", "x.xyz", "-t", "tok", "-o", "sh"], 2, r"unknown file type",
         write("x.xyz", "text")),
    Case("data-not-utf8", ["data", "prepare", "bin.txt", "-t", "tok", "-o", "sh"], 2, r"bin\.txt.*UTF-8",
         lambda w: (w / "bin.txt").write_bytes(b"ok \xff\xfe bad")),
    Case("data-empty-source", ["data", "prepare", "empty.txt", "-t", "tok", "-o", "sh"], 2, r"has no text",
         write("empty.txt", "")),
    Case("data-unknown-tokenizer", ["data", "prepare", "corpus.txt", "-t", "nope", "-o", "sh"], 2,
         r"tokenizer 'nope' not found"),
    Case("data-unknown-separator", ["data", "prepare", "corpus.txt", "-t", "tok", "--separator", "<nope>", "-o", "sh"],
         2, r"separator '<nope>' is not a token"),
    Case("data-info-missing", ["data", "info", "nope.txt", "-t", "tok"], 2, r"data source nope\.txt not found"),
    Case("tokenizer-unknown-variant", ["tokenizer", "build", "3-4", "-o", "new"], 2, r"unknown bvv241 variant '3-4'"),
    Case("tokenizer-missing", ["tokenizer", "encode", "nope", "hi"], 2, r"tokenizer 'nope' not found"),
    Case("tokenizer-lone-surrogate", ["tokenizer", "encode", "tok", "a\ud800"], 2, r"surrogate"),
    Case("tokenizer-json-garbage", ["tokenizer", "encode", "t.json", "hi"], 2, r"is not a tokenizers JSON file",
         write("t.json", "{}")),
    Case("substrate-show-not-safetensors", ["substrate", "show", "corpus.txt"], 2, r"cannot read corpus\.txt"),
    Case("substrate-show-no-fingerprint", ["substrate", "show", "a/model.safetensors"], 2, r"carries no substrate"),
    Case("info-missing", ["info", "nope"], 2, r"config nope not found"),
    Case("plot-missing", ["plot", "nope"], 2, r"nope"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile(case, world, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from mlx_grow.cli import app

    w = tmp_path / "w"
    shutil.copytree(world, w, symlinks=True)
    monkeypatch.chdir(w)
    monkeypatch.delenv("MLX_GROW_FAULT", raising=False)
    for k, v in case.env.items():
        monkeypatch.setenv(k, v)
    if case.patch:
        case.patch(monkeypatch)
    if case.setup:
        case.setup(w)
    before = snapshot(w)
    r = CliRunner().invoke(app, case.args)
    after = snapshot(w)
    shown = f"exit {r.exit_code}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"
    assert r.exception is None or isinstance(r.exception, SystemExit), (repr(r.exception), shown)
    assert r.exit_code == case.code, shown
    import re

    assert re.search(case.message, r.output, re.M | re.S), (case.message, shown)
    if case.code:  # one line, on stderr, naming what went wrong
        assert r.stderr.count("error:") == 1 and "Traceback" not in r.output, shown
        assert re.search(case.message, r.stderr, re.M | re.S), shown
    if case.stdout is not None:
        assert re.fullmatch(case.stdout, r.stdout), shown
    assert outside(after, case.outputs) == outside(before, case.outputs), "changed outside the intended output"
    assert not (w / "pwned").exists()


def test_every_help_renders():
    """Help texts are printed as written ([INST] is not markup), for every command."""
    import typer
    from typer.testing import CliRunner

    from mlx_grow.cli import app

    def paths(cmd, prefix=()):
        yield list(prefix)
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from paths(sub, (*prefix, name))

    root = typer.main.get_command(app)
    seen = 0
    for path in paths(root):
        r = CliRunner().invoke(app, [*path, "--help"])
        assert r.exit_code == 0 and r.exception is None, (path, r.output)
        seen += 1
    assert seen > 20


def test_tables_are_not_cut_when_piped():
    from typer.testing import CliRunner

    from mlx_grow.cli import app

    r = CliRunner().invoke(app, ["info", "paper-9l-glyph"])
    assert r.exit_code == 0 and "…" not in r.stdout
    assert max(map(len, r.stdout.splitlines())) > 80


def test_the_command_never_puts_the_working_directory_on_sys_path(tmp_path):
    """A yaml.py in the working directory must not run: the `mlx-grow` command
    runs in-process (no re-exec through `python -m`), from its console script."""
    (tmp_path / "yaml.py").write_text("raise SystemExit(3)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    planted = subprocess.run([sys.executable, "-m", "mlx_grow.cli", "info", "tiny"], cwd=tmp_path, env=env,
                             capture_output=True, timeout=300)
    assert planted.returncode == 3  # the payload is real: plain `python -m` runs it
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "mlx-grow"  # what pip writes for [project.scripts] mlx-grow = "mlx_grow.cli:main"
    script.write_text("import sys\nfrom mlx_grow.cli import main\nsys.argv[0] = 'mlx-grow'\nsys.exit(main())\n")
    r = subprocess.run([sys.executable, str(script), "info", "tiny"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "total" in r.stdout, r.stderr


def test_python_generate_takes_mlx_lm_sampler_and_logits_processors(world):
    import mlx.core as mx

    from mlx_grow import generate, load

    model, tok = load(world / "a")
    forced = tok.encode("z")[0]
    calls = []

    def processor(tokens, logits):
        calls.append(tokens.shape)
        return logits

    out = generate(model, tok, "In", max_tokens=4, sampler=lambda lp: mx.full((lp.shape[0],), forced, mx.uint32),
                   logits_processors=[processor])
    assert out == "zzzz" and len(calls) == 4 and len(calls[0]) == 1  # tokens so far, as mlx-lm passes them
    assert calls[1][0] == calls[0][0] + 1


if __name__ == "__main__":
    n_new = sum(c.new for c in CASES)
    print(f"{len(CASES)} cases: {n_new} fixed with issue 15, {len(CASES) - n_new} already handled")
