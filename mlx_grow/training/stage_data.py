"""The batches a stage reads: which data mixture's stream each local step
walks, and from which batch (`data.stage_data` continue / restart)."""

import json

import numpy as np

from mlx_grow.config import RunConfig
from mlx_grow.data.stream import open_stream, split_note
from mlx_grow.training.schedule import Stage


class StageData:
    """The batches a stage reads. Local step `s` falls in a segment (a monolithic
    stage walks the grown run's stages in order; any other stage is one segment),
    and each segment reads its mixture's stream (`data.mixture_key`).

    `data.stage_data: continue` (default): a mixture's stream goes on where it was
    last read, so the run reads batch `reads[key]`, the count of batches that
    mixture has given so far (with one mixture: the global step), and grown and
    monolithic runs read the same batches. `restart`: every stage (segment) reads
    its stream from batch 0 (every stage then re-reads the first stage's batches)."""

    def __init__(self, cfg: RunConfig, tok, st: Stage, seed: int, progress: bool):
        t = cfg.train
        segments = st.segments or [st.steps]
        first = 0 if st.segments else st.rule
        self.keys = [cfg.data.mixture_key(first + j) for j in range(len(segments))]
        streams = {}
        for j, key in enumerate(self.keys):
            if key not in streams:
                streams[key] = open_stream(cfg.data, tok, t.seq_len, t.batch_size, seed, stage=first + j,
                                           progress=progress)
        self.streams, self.first = streams, streams[self.keys[0]]
        self.bounds = np.cumsum([0] + segments)
        self.restart = cfg.data.stage_data == "restart"

    def notes(self) -> list:
        """How the stage's mlx-lm data folders are split (see data.stream.split_note)."""
        metas = [s.meta for stream in self.streams.values() for s in stream.shards]
        return [n for n in map(split_note, metas) if n]

    def key(self, step: int) -> str:
        j = int(np.searchsorted(self.bounds, step, side="right") - 1)
        return self.keys[min(j, len(self.keys) - 1)]

    def index(self, step: int, reads: dict) -> int:
        """The stream batch that local step `step` reads."""
        if self.restart:
            j = min(int(np.searchsorted(self.bounds, step, side="right") - 1), len(self.keys) - 1)
            return int(step - self.bounds[j])
        return reads.get(self.key(step), 0)

    def batch(self, step: int, reads: dict, rank: int, world: int):
        return self.streams[self.key(step)].batch(self.index(step, reads), rank, world)


def rebuild_reads(cfg: RunConfig, stages: list, state: dict) -> dict:
    """Batches read per mixture, for a checkpoint written before the count was
    stored: every finished stage read its steps, the current one `step`."""
    reads = {}
    done = [s.get("steps", 0) for s in state.get("summary", [])]
    for k, st in enumerate(stages[: state["stage"] + 1]):
        n = done[k] if k < state["stage"] and k < len(done) else state["step"] if k == state["stage"] else st.steps
        segments = st.segments or [st.steps]
        first = 0 if st.segments else st.rule
        left = n
        for j, seg in enumerate(segments):
            key = cfg.data.mixture_key(first + j)
            reads[key] = reads.get(key, 0) + min(seg, left)
            left -= min(seg, left)
    return reads


def stream_record(cfg: RunConfig) -> dict:
    """What, besides its mixture (data.mixture_key), makes a mixture's batch N the
    same rows in two runs: a saved model's lineage keeps it next to its `reads`."""
    d, t = cfg.data, cfg.train
    return {"seed": t.seed, "seq_len": t.seq_len, "batch_size": t.batch_size, "separator": d.separator,
            "val_fraction": d.val_fraction, "instruction_files": list(d.instruction_files),
            "instruction_ratio": d.instruction_ratio, "skip_bad_files": d.skip_bad_files,
            "stage_data": d.stage_data}


def _mixture(key: str) -> str:
    return " + ".join(f"{src}" + (f" x{w:g}" if w != 1 else "") for src, w, _ in json.loads(key))


def continued_reads(cfg: RunConfig, stages: list, source: dict):
    """(reads, message) a `grow --from` run starts with: the batches the source
    model's run read per mixture (source `reads`, training/source.py), when this
    run's stream is that run's, so its first stage goes on at the batch after the
    source's last; else no reads (batch 0) and a warning that says why."""
    if cfg.data.stage_data == "restart":  # every stage reads from batch 0 anyway
        return {}, None
    name, reads, theirs = source.get("path"), source.get("reads"), source.get("stream")
    key = cfg.data.mixture_key(stages[0].rule)
    start = f"so this run reads {_mixture(key)} from batch 0, which may repeat what that model was trained on"
    if not isinstance(reads, dict) or not isinstance(theirs, dict):
        return {}, (f"warning: --from {name} records no data position (a model from elsewhere, or an older "
                    f"mlx-grow), {start}")
    ours = stream_record(cfg)
    diffs = [f"{k} {theirs.get(k)!r} (this run: {v!r})" for k, v in ours.items() if theirs.get(k) != v]
    if diffs:
        return {}, (f"warning: the run of --from {name} read its data with {'; '.join(diffs)}, so its batches "
                    f"are not this run's: {start}")
    if key not in reads:
        had = "; ".join(_mixture(k) for k in reads) or "nothing"
        return {}, f"warning: the run of --from {name} read another data mixture ({had}), {start}"
    return dict(reads), (f"--from {name}: its run read {reads[key]:,} batches of {_mixture(key)}; this run goes "
                         f"on from batch {reads[key]:,}")
