"""ComfyUI adapter and nodes. Modules that import ComfyUI (``model_adapter``, ``nodes``, ``*_run``) are only
imported inside a running ComfyUI; ``conditioning``, ``files`` and ``progress`` are plain Python (tested in CI)."""
