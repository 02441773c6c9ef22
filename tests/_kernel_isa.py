"""A fixture that runs a test once per hand-written kernel path this CPU has.

The C core's hand-written kernels (SiLU, depthwise weight gradient, dropout, the
attention gates...) exist as AVX-512, AVX2 and plain-C variants chosen at run time
(csrc/core/lk_cpu.h). Tests that use `kernel_isa` run with each path forced in turn,
so a wheel built on one machine is checked for what every other machine runs. The
list holds only the paths this CPU has (plain C always), so nothing is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import leukemia

KERNEL_ISAS = leukemia.kernel_isas()


@pytest.fixture(params=KERNEL_ISAS)
def kernel_isa(request: pytest.FixtureRequest) -> Iterator[str]:
    """Force the kernel path named by the parameter; restore the previous one after."""
    before = leukemia.get_kernel_isa()
    assert leukemia.set_kernel_isa(request.param) == request.param
    try:
        yield request.param
    finally:
        leukemia.set_kernel_isa(before)
