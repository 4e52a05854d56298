"""Only the optional C accelerators are declared here; everything else is in pyproject.toml.

``optional=True``: where no C compiler is available the install still succeeds
and pgjit uses the pure-Python frame scanner, relay and gate shape key (same
results, slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("pgjit.protocol._scan", ["pgjit/protocol/_scan.c"], optional=True),
        Extension("pgjit.gateway._relaycore", ["pgjit/gateway/_relaycore.c"], depends=["pgjit/policy/shape.h"], optional=True),
        Extension("pgjit.policy._shape", ["pgjit/policy/_shape.c"], depends=["pgjit/policy/shape.h"], optional=True),
        Extension("pgjit.masking._rows", ["pgjit/masking/_rows.c"], optional=True),
    ]
)
