"""Run configs: one YAML file with `name`, `description`, `tokenizer`, `model`,
`data`, `grow` and `train` sections. Each section is a dataclass, parsed and
validated once when the file is read (types, ranges, choices); an error names
the key. Packaged configs are found by name (`tiny`, `paper-9l-glyph`, ...).

Precedence (as mlx-lm's trainer): a command-line flag the user gave, then the
YAML file, then the defaults here. `RunConfig.with_flags` applies flags to a copy."""

import copy
import importlib.resources
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from mlx_grow.base import (  # noqa: F401  need_* are imported from here too
    UserError,
    brief,
    field_help,
    key_list,
    need_bool,
    need_choice,
    need_int,
    need_number,
    opt,
    strict_from_dict,
)
from mlx_grow.data.config import DataConfig
from mlx_grow.model import ModelArgs

SECTIONS = ("name", "description", "tokenizer", "model", "data", "grow", "train")
DTYPES = ("float32", "bfloat16", "float16")
BLOCK_INITS = ("random", "zero-out", "copy-top")  # how new blocks start (training/init.py: add_blocks)
SCHEDULES = ("per_stage", "global", "constant")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "c_fc", "c_proj")


def need_per_stage(key: str, v, check):
    """A scalar, or a list with one value per stage (the last repeats)."""
    if isinstance(v, (list, tuple)):
        if not v:
            raise UserError(f"{key} must not be an empty list")
        for i, x in enumerate(v):
            check(f"{key}[{i}]", x)
    else:
        check(key, v)


def per_stage(value, k: int):
    """The value for stage `k` of a scalar-or-list option."""
    if isinstance(value, (list, tuple)):
        return value[min(k, len(value) - 1)]
    return value


# --- sections ---


@dataclass
class TrainConfig:
    batch_size: int = opt(16, "Global batch in sequences, summed over all ranks and micro-batches")
    seq_len: int = opt(128, "Tokens per training sequence; at most model.max_position_embeddings")
    lr: float = opt(1e-3, "Peak learning rate of AdamW")
    min_lr_ratio: float = opt(0.1, "The LR decay ends at lr * min_lr_ratio")
    warmup_steps: int = opt(20, "Linear warm-up steps: in every stage (per_stage), or once at the start of "
                                "the run (global, constant)")
    schedule: str = opt("per_stage", "per_stage: every stage (growth stage, LoRA phase, LoRA restart) warms up "
                                     "again and decays a cosine over its own steps | global: one warm-up and one "
                                     "cosine decay over the whole run's planned steps, across stages and LoRA "
                                     "phases (a grown run and its monolithic twin get the same LR at every step) "
                                     "| constant: one warm-up, then constant (with decay_fraction: warm-up, "
                                     "stable, decay)")
    decay_fraction: float = opt(0.0, "schedule constant: share of the run's planned steps, at its end, over "
                                     "which the LR falls linearly to lr * min_lr_ratio (warmup-stable-decay); "
                                     "0: no decay")
    weight_decay: float = opt(0.01, "AdamW weight decay")
    betas: list = opt([0.9, 0.95], "AdamW betas, two numbers in [0, 1)")
    grad_clip: float = opt(1.0, "Clip the gradient to this global norm; 0 turns clipping off")
    grad_accum: int = opt(1, "Micro-batches per step; batch_size must divide by ranks x grad_accum")
    grad_checkpoint: bool = opt(False, "Recompute the trainable blocks' activations in the backward pass "
                                       "(less memory, more compute)")
    dtype: str = opt("float32", "float32 | bfloat16 | float16: bfloat16 on Metal and CUDA, float32 on a CPU "
                                "(half-precision matmuls are slow on Linux CPUs)")
    eval_every: int = opt(50, "Steps between validation-loss evaluations; 0: only at stage ends")
    val_batches: int = opt(4, "Batches in the fixed validation set")
    checkpoint_every: int = opt(500, "Steps between resumable checkpoints; 0: none")
    keep_checkpoints: int = opt(2, "Resumable checkpoints kept; older ones are deleted")
    log_every: int = opt(10, "Steps between progress log lines")
    # Every random choice derives from it (training/init.py: init_seed, block_seed, adapter_key, ...).
    seed: int = opt(0, "Seed for the initialisation, the data order and the LoRA adapters")
    loss_chunk: int = opt(0, "Tokens per chunk of the cross-entropy; 0: about 128 MB of float32 logits a chunk")

    def __post_init__(self):
        for key in ("batch_size", "seq_len", "grad_accum", "val_batches", "log_every"):
            need_int(f"train.{key}", getattr(self, key), 1)
        for key in ("warmup_steps", "eval_every", "checkpoint_every", "keep_checkpoints", "seed", "loss_chunk"):
            need_int(f"train.{key}", getattr(self, key), 0)
        need_number("train.lr", self.lr, 0, open_lo=True)
        need_number("train.min_lr_ratio", self.min_lr_ratio, 0, 1)
        need_choice("train.schedule", self.schedule, SCHEDULES)
        need_number("train.decay_fraction", self.decay_fraction, 0, 1, open_hi=True)
        if self.decay_fraction and self.schedule != "constant":
            raise UserError(f"train.decay_fraction {self.decay_fraction} applies to train.schedule constant only "
                            f"(the {self.schedule} schedule decays a cosine): set schedule: constant, or drop "
                            "decay_fraction")
        need_number("train.weight_decay", self.weight_decay, 0)
        need_number("train.grad_clip", self.grad_clip, 0)
        if not isinstance(self.betas, (list, tuple)) or len(self.betas) != 2:
            raise UserError(f"train.betas must be a list of two numbers, got {brief(self.betas)}")
        for i, b in enumerate(self.betas):
            need_number(f"train.betas[{i}]", b, 0, 1, open_hi=True)
        need_bool("train.grad_checkpoint", self.grad_checkpoint)
        need_choice("train.dtype", self.dtype, DTYPES)
        if self.batch_size % self.grad_accum:
            raise UserError(f"train.batch_size {self.batch_size} must divide by train.grad_accum {self.grad_accum}")

    @classmethod
    def from_dict(cls, d, where="train"):
        return strict_from_dict(cls, d or {}, where)


@dataclass
class LoRAConfig:
    rank: int = opt(8, "Rank of the LoRA adapters")
    scale: float = opt(2.0, "Scale of the adapters' update (mlx-lm's LoRALinear scale)")
    targets: list = opt(["q_proj", "v_proj"], "Projections that get adapters: q_proj, k_proj, v_proj, o_proj, "
                                              "c_fc, c_proj")
    from_depth: int | None = opt(None, "Put adapters on all frozen blocks once the model is this deep; "
                                       "null: no adapters during growth")
    budget: int | None = opt(None, "Cap on the active (trainable) parameters of a stage; the adapter rank is "
                                   "chosen to fit")
    restarts: int = opt(0, "Restarts per stage: merge the adapters, start fresh ones, reset the optimizer, "
                           "warm the LR up again (train.schedule per_stage)")
    final_phase_steps: int = opt(0, "Steps of a last phase: adapters on every block, merged at the end; "
                                    "0: no such phase")
    final_phase_tokens: int | None = opt(None, "The last phase's length in tokens (wins over "
                                               "final_phase_steps)")
    # The v3 schedule: LoRA-only phases between growth stages.
    phases: list = opt([], "LoRA-only phases, [{after_stage: K, steps: N}] or [{after_stage: K, tokens: N}]: "
                           "adapters on every existing block, no new block, merged at the phase end")

    def __post_init__(self):
        need_int("grow.lora.rank", self.rank, 1)
        need_number("grow.lora.scale", self.scale)
        if not isinstance(self.targets, (list, tuple)) or not self.targets:
            raise UserError(f"grow.lora.targets must be a non-empty list, got {brief(self.targets)}")
        bad = [t for t in self.targets if t not in LORA_TARGETS]
        if bad:
            raise UserError(f"unknown LoRA target(s) {bad} in grow.lora.targets; choose from {', '.join(LORA_TARGETS)}")
        need_int("grow.lora.from_depth", self.from_depth, 1, optional=True)
        need_int("grow.lora.budget", self.budget, 1, optional=True)
        need_int("grow.lora.restarts", self.restarts, 0)
        need_int("grow.lora.final_phase_steps", self.final_phase_steps, 0)
        need_int("grow.lora.final_phase_tokens", self.final_phase_tokens, 1, optional=True)
        if not isinstance(self.phases, (list, tuple)):
            raise UserError(f"grow.lora.phases must be a list like [{{after_stage: 1, steps: 100}}], "
                            f"got {brief(self.phases)}")
        phases = []
        for i, p in enumerate(self.phases):
            where = f"grow.lora.phases[{i}]"
            if not isinstance(p, dict) or set(p) - {"after_stage", "steps", "tokens"} or "after_stage" not in p:
                raise UserError(f"{where} must be {{after_stage: K, steps: N}} or {{after_stage: K, tokens: N}}, "
                                f"got {brief(p)}")
            if ("steps" in p) == ("tokens" in p):
                raise UserError(f"{where} needs exactly one of steps or tokens, got {brief(p)}")
            need_int(f"{where}.after_stage", p["after_stage"], 1)
            for key in ("steps", "tokens"):
                if key in p:
                    need_int(f"{where}.{key}", p[key], 1)
            phases.append(dict(p))
        after = [p["after_stage"] for p in phases]
        if after != sorted(set(after)):
            raise UserError(f"grow.lora.phases: after_stage values must be increasing and unique, got {after}")
        self.phases = phases

    @classmethod
    def from_dict(cls, d, where="grow.lora"):
        return strict_from_dict(cls, d or {}, where)


@dataclass
class PlateauConfig:
    patience: int = opt(3, "Evaluations without improvement before the stage ends")
    min_delta: float = opt(0.0, "Nats the validation loss must fall to count as an improvement")
    stages: list | None = opt(None, "Stages it applies to, 1-based, e.g. [1]; null: every stage")

    def __post_init__(self):
        need_int("grow.plateau.patience", self.patience, 1)
        need_number("grow.plateau.min_delta", self.min_delta, 0)
        if self.stages is not None:
            if not isinstance(self.stages, (list, tuple)) or not self.stages:
                raise UserError(f"grow.plateau.stages must be a non-empty list of stage numbers (1-based), "
                                f"got {brief(self.stages)}")
            for i, k in enumerate(self.stages):
                need_int(f"grow.plateau.stages[{i}]", k, 1)
            self.stages = list(self.stages)

    def applies(self, k: int) -> bool:
        """Whether stage `k` (0-based) may end at a plateau."""
        return self.stages is None or k + 1 in self.stages


@dataclass
class GrowConfig:
    blocks_per_stage: int = opt(3, "New blocks per growth stage, unless stages lists them")
    stages: list | None = opt(None, "New blocks of each stage, e.g. [3, 3, 3, 3, 4]; they add up to the depth")
    monolithic: bool = opt(False, "Train all blocks at once on the same token stream (the baseline)")
    steps_per_stage: int | list = opt(200, "Steps of each stage; a list gives one per stage (the last repeats)")
    tokens_per_stage: int | list | None = opt(None, "Tokens of each stage (wins over steps_per_stage); a list "
                                                    "gives one per stage")
    plateau: PlateauConfig | None = opt(None, "End a stage early when the validation loss stops falling "
                                              "(see grow.plateau)")
    train_head: bool | list = opt(True, "Whether the LM head and final norm train. false: they train in stage 1 "
                                        "and are frozen after; a list gives one value per stage")
    train_substrate_first: bool = opt(False, "The substrate trains in stage 1 and is frozen after (fresh "
                                             "models only)")
    # Never a paper default: the papers train only the newest blocks.
    train_all_last: bool = opt(False, "The last stage trains every block")
    block_init: str = opt("random", "How new blocks start: random | zero-out (the block starts as the "
                                    "identity) | copy-top (a copy of the top block)")
    from_as_first_stage: bool = opt(False, "grow --from: the first new stage follows the config's stage-1 "
                                           "rules (per-stage lists, train_head, plateau.stages, data.stages); "
                                           "false: the source model counts as stage 1, so this run's stages "
                                           "follow the rules of stages 2, 3, ...")
    carry_optimizer: bool = opt(True, "Keep the head's and final norm's AdamW moments across growth events")
    prefix_cache: bool = opt(False, "Cache the frozen prefix's hidden states")
    prefix_cache_mb: int = opt(512, "Size cap of the prefix cache, in MB")
    lora: LoRAConfig | None = opt(None, "LoRA adapters on frozen blocks (see grow.lora); null: none")

    def __post_init__(self):
        if isinstance(self.plateau, dict):
            self.plateau = strict_from_dict(PlateauConfig, self.plateau, "grow.plateau")
        if isinstance(self.lora, dict):
            self.lora = LoRAConfig.from_dict(self.lora)
        need_int("grow.blocks_per_stage", self.blocks_per_stage, 1)
        if self.stages is not None:
            if not isinstance(self.stages, (list, tuple)) or not self.stages:
                raise UserError(f"grow.stages must be a non-empty list of block counts, got {brief(self.stages)}")
            for i, s in enumerate(self.stages):
                need_int(f"grow.stages[{i}]", s, 1)
            self.stages = list(self.stages)
        need_per_stage("grow.steps_per_stage", self.steps_per_stage, lambda k, v: need_int(k, v, 1))
        if self.tokens_per_stage is not None:
            need_per_stage("grow.tokens_per_stage", self.tokens_per_stage, lambda k, v: need_int(k, v, 1))
            if self.monolithic and self.stages is None and not isinstance(self.tokens_per_stage, (list, tuple)):
                raise UserError(
                    "grow.monolithic with a single grow.tokens_per_stage and no grow.stages is ambiguous: a "
                    "monolithic run reads the token budget of every stage of its grown twin, and the stages here "
                    f"come only from grow.blocks_per_stage ({self.blocks_per_stage}). Name them: grow.stages "
                    "(--stages 3,3,3) for the grown twin's segments, or one stage of every block (e.g. "
                    "--stages 16 for depth 16) for a single segment of tokens_per_stage tokens")
        need_per_stage("grow.train_head", self.train_head, need_bool)
        if isinstance(self.train_head, (list, tuple)) and not self.train_head[0]:
            raise UserError("grow.train_head[0] is false, so the LM head and final norm would never train from "
                            "their random start; `train_head: false` (--freeze-head) already trains them in stage 1 "
                            "and freezes them after")
        for key in ("monolithic", "train_substrate_first", "train_all_last", "from_as_first_stage", "carry_optimizer",
                    "prefix_cache"):
            need_bool(f"grow.{key}", getattr(self, key))
        need_choice("grow.block_init", self.block_init, BLOCK_INITS)
        need_int("grow.prefix_cache_mb", self.prefix_cache_mb, 1)

    @classmethod
    def from_dict(cls, d, where="grow"):
        return strict_from_dict(cls, d or {}, where)

    def head_trains(self, k: int) -> bool:
        """Whether the LM head and final norm train in stage `k` (0-based). A scalar
        false means: they train in stage 1 and are frozen from stage 2 on (v1: after
        stage 1 "only the weights of the newly added layer are trainable")."""
        if isinstance(self.train_head, (list, tuple)):
            return bool(per_stage(self.train_head, k))
        return k == 0 or bool(self.train_head)

    def sizes(self, depth: int, base: int = 0) -> list:
        """New blocks per growth stage; they must add up to `depth` - `base`
        (`base`: the blocks of a model grown further with --from)."""
        new = depth - base
        if self.stages:
            if sum(self.stages) != new:
                if base:
                    raise UserError(
                        f"grow.stages {self.stages} add up to {sum(self.stages)} new blocks, but growing the "
                        f"{base}-block model (--from) to depth {depth} adds {new}: list only the new blocks "
                        f"(e.g. --stages {new})")
                raise UserError(
                    f"grow.stages {self.stages} add up to {sum(self.stages)} blocks but the depth is {depth} "
                    "(model.num_hidden_layers, or --depth): make the stage list reach the depth "
                    "(e.g. --stages 3,3,3,3,4 for 16)")
            return list(self.stages)
        k = self.blocks_per_stage
        return [k] * (new // k) + ([new % k] if new % k else [])


@dataclass
class RunConfig:
    model: ModelArgs = opt(help="The model's shape and substrate (see model)")
    tokenizer: str = opt("bvv241-2-3", "bvv241-2-3 | bvv241-max | a tokenizer folder or tokenizer.json")
    name: str = opt("", "Names the run: runs/NAME-grow-sSEED by default")
    description: str = opt("", "What the config is; which figures are the papers' and which are ours")
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "Training data (see data)"})
    grow: GrowConfig = field(default_factory=GrowConfig, metadata={"help": "The growth schedule (see grow)"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "The optimiser and the loop "
                                                                              "(see train)"})
    # Blocks of the model a run grows further (`grow --from`; 0: a fresh model). Not a
    # config key: training/plan.py sets it from the source model (run.json's `from` on
    # resume), and the plan grows model.num_hidden_layers - base new blocks on top of it.
    base: int = 0

    def __post_init__(self):
        # Sections may come as mappings (from YAML, JSON or Python): parse each once.
        for key in ("model", "data", "grow", "train"):
            if getattr(self, key) is None:
                setattr(self, key, {})
        if isinstance(self.grow, dict) and "depth" in self.grow:  # older configs: the final depth under grow
            grow, depth = dict(self.grow), self.grow["depth"]
            del grow["depth"]
            self.grow = grow
            if depth is not None:
                model = self.model.to_dict() if isinstance(self.model, ModelArgs) else dict(self.model)
                if "num_hidden_layers" in model and model["num_hidden_layers"] != depth \
                        and not isinstance(self.model, ModelArgs):
                    raise UserError(f"grow.depth {depth} and model.num_hidden_layers "
                                    f"{model['num_hidden_layers']} disagree: give the depth once")
                model["num_hidden_layers"] = depth
                self.model = model
        if isinstance(self.model, dict):
            self.model = ModelArgs.from_dict(self.model, where="model")
        if isinstance(self.data, dict):
            self.data = DataConfig.from_dict(self.data, where="data")
        if isinstance(self.grow, dict):
            self.grow = GrowConfig.from_dict(self.grow)
        if isinstance(self.train, dict):
            self.train = TrainConfig.from_dict(self.train)
        self.validate()

    @classmethod
    def from_dict(cls, d: dict, where: str = "config", base: int = 0) -> "RunConfig":
        """Parse and validate every section; errors name the file and the key.
        `base`: see RunConfig.base."""
        if not isinstance(d, dict):
            raise UserError(f"{where} must hold a mapping with sections {', '.join(SECTIONS)}")
        unknown = [k for k in d if k not in SECTIONS]
        if unknown:
            raise UserError(f"unknown key(s) {key_list(unknown)} in {where}; valid: {', '.join(SECTIONS)}")
        try:
            for key in ("grow", "train", "data", "model"):
                if d.get(key) is not None and not isinstance(d[key], dict):
                    raise UserError(f"section {key} must be a mapping, got {brief(d[key])}")
            return cls(model=dict(d.get("model") or {}), data=dict(d.get("data") or {}),
                       grow=dict(d.get("grow") or {}), train=dict(d.get("train") or {}), base=base,
                       **{k: d[k] for k in ("tokenizer", "name", "description") if d.get(k) is not None})
        except (UserError, ValueError, TypeError) as e:
            raise UserError(f"{where}: {e}") from None

    def validate(self):
        """Checks that span sections (each section checks its own keys)."""
        for key in ("tokenizer", "name", "description"):
            if not isinstance(getattr(self, key), str):
                raise UserError(f"{key} must be a string, got {brief(getattr(self, key))}")
        need_int("model.num_hidden_layers", self.model.num_hidden_layers, 1)
        need_int("base", self.base, 0)
        if self.model.substrate.tokenizer not in (None, self.tokenizer):  # one source: grow and substrate build
            raise UserError(f"model.substrate.tokenizer {brief(self.model.substrate.tokenizer)} is not the run's "
                            f"tokenizer {brief(self.tokenizer)}: a glyph table draws the token strings of the run's "
                            "tokenizer (its rows are that tokenizer's ids); drop model.substrate.tokenizer")
        if self.base:
            if self.depth <= self.base:
                raise UserError(f"the depth {self.depth} (model.num_hidden_layers, or --depth) is not above the "
                                f"{self.base} blocks of the model it grows from (--from): give a depth above "
                                f"{self.base}")
            if self.grow.monolithic:
                raise UserError("grow.monolithic trains every block from scratch, so it cannot start from an "
                                "existing model (--from): drop --monolithic, or drop --from for the baseline")
        self.grow.sizes(self.depth, self.base)
        if self.train.seq_len > self.model.max_position_embeddings:
            raise UserError(f"train.seq_len {self.train.seq_len} exceeds the model context "
                            f"model.max_position_embeddings {self.model.max_position_embeddings}")

    @property
    def depth(self) -> int:
        """The final number of blocks (model.num_hidden_layers)."""
        return self.model.num_hidden_layers

    def to_dict(self) -> dict:
        d = {"name": self.name, "description": self.description, "tokenizer": self.tokenizer,
             "model": self.model.to_dict(), "data": self.data.to_dict(), "grow": asdict(self.grow),
             "train": asdict(self.train)}
        return d

    def with_flags(self, *, base: int | None = None, **sections) -> "RunConfig":
        """A new config: this one with the flags the user gave, e.g.
        `with_flags(train={"lr": 1e-3, "seed": None})` (None = not given; a mapping
        value is merged into the mapping it replaces), and `base` (RunConfig.base)
        when given. The whole config is checked again; this one never changes."""
        d, changed = self.to_dict(), False
        for section, flags in sections.items():
            for key, value in flags.items():
                if isinstance(value, dict) and isinstance(d[section].get(key), dict):
                    value = {**d[section][key], **value}
                if value is not None and d[section].get(key) != value:
                    d[section][key], changed = value, True
        base = self.base if base is None else base
        if changed:
            return RunConfig.from_dict(d, where="the command-line flags", base=base)
        new = copy.deepcopy(self)
        return new if base == self.base else replace(new, base=base)  # checked again with the new base


def config_sections() -> dict:
    """Every section of a run config, by its dotted name ("" is the top level), in
    the order of the config reference (docs/reference/config.md)."""
    from mlx_grow.data.config import SourceSpec
    from mlx_grow.substrate.tables import SubstrateArgs

    return {"": RunConfig, "model": ModelArgs, "model.substrate": SubstrateArgs, "data": DataConfig,
            "data.sources[]": SourceSpec, "grow": GrowConfig, "grow.plateau": PlateauConfig,
            "grow.lora": LoRAConfig, "train": TrainConfig}


def config_help(key: str, note: str = "") -> str:
    """The help text of config key `key` (e.g. "train.seed"), naming the key: the
    help of a command-line flag that sets it. `note` adds what only the flag needs."""
    section, _, name = key.rpartition(".")
    text = field_help(config_sections()[section], name)
    return f"{text} ({key}{'; ' + note if note else ''})"


def packaged_configs() -> dict:
    root = importlib.resources.files("mlx_grow.configs")
    return {p.name[:-5]: p for p in root.iterdir() if p.name.endswith(".yaml")}


def resolve(name_or_path) -> Path:
    p = Path(name_or_path)
    if p.is_file():
        return p
    if p.exists():
        raise UserError(f"config {name_or_path} is not a file: give a YAML file or a packaged name")
    found = packaged_configs().get(str(name_or_path).removesuffix(".yaml"))
    if found is None:
        names = ", ".join(sorted(packaged_configs()))
        raise UserError(f"config {name_or_path} not found: give a YAML path or one of: {names}")
    return Path(str(found))


def load_config(name_or_path="tiny") -> RunConfig:
    from mlx_grow.io.read import load_yaml, read_text

    path = resolve(name_or_path)
    try:
        text = read_text(path, "config")
    except OSError as e:
        raise UserError(f"cannot read config {path}: {e.strerror or e}") from None
    d = load_yaml(text, str(path))
    if not d and d not in (0, False):  # not the defaults in silence: an empty file is a mistake, not a choice
        raise UserError(f"config {path} is empty: give its sections (model:, grow:, train:, ...), or use a "
                        "packaged config such as tiny")
    return RunConfig.from_dict(d, where=str(path))
