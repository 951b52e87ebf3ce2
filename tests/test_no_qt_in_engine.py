"""``lsr`` and every ``lsr.*`` module import with Qt and napari unavailable."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_engine_imports_without_qt():
    code = textwrap.dedent(
        """
        import importlib, pkgutil, sys

        BLOCKED = ("PyQt5", "PyQt6", "PySide2", "PySide6", "qtpy", "napari", "magicgui",
                   "superqt", "vispy")

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"blocked in this test: {name}")
                return None

        sys.meta_path.insert(0, Block())
        import lsr
        names = [m.name for m in pkgutil.walk_packages(lsr.__path__, "lsr.")]
        names = [n for n in names if n != "lsr.__main__"]
        for name in names:
            importlib.import_module(name)
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not leaked, leaked
        print(len(names))
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert int(res.stdout.strip()) >= 3  # counttable, errors, atomic, cli, ...
