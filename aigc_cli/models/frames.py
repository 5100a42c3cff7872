"""Music frames (the set of pitches sounding at each grid step), each given the frames before
it: a causal transformer or an LSTM reads the past, then either each of the 88 notes gets its own
Bernoulli probability (`notes=independent`, as the RNN, LSTM and TCN baselines of the JSB
Chorales benchmark), or each of four voices picks one key or a rest and a note's probability is
the chance that some voice sings it (`notes=voices`: still independent notes, learnt with each
voice's key as a label from four-part data), or the notes of the frame are drawn low to high, each
given the past and the notes below it, until a stop (`notes=ordered`, an exact likelihood of the
whole frame, as RNN-NADE models it). `members` makes an ensemble of models with independent
notes, each trained on its own loss, whose note probabilities are averaged: the notes stay
independent. The test figure is the frame negative log-likelihood in nats per time step (88 fair
coins: 61.00)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aigc_cli.config import check, validate
from aigc_cli.data.base import Batch, DataSpec
from aigc_cli.data.music import music_spec
from aigc_cli.models.base import GenerativeModel, OnnxGraph, Stage
from aigc_cli.models.transformer import GPT, Block
from aigc_cli.noise import LOCAL, Noise
from aigc_cli.registry import MODELS
from aigc_cli.results import Music

BACKBONES = ("transformer", "lstm")
NOTES = ("independent", "voices", "ordered")
INDEPENDENT = ("independent", "voices")  # what an ensemble can average
# How many frames before a step the pitch-shift-equivariant term's first layer reads: one 4/4 bar
# on the quarter grid, enough to see how long each note has been held.
LOCAL_FRAMES = 4
# Dropout inside the pitch term's deeper layers, as a share of model.dropout: its weights are
# shared by all 88 keys, so it needs far less than the backbone.
PITCH_DROPOUT = 0.2


@MODELS.register("frames")
class FrameModel(GenerativeModel):
    """Music frames given the past (a transformer or an LSTM), notes independent or in order.

    `notes=ordered` draws each frame's notes low to high: an exact frame likelihood."""

    data_kinds = ("frames",)

    @dataclass
    class Config:
        name: str = "frames"
        backbone: str = "transformer"  # transformer | lstm: what reads the frames before a step
        notes: str = "independent"  # independent | voices: 88 Bernoulli | ordered: exact
        n_layer: int = 3  # transformer blocks or LSTM layers
        n_head: int = 4  # attention heads (transformer)
        n_embd: int = 128  # width
        dropout: float = 0.1  # dropout in the blocks and before the head (0 at sampling)
        pitch_window: int = 0  # semitones each side a pitch-shift-equivariant term reads (0: off)
        pitch_frames: int = 4  # frames that term reads back (over 4: dilated layers, up to 8, 16 …)
        weight_drop: float = 0.0  # LSTM: dropout on the recurrent weights while training
        members: list[Any] = field(default_factory=list)  # ensemble: each entry overrides settings

    def __init__(self, cfg: Config, data: DataSpec) -> None:
        super().__init__(cfg, data)
        check(cfg.backbone in BACKBONES, "model.backbone", f"choose from: {', '.join(BACKBONES)}")
        check(cfg.notes in NOTES, "model.notes", f"choose from: {', '.join(NOTES)}")
        check(cfg.n_embd % cfg.n_head == 0, "model.n_embd", "must be a multiple of model.n_head")
        check(not cfg.members or cfg.notes in INDEPENDENT, "model.members",
              "averages independent notes; set model.notes=independent")  # fmt: skip
        check(cfg.pitch_window == 0 or cfg.notes in INDEPENDENT, "model.pitch_window",
              "works with independent notes only; set it to 0")  # fmt: skip
        check(cfg.pitch_window >= 0, "model.pitch_window", "must be >= 0")
        check(cfg.pitch_frames >= LOCAL_FRAMES, "model.pitch_frames", f"must be >= {LOCAL_FRAMES}")
        check(0.0 <= cfg.weight_drop < 1.0, "model.weight_drop", "must be in [0, 1)")
        check(cfg.weight_drop == 0 or cfg.backbone == "lstm", "model.weight_drop",
              "drops an LSTM's recurrent weights; set model.backbone=lstm")  # fmt: skip
        self.window, keys = data.shape
        self.keys = keys
        self.music = music_spec(data) or {}
        self.voices = int(self.music.get("voice_labels", 0)) if cfg.notes == "voices" else 0
        check(cfg.notes != "voices" or self.voices, "model.notes",
              "voices learns each voice's key from four-part pieces that keep their voices; "
              "use dataset=chorales or dataset=tunes with dataset.representation=frames, "
              "or model.notes=independent")  # fmt: skip
        self.members = nn.ModuleList(self.member(entry, data) for entry in cfg.members)
        if cfg.members:
            return
        self.inp = nn.Linear(keys, cfg.n_embd)
        self.start = nn.Parameter(torch.zeros(keys))  # the "frame before the first"
        self.drop = nn.Dropout(cfg.dropout)
        if cfg.backbone == "transformer":
            self.pos = nn.Embedding(self.window, cfg.n_embd)
            self.blocks = nn.ModuleList(Block(cfg.n_embd, cfg.n_head, cfg.dropout)
                                        for _ in range(cfg.n_layer))  # fmt: skip
            self.ln_f = nn.LayerNorm(cfg.n_embd)
        else:
            self.lstm = nn.LSTM(cfg.n_embd, cfg.n_embd, cfg.n_layer, batch_first=True,
                                dropout=cfg.dropout if cfg.n_layer > 1 else 0.0)  # fmt: skip
        if cfg.notes in INDEPENDENT:  # voices: each voice's keys and its rest
            self.head = nn.Linear(cfg.n_embd, self.voices * (keys + 1) if self.voices else keys)
            # The same weights at every key: "a note held, or a step away from one, comes next"
            # is learnt once for all 88 keys rather than per key from ~200 pieces.
            # an eighth of the width, but at least 32 channels for a narrow LSTM's term
            w, channels = cfg.pitch_window, max(32, cfg.n_embd // 8)
            drop = PITCH_DROPOUT * cfg.dropout
            self.local = PitchTerm(w, cfg.pitch_frames, channels, drop) if w else None
        else:  # one more class, "stop", after the keys; one more input, "start"
            self.below = nn.Embedding(keys + 2, cfg.n_embd)  # the note just drawn
            self.drawn = nn.Linear(keys, cfg.n_embd, bias=False)  # every note drawn so far
            self.rank = nn.Embedding(keys + 1, cfg.n_embd)  # how many were drawn
            self.head = nn.Sequential(
                nn.Linear(cfg.n_embd, cfg.n_embd),
                nn.GELU(),
                nn.Dropout(cfg.dropout),
                nn.Linear(cfg.n_embd, keys + 1),
            )
        if cfg.backbone == "transformer":
            self.apply(GPT._init)
            for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
                if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
                    nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer))

    def member(self, entry: Any, data: DataSpec) -> FrameModel:
        """One member of an ensemble: these settings with the entry's overrides."""
        check(isinstance(entry, dict), "model.members", "each entry is a mapping of settings, "
              "e.g. model.members='[{n_embd: 256}, {pitch_window: 12}]'")  # fmt: skip
        check("members" not in entry, "model.members", "a member cannot hold members")
        shared = {k: v for k, v in asdict(self.cfg).items() if k != "members"}
        cfg = validate("model.members", FrameModel.Config, {**shared, **entry})
        check(cfg.notes in INDEPENDENT, "model.members", "members have independent notes: "
              "notes independent or voices")  # fmt: skip
        return FrameModel(cfg, data)

    def context(self, frames: Tensor) -> Tensor:
        """(B, T, keys) frames → (B, T, C): at t, what the backbone read of frames before t."""
        b, t, _ = frames.shape
        prev = torch.cat([self.start.expand(b, 1, -1), frames[:, :-1]], dim=1)  # (B, T, keys)
        x = self.inp(prev)
        if self.cfg.backbone == "lstm":
            x = self.drop(torch.relu(x))
            if self.training and self.cfg.weight_drop:
                return self.drop(self.lstm_weight_dropped(x))
            return self.drop(self.lstm(x)[0])
        x = x + self.pos(torch.arange(t, device=frames.device))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def lstm_weight_dropped(self, x: Tensor) -> Tensor:
        """The LSTM over `x` with dropout on its recurrent weights (DropConnect, as AWD-LSTM
        regularises a small corpus): one mask per batch, the same at every step."""
        lstm = self.lstm
        params = []
        for k in range(lstm.num_layers):
            params += [getattr(lstm, f"weight_ih_l{k}"),
                       F.dropout(getattr(lstm, f"weight_hh_l{k}"), self.cfg.weight_drop),
                       getattr(lstm, f"bias_ih_l{k}"), getattr(lstm, f"bias_hh_l{k}")]  # fmt: skip
        h0 = x.new_zeros(lstm.num_layers, x.shape[0], lstm.hidden_size)
        # has_biases, num_layers, dropout between layers, train, bidirectional, batch_first
        out = torch.lstm(x, (h0, h0), params, True, lstm.num_layers, lstm.dropout, True, False,
                         True)  # fmt: skip
        return out[0]

    def forward(self, frames: Tensor) -> Tensor:
        """independent: (B, T, keys) frames → (B, T, keys) logits of frame t given frames before
        t; ordered: → (B, T) each frame's negative log-likelihood given the frames before. An
        ensemble's logits are those of its members' mean probabilities."""
        if len(self.members):
            logits = torch.stack([m(frames).float() for m in self.members])
            n = math.log(len(self.members))
            # log sigmoid as -softplus: onnxruntime's sigmoid is exact only to ~1e-7 absolute,
            # which a log of an unlikely note's probability magnifies
            on = torch.logsumexp(-F.softplus(-logits), 0) - n  # log of the mean probability
            off = torch.logsumexp(-F.softplus(logits), 0) - n
            return on - off
        h = self.context(frames)
        if self.voices:
            return notes_from_voices(self.voice_logits(h, frames))
        if self.cfg.notes == "independent":
            return self.independent_logits(h, frames)
        return self.ordered_nll(h, frames)

    def independent_logits(self, h: Tensor, frames: Tensor) -> Tensor:
        """(B, T, C) contexts and the (B, T, keys) frames → logits of each frame's notes; only
        the frames before each step are read."""
        logits = self.head(h)
        if self.local is None:
            return logits
        return logits + self.pitch_term(frames, logits.dtype)

    def pitch_term(self, frames: Tensor, dtype: torch.dtype) -> Tensor:
        """(B, T, keys) frames → (B, T, keys) the pitch-shift-equivariant term's logits, each
        step's read from the frames before it."""
        prev = F.pad(frames, (0, 0, 1, 0))[:, :-1]  # at step t, frame t - 1 (zeros before)
        return self.local(prev.to(dtype))

    def voice_logits(self, h: Tensor, frames: Tensor) -> Tensor:
        """(B, T, C) contexts and the (B, T, keys) frames → (B, T, voices, keys + 1) logits of
        each voice's key or rest (the last); the pitch term adds to every voice's keys."""
        logits = self.head(h).unflatten(-1, (self.voices, self.keys + 1))
        if self.local is None:
            return logits
        local = F.pad(self.pitch_term(frames, logits.dtype), (0, 1))  # nothing for the rest
        return logits + local[:, :, None]

    def note_logits(self, h: Tensor, below: Tensor, drawn: Tensor, rank: Tensor) -> Tensor:
        """Logits over the keys and "stop" of the next note of a frame, given the context `h`,
        the note just drawn (`keys + 1` before the first), the 0/1 set drawn so far and its size;
        keys at or below the note just drawn are impossible (the notes come low to high)."""
        logits = self.head(h + self.below(below) + self.drawn(drawn) + self.rank(rank))
        keys = torch.arange(self.keys + 1, device=h.device)
        floor = torch.where(below < self.keys, below, -1)  # no floor before the first note
        return logits.masked_fill((keys <= floor[..., None]) & (keys < self.keys), -math.inf)

    def ordered_nll(self, h: Tensor, frames: Tensor, draws: int = 0) -> Tensor:
        """(B, T) negative log-likelihood of each frame as its notes low to high, then stop,
        over `draws` draws per frame (0: as many as the fullest frame needs, the stop included;
        a traced graph takes every key's, the same figure for any input)."""
        count = frames.sum(-1).long()  # (B, T)
        k = draws or (int(count.max()) + 1 if count.numel() else 1)
        keys = torch.arange(self.keys, device=frames.device, dtype=frames.dtype)
        order = torch.where(frames > 0, keys, float(self.keys)).sort(-1).values
        order = F.pad(order, (0, 1), value=float(self.keys))[..., :k]  # a full frame stops too
        notes = order.long()  # (B, T, k): the notes low to high, then `keys` (stop) as padding
        below = torch.cat([torch.full_like(notes[..., :1], self.keys + 1), notes[..., :-1]], -1)
        hot = F.one_hot(notes, self.keys + 1)[..., : self.keys].to(h.dtype)
        drawn = hot.cumsum(2) - hot  # (B, T, k, keys): the notes before each draw
        rank = torch.arange(k, device=frames.device).expand_as(notes)
        logits = self.note_logits(h[:, :, None].expand(-1, -1, k, -1), below, drawn, rank)
        nll = -logits.log_softmax(-1).gather(-1, notes[..., None])[..., 0]  # (B, T, k)
        return (nll * (rank <= count[..., None])).sum(-1)  # draws past the stop do not count

    def frame_nll(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Each sample's summed negative log-likelihood of its frames, and its frame count."""
        frames, lengths = batch[0].float(), batch[1].long()
        if self.cfg.notes in INDEPENDENT:
            logits = self(frames)
            nll = F.binary_cross_entropy_with_logits(logits, frames, reduction="none").sum(-1)
        else:
            nll = self(frames)
        valid = torch.arange(frames.shape[1], device=frames.device) < lengths[:, None]  # (B, T)
        return (nll * valid).sum(1), valid.sum(1).float()

    def training_step(self, batch: Batch, step: int, noise: Noise = LOCAL) -> Iterator[Stage]:
        if len(self.members):  # each member on its own loss: averaged, they do not co-adapt
            terms = [m.loss_terms(batch) for m in self.members]
            losses = [sum(t.values()) for t in terms]
            scalars = {f"member{i}{'' if k == 'frame_nll' else '_' + k}": v.detach()
                       for i, t in enumerate(terms) for k, v in t.items()}  # fmt: skip
            yield Stage("model", torch.stack(losses).mean(), scalars)
            return
        terms = self.loss_terms(batch)
        scalars = {k: v.detach() for k, v in terms.items()} if len(terms) > 1 else {}
        yield Stage("model", sum(terms.values()), scalars)

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        """The frames' negative log-likelihood per step (frame_nll) and, for `notes=voices`,
        that of each voice's key, its label, per step as well (voice_keys)."""
        if not self.voices:
            nll, frames = self.frame_nll(batch)
            return {"frame_nll": nll.sum() / frames.sum()}
        x, lengths, keys = batch[0].float(), batch[1].long(), batch[2].long()
        voices = self.voice_logits(self.context(x), x).float()  # one pass: one weight-drop mask
        nll = F.binary_cross_entropy_with_logits(notes_from_voices(voices), x, reduction="none")
        ce = F.cross_entropy(voices.flatten(0, 2), keys.flatten(), reduction="none")
        valid = torch.arange(x.shape[1], device=x.device) < lengths[:, None]
        steps = valid.sum()
        return {"frame_nll": (nll.sum(-1) * valid).sum() / steps,
                "voice_keys": (ce.view_as(keys).sum(-1) * valid).sum() / steps}  # fmt: skip

    @torch.no_grad()
    def evaluate(self, batch: Batch, **options: Any) -> dict[str, Tensor]:
        nll, frames = self.frame_nll(batch)
        return {"frame_nll": nll.sum(), "n": frames.sum()}

    def describe_metrics(self, options: dict[str, Any]) -> dict[str, str]:
        how = {"independent": "88 independent Bernoulli notes",
               "voices": "88 independent Bernoulli notes, each the chance some voice sings it",
               "ordered": "the notes of a frame low to high, exact"}[self.cfg.notes]  # fmt: skip
        return {"frame_nll": "negative log-likelihood of the test frames, nats per time step "
                f"({how}; 88 fair coins score 61.00)"}  # fmt: skip

    def onnx_graphs(self) -> list[OnnxGraph]:
        keys = self.keys

        def example(n: int) -> dict[str, Tensor]:
            steps = max(1, min(n, self.window))
            return {"frames": (torch.rand(n, steps, keys) < 0.1).float()}

        frames = f"frames (batch, steps ≤ {self.window}, {keys}) 0/1"
        if self.cfg.notes in INDEPENDENT:
            out = "logits"
            about = f"{frames} → logits of each frame's {keys} notes given the frames before it"
        else:
            out = "frame_nll"
            about = (f"{frames} → each frame's negative log-likelihood (nats) given the frames "
                     "before it, its notes drawn low to high")  # fmt: skip
        dynamic = {"frames": {0: "batch", 1: "steps"}, out: {0: "batch", 1: "steps"}}
        graph = self if self.cfg.notes in INDEPENDENT else _TracedScores(self)
        return [OnnxGraph("frames", graph, example, [out], dynamic, about)]

    @torch.no_grad()
    def sample(
        self, n: int, *, generator: torch.Generator | None = None, steps: int = 0, **kw: Any
    ) -> Music:
        """`n` pieces of `steps` frames (0 = the training window), each note of a frame drawn
        from its Bernoulli given the frames before."""
        steps = steps or self.window
        check(1 <= steps <= self.window, "steps", f"{steps} must be in [1, {self.window}]")
        frames = torch.zeros(n, steps, self.keys, device=self.device)
        for t in range(steps):
            if self.cfg.notes in INDEPENDENT:
                p = self(frames[:, : t + 1])[:, t].sigmoid()  # (n, keys)
                u = torch.rand(p.shape, generator=generator).to(p.device)
                frames[:, t] = (u < p).float()
            else:
                frames[:, t] = self.draw_frame(self.context(frames[:, : t + 1])[:, t], generator)
        return self.as_music(frames.transpose(1, 2))  # (n, keys, steps)

    def draw_frame(self, h: Tensor, generator: torch.Generator | None) -> Tensor:
        """One frame per row of `h`: notes low to high until each row draws "stop"."""
        n = h.shape[0]
        frame = torch.zeros(n, self.keys, device=h.device)
        below = torch.full((n,), self.keys + 1, device=h.device, dtype=torch.long)
        live = torch.ones(n, dtype=torch.bool, device=h.device)
        for rank in range(self.keys + 1):
            logits = self.note_logits(h, below, frame, torch.full_like(below, rank))
            u = torch.rand(n, 1, generator=generator).to(h.device)  # inverse-CDF draw
            cdf = logits.softmax(-1).cumsum(-1)
            note = (cdf < u * cdf[:, -1:]).sum(-1).clamp(max=self.keys)
            live &= note < self.keys
            if not live.any():
                break
            frame[live, note[live]] = 1.0
            below = torch.where(live, note, below)
        return frame


def notes_from_voices(logits: Tensor) -> Tensor:
    """(..., voices, keys + 1) logits of each voice's key or rest (the last) → (..., keys)
    logits of each key sounding: the chance that some voice sings it, with the voices drawn
    independently: 1 - prod(1 - q) is the chance that voice v is the first to sing it, summed
    over v, q_v prod_{u<v} (1 - q_u). In float32 log space from sums of positive terms only, so
    that neither a key no voice is likely to sing nor one a voice is sure to sing loses its
    logit to rounding (and in ONNX, which has no log1p, as in PyTorch)."""
    x = logits.float()
    top = x.amax(-1, keepdim=True)
    e = torch.exp(x - top)  # 1 at the largest logit
    total = e.sum(-1, keepdim=True)
    # Σ over the other classes: total - e loses nothing unless e is the one 1 in a sum of
    # tiny terms; there, add up the rest instead
    is_top = x == top
    rest = (e * ~is_top).sum(-1, keepdim=True) + (is_top.sum(-1, keepdim=True) - 1)  # ties
    others = torch.where(is_top, rest, total - e).clamp(min=1e-38)
    q = (x - top - total.log())[..., :-1]  # (..., voices, keys) log chance v sings k
    silent = (others.log() - total.log())[..., :-1]  # log chance v does not
    before = silent.cumsum(-2) - silent  # log chance no voice below v sings it
    return torch.logsumexp(q + before, -2) - silent.sum(-2)


class PitchTerm(nn.Module):
    """Logits from the frames before each step with the same weights at every key (shifting the
    past by k keys shifts the term by k): a convolution over `window` keys each side and the
    bar before the step, then dilated layers (4, 8, 16 … frames back) until it reads `frames`."""

    def __init__(self, window: int, frames: int, channels: int, dropout: float) -> None:
        super().__init__()
        self.first = nn.Conv2d(1, channels, (LOCAL_FRAMES, 2 * window + 1), padding=(0, window))
        dilations, reach = [], LOCAL_FRAMES
        while reach < frames:
            dilations.append(reach)
            reach *= 2
        self.blocks = nn.ModuleList(nn.Conv2d(channels, channels, (2, 3), dilation=(d, 1),
                                              padding=(0, 1)) for d in dilations)  # fmt: skip
        self.drop = nn.Dropout(dropout)
        self.out = nn.Conv2d(channels, 1, 1)

    def forward(self, prev: Tensor) -> Tensor:
        """(B, T, keys): the frame before each step → (B, T, keys) logits; causal in time."""
        x = F.gelu(self.first(F.pad(prev[:, None], (0, 0, LOCAL_FRAMES - 1, 0))))
        for conv in self.blocks:
            x = x + F.gelu(conv(self.drop(F.pad(x, (0, 0, conv.dilation[0], 0)))))
        return self.out(x)[:, 0]


class _TracedScores(nn.Module):
    """The ordered model's frame scores with a fixed number of draws per frame (every key's
    and the stop), so the traced graph holds no count taken from its example input."""

    def __init__(self, model: FrameModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: Tensor) -> Tensor:
        h = self.model.context(frames)
        return self.model.ordered_nll(h, frames, draws=self.model.keys + 1)
