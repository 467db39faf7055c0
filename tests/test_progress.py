"""Progress lines when stdout is not a terminal: the first within `every`
seconds even before any step, then at least every `every` seconds."""

import io
import time

from mlx_grow.io.progress import StepProgress


def test_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    bar = StepProgress(100, tokens_per_step=1000, every=0.2, stream=out)
    time.sleep(0.5)  # no step yet (compiling, preparing data): it still talks
    before = out.getvalue().splitlines()
    assert before and all("step 0/100" in x for x in before)
    bar.update(1, "stage 1/3 loss 9.000")  # the first step: a line at once
    bar.update(2, "stage 1/3 loss 8.500")
    bar.update(3, "stage 1/3 loss 8.000")
    lines = out.getvalue().splitlines()
    assert lines[len(before)].startswith("stage 1/3 loss 9.000 · step 1/100")
    time.sleep(0.5)
    bar.close()
    last = out.getvalue().splitlines()[-1]
    assert "loss 8.000 · step 3/100" in last and "tok/s" in last and "ETA" in last
    n = len(out.getvalue().splitlines())
    time.sleep(0.3)
    assert len(out.getvalue().splitlines()) == n  # closed: silent


def test_disabled_is_silent():
    out = io.StringIO()
    bar = StepProgress(10, enabled=False, every=0.05, stream=out)
    bar.update(1, "x")
    time.sleep(0.2)
    bar.close()
    assert out.getvalue() == ""
