"""The lm-evaluation-harness adapter: model name `mlx-grow`, registered on import when lm-eval is installed."""

from pathlib import Path

from mlx_grow.base import UserError
from mlx_grow.eval.scorer import DEFAULT_BATCH_TOKENS, Scorer


def _adapter_class():
    from lm_eval.api.model import LM

    class MLXGrowLM(LM):
        """lm-eval model `mlx-grow`: model_args="model=PATH[,batch_tokens=N][,max_gen_toks=N]"
        (a single or merged model directory); or MLXGrowLM(model=model, tokenizer=tokenizer)."""

        def __init__(self, model=None, tokenizer=None, batch_tokens=DEFAULT_BATCH_TOKENS, max_gen_toks=256,
                     **unused):  # lm-eval also passes batch_size, max_batch_size, device
            super().__init__()
            name = "model"
            if isinstance(model, (str, Path)):
                from mlx_grow.api import load

                name = str(model)
                model, tok = load(model)
                tokenizer = tokenizer or tok
            if model is None or tokenizer is None:
                raise UserError("mlx-grow needs a model: model_args='model=PATH'")
            self.scorer = Scorer(model, tokenizer, int(batch_tokens), name=name)
            self.max_gen_toks = int(max_gen_toks)

        @property
        def tokenizer_name(self) -> str:
            return str(getattr(self.scorer.tok, "name", None) or "mlx-grow").replace("/", "__")

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            pairs = [self.scorer.encode_pair(*r.args, where=f"request {i}") for i, r in enumerate(requests)]
            return self.scorer.loglikelihood(pairs)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            nll = self.scorer.rolling_nll([self.scorer.encode(r.args[0]) for r in requests])
            return [-x for x in nll]

        def generate_until(self, requests, disable_tqdm: bool = False):
            out = [None] * len(requests)
            groups = {}
            for i, r in enumerate(requests):
                kw = dict(r.args[1]) if len(r.args) > 1 and r.args[1] else {}
                until = kw.get("until") or []
                until = [until] if isinstance(until, str) else list(until)
                temp = float(kw.get("temperature", 0.0)) if kw.get("do_sample", False) else 0.0
                key = (tuple(until), int(kw.get("max_gen_toks", self.max_gen_toks)), temp)
                groups.setdefault(key, []).append(i)
            eos = self.scorer.tok.eos_id
            for (until, n, temp), idx in groups.items():
                sc = self.scorer  # prompts start as generation starts them (the model's tokenizer)
                prompts = [sc.prompt_before + sc.encode(requests[i].args[0]) + sc.prompt_after for i in idx]
                new = self.scorer.sample(prompts, [n] * len(idx), runs=int(temp > 0), temp=temp,
                                         greedy=temp <= 0, until=until)
                for i, rows in zip(idx, new):
                    ids = rows[0][:rows[0].index(eos)] if eos in rows[0] else rows[0]
                    text = self.scorer.tok.decode(ids)
                    cuts = [text.find(u) for u in until if u and u in text]
                    out[i] = text[:min(cuts)] if cuts else text
            return out

    MLXGrowLM.__qualname__ = "MLXGrowLM"
    return MLXGrowLM


def __getattr__(name):
    if name == "MLXGrowLM":  # built on first use so that importing this module stays cheap
        globals()[name] = _adapter_class()
        return globals()[name]
    raise AttributeError(name)


def _register_with_lm_eval():
    try:
        import lm_eval.models  # noqa: F401  (lm-eval registers its own models first)
        from lm_eval.api.registry import model_registry
    except ImportError:
        return False
    if "mlx-grow" not in model_registry:
        model_registry.register("mlx-grow", target="mlx_grow.evaluate:MLXGrowLM")
    return True


LM_EVAL = _register_with_lm_eval()
