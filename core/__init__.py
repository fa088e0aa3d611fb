"""Host-agnostic ReNeg engine. Never imports ComfyUI or A1111."""
