"""The model a run grows further (`mlx-grow grow --from MODEL`): the checks that
it fits the config, and the record of it that run.json and every saved model's
lineage keep.

MODEL must be a single model directory (a grow run's stage or final dir, an
imported or converted one) whose architecture is the config's in everything but
the depth, on the same substrate table and the same tokenizer vocabulary.
"""

import json
from pathlib import Path

from mlx_grow.base import UserError, brief
from mlx_grow.checkpoint import (
    as_numpy,
    build_model,
    load_args,
    open_model_dir,
    read_weights,
    weights_digest,
)
from mlx_grow.substrate.tables import build_table, describe_fingerprint, fingerprint
from mlx_grow.tokenizer import load_tokenizer

# ModelArgs fields that may differ between MODEL and the config: the depth is what grows, and
# the substrate is compared by its fingerprint (recipe + table) and the fields below.
SUBSTRATE_FIELDS = ("expansion", "trainable")


def source_args(path):
    """The ModelArgs of the model at `path` (its config.json): its depth is the run's base."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"--from {path}: no such model directory")
    return load_args(path)


def check_depth(path, depth: int, want: int):
    """The run's depth `want` is above the `depth` blocks of MODEL at `path`."""
    if want <= depth:
        raise UserError(f"--from {path} has {depth} blocks, and the depth {want} (model.num_hidden_layers, "
                        f"or --depth) is not above it: give a depth above {depth}")


def config_substrate(cfg, tok):
    """The fingerprint of the substrate table the config builds (as grow's build_model does)."""
    a = cfg.model
    strings = tok.token_strings() if a.substrate.kind == "glyph" and not a.substrate.path else None
    return fingerprint(a.substrate, build_table(a.substrate, a.vocab_size, a.hidden_size, strings))


def check_source(path, cfg, tok, args=None):
    """(record, model): MODEL at `path` checked against the config `cfg` and its
    tokenizer `tok` (every file against its checksum, the depth, the architecture,
    the substrate, the tokenizer), and loaded. Each refusal names both sides.
    The record goes into run.json (`from`) and every saved model's lineage.
    `args`: its config.json, when read already (source_args)."""
    path = Path(path)
    args = args or source_args(path)
    depth = args.num_hidden_layers
    check_depth(path, depth, cfg.depth)
    meta = open_model_dir(path, what="--from model")
    if "experts" in meta:
        raise UserError(f"--from {path} is a merged model (experts); growing needs a single model directory")
    ours, theirs = cfg.model.to_dict(), args.to_dict()
    diffs = [f"{k} is {brief(theirs.get(k))} in {path} but {brief(ours[k])} in the config"
             for k in ours if k not in ("num_hidden_layers", "substrate") and ours[k] != theirs.get(k)]
    diffs += [f"substrate.{k} is {brief(theirs['substrate'].get(k))} in {path} but {brief(ours['substrate'][k])} in the config"
              for k in SUBSTRATE_FIELDS if ours["substrate"][k] != theirs["substrate"].get(k)]
    if diffs:
        raise UserError(f"--from {path} does not have the config's architecture (the model section must match it "
                        f"in everything but num_hidden_layers): {'; '.join(diffs)}")
    weights = read_weights(path)
    # The fingerprint of the table in the weights (which the checksums cover), never the
    # record in mlx_grow.json (which nothing covers: one edit would make it say anything).
    table = weights.get("substrate.table")
    if table is None:
        raise UserError(f"--from {path} has no substrate table (substrate.table) in its weights: not a mlx-grow "
                        "model directory")
    have = fingerprint(args.substrate, as_numpy(table))
    recipe = cfg.model.substrate.recipe()
    if isinstance(have, dict) and {k: v for k, v in have.items() if k not in ("shape", "sha256")} != recipe:
        want = recipe  # another recipe: no need to build the config's table to tell
    else:
        want = config_substrate(cfg, tok)
    if have != want:
        raise UserError(f"--from {path} has substrate {describe_fingerprint(have)} but the config builds {describe_fingerprint(want)}: "
                        "a model grows only on the substrate it was trained on; set model.substrate to its recipe "
                        "(or substrate.path to its table)")
    if not (path / "tokenizer.json").is_file():
        raise UserError(f"--from {path} has no tokenizer.json, so its vocabulary cannot be checked against the "
                        f"config's tokenizer {cfg.tokenizer}; re-import it with --tokenizer")
    # Compare the vocabularies and their encoding, not the prompt-start post-processor a saved
    # model adds (training data never uses it, and each run records its own).
    theirs_tok = load_tokenizer(str(path)).with_prompt_start(None).fingerprint
    ours_tok = tok.with_prompt_start(None).fingerprint
    if theirs_tok != ours_tok:
        raise UserError(f"--from {path} has tokenizer {describe_fingerprint(theirs_tok)} but the config's tokenizer "
                        f"{cfg.tokenizer} is {describe_fingerprint(ours_tok)} (sha256 of tokenizer.json without its "
                        "post-processor): grow with the tokenizer the model was trained with")
    model = build_model(args, weights, path)
    record = {"path": str(path.resolve()), "depth": depth, "substrate": have, "tokenizer": theirs_tok,
              "weights_sha256": weights_digest(path, meta), "lineage": meta.get("lineage"),
              **({"converted_from": meta["converted_from"]} if meta.get("converted_from") else {}),
              **recorded_reads(meta.get("lineage"), path)}
    return record, model


def recorded_reads(lineage, path=None) -> dict:
    """{reads, stream}: the training batches the run that made a model read per data
    mixture, and what else its stream depended on (training/stage_data.py
    stream_record). Saved models keep both in their lineage; for the final model of
    a run written before they did, they are rebuilt from its run's run.json (the
    folder above the model at `path`, else the lineage's `run`) and stage summary.
    {} when unknown (an imported model, a moved run, an older stage dir)."""
    from mlx_grow.training.runs import base_of, config_from_record
    from mlx_grow.training.schedule import plan
    from mlx_grow.training.stage_data import rebuild_reads, stream_record

    if not isinstance(lineage, dict):
        return {}
    if isinstance(lineage.get("reads"), dict) and isinstance(lineage.get("stream"), dict):
        return {"reads": lineage["reads"], "stream": lineage["stream"]}
    summary, run = lineage.get("summary"), lineage.get("run")
    if not isinstance(summary, list) or not summary or not run:
        return {}
    root = Path(path).parent if path is not None and (Path(path).parent / "run.json").is_file() else Path(run)
    try:
        record = json.loads((root / "run.json").read_text())
        cfg = config_from_record(record["config"], "run.json", base_of(record))
        stages = plan(cfg)
        if len(summary) != len(stages):
            return {}
        state = {"stage": len(stages) - 1, "step": summary[-1]["steps"], "summary": summary}
        return {"reads": rebuild_reads(cfg, stages, state), "stream": stream_record(cfg)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}
