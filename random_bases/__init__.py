"""random_bases: neural network training in low-dimensional random bases.

Gressmann, Eaton-Rosen & Luschi, "Improving Neural Network Training in Low
Dimensional Random Bases", NeurIPS 2020.

Layers, bottom up: ``random_bases.method`` (jax + optax only) ->
``models`` and ``data`` -> ``train`` -> ``main``.
Importing this package loads only the method layer.
"""

from random_bases.method import *  # noqa: F401,F403
from random_bases.method import __all__  # noqa: F401  (re-exported)

__version__ = "0.1.0"
