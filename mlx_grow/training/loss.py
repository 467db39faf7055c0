"""Token cross-entropy through the LM head, in chunks of tokens.

The unchunked loss materialises the [B*T, V] float32 logits, their softmax and
their gradient at once: at vocab 65,536 and 32 x 1024 tokens that is 8 GiB per
tensor. `head_cross_entropy` fuses the head matmul, the log-sum-exp and the
loss gradient over chunks of `chunk` tokens, so only O(chunk x V) of them is
alive at any time.

The gradient of a chunk's loss with respect to its logits, (softmax - onehot)/N,
needs nothing from later in the graph, so each chunk's contribution to dL/dh and
dL/dW is computed in the forward pass, right after its exp, and the custom VJP
only scales them by the incoming cotangent. Nothing is recomputed (on a CPU the
exp over the vocabulary is the dearest part of a small model's step, so this
matters more than the extra [V, d] buffer). The algebra keeps the [chunk, V]
passes to a minimum: with e = exp(z - max) and s = sum(e),

    dL/dh = ((e @ W) / s - W[target]) / N
    dL/dW = (e^T @ (h / s) - scatter_add(h at target)) / N

so the softmax e / s and the one-hot are never formed. `mx.depends` orders the
chunks (each starts after the previous one's results); MLX's scheduler still
keeps a few chunks in flight, so the loss's memory stops growing at about four
chunks' worth, whatever the number of tokens (tests/test_loss.py,
training/memory.py).
"""

import mlx.core as mx

# tokens per chunk: the [chunk, V] float32 tensors stay near this many bytes each
CHUNK_BYTES = 128 << 20


def default_chunk(vocab: int) -> int:
    return max(16, CHUNK_BYTES // (4 * vocab))


def _chunks(n: int, chunk: int):
    return [(i, min(n, i + chunk)) for i in range(0, n, chunk)]


def _forward(h, w, targets, chunk: int, head_grad: bool, h_grad: bool):
    n = h.shape[0]
    dt = w.dtype
    inv = 1.0 / n
    nll = mx.array(0.0, mx.float32)
    # the one-hot part of dL/dW first, so the chunks accumulate into it in place
    dw = mx.zeros(w.shape, mx.float32).at[targets].add(h.astype(mx.float32) * -inv) if head_grad else None
    dhs = []
    for a, b in _chunks(n, chunk):
        hc, tc = h[a:b], targets[a:b]
        if a:  # start this chunk after the previous one's results
            hc = mx.depends(hc, [x for x in (nll, dw, dhs[-1] if dhs else None) if x is not None])
        z = (hc @ w.T).astype(mx.float32)
        m = z.max(-1, keepdims=True)
        e = mx.exp(z - m)
        s = e.sum(-1, keepdims=True)
        nll = nll + (mx.log(s) + m).sum() - mx.take_along_axis(z, tc[:, None], -1).sum()
        r = inv / s  # [chunk, 1]: the softmax's 1/s and the mean's 1/N
        ed = e.astype(dt)
        if h_grad:
            dhs.append((ed @ w).astype(mx.float32) * r)
        if head_grad:
            hr = hc * r.astype(dt)
            dw = mx.addmm(dw, ed.T, hr) if dt == mx.float32 else dw + (ed.T @ hr).astype(mx.float32)
    dh = None
    if h_grad:
        dh = (mx.concatenate(dhs) if len(dhs) > 1 else dhs[0]) - w[targets].astype(mx.float32) * inv
    return nll * inv, dh, dw


def _make(chunk: int, head_grad: bool, h_grad: bool):
    @mx.custom_function
    def f(h, w, targets):
        loss, dh, dw = _forward(h, w, targets, chunk, head_grad, h_grad)
        return tuple(x for x in (loss, dh, dw) if x is not None)

    @f.vjp
    def f_vjp(primals, cotangents, outputs):
        h, w, targets = primals
        g = cotangents[0]
        rest = list(outputs[1:])
        dh = (g * rest.pop(0)).astype(h.dtype) if h_grad else mx.zeros_like(h)
        dw = (g * rest.pop(0)).astype(w.dtype) if head_grad else mx.zeros_like(w)
        return dh, dw, mx.zeros_like(targets)

    return f


_FUNCS: dict = {}


def head_cross_entropy(h, weight, targets, chunk: int | None = None, head_grad: bool = True,
                       h_grad: bool = True):
    """Mean token cross-entropy of `h @ weight.T` (logits in float32) against
    `targets`, in chunks of `chunk` tokens. h: [..., d], weight: [V, d],
    targets: [...]. `head_grad` / `h_grad` False skip the gradient of the head
    weight / of h (a frozen head; nothing trainable below the head)."""
    d = h.shape[-1]
    h2, t = h.reshape(-1, d), targets.reshape(-1)
    chunk = int(chunk or default_chunk(weight.shape[0]))
    key = (chunk, bool(head_grad), bool(h_grad))
    if key not in _FUNCS:
        _FUNCS[key] = _make(*key)
    return _FUNCS[key](h2, weight, t)[0]


def head_nll_sum(h, weight, targets, chunk: int | None = None) -> float:
    """Summed token cross-entropy, forward only, evaluated chunk by chunk (for
    validation: never holds more than [chunk, V] logits)."""
    d = h.shape[-1]
    h2, t = h.reshape(-1, d), targets.reshape(-1)
    chunk = int(chunk or default_chunk(weight.shape[0]))
    total = 0.0
    for a, b in _chunks(h2.shape[0], chunk):
        z = (h2[a:b] @ weight.T).astype(mx.float32)
        nll = mx.logsumexp(z, -1).sum() - mx.take_along_axis(z, t[a:b, None], -1).sum()
        total += float(nll)
    return total
