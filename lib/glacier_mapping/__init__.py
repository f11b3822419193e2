"""glacier_mapping: a reproducible re-derivation of GlaViTU glacier mapping (Maslov et al.).

Importing the package does not import TensorFlow; the first module that does imports it with
its C++ start-up banner silenced (see :mod:`glacier_mapping._tensorflow_banner`).
"""

from glacier_mapping._tensorflow_banner import mute_tensorflow_import

__version__ = "0.1.0"

mute_tensorflow_import()
