"""The compiled parts: the fan-out's inner loop (trio_sfu/media/_fastpath.c) and the AES-GCM SRTP
sender (trio_sfu/transport/_srtp_gcm.c, which loads OpenSSL's libcrypto at import: no headers needed).

Optional: where they cannot be built (no C compiler or Python headers), the install still succeeds and
trio_sfu uses its Python paths (libsrtp for all SRTP), which give the same packets, only slower.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "trio_sfu.media._fastpath",
            sources=["trio_sfu/media/_fastpath.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall"],
        ),
        Extension(
            "trio_sfu.transport._srtp_gcm",
            sources=["trio_sfu/transport/_srtp_gcm.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall"],
            libraries=["dl"],
        ),
    ]
)
