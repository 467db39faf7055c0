"""The reproduction report: tables with the count baselines, plots, and for each
claim the verdict of the written rules (claims.py, verdicts.py), worded from the
measured numbers (never edited by hand)."""

import math
from pathlib import Path

import numpy as np

from mlx_grow.base import human
from mlx_grow.eval.report import markdown_table as _table
from mlx_grow.io.atomic import atomic_path
from mlx_grow.reproduce.scales import GROWN_VARIANTS, LAYER_VARIANTS, PART_TITLES, UNION

GLYPH_FULL = 1024  # the glyph recipe's bits (32 x 32); PCA keeps min(d_model, 1024) components


def _mean_sd(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return math.nan, math.nan
    return float(np.mean(xs)), float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0


def si(x) -> str:
    """A count in SI units (K, M, G … E), 2 decimals; – for none."""
    return human(x, digits=2, giga="G")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def plot_curves(groups: dict, path: Path, title: str, axes=("tokens", "flops"), grows=(), lines=None):
    """Validation loss of each group (mean over its runs, min-max band) against
    tokens and FLOPs; dashed lines at `grows` (growth events), dotted horizontal
    lines at `lines` {label: loss} (the count baselines)."""
    plt = _plt()
    fig, axs = plt.subplots(1, len(axes), figsize=(6 * len(axes), 4.2), squeeze=False)
    for ax, key in zip(axs[0], axes):
        for label, runs in groups.items():
            n = min(len(r["curve"]["val_loss"]) for r in runs)
            x = np.array(runs[0]["curve"][key][:n], dtype=float)
            ys = np.array([r["curve"]["val_loss"][:n] for r in runs])
            line, = ax.plot(x, ys.mean(0), "o-", ms=2.5, lw=1.2, label=f"{label} (n={len(runs)})")
            if len(runs) > 1:
                ax.fill_between(x, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.15)
        for name, y in (lines or {}).items():
            ax.axhline(y, color="black", ls=":", lw=0.9)
            ax.text(ax.get_xlim()[1], y, f"{name} ", ha="right", va="bottom", fontsize=7)
        for g in grows:
            if g.get(key) is not None:
                ax.axvline(g[key], color="grey", ls="--", lw=0.8)
                ax.text(g[key], ax.get_ylim()[1], f" depth {g['depth']}", va="top", fontsize=8, color="grey")
        ax.set_xlabel("training tokens" if key == "tokens" else "training FLOPs")
        ax.set_ylabel("validation loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_bars(rows: dict, cols: list, path: Path, title: str, ylabel: str):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 4.4))
    w = 0.8 / len(cols)
    names = list(rows)
    for j, c in enumerate(cols):
        ax.bar(np.arange(len(names)) + j * w, [rows[n][c] for n in names], w, label=c)
    ax.set_xticks(np.arange(len(names)) + w * (len(cols) - 1) / 2)
    ax.set_xticklabels(names, rotation=20, ha="right", fontsize=7)
    lo = min(rows[n][c] for n in names for c in cols)
    ax.set_ylim(lo * 0.95, None)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_depth(depth: dict, path: Path):
    plt = _plt()
    protocols = [p for p in ("loglik", "paper") if (depth.get(p) or {}).get("by_depth")]
    fig, axs = plt.subplots(1, len(protocols), figsize=(6.5 * len(protocols), 4.2), squeeze=False)
    for ax, p in zip(axs[0], protocols):
        rec = depth[p]
        ds = sorted(int(d) for d in rec["by_depth"])
        for t in rec["by_depth"][str(ds[0])]:
            line, = ax.plot(ds, [100 * rec["by_depth"][str(d)][t]["acc"] for d in ds], "o-", label=t)
            if rec["chance"].get(t):
                ax.axhline(100 * rec["chance"][t], color=line.get_color(), ls=":", lw=0.8)
        ax.set_xlabel("depth (blocks) after each growth stage")
        ax.set_ylabel(f"accuracy, {p} protocol (%)")
        ax.set_xticks(ds)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"benchmarks vs depth, {p} (dotted: chance)")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def owner_line(reproduction) -> str:
    """The line a reproduction's report starts with: its proof that it wrote the file."""
    return f"<!-- written by mlx-grow reproduce for {reproduction}; each run of it rewrites this file -->"


def write_report(res: dict, md_path: Path, reproduction: str | None = None) -> Path:
    """The report at `md_path` and its figures folder beside it (the name without
    .md; results.json and the plots), each replaced whole. `reproduction`: the
    folder (resolved) of the reproduction that writes it, recorded in both."""
    from mlx_grow.io.atomic import REPORT_MARKER, atomic_dir, write_marker

    md_path = Path(md_path)
    final = md_path.parent / md_path.stem
    first_line = owner_line(reproduction) if reproduction else None
    with atomic_dir(final, overwrite=True, marker=REPORT_MARKER) as figs:  # run.check_report said it may
        text = _write(res, figs, final.name, first_line)
        write_marker(figs, REPORT_MARKER, {"format_version": 1, "kind": "reproduce", "report": md_path.name,
                                           "reproduction": reproduction})
    with atomic_path(md_path) as tmp:
        tmp.write_text(text)
    return md_path


# --- pieces ---


def _loss(rs) -> str:
    mu, sd = _mean_sd([r["val_loss"] for r in rs])
    return f"{mu:.4f} ± {sd:.4f}" if len(rs) > 1 else f"{mu:.4f}"


def _base_rows(base: dict, part: int, ncols: int, src: str = "data") -> list:
    """The unigram and bigram rows of a part's table: mean over seeds, first data column filled."""
    seeds = (base or {}).get(str(part)) or {}
    rows = []
    for kind in ("unigram", "bigram"):
        xs = [v[src][kind] for v in seeds.values() if src in v]
        if xs:
            mu, sd = _mean_sd(xs)
            rows.append([f"*{kind} table (count baseline)*", f"{mu:.4f}" + (f" ± {sd:.4f}" if len(xs) > 1 else "")]
                        + ["–"] * (ncols - 2))
    return rows


def _base_lines(base: dict, part: int, src: str = "data") -> dict:
    seeds = (base or {}).get(str(part)) or {}
    return {kind: float(np.mean([v[src][kind] for v in seeds.values() if src in v]))
            for kind in ("unigram", "bigram") if any(src in v for v in seeds.values())}


def _part_wall(runs, part, extra=0.0) -> tuple:
    """(work seconds, mean 5-minute load over the part's runs) of one part."""
    rs = [r for r in runs if r["part"] == part]
    loads = [x[1] for r in rs for x in (r.get("load") or []) if len(x) > 1]
    return sum(r["wall_s"] for r in rs) + extra, (float(np.mean(loads)) if loads else math.nan)


def _commits(res: dict) -> str:
    """The commits the runs trained on (each record names its own) and the one that wrote the report."""
    runs = sorted({r.get("commit") or "unknown" for r in res.get("runs", [])})
    report = res.get("commit") or "unknown"
    if not runs or runs == [report]:
        return f"commit {report}"
    return f"runs trained at commit {', '.join(runs)}; this report written at commit {report}"


def _level(groups: dict, base: dict, part: int) -> list:
    """Where a part's arms end against its count baselines (means over seeds), in words:
    a reader sees at once what level of model the verdicts compare."""
    b = _base_lines(base, part)
    means = {label: float(np.mean([r["val_loss"] for r in rs])) for label, rs in groups.items() if rs}
    if not means or "unigram" not in b or "bigram" not in b:
        return []
    gains = [b["unigram"] - m for m in means.values()]
    below = [label for label, m in means.items() if m < b["bigram"]]
    text = (f"**Level:** the arms end {min(gains):.2f} to {max(gains):.2f} nats below the unigram table "
            f"({b['unigram']:.3f}, means over seeds); ")
    if not below:
        text += (f"none ends below the interpolated bigram table ({b['bigram']:.3f}): every model here has learned "
                 "less than a count bigram, so the verdicts compare models at that level, not at the papers'.")
    elif len(below) == len(means):
        text += f"every arm ends below the interpolated bigram table ({b['bigram']:.3f})."
    else:
        text += (f"{', '.join(below)} end{'s' if len(below) == 1 else ''} below the interpolated bigram table "
                 f"({b['bigram']:.3f}), the others do not.")
    return ["", text]


def _verdict_lines(claims, part) -> list:
    out = []
    for c in claims:
        if c["part"] == part:
            out += [f"- **{c['claim']}** — verdict: **{c['verdict'].outcome}**. {c['verdict'].reason}."]
    return out + [""] if out else []


TOKENIZER_NOTE = (
    "**What depends on the tokenizer.** The claims about frozen id/code substrates, growth, LoRA and composition "
    "compare models on one tokenizer and one set of validation batches, so they do not depend on which "
    "tokenizer it is (the losses themselves do: nats per token of an 8,192-piece BPE are not comparable with "
    "nats per token of bvv241-2-3; bits per byte are). Two things do depend on it: the glyph substrate renders "
    "the tokenizer's pieces (a SentencePiece piece carries its leading-space mark ▁, drawn as a glyph), and "
    "benchmark scores (part 5) depend on how the tokenizer splits the answers.")


def _write(res: dict, figs: Path, name: str, first_line: str | None) -> str:
    """results.json and the plots into `figs`; the report's text, its links under `name`/."""
    import json

    from mlx_grow.reproduce.claims import all_claims
    from mlx_grow.reproduce.verdicts import rules_text

    rel = lambda p: f"{name}/{p.name}"  # noqa: E731
    s, runs, m = res["scale"], res["runs"], res["machine"]
    base = res.get("baselines") or {}
    by = lambda part: [r for r in runs if r["part"] == part]  # noqa: E731
    (figs / "results.json").write_text(json.dumps(res, indent=1, default=str))
    claims = all_claims(res)
    tok = res.get("tokenizer")
    shape = res.get("shape") or {}
    tok_line = (f"a {tok['vocab_size']:,}-piece SentencePiece BPE trained at the start of the reproduction on the "
                f"training split of its corpora ({tok['characters'] / 1e6:.1f}M characters; the "
                f"{tok['held_out']} validation documents of its corpora left out), fingerprint "
                f"`{tok['fingerprint'][:12]}`" if tok else f"{s['tokenizer']} ({s['vocab']:,} ids)")
    parts = res.get("parts") or [1, 2, 3, 4, 5]
    per_part = {}
    for p in parts:
        extra = sum(c["wall_s"] for c in res.get("composition") or []) if p == 4 else 0.0
        if p == 5:
            extra = sum(v.get("wall_s", 0) for v in (res.get("depth") or {}).values() if isinstance(v, dict))
        per_part[p] = _part_wall(runs, p, extra)
    wall_parts = "; ".join(f"{PART_TITLES[p].lower()} {w / 60:.1f} min" + (f" (load {ld:.1f})" if ld == ld else "")
                           for p, (w, ld) in per_part.items())
    L = ([first_line, ""] if first_line else []) + [
        f"# Reproduction at `--scale {s['name']}`", "",
        "Produced by a real run of the command below; every number, plot and verdict here comes from that run "
        f"([{name}/results.json]({name}/results.json) holds the raw records, loss curves included), and every "
        "verdict from the written rules below, never by hand. Nothing was tuned toward the papers' results.", "",
        "```bash", res["command"], "```", "",
        f"- **Machine:** {m['platform']}, {m['cpus']} CPUs, {m.get('memory_gb', '?')} GiB, MLX {m['mlx']} on "
        f"{m['device']} (BLAS: {m['blas']}), Python {m['python']}; {_commits(res)}.",
        f"- **Wall time:** {res['wall_s'] / 60:.1f} min in all ({res.get('invocations', 1)} invocation"
        f"{'s' if res.get('invocations', 1) > 1 else ''}; a later one reuses the finished runs and rewrites the "
        f"report); the runs, merges and evaluations themselves: {wall_parts}. Load average (5 min) during the "
        f"runs as given; other work shared the machine. Finished {res['finished']}.",
        f"- **Shape:** d_model {s['hidden']}, {s['heads']} heads, context {s['seq']}, batch {s['batch']} "
        f"sequences ({s['batch'] * s['seq']:,} tokens a step), {s['dtype']}. Tokenizer: {tok_line}.",
    ]
    if shape:
        from mlx_grow.reproduce.scales import SCALES, head_share

        paper = head_share(SCALES["paper"])  # the papers' shape: d 1,024, 65,536 ids, 3 + 3 + 3 blocks
        L += [f"- **Economics:** the head is {shape['head_share']:.0%} of the monolithic model's trainable "
              f"parameters (frozen substrate; the papers' shape d 1,024 × 65,536 ids: {paper['head_share']:.0%}); "
              f"grown/monolithic active parameters {shape['active_ratio']:.2f} and training FLOPs "
              f"{shape['flop_ratio']:.2f} (the papers' shape: {paper['active_ratio']:.2f} and "
              f"{paper['flop_ratio']:.2f})."]
    L += [f"- **Schedule:** AdamW, peak lr {s['lr']}, one warm-up of {s['warmup']} steps and one cosine decay to "
          f"10 % over each whole run (`train.schedule: global`), the same in every run of a part, so a grown "
          f"run and its monolithic twin get the same LR at every step and read the same batches in the same order. "
          f"Seeds 0..{s['seeds'] - 1} in every part; differences are paired by seed.",
          f"- **Validation:** the mean cross-entropy over {s['val_batches']} fixed validation batches "
          f"({s['val_batches'] * s['batch'] * s['seq']:,} target tokens, whole held-out documents), the same for "
          "every run on the same data and for the count baselines beside them.",
          f"- **Budget:** {res['estimate']['runs']} training runs, {si(res['estimate']['tokens'])} tokens, "
          f"{si(res['estimate']['flops'])}FLOPs.", "",
          "## How the verdicts are reached", "", *rules_text(), "",
          "Every table has two count baselines on the same validation batches, fitted on the training batches "
          "its runs read (for each seed): a unigram table (Good-Turing mass for unseen ids) and a Witten-Bell "
          "interpolated bigram (mlx_grow/eval/baselines.py); both are parameter-free.", ""]

    # 1. substrates
    p1 = by(1)
    if p1:
        labels = list(dict.fromkeys(r["label"] for r in p1))
        L += ["## 1. Substrates", "",
              f"One {p1[0]['depth']}-block model per input substrate, same data, same batches, "
              f"{p1[0]['tokens']:,} tokens each, {len({r['seed'] for r in p1})} seeds (mean ± sd).", ""]
        rows = []
        for label in labels:
            rs = [r for r in p1 if r["label"] == label]
            shown = label
            if label == "glyph" and s["hidden"] < GLYPH_FULL:
                shown = f"glyph † (PCA truncated to {s['hidden']} of {GLYPH_FULL:,} components)"
            bpb, _ = _mean_sd([r.get("bits_per_byte") for r in rs])
            rows.append([shown, _loss(rs), f"{bpb:.4f}", si(rs[0]["active_params"]),
                         f"{np.mean([r['wall_s'] for r in rs]):.0f}"])
        rows += _base_rows(base, 1, 5)
        L += _table(["substrate", "val loss (nats/token)", "bits per byte", "trained params", "wall (s)"], rows)
        if "glyph" not in labels:
            L += ["", "The glyph substrate did not run: no font was found (apt-get install fonts-unifont, or "
                  "--font FILE), or --substrate left it out."]
        elif s["hidden"] < GLYPH_FULL:
            L += ["", f"† The glyph recipe's PCA keeps min(d_model, 1,024) components; at d_model {s['hidden']} it "
                  "keeps the first {0}, so this row is not the papers' full glyph table.".format(s["hidden"])]
        L += _level({lb: [r for r in p1 if r["label"] == lb] for lb in labels}, base, 1)
        plot_curves({lb: [r for r in p1 if r["label"] == lb] for lb in labels}, figs / "substrates.png",
                    "validation loss by input substrate", axes=("tokens",), lines=_base_lines(base, 1))
        L += ["", f"![substrates]({rel(figs / 'substrates.png')})", ""] + _verdict_lines(claims, 1)
    # 2. grown vs monolithic
    p2 = by(2)
    if p2:
        groups = {v: [r for r in p2 if r["label"] == v] for v in GROWN_VARIANTS}
        groups = {k: v for k, v in groups.items() if v}
        L += ["## 2. Grown vs monolithic", "",
              f"9 blocks: grown 3+3+3 (only the newest 3 blocks + head train; stage {s['stage_steps']} steps each), "
              "monolithic on the frozen 16-bit substrate, and monolithic with a trainable embedding table; the same "
              f"batches in the same order, {p2[0]['tokens']:,} tokens each; mean ± sd over seeds.", ""]
        rows = []
        for k, rs in groups.items():
            s1 = _mean_sd([r["stages"][0]["val_loss"] for r in rs])[0] if k == GROWN_VARIANTS[0] else None
            rows.append([k, _loss(rs), f"{s1:.4f}" if s1 is not None else "–",
                         f"{np.mean([r['tok_s'] for r in rs]):.0f}", si(rs[0]["active_params"]),
                         f"{np.mean([r['wall_s'] for r in rs]):.0f}", si(np.mean([r["flops"] or 0 for r in rs]))])
        rows += _base_rows(base, 2, 7)
        L += _table(["variant", "final val loss", "after stage 1", "tokens/s", "active params (max a stage)",
                     "wall (s)", "training FLOPs"], rows)
        L += _level(groups, base, 2)
        grows = groups.get(GROWN_VARIANTS[0], [{}])[0].get("curve", {}).get("grows", [])
        plot_curves(groups, figs / "grown_vs_monolithic.png",
                    "9 blocks: grown 3+3+3 vs monolithic (dashed: growth events)", grows=grows,
                    lines=_base_lines(base, 2))
        L += ["", f"![grown vs monolithic]({rel(figs / 'grown_vs_monolithic.png')})", ""] + _verdict_lines(claims, 2)
    # 3. one layer at a time
    p3 = by(3)
    if p3:
        n = max(r["depth"] for r in p3)
        L += ["## 3. One layer at a time", "",
              f"{n} blocks, one new block a stage ({s['layer_steps']} steps a stage; the new block and the head "
              f"train). Every variant reads the same {p3[0]['tokens']:,} tokens: LoRA rank {s['lora_rank']} on q/v of "
              f"the frozen blocks in every stage from depth 2; interleaved LoRA-only phases of {s['phase_steps']} "
              "steps after stages 1.."
              f"{n - 1} (adapters on every block, merged at the phase end), taken from the stage before each; the v1 "
              "variant freezes the head after stage 1; the control keeps training the one-block model of stage 1 "
              "(block + head) for all the steps, without adding a layer.", ""]
        rows = []
        for v in LAYER_VARIANTS:
            rs = [r for r in p3 if r["label"] == v]
            if not rs:
                continue
            per = [[x["val_loss"] for x in r["stages"] if x.get("kind", "grow") == "grow"] for r in rs]
            k = min(map(len, per))
            steps = " → ".join(f"{np.mean([p[i] for p in per]):.3f}" for i in range(k))
            if v == LAYER_VARIANTS[4]:  # the control's curve at the stage boundaries of the grown runs
                bounds = [x["tokens"] for x in next(r for r in p3 if r["label"] == LAYER_VARIANTS[0])["stages"]]
                pts = []
                for b in bounds:
                    vals = [r["curve"]["val_loss"][r["curve"]["tokens"].index(b)] for r in rs
                            if b in r["curve"]["tokens"]]
                    pts.append(f"{np.mean(vals):.3f}" if len(vals) == len(rs) else "–")
                steps = " → ".join(pts) + " (1 block, at the same tokens)"
            rows.append([v, _loss(rs), steps, f"{rs[0]['tokens']:,}", si(rs[0]["active_params"])])
        rows += _base_rows(base, 3, 5)
        L += _table(["variant", "final val loss", "val loss after each stage (mean)", "tokens",
                     "active params (max)"], rows)
        L += _level({v: [r for r in p3 if r["label"] == v] for v in LAYER_VARIANTS}, base, 3)
        plot_curves({v: [r for r in p3 if r["label"] == v] for v in LAYER_VARIANTS if any(r["label"] == v for r in p3)},
                    figs / "one_layer.png", "one block a stage", grows=p3[0]["curve"]["grows"],
                    lines=_base_lines(base, 3))
        L += ["", f"![one layer at a time]({rel(figs / 'one_layer.png')})", ""] + _verdict_lines(claims, 3)
    # 4. composition
    comp = res.get("composition") or []
    p4 = by(4)
    if p4:
        srcs = sorted({r["label"].split(": ", 1)[1] for r in p4 if r["label"] != UNION},
                      key=lambda x: [r["label"] for r in p4].index(next(r["label"] for r in p4 if r["label"].endswith(x))))
        e = next(r for r in p4 if r["label"] != UNION)
        L += ["## 4. Composition", "",
              f"Two experts ({e['depth']} blocks each, {e['tokens']:,} tokens each) on {srcs[0]} and {srcs[1]}; a "
              f"control of the same shape trained on both (equal weights) with their total tokens; validation "
              "loss on each domain and their mean (the union). The combiners need no training; the tuned rows "
              f"train the merge (every expert's blocks, norms and heads; substrate frozen) or one expert alone "
              f"with the same recipe for {s['tune_steps']} steps on the same union batches.", ""]
        if comp:
            names = list(comp[0]["rows"])
            mean_rows = {k: {c: float(np.mean([x["rows"][k][c] for x in comp])) for c in [*srcs, "union"]}
                         for k in names}
            rows = [[k] + [f"{mean_rows[k][c]:.4f}" for c in [*srcs, "union"]] for k in names]
            seeds4 = (base.get("4") or {}).values()
            for kind in ("unigram", "bigram"):
                vals = [float(np.mean([b[c][kind] for b in seeds4])) for c in srcs]
                rows.append([f"*{kind} table of each domain*"] + [f"{v:.4f}" for v in vals] + [f"{np.mean(vals):.4f}"])
            L += _table(["model (mean over seeds)", *srcs, "union"], rows)
            plot_bars(mean_rows, [*srcs, "union"], figs / "composition.png", "experts, their merges and the controls",
                      "validation loss (nats/token)")
            L += ["", f"![composition]({rel(figs / 'composition.png')})", ""]
        else:
            b4 = base.get("4") or {}

            def own(r, kind):
                b = b4.get(str(r["seed"]), {}).get(r["label"].split(": ", 1)[-1])
                return f"{b[kind]:.4f}" if b else "–"
            rows = [[r["label"], r["seed"], f"{r['val_loss']:.4f}", own(r, "unigram"), own(r, "bigram")] for r in p4]
            L += _table(["run", "seed", "val loss on its own data", "its domain's unigram table", "bigram table"],
                        rows)
            L += ["", f"Not merged: {res.get('composition_skipped') or 'part 4 did not finish'}.", ""]
        L += _verdict_lines(claims, 4)
    # 5. depth
    depth = res.get("depth") or {}
    if 5 in parts:
        L += ["## 5. Benchmarks over depth", ""]
        if depth.get("not_testable"):
            L += [f"Not testable at this scale: {depth['not_testable']}.", ""]
        elif any((depth.get(p) or {}).get("by_depth") for p in ("loglik", "paper")):
            for p in ("loglik", "paper"):
                rec = depth.get(p) or {}
                if not rec.get("by_depth"):
                    continue
                ds = sorted(int(d) for d in rec["by_depth"])
                tasks = list(rec["by_depth"][str(ds[0])])
                rows = [[str(d)] + [f"{100 * rec['by_depth'][str(d)][t]['acc']:.1f}" for t in tasks] for d in ds]
                rows.append(["chance"] + [f"{100 * rec['chance'][t]:.1f}" if rec["chance"].get(t) else "–"
                                          for t in tasks])
                L += [f"{'Log-likelihood' if p == 'loglik' else 'The papers generative'} protocol, every stage of "
                      "the seed-0 grown run:", ""] + _table(["depth"] + tasks, rows) + [""]
            plot_depth(depth, figs / "depth.png")
            L += [f"![benchmarks vs depth]({rel(figs / 'depth.png')})", ""]
        else:
            L += [f"Not run: {depth.get('skipped') or 'no benchmark data'}", ""]
        L += _verdict_lines(claims, 5)
    # claims
    L += ["## The papers' claims and the verdicts", ""]
    L += _table(["part", "the papers report", f"this run (`--scale {s['name']}`)", "verdict"],
                [[c["part"], c["claim"], c["ours"], f"**{c['verdict'].outcome}**"] for c in claims])
    L += ["", TOKENIZER_NOTE, "",
          "Choices where the papers are silent: the float substrate is a random "
          f"{s['hidden']}-bit code → PCA → L2 at d_model width; the 64-bit code is collision-free random (seed 0); "
          "the glyph substrate follows the papers' published builder (mlx_grow/substrate/glyph.py); the shared "
          "global LR schedule, the budgets, the seeds and the count baselines are ours.", ""]
    return "\n".join(L)
