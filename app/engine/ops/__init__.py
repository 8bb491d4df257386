"""Pure tensor ops: ``Tensor -> Tensor`` functions that shape and initialise target tensors.

``adapt`` holds the shape ops a recipe names (channels, resize, interpolate) and the dtype
cast; ``initialize`` the seeded init functions. Each checks shapes before any data is read,
computes in float32 and returns the original dtype.
"""
