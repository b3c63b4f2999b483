"""Image model families, one module each: what the trainer asks of a family of base pipelines.

A family module names the pipeline class(es) it recognises and answers, for a loaded pipeline
of that class: the denoiser and its LoRA targets, prompt encoding (cacheable per caption), latent
preparation, the training objective with its deterministic validation loss, the native size,
the sampling defaults, and the adapter exports with their load-back check.

- ``flux``: FLUX.1 schnell and dev (``FluxPipeline``), flow matching, kohya single-file export.
- ``sd3``: Stable Diffusion 3 / 3.5 (``StableDiffusion3Pipeline``), flow matching, alpha-baked
  diffusers-layout single file.
- ``flow``: the flow-matching objective both share; ``adapters``: LoRA on a transformer
  denoiser, its diffusers file and the load-back check.

The SD 1.x/2.x and SDXL families still live in ``trainer/image/pipelines.py`` and ``train.py``;
the registry that picks a family module for a pipeline folder comes in a later step.
"""
