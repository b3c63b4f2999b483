"""loracord: guided LoRA fine-tuning of image and text generators, from Discord or the command line."""

__version__ = "0.1.0"
