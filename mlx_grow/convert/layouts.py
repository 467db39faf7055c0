"""Understanding foreign checkpoints for `convert import`: the layout (which
names hold which part of our block), the config, and the input table. The
tensors themselves are read by io/tensors.py.

A layout maps our module names to the source's (`{i}` is the layer index);
`.weight` and `.bias` are appended, and a name that already is a tensor is
used as it is. A mapping file (`--map FILE.yaml`) has the same shape; see
MAP_EXAMPLE.
"""

import re
from pathlib import Path

import numpy as np

from mlx_grow.base import UserError, brief, key_list
from mlx_grow.substrate.codes import id_bits
from mlx_grow.substrate.tables import SubstrateArgs, expand

MAP_EXAMPLE = """\
base: nanogpt              # optional: start from a built-in layout
tensors:                   # ours: theirs ({i} = layer index; .weight/.bias appended)
  embed: tok_emb           # [V, d], or a narrow [V, w] table (see expansion)
  layers.{i}.input_layernorm: blocks.{i}.ln1
  layers.{i}.self_attn.qkv: blocks.{i}.attn.qkv   # or .q_proj / .k_proj / .v_proj
  layers.{i}.self_attn.o_proj: blocks.{i}.attn.out
  layers.{i}.post_attention_layernorm: blocks.{i}.ln2
  layers.{i}.mlp.c_fc: blocks.{i}.ff.up
  layers.{i}.mlp.c_proj: blocks.{i}.ff.down
  norm: ln_f
  lm_head: head
qkv: concat                # fused rows: concat ([q; k; v]) | per-head ([h][q, k, v], GPT-NeoX)
ignore: ['\\.attn\\.mask$']  # regexes of buffers to skip
config:                    # fills in / overrides config.json
  num_attention_heads: 32
  rope: rotate-half        # rotate-half | interleaved
  hidden_act: gelu         # gelu | gelu_tanh
  norm_eps: 1.0e-5
  expansion: repeat        # how a [V, w] table widens to d: repeat | tile
"""
BLOCK = ("input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
         "post_attention_layernorm", "mlp.c_fc", "mlp.c_proj")
QKV = "layers.{i}.self_attn.qkv"
OURS = ("embed", "norm", "lm_head", QKV, *(f"layers.{{i}}.{m}" for m in BLOCK))
BUFFERS = [r"\.attn\.(masked_)?bias$", r"\.attention\.(masked_)?bias$", r"rotary_emb\.inv_freq$", r"\.rope\.\w+$"]
MAP_HINT = ("describe the layout in a mapping file and pass it with --map FILE.yaml "
            "(`mlx-grow convert inspect PATH` prints an example)")


def _block(prefix, names, qkv=None):
    out = {f"layers.{{i}}.{ours}": f"{prefix}.{theirs}" for ours, theirs in zip(BLOCK, names) if theirs}
    return {**out, QKV: f"{prefix}.{qkv}"} if qkv else out


NO_QKV = ("input_layernorm", None, None, None)
LAYOUTS = {
    "mlx_grow": dict(model_types=["mlx_grow"], tensors={
        "embed": "substrate.table", "norm": "norm", "lm_head": "lm_head", **_block("layers.{i}", BLOCK)}),
    "starcoder2": dict(model_types=["starcoder2"], tie=True, tensors={
        "embed": "model.embed_tokens", "norm": "model.norm", "lm_head": "lm_head",
        **_block("model.layers.{i}", BLOCK)}),
    "gpt-neox": dict(model_types=["gpt_neox"], qkv="per-head", tensors={
        "embed": "gpt_neox.embed_in", "norm": "gpt_neox.final_layer_norm", "lm_head": "embed_out",
        **_block("gpt_neox.layers.{i}", (*NO_QKV, "attention.dense", "post_attention_layernorm",
                                        "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"), "attention.query_key_value")}),
    "nanogpt": dict(qkv="concat", tensors={
        "embed": "transformer.wte", "norm": "transformer.ln_f", "lm_head": "lm_head",
        **_block("transformer.h.{i}", ("ln_1", None, None, None, "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"),
                 "attn.c_attn")}),
    "nanogpt-split": dict(tensors={
        "embed": "transformer.wte", "norm": "transformer.ln_f", "lm_head": "lm_head",
        **_block("transformer.h.{i}", ("ln_1", "attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.c_proj",
                                      "ln_2", "mlp.c_fc", "mlp.c_proj"))}),
}


def load_mapping(path) -> dict:
    """A --map YAML file as a layout, every key checked."""
    from mlx_grow.io.read import load_yaml, read_text

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mapping file {path} does not exist")
    spec = load_yaml(read_text(path, "mapping file"), f"mapping file {path}") or {}
    if not isinstance(spec, dict):
        raise UserError(f"mapping file {path} must hold a mapping (base:, tensors:, ...), got {brief(spec)}")
    unknown = [k for k in spec if k not in ("base", "tensors", "qkv", "ignore", "config")]
    if unknown:
        raise UserError(f"unknown key(s) {key_list(unknown)} in {path}; valid: base, tensors, qkv, ignore, config")
    base = spec.get("base")
    if base is not None and (not isinstance(base, str) or base not in LAYOUTS):
        raise UserError(f"{path}: base {brief(base)} is not a built-in layout; use one of {', '.join(LAYOUTS)}")
    tensors = spec.get("tensors") or {}
    if not isinstance(tensors, dict) or not all(isinstance(v, str) for v in tensors.values()):
        raise UserError(f"{path}: tensors must map our tensor names to the checkpoint's names (strings), "
                        f"got {brief(tensors)}")
    bad = [k for k in tensors if k not in OURS]
    if bad:
        raise UserError(f"{path}: unknown tensor name(s) {key_list(bad)}; ours are {', '.join(OURS)}")
    for key, want in (("ignore", list), ("config", dict)):
        if spec.get(key) is not None and not isinstance(spec[key], want):
            raise UserError(f"{path}: {key} must be a {'list' if want is list else 'mapping'}, got "
                            f"{brief(spec[key])}")
    for pattern in spec.get("ignore") or []:
        try:
            re.compile(pattern)
        except (re.error, TypeError) as e:
            raise UserError(f"{path}: ignore entry {brief(pattern)} is not a regular expression ({e})") from None
    layout = dict(LAYOUTS.get(base, {}), name=f"map:{path.name}", model_types=[])
    inherited = dict(layout.get("tensors", {}))
    if QKV in tensors or any(k.endswith(("q_proj", "k_proj", "v_proj")) for k in tensors):
        inherited = {k: v for k, v in inherited.items() if k != QKV and not k.endswith(("q_proj", "k_proj", "v_proj"))}
    layout["tensors"] = {**inherited, **tensors}
    if spec.get("qkv") not in (None, "concat", "per-head"):
        raise UserError(f"{path}: qkv must be 'concat' or 'per-head', got {brief(spec['qkv'])}")
    layout.update({k: spec[k] for k in ("qkv", "ignore", "config") if spec.get(k) is not None})
    return layout


def claim(layout: dict, keys) -> dict:
    """Which keys the layout places ({ours: {layer: [keys]}}), the layer
    count, and the keys that neither a template nor an ignore rule claims."""
    pats = {ours: re.compile(re.escape(t).replace(r"\{i\}", r"(\d+)") + r"(?:\.(weight|bias|table))?$")
            for ours, t in layout["tensors"].items()}
    ignore = [re.compile(p) for p in BUFFERS + list(layout.get("ignore") or [])]
    placed, free, layers = {}, [], set()
    for k in keys:
        ours, m = next(((o, p.match(k)) for o, p in pats.items() if p.match(k)), (None, None))
        if ours is None:
            if not any(p.search(k) for p in ignore):
                free.append(k)
            continue
        i = int(m.group(1)) if "{i}" in ours else None
        placed.setdefault(ours, {}).setdefault(i, []).append(k)
        layers.add(i)
    layers.discard(None)
    return {"placed": placed, "layers": max(layers) + 1 if layers else 0, "unplaced": free}


def required(layout: dict) -> list:
    attn = [QKV] if QKV in layout["tensors"] else [f"layers.{{i}}.self_attn.{p}_proj" for p in "qkv"]
    need = ["norm", *attn, *(f"layers.{{i}}.{m}" for m in BLOCK if "self_attn" not in m or "o_proj" in m)]
    tied = layout.get("tie") or (layout.get("config") or {}).get("tie_word_embeddings")
    return need + ([] if tied else ["lm_head"])


def detect(keys, model_type=None, mapping=None, strict=True):
    """The layout that places every tensor (strict=False: that places our
    whole block, the rest returned as unplaced). Layouts named by the config's
    model_type are tried first. No fit is an error listing the keys that did
    not match."""
    candidates = [mapping] if mapping is not None else sorted(
        (dict(v, name=k) for k, v in LAYOUTS.items()), key=lambda v: model_type not in v.get("model_types", []))
    best = None
    for layout in candidates:
        c = claim(layout, keys)
        missing = [r for r in required(layout) if r not in c["placed"]]
        if best is None or (len(missing), len(c["unplaced"])) < (len(best[2]), len(best[1]["unplaced"])):
            best = (layout, c, missing)
    layout, c, missing = best
    if missing or (c["unplaced"] and strict):
        what = f"the {layout['name']} layout" if mapping is not None else "any known layout"
        parts = [f"nothing for our {', '.join(missing)}"] if missing else []
        if "lm_head" in missing:
            parts.append("for a head tied to the embedding set tie_word_embeddings: true under config:")
        if c["unplaced"]:
            parts.append(f"keys that did not match: {', '.join(compact(c['unplaced'])[:12])}")
        raise UserError(f"tensors do not fit {what} ({'; '.join(parts)}); {MAP_HINT}")
    return layout, c


def expert_prefixes(keys, mapping=None) -> list:
    """Prefixes under which whole models sit in one checkpoint (`experts.0.`):
    each key that ends in a layout's layer-0 input norm marks one."""
    tails = sorted({v["tensors"]["layers.{i}.input_layernorm"].replace("{i}", "0") + ".weight"
                    for v in [*LAYOUTS.values(), *([mapping] if mapping else [])]
                    if "layers.{i}.input_layernorm" in v["tensors"]}, key=len, reverse=True)
    found = set()
    for k in keys:
        tail = next((t for t in tails if k.endswith("." + t)), None)  # the most specific layout
        if tail:
            found.add(k[: -len(tail)])
    return sorted(found)


EMBED_NAME = re.compile(r"(wte|embed\w*|tok\w*emb\w*|substrate\.table)(\.weight)?$")


def compact(keys) -> list:
    """Key patterns with layer numbers folded: blocks.{i}.ln1.weight."""
    return sorted({re.sub(r"\.\d+(?=\.)", ".{i}", k) for k in keys})


# --- config ---

SYNONYMS = {
    "vocab_size": ("vocab_size", "n_vocab", "padded_vocab_size"),
    "hidden_size": ("hidden_size", "n_embd", "d_model", "dim", "model_dim"),
    "num_hidden_layers": ("num_hidden_layers", "n_layer", "n_layers", "num_layers"),
    "num_attention_heads": ("num_attention_heads", "n_head", "n_heads", "num_heads"),
    "intermediate_size": ("intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size"),
    "max_position_embeddings": ("max_position_embeddings", "n_positions", "block_size", "n_ctx", "max_seq_len",
                                "context_length"),
    "rope_theta": ("rope_theta", "rotary_emb_base", "rope_base", "rotary_base"),
    "norm_eps": ("norm_eps", "norm_epsilon", "layer_norm_eps", "layer_norm_epsilon", "ln_eps"),
    "hidden_act": ("hidden_act", "activation_function", "activation"),
}
ACTS = {"gelu": "gelu", "gelu_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
        "gelu_fast": "gelu_tanh", "gelu_approx": "gelu_tanh"}
MAP_CONFIG = set(SYNONYMS) | {"rope", "expansion", "substrate", "trainable", "tie_word_embeddings"}
NAME_HINT = re.compile(r"n_embed_(\d+)_([a-z]+)_n_layer_(\d+)")  # e.g. model_n_embed_16_binary_n_layer_32


def read_config(config: dict, layout: dict, found: dict, where: str) -> dict:
    """ModelArgs fields from a foreign config; the mapping's `config:` wins.
    `found` is what the weights say ({field: (value, evidence)}): a config
    that disagrees is an error."""
    over = dict(layout.get("config") or {})
    bad = sorted(set(over) - MAP_CONFIG)
    if bad:
        raise UserError(f"unknown key(s) {', '.join(bad)} under config: in the mapping; "
                         f"valid: {', '.join(sorted(MAP_CONFIG))}")
    rope = config.get("rope_parameters") if isinstance(config.get("rope_parameters"), dict) else {}
    merged = {**config, **({"rope_theta": rope["rope_theta"]} if "rope_theta" in rope else {})}
    args = {}
    for ours, names in SYNONYMS.items():
        key, val = (ours, over[ours]) if ours in over else next(
            ((n, merged[n]) for n in names if merged.get(n) is not None), (None, None))
        if ours in found:
            value, evidence = found[ours]
            if val is not None and int(val) != value:
                raise UserError(f"{where}: {key}={val} but {evidence} says {value}: "
                                 "the config does not match the weights")
            val = value
        if val is not None:
            args[ours] = val
    if "num_attention_heads" not in args:
        raise UserError(f"{where} gives no number of attention heads; set num_attention_heads under "
                         "config: in a --map file")
    act = str(args.get("hidden_act", "gelu"))
    if act not in ACTS:
        raise UserError(f"{where}: hidden_act {brief(act)} is not a GELU; mlx-grow blocks use gelu or gelu_tanh")
    args["hidden_act"] = ACTS[act]
    neox = "gpt_neox" in layout.get("model_types", [])
    pct = rope.get("partial_rotary_factor", config.get("partial_rotary_factor",
                                                       config.get("rotary_pct", 0.25 if neox else 1.0)))
    if float(pct) != 1.0:
        raise UserError(f"{where}: rotary_pct / partial_rotary_factor is {pct}; only full rotary (1.0) imports")
    if config.get("use_parallel_residual", neox):
        raise UserError(f"{where}: use_parallel_residual is true (the GPT-NeoX default); mlx-grow's block is "
                         "sequential, so only use_parallel_residual: false imports")
    kv = config.get("num_key_value_heads")
    if kv is not None and int(kv) != int(args["num_attention_heads"]):
        raise UserError(f"{where}: num_key_value_heads={kv} differs from num_attention_heads; "
                         "grouped-query attention does not import")
    style = over.get("rope") or ("interleaved" if any(config.get(k) for k in (
        "rope_traditional", "rotary_interleaved", "rope_interleaved")) else "rotate-half")
    if style not in ("rotate-half", "interleaved"):
        raise UserError(f"rope must be 'rotate-half' or 'interleaved', got {brief(style)}")
    args["rope_traditional"] = style == "interleaved"
    tie = over.get("tie_word_embeddings", config.get("tie_word_embeddings", layout.get("tie", False)))
    return {"args": args, "tie": bool(tie), "expansion": over.get("expansion"), "kind": over.get("substrate"),
            "trainable": over.get("trainable")}


def name_hints(config: dict) -> dict:
    """Substrate hints from names such as model_n_embed_16_binary_n_layer_32."""
    text = " ".join(str(config.get(k, "")) for k in ("model_type", "_name_or_path", "name")).lower()
    hints = {}
    m = NAME_HINT.search(text)
    if m:
        hints.update(width=int(m.group(1)), layers=int(m.group(3)))
        text += " " + m.group(2)
    for word, kind in (("glyph", "glyph"), ("float", "float"), ("unfrozen", "trainable"), ("bin", "binary"),
                       ("bit", "binary")):
        if word in text:
            hints["kind"] = kind
            break
    if isinstance(config.get("n_embed"), int):
        hints.setdefault("width", config["n_embed"])
    return hints


# --- the input table ---


def narrowest(e: np.ndarray, d: int, expansion=None, width=None):
    """The narrowest [V, w] table whose expansion to d is exactly `e` (a wide
    embedding that is really a repeated small table), and its expansion."""
    if e.shape[1] < d:
        return e, expansion or "repeat"
    for w in [width] if width and width < d else [w for w in range(1, d) if d % w == 0]:
        for exp in [expansion] if expansion else ["repeat", "tile"]:
            t = e[:, :: d // w] if exp == "repeat" else e[:, :w]
            if np.array_equal(expand(t[:64], d, exp), e[:64]) and np.array_equal(expand(t, d, exp), e):
                return np.ascontiguousarray(t), exp
    return e, expansion or "repeat"


def classify(table: np.ndarray, kind=None, trainable=None) -> SubstrateArgs:
    """The recipe of an imported table: the token ids in binary (bit order
    found by comparing rows with the ids), another 0/1 code, a unit-norm float
    table, or an ordinary embedding. A kind hint the values contradict is dropped."""
    v, w = table.shape
    binary = bool(np.all((table == 0) | (table == 1)))
    order = next((o for o in ("msb", "lsb") if np.array_equal(table, id_bits(v, w, o))), None) \
        if binary and v <= 2**w else None
    if kind in ("binary", "random", "gf2") and not binary:
        kind = None
    if kind is None:
        unit = bool(np.allclose(np.linalg.norm(table.astype(np.float64), axis=1), 1.0, atol=1e-3))
        kind = "binary" if binary else ("float" if unit else "trainable")
    if kind == "binary" and order is None:
        kind = "random"  # 0/1 but not the ids: a code we can only store
    train = kind == "trainable" if trainable is None else bool(trainable)
    return SubstrateArgs(kind=kind, bits=w if kind in ("binary", "random", "float", "gf2") else 16,
                         order=order or "msb", trainable=train)


def read_embeddings_txt(path) -> np.ndarray:
    """A table from text: `idx` / `[b0, b1, ...]` line pairs (as the bvv241
    notebooks write them), `idx [..]` or `idx 0101..` lines, or one row per
    line (numbers, or a 0/1 string). Indexed rows are put in index order."""
    lines = [s.strip() for s in Path(path).read_text(encoding="utf-8").splitlines() if s.strip()]
    pair = len(lines) > 1 and re.fullmatch(r"\d+", lines[0]) and ("[" in lines[1] or len(lines[1].split()) > 1)
    rows, idx = [], []
    for n in range(0, len(lines), 2 if pair else 1):
        line = f"{lines[n]} {lines[n + 1] if n + 1 < len(lines) else ''}" if pair else lines[n]
        m = re.fullmatch(r"(\d+)[\s:,]+(\[.*\]|[01]{2,})", line)
        if m:
            idx.append(int(m.group(1)))
            line = m.group(2)
        try:
            rows.append([float(c) for c in line] if re.fullmatch(r"[01]{2,}", line)
                        else [float(x) for x in re.split(r"[\s,]+", line.strip("[] "))])
        except ValueError:
            raise UserError(f"{path}: line {n + 1} is not a row of numbers: {brief(line[:60])}") from None
    if len({len(r) for r in rows}) > 1:
        raise UserError(f"{path}: rows have different lengths ({sorted({len(r) for r in rows})[:4]})")
    table = np.asarray(rows, np.float32)
    if idx:
        if len(idx) != len(rows) or sorted(idx) != list(range(len(rows))):
            raise UserError(f"{path}: the token indices are not exactly 0..{len(rows) - 1}")
        table = table[np.argsort(idx)]
    return table
