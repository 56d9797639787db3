"""The one compiled part: the fan-out's inner loop (trio_sfu/media/_fastpath.c).

Optional: where it cannot be built (no C compiler or Python headers), the install still succeeds and
trio_sfu.media.fanout uses its Python path, which gives the same packets, only slower.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "trio_sfu.media._fastpath",
            sources=["trio_sfu/media/_fastpath.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall"],
        )
    ]
)
