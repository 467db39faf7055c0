"""`mlx-grow reproduce`: the papers' claims, re-run at a chosen scale.

Every training run is an ordinary `grow` run under OUT/runs/KEY; its record
(final validation loss, tokens, FLOPs, wall time, load, loss curve) is kept in
OUT/records/KEY.json once it finishes, so a killed reproduction picks up at the
first unfinished run (and that run resumes from its own checkpoint, or starts
over in its folder). `--parts` runs some parts only; a later invocation with
other parts reuses every finished run. The count baselines, the merges of part 4
and the benchmarks of part 5 are records too. The report is rebuilt from the
records at the end, with the verdicts of the written rules (verdicts.py)."""

import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np

from mlx_grow.base import UserError
from mlx_grow.io.read import NUMBER, read_json
from mlx_grow.reproduce.records import (
    BASELINE,
    COMPOSITION,
    DEPTH,
    MARK,
    REBUILT,
    check_composition,
    check_depth,
    check_report,
    open_out,
    read_record,
    write_json,
)
from mlx_grow.reproduce.scales import (
    DEVICES,
    EVAL_TASKS,
    EXPERT_DATA,
    PARTS,
    SCALE_EXPERTS,
    TRAINED,
    UNION,
    checkpoint_steps,
    device_class,
    estimate,
    experiments,
    fmt_hours,
    get_parts,
    get_scale,
    source_name,
    substrate_labels,
)
from mlx_grow.reproduce.vocab import PendingTokenizer, ensure_tokenizer, tokenizer_sources

def glyph_available(font=None) -> bool:
    from mlx_grow.substrate.glyph import find_font

    try:
        find_font(font)
        return True
    except (UserError, FileNotFoundError, OSError):
        return False


def load() -> list:
    """The 1-, 5- and 15-minute load averages (other work on the machine slows the runs)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return []


def check_sources(sources):
    """Every data source of the runs exists (read later, run by run)."""
    from mlx_grow.data.corpora import check_source

    for s in dict.fromkeys(source_name(x) for x in sources):
        check_source(s)


def curve(run_dir: Path) -> dict:
    from mlx_grow.training.runs import Run

    run = Run(run_dir)
    rows = run.metrics()
    ev = [r for r in rows if r.get("event") == "eval"]
    grows = [{k: g[k] for k in ("tokens", "flops", "depth")} for g in run.growth_events(rows)]
    return {"tokens": [r["tokens"] for r in ev], "flops": [r["flops"] for r in ev],
            "val_loss": [r["val_loss"] for r in ev], "grows": grows,
            "peak_mem_mb": max((r.get("peak_mem_mb") or 0 for r in rows if r.get("event") == "train"), default=0)}


def train_run(job, root: Path, progress: bool, echo) -> dict:
    """Run (or resume) one experiment; return its record."""
    from mlx_grow.training.grow import grow

    part, key, label, seed, cfg = job
    rec_path = root / "records" / f"{key}.json"
    if rec_path.is_file():
        return read_record(root, job)
    run_dir = root / "runs" / key
    t0, load0 = time.perf_counter(), load()
    final, summary = grow(cfg, run_dir, resume=(run_dir / "run.json").is_file(), progress=progress,
                          echo=lambda *a, **k: None)
    wall = time.perf_counter() - t0
    c = curve(run_dir)
    tokens = summary[-1]["tokens"]
    # paths relative to the reproduction folder, as in a model folder (read back by read_record)
    rec = {"part": part, "key": key, "label": label, "seed": seed, "final": f"runs/{key}/final",
           "run": f"runs/{key}", "val_loss": summary[-1]["val_loss"], "tokens": tokens,
           "flops": c["flops"][-1] if c["flops"] else None, "wall_s": wall, "tok_s": tokens / wall,
           "active_params": max(s["active_params"] for s in summary), "stages": summary, "curve": c,
           "depth": cfg.depth, "substrate": cfg.model.substrate.kind, "load": [load0, load()], "commit": commit(),
           "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    write_json(rec_path, rec)
    echo(f"  {key}: validation loss {rec['val_loss']:.4f} after {tokens:,} tokens, {wall:.0f} s")
    return read_record(root, job)


def bytes_per_token(cfg) -> float:
    """UTF-8 bytes per validation target token of `cfg`'s data (for bits per byte)."""
    from mlx_grow.data.stream import open_stream
    from mlx_grow.tokenizer import load_tokenizer

    tok = load_tokenizer(cfg.tokenizer)
    t = cfg.train
    batches = open_stream(cfg.data, tok, t.seq_len, t.batch_size, 0, progress=False).val_batches(t.val_batches)
    ys = np.concatenate([np.asarray(b)[:, 1:].reshape(-1) for b in batches])
    ids, counts = np.unique(ys, return_counts=True)
    n_bytes = sum(len(tok.decode([int(i)]).encode("utf-8")) * int(c) for i, c in zip(ids, counts))
    return n_bytes / len(ys)


# --- the count baselines ---


def baseline(root: Path, name: str, cfg, steps: int, seed: int) -> dict:
    """The unigram and interpolated-bigram tables fitted on the batches 0..steps-1 a run
    with `cfg`'s data and `seed` reads, scored on its validation batches; kept in
    OUT/records/baseline-NAME.json."""
    from mlx_grow.data.stream import open_stream
    from mlx_grow.eval.baselines import CountBaselines
    from mlx_grow.tokenizer import load_tokenizer

    path = root / "records" / f"baseline-{name}.json"
    if path.is_file():
        return read_json(path, dict, fix=REBUILT, shape=BASELINE)
    t0 = time.perf_counter()
    t = cfg.train
    stream = open_stream(cfg.data, load_tokenizer(cfg.tokenizer), t.seq_len, t.batch_size, seed, progress=False)
    val = stream.val_batches(t.val_batches)
    fit = CountBaselines([stream.batch(i) for i in range(steps)], cfg.model.vocab_size)
    rec = {**fit.losses(val), "train_tokens": fit.tokens, "val_tokens": int(sum(np.asarray(b)[:, 1:].size for b in val)),
           "wall_s": time.perf_counter() - t0}
    write_json(path, rec)
    return rec


def run_steps(cfg) -> int:
    from mlx_grow.reproduce.scales import run_plan

    return sum(st.steps for st in run_plan(cfg).stages)


def baselines(root: Path, jobs, echo) -> dict:
    """{part: {seed: {source or 'data': table}}}: the tables each part's runs are compared with.
    Parts 1-3: fitted on the batches its runs read (the same for every variant of a seed);
    part 4: each expert's domain on that expert's batches."""
    out = {}
    for part, key, label, seed, cfg in jobs:
        if part == 4 and label == UNION:
            continue
        src = "data" if part != 4 else source_name(cfg.data.sources[0])
        slot = out.setdefault(str(part), {}).setdefault(str(seed), {})
        if src in slot:
            continue
        name = f"p{part}-s{seed}" + (f"-{key.split('-s')[0]}" if part == 4 else "")
        slot[src] = baseline(root, name, cfg, run_steps(cfg), seed)
    return out


# --- part 4 ---


def composition(s, root: Path, recs: list, sources, seed: int, progress: bool, echo) -> dict:
    """Part 4 for one seed: each expert, the training-free combiners, the union-trained
    control, the merge tuned on the union (experts' blocks, norms and heads) and each
    expert alone tuned the same way for the same steps, scored on each domain."""
    from mlx_grow.checkpoint import load_model
    from mlx_grow.data.stream import open_stream
    from mlx_grow.merge import merge
    from mlx_grow.merge.combine import MergedModel, make_combiner
    from mlx_grow.merge.store import load_merged
    from mlx_grow.merge.tune import VARIANTS, tune_merged
    from mlx_grow.tokenizer import load_tokenizer
    from mlx_grow.training.step import evaluate

    path = root / "records" / f"composition-s{seed}.json"
    if path.is_file():
        return check_composition(read_json(path, dict, fix=REBUILT, shape=COMPOSITION), path)
    t0 = time.perf_counter()
    experts = [r for r in recs if r["label"] != UNION]
    union = next(r for r in recs if r["label"] == UNION)
    dirs = [r["final"] for r in experts]
    tune = {"part": "all", "steps": s.tune_steps, "lr": s.lr / 2, "batch_size": s.batch, "seq_len": s.seq,
            "seed": seed}
    tuned = root / "runs" / f"merged-tuned-s{seed}"
    if not (tuned / "mlx_grow.json").is_file():
        merge(dirs, tuned, combiner="mean-logits", overwrite=tuned.exists(), progress=progress,
              echo=lambda *a, **k: None, tune={**tune, "data": list(sources)})
    tok = load_tokenizer(dirs[0])
    names = [source_name(x) for x in sources]
    vals = {n: open_stream({"sources": [x]}, tok, s.seq, s.batch, 0, progress=False).val_batches(s.val_batches)
            for n, x in zip(names, sources)}

    def score(model):
        row = {n: evaluate(model, b) for n, b in vals.items()}
        row["union"] = float(np.mean(list(row.values())))
        return row

    models = [load_model(d) for d in dirs]
    rows = {f"expert {k + 1}": score(m) for k, m in enumerate(models)}
    for name, kw in VARIANTS.items():
        rows[name] = score(MergedModel(models, make_combiner(len(models), **kw)))
    rows[UNION] = score(load_model(union["final"]))
    rows["mean-logits + tune (all)"] = score(load_merged(tuned)[0])
    for k, d in enumerate(dirs):  # each expert alone, tuned with the same recipe, steps and batches
        one = MergedModel([load_model(d)], make_combiner(1))
        tune_merged(one, tok, list(sources), progress=False, echo=lambda *a, **k: None, **tune)
        rows[f"expert {k + 1} + tune (all)"] = score(one)
    rec = {"seed": seed, "sources": names, "tune_steps": s.tune_steps, "wall_s": time.perf_counter() - t0,
           "rows": rows}
    write_json(path, rec)
    return check_composition(rec, path)


def experts_clear(recs, base) -> list:
    """Why part 4's merges cannot test anything: every expert run that did not end CLEAR
    nats below its own domain's unigram table (empty: all did)."""
    from mlx_grow.reproduce.verdicts import CLEAR

    out = []
    for r in recs:
        if r["label"] == UNION:
            continue
        b = base[str(r["seed"])][r["label"].split(": ", 1)[1]]
        if r["val_loss"] > b["unigram"] - CLEAR:
            out.append(f"{r['key']} ended at {r['val_loss']:.3f}, not {CLEAR:.2f} below its domain's unigram table "
                       f"({b['unigram']:.3f})")
    return out


# --- part 5 ---


def depth_scores(s, root: Path, run_dir: str, tasks, echo, protocol: str = "loglik") -> dict:
    """Part 5: the benchmarks on every stage of one grown run, under one protocol
    (loglik: the highest log-likelihood choice; paper: the papers' generative protocol)."""
    from mlx_grow.eval.runner import run_eval
    from mlx_grow.eval.tasks import load_task

    path = root / "records" / f"depth-{protocol}.json"
    if path.is_file():
        return check_depth(read_json(path, dict, fix=REBUILT, shape=DEPTH), path)
    try:
        loaded = [load_task(t, s.eval_limit) for t in tasks]
    except (FileNotFoundError, UserError) as e:
        echo(f"  skipped: {e}")
        return {"skipped": str(e)}  # not stored: a later run with the data installed scores it
    chance = {t.name: float(np.mean([1 / len(it.choices) for it in t.items])) if t.kind == "choice" else None
              for t in loaded}
    t0 = time.perf_counter()
    stages = sorted(str(d) for d in Path(run_dir).glob("stage-[0-9]*") if (d / "config.json").is_file())
    rep = run_eval(stages, tasks, protocol=protocol, limit=s.eval_limit)  # final/ is the last stage again
    depth = {m["name"]: m["depth"] for m in rep["models"] if not m.get("final")}
    rows, n = {}, {t.name: len(t.items) for t in loaded}
    for r in rep["results"]:
        if r["model"] in depth:
            m = dict(r["metrics"])
            if "acc" not in m and "score" in m:  # the generative protocol: a score in percent
                m["acc"] = m["score"] / 100
            if "acc_stderr" not in m:  # the binomial standard error over the items
                m["acc_stderr"] = math.sqrt(max(m["acc"] * (1 - m["acc"]), 0) / max(n.get(r["task"], 1), 1))
            rows.setdefault(depth[r["model"]], {})[r["task"]] = m
    rec = {"run": run_dir, "protocol": protocol, "limit": s.eval_limit, "chance": chance,
           "items": {t.name: len(t.items) for t in loaded},
           "by_depth": {str(d): rows[d] for d in sorted(rows)}, "wall_s": time.perf_counter() - t0}
    write_json(path, rec)
    return check_depth(rec, path)


def machine() -> dict:
    import mlx.core as mx

    from mlx_grow.backend import loaded

    info = {"platform": platform.platform(), "python": platform.python_version(), "mlx": mx.__version__,
            "cpus": os.cpu_count(), "device": str(mx.default_device()), "blas": loaded.get("library") or "bundled"}
    try:
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return info


def commit() -> str | None:
    """The git commit of the mlx_grow source, when it runs from a checkout."""
    import subprocess

    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--", str(here.parent)],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode:
        return None
    return out.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def data_passes(jobs, tok=None) -> tuple:
    """(lines, refusal or None): per source, the most any run draws from it against what
    it holds (training/passes.py), and the first run that reads a source more than its
    data.max_passes (raised by --allow-repeat) times. `tok`: the tokenizer (or a function that
    gives it) where the runs' own is not built yet."""
    from mlx_grow.training import passes

    memo, worst, over = {}, {}, None
    for _, key, _, _, cfg in jobs:
        rows = passes.table(cfg, tok, memo)
        for r in rows:
            if r.label not in worst or r.passes > worst[r.label][0].passes:
                worst[r.label] = (r, key)
            if r.held and r.passes > cfg.data.max_passes and (over is None or r.passes > over[0]):
                over = (r.passes, key, cfg, rows)
    lines = [f"data: {r.line()}, the most of any run ({key})" for r, key in worst.values()]
    if over is None:
        return lines, None
    try:  # the run that reads a source the most times names it
        passes.check(over[2], over[3], flag="--allow-repeat")
    except UserError as e:
        return lines, f"run {over[1]}: {e}"
    return lines, None


def reproduce(scale="tiny", out=None, data=None, experts=None, tasks=None, report=None, font=None,
              dry_run=False, progress=True, echo=print, command=None, substrates=None, allow_repeat=None,
              parts=None) -> dict:
    """Run `parts` (default all) at `scale`; write OUT/results.json and the report
    (default OUT/reproduction.md, its plots in a folder beside it). Returns the results.
    Before anything is written, every run's passes over its sources are checked
    (`allow_repeat` raises the limit, as grow --allow-repeat)."""
    from mlx_grow.reproduce.report import si, write_report

    s = get_scale(scale)
    part_ids = get_parts(parts)
    experts = tuple(experts or SCALE_EXPERTS.get(s.name) or EXPERT_DATA)
    if len(experts) != 2:
        raise UserError(f"--expert is given twice, once for each of part 4's two corpora (e.g. --expert a.txt "
                        f"--expert b.txt); got it {len(experts)} time{'s' if len(experts) != 1 else ''}")
    tasks = tuple(tasks or EVAL_TASKS)
    glyph = glyph_available(font)
    subs = substrate_labels(substrates) if substrates else None
    out = Path(out or f"reproduce-{s.name}")
    tok_sources = tokenizer_sources(s, data, experts)
    trained = s.tokenizer == TRAINED
    tok_path = (out / "tokenizer") if trained else None
    device = device_class()
    state = {}
    if (out / MARK).is_file():
        state = read_json(out / MARK, dict, fix="restore it, or choose a new --out", shape={"settings": dict})
    ckpt = state.get("checkpoint_every")
    if not (isinstance(ckpt, int) and ckpt >= 0):
        ckpt = checkpoint_steps(s, device)
    jobs = experiments(s, data, experts, glyph, font, subs, part_ids, tok_path, ckpt)
    if allow_repeat is not None:  # every run may read a source up to N times
        jobs = [(*job[:4], job[4].with_flags(data={"max_passes": float(allow_repeat)})) for job in jobs]
    est = estimate(s, jobs, device)
    names = ", ".join(n for n, p in PARTS.items() if p in part_ids)
    echo(f"reproduce --scale {s.name} ({names}): {est['runs']} training runs, {si(est['tokens'])} tokens, "
         f"{si(est['flops'])}FLOPs of training, predicted peak memory {est['peak_bytes'] / 2**30:.2f} GiB (one run "
         f"at a time); about {fmt_hours(est['hours'])} on {DEVICES[device]['label']} ({DEVICES[device]['how']} "
         f"{DEVICES[device]['flops'] / 1e12:g} TFLOP/s); needs {est['hardware']}")
    if not glyph and 1 in part_ids:
        echo("no font for the glyph substrate (apt-get install fonts-unifont, or --font FILE): part 1 runs without it")
    have_tok = trained and (tok_path / "tokenizer.json").is_file() and state.get("tokenizer")
    pending = PendingTokenizer(s, tok_sources) if trained and not have_tok else None
    lines, refusal = data_passes(jobs, pending) if jobs else ([], None)
    if dry_run:
        for line in lines:
            echo(line)
        if refusal:
            echo(f"refused (a run would stop here): {refusal}")
        return {"estimate": est, "passes": lines, "refused": refusal}
    if refusal:
        raise UserError(refusal)
    from mlx_grow.data import corpora

    hub = [x.source for *_, cfg in jobs for x in cfg.data.mixture(0) if x.source.startswith("hf:")]
    if trained:
        hub += [source_name(x) for x in tok_sources if source_name(x).startswith("hf:")]
    if missing := corpora.offline_sources(list(dict.fromkeys(hub))):
        raise UserError(corpora.offline_message(missing))
    settings = {"scale": s.to_dict(), "data": list(data or []), "experts": [source_name(x) for x in experts],
                "tasks": list(tasks), "glyph": glyph, "substrates": subs}
    # Every check before the first write: a refused input never blocks the corrected rerun.
    md_path = Path(report) if report else out / "reproduction.md"
    check_report(md_path, out)
    check_sources([*(data or []), *experts])
    state = open_out(out, settings)
    if state.get("checkpoint_every") != ckpt:
        state["checkpoint_every"] = ckpt
        write_json(out / MARK, state)
    t0 = time.perf_counter()
    tok_rec = ensure_tokenizer(s, out, state, tok_sources, echo, pending)
    recs, done_flops, done_s = [], 0.0, 0.0
    skipped_flops = 0.0  # finished runs, read back: not left to train, not a measure of speed
    for i, job in enumerate(jobs):
        head = f"[{i + 1}/{len(jobs)}] part {job[0]}: {job[2]} (seed {job[3]})"
        if (out / "records" / f"{job[1]}.json").is_file():
            rec = read_record(out, job)
            echo(f"{head}: finished earlier, its record reused")
            recs.append(rec)
            skipped_flops += rec.get("flops") or 0.0
            continue
        left = est["flops"] - done_flops - skipped_flops
        rate = done_flops / done_s if done_s > 60 else DEVICES[device]["flops"]
        echo(f"{head}; about {fmt_hours(max(left, 0.0) / rate / 3600)} of training left")
        rec = train_run(job, out, progress, echo)
        recs.append(rec)
        if rec.get("flops"):
            done_flops, done_s = done_flops + rec["flops"], done_s + rec["wall_s"]
    echo("baselines: unigram and bigram tables on the runs' batches")
    tb = time.perf_counter()
    base = baselines(out, jobs, echo)
    base_s = time.perf_counter() - tb
    bpt = {}
    for job, rec in zip(jobs, recs):
        if job[0] == 1:
            key = json.dumps(job[4].to_dict()["data"], sort_keys=True)
            if key not in bpt:
                bpt[key] = bytes_per_token(job[4])
            rec["bits_per_byte"] = rec["val_loss"] / math.log(2) / bpt[key]
            rec["bytes_per_token"] = bpt[key]
    comp, skipped = [], None
    if 4 in part_ids:
        p4 = [r for r in recs if r["part"] == 4]
        why = experts_clear(p4, base["4"])
        if why:
            skipped = "the merges were not run: " + "; ".join(why)
            echo(f"part 4: {skipped}")
        else:
            echo("part 4: merging the experts")
            for seed in range(s.seeds):
                comp.append(composition(s, out, [r for r in p4 if r["seed"] == seed], experts, seed, progress, echo))
    depth = {}
    if 5 in part_ids:
        if not s.benchmarks:
            depth = {"not_testable": (
                "at this scale a model of a few million parameters trained on well under a million tokens of the "
                "Bible and Shakespeare answers MMLU, ARC and CommonsenseQA at chance (the previous tiny run: every "
                "depth within 2 standard errors of chance under the log-likelihood protocol), and the papers' "
                "generative protocol needs a model that writes the answer letter; part 5 runs at small and paper")}
        else:
            grown0 = out / "runs" / "grown-s0"
            if not (out / "records" / "grown-s0.json").is_file():
                depth = {"skipped": "it scores the stages of part 2's seed-0 grown run: run --parts grown first"}
            else:
                echo("part 5: benchmarks on every grown stage, both protocols")
                depth = {p: depth_scores(s, out, str(grown0), tasks, echo, p) for p in ("loglik", "paper")}
    before = read_json(out / "results.json", dict, fix=REBUILT, shape={"wall_s": NUMBER}) \
        if (out / "results.json").is_file() else {}
    if not isinstance(before.get("invocations", 1), int):
        raise UserError(f"{out / 'results.json'} is damaged (its invocations entry is not a count); {REBUILT}")
    from mlx_grow.reproduce.scales import head_share

    results = {"scale": s.to_dict(), "parts": part_ids, "estimate": est, "machine": machine(), "commit": commit(),
               "tokenizer": tok_rec, "shape": head_share(s), "checkpoint_every": ckpt, "runs": recs,
               "baselines": base, "composition": comp, "composition_skipped": skipped, "depth": depth,
               "wall_s": before.get("wall_s", 0) + time.perf_counter() - t0,
               "invocations": before.get("invocations", 1 if before else 0) + 1,
               "work_s": sum(r["wall_s"] for r in recs) + sum(c["wall_s"] for c in comp) + base_s
               + sum(v.get("wall_s", 0) for v in depth.values() if isinstance(v, dict)),
               "load_end": load(),
               "command": command or f"mlx-grow reproduce --scale {s.name}",
               "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    write_json(out / "results.json", results)
    md = write_report(results, md_path, str(out.resolve()))
    echo(f"report: {md}")
    results["report"] = str(md)
    return results
