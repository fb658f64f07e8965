"""GULP's ReaxFF (the paper's set-up), through ASE's GULP calculator.

Available only when a ``gulp`` binary is on the PATH and ``$GULP_LIB`` names its
library directory; otherwise ``get_model('gulp')`` raises ``ModelUnavailable`` with
what to install.  The relaxation is the common one (``FixSymmetry`` + cell filter +
FIRE) with GULP giving energy, forces and stress (``conp gradients``).
"""

from __future__ import annotations

import functools
import os
import shutil

from ase.calculators.calculator import Calculator

from .model import EnergyModel, ModelUnavailable, register


def make_gulp_calculator(library: str, keywords: str) -> Calculator:
    from ase.calculators.gulp import GULP

    return GULP(keywords=keywords, library=library)


@register("gulp")
def gulp(library: str = "reaxff.lib", keywords: str = "conp gradients") -> EnergyModel:
    """ReaxFF (``library``) in GULP; needs ``gulp`` on the PATH and ``$GULP_LIB``."""
    if shutil.which("gulp") is None:
        raise ModelUnavailable("GULP is not available: no `gulp` binary on the PATH. Install "
                               "GULP (https://gulp.curtin.edu.au), put `gulp` on the PATH and "
                               "set GULP_LIB to its Libraries directory")
    if "GULP_LIB" not in os.environ:
        raise ModelUnavailable("GULP_LIB is not set: point it at GULP's Libraries directory "
                               f"(the one holding {library})")
    os.environ.setdefault("ASE_GULP_COMMAND", "gulp < PREFIX.gin > PREFIX.got")
    return EnergyModel("gulp", functools.partial(make_gulp_calculator, library, keywords),
                       isolate=True, options={"library": library})
