"""The one thing pyproject.toml cannot say: the compressor's C extension, linked against the system libjpeg.

Debian: ``apt-get install gcc libjpeg62-turbo-dev`` (scripts/install.sh and the Dockerfile do it). The module
re-quantises JPEGs in the DCT domain; see docs/jpeg-fast-path.md.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "services.compressor._jpegdct",
            sources=["services/compressor/_jpegdct.c"],
            libraries=["jpeg"],
            # -ffp-contract=off: the float re-quantisation must not be fused into FMAs where a CPU has them (arm64):
            # it is exact only with each operation rounded on its own (see _jpegdct.c)
            extra_compile_args=["-O3", "-ffp-contract=off", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
        )
    ]
)
