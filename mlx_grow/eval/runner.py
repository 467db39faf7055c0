"""The evaluation runner: tasks x models -> a report dict."""

import math
from pathlib import Path

from mlx_grow.base import UserError, brief, need_int
from mlx_grow.data.task_file import Task
from mlx_grow.eval.protocol import (
    choice_metrics,
    group_by,
    loglik_requests,
    paper_max_tokens,
    paper_metrics,
    paper_prompt,
)
from mlx_grow.eval.tasks import load_task
from mlx_grow.eval.report import PROTOCOLS, _fmt
from mlx_grow.generate import PROMPT_STARTS
from mlx_grow.io.read import json_rows, read_json, read_text

SIGMA = {0: "standard deviation of the per-run scores with ddof=0 (np.std), as the papers' harness computes it",
         1: "sample standard deviation (ddof=1) of the per-run scores; the papers' harness used np.std "
            "(ddof=0), a factor sqrt((n-1)/n) smaller"}


def outputs_from_generate(generate_fn, runs: int, temp: float, top_k: int, seed: int):
    """Adapt `generate_fn(prompts, max_tokens, temp, top_k, seed) -> [continuation text]`: run r uses
    seed + r; one more call at temperature 0 is the greedy run."""
    def fn(prompts, max_new, progress=None):
        sampled = [list(generate_fn(prompts, max_new, temp, top_k, seed + r)) for r in range(runs)]
        return sampled, list(generate_fn(prompts, max_new, 0.0, 0, seed))
    return fn


def loglik_eval(scorer, task: Task, progress=None) -> list:
    """[(label, metrics)] of a task under the log-likelihood protocol."""
    reqs, owner = [], []
    for j, it in enumerate(task.items):
        ctx, conts = loglik_requests(task, it)
        for c in conts:
            reqs.append(scorer.encode_pair(ctx, c, it.where))
            owner.append(j)
    res = scorer.loglikelihood(reqs, progress=progress)
    scores = [[] for _ in task.items]
    for j, (lp, _) in zip(owner, res):
        scores[j].append(lp)
    if task.kind == "choice":
        m = choice_metrics(task.items, scores)
        subjects = group_by(task.items, lambda it: it.subject)
        if len(subjects) > 1 or None not in subjects:
            m["subjects"] = {s: {"acc": sum(m["hits"][j] for j in js) / len(js),
                                 "acc_norm": sum(m["norm_hits"][j] for j in js) / len(js), "n": len(js)}
                             for s, js in sorted(subjects.items(), key=lambda kv: str(kv[0]))}
        del m["hits"], m["norm_hits"]
        return [(task.name, m)]
    out = []
    groups = (group_by(task.items, lambda it: it.direction) if task.kind == "translation"
              else {None: range(len(task.items))})
    for d, js in groups.items():
        nll = -sum(scores[j][0] for j in js)
        n_bytes = sum(len((" " + (task.items[j].target or task.items[j].answers[0])).encode()) for j in js)
        out.append((task.name if d is None else f"{task.name}:{d}",
                    {"answer_bpb": nll / math.log(2) / n_bytes, "answer_nll": nll / len(js), "n": len(js)}))
    return out


def paper_eval(task: Task, outputs_fn, progress=None, ddof: int = 0) -> list:
    """[(label, metrics)] of a task under the papers' generative protocol; `outputs_fn(prompts,
    max_new)` returns (sampled outputs [run][item], greedy outputs [item]); the interval's σ has
    `ddof` (0, as the papers' harness computes it, or 1)."""
    prompts = [paper_prompt(task, it) for it in task.items]
    max_new = [paper_max_tokens(task, it) for it in task.items]
    sampled, greedy = outputs_fn(prompts, max_new, progress=progress)
    return paper_metrics(task, prompts, sampled, greedy, ddof)


def text_docs(path) -> list:
    """The documents of a text file (.txt: one document; .jsonl/.json: rows with 'text')."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file {path} does not exist")
    if path.suffix in (".json", ".jsonl"):
        rows = list(json_rows(path, "text file"))
        bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict) or not isinstance(r.get("text"), str)),
                   None)
        if bad is not None:
            raise UserError(f"{path} row {bad + 1}: missing field 'text' (a string)")
        docs = [r["text"] for r in rows]
    else:
        docs = [read_text(path, "text file")]
    docs = [d for d in docs if d]
    if not docs:
        raise UserError(f"text file {path} is empty: nothing to score")
    return docs


def text_metrics(scorer, path, docs=None) -> dict:
    """Perplexity and bits per byte of a text file (`docs`: its documents, read already)."""
    path = Path(path)
    docs = text_docs(path) if docs is None else docs
    ids = [scorer.encode(d, f"{path}") for d in docs]
    nll = sum(scorer.rolling_nll(ids))
    tokens, n_bytes = sum(map(len, ids)), sum(len(d.encode("utf-8")) for d in docs)
    return {"file": str(path), "documents": len(docs), "tokens": tokens, "bytes": n_bytes, "nll": nll,
            "ppl": math.exp(nll / tokens), "bits_per_byte": nll / math.log(2) / n_bytes}


def generate_with(model, tokenizer, prompt_start=None):
    """A paper-protocol generator built on `mlx_grow.generate.batch_generate` (stops at `</s>`),
    for `evaluate(..., generate_fn=generate_with)`; the default samples here, sharing each prompt."""
    from mlx_grow.generate import batch_generate

    def fn(prompts, max_tokens, temp, top_k, seed):
        out = [None] * len(prompts)
        for n in sorted(set(max_tokens)):
            idx = [i for i, m in enumerate(max_tokens) if m == n]
            texts = batch_generate(model, tokenizer, [prompts[i] for i in idx], max_tokens=n, temp=temp,
                                   top_k=top_k, seed=seed, prompt_start=prompt_start).texts
            for i, t in zip(idx, texts):
                out[i] = t
        return out

    return fn


def expand_models(specs, revision=None) -> list:
    """[(name, path)]; a grow RUN directory gives its stage-NN/ checkpoints and final/ model;
    a Hub id (at `revision`) its folder in the Hugging Face cache, named by the id."""
    from mlx_grow.io.hub import resolve

    out = []
    for spec in specs:
        p = resolve(spec, revision, strict=False)
        if not p.is_dir():
            raise FileNotFoundError(f"model {spec} does not exist: give a model directory, a grow run directory "
                                    "or a Hub id org/name")
        if p != Path(str(spec)).expanduser():  # a Hub id, in the cache
            out.append((str(spec), p))
            continue
        is_model = (p / "config.json").exists() or (p / "mlx_grow.json").exists()
        if not is_model and ((p / "run.json").exists() or (p / "metrics.jsonl").exists() or any(p.glob("stage-*"))):
            dirs = sorted(d for d in p.glob("stage-[0-9]*") if (d / "config.json").exists())
            dirs += [p / "final"] if (p / "final" / "config.json").exists() else []
            if not dirs:
                raise UserError(f"run directory {p} has no stage-NN/ or final/ model yet")
            out += [(f"{p.name}/{d.name}", d) for d in dirs]
        else:  # a run's own model directory keeps the run's name
            run_part = p.name == "final" or p.name.startswith("stage-")
            out.append((f"{p.resolve().parent.name}/{p.name}" if run_part else p.name, p))
    names = [n for n, _ in out]
    return [(n if names.count(n) == 1 else str(d), d) for n, d in out]


def load_for_eval(path):
    """(model, tokenizer, info) for a single or merged model directory; the tokenizer files must be
    the ones the model was saved with."""
    from mlx.utils import tree_flatten

    from mlx_grow.api import load
    from mlx_grow.checkpoint import read_meta

    path = Path(path)
    model, tok = load(path)
    meta = read_meta(path)
    fp = meta.get("tokenizer")
    if isinstance(fp, str) and fp != tok.fingerprint:
        raise UserError(f"model {path}: its tokenizer files differ from the tokenizer the model was saved with "
                         f"(fingerprint {tok.fingerprint[:12]}… vs {fp[:12]}…): restore the model's own tokenizer")
    lineage = meta.get("lineage") or {}
    info = {"path": str(path), "kind": "merged" if "experts" in meta else "single",
            "depth": len(model.layers) if hasattr(model, "layers") else model.args.num_hidden_layers,
            "params": sum(v.size for _, v in tree_flatten(model.parameters())),
            "run": lineage.get("run"), "stage": lineage.get("stage"), "final": path.name == "final"}
    if "experts" in meta:
        info["experts"] = [e.get("origin") if isinstance(e, dict) else e for e in meta["experts"]]
    run_json = Path(lineage["run"]) / "run.json" if lineage.get("run") else None
    if run_json is not None and run_json.is_file():
        try:
            grow = read_json(run_json).get("config", {}).get("grow")
        except (OSError, UserError, AttributeError):  # a damaged run.json: which kind of run is not known
            grow = None
        if isinstance(grow, dict):
            info["monolithic"] = bool(grow.get("monolithic"))
    return model, tok, info


def run_eval(models, tasks=(), texts=(), protocol="loglik", limit=None, runs=10, temp=1.0, top_k=0, seed=0,
             batch_tokens=None, hub=False, progress=False, echo=None, generate_fn=None, ci_ddof=0,
             prompt_start=None, revision=None, split=None) -> dict:
    """Evaluate every model (paths; run directories expand) on tasks and texts; return the report.
    `generate_fn(model, tokenizer)` may supply the paper protocol's generator (see evaluate.py).
    `ci_ddof`: the σ of the paper protocol's interval (0 as the papers' harness; 1 the sample form).
    `prompt_start`: how paper-protocol prompts start (None: as each model's tokenizer says; "none"; "sep").
    `revision`: the branch, tag or commit of the Hub ids among `models`.
    `split`: the split of opus100 (default validation, as the authors' harness)."""
    from mlx_grow.eval.scorer import DEFAULT_BATCH_TOKENS, Scorer
    from mlx_grow.io.progress import StepProgress

    if protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {brief(protocol)}: use loglik or paper")
    if not tasks and not texts:
        raise UserError("nothing to evaluate: give at least one --task or --text")
    if protocol == "paper" and (runs < 1 or temp < 0 or top_k < 0):
        raise UserError(f"--runs must be >= 1, --temp >= 0 and --top-k >= 0 (got {runs}, {temp}, {top_k})")
    if prompt_start is not None and prompt_start not in PROMPT_STARTS:
        raise UserError(f"--prompt-start must be one of {', '.join(PROMPT_STARTS)}, got {brief(prompt_start)}")
    if ci_ddof not in (0, 1):
        raise UserError(f"--ci-ddof must be 0 (the papers' np.std) or 1 (the sample standard deviation), got {ci_ddof}")
    if split is not None and "opus100" not in map(str, tasks):
        raise UserError(f"--split {split} chooses the split of the opus100 task (--hub), and no --task opus100 "
                        "was given: add it, or drop --split")
    # Counts are checked here once, for tasks and texts alike: 0 never silently means "the default"
    need_int("--limit", limit, 1, optional=True)
    need_int("--batch-tokens", batch_tokens, 1, optional=True)
    loaded = [load_task(t, limit, hub, split) for t in tasks]
    text_files = [(f, text_docs(f)) for f in texts]  # read before any model is scored
    report = {"mlx_grow_eval": 1, "protocol": protocol, "models": [], "results": [], "texts": [],
              "settings": {"limit": limit, "runs": runs, "temp": temp, "top_k": top_k, "seed": seed,
                           "ci_ddof": ci_ddof, "sigma": SIGMA[ci_ddof], "ci95": "1.96 * sigma / sqrt(runs)",
                           "prompt_start": prompt_start or "model",
                           "loglik_start": "contexts and texts start after </s> (the separator)"},
              "tasks": [{"name": t.name, "kind": t.kind, "items": len(t.items), "style": t.style, "origin": t.origin}
                        for t in loaded]}
    for name, path in expand_models(models, revision):
        model, tok, info = load_for_eval(path)
        scorer = Scorer(model, tok, batch_tokens or DEFAULT_BATCH_TOKENS, name=name, prompt_start=prompt_start)
        info["prompt_start"] = [tok.decode([i]) for i in scorer.prompt_before]  # what paper prompts follow
        report["models"].append({"name": name, **info})
        for task in loaded:
            total = len(task.items) if protocol == "paper" else sum(
                len(loglik_requests(task, it)[1]) for it in task.items)
            bar = StepProgress(total, enabled=progress, label=f"{name} · {task.name}")
            done = [0]

            def tick(n, bar=bar, done=done):
                done[0] += n
                bar.advance_to(done[0])

            try:
                if protocol == "loglik":
                    res = loglik_eval(scorer, task, progress=tick)
                else:
                    fn = (outputs_from_generate(generate_fn(model, tok), runs, temp, top_k, seed) if generate_fn else
                          lambda p, m, progress=None: scorer.paper_outputs(p, m, runs, temp, top_k, seed, progress))
                    res = paper_eval(task, fn, progress=tick, ddof=ci_ddof)
            finally:
                bar.close()
            report["results"] += [{"model": name, "task": label, "metrics": m} for label, m in res]
            if echo:
                for label, m in res:
                    echo(f"{name} · {label}: {_fmt({'metrics': m}, protocol)}")
        for f, docs in text_files:
            report["texts"].append({"model": name, **text_metrics(scorer, f, docs)})
        model = scorer = None  # free before the next model loads
    return report
