"""The sandbox world: procedural scenes with ground truth, for demos, honest evaluation and the tiny agents.

Its commands (``demo``, ``eval``) and its ``sandbox`` generator are listed in ``sandbox/cli.py``; importing
the package registers nothing.
"""
