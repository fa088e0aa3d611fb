"""X/Y/Z plot axes "[ReNeg] Embedding" and "[ReNeg] Strength" (how A1111 users compare negatives).

Added to the built-in ``scripts/xyz_grid.py`` (found among the loaded scripts by module name, as other
extensions do) from an ``on_before_ui`` callback, i.e. before the X/Y/Z plot builds its axis dropdowns. An axis
value is stored on the cell's processing object (:data:`.script_logic.OVERRIDES_ATTR`); the ReNeg script applies
it over its accordion settings: an embedding value enables ReNeg with that file (``(none)`` = without ReNeg),
a strength value sets the strength for the accordion's (or the embedding axis's) file.
"""
from __future__ import annotations

from modules import scripts

from .script_logic import NO_EMBEDDING, OVERRIDES_ATTR

LABEL_EMBEDDING = "[ReNeg] Embedding"
LABEL_STRENGTH = "[ReNeg] Strength"


def _xyz_module():
    for data in scripts.scripts_data:
        if data.script_class.__module__ in ("xyz_grid.py", "xyz_grid") and hasattr(data.module, "AxisOption"):
            return data.module
    return None


def _apply(field: str, cast):
    def apply(p, x, xs):
        overrides = dict(getattr(p, OVERRIDES_ATTR, None) or {})
        overrides[field] = cast(x)
        setattr(p, OVERRIDES_ATTR, overrides)

    return apply


def _format_embedding(p, opt, x):
    return f"ReNeg: {x}"


def add_axes() -> bool:
    """Add the ReNeg axes once; False when the X/Y/Z plot script is not loaded."""
    xyz = _xyz_module()
    if xyz is None:
        return False
    if any(getattr(o, "label", "").startswith("[ReNeg]") for o in xyz.axis_options):
        return True
    from .script import embedding_names

    xyz.axis_options.extend([
        xyz.AxisOption(LABEL_EMBEDDING, str, _apply("embedding", str), format_value=_format_embedding,
                       choices=lambda: [NO_EMBEDDING] + embedding_names()),
        xyz.AxisOption(LABEL_STRENGTH, float, _apply("strength", float)),
    ])
    return True
