"""Rows decoded together (models/decoding.py): each row gets exactly the tokens a plain
recomputation of its own window gives, whatever shares its batch, across window restarts."""

import torch

from aigc_cli.data.base import DataSpec
from aigc_cli.data.text import CharTokenizer, TextStream
from aigc_cli.models.base import Request
from aigc_cli.models.decoding import row_generators
from aigc_cli.models.transformer import Transformer, filter_logits

VOCAB = "abcdefgh \n"


def _model(block: int = 12) -> Transformer:
    torch.manual_seed(0)
    tok = CharTokenizer(VOCAB)
    spec = DataSpec(kind="text", shape=[block], vocab_size=tok.vocab_size, tokenizer=tok.to_dict())
    cfg = Transformer.Config(n_layer=2, n_head=2, n_embd=16)
    model = Transformer(cfg, spec).eval()
    with torch.no_grad():  # weights far larger than the init's: every token moves the logits
        for p in model.parameters():
            p.normal_(0.0, 0.4)
    return model


def _reference(model: Transformer, prompt: str, seed: int, n: int, options: dict) -> list[str]:
    """Each row alone, every token from a full forward pass over its window (no cache, no
    mask, no padding), the window restarting at its last 3/4 block when it is full."""
    tok, block = model.tokenizer, model.gpt.block_size
    out = []
    for g in row_generators(torch.Generator().manual_seed(seed), n, model.device):
        tokens = tok.encode(prompt)
        start = max(0, len(tokens) - block)
        for _ in range(options["max_new_tokens"]):
            if len(tokens) - start > block:
                start = len(tokens) - 3 * block // 4
            with torch.no_grad():
                logits = model.gpt(torch.tensor([tokens[start:]]))[0, -1]
            scaled = logits.float().unsqueeze(0) / torch.tensor(options["temperature"])
            probs = filter_logits(scaled, options["top_k"], options["top_p"]).softmax(-1)
            tokens.append(int(torch.multinomial(probs, 1, generator=g)))
        out.append(tok.decode(tokens[len(tok.encode(prompt)) :]))
    return out


# fmt: off
CASES = [  # prompt, seed, n, options: lengths from 1 to past the block, limits past it
    ("a", 0, 1, {"max_new_tokens": 30, "temperature": 1.0, "top_k": 0, "top_p": 1.0}),
    ("abc def gh", 1, 2, {"max_new_tokens": 7, "temperature": 0.7, "top_k": 3, "top_p": 1.0}),
    ("hgfedcbahgfedcb", 2, 1, {"max_new_tokens": 20, "temperature": 1.3, "top_k": 0, "top_p": 0.9}),
    ("ab\n", 3, 3, {"max_new_tokens": 1, "temperature": 1.0, "top_k": 0, "top_p": 1.0}),
    ("b", 4, 1, {"max_new_tokens": 0, "temperature": 1.0, "top_k": 0, "top_p": 1.0}),
]
# fmt: on


def test_rows_alone_and_batched_equal_a_plain_recomputation():
    model = _model()
    batch = [Request(n, torch.Generator().manual_seed(s), {"prompt": p, **o})
             for p, s, n, o in CASES]  # fmt: skip
    together = model.sample_batch(batch)
    for (prompt, seed, n, options), result in zip(CASES, together, strict=True):
        expected = _reference(model, prompt, seed, n, options)
        alone = model.sample(n, generator=torch.Generator().manual_seed(seed), prompt=prompt,
                             **options)  # fmt: skip
        assert alone.continuations == expected
        assert result.continuations == expected
        assert result.texts == [prompt + t for t in expected]
        assert result.new_tokens == [options["max_new_tokens"]] * n
    assert len({r.continuations[0] for r in together}) > 3  # the rows drew different text


def test_a_cancelled_request_stops_and_leaves_the_others_as_they_were():
    model = _model()
    options = {"max_new_tokens": 25, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
    seen: list[str] = []
    gone = Request(1, torch.Generator().manual_seed(9), {"prompt": "abc", **options},
                   cancelled=lambda: len(seen) >= 3,
                   on_text=lambda row, t: seen.append(t))  # fmt: skip
    stays = Request(2, torch.Generator().manual_seed(5), {"prompt": "h", **options})
    results = model.sample_batch([gone, stays])
    assert results[0] is None and len(seen) == 3  # stopped right after its third token
    assert results[1].continuations == _reference(model, "h", 5, 2, options)


def test_text_stream_waits_for_whole_utf8_characters():
    from aigc_cli.data.text import ByteTokenizer

    tok, out = ByteTokenizer(), []
    stream = TextStream(tok, out.append)
    for b in "a€b😀".encode():
        stream.push(b)
    stream.flush()
    assert out == ["a", "€", "b", "😀"]


def test_requests_that_join_mid_way_get_the_tokens_they_get_alone():
    """Continuous batching: requests handed over by `more` between tokens (of other prompt
    lengths, across window restarts) decode as they would alone, and each result goes out
    when its own rows end, before the batch does."""
    model = _model()
    options = {"temperature": 1.0, "top_k": 0, "top_p": 1.0}
    later = {4: ("hgfedcbahgfedcb", 11, 2, 10), 9: ("ab", 12, 1, 6), 10: ("c", 13, 1, 0)}
    results: dict[str, object] = {}
    order: list[str] = []
    calls = [0]

    def keep(prompt: str, result) -> None:
        results[prompt] = result
        order.append(prompt)

    def more(active: int) -> list[Request]:
        calls[0] += 1
        if calls[0] not in later:
            return []
        prompt, seed, n, limit = later[calls[0]]
        return [Request(n, torch.Generator().manual_seed(seed),
                        {"prompt": prompt, "max_new_tokens": limit, **options},
                        on_result=lambda result, p=prompt: keep(p, result))]  # fmt: skip

    first = Request(1, torch.Generator().manual_seed(0),
                    {"prompt": "a", "max_new_tokens": 30, **options},
                    on_result=lambda result: keep("a", result))  # fmt: skip
    model.sample_batch([first], more)
    assert order == ["c", "hgfedcbahgfedcb", "ab", "a"]  # each as its own rows end
    later[0] = ("a", 0, 1, 30)
    for prompt, seed, n, limit in later.values():
        expected = _reference(model, prompt, seed, n, {"max_new_tokens": limit, **options})
        assert results[prompt].continuations == expected, prompt
