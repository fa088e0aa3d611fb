"""Progress bar, previews and interrupt for long-running nodes (plain Python; ComfyUI hooks are injected).

ComfyUI's progress hook itself raises ``InterruptProcessingException`` (and clears the flag) when the user
interrupts. The engine's loops must instead *see* the interrupt through ``should_stop`` so they can save a
partial result; :class:`Reporter` therefore turns an interrupt raised by a bar update back into the flag, and
the node raises the interrupt after the engine returned (:meth:`Reporter.raise_if_interrupted`). The interrupt
is never swallowed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..core.images import to_pil_images

#: Longest side of preview images sent to the browser.
PREVIEW_SIZE = 512


def tensor_to_pil(images: torch.Tensor):
    """First image of a BCHW (or CHW) float tensor in [0, 1] as a PIL RGB image."""
    return to_pil_images(images[:1] if images.dim() == 4 else images)[0]


def bchw_to_comfy_image(images: torch.Tensor) -> torch.Tensor:
    """BCHW [0,1] -> ComfyUI ``IMAGE`` (BHWC float32 on CPU)."""
    return images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).contiguous().cpu()


@dataclass
class Reporter:
    """``update(value, total, preview_tuple_or_None)`` is ``ProgressBar.update_absolute``;
    ``interrupted()`` peeks at the flag; ``rearm()`` sets it again; ``raise_interrupt()`` raises and clears it."""

    total: int
    update: Callable[[int, int, Optional[tuple]], None]
    interrupted: Callable[[], bool]
    rearm: Callable[[], None]
    raise_interrupt: Callable[[], None]
    interrupt_type: type[BaseException] = KeyboardInterrupt

    def step(self, value: int, preview: Optional[torch.Tensor] = None) -> None:
        """Advance the bar to ``value`` (with an optional BCHW preview); never raises on interrupt."""
        if self.interrupted():
            return
        shown = ("JPEG", tensor_to_pil(preview), PREVIEW_SIZE) if preview is not None else None
        try:
            self.update(min(value, self.total), self.total, shown)
        except self.interrupt_type:
            self.rearm()  # the hook consumed the flag: put it back for should_stop / raise_if_interrupted

    def should_stop(self) -> bool:
        return self.interrupted()

    def raise_if_interrupted(self) -> None:
        if self.interrupted():
            self.raise_interrupt()


def comfy_reporter(total: int, node_id: str | None = None) -> Reporter:
    """A :class:`Reporter` wired to ComfyUI's ``ProgressBar`` and interrupt flag (call inside ComfyUI only)."""
    import comfy.model_management as mm
    import comfy.utils

    bar = comfy.utils.ProgressBar(total, node_id=node_id)
    return Reporter(total=total, update=bar.update_absolute, interrupted=mm.processing_interrupted,
                    rearm=lambda: mm.interrupt_current_processing(True),
                    raise_interrupt=mm.throw_exception_if_processing_interrupted,
                    interrupt_type=mm.InterruptProcessingException)
