"""The sandbox world: procedural scenes with ground truth, for demos and honest evaluation.

Importing the package adds ``demo``, ``eval`` and the ``sandbox`` generator to the ``interleave-thinker``
command line; the heavy parts load only when a command runs.
"""

from .cli import install as _install

_install()
