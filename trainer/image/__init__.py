"""Image LoRA training for Stable Diffusion 1.x/2.x and SDXL.

``data`` reads and checks datasets, ``augment`` holds the kornia pipeline, ``pipelines`` loads
the model families, ``train`` runs the loop, ``export`` writes diffusers and kohya files and
``sample`` draws image grids from a finished run.
"""
