"""Layer-wise growth: train a few blocks + head, freeze them, stack new blocks,
train only the newest (+ head), optionally with LoRA phases over the frozen
blocks; or a monolithic baseline on the same token stream."""

import math
import time

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from mlx_grow.model import Model, flops_per_token, init_weights
from mlx_grow.training import lora as L
from mlx_grow.training.faults import armed, maybe_fail
from mlx_grow.training.params import human, stage_active
from mlx_grow.training.prefix_cache import PrefixCache
from mlx_grow.training.step import Stepper, TrainConfig, check_finite, split_xy


def set_trainable(model: Model, stage: dict, substrate_trainable: bool) -> int:
    """Freeze everything, then unfreeze what this stage trains. Returns the
    index of the lowest trainable block when nothing below it trains, else 0."""
    model.freeze()
    n = len(model.layers)
    first = 0 if stage["train_all"] else n - stage["new"]
    for block in model.layers[first:]:
        block.unfreeze()
    if stage["train_head"] or stage["train_all"]:
        model.norm.unfreeze()
        model.lm_head.unfreeze()
    subs = substrate_trainable or stage["train_substrate"]
    if subs:
        model.substrate.unfreeze()
    L.unfreeze_adapters(model.layers[:first])
    adapters_below = any(L.is_lora(m) for b in model.layers[:first] for _, m in b.named_modules())
    return 0 if subs or adapters_below else first


def lora_for_stage(model: Model, stage: dict, lcfg, args, final: bool = False, key=None) -> int:
    """Add adapters to frozen blocks if the schedule asks; return adapter params."""
    if lcfg is None:
        return 0
    first = len(model.layers) if final else len(model.layers) - stage["new"]
    wants = final or (lcfg.from_depth is not None and stage["depth"] >= lcfg.from_depth and first > 0)
    if not wants or first == 0:
        return 0
    rank = lcfg.rank
    if lcfg.budget:
        base = stage_active(args, 0 if final else stage["new"], stage["train_head"] or final)
        rank = L.rank_for_budget(args, first, lcfg.targets, lcfg.budget, base)
    return L.add_lora(model.layers[:first], rank, lcfg.scale, lcfg.targets, key)


def build_model(args, tokenizer, first_blocks: int, seed: int) -> Model:
    """A fresh model with the first stage's blocks; the substrate from its recipe."""
    from mlx_grow.substrate.tables import build_table

    a = type(args).from_dict({**args.to_dict(), "num_hidden_layers": first_blocks})
    strings = tokenizer.token_strings() if a.substrate.kind == "glyph" and not a.substrate.path else None
    table = build_table(a.substrate, a.vocab_size, a.hidden_size, strings)
    model = Model(a, substrate_table=table)
    init_weights(model, seed)
    return model


def trainable_count(model) -> int:
    return sum(v.size for _, v in tree_flatten(model.trainable_parameters()))


def train_flops(model, stage_first: int, head: bool, tokens: int, seq_len: int) -> float:
    """Forward through everything, backward (2x) through the trainable blocks and head."""
    a = model.args
    n = len(model.layers)
    fwd_blocks = flops_per_token(a, n, seq_len) - 2 * a.hidden_size * a.vocab_size
    bwd = 2 * (flops_per_token(a, n - stage_first, seq_len) - 2 * a.hidden_size * a.vocab_size)
    head_f = 2 * a.hidden_size * a.vocab_size
    return tokens * (fwd_blocks + head_f + bwd + (2 * head_f if head or stage_first < n else 0))


class TrainingDiverged(RuntimeError):
    pass


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (e.g. the disk is full); the previous one is intact."""


def stage_streams(d, tok, t, st, seed, progress):
    """Return batch(local_step, rank, world) for a stage; a monolithic stage walks
    the grown run's stage streams in order, so both see the same tokens."""
    from mlx_grow.data.stream import open_stream

    segments = st.get("segments") or [st["steps"]]
    index = 0 if "segments" in st else st["index"]
    streams = [open_stream(d, tok, t.seq_len, t.batch_size, seed, stage=index + j, progress=progress)
               for j in range(len(segments))]
    bounds = np.cumsum([0] + segments)

    def batch(step, rank, world):
        j = int(np.searchsorted(bounds, step, side="right") - 1)
        j = min(j, len(streams) - 1)
        return streams[j].batch(int(step - bounds[j]), rank, world)

    return batch, streams[0]


def grow(config, out, resume: bool = False, seed: int | None = None, progress: bool = True,
         on_step=None, echo=print):
    """Run a growth (or monolithic) schedule; return the final model directory."""
    from pathlib import Path

    from mlx_grow.data.stream import DataConfig
    from mlx_grow.io.progress import StepProgress
    from mlx_grow.tokenizer import load_tokenizer
    from mlx_grow.training.lora import LoRAConfig
    from mlx_grow.training.runs import Run, load_checkpoint, remove_stale_temp
    from mlx_grow.training.schedule import GrowConfig, plan
    from mlx_grow.training.step import evaluate

    g = GrowConfig.from_dict(config.grow)
    t = TrainConfig.from_dict(config.train)
    d = DataConfig.from_dict(config.data)
    lcfg = LoRAConfig.from_dict(g.lora) if g.lora else None
    args = config.model
    seed = t.seed if seed is None else int(seed)
    depth = g.depth or args.num_hidden_layers
    if t.seq_len > args.max_position_embeddings:
        raise ValueError(f"train.seq_len {t.seq_len} exceeds the model context {args.max_position_embeddings}")
    stages = plan(g, depth, t)
    if lcfg and lcfg.final_phase_steps and not g.monolithic:
        stages.append({"index": len(stages), "new": 0, "depth": depth, "steps": lcfg.final_phase_steps,
                       "train_head": True, "train_substrate": False, "train_all": False, "final_lora": True})
    group = mx.distributed.init()
    world, rank = group.size(), group.rank()
    if t.batch_size % (world * t.grad_accum):
        raise ValueError(f"batch_size {t.batch_size} must divide by ranks x grad_accum = {world * t.grad_accum}")
    tok = load_tokenizer(config.tokenizer)
    if tok.vocab_size != args.vocab_size:
        raise ValueError(f"tokenizer {config.tokenizer} has {tok.vocab_size} ids but model.vocab_size is "
                         f"{args.vocab_size}: make them equal")
    run = Run(out, rank)
    say = echo if rank == 0 else (lambda *a, **k: None)
    record = {**config.to_dict(), "seed": seed, "depth": depth}
    run.init(record, {"tokenizer": tok.fingerprint}, resume, barrier=lambda: barrier(group))
    if rank == 0:
        remove_stale_temp(Path(out))
        from mlx_grow.training.memory import fit_warning

        if warning := fit_warning(config, world):
            say(warning)

    state, opt_flat = None, None
    if resume and (ckpt := shared_checkpoint(run, group)) is not None:
        model, state, opt_flat = load_checkpoint(ckpt)
        run.truncate_metrics(state["global_step"])
        say(f"resuming from {ckpt} (stage {state['stage'] + 1}, step {state['step']})")
    else:
        model = build_model(args, tok, stages[0]["new"], seed)
    if t.dtype != "float32":
        model.set_dtype(getattr(mx, t.dtype))
    g_step = state["global_step"] if state else 0
    tokens = state.get("tokens", 0) if state else 0
    flops = state.get("flops", 0.0) if state else 0.0
    val_batches = None
    prev = None
    summary = state.get("summary", []) if state else []
    pcache = PrefixCache(g.prefix_cache_mb) if g.prefix_cache else None
    bar = StepProgress(sum(s["steps"] for s in stages), enabled=progress and rank == 0,
                       tokens_per_step=t.batch_size * t.seq_len)
    bar.advance_to(g_step)
    try:
        for k in range(state["stage"] if state else 0, len(stages)):
            st = stages[k]
            resumed = state is not None and k == state["stage"]
            final = st.get("final_lora", False)
            if not resumed and k > 0 and st["new"]:
                model.add_blocks(st["new"], g.block_init, seed=seed * 1000 + k)
                maybe_fail("grow", k + 1)
                run.log({"event": "grow", "global_step": g_step, "stage": k + 1, "depth": len(model.layers),
                         "tokens": tokens})
            if not resumed:
                lora_for_stage(model, st, lcfg, args, final=final, key=mx.random.key(seed * 7919 + k))
                if t.dtype != "float32":  # new blocks and adapters are built in float32
                    model.set_dtype(getattr(mx, t.dtype))
            first = set_trainable(model, st, args.substrate.trainable)
            model.stop_gradient_below = first
            if pcache is not None:
                pcache.invalidate()
            use_cache = pcache is not None and first > 0
            batch_of, stream0 = stage_streams(d, tok, t, st, seed, progress and rank == 0)
            if val_batches is None:
                val_batches = stream0.val_batches(t.val_batches)
            seg = st["steps"]
            if lcfg and lcfg.restarts and L.has_lora(model):
                seg = math.ceil(st["steps"] / (lcfg.restarts + 1))
            active = trainable_count(model)
            stepper = Stepper(model, t, seg, group, carry=prev if g.carry_optimizer and not resumed else None,
                              prefix_start=first if use_cache else None)
            prev = None  # free the last stage's optimizer state
            if resumed:
                stepper.load_state_dict(opt_flat)
            step = state["step"] if resumed else 0
            best, bad = (state.get("plateau", [math.inf, 0]) if resumed else [math.inf, 0])
            label = "LoRA phase" if final else f"stage {k + 1}/{len(stages)}"
            say(f"{label}: {len(model.layers)} blocks, training {human(active)} parameters"
                + (f" (blocks {first + 1}-{len(model.layers)} + head)" if first else ""))
            t0, last_loss = time.perf_counter(), math.nan
            while step < st["steps"]:
                maybe_fail("step", g_step + 1)
                x, y = split_xy(batch_of(step, rank, world))
                if on_step is not None:
                    on_step(g_step, model)
                if use_cache:
                    x = pcache(model, np.array(x), first)
                loss, gnorm = stepper.step(x, y)
                if armed("step", g_step + 1) == "nan" or getattr(on_step, "poison", None) == g_step:
                    loss = math.nan
                try:
                    check_finite(loss, g_step)
                except FloatingPointError as e:
                    last = run.checkpoints()[-1] if run.checkpoints() else None
                    raise TrainingDiverged(
                        f"{e} (stage {k + 1}); stopped. The last good checkpoint is {last or 'none yet'}: "
                        "lower train.lr and run again with --resume"
                    ) from None
                step, g_step, last_loss = step + 1, g_step + 1, loss
                tokens += t.batch_size * t.seq_len
                flops += train_flops(model, first, st["train_head"], t.batch_size * t.seq_len, t.seq_len)
                dt = time.perf_counter() - t0
                bar.update(g_step, f"{label} loss {loss:.3f}")
                if step % t.log_every == 0 or step == st["steps"]:
                    run.log({"event": "train", "global_step": g_step, "stage": k + 1, "step": step,
                             "loss": loss, "lr": stepper.lr, "grad_norm": gnorm, "tokens": tokens,
                             "tok_s": t.batch_size * t.seq_len * step / max(dt, 1e-9) if not resumed else None,
                             "active_params": active, "flops": flops,
                             "peak_mem_mb": mx.get_peak_memory() / 2**20})
                if t.eval_every and step % t.eval_every == 0 and step < st["steps"]:
                    val = evaluate(model, val_batches, (pcache, first) if use_cache else None, group)
                    run.log({"event": "eval", "global_step": g_step, "stage": k + 1, "val_loss": val,
                             "tokens": tokens, "flops": flops})
                    if g.plateau:
                        if val < best - g.plateau.get("min_delta", 0.0):
                            best, bad = val, 0
                        else:
                            bad += 1
                        if bad >= g.plateau.get("patience", 3):
                            say(f"{label}: validation loss plateaued at {val:.4f}; ending the stage")
                            step = st["steps"]
                if lcfg and lcfg.restarts and L.has_lora(model) and step % seg == 0 and step < st["steps"]:
                    L.fuse_lora(model.layers)
                    lora_for_stage(model, st, lcfg, args, final=final, key=mx.random.key(seed * 31 + g_step))
                    if t.dtype != "float32":
                        model.set_dtype(getattr(mx, t.dtype))
                    first = set_trainable(model, st, args.substrate.trainable)
                    stepper = Stepper(model, t, seg, group, prefix_start=first if use_cache else None)
                if t.checkpoint_every and g_step % t.checkpoint_every == 0:
                    ck = {"stage": k, "step": step, "global_step": g_step, "tokens": tokens, "flops": flops,
                          "lora": L.lora_structure(model), "plateau": [best, bad], "summary": summary,
                          "lineage": {"run": str(out), "stage": k + 1, "step": g_step}}
                    try:
                        run.save_checkpoint(model, tok, stepper, ck, t.keep_checkpoints)
                    except OSError as e:
                        last = run.checkpoints()[-1] if run.checkpoints() else "none yet"
                        raise CheckpointWriteError(e.errno, f"cannot write the step-{g_step:06d} checkpoint "
                                                   f"({e.strerror}); the last good checkpoint is {last}: "
                                                   "free space, then run again with --resume") from e
            L.fuse_lora(model.layers)
            val = evaluate(model, val_batches, (pcache, first) if use_cache else None, group)
            run.log({"event": "eval", "global_step": g_step, "stage": k + 1, "val_loss": val,
                     "tokens": tokens, "flops": flops, "stage_end": True,
                     **({"prefix_cache_hits": pcache.hits, "prefix_cache_misses": pcache.misses} if use_cache else {})})
            summary.append({"stage": k + 1, "depth": len(model.layers), "active_params": active,
                            "steps": st["steps"], "tokens": tokens, "train_loss": last_loss, "val_loss": val})
            if rank == 0:
                save_stage(model, tok, run.stage_dir(k), out, k, summary)
            prev = stepper
            say(f"{label} done: validation loss {val:.4f}")
    finally:
        bar.close()
    final_dir = run.root / "final"
    if rank == 0:
        from mlx_grow.checkpoint import save_model
        from mlx_grow.training.plot import plot_run

        model.set_dtype(mx.float32)
        save_model(model, final_dir, tok, meta={"lineage": {"run": str(out), "stage": len(stages), "summary": summary},
                                                "seed": seed}, overwrite=True)
        plot_run(run.root)
    return final_dir, summary


def barrier(group):
    """Wait until every rank gets here (nothing to wait for on one rank)."""
    if group.size() > 1:
        mx.eval(mx.distributed.all_sum(mx.array(1), group=group))


def shared_checkpoint(run, group):
    """The checkpoint to resume from: rank 0 picks the newest one that passes its
    checksums, and every rank loads that one (None: start afresh)."""
    from mlx_grow.checkpoint import read_meta, verify_files

    ckpt = run.latest() if group.rank() == 0 else None
    if group.size() == 1:
        return ckpt
    mine = (int(ckpt.name.split("-")[1]) if ckpt else -1) if group.rank() == 0 else 0
    step = mx.distributed.all_sum(mx.array(mine), group=group).item()
    if step < 0:
        return None
    ckpt = run.ckpt_dir / f"step-{step:06d}"
    if group.rank() > 0:
        if not ckpt.is_dir():
            raise FileNotFoundError(
                f"rank {group.rank()}: {ckpt} is not on this host; resuming needs the run directory at the "
                "same path on every host (a shared disk, or copy it there first)")
        verify_files(ckpt, read_meta(ckpt))
    return ckpt


def save_stage(model, tok, path, out, k, summary):
    from mlx_grow.checkpoint import save_model

    save_model(model, path, tok, meta={"lineage": {"run": str(out), "stage": k + 1, "summary": summary[-1]}},
               overwrite=True)
