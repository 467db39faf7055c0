"""Run configs: one YAML file with `model`, `tokenizer`, `data`, `grow` and
`train` sections. Packaged configs are found by name (`tiny`, `paper-9l-glyph`…)."""

import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mlx_grow.model import ModelArgs

SECTIONS = ("name", "description", "tokenizer", "model", "data", "grow", "train")


@dataclass
class RunConfig:
    model: ModelArgs
    tokenizer: str = "bvv241-2-3"
    name: str = ""
    description: str = ""
    data: dict = field(default_factory=dict)
    grow: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    path: str = ""

    @classmethod
    def from_dict(cls, d: dict, where: str = "config"):
        unknown = sorted(set(d) - set(SECTIONS))
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(unknown)} in {where}; valid: {', '.join(SECTIONS)}")
        d = dict(d)
        model = ModelArgs.from_dict(d.pop("model", {}), where=f"{where}: model")
        return cls(model=model, **{k: v for k, v in d.items() if v is not None})

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "tokenizer": self.tokenizer,
            "model": self.model.to_dict(),
            "data": self.data,
            "grow": self.grow,
            "train": self.train,
        }


def packaged_configs() -> dict:
    root = importlib.resources.files("mlx_grow.configs")
    return {p.name[:-5]: p for p in root.iterdir() if p.name.endswith(".yaml")}


def resolve(name_or_path) -> Path:
    p = Path(name_or_path)
    if p.exists():
        return p
    found = packaged_configs().get(str(name_or_path).removesuffix(".yaml"))
    if found is None:
        names = ", ".join(sorted(packaged_configs()))
        raise FileNotFoundError(f"config {name_or_path} not found: give a YAML path or one of: {names}")
    return Path(str(found))


def load_config(name_or_path="tiny") -> RunConfig:
    path = resolve(name_or_path)
    try:
        d = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(d, dict):
        raise ValueError(f"{path} must hold a mapping with sections {', '.join(SECTIONS)}")
    cfg = RunConfig.from_dict(d, where=str(path))
    cfg.path = str(path)
    return cfg
