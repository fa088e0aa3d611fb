"""A1111 / Forge extension: model adapter, uncond replacement, ReNeg script, training tab, settings.

Only :mod:`.uncond` and :mod:`.model_adapter` are importable without the webui (the tests' tiny A1111 checkpoints
live in ``tests/a1111_tiny_checkpoint.py``); the webui-facing modules (:mod:`.script`, :mod:`.tab`,
:mod:`.callbacks`, :mod:`.settings`) import ``modules.*`` and are loaded by ``scripts/reneg_a1111.py`` inside the
webui only.
"""
