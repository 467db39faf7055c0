"""Import PyTorch / Hugging Face checkpoints into mlx-grow model directories."""

from pathlib import Path

import numpy as np

from mlx_grow.base import UserError, brief
from mlx_grow.checkpoint import ADAPTER, write_model_dir
from mlx_grow.convert import layouts
from mlx_grow.convert.common import (
    EXPORT_META,
    OUT_DTYPES,
    block_shapes,
    permute_heads,
    read_export_meta,
    read_table,
    rope_perm,
)
from mlx_grow.io.paths import inside
from mlx_grow.io.tensors import SHARD_BYTES, TABLE_FILES, Source
from mlx_grow.model import ModelArgs
from mlx_grow.substrate.tables import expand, fingerprint


def resolve(source, layout, c, key, table, expansion, kind, output_rope):
    """Model args, the substrate table and the source's rotary style. Our own
    layout and our exports carry the exact recipe; otherwise it is inferred."""
    cfg, where, meta, n = source.config, str(source.root / "config.json"), read_export_meta(source.root), c["layers"]
    norm, head, emb = key("norm"), key("lm_head"), key("embed")
    fc = next((key("layers.{i}.mlp.c_fc", i) for i in range(n) if key("layers.{i}.mlp.c_fc", i)), None)
    for k, ours in ((norm, "norm"), (fc, "layers.{i}.mlp.c_fc"), (head or emb, "lm_head")):
        if k is None:
            raise UserError(f"missing tensor {layout['tensors'][ours]}.weight (our {ours}.weight) in {source.path}")
    found = {"vocab_size": (source.shape(head or emb)[0], head or emb),
             "hidden_size": (source.shape(norm)[0], norm), "intermediate_size": (source.shape(fc)[0], fc),
             "num_hidden_layers": (n, f"the weights' {n} numbered layers")}
    hints, d = layouts.name_hints(cfg), found["hidden_size"][0]
    if hints.get("layers") not in (None, n):
        raise UserError(f"{where}: model_type says {hints['layers']} layers but the weights have {n}")
    if layout["name"] == "mlx_grow" or "model_args" in meta:
        if table is not None and not isinstance(table, np.ndarray):  # not a merge's shared table
            raise UserError(f"--table {table}: {source.root} is a mlx-grow model or export, which carries its own "
                            "input table (and its recipe), so --table would be ignored; import without --table")
        args = ModelArgs.from_dict(meta.get("model_args", cfg), where=where)
        for field, (value, evidence) in found.items():
            if getattr(args, field) != value:
                raise UserError(f"{EXPORT_META if meta else where}: {field}={getattr(args, field)} but {evidence} "
                                 f"says {value}: the config does not match the weights")
        if emb is None:
            raise UserError(f"{source.path} has no input table ({layout['tensors']['embed']})")
        sub, width = args.substrate, meta.get("table_width")
        tbl = layouts.narrowest(source.get(emb), d, sub.expansion, width)[0] if meta else source.get(emb)
        if width and tbl.shape[1] != width:
            raise UserError(f"{emb} is not the {sub.expansion} expansion of a {width}-wide table as {EXPORT_META} "
                             "says: the export was edited; delete that file to import with inference")
        src_trad = args.rope_traditional and not meta  # exports are rotate-half
        tie, notes = False, []
    else:
        r = layouts.read_config(cfg, layout, found, where)
        tie, src_trad = r["tie"], r["args"]["rope_traditional"]
        e = source.get(emb) if emb else None
        auto = next((source.root / f for f in TABLE_FILES if (source.root / f).is_file()), None)
        ext, ext_kind = (table, None) if isinstance(table, np.ndarray) else \
            read_table(table or auto) if table or (e is None and auto) else (None, None)
        if e is None and ext is None:
            raise UserError(f"no input embedding: {layout['tensors']['embed']} is not in the checkpoint; "
                             "pass the table with --table FILE (.pt, .npy, .safetensors or embeddings.txt)")
        width = hints.get("width") if hints.get("width", d) < d else None
        exp = expansion or r["expansion"]
        tbl, exp = layouts.narrowest(e if e is not None else ext, d, exp, width)
        if e is not None and ext is not None and not np.array_equal(
                expand(tbl, d, exp), expand(layouts.narrowest(ext, d, exp)[0], d, exp)):
            raise UserError(f"the table in {table} differs from the checkpoint's {emb}; pass only one of them")
        if width and tbl.shape[1] != width:
            raise UserError(f"{where} says the input table is {width} wide but {emb or table} is "
                             f"{list(tbl.shape)}, not an expansion of one")
        sub = layouts.classify(tbl, kind or r["kind"] or ext_kind or hints.get("kind"), r["trainable"])
        sub.expansion = exp
        if sub.trainable and tbl.shape[1] < d:  # a trainable table is stored full width
            tbl = expand(tbl, d, exp)
        args = ModelArgs(**r["args"], substrate=sub)
        notes = [f"substrate recipe inferred: {sub.kind}, table {list(tbl.shape)}, {exp} expansion"]
    if tbl.shape[0] != args.vocab_size or d % tbl.shape[1]:
        raise UserError(f"input table {emb or table} is {list(tbl.shape)}; expected [{args.vocab_size}, w] "
                         f"with w dividing {d}")
    if output_rope is not None:
        args.rope_traditional = output_rope == "interleaved"
    if meta:
        fp = fingerprint(args.substrate, tbl)
        if fp != meta.get("substrate") and meta.get("dtype", "float32") == "float32":
            raise UserError(f"the input table in {source.root} does not match the fingerprint in {EXPORT_META}: "
                             "the weights were changed after export")
        if fp != meta.get("substrate"):
            notes.append(f"substrate fingerprint differs from the original (exported as {meta['dtype']})")
    return args, tbl, src_trad, tie, notes, meta


def plan_import(source, mapping=None, expansion=None, table=None, kind=None, rope=None, output_rope=None,
                dtype="float32", strict=True):
    """(ModelArgs, a write plan [(our name, shape, dtype, make)], info).
    Only the input table is read here; the rest is read while writing."""
    layout, c = layouts.detect(source.keys(), source.config.get("model_type"), mapping, strict=strict)
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
        if k is None and layouts.QKV in layout["tensors"] and ours.endswith(("q_proj", "k_proj", "v_proj")):
            k, part = key(layouts.QKV, i, p), "qkv".index(ours[-6])
        theirs = layout["tensors"].get(layouts.QKV if part is not None else ours, ours).replace("{i}", str(i))
        if k is None and p == "bias":
            no_bias.setdefault(ours, []).append(f"{theirs}.bias")
            plan.append((name, shape, st, lambda shape=shape: np.zeros(shape, np.float32)))
            continue
        if k is None:
            raise UserError(f"missing tensor {theirs}.{p} (our {name}) in {source.path}")
        want = (3 * shape[0], *shape[1:]) if part is not None else shape
        if tuple(source.shape(k)) != want:
            raise UserError(f"tensor {k} has shape {list(source.shape(k))}, expected {list(want)} "
                             f"(our {name}, from the config and the other tensors)")
        plan.append((name, shape, st, make(k, part, ours.endswith(("q_proj", "k_proj")))))
    for ours, gone in no_bias.items():
        if len(gone) != (n if "{i}" in ours else 1):
            raise UserError(f"missing tensor {gone[0]} in {source.path}; other layers have it")
        notes.append(f"no bias in the source for {ours}: zeros")
    head = key("lm_head")
    if head is not None:
        if tuple(source.shape(head)) != (V, d):
            raise UserError(f"tensor {head} has shape {list(source.shape(head))}, expected {[V, d]}")
        plan.append(("lm_head.weight", (V, d), st, make(head)))
    elif tie:
        plan.append(("lm_head.weight", (V, d), st, lambda: expand(tbl, d, args.substrate.expansion)))
        notes.append("lm_head tied to the input embedding (tie_word_embeddings)")
    else:
        raise UserError(f"missing tensor {layout['tensors']['lm_head']}.weight (our lm_head.weight) in {source.path}")
    return args, plan, {"layout": layout["name"], "layers": n, "notes": notes, "unplaced": c["unplaced"],
                        "recipe": "exact" if meta or layout["name"] == "mlx_grow" else "inferred",
                        "meta": meta.get("model_meta", {}), "origin": str(source.path)}


def import_checkpoint(src, out, mapping=None, expansion=None, table=None, tokenizer=None, kind=None, rope=None,
                      output_rope=None, dtype="float32", overwrite=False, shard_bytes=SHARD_BYTES) -> dict:
    """Import a checkpoint (directory or file) into a mlx-grow model directory,
    or into a merged one when it holds experts. Returns a report with notes."""
    from mlx_grow.tokenizer import check_vocab, load_tokenizer

    if dtype not in OUT_DTYPES:
        raise UserError(f"dtype must be one of {', '.join(OUT_DTYPES)}, got {brief(dtype)}")
    source = Source(src)
    if mapping is not None and not isinstance(mapping, dict):
        mapping = layouts.load_mapping(mapping)
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
    if tok is not None:
        check_vocab(tok, args.vocab_size, f"tokenizer {tok_src}", "pass the model's tokenizer with --tokenizer")
    if tok is None and split is not None:
        raise UserError(f"a merge needs its tokenizer: {source.root} has no tokenizer.json; pass --tokenizer")
    notes = [n for r in results for n in r[2]["notes"]]
    if tok is None:
        notes.append("no tokenizer found: pass --tokenizer to make the directory loadable with load()")
    if unplaced:
        notes.append(f"{len(unplaced)} tensor(s) not placed (left out): {', '.join(layouts.compact(unplaced)[:12])}")
    copy_from = source.root if tokenizer is None else None  # the source's own tokenizer files, as they are
    with write_model_dir(out, overwrite=overwrite, shard_bytes=shard_bytes, inputs=[src, table, tokenizer]) as w:
        if split is None:
            w.single(args, plan, plan[0][3](), tok, copy_from)
            w.meta.update(info["meta"])
        else:
            write_merged(w, results, tok, record, source.root, copy_from)
        w.meta["converted_from"] = {"path": str(source.path), "layout": info["layout"], "recipe": info["recipe"]}
    return {"out": str(out), "layout": info["layout"], "layers": info["layers"], "recipe": info["recipe"],
            "experts": len(results) if split else 0, "args": args.to_dict(), "substrate": w.meta["substrate"],
            "notes": notes}


def load_export(src):
    """(model, tokenizer) of a Hugging Face folder imported in memory, nothing written:
    the model `import_checkpoint` would write (float32), a merge with its combiner."""
    import mlx.core as mx

    from mlx_grow.checkpoint import build_model
    from mlx_grow.merge.combine import Combiner, MergedModel
    from mlx_grow.tokenizer import check_vocab, load_tokenizer

    source = Source(src)
    if not (source.root / "tokenizer.json").is_file():
        raise UserError(f"{source.root} has no tokenizer.json: import it with `mlx-grow convert import "
                        f"{source.root} -o DIR --tokenizer TOKENIZER`, then load DIR")
    split = split_experts(source)
    if split is None:
        results, record = [plan_import(source)], None
    else:
        subs, _, shared, record = split
        results = [plan_import(s, table=shared, strict=False) for s in subs]
    models = [build_model(args, {name: mx.array(make()) for name, _, _, make in plan}, source.path)
              for args, plan, _ in results]
    if split is None:
        model = models[0]
    else:
        model = MergedModel(models, Combiner(**((record or {}).get("combiner") or {})))
        if model.adapter is not None:
            f = source.root / ADAPTER
            if not f.is_file():
                raise UserError(f"{f} is missing: the merge's {model.combiner.adapter} adapter has no weights")
            model.adapter.load_weights(str(f), strict=True)
        mx.eval(model.parameters())
    tok = load_tokenizer(source.root)
    check_vocab(tok, model.args.vocab_size, f"tokenizer in {source.root}")
    return model, tok


def split_experts(source, mapping=None):
    """None for a single model; else (expert sources, unplaced keys, a shared
    table, the merge record). A merge is our export (experts/N + the combiner)
    or one checkpoint with whole models under prefixes such as `experts.0.`."""
    record = read_export_meta(source.root).get("merge") if source.path.is_dir() else None
    if record:
        subs = [Source(inside(source.root, e.get("dir") if isinstance(e, dict) else None,
                              f"the {EXPORT_META} `experts[].dir` entry", kind="dir")) for e in record["experts"]]
        for s, e in zip(subs, record["experts"]):
            s.prefix = e["dir"] + "/"
        return subs, [], None, record
    try:
        layouts.detect(source.keys(), source.config.get("model_type"), mapping)
        return None
    except ValueError:
        prefixes = layouts.expert_prefixes(source.keys(), mapping)
        if len(prefixes) < 2:
            raise
    rest = [k for k in source.keys() if not k.startswith(tuple(prefixes))]
    shared = next((k for k in rest if len(source.shape(k)) == 2 and layouts.EMBED_NAME.search(k)), None)
    return ([source.view(p) for p in prefixes], [k for k in rest if k != shared],
            source.get(shared) if shared else None, None)


def write_merged(w, results, tok, record, origin: Path, copy_tokenizer_from=None):
    """The experts of `results` as a merged directory, through the model-directory writer `w`."""
    from dataclasses import asdict

    from mlx_grow.merge.combine import Combiner

    tables = [plan[0][3]() for _, plan, _ in results]
    fps = [fingerprint(a.substrate, t) for (a, _, _), t in zip(results, tables)]
    if any(fp != fps[0] for fp in fps):
        raise UserError(f"the experts in {origin} have different input tables; a merge needs one shared substrate")
    experts = [(args, plan[1:], {"origin": info["origin"], "substrate": fps[0], "tokenizer": tok.fingerprint,
                                 "lineage": info["meta"].get("lineage"), "files": {}})
               for args, plan, info in results]  # the table is shared, stored once
    adapter = origin / ADAPTER if record and (origin / ADAPTER).is_file() else None
    w.merged(experts, tables[0], tok, (record or {}).get("combiner") or asdict(Combiner()), adapter,
             tuned=(record or {}).get("tuned"), substrate=fps[0], copy_tokenizer_from=copy_tokenizer_from)
