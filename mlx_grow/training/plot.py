"""Loss plots of a run: train/validation loss over tokens and over FLOPs,
with the growth events marked."""

from pathlib import Path


def plot_run(run_dir, out=None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mlx_grow.io import atomic_path
    from mlx_grow.training.runs import Run

    run_dir = Path(run_dir)
    f = run_dir / "metrics.jsonl"
    if not f.exists():
        raise FileNotFoundError(f"{f} does not exist: is {run_dir} a grow run directory?")
    run = Run(run_dir)
    rows = run.metrics()
    train = [r for r in rows if r.get("event") == "train"]
    evals = [r for r in rows if r.get("event") == "eval"]
    grows = run.growth_events(rows)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, label in ((axes[0], "tokens", "tokens"), (axes[1], "flops", "training FLOPs")):
        if train:
            ax.plot([r[key] for r in train], [r["loss"] for r in train], lw=1, label="train")
        if evals:
            ax.plot([r[key] for r in evals], [r["val_loss"] for r in evals], "o-", ms=3, label="validation")
        for r in grows:
            x = r[key]
            if x is not None:
                ax.axvline(x, color="grey", ls="--", lw=0.8)
                ax.text(x, ax.get_ylim()[1], f" depth {r['depth']}", va="top", fontsize=8, color="grey")
        ax.set_xlabel(label)
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a run with no logged rows yet has none
            ax.legend()
    fig.suptitle(f"{run_dir.name}: loss (dashed: growth events)")
    fig.tight_layout()
    out = Path(out) if out else run_dir / "loss.png"
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=110, format=out.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return out
