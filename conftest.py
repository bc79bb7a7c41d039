"""Pytest, at the repository root.

The root is a ComfyUI custom-node folder, so it has an ``__init__.py``; pytest would take it for a test
package and import it under the clone's folder name, which fails for names such as
``comfyui-interleave-thinker``. Collect it as a plain directory instead; the tests import the installed
``interleave_thinker`` package.
"""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent


class _RootIsNotATestPackage:
    @pytest.hookimpl(tryfirst=True)
    def pytest_collect_directory(self, path, parent):
        if path.resolve() == ROOT:
            return pytest.Dir.from_parent(parent, path=path)
        return None


def pytest_configure(config):
    # Registered as a plugin, not left as a conftest hook: the root folder itself is collected with the hooks
    # of its parent folder, where a conftest's hooks do not reach.
    config.pluginmanager.register(_RootIsNotATestPackage(), "interleave-thinker-root")
