import math

import pytest
import torch

from aigc_cli.data.base import DataSpec
from aigc_cli.data.text import (
    ByteTokenizer,
    CharTokenizer,
    PydocConfig,
    TextConfig,
    pydoc,
    text_file,
)
from aigc_cli.errors import ConfigError, DataError
from aigc_cli.models.transformer import Transformer, filter_logits
from aigc_cli.training.loop import train

from .helpers import read_scalars, run_cli


def _model(vocab="abcdefgh\n", block=16, dropout=0.0):
    tok = CharTokenizer(vocab)
    spec = DataSpec(kind="text", shape=[block], vocab_size=tok.vocab_size, tokenizer=tok.to_dict())
    cfg = Transformer.Config(n_layer=2, n_head=2, n_embd=16, dropout=dropout)
    return Transformer(cfg, spec).eval()


def test_kv_cache_logits_match_full_forward():
    torch.manual_seed(0)
    model = _model()
    idx = torch.randint(0, 9, (3, 16))
    full = model.gpt(idx)  # (B, T, V)
    cache = [{} for _ in model.gpt.blocks]
    steps = [model.gpt(idx[:, :5], cache)]  # prefill 5, then one token at a time
    steps += [model.gpt(idx[:, t : t + 1], cache) for t in range(5, 16)]
    cached = torch.cat(steps, dim=1)
    assert torch.allclose(full, cached, atol=1e-5)


def test_causal_mask():
    torch.manual_seed(0)
    model = _model()
    idx = torch.randint(0, 9, (1, 16))
    base = model.gpt(idx)
    for t in (3, 9, 15):
        changed = idx.clone()
        changed[0, t] = (changed[0, t] + 1) % 9
        out = model.gpt(changed)
        assert torch.allclose(out[:, :t], base[:, :t], rtol=0, atol=1e-6)
        assert not torch.allclose(out[:, t:], base[:, t:])


def test_filter_logits_support():
    probs = torch.tensor([[0.5, 0.05, 0.25, 0.15, 0.05]])
    logits = probs.log()
    keep = lambda out: (out > float("-inf")).squeeze(0).tolist()  # noqa: E731
    assert keep(filter_logits(logits, top_k=2)) == [True, False, True, False, False]
    # nucleus 0.7: 0.5 < 0.7, 0.5 + 0.25 crosses it → {0, 2}
    assert keep(filter_logits(logits, top_p=0.7)) == [True, False, True, False, False]
    # 0.5 + 0.25 already covers 0.74: no third token
    assert keep(filter_logits(logits, top_p=0.74)) == [True, False, True, False, False]
    assert keep(filter_logits(logits, top_p=0.76)) == [True, False, True, True, False]
    assert keep(filter_logits(logits, top_k=3, top_p=0.5)) == [True, False, False, False, False]
    assert all(keep(filter_logits(logits)))


def test_tokenizers_round_trip():
    text = "To be, or not to be:\nthat is the question."
    char = CharTokenizer.fit(text)
    assert char.decode(char.encode(text)) == text
    with pytest.raises(DataError, match="'é'"):
        char.encode("café")
    byte = ByteTokenizer()
    for s in ("ascii", "naïve café — 東京 🙂", ""):
        assert byte.decode(byte.encode(s)) == s


def test_text_file_dataset(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("abcdefghij" * 100)
    data = text_file(TextConfig(path=str(path), block_size=8))
    assert data.train_ids.numel() == 900 and data.val_ids.numel() == 100
    x, y = next(data.train_iter(4, seed=0))
    assert x.shape == (4, 8) and torch.equal(x[:, 1:], y[:, :-1])
    windows = list(data.eval_iter(5))
    assert sum(b[0].shape[0] for b in windows) == (100 - 1) // 8
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="empty"):
        text_file(TextConfig(path=str(tmp_path / "empty.txt")))
    (tmp_path / "short.txt").write_text("abc" * 5)
    with pytest.raises(DataError, match="too short"):
        text_file(TextConfig(path=str(tmp_path / "short.txt"), block_size=64))
    with pytest.raises(DataError, match="not found"):
        text_file(TextConfig(path=str(tmp_path / "missing.txt")))


def test_pydoc_corpus_is_builtin():
    data = pydoc(PydocConfig())
    assert data.train_ids.numel() > 300_000 and data.spec.vocab_size > 60


def test_sample_starts_with_prompt_and_is_reproducible():
    model = _model(block=8)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    a = model.sample(2, generator=g(), prompt="abc", max_new_tokens=30, top_k=3).texts
    b = model.sample(2, generator=g(), prompt="abc", max_new_tokens=30, top_k=3).texts
    assert a == b and all(s.startswith("abc") and len(s) == 33 for s in a)  # past block_size
    streamed = []
    c = model.sample(1, generator=g(), prompt="ab", max_new_tokens=10, stream=streamed.append).texts
    assert "".join(streamed) == c[0]


def test_transformer_loss_falls_and_reports_bits(make_cfg, tmp_path, run_main):
    path = tmp_path / "tiny.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    cfg = make_cfg(
        "dataset=text",
        f"dataset.path={path}",
        "dataset.block_size=16",
        "model.n_layer=1",
        "model.n_embd=32",
        "model.n_head=2",
        "trainer.max_steps=60",
        "trainer.log_every=10",
        "trainer.batch_size=16",
        "trainer.eval_every=0",
        "trainer.sample_every=30",
        "trainer.ckpt_every=0",
        "optim.lr=3e-3",
        "optim.warmup_steps=5",
        model="transformer",
        dataset="text",
    )
    metrics = train(cfg, run_dir=tmp_path / "run")
    losses = [v for _, v in read_scalars(tmp_path / "run")["model/loss"]]
    assert losses[-1] < 0.6 * losses[0]
    assert metrics["test/bits_per_char"] == pytest.approx(metrics["test/loss"] / math.log(2))
    assert metrics["test/perplexity"] == pytest.approx(math.exp(metrics["test/loss"]))
    assert (tmp_path / "run" / "samples" / "step_000030.txt").is_file()

    # `aigc sample`: streamed text that starts with the prompt, saved too
    code, out, err = run_main(
        "sample",
        f"run={tmp_path / 'run'}",
        "prompt=the quick",
        "max_new_tokens=40",
        "temperature=0.8",
        "top_k=5",
        "top_p=0.95",
        "seed=1",
    )
    assert code == 0, err
    assert out.startswith("the quick")
    saved = list((tmp_path / "run" / "samples").glob("2*.txt"))
    assert len(saved) == 1 and saved[0].read_text().startswith("the quick")
    assert len(saved[0].read_text().strip()) >= len("the quick") + 30


@pytest.mark.slow  # a second interpreter that imports torch
def test_sample_with_a_prompt_in_a_fresh_process(make_cfg, tmp_path):
    """`aigc sample prompt=...` as a user runs it, on a run trained here for a few steps."""
    cfg = make_cfg("trainer.max_steps=4", "model.n_layer=1", "model.n_embd=32", "model.n_head=2",
                   "dataset.block_size=16", model="transformer", dataset="pydoc")  # fmt: skip
    train(cfg, run_dir=tmp_path / "run")
    out = run_cli("sample", f"run={tmp_path / 'run'}", "prompt=the quick", "max_new_tokens=20",
                  "seed=1", cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("the quick") and len(out.stdout.strip()) > len("the quick")
    assert any(p.read_text().startswith("the quick") for p in (tmp_path / "run").glob("samples/2*"))


def test_pixel_codec_round_trips_quantised_images():
    from aigc_cli.models.pixels import PixelCodec

    codec = PixelCodec([3, 8, 8], levels=4, downscale=1)
    assert codec.vocab_size == 64 and codec.seq_len == 64
    images = torch.randint(0, 4, (5, 3, 8, 8)).float() / 3  # already on the 4-level grid
    tokens = codec.encode(images)
    assert tokens.shape == (5, 64) and tokens.min() >= 0 and tokens.max() < 64
    assert torch.equal(codec.decode(tokens), images)
    # raster order: token i is pixel (i // 8, i % 8), its channels as base-4 digits
    assert int(tokens[0, 9]) == sum(round(float(images[0, c, 1, 1]) * 3) * 4**c for c in range(3))
    half = PixelCodec([1, 8, 8], levels=2, downscale=2)
    assert half.seq_len == 16 and half.decode(half.encode(torch.ones(2, 1, 8, 8))).shape == (
        2, 1, 8, 8,
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"model\.downscale"):
        PixelCodec([1, 28, 28], levels=2, downscale=3)


def test_transformer_on_images_learns_and_samples_grids(make_cfg, tmp_path):
    """ImageGPT-style: shapes at 8x8 (downscale 4), 4 levels per channel."""
    cfg = make_cfg(
        "model.n_layer=1",
        "model.n_embd=32",
        "model.n_head=2",
        "model.downscale=4",
        "trainer.max_steps=40",
        "trainer.batch_size=16",
        "trainer.log_every=5",
        "trainer.eval_every=0",
        "trainer.sample_every=40",
        "optim.lr=3e-3",
        "optim.warmup_steps=0",
        model="transformer",
    )
    metrics = train(cfg, run_dir=tmp_path / "run")
    losses = [v for _, v in read_scalars(tmp_path / "run")["model/loss"]]
    assert losses[-1] < 0.8 * losses[0]
    assert metrics["test/bits_per_pixel"] == pytest.approx(metrics["test/loss"] / math.log(2))
    assert (tmp_path / "run" / "samples" / "step_000040.png").is_file()

    from aigc_cli.store.runs import load_run

    model, _ = load_run(tmp_path / "run" / "checkpoints" / "last.pt", torch.device("cpu"))
    a = model.sample(3, generator=torch.Generator().manual_seed(1)).images
    b = model.sample(3, generator=torch.Generator().manual_seed(1)).images
    assert a.shape == (3, 3, 32, 32) and torch.equal(a, b)
    assert set(torch.unique(a * 3).round().tolist()) <= {0.0, 1.0, 2.0, 3.0}  # 4 levels


def test_bpe_is_learnt_from_the_training_split_and_reports_bits_per_char(make_cfg, tmp_path,
                                                                         run_main):  # fmt: skip
    """dataset.tokenizer=bpe: a byte-level BPE of the requested size, learnt from the first 90%
    of the characters only, stored in the checkpoint (sampling reads no data), and bits per
    character computed from the validation text's own characters and tokens."""
    from aigc_cli.data.text import BPETokenizer

    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa"]
    text = " ".join(words[(i * 7) % 8] for i in range(3000)) + "\n"
    text += "unseen validation words: omicron sigma upsilon " * 120  # only in the last 10%
    path = tmp_path / "corpus.txt"
    path.write_text(text)
    data = text_file(TextConfig(path=str(path), tokenizer="bpe", vocab_size=300, block_size=16))
    tok = data.tokenizer
    assert isinstance(tok, BPETokenizer) and tok.vocab_size == 300
    assert tok.decode(tok.encode("gamma delta\n")) == "gamma delta\n"
    vocab = tok.tok.get_vocab()
    assert any("alpha" in v for v in vocab) and not any("omicron" in v for v in vocab)
    # the windows eval_iter scores, and the characters they cover, counted here directly
    scored = torch.cat([y.flatten() for _, y in data.eval_iter(1000)])
    ratio = scored.numel() / len(tok.decode(scored.tolist()))
    assert data.spec.extra["tokens_per_char"] == pytest.approx(ratio)

    cfg = make_cfg("dataset=text", f"dataset.path={path}", "dataset.tokenizer=bpe",
                   "dataset.vocab_size=300", "dataset.block_size=16", "model.n_layer=1",
                   "model.n_embd=32", "model.n_head=2", "trainer.max_steps=6",
                   model="transformer", dataset="text")  # fmt: skip
    metrics = train(cfg, run_dir=tmp_path / "run")
    assert metrics["test/bits_per_token"] == pytest.approx(metrics["test/loss"] / math.log(2))
    assert metrics["test/bits_per_char"] == pytest.approx(metrics["test/bits_per_token"] * ratio)
    path.unlink()  # sampling needs only the checkpoint's tokenizer
    code, out, err = run_main("sample", f"run={tmp_path / 'run'}", "prompt=gamma delta",
                              "max_new_tokens=10")  # fmt: skip
    assert code == 0, err
    assert out.startswith("gamma delta")


def test_bad_bpe_settings_are_one_line():
    with pytest.raises(DataError, match="more than this text allows: BPE ran out of pairs"):
        pydoc(PydocConfig(tokenizer="bpe", vocab_size=10**6))
    with pytest.raises(ConfigError, match="needs more than its 256 byte tokens"):
        pydoc(PydocConfig(tokenizer="bpe", vocab_size=200))
    with pytest.raises(ConfigError, match=r"set it for dataset\.tokenizer=bpe"):
        pydoc(PydocConfig(tokenizer="bpe"))
    with pytest.raises(ConfigError, match=r"applies to dataset\.tokenizer=bpe"):
        pydoc(PydocConfig(tokenizer="char", vocab_size=512))
