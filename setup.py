"""Build hook for the optional C extension; everything else is in pyproject.toml.

``emu.arm._syshook`` filters the MRS/MSR/SYS instruction hooks in C. It is optional: where
it cannot be compiled, emu installs and runs with the same filter in Python, only slower.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("emu.arm._syshook", ["emu/arm/_syshook.c"], optional=True)])
