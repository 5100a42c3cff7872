"""What diffusion and flow matching share: a denoising network (a UNet sized from the image, or
an MLP for points) called as net(x_t, t, y), class conditioning with label dropout, and
classifier-free guidance (Ho & Salimans 2022) at sampling time. Each family adds its own path
between noise and data, its loss and its samplers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from aigc_cli.config import check, validate
from aigc_cli.data.base import Batch, BatchIterator, DataModule, DataSpec, TensorData
from aigc_cli.data.captions import START, encode_captions, follows_grammar, parse
from aigc_cli.errors import ConfigError
from aigc_cli.models.base import (
    GenerativeModel,
    HasSamplers,
    More,
    OnnxGraph,
    Request,
    Stage,
    class_rows,
    conditional_classes,
)
from aigc_cli.models.draws import Draws
from aigc_cli.models.nets import PointDenoiser, UNet
from aigc_cli.models.text_encoder import TextDenoiser, TextEncoder
from aigc_cli.models.vae import VAE, decoder_graph
from aigc_cli.noise import LOCAL, Noise
from aigc_cli.optim import make_optimizer
from aigc_cli.results import SampleResult

QUARTERS = 4  # test losses are reported per quarter of the time range, one draw in each


@dataclass
class DenoiserConfig:
    base_channels: int = 16  # UNet channels at full resolution (doubled per level, up to 4x)
    attention: bool = True  # self-attention at the UNet's lowest resolution
    dropout: float = 0.1  # dropout inside the residual blocks
    hidden: int = 256  # width of the MLP for 2-D points
    conditional: bool = False  # class-conditional (needs labels); enables guidance
    cond_drop: float = 0.1  # share of training labels replaced by "no label" (for guidance)
    steps: int = 50  # sampler steps (DDIM, Euler, Heun); DDPM always takes all T
    guidance: float = 1.0  # classifier-free guidance scale: 1 = conditional, 0 = unconditional
    text: bool = False  # condition on the dataset's captions (a text encoder, trained along)
    text_width: int = 128  # text encoder width (its token vectors and pooled vector)
    text_layers: int = 2  # text encoder blocks
    cross_attention: bool = True  # text: the UNet attends to the tokens; false = pooled alone
    # latent diffusion: a trained VAE (run dir or checkpoint), frozen; the denoiser works on its
    # latents (posterior means) and samples are decoded by its decoder
    autoencoder: str | None = None
    # filled in from `autoencoder` when the run starts (the VAE's config and data spec), so a
    # checkpoint rebuilds the model without reading any other file; not set by hand
    autoencoder_config: dict[str, Any] | None = None


class DenoisingModel(GenerativeModel, HasSamplers):
    data_kinds = ("image", "points")
    part_runs = {"autoencoder": "vae"}  # noqa: RUF012  (latent diffusion: the VAE run it names)
    samplers: tuple[str, ...] = ()

    def __init__(self, cfg: Any, data: DataSpec) -> None:
        super().__init__(cfg, data)
        check(cfg.base_channels >= 4, "model.base_channels", "must be >= 4")
        check(0 <= cfg.dropout < 1, "model.dropout", "must be in [0, 1)")
        check(0 <= cfg.cond_drop < 1, "model.cond_drop", "must be in [0, 1)")
        check(cfg.steps >= 1, "model.steps", f"{cfg.steps} must be >= 1")
        check(cfg.sampler in self.samplers, "model.sampler",
              f"'{cfg.sampler}'; choose from: {', '.join(self.samplers)}")  # fmt: skip
        self.num_classes = conditional_classes(cfg.conditional, data)
        self.captions = caption_spec_of(cfg, data)
        context = cfg.text_width if self.captions else 0
        self.vae = None
        self.latent_shape = list(data.shape)
        if cfg.autoencoder or cfg.autoencoder_config:
            self.vae = frozen_autoencoder(cfg, data)
            self.latent_shape = [self.vae.cfg.latent_dim]
            self.net: torch.nn.Module = PointDenoiser(
                self.latent_shape[0], cfg.hidden, self.num_classes, context
            )
        elif data.kind == "points":
            self.net = PointDenoiser(data.shape[0], cfg.hidden, self.num_classes)
        else:
            c, h, w = data.shape
            check(h == w, "dataset.image_size", f"{h}x{w}: the UNet needs square images")
            self.net = UNet(c, h, cfg.base_channels, cfg.dropout, self.num_classes, cfg.attention,
                            context, cfg.cross_attention)  # fmt: skip
        if self.captions:
            encoder = TextEncoder(self.captions["vocab"], self.captions["length"],
                                  cfg.text_width, cfg.text_layers)  # fmt: skip
            self.net = TextDenoiser(encoder, self.net)  # type: ignore[arg-type]

    @property
    def takes_prompts(self) -> bool:
        return self.captions is not None

    @property
    def conditioned(self) -> bool:
        """Whether the network takes a condition (class labels or caption ids)."""
        return bool(self.num_classes) or self.captions is not None

    def condition_of(self, batch: Batch) -> Tensor | None:
        """A batch's condition: caption ids for a text model, labels for a class model."""
        if self.captions is not None:
            return batch[2].long()
        return batch[1].long() if self.num_classes else None

    def null_condition(self, y: Tensor) -> Tensor:
        """The "no condition" of classifier-free guidance: the empty caption, or the extra
        label index."""
        if self.captions is not None:
            null = torch.zeros_like(y)
            null[:, 0] = START
            return null
        return torch.full_like(y, self.num_classes)

    def optimizers(self, optim: Any) -> dict[str, Any]:

        return {"model": make_optimizer(self.net.parameters(), optim)}

    @property
    def pixel_space(self) -> bool:
        """Images denoised as pixels (not as an autoencoder's latents)."""
        return self.spec.kind == "image" and self.vae is None

    def train_batches(self, data: DataModule, batch_size: int, seed: int) -> BatchIterator:
        """Latent diffusion encodes the training images once (posterior means, which the frozen
        encoder would give again each epoch) and trains on batches of those latents. Data that
        streams from disk is encoded batch by batch instead."""
        if self.vae is None or not isinstance(data, TensorData):
            return data.train_iter(batch_size, seed)
        n, labels = data.train[0].shape[0], data.train[1:]
        chunks = []
        for start in range(0, n, 512):
            idx = torch.arange(start, min(start + 512, n), device=data.device)
            x = data.take("train", idx)[0]
            chunks.append(self.to_model(x.to(self.device)).to(data.device))
        spec = DataSpec("points", list(self.latent_shape), data.spec.num_classes)
        latents = TensorData(spec, (torch.cat(chunks), *labels), data.test)
        latents.device = data.device
        return latents.train_iter(batch_size, seed)

    # ---- data scaling: images live in [0, 1] outside, [-1, 1] inside, or as VAE latents -----
    def to_model(self, x: Tensor) -> Tensor:
        if self.vae is not None:
            if x.dim() == 2:  # already latents (train_batches encoded the dataset)
                return x.float()
            with torch.no_grad():
                return self.vae.encode(x)[0].float()  # the posterior mean, (B, latent)
        return self.to_signed(x)

    def from_model(self, x: Tensor) -> Tensor:
        if self.vae is not None:
            return self.vae.mean_image(x).clamp(0, 1)
        return self.from_signed(x)

    def training_step(self, batch: Batch, step: int, noise: Noise = LOCAL) -> Iterator[Stage]:
        x = self.to_model(batch[0])
        t = self.train_times(x, noise)
        loss = self.per_sample_loss(x, t, noise.randn_like(x), self.train_labels(batch, noise))
        loss = loss.mean()
        yield Stage("model", loss, {"loss": loss.detach()})

    def train_times(self, x: Tensor, noise: Noise) -> Tensor:
        """(B,) training times drawn through `noise`: the family's own distribution."""
        raise NotImplementedError

    def train_labels(self, batch: Batch, noise: Noise = LOCAL) -> Tensor | None:
        """The batch's labels with a `cond_drop` share replaced by the "no label" index."""
        y = self.condition_of(batch)
        if y is None:
            return None
        drop = noise.rand_like(y[:, 0].float() if y.dim() == 2 else y.float()) < self.cfg.cond_drop
        drop = drop.view(-1, *([1] * (y.dim() - 1)))
        return torch.where(drop, self.null_condition(y), y)

    def guided(self, x: Tensor, t: Tensor, y: Tensor | None, guidance: float) -> Tensor:
        """The network's prediction, with classifier-free guidance: u + w (c - u), where c is the
        conditional and u the unconditional prediction (w = 1: c alone, w = 0: u alone)."""
        if y is None or guidance == 1.0:
            return self.net(x, t, y)
        null = self.null_condition(y)
        if guidance == 0.0:
            return self.net(x, t, null)
        both = self.net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
        cond, uncond = both.chunk(2)
        return uncond + guidance * (cond - uncond)

    def evals_per_call(self, y: Tensor | None, guidance: float) -> int:
        """Network evaluations per denoising call (guidance needs two, batched together)."""
        return 2 if y is not None and guidance not in (0.0, 1.0) else 1

    def quarter_losses(
        self, x: Tensor, y: Tensor | None, draw_times: Callable[[int, int], Tensor]
    ) -> dict[str, Tensor]:
        """Summed test loss in each quarter of the time range (`draw_times(q, b)` draws b times
        in quarter q), their mean as "loss", and "n": what evaluate reports for both families."""
        b = x.shape[0]
        out: dict[str, Tensor] = {"n": torch.tensor(float(b), device=x.device)}
        for q in range(QUARTERS):
            t = draw_times(q, b)
            out[f"loss_q{q + 1}"] = self.per_sample_loss(x, t, torch.randn_like(x), y).sum()
        out["loss"] = sum(out[f"loss_q{q + 1}"] for q in range(QUARTERS)) / QUARTERS
        return out

    # ---- sampling: one loop for both families, each giving its plan and its step ----------
    @torch.no_grad()
    def sample(
        self, n: int, *, generator: torch.Generator | None = None, **options: Any
    ) -> SampleResult:
        """`n` samples (one grid row per class of `classes` for a conditional model), with
        the options `sampler`, `steps`, `guidance` (and diffusion's `eta`)."""
        result = self.sample_batch([Request(n, generator, options)])[0]  # type: ignore[arg-type]
        assert result is not None
        return result

    def batch_key(self, options: dict[str, Any]) -> Any:
        """Requests with the same sampler, steps, guidance and eta share a batch; their classes
        may differ (labels are per row)."""
        return self.sampler_settings(options)

    @torch.no_grad()
    def sample_batch(
        self, requests: list[Request], more: More | None = None
    ) -> list[SampleResult | None]:
        """Every request's rows through one sampling loop: each request's noise from its own
        generator; after each step, `on_step` and the rows of cancelled requests dropped."""
        settings = self.sampler_settings(requests[0].options)
        sampler, steps, guidance, _ = settings
        labels = [self.sample_labels(r.n, r.options.get("classes"), prompts_of(r.options))
                  for r in requests]  # fmt: skip
        draws = Draws([r.generator for r in requests], [count for count, _, _ in labels])
        x = draws.randn((sum(draws.rows), *self.latent_shape), self.device)
        y = torch.cat([ys for _, ys, _ in labels]) if self.conditioned else None  # type: ignore[misc]
        plan, live = self.sampling_plan(sampler, steps), list(range(len(requests)))
        for k, item in enumerate(plan):
            x = self.sampling_step(x, y, item, settings, draws)
            for i in live:
                if requests[i].on_step is not None:
                    requests[i].on_step(k + 1, len(plan))  # type: ignore[misc]
            still = [i for i in live if not requests[i].cancelled()]
            if len(still) < len(live):
                rows = draws.row_index([live.index(i) for i in still])
                x, y = x[rows], (y[rows] if y is not None else None)
                draws, live = draws.keep([live.index(i) for i in still]), still
            if not live:
                return [r.deliver(None) for r in requests]
        samples = self.from_model(x.float())
        nfe = self.sampling_nfe(sampler, steps) * self.evals_per_call(y, guidance)
        about = self.describe_sampler(sampler, steps)
        out: list[SampleResult | None] = [None] * len(requests)
        for i, part in zip(live, samples.split(draws.rows), strict=True):
            out[i] = self.as_result(part, labels[i][2], about, nfe)
        return [r.deliver(result) for r, result in zip(requests, out, strict=True)]

    def sampler_settings(self, options: dict[str, Any]) -> tuple[str, int, float, float]:
        """(sampler, steps, guidance, eta) from a sample call's options, or the config's."""
        sampler, steps, guidance = self.sampling_options(
            options.get("sampler"), options.get("steps"), options.get("guidance"),
            self.conditioned,
        )  # fmt: skip
        eta = options.get("eta")
        return (
            sampler,
            steps,
            guidance,
            float(getattr(self.cfg, "eta", 0.0) if eta is None else eta),
        )

    def sampling_plan(self, sampler: str, steps: int) -> list[Any]:
        """What each step of the sampler needs (its times)."""
        raise NotImplementedError

    def sampling_step(self, x: Tensor, y: Tensor | None, item: Any,
                      settings: tuple[str, int, float, float], draws: Draws) -> Tensor:  # fmt: skip
        """One step of the sampler from x along the plan's `item`."""
        raise NotImplementedError

    def sampling_nfe(self, sampler: str, steps: int) -> int:
        """Network calls per sample for the sampler, without guidance's doubling."""
        return steps

    def sample_labels(
        self, n: int, classes: list[int] | None, prompts: list[str] | None = None
    ) -> tuple[int, Tensor | None, int]:
        """Conditions for about `n` samples: one grid row per class (of `classes`, default
        all) or per prompt (a text model; default: the dataset's example captions)."""
        if self.captions is None:
            if prompts:
                raise ConfigError(
                    f"bad value for 'prompt': model '{self.cfg.name}' takes no text",
                    hint="pass classes= to a class-conditional model, or train one with "
                    "model.text=true on captioned data",
                )
            return class_rows(self.num_classes, n, classes, self.device)
        if classes is not None:
            raise ConfigError(f"bad value for 'classes': model '{self.cfg.name}' draws from "
                              "captions", hint="pass prompt= or prompts=")  # fmt: skip
        prompts = list(prompts or self.captions["examples"])
        for p in prompts:
            if not p.strip():
                raise ConfigError(
                    "bad value for 'prompt': it is empty",
                    hint='describe the image: prompt="a small red circle"',
                )
        ids = encode_captions(prompts, self.captions["length"], self.captions)  # fits the window
        if follows_grammar(self.captions):
            for p in prompts:
                parse(p)  # a caption of the grammar, or one line saying what it takes
        per = max(1, n // len(prompts))
        ids = ids.repeat_interleave(per, dim=0)
        return per * len(prompts), ids.to(self.device), per

    def sampling_options(self, sampler: str | None, steps: int | None, guidance: float | None,
                         conditional: bool) -> tuple[str, int, float]:  # fmt: skip
        """The sample call's options, or the config's; a bad choice is one clear line."""
        sampler = sampler or self.cfg.sampler
        steps = int(steps if steps is not None else self.cfg.steps)
        guidance = float(guidance if guidance is not None else self.cfg.guidance)
        if sampler not in self.samplers:
            raise ConfigError(
                f"bad value for 'sampler': '{sampler}' does not fit model '{self.cfg.name}'; "
                f"choose from: {', '.join(self.samplers)}"
            )
        check(steps >= 1, "steps", f"{steps} must be >= 1")
        if guidance != self.cfg.guidance and not conditional:
            raise ConfigError(
                f"bad value for 'guidance': {guidance} needs a class-conditional model; this "
                "one is unconditional",
                hint="train with model.conditional=true, or leave guidance out",
            )
        return sampler, steps, guidance

    # ---- export ------------------------------------------------------------------------------
    def network_time(self, t: Tensor) -> Tensor:
        """The family's time as the network takes it (flows scale theirs)."""
        return t

    def example_times(self, n: int) -> Tensor:
        raise NotImplementedError

    #: what the denoiser graph's t and prediction are, for the model card
    time_about = ""

    def onnx_graphs(self) -> list[OnnxGraph]:
        """The network (x_t, t, y → its prediction); the sampler's loop stays outside, so any
        step count or sampler runs on it. Latent diffusion adds the VAE's decoder graph."""

        shape, k, text = list(self.latent_shape), self.num_classes, self.captions

        def example(n: int) -> dict[str, Tensor]:
            x = {"x_t": torch.randn(n, *shape), "t": self.example_times(n)}
            if text:
                ids = torch.randint(2, text["vocab"], (n, text["length"]))
                ids[:, 0], ids[:, text["length"] // 2 :] = START, 0
                return {**x, "y": ids}
            return {**x, "y": torch.randint(0, k + 1, (n,))} if k else x

        names = ["x_t", "t", "prediction", *(["y"] if k or text else [])]
        about = f"x_t (batch, {', '.join(map(str, shape))}), {self.time_about}"
        if k:
            about += f", y (batch,) class in [0, {k}), {k} = no label (unconditional)"
        if text:
            about += (f", y (batch, {text['length']}) caption ids: {START}, then each character's "
                      "index in the tokenizer's alphabet + 2, then 0 (padding)")  # fmt: skip
        graphs = [OnnxGraph("denoiser", _Denoise(self), example, ["prediction"],
                            {n: {0: "batch"} for n in names}, about)]  # fmt: skip
        if self.vae is not None:
            graphs.append(decoder_graph(self.vae))
        return graphs


def prompts_of(options: dict[str, Any]) -> list[str] | None:
    """A sample call's prompts: `prompts` (one grid row each) or one `prompt`."""
    if options.get("prompts"):
        return [str(p) for p in options["prompts"]]
    prompt = options.get("prompt")
    return None if prompt is None else [str(prompt)]


def caption_spec_of(cfg: Any, data: DataSpec) -> dict[str, Any] | None:
    """The captions a `model.text` model reads (from the data spec), or None."""
    if not cfg.text:
        return None
    captions = data.extra.get("captions")
    if not captions or data.kind != "image":
        raise ConfigError("model.text needs captioned images",
                          hint="use dataset=captioned_shapes or dataset=caption_folder, or "
                          "model.text=false")  # fmt: skip
    if cfg.conditional:
        raise ConfigError(
            "model.text and model.conditional both pick a condition",
            hint="captions carry the classes: use model.conditional=false",
        )
    check(cfg.text_width >= 8 and cfg.text_width % 4 == 0, "model.text_width",
          f"{cfg.text_width} must be a multiple of 4, at least 8")  # fmt: skip
    check(cfg.text_layers >= 1, "model.text_layers", f"{cfg.text_layers} must be >= 1")
    return dict(captions)


def frozen_autoencoder(cfg: Any, data: DataSpec) -> Any:
    """The VAE of latent diffusion, frozen, built from `autoencoder_config`. The model never
    reads a run itself: when a run starts, the builder loads the `autoencoder` run, records its
    config here and its weights into the VAE (`part_runs`); a checkpoint carries both."""

    if data.kind != "image":
        raise ConfigError("latent diffusion (model.autoencoder) needs image data")
    if not cfg.autoencoder_config:
        raise ConfigError(
            "latent diffusion needs its autoencoder run loaded by the builder",
            hint="build the model with store.runs.build_with_parts, or pass model.autoencoder",
        )
    name = cfg.autoencoder_config["model"].get("name")
    if name != "vae":
        raise ConfigError(
            f"bad value for 'model.autoencoder': {cfg.autoencoder} is a run of model "
            f"'{name}', not a VAE",
            hint="train one with `aigc train model=vae` on the same dataset",
        )
    spec = DataSpec.from_dict(cfg.autoencoder_config["spec"])
    vae = VAE(
        validate("model.autoencoder_config", VAE.Config, cfg.autoencoder_config["model"]), spec
    )
    if list(vae.spec.shape) != list(data.shape):
        raise ConfigError(
            f"bad value for 'model.autoencoder': the VAE was trained on {vae.spec.shape} data, "
            f"this dataset is {list(data.shape)}",
            hint="train the VAE on the same dataset and image size",
        )
    return vae.eval().requires_grad_(False)


class _Denoise(nn.Module):
    def __init__(self, model: DenoisingModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        return self.model.net(x_t, self.model.network_time(t), y).float()
