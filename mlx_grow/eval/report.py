"""Run evaluations (each task on each model; a grow run directory expands to its
stage checkpoints and final model) and write the report: JSON, a markdown table
and PNG plots (scores per task; score vs depth across stage checkpoints; experts
vs their merge; grown vs monolithic), with the papers' published figures as
reference rows where the task matches (generative protocol only)."""

import json
from pathlib import Path

import numpy as np

from mlx_grow.base import UserError
from mlx_grow.papers import MERGE_REFS, PAPER_DEPTH, PAPER_MODELS, REF_TASKS, depth_reference, ref_key, reference

PROTOCOLS = ("loglik", "paper")


def headline(r: dict, protocol: str):
    """(value, error bar, label): % accuracy ± CI (paper), % acc ± stderr (loglik), or answer bpb."""
    m = r["metrics"]
    if protocol == "paper":
        return m["score"], m["ci95"], m.get("metric", "score")
    if "acc" in m:
        return 100 * m["acc"], 100 * m["acc_stderr"], "acc %"
    return m["answer_bpb"], 0.0, "answer bits/byte"


def _fmt(r, protocol):
    m = r["metrics"]
    if protocol == "paper":
        return f"{m['score']:.2f} ± {m['ci95']:.2f}"
    if "acc" in m:
        return f"{100 * m['acc']:.1f} / {100 * m['acc_norm']:.1f}"
    return f"{m['answer_bpb']:.3f} bpb"


def _value(r, protocol) -> float:
    m = r["metrics"]
    return m["score"] if protocol == "paper" else 100 * m["acc"] if "acc" in m else m["answer_bpb"]


def seed_spread(report: dict) -> list:
    """Grown vs monolithic final models, each group's mean ± sample std over its runs (seeds)."""
    groups = {}
    for m in report["models"]:
        if m.get("monolithic") is not None and m.get("final", True):
            groups.setdefault("monolithic" if m["monolithic"] else "grown", []).append(m["name"])
    if not groups:
        return []
    cell = {(r["model"], r["task"]): r for r in report["results"]}
    rows = []
    for t in dict.fromkeys(r["task"] for r in report["results"]):
        for g, names in sorted(groups.items()):
            vals = [_value(cell[n, t], report["protocol"]) for n in names if (n, t) in cell]
            if vals:
                sd = float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")
                rows.append([t, g, len(vals), f"{np.mean(vals):.3f}", f"{sd:.3f}"])
    return markdown_table(["task", "group", "runs (seeds)", "mean", "std (ddof=1)"], rows) + [""] if rows else []


def _cell(x) -> str:
    return "" if x is None else f"{x:.2f}"


def markdown_table(header, rows) -> list:
    """The lines of a markdown table: a header row, its rule, then one line a row."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def markdown(report: dict) -> str:
    p = report["protocol"]
    names = [m["name"] for m in report["models"]]
    labels = list(dict.fromkeys(r["task"] for r in report["results"]))
    cell = {(r["model"], r["task"]): r for r in report["results"]}
    s = report["settings"]
    lines = [f"# mlx-grow eval ({'papers’ generative protocol' if p == 'paper' else 'log-likelihood'})", ""]
    if p == "paper":
        ddof = s.get("ci_ddof", 1)
        sigma = "ddof=0 as the papers' harness (np.std)" if ddof == 0 else "sample standard deviation, ddof=1"
        lines.append(f"Accuracy % (BLEU for translation): mean ± 1.96·σ/√n over {s['runs']} sampled runs "
                     f"(σ: {sigma}), temperature {s['temp']}, top-k {s['top_k'] or 'off'}, seed {s['seed']}.")
        how = s.get("prompt_start", "model")
        rule = "as each model's tokenizer says" if how == "model" else f"by --prompt-start {how}"
        each = [f"{m['name']}: " + (f"{' '.join(m['prompt_start'])} + prompt" if m.get("prompt_start") else
                                    "the bare prompt") for m in report["models"]]
        lines.append(f"Prompts start {rule} ({'; '.join(each)}).")
    else:
        lines.append("acc % / acc_norm % (log-likelihood of each choice; acc_norm divides by its characters); "
                     "SQuAD / translation: bits per byte of the reference answer.")
    lines.append("")
    if labels:
        rows = [[n, next((m.get("depth") for m in report["models"] if m["name"] == n), "")]
                + [_fmt(cell[n, t], p) if (n, t) in cell else "" for t in labels] for n in names]
        lines += markdown_table(["model", "depth"] + labels, rows) + [""]
    if spread := seed_spread(report):
        lines += ["Grown vs monolithic, spread over runs (one run per seed):", ""] + spread
    if p == "paper" and labels:
        rows = [[n] + [f"{cell[n, t]['metrics']['greedy']:.2f}"
                       + (f" · {100 * cell[n, t]['metrics']['format_valid']:.0f}%"
                          if "format_valid" in cell[n, t]["metrics"] else "") if (n, t) in cell else ""
                       for t in labels] for n in names]
        lines += ["Greedy run · format-valid rate of the sampled runs (the first non-space character is a "
                  "Latin letter or an option label):", ""]
        lines += markdown_table(["model"] + labels, rows) + [""]
        keys = [(t, ref_key(t)) for t in labels if ref_key(t)]
        if keys:
            lines += ["Published (papers' generative protocol, mean of 10 runs; \"merge + tune\": a mean-logit "
                      "merge trained further after merging, as v1 describes):", ""]
            ref_rows = [[n, v[0]] + [_cell(v[1 + REF_TASKS.index(k)]) for _, k in keys]
                        for n, v in PAPER_MODELS.items() if any(v[1 + REF_TASKS.index(k)] is not None for _, k in keys)]
            ref_rows += [[f"abs-bvv-{d} (depth {d}, d 4096)", v[0]]
                         + [f"{v[1 + REF_TASKS.index(k)]:.2f}" if REF_TASKS.index(k) < 5 else "" for _, k in keys]
                         for d, v in PAPER_DEPTH.items()]
            lines += markdown_table(["model", "params"] + [t for t, _ in keys], ref_rows) + [""]
    elif labels and any(ref_key(t) for t in labels):
        lines += ["(The papers' published figures use the generative protocol: run with `--protocol paper` "
                  "to compare with them.)", ""]
    if report.get("texts"):
        rows = [[x["model"], x["file"], x["tokens"], f"{x['ppl']:.3f}", f"{x['bits_per_byte']:.4f}"]
                for x in report["texts"]]
        lines += markdown_table(["model", "text", "tokens", "perplexity", "bits/byte"], rows) + [""]
    return "\n".join(lines)


def _bars(report, names, out: Path, title: str, refs=()):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = report["protocol"]
    labels = list(dict.fromkeys(r["task"] for r in report["results"] if r["model"] in names))
    if not labels:
        return None
    cell = {(r["model"], r["task"]): r for r in report["results"]}
    fig, axes = plt.subplots(1, len(labels), figsize=(max(4.5, 3.2 * len(labels)), 4.2), squeeze=False)
    for ax, t in zip(axes[0], labels):
        ys = [headline(cell[n, t], p) if (n, t) in cell else (0.0, 0.0, "") for n in names]
        ax.bar(range(len(names)), [y[0] for y in ys], yerr=[y[1] for y in ys], capsize=3, color="C0")
        ticks = list(names)
        k = ref_key(t) if p == "paper" else None
        for j, name in enumerate(r for r in refs if k):
            ax.bar(len(names) + j, reference(k)[name], color="lightgrey", hatch="//", edgecolor="grey")
            ticks.append("paper: " + name)
        ax.set_xticks(range(len(ticks)), ticks, rotation=35, ha="right", fontsize=7)
        ax.set_title(t, fontsize=9)
        ax.set_ylim(bottom=0)
        ax.set_ylabel(next((y[2] for y in ys if y[2]), ""))
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _depth_plot(report, out: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = report["protocol"]
    depth = {m["name"]: m.get("depth") for m in report["models"]}
    group = {m["name"]: m.get("run") or "models" for m in report["models"]}
    labels = list(dict.fromkeys(r["task"] for r in report["results"]))
    if len({d for d in depth.values() if d}) < 2 or not labels:
        return None
    fig, axes = plt.subplots(1, len(labels), figsize=(max(4.5, 3.6 * len(labels)), 4), squeeze=False)
    for ax, t in zip(axes[0], labels):
        rs = [r for r in report["results"] if r["task"] == t and depth.get(r["model"])]
        for g in dict.fromkeys(group[r["model"]] for r in rs):
            pts = sorted((depth[r["model"]],) + headline(r, p)[:2] for r in rs if group[r["model"]] == g)
            ax.errorbar([x[0] for x in pts], [x[1] for x in pts], yerr=[x[2] for x in pts], marker="o",
                        capsize=3, label=Path(g).name)
        ref = depth_reference(ref_key(t)) if p == "paper" else {}
        if ref:
            ax.plot(list(ref), list(ref.values()), "s--", color="grey", ms=3, label="paper abs-bvv (d 4096)")
        ax.set_xlabel("depth (blocks)")
        ax.set_ylabel(headline(rs[0], p)[2] if rs else "")
        ax.set_title(t, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("score vs depth")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def writable(out, overwrite: bool = False):
    """Refuse, before any score is computed, a report folder that cannot be written,
    or that exists and may not be replaced (the output rule: only with --overwrite,
    and only a report folder mlx-grow wrote)."""
    import os
    import tempfile

    from mlx_grow.io.atomic import REPORT_MARKER, check_output

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder: give a report folder")
    check_output(out, overwrite, marker=REPORT_MARKER)
    base = out
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise UserError(f"cannot create the report folder {out}: {base} is a file, not a folder; choose another --out")
    try:
        fd, probe = tempfile.mkstemp(dir=base, prefix=".mlx-grow-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write the report to {out}: {base} is not writable ({e.strerror}); choose another "
                         "--out before the scores are computed") from None


def write(report: dict, out, overwrite: bool = False) -> list:
    """Write the report folder (report.json, report.md, the plots that apply) at
    once; an existing one is replaced only with `overwrite` and only when mlx-grow
    wrote it. Returns the paths written."""
    from mlx_grow.io.atomic import REPORT_MARKER, atomic_dir, write_marker

    out = Path(out)
    with atomic_dir(out, overwrite, marker=REPORT_MARKER) as tmp:
        written = write_files(report, tmp)
        write_marker(tmp, REPORT_MARKER, {"format_version": 1, "kind": "eval"})
    return [out / p.relative_to(tmp) for p in written]


def write_files(report: dict, out: Path) -> list:
    """report.json, report.md and the plots that apply, into folder `out`."""
    from mlx_grow.io import atomic_path

    written = []
    for name, text in (("report.json", json.dumps(report, indent=1, ensure_ascii=False)),
                       ("report.md", markdown(report))):
        with atomic_path(out / name) as tmp:
            tmp.write_text(text + "\n", encoding="utf-8")
        written.append(out / name)
    if not report["results"]:
        return written
    models = report["models"]
    names = [m["name"] for m in models]
    written.append(_bars(report, names, out / "scores.png", "scores"))
    written.append(_depth_plot(report, out / "depth.png"))
    by_path = {str(Path(m["path"]).resolve()): m["name"] for m in models}
    for m in (m for m in models if m.get("experts")):
        experts = [by_path[e] for e in (str(Path(x).resolve()) for x in m["experts"]) if e in by_path]
        if experts:
            f = out / f"merge-{m['name'].replace('/', '_')}.png"
            written.append(_bars(report, experts + [m["name"]], f, f"experts vs merge {m['name']}", MERGE_REFS))
    kinds = {m["name"]: m.get("monolithic") for m in models}
    if True in kinds.values() and False in kinds.values():
        finals = [m["name"] for m in models if m.get("monolithic") is not None and m.get("final", True)]
        written.append(_bars(report, finals, out / "grown_vs_monolithic.png", "grown vs monolithic"))
    return [w for w in written if w is not None]
