"""Secrets at rest: what the database stores of a secret is a Fernet token, never the secret.

The key is ``GRAFT_SECRET_KEY`` (a Fernet key: 32 url-safe base64-encoded bytes). Without it,
one is generated the first time it is needed and kept in ``secret.key`` in the storage folder
(``data/blobs/secret.key`` by default), created with mode 0600; every later start reads the
same file. Several API processes on several hosts must share the key: set
``GRAFT_SECRET_KEY`` for them.

A :class:`SecretBox` travels with the :class:`~app.db.session.Database` whose sessions may
read or write secrets (``session.info["secret_box"]``), so repositories seal and open secrets
where they are stored and nothing above them ever sees a token.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import InternalError

__all__ = ["KEY_FILE_NAME", "SecretBox", "SecretKeyError", "secret_box_for", "session_box"]

KEY_FILE_NAME = "secret.key"
_SESSION_KEY = "secret_box"


class SecretKeyError(InternalError):
    """No key to seal or open secrets with, or a stored secret the key cannot open."""


class SecretBox:
    """Seals and opens secrets with one Fernet key.

    Args:
        key: a Fernet key (url-safe base64 of 32 bytes).

    Raises:
        SecretKeyError: ``key`` is not a Fernet key.
    """

    def __init__(self, key: str | bytes) -> None:
        try:
            self._fernet = Fernet(key)
        except (ValueError, TypeError) as exc:
            raise SecretKeyError(
                "GRAFT_SECRET_KEY is not a Fernet key (url-safe base64 of 32 bytes); make one "
                'with: python -c "from cryptography.fernet import Fernet; '
                'print(Fernet.generate_key().decode())"'
            ) from exc

    def seal(self, secret: str) -> str:
        """The token stored in place of ``secret``."""
        return self._fernet.encrypt(secret.encode()).decode("ascii")

    def open(self, token: str) -> str:
        """The secret a stored token holds.

        Raises:
            SecretKeyError: the token was sealed with another key, or is not a token.
        """
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode()
        except (InvalidToken, UnicodeError) as exc:
            raise SecretKeyError(
                "a stored secret cannot be opened with this GRAFT_SECRET_KEY (was the key or "
                f"its {KEY_FILE_NAME} file changed?)"
            ) from exc

    def attach(self, info: dict[object, object]) -> None:
        """Make this box the one a session with ``info`` uses."""
        info[_SESSION_KEY] = self

    @classmethod
    def load(cls, *, key: str | None, key_file: Path) -> SecretBox:
        """The configured key, else the one in ``key_file`` (created once, mode 0600).

        Raises:
            SecretKeyError: the key (configured or in the file) is not a Fernet key.
        """
        if key:
            return cls(key.strip())
        key_file.parent.mkdir(parents=True, exist_ok=True)
        fresh = Fernet.generate_key()
        with contextlib.suppress(FileExistsError):
            # O_EXCL: two processes starting at once agree on the first file written.
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(fresh + b"\n")
                out.flush()
                os.fsync(out.fileno())
        return cls(key_file.read_bytes().strip())


def secret_box_for(settings: Settings) -> SecretBox:
    """The box of ``GRAFT_SECRET_KEY``, or of the key file in the storage folder."""
    key = settings.secret_key.get_secret_value() if settings.secret_key else None
    return SecretBox.load(key=key, key_file=Path(settings.storage_dir) / KEY_FILE_NAME)


def session_box(session: Session) -> SecretBox:
    """The box of the database ``session`` belongs to.

    Raises:
        SecretKeyError: the database was opened without one (a process that should not
            touch secrets).
    """
    box = session.info.get(_SESSION_KEY)
    if not isinstance(box, SecretBox):
        raise SecretKeyError("this process opened the database without GRAFT_SECRET_KEY's box")
    return box
