"""The stored password hashes the gateway accepts, as text: bcrypt and argon2id (version 19).

One definition for the policy loader (a user's `password`) and the htpasswd backend.
"""

from __future__ import annotations

import re

# `$2a$`, `$2b$` or `$2y$`, a cost of 4 to 31, then 22 characters of salt and 31 of hash.
BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
# argon2id only (argon2i and argon2d are not for passwords), version 19, any parameters.
ARGON2ID = re.compile(
    r"\$argon2id\$v=19\$m=[0-9]+,t=[0-9]+,p=[0-9]+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+"
)
