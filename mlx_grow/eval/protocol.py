"""The papers' evaluation protocols: the generative protocol's prompts, answer
extraction and scoring rules (accuracy %, BLEU, the interval over sampled runs),
and the log-likelihood protocol as lm-evaluation-harness scores cloze tasks."""

import math

from mlx_grow.base import UserError
from mlx_grow.data.task_file import Item, Task

LANGS = {"en": "English", "ru": "Russian", "zh": "Chinese"}


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
