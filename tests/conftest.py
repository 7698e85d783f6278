"""Suite-wide settings.

The suite runs on small CPU machines where torchrun tests start several processes at once;
OpenMP's default spin-waiting then makes small ops (BatchNorm, depthwise convs) orders of
magnitude slower. Passive waiting must be set before the OpenMP runtime starts, i.e. before
torch is imported by any test module; child processes inherit it.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
