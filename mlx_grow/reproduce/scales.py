"""The three scales of `mlx-grow reproduce`, the run configs of every experiment,
and the cost estimate printed before a run starts."""

from dataclasses import asdict, dataclass

from mlx_grow.base import UserError, brief
from mlx_grow.config import RunConfig

TOKENIZER = "bvv241-2-3"
VOCAB = 65536
ID16 = {"kind": "binary", "bits": 16}


@dataclass(frozen=True)
class Scale:
    name: str
    hidden: int
    heads: int
    seq: int
    batch: int
    lr: float
    warmup: int
    sub_depth: int  # part 1: depth of the substrate comparison models (one stage)
    sub_steps: int
    stage_steps: int  # part 2: steps of each of the 3 growth stages of 3 blocks
    layer_depth: int  # part 3: blocks, one a stage
    layer_steps: int
    phase_steps: int  # part 3: the interleaved LoRA phases
    lora_rank: int
    expert_depth: int  # part 4
    expert_steps: int
    tune_steps: int
    seeds: int
    eval_every: int
    val_batches: int
    eval_limit: int | None  # part 5: items per task (None: all)
    checkpoint_every: int
    dtype: str
    hardware: str

    def to_dict(self) -> dict:
        return asdict(self)


SCALES = {
    # Sized to finish in under an hour on a 2-core x86 CPU with MKL (about 0.7M training tokens in all;
    # such a CPU trains this shape at about 280 tokens/s, the 65,536-way softmax being most of the work).
    "tiny": Scale("tiny", hidden=128, heads=4, seq=64, batch=8, lr=2e-3, warmup=5, sub_depth=3, sub_steps=60,
                  stage_steps=25, layer_depth=4, layer_steps=15, phase_steps=8, lora_rank=8, expert_depth=3,
                  expert_steps=60, tune_steps=20, seeds=3, eval_every=15, val_batches=4, eval_limit=100,
                  checkpoint_every=0, dtype="float32",
                  hardware="a 2-core CPU with MKL (pip) or any Mac; under 60 minutes"),
    "small": Scale("small", hidden=512, heads=8, seq=256, batch=32, lr=1e-3, warmup=100, sub_depth=6, sub_steps=3000,
                   stage_steps=2000, layer_depth=6, layer_steps=1500, phase_steps=500, lora_rank=16, expert_depth=6,
                   expert_steps=3000, tune_steps=300, seeds=3, eval_every=250, val_batches=16, eval_limit=None,
                   checkpoint_every=500, dtype="bfloat16",
                   hardware="one GPU or Apple-silicon Mac with 16 GB or more (bfloat16); a CPU takes days"),
    # The 9-layer common protocol at the papers' width (configs/paper-9l-16bit.yaml): d 1024, 32 heads,
    # batch 32 x 1,024, 3B tokens a stage (our assumption, as in that config).
    "paper": Scale("paper", hidden=1024, heads=32, seq=1024, batch=32, lr=3e-4, warmup=2000, sub_depth=16,
                   sub_steps=274_658, stage_steps=91_553, layer_depth=6, layer_steps=61_036, phase_steps=30_518,
                   lora_rank=64, expert_depth=16, expert_steps=274_658, tune_steps=6_000, seeds=3, eval_every=2000,
                   val_batches=64, eval_limit=None, checkpoint_every=2000, dtype="bfloat16",
                   hardware="NVIDIA H100/H200-class GPUs (80 GB+) for weeks, or a multi-GPU node; not a CPU"),
}


def get_scale(name) -> Scale:
    if isinstance(name, Scale):
        return name
    if name not in SCALES:
        raise UserError(f"unknown scale {brief(name)}: use one of {', '.join(SCALES)}")
    return SCALES[name]


def run_config(s: Scale, name: str, depth: int, grow: dict, seed: int = 0, substrate=None, data=None) -> RunConfig:
    """One experiment's run: the scale's shape and training settings, bvv241-2-3, AdamW as in `train`."""
    return RunConfig.from_dict({
        "name": name, "tokenizer": TOKENIZER,
        "model": {"vocab_size": VOCAB, "hidden_size": s.hidden, "num_hidden_layers": depth,
                  "num_attention_heads": s.heads, "max_position_embeddings": s.seq, "substrate": substrate or ID16},
        "data": {"sources": list(data or ["builtin:default"])},
        "grow": grow,
        "train": {"batch_size": s.batch, "seq_len": s.seq, "lr": s.lr, "warmup_steps": s.warmup,
                  "eval_every": s.eval_every, "val_batches": s.val_batches, "checkpoint_every": s.checkpoint_every,
                  "seed": seed, "dtype": s.dtype, "log_every": 5},
    }, where=f"reproduce {name}")


SUBSTRATES = {  # part 1: label -> substrate section
    "glyph": {"kind": "glyph"},
    "16-bit id": ID16,
    "64-bit random code": {"kind": "random", "bits": 64, "seed": 0},
    "float (random code -> PCA -> L2)": None,  # width = d_model, set per scale
    "trainable embeddings": {"kind": "trainable", "trainable": True},
}
GROWN_VARIANTS = ("grown 3+3+3", "monolithic, frozen substrate", "monolithic, fully trainable")
LAYER_VARIANTS = ("one layer a stage", "+ LoRA on the frozen layers", "+ interleaved LoRA phases")


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


def experiments(s: Scale, data=None, experts=None, glyph: bool = True, font=None, substrates=None) -> list:
    """[(part, key, label, seed, RunConfig)] of every training run, in the order they run.
    `data`: the sources of parts 1-3 (default: the scale's, SCALE_DATA, else the built-in
    corpus); `experts`: the two corpora of part 4 (default: SCALE_EXPERTS, else EXPERT_DATA)."""
    data = data or SCALE_DATA.get(s.name)
    experts = experts or SCALE_EXPERTS.get(s.name)
    jobs = []
    for label in substrates or SUBSTRATES:
        if label == "glyph" and not glyph:
            continue
        key = "sub-" + label.split()[0].replace("-", "")
        grow = {"stages": [s.sub_depth], "steps_per_stage": s.sub_steps}
        sub = substrate_section(s, label)
        if label == "glyph" and font:
            sub = {**sub, "font": str(font)}
        jobs.append((1, key, label, 0, run_config(s, key, s.sub_depth, grow, 0, sub, data)))
    for seed in range(s.seeds):
        for label, key, grow, sub in (
                (GROWN_VARIANTS[0], "grown", {"stages": [3, 3, 3]}, None),
                (GROWN_VARIANTS[1], "mono-frozen", {"stages": [3, 3, 3], "monolithic": True}, None),
                (GROWN_VARIANTS[2], "mono-trainable", {"stages": [3, 3, 3], "monolithic": True},
                 SUBSTRATES["trainable embeddings"])):
            grow = {**grow, "steps_per_stage": s.stage_steps}
            jobs.append((2, f"{key}-s{seed}", label, seed, run_config(s, key, 9, grow, seed, sub, data)))
    n = s.layer_depth
    lora = {"rank": s.lora_rank, "targets": ["q_proj", "v_proj"]}
    for label, key, extra in (
            (LAYER_VARIANTS[0], "layer", {}),
            (LAYER_VARIANTS[1], "layer-lora", {"lora": {**lora, "from_depth": 2}}),
            (LAYER_VARIANTS[2], "layer-phases", {"lora": {**lora, "phases": [
                {"after_stage": k, "steps": s.phase_steps} for k in range(1, n)]}})):
        grow = {"blocks_per_stage": 1, "steps_per_stage": s.layer_steps, **extra}
        jobs.append((3, key, label, 0, run_config(s, key, n, grow, 0, None, data)))
    for k, src in enumerate(experts or EXPERT_DATA):
        grow = {"stages": [s.expert_depth], "steps_per_stage": s.expert_steps}
        jobs.append((4, f"expert-{k + 1}", f"expert {k + 1}: {source_name(src)}", 0,
                     run_config(s, f"expert-{k + 1}", s.expert_depth, grow, 0, None, [src])))
    return jobs


EXPERT_DATA = ("builtin:kjv", "builtin:shakespeare")

# At small and paper scale, parts 1-3 read the corpora of the 9-layer paper configs
# (configs/paper-9l-*.yaml: FineWeb-Edu + Cosmopedia, 80/20) and part 4's experts the two
# Wikipedias of the 2025 families (Russian and Chinese), streamed from the Hub, with token
# budgets sized so that no run reads a source more than once. The built-in corpora hold
# 5.4M tokens: enough for tiny, repeated thousands of times at these scales.
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


def estimate(s: Scale, jobs: list) -> dict:
    """Tokens, training FLOPs and the predicted peak memory of every run of a scale."""
    from mlx_grow.training.params import flops_per_token
    from mlx_grow.training.plan import resolve_run

    tokens, flops, peak = 0, 0.0, 0
    per_step = s.batch * s.seq
    for _, _, _, _, cfg in jobs:
        run = resolve_run(cfg, check=False)
        for st in run.stages:
            t = st.steps * per_step
            fwd = flops_per_token(cfg.model, st.depth, s.seq)
            trained = flops_per_token(cfg.model, st.depth - st.first_trainable, s.seq)
            tokens, flops = tokens + t, flops + t * (fwd + 2 * trained)
        p = run.memory
        peak = max([peak, p["monolithic"]["peak"]] + [r["peak"] for r in p["stages"]])
    tune = 2 * s.tune_steps * per_step  # the merged model runs both experts
    return {"runs": len(jobs), "tokens": tokens + tune, "flops": flops, "peak_bytes": peak,
            "hardware": s.hardware}
