"""The README's Python example, run as written in a fresh interpreter (a
subprocess), on a small model directory made here instead of a trained run."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs_in_a_fresh_interpreter(tmp_path):
    from mlx_grow.checkpoint import save_model
    from mlx_grow.model import Model, ModelArgs
    from mlx_grow.training.init import init_weights
    from mlx_grow.tokenizer import load_tokenizer

    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    path = re.search(r'load\("([^"]+)"\)', code).group(1)
    tok = load_tokenizer("bvv241-2-3")
    model = Model(ModelArgs.from_dict(dict(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                           num_attention_heads=2, max_position_embeddings=64,
                                           substrate={"kind": "binary", "bits": 16})))
    init_weights(model, 0)
    save_model(model, tmp_path / path, tok)
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip(), "the example prints the generated text"
