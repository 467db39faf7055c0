"""The three scales of `mlx-grow reproduce`, the run configs of every experiment,
the cost and time estimate printed before a run starts, and the check that the
variants of each part read the same number of tokens."""

from dataclasses import asdict, dataclass

from mlx_grow.base import UserError, brief
from mlx_grow.config import RunConfig

ID16 = {"kind": "binary", "bits": 16}
TRAINED = "train"  # Scale.tokenizer: a BPE trained on the reproduction's training split at its start


@dataclass(frozen=True)
class Scale:
    name: str
    hidden: int
    heads: int
    seq: int
    batch: int
    lr: float
    warmup: int  # one warm-up at the start of every run (train.schedule global: one cosine over the run)
    vocab: int  # ids of the tokenizer: about 64 x hidden, the papers' economics (65,536 at d 1,024)
    tokenizer: str  # TRAINED, or a tokenizer name (bvv241-2-3)
    sub_depth: int  # part 1: depth of the substrate comparison models (one stage)
    sub_steps: int
    stage_steps: int  # part 2: steps of each of the 3 growth stages of 3 blocks (the monolithic runs mirror them)
    layer_depth: int  # part 3: blocks, one a stage
    layer_steps: int  # steps a block; the interleaved LoRA phases and the control share this budget
    phase_steps: int  # part 3: each LoRA phase, taken from the steps of the stage before it
    lora_rank: int
    expert_depth: int  # part 4
    expert_steps: int  # each expert; the union-trained control gets both experts' steps
    tune_steps: int  # the merge, and each expert alone, tuned on the union
    seeds: int  # every part: seeds 0 .. seeds-1, paired across the variants
    eval_every: int
    val_batches: int
    eval_limit: int | None  # part 5: items per task (None: all)
    benchmarks: bool  # part 5 runs at this scale (tiny: every depth is at chance)
    checkpoint_minutes: float  # a checkpoint about this often (the step count derives from the estimate)
    dtype: str
    hardware: str

    def to_dict(self) -> dict:
        return asdict(self)


SCALES = {
    # A 2-core x86 CPU with MKL, all five parts in under 2 hours. The width is the old tiny's; the vocabulary
    # is 64 x 128 = 8,192 pieces, so the head is 37 % of the monolithic model's trainable parameters (the
    # papers': 37 %) and a step costs a quarter of one over 65,536 ids. Budgets: every arm ends clearly below
    # its unigram table (docs/reproduction.md says how the pilots chose them).
    "tiny": Scale("tiny", hidden=128, heads=4, seq=64, batch=8, lr=2e-3, warmup=20, vocab=8192, tokenizer=TRAINED,
                  sub_depth=3, sub_steps=150, stage_steps=120, layer_depth=4, layer_steps=60, phase_steps=15,
                  lora_rank=8, expert_depth=3, expert_steps=150, tune_steps=40, seeds=3, eval_every=60,
                  val_batches=16, eval_limit=None, benchmarks=False, checkpoint_minutes=5, dtype="float32",
                  hardware="a 2-core CPU with MKL (pip) or any Mac"),
    # d 512: 64 x 512 = 32,768 pieces, trained on a sample of the scale's training split.
    "small": Scale("small", hidden=512, heads=8, seq=256, batch=32, lr=1e-3, warmup=100, vocab=32768,
                   tokenizer=TRAINED, sub_depth=6, sub_steps=3000, stage_steps=2000, layer_depth=6, layer_steps=1500,
                   phase_steps=500, lora_rank=16, expert_depth=6, expert_steps=3000, tune_steps=300, seeds=2,
                   eval_every=250, val_batches=16, eval_limit=None, benchmarks=True, checkpoint_minutes=5,
                   dtype="bfloat16", hardware="one GPU or Apple-silicon Mac with 16 GB or more (bfloat16)"),
    # The 9-layer common protocol at the papers' width (configs/paper-9l-16bit.yaml): d 1024, 32 heads,
    # batch 32 x 1,024, 3B tokens a stage (our assumption, as in that config), bvv241-2-3 (65,536 = 64 x 1,024).
    "paper": Scale("paper", hidden=1024, heads=32, seq=1024, batch=32, lr=3e-4, warmup=2000, vocab=65536,
                   tokenizer="bvv241-2-3", sub_depth=16, sub_steps=274_658, stage_steps=91_553, layer_depth=6,
                   layer_steps=61_036, phase_steps=30_518, lora_rank=64, expert_depth=16, expert_steps=274_658,
                   tune_steps=6_000, seeds=2, eval_every=2000, val_batches=64, eval_limit=None, benchmarks=True,
                   checkpoint_minutes=10, dtype="bfloat16",
                   hardware="NVIDIA H100/H200-class GPUs (80 GB+) for weeks, or a multi-GPU node; not a CPU"),
}

PARTS = {"substrates": 1, "grown": 2, "one-layer": 3, "composition": 4, "depth": 5}
PART_TITLES = {1: "Substrates", 2: "Grown vs monolithic", 3: "One layer at a time", 4: "Composition",
               5: "Benchmarks over depth"}

# Training throughput by device class, in effective training FLOP/s (forward + backward FLOPs of the
# runs over their wall time). The time estimate divides a scale's FLOPs by it, and the checkpoint
# interval (steps) derives from it. "measured": by this code on such a machine (benchmarks and the
# committed tiny run); "assumed": not measured yet, a share of the chip's peak, to be replaced by a
# measurement. Once a reproduction has finished runs, their own rate replaces the class's.
DEVICES = {
    "cpu": {"label": "x86-64 CPU, 2 cores, MKL (the development VM)", "flops": 21e9, "how": "measured",
            "note": "the committed tiny run (docs/reproduction.md, 2026-12-07): 62.6 TFLOPs of training in 49.7 min of "
                    "training runs = 21.0 GFLOP/s (20-23 per part) at load 1.3-2.6"},
    "metal": {"label": "Apple silicon GPU (Metal)", "flops": 5e12, "how": "assumed",
              "note": "an M-series Max at about a quarter of its half-precision peak; a base M-series chip is "
                      "about a quarter of that"},
    "cuda": {"label": "NVIDIA H100 (mlx[cuda])", "flops": 60e12, "how": "assumed",
             "note": "6 % of the H100's dense bfloat16 peak (989 TFLOP/s), for a young backend at these small "
                     "matrices; not measured: no GPU was lent to this work"},
}


def device_class() -> str:
    """cpu, metal or cuda: the class of the machine MLX computes on."""
    import platform

    import mlx.core as mx

    if mx.default_device().type != mx.DeviceType.gpu:
        return "cpu"
    return "metal" if platform.system() == "Darwin" else "cuda"


def get_scale(name) -> Scale:
    if isinstance(name, Scale):
        return name
    if name not in SCALES:
        raise UserError(f"unknown scale {brief(name)}: use one of {', '.join(SCALES)}")
    return SCALES[name]


def get_parts(names) -> list:
    """Part numbers from --parts names (all parts when none)."""
    if not names:
        return sorted(PARTS.values())
    out = []
    for n in names:
        for x in str(n).split(","):
            x = x.strip()
            if x == "all":
                out += PARTS.values()
            elif x in PARTS:
                out.append(PARTS[x])
            elif x:
                raise UserError(f"unknown part {brief(x)}: use {', '.join(PARTS)} or all")
    return sorted(set(out))


def run_config(s: Scale, name: str, depth: int, grow: dict, seed: int = 0, substrate=None, data=None,
               tokenizer=None, checkpoint_every: int = 0) -> RunConfig:
    """One experiment's run: the scale's shape, the reproduction's tokenizer, AdamW with
    one warm-up and one cosine decay over the whole run (train.schedule global), so a
    grown run and its monolithic twin get the same LR at every step."""
    return RunConfig.from_dict({
        "name": name, "tokenizer": str(tokenizer or s.tokenizer),
        "model": {"vocab_size": s.vocab, "hidden_size": s.hidden, "num_hidden_layers": depth,
                  "num_attention_heads": s.heads, "max_position_embeddings": s.seq, "substrate": substrate or ID16},
        "data": {"sources": list(data or ["builtin:default"])},
        "grow": grow,
        "train": {"batch_size": s.batch, "seq_len": s.seq, "lr": s.lr, "warmup_steps": s.warmup,
                  "schedule": "global", "eval_every": s.eval_every, "val_batches": s.val_batches,
                  "checkpoint_every": checkpoint_every, "seed": seed, "dtype": s.dtype, "log_every": 5},
    }, where=f"reproduce {name}")


SUBSTRATES = {  # part 1: label -> substrate section
    "glyph": {"kind": "glyph"},
    "16-bit id": ID16,
    "64-bit random code": {"kind": "random", "bits": 64, "seed": 0},
    "float (random code -> PCA -> L2)": None,  # width = d_model, set per scale
    "trainable embeddings": {"kind": "trainable", "trainable": True},
}
GROWN_VARIANTS = ("grown 3+3+3", "monolithic, frozen substrate", "monolithic, fully trainable")
LAYER_VARIANTS = ("one layer a stage", "+ LoRA on the frozen layers", "+ interleaved LoRA phases",
                  "head frozen after stage 1 (v1)", "control: no new layer")
UNION = "union-trained control"


def substrate_labels(names) -> list:
    """Part-1 substrates by name: glyph, 16-bit, 64-bit, float, trainable (a prefix of a label)."""
    out = []
    for n in names:
        hit = [label for label in SUBSTRATES if label.startswith(n)]
        if len(hit) != 1:
            raise UserError(f"unknown substrate {brief(n)} for part 1: use glyph, 16-bit, 64-bit, float or trainable")
        out.append(hit[0])
    return out


def substrate_section(s: Scale, label: str) -> dict:
    sub = SUBSTRATES[label]
    return {"kind": "float", "bits": s.hidden, "seed": 0} if sub is None else sub


def layer_variants(s: Scale) -> list:
    """Part 3: (label, key, depth, grow section) of each variant, all with the same steps.
    The interleaved LoRA phases take their steps from the stage before them; the control
    keeps training the first stage's model (one block) for every stage's steps."""
    n, L, p = s.layer_depth, s.layer_steps, s.phase_steps
    lora = {"rank": s.lora_rank, "targets": ["q_proj", "v_proj"]}
    base = {"blocks_per_stage": 1, "steps_per_stage": L}
    return [
        (LAYER_VARIANTS[0], "layer", n, base),
        (LAYER_VARIANTS[1], "layer-lora", n, {**base, "lora": {**lora, "from_depth": 2}}),
        (LAYER_VARIANTS[2], "layer-phases", n, {**base, "steps_per_stage": [L - p] * (n - 1) + [L],
                                                "lora": {**lora, "phases": [{"after_stage": k, "steps": p}
                                                                            for k in range(1, n)]}}),
        (LAYER_VARIANTS[3], "layer-v1", n, {**base, "train_head": False}),
        (LAYER_VARIANTS[4], "layer-control", 1, {"blocks_per_stage": 1, "steps_per_stage": n * L}),
    ]


def experiments(s: Scale, data=None, experts=None, glyph: bool = True, font=None, substrates=None, parts=None,
                tokenizer=None, checkpoint_every: int = 0) -> list:
    """[(part, key, label, seed, RunConfig)] of every training run of `parts` (default
    all), in the order they run. `data`: the sources of parts 1-3 (default: the
    scale's, SCALE_DATA, else the built-in corpus); `experts`: the two corpora of
    part 4 (default: SCALE_EXPERTS, else EXPERT_DATA); `tokenizer`: the
    reproduction's tokenizer (folder) when the scale trains its own."""
    data = data or SCALE_DATA.get(s.name)
    experts = experts or SCALE_EXPERTS.get(s.name) or EXPERT_DATA
    parts = set(parts or PARTS.values())
    kw = dict(tokenizer=tokenizer, checkpoint_every=checkpoint_every)
    jobs = []
    seeds = range(s.seeds)
    if 1 in parts:
        for seed in seeds:
            for label in substrates or SUBSTRATES:
                if label == "glyph" and not glyph:
                    continue
                key = "sub-" + label.split()[0].replace("-", "") + f"-s{seed}"
                grow = {"stages": [s.sub_depth], "steps_per_stage": s.sub_steps}
                sub = substrate_section(s, label)
                if label == "glyph" and font:
                    sub = {**sub, "font": str(font)}
                jobs.append((1, key, label, seed, run_config(s, key, s.sub_depth, grow, seed, sub, data, **kw)))
    if 2 in parts:
        for seed in seeds:
            for label, key, grow, sub in (
                    (GROWN_VARIANTS[0], "grown", {"stages": [3, 3, 3]}, None),
                    (GROWN_VARIANTS[1], "mono-frozen", {"stages": [3, 3, 3], "monolithic": True}, None),
                    (GROWN_VARIANTS[2], "mono-trainable", {"stages": [3, 3, 3], "monolithic": True},
                     SUBSTRATES["trainable embeddings"])):
                grow = {**grow, "steps_per_stage": s.stage_steps}
                jobs.append((2, f"{key}-s{seed}", label, seed, run_config(s, key, 9, grow, seed, sub, data, **kw)))
    if 3 in parts:
        for seed in seeds:
            for label, key, depth, grow in layer_variants(s):
                jobs.append((3, f"{key}-s{seed}", label, seed, run_config(s, key, depth, grow, seed, None, data, **kw)))
    if 4 in parts:
        for seed in seeds:
            grow = {"stages": [s.expert_depth], "steps_per_stage": s.expert_steps}
            for k, src in enumerate(experts):
                key = f"expert-{k + 1}"
                jobs.append((4, f"{key}-s{seed}", f"expert {k + 1}: {source_name(src)}", seed,
                             run_config(s, key, s.expert_depth, grow, seed, None, [src], **kw)))
            grow = {"stages": [s.expert_depth], "steps_per_stage": len(experts) * s.expert_steps}
            jobs.append((4, f"union-s{seed}", UNION, seed,
                         run_config(s, "union", s.expert_depth, grow, seed, None, list(experts), **kw)))
    check_equal_tokens(jobs)
    return jobs


def run_plan(cfg: RunConfig):
    """The run's plan, resolved as `grow` resolves it (training/plan.py), without its checks."""
    from mlx_grow.training.plan import resolve_run

    return resolve_run(cfg, check=False)


def planned_tokens(cfg: RunConfig, stages=None) -> int:
    stages = run_plan(cfg).stages if stages is None else stages
    return sum(st.steps for st in stages) * cfg.train.batch_size * cfg.train.seq_len


def check_equal_tokens(jobs):
    """Every variant of a part reads the same planned tokens (part 4: each expert the
    same, the union-trained control their sum). A broken design is a bug, not a user
    error: it stops with an AssertionError naming the runs."""
    by = {}
    for part, key, label, seed, cfg in jobs:
        by.setdefault(part, []).append((key, label, planned_tokens(cfg)))
    for part, rows in by.items():
        if part == 4:
            experts = {t for k, label, t in rows if label != UNION}
            union = {t for k, label, t in rows if label == UNION}
            n = len({label for k, label, t in rows if label != UNION})
            assert len(experts) <= 1 and (not union or union == {n * t for t in experts}), \
                f"part 4: experts read {sorted(experts)} tokens, the union control {sorted(union)}"
        else:
            assert len({t for _, _, t in rows}) == 1, \
                f"part {part}: the variants read unequal tokens: " + ", ".join(f"{k} {t:,}" for k, _, t in rows)


EXPERT_DATA = ("builtin:kjv", "builtin:shakespeare")

# At small and paper scale, parts 1-3 read the corpora of the 9-layer paper configs
# (configs/paper-9l-*.yaml: FineWeb-Edu + Cosmopedia, 80/20) and part 4's experts the two
# Wikipedias of the 2025 families (Russian and Chinese), streamed from the Hub, with token
# budgets sized so that no run reads a source more than once. The built-in corpora hold
# 2.7M tokens of the tiny tokenizer: enough for tiny, repeated thousands of times at these scales.
FWE, COSMO = "hf:HuggingFaceFW/fineweb-edu:sample-10BT", "hf:HuggingFaceTB/cosmopedia:web_samples_v2"
SCALE_DATA = {
    "small": [{"source": FWE, "weight": 0.8, "tokens": 100_000_000},
              {"source": COSMO, "weight": 0.2, "tokens": 25_000_000}],
    "paper": [{"source": FWE, "weight": 0.8, "tokens": 16_000_000_000},
              {"source": COSMO, "weight": 0.2, "tokens": 4_000_000_000}],
}
SCALE_EXPERTS = {
    "small": ({"source": "hf:wikimedia/wikipedia:20231101.ru", "tokens": 30_000_000},
              {"source": "hf:wikimedia/wikipedia:20231101.zh", "tokens": 30_000_000}),
    "paper": ({"source": "hf:wikimedia/wikipedia:20231101.ru", "tokens": 10_000_000_000},
              {"source": "hf:wikimedia/wikipedia:20231101.zh", "tokens": 10_000_000_000}),
}


def source_name(src) -> str:
    """A source string, or the `source` of a source mapping."""
    return src["source"] if isinstance(src, dict) else str(src)


EVAL_TASKS = ("mmlu", "arc_easy", "arc_challenge", "commonsense_qa")


def run_flops(cfg: RunConfig, stages=None) -> float:
    """Training FLOPs of one run: forward through every block, backward through the trainable ones."""
    from mlx_grow.training.params import flops_per_token

    flops, per_step = 0.0, cfg.train.batch_size * cfg.train.seq_len
    for st in run_plan(cfg).stages if stages is None else stages:
        fwd = flops_per_token(cfg.model, st.depth, cfg.train.seq_len)
        trained = flops_per_token(cfg.model, st.depth - st.first_trainable, cfg.train.seq_len)
        flops += st.steps * per_step * (fwd + 2 * trained)
    return flops


def checkpoint_steps(s: Scale, device: str) -> int:
    """Steps between checkpoints: about s.checkpoint_minutes of the part-2 monolithic run
    at the device class's throughput (at least 10)."""
    cfg = run_config(s, "x", 9, {"stages": [3, 3, 3], "steps_per_stage": s.stage_steps, "monolithic": True})
    per_step = run_flops(cfg) / (3 * s.stage_steps)
    return max(10, int(s.checkpoint_minutes * 60 * DEVICES[device]["flops"] / per_step))


def estimate(s: Scale, jobs: list, device: str | None = None) -> dict:
    """Tokens, training FLOPs, predicted peak memory and hours on `device`'s class of every run."""
    tokens, flops, peak = 0, 0.0, 0
    per_step = s.batch * s.seq
    for _, _, _, _, cfg in jobs:
        run = run_plan(cfg)
        tokens += planned_tokens(cfg, run.stages)
        flops += run_flops(cfg, run.stages)
        p = run.memory
        peak = max([peak, p["monolithic"]["peak"]] + [r["peak"] for r in p["stages"]])
    merges = 4 in {j[0] for j in jobs}
    # part 4's tuning: the merge (both experts) and each expert alone, per seed
    tune = s.seeds * 4 * s.tune_steps * per_step if merges else 0
    if merges:
        from mlx_grow.training.params import flops_per_token

        cfg = next(j[4] for j in jobs if j[0] == 4)
        flops += tune * 3 * flops_per_token(cfg.model, s.expert_depth, s.seq)
    out = {"runs": len(jobs), "tokens": tokens + tune, "flops": flops, "peak_bytes": peak, "hardware": s.hardware}
    if device:
        d = DEVICES[device]
        out.update(device=device, device_label=d["label"], device_flops=d["flops"], device_how=d["how"],
                   hours=flops / d["flops"] / 3600)
    return out


def head_share(s: Scale) -> dict:
    """The papers' economics at this shape: the head's share of the monolithic (frozen
    substrate) model's trainable parameters, and the grown/monolithic ratios of active
    parameters (the largest stage) and of training FLOPs (part 2's runs)."""
    from mlx_grow.training.params import count_parts

    cfg = run_config(s, "x", 9, {"stages": [3, 3, 3], "steps_per_stage": s.stage_steps, "monolithic": True})
    parts = count_parts(cfg.model, 9)
    mono = parts["blocks"] + parts["norm"] + parts["lm_head"]
    grown = count_parts(cfg.model, 3)
    grown_active = grown["blocks"] + grown["norm"] + grown["lm_head"]
    g = run_config(s, "x", 9, {"stages": [3, 3, 3], "steps_per_stage": s.stage_steps})
    return {"head_share": parts["lm_head"] / mono, "active_ratio": grown_active / mono,
            "flop_ratio": run_flops(g) / run_flops(cfg), "mono_trainable": mono, "grown_active": grown_active}


def fmt_hours(h: float) -> str:
    if h < 1:
        return f"{h * 60:.0f} min"
    if h < 48:
        return f"{h:.1f} h"
    return f"{h / 24:.0f} days" if h / 24 < 365 else f"{h / 24 / 365:.1f} years"


