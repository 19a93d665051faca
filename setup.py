"""Build script beside pyproject.toml (which holds the metadata and the package data): the one thing pyproject
cannot say is that the top-level conf/ and sweeps/ ship inside the package, as harness/conf and harness/sweeps.

    pip install .            # a wheel with harness/conf/**/*.yaml and harness/sweeps/*.yaml
    pip install -e .         # nothing copied: harness.paths.shipped() finds conf/ and sweeps/ in the checkout

There is one copy of each, in the repository; harness/paths.py shipped() looks inside the package first, then in
the checkout. Tests: tests/test_packaging.py.
"""
from setuptools import find_namespace_packages, setup

SHIPPED = {"harness.conf": "conf", "harness.sweeps": "sweeps"}  # package -> the top-level folder it is built from

setup(
    # every folder is a package (conf/<group>/ too: setuptools warns about data in folders that are not)
    packages=[*find_namespace_packages(include=["harness", "harness.*"]),
              *(f"{pkg}.{sub}" if sub else pkg for pkg, folder in SHIPPED.items()
                for sub in ["", *find_namespace_packages(where=folder)])],
    package_dir=SHIPPED,
)
