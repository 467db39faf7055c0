"""Memory planner: the peak memory of one growth stage, or of monolithic
training, predicted from the config alone (nothing is allocated).

A training step's peak is the resident state plus the largest of these
moments of the step:

- resident: weights of the whole model, and AdamW's two moments of the
  active (trainable) set only; the prefix cache when it is on.
- head: the chunked cross-entropy (training/loss.py), which forms the loss
  and its gradients chunk by chunk: float32 [chunk, V] tensors (about 1.5
  per chunk; MLX's scheduler lets up to about four chunks be in flight, so
  this stops growing there; plus a bf16 copy in a bf16 run), the
  head weight's float32 gradient accumulator and its copies [V, d], and
  dL/dh [B*T, d]; next to the activations every trainable block saved.
  The [B, T, V] logits are never held at once.
- blocks: the backward pass through a trainable block, next to the
  activations every trainable block saved for it, dL/dh and the head
  weight's gradient, which live until the step ends.
- update: the gradients of the active set, their clipped copy and the new
  weights and moments that AdamW writes before the old ones are freed.
  With several ranks, averaging the gradients adds one more copy of them to
  the head, blocks and update moments.
- eval: the forward pass of the rank's rows of a validation batch (float32
  logits and the log-softmax's temporary), and the frozen prefix's forward,
  which is inference cost only.

The per-tensor counts below were measured with mx.get_peak_memory on MLX's
CPU backend (benchmarks/bench_memory.py checks them); the GPU backends fuse
attention differently, so treat GPU figures as estimates.
"""

import os
from dataclasses import dataclass

from mlx_grow.base import UserError, brief, size
from mlx_grow.training.params import human, stage_active, totals

# [B, T, d] tensors each trainable block keeps for its backward pass
SAVED_PER_BLOCK = 26
# [B, T, d] tensors and [B, H, T, T] score tensors alive while one block runs backward
BACKWARD_ACTS, BACKWARD_SCORES = 31, 2
# [B, T, d] and score tensors alive while one frozen block runs forward (an
# estimate: never the peak in the measured shapes)
FORWARD_ACTS, FORWARD_SCORES = 12, 2
# float32 [chunk, V] tensors alive while the chunked loss runs over n chunks (logits and exp):
# min(LOSS_MAX, LOSS_PER_CHUNK * n + LOSS_FIRST); chunks overlap in MLX's scheduler up to ~4
# (fitted to bench_memory.py's measurements: the overlap is the least certain part of the model)
LOSS_PER_CHUNK, LOSS_FIRST, LOSS_MAX = 1.5, 1.0, 7.5
# bf16 [chunk, V] tensors alive next to them in a bf16 run (the bf16 logits and exp)
LOSS_BF16 = 1
# float32 [V, d] tensors alive while it runs (the head weight's gradient, its accumulator and copies)
LOSS_HEAD_FP32 = 1
# ... and still alive while the blocks run backward
KEPT_HEAD_FP32 = 2
# float32 [chunk, V] tensors alive while a validation batch is scored chunk by chunk
EVAL_CHUNK_FP32 = 1.5
# copies of the active set during the optimizer update: grads, clipped grads,
# new weights and two new moments
UPDATE_COPIES = 5

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class Shape:
    batch: int  # rows per rank and micro-batch
    seq: int
    eval_batch: int  # rows of a validation batch per rank


def stage_peak(args, stage, shape: Shape, dtype: str = "float32", lora_params: int = 0,
               prefix_cache_bytes: int = 0, ranks: int = 1, loss_chunk: int = 0) -> dict:
    """Predicted bytes by part, and the peak, of one `schedule.Stage`.
    `loss_chunk`: tokens per chunk of the cross-entropy (0: its default)."""
    from mlx_grow.training.loss import default_chunk

    pb = DTYPE_BYTES.get(dtype)
    if pb is None:
        raise UserError(f"unknown dtype {brief(dtype)}: use one of {', '.join(DTYPE_BYTES)}")
    d, V, H = args.hidden_size, args.vocab_size, args.num_attention_heads
    depth = stage.depth
    everything = stage.train_all or stage.train_substrate or args.substrate.trainable
    if everything:
        active = totals(args, depth)["trainable"] if stage.train_all else \
            stage_active(args, stage.new, stage.train_head, lora_params, train_substrate=True)
    else:
        active = stage_active(args, stage.new, stage.train_head, lora_params)
    # gradients flow through every block when anything below the new blocks trains
    backprop = depth if everything or lora_params else stage.new
    frozen = depth - backprop

    def acts(rows):
        u = rows * shape.seq * d * pb  # one [B, T, d] tensor
        s = rows * H * shape.seq ** 2 * pb  # one [B, H, T, T] score tensor
        z = rows * shape.seq * V * 4  # one float32 [B, T, V] tensor
        return u, s, z

    u, s, _ = acts(shape.batch)
    saved = backprop * (SAVED_PER_BLOCK * u + s)
    chunk = loss_chunk or default_chunk(V)
    tokens = shape.batch * shape.seq
    c = min(chunk, tokens)
    n_chunks = -(-tokens // c)
    zc = c * V * 4  # one float32 [chunk, V] tensor
    in_flight = min(LOSS_MAX, LOSS_PER_CHUNK * n_chunks + LOSS_FIRST)
    head_grad = V * d * 4 if stage.train_head else 0
    dh = tokens * d * 4
    head_tensors = in_flight * zc + (LOSS_BF16 * c * V * pb if pb < 4 else 0) + LOSS_HEAD_FP32 * head_grad + dh
    averaging = active * pb if ranks > 1 else 0
    head = saved + head_tensors + averaging
    blocks = saved + KEPT_HEAD_FP32 * head_grad + dh + BACKWARD_ACTS * u + BACKWARD_SCORES * s + averaging \
        if backprop else 0
    update = UPDATE_COPIES * active * pb + averaging
    ue, se, _ = acts(shape.eval_batch)
    ce = min(chunk, shape.eval_batch * shape.seq)
    prefix = FORWARD_ACTS * u + FORWARD_SCORES * s if frozen else 0
    evaluation = EVAL_CHUNK_FP32 * ce * V * 4 + (ce * V * pb if pb < 4 else 0) \
        + FORWARD_ACTS * ue + FORWARD_SCORES * se
    moments = {"head": head, "blocks": blocks, "update": update, "eval": evaluation, "frozen prefix": prefix}
    worst = max(moments, key=moments.get)
    resident = {
        "weights": totals(args, depth)["total"] * pb,
        "optimizer": 2 * active * pb,
        "prefix cache": prefix_cache_bytes,
    }
    parts = {**resident, "gradients": active * pb, "activations": saved, "logits": head_tensors}
    return {"parts": parts, "moments": moments, "peak_moment": worst, "active": active,
            "peak": sum(resident.values()) + moments[worst]}


def plan_config(cfg, batch: int | None = None, seq: int | None = None, ranks: int = 1, stages=None) -> dict:
    """Predictions for every stage of `cfg` (its stage plan `stages`, default
    schedule.plan(cfg)) and for monolithic training of the same depth:
    {"stages": [...], "monolithic": {...}, "batch", "seq", "dtype"}."""
    from mlx_grow.training.schedule import Stage, plan

    t, g = cfg.train, cfg.grow
    batch, seq = batch or t.batch_size, seq or t.seq_len
    if batch % (ranks * t.grad_accum):
        raise UserError(f"batch {batch} must divide by ranks x grad_accum = {ranks * t.grad_accum}")
    shape = Shape(batch // (ranks * t.grad_accum), seq, batch // ranks)
    out = []
    for st in plan(cfg) if stages is None else stages:
        cache = 0
        if g.prefix_cache and st.depth > st.new and not st.train_all:
            rows = st.steps * batch // ranks + t.val_batches * batch
            cache = min(g.prefix_cache_mb << 20, rows * seq * cfg.model.hidden_size * DTYPE_BYTES[t.dtype])
        out.append({**stage_peak(cfg.model, st, shape, t.dtype, st.lora_params, cache, ranks, t.loss_chunk),
                    "stage": st})
    depth = cfg.depth
    mono = Stage(index=0, new=depth, depth=depth, steps=1, train_all=True)
    return {"stages": out, "monolithic": stage_peak(cfg.model, mono, shape, t.dtype, ranks=ranks,
                                                    loss_chunk=t.loss_chunk), "batch": batch,
            "seq": seq, "dtype": t.dtype, "ranks": ranks}


def machine_memory() -> tuple[int, str]:
    """(bytes a run may use, where the figure comes from)."""
    import mlx.core as mx

    try:
        info = mx.device_info()
    except Exception:  # older MLX: only the Metal query exists
        info = mx.metal.device_info() if mx.metal.is_available() else {}
    for key in ("max_recommended_working_set_size", "memory_size", "total_memory"):
        if info.get(key):
            return int(info[key]), f"{info.get('device_name', 'GPU')} {key}"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "total RAM"


def fit_warning(cfg, ranks: int = 1, p: dict | None = None) -> str | None:
    """A warning when the largest stage is predicted not to fit this machine
    (`p`: plan_config's prediction, when made already)."""
    p = p or plan_config(cfg, ranks=ranks)
    worst = max(p["stages"], key=lambda r: r["peak"])
    have, source = machine_memory()
    if worst["peak"] <= have:
        return None
    k = worst["stage"].index + 1
    return (f"warning: stage {k} is predicted to need {size(worst['peak'])} per rank at batch {p['batch']} x "
            f"seq {p['seq']} ({p['dtype']}), but this machine has {size(have)} ({source}); lower "
            "train.batch_size (raise train.grad_accum to keep the global batch) or add ranks")


def fit_check(cfg, ranks: int = 1, p: dict | None = None):
    """Refuse, before anything is written, a run whose largest stage is predicted
    not to fit this machine."""
    if warning := fit_warning(cfg, ranks, p):
        raise UserError(f"{warning.removeprefix('warning: ')}; or lower the depth (model.num_hidden_layers, "
                         "--depth). Nothing was written")


# A plausible schedule: the papers grow 16 blocks in 5 stages (80) or 6 blocks one a stage (36);
# depth x stages past this (100 blocks one a stage) needs --allow-large.
MAX_DEPTH_X_STAGES = 10_000


def plausible_check(cfg, n_stages: int, allow_large: bool = False):
    """Refuse a schedule far past any plausible one (each stage writes a whole
    model) unless `allow_large`."""
    if cfg.depth * n_stages > MAX_DEPTH_X_STAGES and not allow_large:
        raise UserError(f"depth {cfg.depth:,} in {n_stages:,} stages is far past a plausible growth schedule (depth "
                        f"x stages is {cfg.depth * n_stages:,}, the bound {MAX_DEPTH_X_STAGES:,}), and every stage "
                        "writes a whole model: check --depth and the stage sizes, or pass --allow-large to run it. "
                        "Nothing was written")


def disk_need(cfg, stages, extra_per_model: int = 0) -> dict:
    """Bytes a run writes, predicted from the config: the model at the end of every
    stage (stage-NN/), final/ (float32), and the checkpoints kept at once (the
    model and AdamW's two float32 moments of the active set, at the largest stage;
    one more while the newest is written). `extra_per_model`: the tokenizer's files."""
    from mlx_grow.training.params import stage_active

    a, t = cfg.model, cfg.train
    pb = DTYPE_BYTES.get(t.dtype, 4)
    stage_dirs = sum(totals(a, st.depth)["total"] * pb + extra_per_model for st in stages)
    final = totals(a, cfg.depth)["total"] * 4 + extra_per_model
    checkpoints = 0
    if t.checkpoint_every:
        n = sum(st.steps for st in stages) // t.checkpoint_every
        kept = min(n, t.keep_checkpoints + 1) if t.keep_checkpoints else n
        one = max(totals(a, st.depth)["total"] * pb + 2 * 4 * stage_active(a, st.new, st.train_head, st.lora_params)
                  for st in stages) + extra_per_model
        checkpoints = kept * one
    return {"stages": stage_dirs, "final": final, "checkpoints": checkpoints,
            "total": stage_dirs + final + checkpoints}


def free_bytes(path) -> tuple[int, str]:
    """(free bytes, the existing folder measured) where `path` would be written."""
    import shutil
    from pathlib import Path

    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p if p.is_dir() else p.parent).free, str(p)


def disk_check(cfg, stages, out, extra_per_model: int = 0):
    """Refuse, before anything is written, a run predicted to write more than the
    free space where its folder goes; the message gives the numbers."""
    need = disk_need(cfg, stages, extra_per_model)
    free, where = free_bytes(out)
    if need["total"] > free:
        raise UserError(f"this run would write about {size(need['total'])} ({len(stages):,} stage folders "
                        f"{size(need['stages'])}, final/ {size(need['final'])}, checkpoints "
                        f"{size(need['checkpoints'])}) but {where} has {size(free)} free: lower the depth or the "
                        "number of stages, or choose an --out with more space. Nothing was written")


def report(cfg, batch=None, seq=None, stage: int | None = None, ranks: int = 1, stages=None) -> dict:
    """Rows for `mlx-grow info --batch --seq --stage`: one column per plan."""
    p = plan_config(cfg, batch, seq, ranks, stages)
    n = len(p["stages"])
    if stage is not None and not 1 <= stage <= n:
        raise UserError(f"--stage {stage} is out of range: this schedule has stages 1-{n}")
    chosen = [p["stages"][stage - 1]] if stage else p["stages"]
    cols = [(f"stage {r['stage'].index + 1}", r) for r in chosen] + [("monolithic", p["monolithic"])]
    keys = ["weights", "optimizer", "gradients", "activations", "logits", "prefix cache"]
    rows = [[k] + [size(r["parts"][k]) for _, r in cols] for k in keys]
    rows.append(["active params"] + [human(r["active"]) for _, r in cols])
    rows.append(["peak moment"] + [r["peak_moment"] for _, r in cols])
    rows.append(["predicted peak"] + [size(r["peak"]) for _, r in cols])
    have, source = machine_memory()
    rows.append(["fits this machine"] + ["yes" if r["peak"] <= have else "no" for _, r in cols])
    notes = [f"per rank at batch {p['batch']} x seq {p['seq']}, {p['dtype']}, {ranks} rank(s); "
             f"this machine: {size(have)} ({source})"]
    return {"title": f"{cfg.name or 'config'}: predicted peak memory", "columns": ["", *[c for c, _ in cols]],
            "rows": rows, "notes": notes}
