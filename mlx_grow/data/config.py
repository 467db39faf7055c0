"""The data section of a run config: the sources (`SourceSpec`: a file, folder,
Hub dataset or built-in corpus, with its weight, field or template, split and
token budget), one mixture per growth stage, and the validation share."""

import json
from dataclasses import asdict, dataclass
from typing import Optional

from mlx_grow.base import UserError, brief, key_list, need_bool, need_str, opt
from mlx_grow.data import corpora

STAGE_DATA = ("continue", "restart")
VAL_FRACTION_MAX = 0.5  # the largest share of documents held out for validation

SOURCE_KEYS = ("source", "weight", "field", "template", "split", "tokens")


@dataclass
class SourceSpec:
    source: str = opt(help="A text or row file, a folder (of .txt/.md/.jsonl(.gz)/.json/.parquet/.arrow files, "
                           "nested as FineWeb-Edu ships them), hf:NAME[:CONFIG] (a Hub dataset, streamed) or "
                           "builtin:NAME")
    weight: float = opt(1.0, "Mixture weight: the share of rows drawn from this source, relative to the others")
    field: Optional[str] = opt(None, "Text field of jsonl / parquet / dataset rows; default text")
    template: Optional[str] = opt(None, "Instead of field: a row's text from several fields, e.g. 'Question: "
                                        "{question}\\nAnswer: {answer}'; {answers[text]} reads inside a field; a "
                                        "list joins with '; ', a {label, text} choices record gives 'A. ...' lines, a "
                                        "bool yes/no")
    split: str = opt("train", "Split of an hf: dataset or a saved datasets folder")
    tokens: Optional[int] = opt(None, "Token budget: stop reading the source once this many tokens (training + "
                                      "validation) are prepared; null: all of it. A streamed source with no budget "
                                      "counts as unbounded in the passes check")

    @classmethod
    def parse(cls, item, where: str) -> "SourceSpec":
        if isinstance(item, str):
            item = {"source": item}
        if not isinstance(item, dict) or "source" not in item:
            raise UserError(f"{where} must be a source string or a mapping with source: (and weight:, field:, "
                             "template:, split:, tokens:)")
        unknown = [k for k in item if k not in SOURCE_KEYS]
        if unknown:
            raise UserError(f"unknown key(s) {key_list(unknown)} in {where}; valid: {', '.join(SOURCE_KEYS)}")
        source = item["source"]
        if not isinstance(source, str) or not source:
            raise UserError(f"{where}: source must be a path, hf:NAME[:CONFIG] or builtin:NAME, got {brief(source)}")
        if source.startswith("hf:"):
            corpora.parse_hf(source)
        w = item.get("weight", 1.0)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w <= 0:
            raise UserError(f"{where}: weight must be a positive number, got {brief(w)}")
        fld, template = item.get("field"), item.get("template")
        for key, v in (("field", fld), ("template", template)):
            if v is not None and (not isinstance(v, str) or not v):
                raise UserError(f"{where}: {key} must be a string, got {brief(v)}")
        if fld and template:
            raise UserError(f"{where}: give field (one column) or template (several), not both")
        if template:
            try:
                corpora.template_fields(template)
            except UserError as e:
                raise UserError(f"{where}: {e}") from None
        split = item.get("split", "train")
        if not isinstance(split, str) or not split:
            raise UserError(f"{where}: split must be a split name such as train, got {brief(split)}")
        tokens = item.get("tokens")
        if isinstance(tokens, float) and tokens.is_integer():
            tokens = int(tokens)
        if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1):
            raise UserError(f"{where}: tokens (a token budget) must be a positive whole number, got {brief(tokens)}")
        return cls(source, float(w), fld, template, split, tokens)

    def extras(self) -> dict:
        """The keys beyond source, weight and field that differ from their defaults."""
        return {k: v for k, v in (("template", self.template), ("split", self.split), ("tokens", self.tokens))
                if v != ("train" if k == "split" else None)}

    @property
    def label(self) -> str:
        """How messages name the source."""
        bits = [f"{k} {v}" for k, v in (("split", self.split if self.split != "train" else None),
                                         ("field", self.field)) if v]
        return self.source + (f" ({', '.join(bits)})" if bits else "")


@dataclass
class DataConfig:
    sources: list = opt([], "Training sources: strings, or mappings {source, weight, field, template, split, "
                            "tokens} (see data.sources[]); empty: builtin:default")
    val_fraction: float = opt(0.01, "Share of documents held out for validation, between 0 and 0.5")
    separator: str = opt("</s>", "Token that ends every document")
    instruction_files: list = opt([], "Question/answer files (.jsonl, .json, .parquet) mixed into training")
    instruction_ratio: float = opt(0.0, "Share of rows drawn from instruction_files, in [0, 1)")
    stages: list = opt([], "One mixture per growth stage, each a list like sources (the last repeats); empty: "
                           "sources for every stage")
    stage_data: str = opt("continue", "continue: each stage reads on where its mixture stopped; restart: every "
                                      "stage reads from batch 0")
    cache_dir: Optional[str] = opt(None, "Shard cache folder; null: $MLX_GROW_CACHE/shards, else "
                                         "~/.cache/mlx-grow/shards")
    skip_bad_files: bool = opt(False, "Skip files that are not UTF-8, with a warning, instead of failing")
    max_passes: float = opt(4.0, "Most times a run may read any source: planned tokens drawn from it over the "
                                 "tokens it holds for training. grow refuses more before it starts; grow "
                                 "--allow-repeat N sets it")

    @classmethod
    def from_dict(cls, d: Optional[dict], where: str = "data config") -> "DataConfig":
        if not isinstance(d or {}, dict):
            raise UserError(f"{where} must be a mapping, got {brief(d)}")
        d = dict(d or {})
        names = list(cls.__dataclass_fields__)
        unknown = [k for k in d if k not in names]
        if unknown:
            raise UserError(f"unknown key(s) {key_list(unknown)} in {where}; valid: {', '.join(names)}")
        for key in ("sources", "instruction_files"):
            if isinstance(d.get(key), str):
                d[key] = [d[key]]
        cfg = cls(**{k: v for k, v in d.items() if v is not None})
        for key in ("sources", "instruction_files", "stages"):
            if not isinstance(getattr(cfg, key), list):
                raise UserError(f"{where}: {key} must be a list")
        for i, s in enumerate(cfg.sources):
            SourceSpec.parse(s, f"{where}: sources[{i}]")
        for k, stage in enumerate(cfg.stages):
            if not isinstance(stage, list) or not stage:
                raise UserError(f"{where}: stages[{k}] must be a non-empty list of sources")
            for i, s in enumerate(stage):
                SourceSpec.parse(s, f"{where}: stages[{k}][{i}]")
        for key in ("val_fraction", "instruction_ratio", "max_passes"):
            if isinstance(getattr(cfg, key), bool) or not isinstance(getattr(cfg, key), (int, float)):
                raise UserError(f"{where}: {key} must be a number, got {brief(getattr(cfg, key))}")
        if not val_fraction_ok(cfg.val_fraction):
            raise UserError(f"{where}: val_fraction must be between 0 and {VAL_FRACTION_MAX}, got {cfg.val_fraction}")
        if not 0 <= cfg.instruction_ratio < 1:
            raise UserError(f"{where}: instruction_ratio must be in [0, 1), got {cfg.instruction_ratio}")
        if cfg.instruction_ratio > 0 and not cfg.instruction_files:
            raise UserError(f"{where}: instruction_ratio is {cfg.instruction_ratio} but instruction_files is "
                             "empty; give your question/answer .jsonl files")
        if cfg.max_passes <= 0:
            raise UserError(f"{where}: max_passes must be positive, got {cfg.max_passes}")
        if cfg.stage_data not in STAGE_DATA:
            raise UserError(f"{where}: stage_data must be one of {', '.join(STAGE_DATA)}, got {brief(cfg.stage_data)}")
        need_bool(f"{where}: skip_bad_files", cfg.skip_bad_files)
        need_str(f"{where}: cache_dir", cfg.cache_dir, optional=True)
        if not isinstance(cfg.separator, str) or not cfg.separator:
            raise UserError(f"{where}: separator must be a token string such as '</s>'")
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)

    def mixture(self, stage: int = 0) -> list:
        """The source specs of a growth stage (stages[min(stage, last)], else `sources`)."""
        items = self.stages[min(stage, len(self.stages) - 1)] if self.stages else self.sources
        return [SourceSpec.parse(s, "data source") for s in (items or ["builtin:default"])]

    def mixture_key(self, stage: int = 0) -> str:
        """Names a stage's mixture: stages with equal keys read one stream (and, with
        `stage_data: continue`, one read position)."""
        return json.dumps([[s.source, s.weight, s.field] + ([s.extras()] if s.extras() else [])
                           for s in self.mixture(stage)])


def val_fraction_ok(v) -> bool:
    """The one range of val_fraction: a number from 0 to VAL_FRACTION_MAX."""
    return not isinstance(v, bool) and isinstance(v, (int, float)) and 0 <= v <= VAL_FRACTION_MAX


def check_val_fraction(v, name: str = "val_fraction"):
    if not val_fraction_ok(v):
        raise UserError(f"{name} must be a number from 0 to {VAL_FRACTION_MAX} (the share of documents held out "
                        f"for validation), got {brief(v)}")

