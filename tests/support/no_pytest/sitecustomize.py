"""Put on PYTHONPATH to make ``import pytest`` fail, as in an environment without the test extra."""

import sys


class _NoPytest:
    def find_spec(self, name, path=None, target=None):
        if name == "pytest" or name.startswith(("pytest.", "_pytest")):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NoPytest())
