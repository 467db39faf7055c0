"""Task files: question/answer rows in a `.json` (a list) or `.jsonl` (a row a
line) file, read into items by one parser with one answer rule. `mlx-grow eval`
scores them (eval/tasks.py) and `data info --against` looks for them in the
training shards (contamination.py).

The fields of the first row decide its kind, and every row must have them:
- multiple choice (MMLU's names): question, choices [str, ...], answer; optional
  labels [str, ...] (default A, B, C, ...) and subject. `answer` names the right
  choice by its index (an int from 0) or by its label (a string such as "B";
  letters in either case): the one answer rule (`answer_index`)
- reading comprehension (SQuAD): context, question, answers [str, ...] or answer (str)
- translation pairs: source, target, source_lang, target_lang ("en", "ru", "zh" or a name)
- translation pairs in the opus-100 layout: translation {"en": ..., "ru": ...}; each row
  gives two items, one per direction (en-ru and ru-en, in the row's key order)
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from mlx_grow.base import UserError, brief
from mlx_grow.io.read import json_rows


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
        return self.labels or default_labels(len(self.choices))

    @property
    def direction(self) -> str:
        return f"{self.source_lang}-{self.target_lang}"

    @property
    def gold(self) -> str:
        """The reference answer as text: the right choice, the first SQuAD answer, the target."""
        if self.choices is not None:
            return self.choices[self.answer]
        return self.answers[0] if self.answers else self.target


@dataclass
class Task:
    name: str
    kind: str  # choice | squad | translation
    items: List[Item] = field(default_factory=list)
    style: str = "arc"  # paper prompt of a choice task: mmlu (options inline) | arc (a line each)
    origin: str = ""


KINDS = {
    "choice": ("question", "choices", "answer"),
    "squad": ("context", "question"),
    "translation": ("source", "target", "source_lang", "target_lang"),
}


def default_labels(n: int) -> List[str]:
    return [chr(ord("A") + i) for i in range(n)]


def answer_index(answer, labels: List[str], where: str) -> int:
    """The one answer rule of a multiple-choice row: `answer` is the right choice's
    index (an int from 0) or its label (a string, one of `labels`; letters in
    either case). Anything else is refused, never guessed."""
    n = len(labels)
    if isinstance(answer, str):
        hits = [i for i, lab in enumerate(labels) if lab.upper() == answer.strip().upper()]
        if len(hits) != 1:
            raise UserError(f"{where}: answer {brief(answer)} is not one of the labels {', '.join(labels)}: give the "
                            "right choice's label, or its index from 0")
        return hits[0]
    if isinstance(answer, bool) or not isinstance(answer, int):
        raise UserError(f"{where}: 'answer' must be the index of the right choice (an int) or its label, got "
                        f"{brief(answer)}")
    if not 0 <= answer < n:
        raise UserError(f"{where}: answer {answer} is out of range for {n} choices (0..{n - 1})")
    return answer


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


def _items(row: dict, kind: str, where: str, min_choices: int) -> list[Item]:
    if kind == "translation" and "translation" in row and "source" not in row and "target" not in row:
        return pair_items(row["translation"], where)
    return [_item(row, kind, where, min_choices)]


def _item(row: dict, kind: str, where: str, min_choices: int) -> Item:
    missing = [k for k in KINDS[kind] if k not in row]
    if kind == "squad" and "answers" not in row and "answer" not in row:
        missing.append("answers")
    if missing:
        raise UserError(f"{where}: missing field {', '.join(repr(m) for m in missing)} "
                         f"(a {kind} row needs {', '.join(KINDS[kind])}{', answers' if kind == 'squad' else ''})")
    if kind == "choice":
        choices, labels = row["choices"], row.get("labels")
        if not isinstance(choices, list) or len(choices) < min_choices or not all(isinstance(c, str) for c in choices):
            raise UserError(f"{where}: 'choices' must be a list of at least {min_choices} string(s)")
        if labels is not None and (not isinstance(labels, list) or len(labels) != len(choices)
                                   or not all(isinstance(x, str) and x for x in labels)):
            raise UserError(f"{where}: 'labels' must be a list of {len(choices)} non-empty strings")
        answer = answer_index(row["answer"], labels or default_labels(len(choices)), where)
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


def read_task_file(path, min_choices: int = 1) -> tuple:
    """(kind, items) of a task file; every bad row is one line naming the file and
    the row. `min_choices`: the fewest choices a multiple-choice row may have
    (scoring needs two; the contamination check only reads the question and answer)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file {path} does not exist")
    if path.suffix not in (".json", ".jsonl"):
        raise UserError(f"task file {path} must be .json (a list) or .jsonl (a row a line)")
    rows = list(json_rows(path, "task file"))
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
        items += _items(row, k, where, min_choices)
    return kind, items
