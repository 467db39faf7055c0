"""`mlx-grow info`: parameter counts of a config or a model directory, the passes
over each data source, and `grow --dry-run`'s plan."""

import os
from pathlib import Path

from mlx_grow.base import UserError, size
from mlx_grow.papers import PARAMS
from mlx_grow.training.params import human, stage_active, totals

def is_model_dir(target) -> bool:
    p = Path(target)
    return p.is_dir() and (p / "config.json").exists()


def reports(target: str, batch=None, seq=None, stage=None, ranks=None) -> list:
    """What `mlx-grow info TARGET` prints: the parameter counts (describe) and, with
    --batch, --seq, --stage or --ranks, the predicted memory; a config's plan is
    resolved once for both."""
    from mlx_grow.training.plan import resolve_run

    memory_too = any(v is not None for v in (batch, seq, stage, ranks))
    if not is_model_dir(target):
        target = resolve_run(target, check=False)
    return [describe(target)] + ([memory(target, batch, seq, stage, ranks or 1)] if memory_too else [])


def describe(target) -> dict:
    """Parameter counts of a model directory, or of a config (a path, a packaged
    name or its resolved RunPlan) with its stage plan."""
    from mlx_grow.training.plan import RunPlan, resolve_run

    if not isinstance(target, RunPlan) and is_model_dir(target):
        from mlx_grow.checkpoint import load_args

        args, name, plan = load_args(target), Path(target).name, None
    else:
        plan = target if isinstance(target, RunPlan) else resolve_run(target, check=False)
        args, name = plan.cfg.model, plan.cfg.name
    t = totals(args)
    rows = [[part, f"{n:,}", human(n), "frozen" if part == "substrate" and t["frozen"] else "trainable"]
            for part, n in t["parts"].items()]
    rows.append(["total", f"{t['total']:,}", human(t["total"]), f"frozen {human(t['frozen'])}, "
                 f"trainable {human(t['trainable'])}"])
    notes = [f"per block: {t['per_block']:,}; substrate: {args.substrate.kind}"
             + (f", {args.substrate.bits} bits" if args.substrate.kind in ("binary", "gf2", "random") else "")
             + (f", {args.substrate.bits} PCA components of a {args.substrate.code_bits or args.substrate.bits}-bit "
                "random code" if args.substrate.kind == "float" else "")]
    if plan is not None:
        notes += stage_notes(plan.cfg, t, plan.stages)
        notes += data_notes(plan.cfg, None, stages=plan.stages)[0]
    for key, val in PARAMS.get(name, {}).items():
        notes.append(f"published ({key}): {val}")
    return {"title": f"{name}: parameters", "columns": ["part", "count", "", "status"], "rows": rows,
            "notes": notes}


def memory(target, batch=None, seq=None, stage=None, ranks: int = 1) -> dict:
    """The memory planner's prediction (training/memory.py) for a config (a path, a
    packaged name or its resolved RunPlan) and its stage plan."""
    from mlx_grow.training.memory import report
    from mlx_grow.training.plan import RunPlan, resolve_run

    if not isinstance(target, RunPlan) and is_model_dir(target):
        raise UserError(f"{target} is a model directory; memory prediction needs a run config "
                         "(a YAML path or a packaged name such as paper-9l-glyph)")
    for name, v in (("--batch", batch), ("--seq", seq), ("--stage", stage), ("--ranks", ranks)):
        if v is not None and v < 1:
            raise UserError(f"{name} must be at least 1, got {v}")
    plan = target if isinstance(target, RunPlan) else resolve_run(target, check=False)
    return report(plan.cfg, batch, seq, stage, ranks, plan.stages)


def stage_notes(cfg, t: dict, stages=None) -> list:
    """One line per stage of the plan (`stages`, default schedule.plan(cfg)): blocks,
    active parameters, steps and tokens."""
    from mlx_grow.training.schedule import plan

    args = cfg.model
    per_step = cfg.train.batch_size * cfg.train.seq_len
    out = []
    stages = plan(cfg) if stages is None else stages
    for st in stages:
        if st.train_all and cfg.grow.monolithic:
            out.append(f"monolithic: trains {human(t['trainable'])} ({t['trainable']:,}) at once, "
                       f"{st.steps:,} steps, {human(st.steps * per_step)} tokens")
            continue
        n = stage_active(args, st.new, st.train_head, st.lora_params, train_substrate=st.train_substrate)
        what = f"+{st.new} blocks -> depth {st.depth}" if st.new else f"LoRA rank {st.lora_rank} on {st.depth} blocks"
        upto = ("at most " if cfg.grow.plateau is not None and cfg.grow.plateau.applies(st.rule)
                and not st.between else "")  # a LoRA phase between stages never ends early
        out.append(f"{st.label}: {what}, active {n:,} ({human(n)}), "
                   f"{upto}{st.steps:,} steps, {human(st.steps * per_step)} tokens"
                   + (" (ends at a validation plateau)" if upto else ""))
    total = sum(s.steps for s in stages) * per_step
    out.append(f"planned tokens: {total:,} ({human(total)})")
    out.append(schedule_note(cfg.train, sum(s.steps for s in stages), cfg.grow.monolithic))
    if not cfg.grow.monolithic:
        out.append(f"monolithic baseline trainable: {t['trainable']:,} ({human(t['trainable'])})")
    return out


def schedule_note(t, total_steps: int, monolithic: bool = False) -> str:
    """The LR schedule in words (train.schedule)."""
    end = f"{t.min_lr_ratio:.0%} of the peak {t.lr:g}"
    if t.schedule == "per_stage":
        where = ("over the one stage of the monolithic run" if monolithic else
                 "in every stage and LoRA phase (re-warmed at every growth event)")
        return f"LR (train.schedule per_stage): {t.warmup_steps:,} warm-up steps and a cosine decay to {end} {where}"
    if t.schedule == "global":
        return (f"LR (train.schedule global): {t.warmup_steps:,} warm-up steps, then one cosine decay to {end} "
                f"over the run's {total_steps:,} planned steps")
    decay = (f", then a linear decay to {end} over the last {t.decay_fraction:.0%} of the run's "
             f"{total_steps:,} planned steps") if t.decay_fraction else ""
    return f"LR (train.schedule constant): {t.warmup_steps:,} warm-up steps, then {t.lr:g}{decay}"


def summary_table(summary: list):
    from rich.table import Table

    table = Table(title="growth summary")
    for col in ("stage", "depth", "active params", "steps", "tokens", "train loss", "val loss"):
        table.add_column(col, justify="right")
    for s in summary:
        table.add_row(str(s["stage"]), str(s["depth"]), human(s["active_params"]), str(s["steps"]),
                      f"{s['tokens']:,}", f"{s['train_loss']:.4f}", f"{s['val_loss']:.4f}")
    return table


def plan_flops(cfg, stages) -> float:
    """Training FLOPs of the plan: forward through every block, backward through the trained ones."""
    from mlx_grow.training.params import flops_per_token

    seq = cfg.train.seq_len
    total = 0.0
    for st in stages:
        tokens = st.steps * cfg.train.batch_size * seq
        total += tokens * (flops_per_token(cfg.model, st.depth, seq)
                           + 2 * flops_per_token(cfg.model, max(st.depth - st.first_trainable, 1), seq))
    return total


def measured_tok_s(out) -> tuple:
    """(tokens/s, where) measured by an earlier run in `out` (the median of its logged
    training speeds), or (None, None)."""
    import statistics

    from mlx_grow.training.runs import Run

    if out is None or not (Path(out) / "metrics.jsonl").is_file():
        return None, None
    speeds = [r["tok_s"] for r in Run(out).metrics() if r.get("event") == "train" and r.get("tok_s")]
    return (statistics.median(speeds), str(out)) if speeds else (None, None)


def data_notes(cfg, tok, network: bool = False, stages=None) -> tuple:
    """(lines, passes rows): where each hf: source is read from, and the passes per
    source (training/passes.py). network=False never touches the network (a dry run:
    the Hub counts as unreachable only when HF_HUB_OFFLINE is set)."""
    from mlx_grow.data import corpora
    from mlx_grow.training import passes

    specs = {s.source for k in range(max(len(cfg.data.stages), 1)) for s in cfg.data.mixture(k)}
    hub = sorted(s for s in specs if s.startswith("hf:"))
    local = {s: corpora.hf_local(corpora.parse_hf(s)[0]) for s in hub}
    notes = [f"data: {s} is read from {d} (downloaded)" for s, d in local.items() if d]
    if network:
        missing = corpora.offline_sources(hub)
    else:
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
        missing = [(s, "HF_HUB_OFFLINE is set") for s in hub if offline and not local[s]]
    if missing:
        notes.append(f"data: {corpora.offline_message(missing).removesuffix('. Nothing was written')}")
    elif any(not d for d in local.values()):
        notes.append(f"data: {sum(not d for d in local.values())} hf: source(s) stream from the Hub (none is "
                     f"downloaded under {corpora.data_root()})")
    rows = passes.table(cfg, tok, stages=stages)
    return notes + passes.lines(rows, cfg.data.max_passes), rows


def dry_run(plan) -> list:
    """The plan of a grow run (a RunPlan resolved without its checks), writing
    nothing: stages, tokens, passes per source, FLOPs, predicted memory and, when an
    earlier run in its folder measured one, a time estimate."""
    from mlx_grow.training import passes
    from mlx_grow.training.memory import machine_memory

    cfg, stages = plan.cfg, plan.stages
    lines = [f"{cfg.name or 'run'}: the plan ({'monolithic' if cfg.grow.monolithic else 'grown'}; dry run, "
             "nothing is written)"]
    lines += stage_notes(cfg, totals(cfg.model), stages)
    tokens = sum(s.steps for s in stages) * cfg.train.batch_size * cfg.train.seq_len
    lines.append(f"training FLOPs: {plan_flops(cfg, stages):.3g}")
    p = plan.memory
    worst = max(p["stages"], key=lambda r: r["peak"])
    have, source = machine_memory()
    label = "monolithic" if cfg.grow.monolithic else worst["stage"].label
    lines.append(f"predicted peak memory: {size(worst['peak'])} ({label}, batch {p['batch']} x seq {p['seq']}, "
                 f"{p['dtype']}); this machine has {size(have)} ({source})")
    speed, where = measured_tok_s(plan.out)
    if speed:
        hours = tokens / speed / 3600
        lines.append(f"time: about {hours:,.1f} h at the {speed:,.0f} tokens/s measured in {where}")
    else:
        lines.append("time: no measured tokens/s yet (a run logs its speed; a dry run with that run's --out "
                     "turns the plan into hours)")
    if worst["peak"] > have:
        lines.append("grow would refuse: it does not fit this machine (lower train.batch_size, raise "
                     "train.grad_accum, or add ranks)")
    notes, rows = data_notes(cfg, None, stages=stages)
    try:
        passes.check(cfg, rows)
    except UserError as e:
        notes.append(f"grow would refuse: {str(e).removesuffix('. Nothing was written')}")
    return lines + notes
