"""Inspect a foreign checkpoint and verify an import against transformers."""

import numpy as np

from mlx_grow.base import UserError
from mlx_grow.convert import layouts
from mlx_grow.convert.importer import split_experts
from mlx_grow.io.tensors import Source


def inspect(path, mapping=None) -> dict:
    """Every tensor's name, shape and dtype, the config, and the layout that
    matched (or why none did)."""
    source = Source(path)
    if mapping is not None and not isinstance(mapping, dict):
        mapping = layouts.load_mapping(mapping)
    out = {"path": str(source.path), "config": source.config,
           "tensors": [(k, list(source.shape(k)), source.dtype(k)) for k in sorted(source.keys())]}
    try:
        split = split_experts(source, mapping)
    except ValueError as e:
        return {**out, "layout": None, "problem": str(e)}
    if split is None:
        layout, c = layouts.detect(source.keys(), source.config.get("model_type"), mapping)
        return {**out, "layout": layout["name"], "layers": c["layers"]}
    subs, unplaced, _, record = split
    return {**out, "layout": "merge" if record else "experts under prefixes",
            "experts": [str(s.path) for s in subs], "unplaced": unplaced}


def verify(src, model_dir, prompt="The quick brown fox jumps over the lazy dog.", trust_remote_code=False,
           revision=None) -> dict:
    """Run the source (a folder, or a Hub id at `revision`) with transformers (its own
    code) and our import on one prompt; report the largest logit difference."""
    import mlx.core as mx

    from mlx_grow.checkpoint import load_model, read_meta, read_tokenizer
    from mlx_grow.io.hub import resolve

    src = resolve(src, revision, checkpoint=True)
    if not src.exists():
        raise FileNotFoundError(f"source checkpoint {src} does not exist")

    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError:
        raise UserError("verify runs the source with transformers and PyTorch: install both "
                         "(the dev extra: pip install 'mlx-grow[dev]')") from None
    if "experts" in read_meta(model_dir):
        raise UserError(f"{model_dir} is a merge; verify each expert against its source")
    model = load_model(model_dir)
    tok = read_tokenizer(model_dir, model.args)
    ids = tok.encode(prompt)[: model.args.max_position_embeddings] or [0]
    try:
        hf = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32, trust_remote_code=trust_remote_code,
                                                  local_files_only=True)
    except Exception as e:  # transformers raises many kinds
        raise UserError(f"transformers cannot load {src}: {e}") from None
    with torch.no_grad():
        ref = hf.eval()(torch.tensor([ids])).logits.float().numpy()
    ours = np.array(model(mx.array([ids])).astype(mx.float32))
    if ref.shape != ours.shape:
        raise UserError(f"logit shapes differ: {src} gives {list(ref.shape)}, {model_dir} gives {list(ours.shape)}")
    return {"tokens": len(ids), "max_abs_diff": float(np.abs(ref - ours).max()),
            "argmax_agree": float((ref.argmax(-1) == ours.argmax(-1)).mean())}
