"""The model a run starts from: a Hugging Face hub id, an s3:// prefix, or `scratch:<size>`."""
from __future__ import annotations

import logging

from ..protocol.runconfig import SCRATCH_PRESETS

log = logging.getLogger(__name__)

# The quantile head of the published Chronos-2 models; scratch models get the same one so their
# forecasts can be scored and loaded exactly like a fine-tuned hub model's.
CHRONOS2_QUANTILES = [0.01, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5,
                      0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99]
PATCH = 16


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def scratch_config(size: str, context_length: int):
    """A Chronos-2 config with random weights to come. The two class names are what let the
    saved folder load through Chronos2Pipeline.from_pretrained, from disk or from s3://."""
    from chronos.chronos2 import Chronos2CoreConfig

    return Chronos2CoreConfig(
        **SCRATCH_PRESETS[size],
        architectures=["Chronos2Model"],
        chronos_pipeline_class="Chronos2Pipeline",
        chronos_config=dict(
            context_length=context_length,
            input_patch_size=PATCH,
            input_patch_stride=PATCH,
            output_patch_size=PATCH,
            quantiles=list(CHRONOS2_QUANTILES),
            use_reg_token=True,
            use_arcsinh=True,
            max_output_patches=64,
            time_encoding_scale=context_length,
        ),
    )


def build_scratch(size: str, context_length: int, seed: int = 0, on: str | None = None):
    import torch
    from chronos.chronos2 import Chronos2Model, Chronos2Pipeline

    torch.manual_seed(seed)
    model = Chronos2Model(scratch_config(size, context_length))
    return Chronos2Pipeline(model=model.to(on or device()))


def load_base(base: str, *, context_length: int, seed: int = 0, on: str | None = None):
    """The base pipeline on the training device.

    s3:// goes through Chronos's own loader (a plain boto3 client, so AWS_ENDPOINT_URL reaches a
    sandbox); it is always re-downloaded, as a prefix may have been overwritten since the last run.
    """
    from chronos.chronos2 import Chronos2Pipeline

    on = on or device()
    if base.startswith("scratch:"):
        log.info("base model: %s (random init, %s)", base, SCRATCH_PRESETS[base.split(":", 1)[1]])
        return build_scratch(base.split(":", 1)[1], context_length, seed, on)
    log.info("base model: loading %s", base)
    if base.startswith("s3://"):
        from chronos import BaseChronosPipeline

        pipeline = BaseChronosPipeline.from_pretrained(base, force_s3_download=True)
    else:
        pipeline = Chronos2Pipeline.from_pretrained(base)
    if not isinstance(pipeline, Chronos2Pipeline):
        raise TypeError(f"{base} is a {type(pipeline).__name__}, not a Chronos-2 model; only Chronos-2 can be fine-tuned here")
    pipeline.model.to(on)
    return pipeline


def load_trained(folder, on: str | None = None):
    """A model that training saved on this machine (another process's, in a data-parallel run)."""
    from chronos.chronos2 import Chronos2Pipeline

    pipeline = Chronos2Pipeline.from_pretrained(folder)
    pipeline.model.to(on or device())
    return pipeline
