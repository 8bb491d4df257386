"""Pure tensor ops: ``Tensor -> Tensor`` functions that shape and initialise target tensors.

``adapt`` holds the shape ops a recipe names (channels, resize, and the dispatch to
``interpolate`` in :mod:`.interpolate` and ``kernel_resize`` in :mod:`.kernel`, timm's
``resample_abs_pos_embed`` and ``resample_patch_embed``) and the dtype cast; ``initialize`` the
seeded init functions. Each checks shapes before any data is read, computes in float32 (or
float64) and returns the original dtype.
"""
