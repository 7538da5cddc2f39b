"""Package discovery only; metadata lives in pyproject.toml.

The folder ``server/`` is installed as ``stunturn_server`` (not a bare ``server``
module that could clash with other projects in site-packages).
"""
from setuptools import find_packages, setup

client = find_packages(include=["stunturn_diag", "stunturn_diag.*"])
server = ["stunturn_server"] + [
    "stunturn_server." + name for name in find_packages(where="server")
]
setup(
    packages=client + server,
    package_dir={"stunturn_server": "server"},
)
