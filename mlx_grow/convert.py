"""Convert checkpoints: PyTorch / Hugging Face <-> mlx-grow model directories.

Import reads a checkpoint's tensors lazily (tensorio.py), finds its layout
(layouts.py), rebuilds the substrate table, and writes a mlx-grow model
directory (or a merge, for experts).
Export writes a Hugging Face directory that transformers and mlx-lm load with
no custom code (Starcoder2, or GPT-NeoX) plus `mlx_grow_export.json`, so a
re-import restores the substrate recipe and fingerprint exactly. Tensors are
streamed one at a time, and every output goes to a temp dir renamed on success.
"""

import json
import shutil
from pathlib import Path

import numpy as np

from mlx_grow import layouts as L
from mlx_grow.checkpoint import FORMAT_VERSION, META, SHARD_BYTES, load_args, read_meta, verify_files
from mlx_grow.io import atomic_dir, sha256_file
from mlx_grow.model import ModelArgs
from mlx_grow.substrate import fingerprint, load_table_file
from mlx_grow.tensorio import TABLE_FILES, Source, write_weights

EXPORT_META = "mlx_grow_export.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "tokenizer.model")
OUT_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
TARGETS = ("starcoder2", "gpt-neox")
NEOX = {"input_layernorm": "input_layernorm", "post_attention_layernorm": "post_attention_layernorm",
        "self_attn.o_proj": "attention.dense", "mlp.c_fc": "mlp.dense_h_to_4h", "mlp.c_proj": "mlp.dense_4h_to_h"}


# --- shared by import and export ---


def copy_tokenizer(src: Path, dst: Path) -> bool:
    for n in TOKENIZER_FILES:
        if (src / n).is_file():
            shutil.copy2(src / n, dst / n)
    return (src / "tokenizer.json").is_file()


def rope_perm(head_dim: int, to_half: bool) -> np.ndarray:
    """Row order within a head that turns interleaved-pair rotary weights into
    rotate-half ones (or back): q.k is unchanged, so outputs stay identical."""
    perm = np.concatenate([np.arange(0, head_dim, 2), np.arange(1, head_dim, 2)])
    return perm if to_half else np.argsort(perm)


def permute_heads(w: np.ndarray, n_heads: int, perm) -> np.ndarray:
    return w.reshape(n_heads, -1, *w.shape[1:])[:, perm].reshape(w.shape)


def block_shapes(args: ModelArgs) -> dict:
    """Our tensor shapes within one block (the tests check them against Model)."""
    d, f = args.hidden_size, args.intermediate_size
    out = {}
    for m, w in (("input_layernorm", (d,)), ("post_attention_layernorm", (d,)), ("mlp.c_fc", (f, d)),
                 ("mlp.c_proj", (d, f)), *((f"self_attn.{p}_proj", (d, d)) for p in "qkvo")):
        out.update({f"{m}.weight": w, f"{m}.bias": (w[0],)})
    return out


# --- import ---


def read_export_meta(root: Path) -> dict:
    f = root / EXPORT_META
    try:
        return json.loads(f.read_text()) if f.is_file() else {}
    except ValueError as e:
        raise ValueError(f"{f} is corrupt ({e}); delete it to import with layout detection") from None


def resolve(source, layout, c, key, table, expansion, kind, output_rope):
    """Model args, the substrate table and the source's rotary style. Our own
    layout and our exports carry the exact recipe; otherwise it is inferred."""
    cfg, where, meta, n = source.config, str(source.root / "config.json"), read_export_meta(source.root), c["layers"]
    norm, head, emb = key("norm"), key("lm_head"), key("embed")
    fc = next((key("layers.{i}.mlp.c_fc", i) for i in range(n) if key("layers.{i}.mlp.c_fc", i)), None)
    for k, ours in ((norm, "norm"), (fc, "layers.{i}.mlp.c_fc"), (head or emb, "lm_head")):
        if k is None:
            raise ValueError(f"missing tensor {layout['tensors'][ours]}.weight (our {ours}.weight) in {source.path}")
    found = {"vocab_size": (source.shape(head or emb)[0], head or emb),
             "hidden_size": (source.shape(norm)[0], norm), "intermediate_size": (source.shape(fc)[0], fc),
             "num_hidden_layers": (n, f"the weights' {n} numbered layers")}
    hints, d = L.name_hints(cfg), found["hidden_size"][0]
    if hints.get("layers") not in (None, n):
        raise ValueError(f"{where}: model_type says {hints['layers']} layers but the weights have {n}")
    if layout["name"] == "mlx_grow" or "model_args" in meta:
        args = ModelArgs.from_dict(meta.get("model_args", cfg), where=where)
        for field, (value, evidence) in found.items():
            if getattr(args, field) != value:
                raise ValueError(f"{EXPORT_META if meta else where}: {field}={getattr(args, field)} but {evidence} "
                                 f"says {value}: the config does not match the weights")
        if emb is None:
            raise ValueError(f"{source.path} has no input table ({layout['tensors']['embed']})")
        sub, width = args.substrate, meta.get("table_width")
        tbl = L.narrowest(source.get(emb), d, sub.expansion, width)[0] if meta else source.get(emb)
        if width and tbl.shape[1] != width:
            raise ValueError(f"{emb} is not the {sub.expansion} expansion of a {width}-wide table as {EXPORT_META} "
                             "says: the export was edited; delete that file to import with inference")
        src_trad = args.rope_traditional and not meta  # exports are rotate-half
        tie, notes = False, []
    else:
        r = L.read_config(cfg, layout, found, where)
        tie, src_trad = r["tie"], r["args"]["rope_traditional"]
        e = source.get(emb) if emb else None
        auto = next((source.root / f for f in TABLE_FILES if (source.root / f).is_file()), None)
        ext, ext_kind = (table, None) if isinstance(table, np.ndarray) else \
            read_table(table or auto) if table or (e is None and auto) else (None, None)
        if e is None and ext is None:
            raise ValueError(f"no input embedding: {layout['tensors']['embed']} is not in the checkpoint; "
                             "pass the table with --table FILE (.pt, .npy, .safetensors or embeddings.txt)")
        width = hints.get("width") if hints.get("width", d) < d else None
        exp = expansion or r["expansion"]
        tbl, exp = L.narrowest(e if e is not None else ext, d, exp, width)
        if e is not None and ext is not None and not np.array_equal(
                L.expand(tbl, d, exp), L.expand(L.narrowest(ext, d, exp)[0], d, exp)):
            raise ValueError(f"the table in {table} differs from the checkpoint's {emb}; pass only one of them")
        if width and tbl.shape[1] != width:
            raise ValueError(f"{where} says the input table is {width} wide but {emb or table} is "
                             f"{list(tbl.shape)}, not an expansion of one")
        sub = L.classify(tbl, kind or r["kind"] or ext_kind or hints.get("kind"), r["trainable"])
        sub.expansion = exp
        if sub.trainable and tbl.shape[1] < d:  # a trainable table is stored full width
            tbl = L.expand(tbl, d, exp)
        args = ModelArgs(**r["args"], substrate=sub)
        notes = [f"substrate recipe inferred: {sub.kind}, table {list(tbl.shape)}, {exp} expansion"]
    if tbl.shape[0] != args.vocab_size or d % tbl.shape[1]:
        raise ValueError(f"input table {emb or table} is {list(tbl.shape)}; expected [{args.vocab_size}, w] "
                         f"with w dividing {d}")
    if output_rope is not None:
        args.rope_traditional = output_rope == "interleaved"
    if meta:
        fp = fingerprint(args.substrate, tbl)
        if fp != meta.get("substrate") and meta.get("dtype", "float32") == "float32":
            raise ValueError(f"the input table in {source.root} does not match the fingerprint in {EXPORT_META}: "
                             "the weights were changed after export")
        if fp != meta.get("substrate"):
            notes.append(f"substrate fingerprint differs from the original (exported as {meta['dtype']})")
    return args, tbl, src_trad, tie, notes, meta


def read_table(path) -> tuple:
    """A table stored apart (--table, or embeddings.txt /
    normalized_embeddings_weights.pt beside the weights), with a kind hint."""
    path = Path(path)
    table = L.read_embeddings_txt(path) if path.suffix == ".txt" else load_table_file(path)
    return table, ("glyph" if path.name == "normalized_embeddings_weights.pt" else None)


def plan_import(source, mapping=None, expansion=None, table=None, kind=None, rope=None, output_rope=None,
                dtype="float32", strict=True):
    """(ModelArgs, a write plan [(our name, shape, dtype, make)], info).
    Only the input table is read here; the rest is read while writing."""
    layout, c = L.detect(source.keys(), source.config.get("model_type"), mapping, strict=strict)
    if rope:
        layout = {**layout, "config": {**(layout.get("config") or {}), "rope": rope}}
    placed, n = c["placed"], c["layers"]

    def key(ours, i=None, p="weight"):
        theirs = layout["tensors"].get(ours, "").replace("{i}", str(i))
        return next((k for k in placed.get(ours, {}).get(i, []) if k in (f"{theirs}.{p}", p == "weight" and theirs)),
                    None)

    args, tbl, src_trad, tie, notes, meta = resolve(source, layout, c, key, table, expansion, kind, output_rope)
    V, d, H, st = args.vocab_size, args.hidden_size, args.num_attention_heads, OUT_DTYPES[dtype]
    perm = rope_perm(d // H, to_half=not args.rope_traditional) if src_trad != args.rope_traditional else None
    per_head = layout.get("qkv") == "per-head"

    def make(k, part=None, rot=False):
        def read():
            w = source.get(k)
            if part is not None:  # one of q, k, v from a fused projection
                w = w.reshape(H, 3, d // H, *w.shape[1:])[:, part] if per_head else w.reshape(3, d, *w.shape[1:])[part]
                w = w.reshape(d, *w.shape[2 if per_head else 1:])
            return permute_heads(w, H, perm) if rot and perm is not None else w
        return read

    plan, no_bias = [("substrate.table", tbl.shape, "F32", lambda: tbl)], {}
    entries = [(f"layers.{i}.{p}", f"layers.{{i}}.{p.rsplit('.', 1)[0]}", i, p.rsplit(".", 1)[1], s)
               for i in range(n) for p, s in block_shapes(args).items()]
    for name, ours, i, p, shape in entries + [("norm.weight", "norm", None, "weight", (d,)),
                                              ("norm.bias", "norm", None, "bias", (d,))]:
        k, part = key(ours, i, p), None
        if k is None and L.QKV in layout["tensors"] and ours.endswith(("q_proj", "k_proj", "v_proj")):
            k, part = key(L.QKV, i, p), "qkv".index(ours[-6])
        theirs = layout["tensors"].get(L.QKV if part is not None else ours, ours).replace("{i}", str(i))
        if k is None and p == "bias":
            no_bias.setdefault(ours, []).append(f"{theirs}.bias")
            plan.append((name, shape, st, lambda shape=shape: np.zeros(shape, np.float32)))
            continue
        if k is None:
            raise ValueError(f"missing tensor {theirs}.{p} (our {name}) in {source.path}")
        want = (3 * shape[0], *shape[1:]) if part is not None else shape
        if tuple(source.shape(k)) != want:
            raise ValueError(f"tensor {k} has shape {list(source.shape(k))}, expected {list(want)} "
                             f"(our {name}, from the config and the other tensors)")
        plan.append((name, shape, st, make(k, part, ours.endswith(("q_proj", "k_proj")))))
    for ours, gone in no_bias.items():
        if len(gone) != (n if "{i}" in ours else 1):
            raise ValueError(f"missing tensor {gone[0]} in {source.path}; other layers have it")
        notes.append(f"no bias in the source for {ours}: zeros")
    head = key("lm_head")
    if head is not None:
        if tuple(source.shape(head)) != (V, d):
            raise ValueError(f"tensor {head} has shape {list(source.shape(head))}, expected {[V, d]}")
        plan.append(("lm_head.weight", (V, d), st, make(head)))
    elif tie:
        plan.append(("lm_head.weight", (V, d), st, lambda: L.expand(tbl, d, args.substrate.expansion)))
        notes.append("lm_head tied to the input embedding (tie_word_embeddings)")
    else:
        raise ValueError(f"missing tensor {layout['tensors']['lm_head']}.weight (our lm_head.weight) in {source.path}")
    return args, plan, {"layout": layout["name"], "layers": n, "notes": notes, "unplaced": c["unplaced"],
                        "recipe": "exact" if meta or layout["name"] == "mlx_grow" else "inferred",
                        "meta": meta.get("model_meta", {}), "origin": str(source.path)}


def import_checkpoint(src, out, mapping=None, expansion=None, table=None, tokenizer=None, kind=None, rope=None,
                      output_rope=None, dtype="float32", overwrite=False, shard_bytes=SHARD_BYTES) -> dict:
    """Import a checkpoint (directory or file) into a mlx-grow model directory,
    or into a merged one when it holds experts. Returns a report with notes."""
    from mlx_grow.tokenizer import load_tokenizer

    if dtype not in OUT_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(OUT_DTYPES)}, got {dtype!r}")
    source = Source(src)
    if mapping is not None and not isinstance(mapping, dict):
        mapping = L.load_mapping(mapping)
    opts = dict(mapping=mapping, expansion=expansion, kind=kind, rope=rope, output_rope=output_rope, dtype=dtype)
    split = split_experts(source, mapping)
    if split is None:
        results, unplaced, record = [plan_import(source, table=table, **opts)], [], None
    else:
        subs, unplaced, shared, record = split
        results = [plan_import(s, table=table if shared is None else shared, strict=False, **opts) for s in subs]
        unplaced += [s.prefix + k for s, r in zip(subs, results) for k in r[2]["unplaced"]]
    args, plan, info = results[0]
    tok_src = tokenizer or (source.root if (source.root / "tokenizer.json").is_file() else None)
    tok = load_tokenizer(tok_src) if tok_src is not None else None
    if tok is not None and tok.vocab_size != args.vocab_size:
        raise ValueError(f"tokenizer {tok_src} has {tok.vocab_size} ids but the weights have {args.vocab_size} "
                         "rows: pass the model's tokenizer with --tokenizer")
    if tok is None and split is not None:
        raise ValueError(f"a merge needs its tokenizer: {source.root} has no tokenizer.json; pass --tokenizer")
    notes = [n for r in results for n in r[2]["notes"]]
    if tok is None:
        notes.append("no tokenizer found: pass --tokenizer to make the directory loadable with load()")
    if unplaced:
        notes.append(f"{len(unplaced)} tensor(s) not placed (left out): {', '.join(L.compact(unplaced)[:12])}")
    with atomic_dir(out, overwrite=overwrite) as tmp:
        if split is None:
            write_weights(tmp, plan, {"format": "mlx"}, shard_bytes)
            (tmp / "config.json").write_text(json.dumps(args.to_dict(), indent=2))
            meta = {"substrate": fingerprint(args.substrate, plan[0][3]()),
                    "tokenizer": getattr(tok, "fingerprint", None), **info["meta"]}
        else:
            meta = write_merged(tmp, results, tok, record, source.root)
        if tok is not None and not (tokenizer is None and copy_tokenizer(source.root, tmp)):
            tok.save(tmp)
        meta = {"format_version": FORMAT_VERSION, **meta,
                "converted_from": {"path": str(source.path), "layout": info["layout"], "recipe": info["recipe"]}}
        meta["files"] = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / META).write_text(json.dumps(meta, indent=2))
    return {"out": str(out), "layout": info["layout"], "layers": info["layers"], "recipe": info["recipe"],
            "experts": len(results) if split else 0, "args": args.to_dict(), "substrate": meta["substrate"],
            "notes": notes}


# --- merged checkpoints ---


def split_experts(source, mapping=None):
    """None for a single model; else (expert sources, unplaced keys, a shared
    table, the merge record). A merge is our export (experts/N + the combiner)
    or one checkpoint with whole models under prefixes such as `experts.0.`."""
    record = read_export_meta(source.root).get("merge") if source.path.is_dir() else None
    if record:
        subs = [Source(source.root / e["dir"]) for e in record["experts"]]
        for s, e in zip(subs, record["experts"]):
            s.prefix = e["dir"] + "/"
        return subs, [], None, record
    try:
        L.detect(source.keys(), source.config.get("model_type"), mapping)
        return None
    except ValueError:
        prefixes = L.expert_prefixes(source.keys(), mapping)
        if len(prefixes) < 2:
            raise
    rest = [k for k in source.keys() if not k.startswith(tuple(prefixes))]
    shared = next((k for k in rest if len(source.shape(k)) == 2 and L.EMBED_NAME.search(k)), None)
    return ([source.view(p) for p in prefixes], [k for k in rest if k != shared],
            source.get(shared) if shared else None, None)


def write_merged(tmp: Path, results, tok, record, origin: Path) -> dict:
    """A merged model directory laid out as mlx_grow/merge.py writes it."""
    from dataclasses import asdict

    from mlx_grow.merge import Combiner
    from mlx_grow.substrate import save_table

    tables = [plan[0][3]() for _, plan, _ in results]
    fps = [fingerprint(a.substrate, t) for (a, _, _), t in zip(results, tables)]
    if any(fp != fps[0] for fp in fps):
        raise ValueError(f"the experts in {origin} have different input tables; a merge needs one shared substrate")
    save_table(tmp / "substrate.safetensors", results[0][0].substrate, tables[0])
    experts = []
    for i, (args, plan, info) in enumerate(results):
        sub = tmp / "experts" / str(i)
        sub.mkdir(parents=True)
        write_weights(sub, plan[1:], {"format": "mlx"})  # the table is shared, stored once
        (sub / "config.json").write_text(json.dumps(args.to_dict(), indent=2))
        experts.append({"dir": f"experts/{i}", "origin": info["origin"], "substrate": fps[0],
                        "tokenizer": tok.fingerprint, "lineage": info["meta"].get("lineage"), "files": {}})
    (tmp / "config.json").write_text(json.dumps(results[0][0].to_dict(), indent=2))
    if record and (origin / "adapter.safetensors").is_file():
        shutil.copy2(origin / "adapter.safetensors", tmp / "adapter.safetensors")
    return {"substrate": fps[0], "tokenizer": tok.fingerprint, "experts": experts,
            "combiner": (record or {}).get("combiner") or asdict(Combiner()),
            "lineage": {"merge": [e["origin"] for e in experts]}, **({"tuned": record["tuned"]}
                                                                   if record and record.get("tuned") else {})}


# --- export ---


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
            raise ValueError(f"{src.root} has no tensor {k}: the model directory is incomplete")
        if s is not None and tuple(src.shape(k)) != s:
            raise ValueError(f"tensor {k} in {src.root} has shape {list(src.shape(k))}, config.json says {list(s)}")
    extra = sorted(set(src.names) - set(want))
    if extra:
        raise ValueError(f"{src.root} has tensors its config.json does not describe: {', '.join(extra[:6])}")
    table = src.get("substrate.table")
    if table.shape[0] != V or d % table.shape[1]:
        raise ValueError(f"substrate.table in {src.root} is {list(table.shape)}; expected [{V}, w], w dividing {d}")
    perm = rope_perm(d // H, to_half=True) if args.rope_traditional else None

    def get(k):
        w = src.get(k)
        return permute_heads(w, H, perm) if perm is not None and (".q_proj." in k or ".k_proj." in k) else w

    def qkv(i, p):  # GPT-NeoX fuses q, k, v per head: rows [h][q, k, v]
        parts = [get(f"layers.{i}.self_attn.{x}_proj.{p}") for x in "qkv"]
        return np.stack([a.reshape(H, d // H, *a.shape[1:]) for a in parts], 1).reshape(3 * d, *parts[0].shape[1:])

    neox = to == "gpt-neox"
    plan = [("gpt_neox.embed_in.weight" if neox else "model.embed_tokens.weight", (V, d), st,
             lambda: L.expand(table, d, args.substrate.expansion))]
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
        raise ValueError(f"unknown export target {to!r}: use {' or '.join(TARGETS)}")
    if dtype not in OUT_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(OUT_DTYPES)}, got {dtype!r}")
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a mlx-grow model directory (no config.json)")
    meta = read_meta(model_dir)
    verify_files(model_dir, meta)
    with atomic_dir(out, overwrite=overwrite) as tmp:
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
    (tmp / EXPORT_META).write_text(json.dumps({
        "format_version": FORMAT_VERSION, "target": to, "dtype": dtype, "model_args": args.to_dict(),
        "table_width": int(table.shape[1]), "substrate": fingerprint(args.substrate, table),
        "tokenizer": meta.get("tokenizer"), "model_meta": keep}, indent=2))
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
    table = load_table_file(model_dir / "substrate.safetensors")
    for i, e in enumerate(meta["experts"]):
        sub = tmp / "experts" / str(i)
        sub.mkdir(parents=True)
        m = {"substrate": meta.get("substrate"), "tokenizer": meta.get("tokenizer"), "lineage": e.get("lineage")}
        notes += [f"expert {i}: {n}" for n in export_one(model_dir / e["dir"], m, sub, to, dtype, shard_bytes,
                                                          table, model_dir)]
        experts.append({"dir": f"experts/{i}", "origin": e.get("origin"), "lineage": e.get("lineage")})
    if (model_dir / "adapter.safetensors").is_file():
        shutil.copy2(model_dir / "adapter.safetensors", tmp / "adapter.safetensors")
    copy_tokenizer(model_dir, tmp)
    (tmp / EXPORT_META).write_text(json.dumps({
        "format_version": FORMAT_VERSION, "target": to, "dtype": dtype, "substrate": meta.get("substrate"),
        "tokenizer": meta.get("tokenizer"), "merge": {"experts": experts, "combiner": meta["combiner"],
                                                      "tuned": meta.get("tuned")}}, indent=2))
    return notes + [f"a merge exports as its experts plus the combiner in {EXPORT_META}"]


# --- inspect and verify ---


def inspect(path, mapping=None) -> dict:
    """Every tensor's name, shape and dtype, the config, and the layout that
    matched (or why none did)."""
    source = Source(path)
    if mapping is not None and not isinstance(mapping, dict):
        mapping = L.load_mapping(mapping)
    out = {"path": str(source.path), "config": source.config,
           "tensors": [(k, list(source.shape(k)), source.dtype(k)) for k in sorted(source.keys())]}
    try:
        split = split_experts(source, mapping)
    except ValueError as e:
        return {**out, "layout": None, "problem": str(e)}
    if split is None:
        layout, c = L.detect(source.keys(), source.config.get("model_type"), mapping)
        return {**out, "layout": layout["name"], "layers": c["layers"]}
    subs, unplaced, _, record = split
    return {**out, "layout": "merge" if record else "experts under prefixes",
            "experts": [str(s.path) for s in subs], "unplaced": unplaced}


def verify(src, model_dir, prompt="The quick brown fox jumps over the lazy dog.", trust_remote_code=False) -> dict:
    """Run the source with transformers (its own code) and our import on one
    prompt; report the largest logit difference."""
    import mlx.core as mx

    from mlx_grow.checkpoint import load

    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError:
        raise ValueError("verify runs the source with transformers and PyTorch: install both "
                         "(the dev extra: pip install 'mlx-grow[dev]')") from None
    model, tok = load(model_dir)
    if not hasattr(model, "layers"):
        raise ValueError(f"{model_dir} is a merge; verify each expert against its source")
    ids = tok.encode(prompt)[: model.args.max_position_embeddings] or [0]
    try:
        hf = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32, trust_remote_code=trust_remote_code)
    except Exception as e:  # transformers raises many kinds
        raise ValueError(f"transformers cannot load {src}: {e}") from None
    with torch.no_grad():
        ref = hf.eval()(torch.tensor([ids])).logits.float().numpy()
    ours = np.array(model(mx.array([ids])).astype(mx.float32))
    if ref.shape != ours.shape:
        raise ValueError(f"logit shapes differ: {src} gives {list(ref.shape)}, {model_dir} gives {list(ours.shape)}")
    return {"tokens": len(ids), "max_abs_diff": float(np.abs(ref - ours).max()),
            "argmax_agree": float((ref.argmax(-1) == ours.argmax(-1)).mean())}
