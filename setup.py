"""The one C extension (everything else is in pyproject.toml): the hot part
of a pause, agent/_pause.c. Optional: without a compiler the package still
installs, and agent/ptrace.py runs the same steps in Python, slower."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("agent._pause", ["agent/_pause.c"], extra_compile_args=["-O2", "-Wall"],
                             optional=True)])
