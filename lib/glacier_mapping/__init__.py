"""glacier_mapping: a reproducible re-derivation of GlaViTU glacier mapping (Maslov et al.).

Importing the package imports TensorFlow once with its C++ start-up banner silenced: with
oneDNN on (TensorFlow's default on x86 CPUs, about twice as fast here as without) TensorFlow
prints an informational line on standard error even at ``TF_CPP_MIN_LOG_LEVEL=3``, and Jupyter
kernels copy that line into every executed notebook.
"""

from glacier_mapping._tensorflow_banner import import_tensorflow_quietly

__version__ = "0.1.0"

import_tensorflow_quietly()
