"""The Hugging Face Hub's conventions that both programs' cards follow.

``doppelgen card`` (a dataset's README.md) and ``doppeltrain export`` (a model folder's)
write a license id into the card's YAML header, which the Hub reads: both check it the
same way here.
"""

from __future__ import annotations

import re

from doppelgen.format.limits import shown

# A license id as the Hub lists them (cc-by-4.0, mit, apache-2.0, other, ...): no spaces,
# no line breaks, nothing YAML or Markdown could read as structure.
LICENSE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_-]*")
MAX_LICENSE_CHARS = 100


def license_problem(license: object) -> str:
    """Why `license` is not a license id ('' if it is)."""
    if not isinstance(license, str) or len(license) > MAX_LICENSE_CHARS or not LICENSE_ID.fullmatch(license):
        return f"--license must be a license id such as cc-by-4.0, mit or other, got {shown(license)}"
    return ""
