"""A1111 / Forge entry point of the ReNeg extension (the repository root is the extension folder).

The webui executes this file without package context, so the pack is imported as the package ``reneg`` from the
extension root (reused when already imported from the same folder). This is the only scripts file that brings a
``Script`` class (``RenegScript``) into its namespace, and it registers the CFG hook, the tab and the settings once.
"""
import importlib.util
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_pack():
    """Import the extension root as package ``reneg`` (or reuse it); never puts a bare ``core`` on sys.path."""
    init = os.path.join(_ROOT, "__init__.py")
    name = "reneg"
    loaded = sys.modules.get(name)
    if loaded is not None:
        if os.path.normcase(os.path.abspath(getattr(loaded, "__file__", "") or "")) == os.path.normcase(init):
            return loaded
        # Another 'reneg' (e.g. a pip install elsewhere) is imported: load ours under a private name instead.
        other = getattr(loaded, "__file__", loaded)
        name = "reneg_webui_extension"
        if name in sys.modules:
            return sys.modules[name]
        print(f"[ReNeg] a different 'reneg' package is already imported ({other}); loading this extension as "
              f"'{name}'.", flush=True)
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[_ROOT])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


_pack = _load_pack()
_ext = importlib.import_module(_pack.__name__ + ".a1111_extension.script")
_tab = importlib.import_module(_pack.__name__ + ".a1111_extension.tab")
_settings = importlib.import_module(_pack.__name__ + ".a1111_extension.settings")
_callbacks = importlib.import_module(_pack.__name__ + ".a1111_extension.callbacks")

RenegScript = _ext.RenegScript  # registered by the webui because it is in this module's namespace

_callbacks.register(ui_tabs=_tab.on_ui_tabs, ui_settings=_settings.on_ui_settings)
