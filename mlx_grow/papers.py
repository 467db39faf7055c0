"""The papers' published figures, shown next to ours: parameter counts per
packaged config (`mlx-grow info`) and benchmark scores per model and per depth
(`mlx-grow eval --protocol paper`'s reference rows and lines)."""

# Parameter counts as the papers print them, by packaged config name.
PARAMS = {
    "paper-9l-glyph": {"total": "247.6M", "monolithic trainable": "180.5M", "stage active": "105.0M"},
    "paper-9l-16bit": {"stage active": "105.0M"},
    "paper-16l-16bit": {"total": "269.7M", "tokens": "68.9B"},
    "es-16l-glyph": {"total": "~335M"},
    "es-16l-16bit": {"total": "~269M"},
    "es-16l-64bit": {"total": "~272M"},
    "es-16l-256bit": {"total": "~285M"},
    "es-16l-1024bit": {"total": "~335M"},
    "es-16l-unfrozen": {"total": "~335M"},
    "es-16l-16float": {"total": "~269M"},
    "es-16l-64float": {"total": "~272M"},
    "es-16l-256float": {"total": "~285M"},
    "es-16l-float": {"total": "~335M"},
    "d4096-1layer": {"total (1 layer)": "1.3B", "per further layer": "+0.2B"},
    "d4096-1layer-v1": {"total (1 layer)": "1.3B", "per further layer": "+0.2B"},
}


# Published figures (%, BLEU for translation): the papers' generative protocol, mean of 10 runs.
REF_TASKS = ("mmlu", "arc_easy", "arc_challenge", "commonsense_qa", "squad", "en-ru", "ru-en", "en-zh", "zh-en")


# The *_moe checkpoints are mean-logit merges trained further after merging (v1: validation loss
# 2.7 -> 2.044), hence "(merge + tune)"; `merge --tune --tune-part all` runs that recipe.
PAPER_MODELS = {  # name: (params, values in REF_TASKS order; None: not published)
    "best_bvv_ru (frozen)": ("0.5B", 22.29, 23.04, 24.62, 20.13, 14.84, 6.44, 8.80, 0.95, 0.74),
    "best_bvv_unfrozen_ru": ("0.5B", 11.37, 20.56, 24.18, 18.79, 13.55, 8.40, 7.96, 0.77, 1.09),
    "best_bvv_zh (frozen)": ("0.5B", 19.42, 19.51, 21.94, 19.62, 15.12, 3.15, 3.04, 1.41, 7.78),
    "best_bvv_unfrozen_zh": ("0.5B", 14.03, 19.74, 25.02, 18.98, 13.52, 4.29, 2.90, 1.65, 5.93),
    "best_bvv_moe (merge + tune)": ("0.9B", 23.44, 23.74, 25.28, 19.69, 19.73, 6.52, 6.22, 2.93, 4.95),
    "max_bvv_ru": ("0.4B", 23.58, 21.65, 24.78, 19.65, 18.95, 8.65, 8.77, 0.52, 0.81),
    "max_bvv_zh": ("0.4B", 24.72, 21.93, 26.49, 20.21, 17.66, 1.28, 3.47, 2.36, 7.44),
    "max_bvv_moe (merge + tune)": ("0.8B", 22.37, 21.39, 25.05, 20.12, 18.40, 5.02, 5.04, 1.34, 3.35),
    "nemo_bvv_ru": ("0.4B", 8.80, 19.53, 21.34, 19.51, 6.80, 4.68, 5.71, 0.67, 0.89),
    "nemo_bvv_zh": ("0.4B", 6.62, 23.53, 24.48, 19.27, 6.05, 2.05, 2.31, 0.87, 4.05),
    "nemo_bvv_moe (merge + tune)": ("0.8B", 8.99, 22.44, 23.75, 19.90, 7.70, 4.13, 3.37, 0.88, 2.26),
    "pro_bvv_en": ("0.2B", 23.68, 23.51, 23.98, 19.54, 9.61, 0.37, 0.45, 0.28, 0.06),
    "pro_bvv_ru": ("0.2B", 22.63, 23.63, 22.91, 20.26, 10.94, 6.14, 8.07, 0.68, 1.07),
    "pro_bvv_zh": ("0.2B", 17.96, 21.74, 22.24, 18.51, 5.59, 2.82, 2.26, 1.32, 4.65),
    "pro_bvv_unfrozen": ("0.2B", 14.00, 24.09, 22.24, 19.76, 13.28, 0.68, 0.81, 0.16, 0.42),
    # v3's headline: 16 layers on the 16-bit id substrate, grown, 68.9B tokens, last LoRA stage merged
    "16 layers 16-bit, grown (v3, 68.9B tokens)": ("269.7M", 28.92, None, None, None, None, None, None, None, None),
}


PAPER_DEPTH = {  # abs-bvv-N, grown one layer at a time, d_model 4096: (params, mmlu, arc_e, arc_c, csqa, squad)
    1: ("1.3B", 18.08, 19.21, 19.83, 19.36, 1.21), 2: ("1.5B", 19.43, 21.04, 21.71, 19.66, 0.82),
    3: ("1.7B", 20.63, 21.81, 24.78, 19.50, 3.75), 4: ("1.9B", 21.03, 21.14, 24.78, 19.99, 3.16),
    5: ("2.1B", 20.33, 20.42, 23.24, 19.80, 2.30), 6: ("2.3B", 21.63, 23.42, 25.62, 19.51, 5.55),
}


MERGE_REFS = ("best_bvv_ru (frozen)", "best_bvv_zh (frozen)", "best_bvv_moe (merge + tune)")


def ref_key(label: str):
    """The reference column of a result label: a built-in task name, or a translation direction."""
    if label in REF_TASKS[:5]:
        return label
    d = label.rsplit(":", 1)[-1]
    return d if ":" in label and d in REF_TASKS[5:] else None


def reference(key, rows=PAPER_MODELS) -> dict:
    return {name: v for name, vals in rows.items() if (v := vals[1 + REF_TASKS.index(key)]) is not None}


def depth_reference(key) -> dict:
    i = REF_TASKS.index(key) if key in REF_TASKS[:5] else None
    return {} if i is None else {d: v[1 + i] for d, v in PAPER_DEPTH.items()}
