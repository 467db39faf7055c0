"""Export mlx-grow models to Hugging Face layouts (Starcoder2, GPT-NeoX)."""

import json
import shutil
from pathlib import Path

import numpy as np

from mlx_grow.base import UserError, brief
from mlx_grow.checkpoint import (
    ADAPTER,
    CONFIG,
    EXPERTS,
    FORMAT_VERSION,
    SUBSTRATE,
    load_args,
    read_meta,
    verify_files,
)
from mlx_grow.convert.common import (
    EXPORT_META,
    NEOX,
    OUT_DTYPES,
    TARGETS,
    block_shapes,
    permute_heads,
    rope_perm,
)
from mlx_grow.io import atomic_dir
from mlx_grow.io.atomic import write_marker
from mlx_grow.io.paths import inside
from mlx_grow.io.tensors import SHARD_BYTES, Source, write_weights
from mlx_grow.model import ModelArgs
from mlx_grow.substrate.files import load_table_file
from mlx_grow.substrate.tables import expand, fingerprint
from mlx_grow.tokenizer import copy_tokenizer


def hf_config(args: ModelArgs, to: str, dtype: str, tok=None) -> dict:
    """config.json that transformers and mlx-lm read with no custom code. The
    top-level rope_theta matters: mlx-lm ignores rope_parameters."""
    theta, act = args.rope_theta, "gelu_pytorch_tanh" if args.hidden_act == "gelu_tanh" else "gelu"
    common = dict(vocab_size=args.vocab_size, hidden_size=args.hidden_size, intermediate_size=args.intermediate_size,
                  num_hidden_layers=args.num_hidden_layers, num_attention_heads=args.num_attention_heads,
                  num_key_value_heads=args.num_attention_heads, max_position_embeddings=args.max_position_embeddings,
                  hidden_act=act, tie_word_embeddings=False, rope_theta=theta, use_cache=True, dtype=dtype,
                  bos_token_id=getattr(tok, "bos_id", None), eos_token_id=getattr(tok, "eos_id", None))
    if to == "starcoder2":
        return dict(architectures=["Starcoder2ForCausalLM"], model_type="starcoder2", **common,
                    norm_epsilon=args.norm_eps, use_bias=True, sliding_window=None,
                    rope_parameters={"rope_type": "default", "rope_theta": theta},
                    attention_dropout=0.0, residual_dropout=0.0, embedding_dropout=0.0)
    return dict(architectures=["GPTNeoXForCausalLM"], model_type="gpt_neox", **common, layer_norm_eps=args.norm_eps,
                use_parallel_residual=False, rotary_pct=1.0, rotary_emb_base=theta, attention_bias=True,
                rope_parameters={"rope_type": "default", "rope_theta": theta, "partial_rotary_factor": 1.0})


def plan_export(src, args: ModelArgs, to: str, st: str):
    """The write plan of one model in the target's names, every tensor checked
    against config.json first; an interleaved-rope model's q/k rows are
    permuted to rotate-half."""
    V, d, H = args.vocab_size, args.hidden_size, args.num_attention_heads
    want = {"substrate.table": None, "norm.weight": (d,), "norm.bias": (d,), "lm_head.weight": (V, d),
            **{f"layers.{i}.{k}": s for i in range(args.num_hidden_layers) for k, s in block_shapes(args).items()}}
    for k, s in want.items():
        if k not in src.names:
            raise UserError(f"{src.root} has no tensor {k}: the model directory is incomplete")
        if s is not None and tuple(src.shape(k)) != s:
            raise UserError(f"tensor {k} in {src.root} has shape {list(src.shape(k))}, config.json says {list(s)}")
    extra = sorted(set(src.names) - set(want))
    if extra:
        raise UserError(f"{src.root} has tensors its config.json does not describe: {', '.join(extra[:6])}")
    table = src.get("substrate.table")
    if table.shape[0] != V or d % table.shape[1]:
        raise UserError(f"substrate.table in {src.root} is {list(table.shape)}; expected [{V}, w], w dividing {d}")
    perm = rope_perm(d // H, to_half=True) if args.rope_traditional else None

    def get(k):
        w = src.get(k)
        return permute_heads(w, H, perm) if perm is not None and (".q_proj." in k or ".k_proj." in k) else w

    def qkv(i, p):  # GPT-NeoX fuses q, k, v per head: rows [h][q, k, v]
        parts = [get(f"layers.{i}.self_attn.{x}_proj.{p}") for x in "qkv"]
        return np.stack([a.reshape(H, d // H, *a.shape[1:]) for a in parts], 1).reshape(3 * d, *parts[0].shape[1:])

    neox = to == "gpt-neox"
    plan = [("gpt_neox.embed_in.weight" if neox else "model.embed_tokens.weight", (V, d), st,
             lambda: expand(table, d, args.substrate.expansion))]
    for i in range(args.num_hidden_layers):
        for k, s in block_shapes(args).items():
            m, p = k.rsplit(".", 1)
            if not neox:
                plan.append((f"model.layers.{i}.{k}", s, st, lambda k=f"layers.{i}.{k}": get(k)))
            elif m in NEOX:
                plan.append((f"gpt_neox.layers.{i}.{NEOX[m]}.{p}", s, st, lambda k=f"layers.{i}.{k}": get(k)))
            elif m == "self_attn.q_proj":
                plan.append((f"gpt_neox.layers.{i}.attention.query_key_value.{p}", (3 * d, *s[1:]), st,
                             lambda i=i, p=p: qkv(i, p)))
    pre = "gpt_neox.final_layer_norm" if neox else "model.norm"
    plan += [(f"{pre}.{p}", (d,), st, lambda p=p: get(f"norm.{p}")) for p in ("weight", "bias")]
    plan.append(("embed_out.weight" if neox else "lm_head.weight", (V, d), st, lambda: get("lm_head.weight")))
    return plan, table


def export_model(model_dir, out, to="starcoder2", dtype="float32", overwrite=False, shard_bytes=SHARD_BYTES) -> dict:
    """Export a mlx-grow model (or a merge: each expert, plus the combiner) as
    a Hugging Face directory. Returns a report with notes."""
    if to not in TARGETS:
        raise UserError(f"unknown export target {brief(to)}: use {' or '.join(TARGETS)}")
    if dtype not in OUT_DTYPES:
        raise UserError(f"dtype must be one of {', '.join(OUT_DTYPES)}, got {brief(dtype)}")
    model_dir = Path(model_dir)
    if not (model_dir / CONFIG).is_file():
        raise FileNotFoundError(f"{model_dir} is not a mlx-grow model directory (no config.json)")
    if load_args(model_dir).norm != "layernorm":
        raise UserError(f"{model_dir} uses RMSNorm (model.norm: rmsnorm); Starcoder2 and GPT-NeoX have LayerNorm "
                        "with a bias, so neither can hold it: export needs a model.norm: layernorm model")
    meta = read_meta(model_dir)
    verify_files(model_dir, meta)
    with atomic_dir(out, overwrite=overwrite, inputs=[model_dir], marker=EXPORT_META) as tmp:
        if "experts" in meta:
            notes = export_merged(model_dir, meta, tmp, to, dtype, shard_bytes)
        else:
            notes = export_one(model_dir, meta, tmp, to, dtype, shard_bytes)
    return {"out": str(out), "target": to, "dtype": dtype, "notes": notes}


def export_one(model_dir: Path, meta: dict, tmp: Path, to, dtype, shard_bytes, table=None, tok_dir=None) -> list:
    from mlx_grow.tokenizer import load_tokenizer

    args, src = load_args(model_dir), Source(model_dir)
    if table is not None:  # a merge's expert: the shared table is stored beside the experts
        src.add("substrate.table", table)
    plan, table = plan_export(src, args, to, OUT_DTYPES[dtype])
    write_weights(tmp, plan, {"format": "pt"}, shard_bytes)
    tok = load_tokenizer(tmp) if copy_tokenizer(tok_dir or model_dir, tmp) else None
    (tmp / "config.json").write_text(json.dumps(hf_config(args, to, dtype, tok), indent=2))
    keep = {k: v for k, v in meta.items() if k not in ("files", "format_version", "substrate", "tokenizer")}
    write_marker(tmp, EXPORT_META, {
        "format_version": FORMAT_VERSION, "target": to, "dtype": dtype, "model_args": args.to_dict(),
        "table_width": int(table.shape[1]), "substrate": fingerprint(args.substrate, table),
        "tokenizer": meta.get("tokenizer"), "model_meta": keep})
    other = "gpt-neox" if to == "starcoder2" else "starcoder2"
    notes = [] if tok else ["no tokenizer in the model directory: transformers and mlx-lm need one"]
    if (to == "gpt-neox") == (args.hidden_act == "gelu"):
        notes.append(f"mlx-lm's {to} port uses the {'tanh' if to == 'gpt-neox' else 'exact'} GELU: outputs there "
                     f"differ slightly (transformers matches); export --to {other} for an exact match in both")
    if to == "gpt-neox" and args.intermediate_size != 4 * args.hidden_size:
        notes.append("mlx-lm's GPT-NeoX assumes a 4x MLP; this model's differs, so only transformers loads it")
    if args.rope_traditional:
        notes.append("interleaved rotary: q/k rows permuted to rotate-half (outputs unchanged)")
    return notes


def export_merged(model_dir: Path, meta: dict, tmp: Path, to, dtype, shard_bytes) -> list:
    """Each expert as its own Hugging Face directory under experts/N (each loads
    on its own), plus the combiner and any fusion adapter for a re-import."""
    notes, experts = [], []
    table = load_table_file(model_dir / SUBSTRATE)
    for i, e in enumerate(meta["experts"]):
        sub = tmp / EXPERTS / str(i)
        sub.mkdir(parents=True)
        m = {"substrate": meta.get("substrate"), "tokenizer": meta.get("tokenizer"), "lineage": e.get("lineage")}
        src = inside(model_dir, e.get("dir") if isinstance(e, dict) else None,
                     "the mlx_grow.json `experts[].dir` entry", kind="dir")
        notes += [f"expert {i}: {n}" for n in export_one(src, m, sub, to, dtype, shard_bytes,
                                                          table, model_dir)]
        experts.append({"dir": f"{EXPERTS}/{i}", "origin": e.get("origin"), "lineage": e.get("lineage")})
    if (model_dir / ADAPTER).is_file():
        shutil.copy2(model_dir / ADAPTER, tmp / ADAPTER)
    copy_tokenizer(model_dir, tmp)
    write_marker(tmp, EXPORT_META, {
        "format_version": FORMAT_VERSION, "target": to, "dtype": dtype, "substrate": meta.get("substrate"),
        "tokenizer": meta.get("tokenizer"), "merge": {"experts": experts, "combiner": meta["combiner"],
                                                      "tuned": meta.get("tuned")}})
    return notes + [f"a merge exports as its experts plus the combiner in {EXPORT_META}"]
