"""The papers' claims, each judged by the written rules of verdicts.py from the
records of a reproduction (never by hand). One function per part; each returns
rows {part, claim, ours, verdict}."""

import math

import numpy as np

from mlx_grow.reproduce import verdicts
from mlx_grow.reproduce.scales import GROWN_VARIANTS, LAYER_VARIANTS, UNION


def by_seed(runs, part: int, label: str) -> dict:
    return {r["seed"]: r for r in runs if r["part"] == part and r["label"] == label}


def unigram(base: dict, part: int, seed: int, src: str = "data") -> float:
    return base[str(part)][str(seed)][src]["unigram"]


def mean(xs) -> float:
    xs = list(xs)
    return float(np.mean(xs)) if xs else math.nan


def paired(a: dict, b: dict, fa=lambda r: r["val_loss"], fb=lambda r: r["val_loss"]):
    """(seeds, per-seed differences a - b) over the seeds both arms finished."""
    seeds = sorted(set(a) & set(b))
    return seeds, [fa(a[s]) - fb(b[s]) for s in seeds]


def gate(name: str, arm: dict, base: dict, part: int, loss=lambda r: r["val_loss"]):
    """Rule 1 on one arm: None when every seed ended CLEAR below its own unigram table."""
    seeds = sorted(arm)
    if not seeds:
        return verdicts.Verdict(verdicts.NOT_TESTABLE, f"{name} did not run")
    return verdicts.clear_of_unigram(name, [loss(arm[s]) for s in seeds], [unigram(base, part, s) for s in seeds])


def _row(part, claim, ours, verdict):
    return {"part": part, "claim": claim, "ours": ours, "verdict": verdict}


def rivals_row(part, claim, a_name, a, b_name, b, base, gates=()):
    """"a rivals b" after the gates (rule 1) on b and on `gates` [(name, arm, loss)]."""
    for name, arm, loss in [(b_name, b, lambda r: r["val_loss"]), *gates]:
        g = gate(name, arm, base, part, loss)
        if g is not None:
            return _row(part, claim, _means(a_name, a, b_name, b), g)
    seeds, d = paired(a, b)
    uni = mean(unigram(base, part, s) for s in seeds)
    v = verdicts.rivals(a_name, b_name, d, mean(b[s]["val_loss"] for s in seeds), uni)
    return _row(part, claim, _means(a_name, a, b_name, b), v)


def better_row(part, claim, a_name, a, b_name, b, base, gates=(), fa=None, fb=None):
    """"a is better than b" after the gates (rule 1) on both arms and `gates`."""
    fa = fa or (lambda r: r["val_loss"])
    fb = fb or (lambda r: r["val_loss"])
    for name, arm, loss in [(a_name, a, fa), (b_name, b, fb), *gates]:
        g = gate(name, arm, base, part, loss)
        if g is not None:
            return _row(part, claim, _means(a_name, a, b_name, b, fa, fb), g)
    _, d = paired(a, b, fa, fb)
    return _row(part, claim, _means(a_name, a, b_name, b, fa, fb), verdicts.better(a_name, b_name, d))


def _means(a_name, a, b_name, b, fa=None, fb=None) -> str:
    fa = fa or (lambda r: r["val_loss"])
    fb = fb or (lambda r: r["val_loss"])
    if not a or not b:
        return "–"
    return (f"{a_name} {mean(fa(r) for r in a.values()):.3f} vs {b_name} {mean(fb(r) for r in b.values()):.3f} "
            f"nats ({len(set(a) & set(b))} seeds)")


SUBSTRATE_CLAIM = ("Frozen non-semantic substrates learn; fixed 16-bit codes match a learned input table "
                   "(perplexity 2.36 vs 2.44, within the 4.8 % seed spread)")


def part1(runs, base) -> list:
    train = by_seed(runs, 1, "trainable embeddings")
    rows = []
    labels = list(dict.fromkeys(r["label"] for r in runs if r["part"] == 1 and r["label"] != "trainable embeddings"))
    for label in labels:
        claim = SUBSTRATE_CLAIM if label == "16-bit id" else (
            f"A frozen {label} substrate learns as well as a learned input table (the papers' frozen substrates)")
        if not train:
            rows.append(_row(1, claim, "the trainable table did not run (--substrate)",
                             verdicts.Verdict(verdicts.NOT_TESTABLE, "no reference arm: the trainable table did not run")))
            continue
        rows.append(rivals_row(1, claim, label, by_seed(runs, 1, label), "trainable embeddings", train, base))
    return rows


def part2(runs, base) -> list:
    g, mf, mt = (by_seed(runs, 2, v) for v in GROWN_VARIANTS)
    if not (g and mf and mt):
        return []
    stage1 = ("grown stage 1 (frozen after it)", g, lambda r: r["stages"][0]["val_loss"])
    return [
        rivals_row(2, "A model grown stage by stage rivals the monolithic one at the same token budget while "
                      "training a third of the blocks at a time (v2)", "grown 3+3+3", g,
                   "monolithic (frozen substrate)", mf, base, gates=[stage1]),
        rivals_row(2, "... and rivals a fully trainable monolithic model (v2)", "grown 3+3+3", g,
                   "monolithic (fully trainable)", mt, base, gates=[stage1]),
        better_row(2, "v3 reports a clear trade-off in final perplexity against dense monolithic training "
                      "(monolithic better)", "monolithic (frozen substrate)", mf, "grown 3+3+3", g, base,
                   gates=[stage1]),
    ]


def part3(runs, base) -> list:
    arms = {v: by_seed(runs, 3, v) for v in LAYER_VARIANTS}
    plain, ctrl = arms[LAYER_VARIANTS[0]], arms[LAYER_VARIANTS[4]]
    if not plain:
        return []
    rows = []
    if ctrl:
        rows.append(better_row(3, "Each added layer improves the model (the abs-bvv 1…6 series), beyond what "
                                  "training on without a new layer gives", "one layer a stage", plain,
                               "control: no new layer", ctrl, base))
    if arms[LAYER_VARIANTS[1]]:
        rows.append(better_row(3, "LoRA on the frozen layers during growth helps (v3)", "+ LoRA on the frozen layers",
                               arms[LAYER_VARIANTS[1]], "one layer a stage", plain, base))
    if arms[LAYER_VARIANTS[2]]:
        rows.append(better_row(3, "Interleaved LoRA phases help (v3), at the same tokens",
                               "+ interleaved LoRA phases", arms[LAYER_VARIANTS[2]], "one layer a stage", plain, base))
    if arms[LAYER_VARIANTS[3]]:
        rows.append(rivals_row(3, "Freezing the head after stage 1 (v1: only the new layer trains) costs little",
                               "head frozen after stage 1 (v1)", arms[LAYER_VARIANTS[3]], "one layer a stage", plain,
                               base))
    return rows


def part4(runs, base, comp: list, skipped) -> list:
    claim1 = ("Experts trained on different data merge by averaging logits into a model better on the union than "
              "either expert (best_bvv_moe)")
    claim2 = "The merge improves with further training, beyond the experts tuned on the union for the same steps"
    claim3 = "(control) The training-free merge against one model trained on the union with the experts' tokens"
    if skipped or not comp:
        why = verdicts.Verdict(verdicts.NOT_TESTABLE, skipped or "part 4 did not run")
        return [_row(4, c, "–", why) for c in (claim1, claim2, claim3)]
    rows = {c["seed"]: c["rows"] for c in comp}
    seeds = sorted(rows)

    def arm(name, pick=None):
        pick = pick or (lambda r: r[name]["union"])
        return {s: {"val_loss": pick(rows[s])} for s in seeds}

    best_expert = arm("", lambda r: min(r["expert 1"]["union"], r["expert 2"]["union"]))
    best_tuned = arm("", lambda r: min(r["expert 1 + tune (all)"]["union"], r["expert 2 + tune (all)"]["union"]))
    out = []
    for claim, a_name, a, b_name, b in (
            (claim1, "mean-logits", arm("mean-logits"), "the better expert", best_expert),
            (claim2, "mean-logits + tune", arm("mean-logits + tune (all)"), "the better expert + tune", best_tuned),
            (claim3, "mean-logits", arm("mean-logits"), UNION, arm(UNION))):
        _, d = paired(a, b)
        out.append(_row(4, claim, _means(a_name, a, b_name, b) + " on the union", verdicts.better(a_name, b_name, d)))
    return out


def part5(depth: dict) -> list:
    claim = "Benchmark scores rise with depth, not monotonically (abs-bvv 1→6: MMLU 18.1→21.6 %, generative protocol)"
    if depth.get("not_testable"):
        return [_row(5, claim, "not run", verdicts.Verdict(verdicts.NOT_TESTABLE, depth["not_testable"]))]
    rec = depth.get("paper") or depth.get("loglik")
    if not rec or not rec.get("by_depth"):
        return [_row(5, claim, "not run", verdicts.Verdict(verdicts.NOT_TESTABLE, depth.get("skipped") or "part 5 did not run"))]
    ds = sorted(int(d) for d in rec["by_depth"])
    tasks = list(rec["by_depth"][str(ds[0])])
    last = rec["by_depth"][str(ds[-1])]
    above = [t for t in tasks if last[t]["acc"] > (rec["chance"].get(t) or 1) + 2 * last[t].get("acc_stderr", 0)]
    if not above:
        return [_row(5, claim, f"at depth {ds[-1]} no task is 2 standard errors above chance",
                     verdicts.Verdict(verdicts.NOT_TESTABLE, "every task is at chance at the full depth"))]
    first = rec["by_depth"][str(ds[0])]
    d = [first[t]["acc"] - last[t]["acc"] for t in above]
    # tasks play the part of seeds here: "the accuracy at the first depth is lower than at the last"
    v = verdicts.better(f"accuracy at depth {ds[0]}", f"accuracy at depth {ds[-1]}", d) if len(d) > 1 else verdicts.Verdict(
        verdicts.INCONCLUSIVE, "one task above chance gives no spread to judge by")
    return [_row(5, claim, f"{len(above)} of {len(tasks)} tasks above chance at depth {ds[-1]}", v)]


def all_claims(res: dict) -> list:
    runs, base = res["runs"], res.get("baselines") or {}
    parts = set(res.get("parts") or [1, 2, 3, 4, 5])
    rows = []
    if 1 in parts and any(r["part"] == 1 for r in runs):
        rows += part1(runs, base)
    if 2 in parts:
        rows += part2(runs, base)
    if 3 in parts:
        rows += part3(runs, base)
    if 4 in parts:
        rows += part4(runs, base, res.get("composition") or [], res.get("composition_skipped"))
    if 5 in parts:
        rows += part5(res.get("depth") or {})
    return rows
