"""mlx-lm interop, both ways, on a grown model and its Starcoder2 export: mlx_lm's
generate / stream_generate / batch_generate take `mlx_grow.load`'s pair, mlx-grow's
take `mlx_lm.load`'s, and greedy tokens are equal every way."""

import shutil

import mlx.core as mx
import pytest
from helpers import grown_and_exported

import mlx_grow
from mlx_grow.generate import encode_prompt

mlx_lm = pytest.importorskip("mlx_lm")

PROMPT = "In the beginning God created"
PROMPTS = [PROMPT, "And the earth was without form", "Let"]
N = 10


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    run, hf = grown_and_exported(tmp_path_factory.mktemp("interop"))
    return run / "final", hf


def greedy(lp):
    return mx.argmax(lp, axis=-1)


def test_tokenizer_has_mlx_lm_names(grown):
    _, tok = mlx_grow.load(grown[0])
    assert tok.eos_token_id == tok.eos_id is not None and tok.eos_token == "</s>"
    assert tok.bos_token_id == tok.bos_id and tok.bos_token == "<s>"
    assert tok.pad_token_id == tok.pad_id and tok.unk_token_id == tok.unk_id
    assert tok.eos_token_ids == {tok.eos_id}
    assert tok.get_vocab()["</s>"] == tok.eos_id
    assert tok.convert_ids_to_tokens([tok.eos_id, ord("a")]) == ["</s>", "a"]
    assert tok.convert_tokens_to_ids("</s>") == tok.eos_id
    bare = tok.encode(PROMPT)
    assert tok.encode(PROMPT, add_special_tokens=False) == bare
    # the grown model's documents follow the separator: transformers' default encoding puts it first
    assert tok.encode(PROMPT, add_special_tokens=True) == [tok.eos_id] + bare == encode_prompt(tok, PROMPT)
    assert tok.decode(bare + [tok.eos_id], skip_special_tokens=True) == PROMPT
    assert tok.decode(bare + [tok.eos_id]) == PROMPT + "</s>"


def test_load_takes_our_export(grown):
    final, hf = grown
    model, tok = mlx_grow.load(final)
    again, tok2 = mlx_grow.load(hf)  # imported in memory
    assert type(again) is type(model) and len(again.layers) == len(model.layers) == 2
    ids = mx.array([encode_prompt(tok, PROMPT)])
    a, b = model(ids), again(ids)
    assert mx.abs(a).max().item() > 0.1 and mx.array_equal(a, b).item()  # a float32 export round-trips exactly
    assert tok2.fingerprint == tok.fingerprint and tok2.eos_token_id == tok.eos_token_id
    assert not any(p.name.endswith("-mlx") for p in hf.parent.iterdir())  # nothing written


def test_load_refuses_a_foreign_hugging_face_folder(grown, tmp_path):
    foreign = tmp_path / "foreign"
    shutil.copytree(grown[1], foreign)
    (foreign / "mlx_grow_export.json").unlink()
    with pytest.raises(ValueError, match=r"is a Hugging Face \(transformers\) model.*convert import .*foreign"):
        mlx_grow.load(foreign)


def test_greedy_tokens_equal_both_ways(grown):
    final, hf = grown
    ours, tok = mlx_grow.load(final)
    lm, lm_tok = mlx_lm.load(str(hf))
    assert encode_prompt(tok, PROMPT) == encode_prompt(lm_tok, PROMPT) == lm_tok.encode(PROMPT)

    def grow_tokens(m, t):
        return [r.token for r in mlx_grow.stream_generate(m, t, PROMPT, max_tokens=N)]

    def lm_tokens(m, t):
        return [r.token for r in mlx_lm.stream_generate(m, t, PROMPT, max_tokens=N, sampler=greedy)]

    runs = {"grow on ours": grow_tokens(ours, tok), "mlx-lm on ours": lm_tokens(ours, tok),
            "grow on mlx-lm's": grow_tokens(lm, lm_tok), "mlx-lm on mlx-lm's": lm_tokens(lm, lm_tok),
            "grow on load(export)": grow_tokens(*mlx_grow.load(hf))}
    first = runs["grow on ours"]
    assert len(first) == N and len(set(first)) > 1
    assert all(r == first for r in runs.values()), runs
    texts = [mlx_grow.generate(ours, tok, PROMPT, max_tokens=N), mlx_lm.generate(ours, tok, PROMPT, max_tokens=N),
             mlx_grow.generate(lm, lm_tok, PROMPT, max_tokens=N), mlx_lm.generate(lm, lm_tok, PROMPT, max_tokens=N)]
    assert texts[0] and all(t == texts[0] for t in texts), texts
    assert texts[0] == tok.decode(first)
    streamed = "".join(r.text for r in mlx_grow.stream_generate(lm, lm_tok, PROMPT, max_tokens=N))
    assert streamed == texts[0]


def test_batch_generate_both_ways(grown):
    final, hf = grown
    ours, tok = mlx_grow.load(final)
    lm, lm_tok = mlx_lm.load(str(hf))
    single = [mlx_grow.generate(ours, tok, p, max_tokens=8) for p in PROMPTS]
    assert len(set(single)) == len(PROMPTS)
    mine = mlx_grow.batch_generate(ours, tok, PROMPTS, max_tokens=8)
    assert mine.texts == single and mine.stats.prompt_tokens == sum(len(encode_prompt(tok, p)) for p in PROMPTS)
    assert mlx_grow.batch_generate(lm, lm_tok, PROMPTS, max_tokens=8).texts == single  # left padding, mlx-lm cache
    ids = [tok.encode(p, add_special_tokens=True) for p in PROMPTS]
    assert mlx_lm.batch_generate(ours, tok, ids, max_tokens=8).texts == single
    assert mlx_lm.batch_generate(lm, lm_tok, [lm_tok.encode(p) for p in PROMPTS], max_tokens=8).texts == single
    assert mlx_grow.batch_generate(ours, tok, ids, max_tokens=8).texts == single  # ids are used as given


def test_merged_model_in_mlx_lm(grown):
    from mlx_grow.merge.combine import MergedModel, make_combiner

    final, _ = grown
    a, tok = mlx_grow.load(final.parent / "stage-01")
    b, _ = mlx_grow.load(final)
    ids = [tok.encode(p, add_special_tokens=True) for p in PROMPTS]
    for combiner in (make_combiner(2, "mean-logits"), make_combiner(2, "mixture")):
        merged = MergedModel([a, b], combiner)
        mine = [r.token for r in mlx_grow.stream_generate(merged, tok, PROMPT, max_tokens=N)]
        theirs = [r.token for r in mlx_lm.stream_generate(merged, tok, PROMPT, max_tokens=N, sampler=greedy)]
        assert mine == theirs and len(set(mine)) > 1
        assert (mlx_lm.batch_generate(merged, tok, ids, max_tokens=8).texts
                == mlx_grow.batch_generate(merged, tok, PROMPTS, max_tokens=8).texts)
    routed = MergedModel([a, b], make_combiner(2, router=True))
    mine = [r.token for r in mlx_grow.stream_generate(routed, tok, PROMPT, max_tokens=N)]
    assert mine == [r.token for r in mlx_lm.stream_generate(routed, tok, PROMPT, max_tokens=N, sampler=greedy)]
    with pytest.raises(ValueError, match="use mlx_grow.batch_generate"):
        mlx_lm.batch_generate(routed, tok, ids, max_tokens=4)
