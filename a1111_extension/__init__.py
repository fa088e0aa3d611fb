"""A1111 / Forge extension: model adapter, uncond replacement, ReNeg script, training tab, settings.

Only :mod:`.uncond`, :mod:`.model_adapter` and :mod:`.tiny_checkpoint` are importable without the webui; the
webui-facing modules (:mod:`.script`, :mod:`.tab`, :mod:`.callbacks`, :mod:`.settings`) import ``modules.*`` and
are loaded by ``scripts/reneg_a1111.py`` inside the webui only.
"""
