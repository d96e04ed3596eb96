"""NATS passwords nats-server can read from its environment (deploy/nats-auth.conf names them
as ``$NATS_PASSWORD_<USER>``, which it parses as a config value)."""

from __future__ import annotations

import string

from services.core.nats_auth import IDENTITIES, new_password, new_passwords


def test_a_password_never_starts_like_a_number() -> None:
    # token_urlsafe alone starts with a digit, "-" or "_" one time in six; "0-..." then reads as
    # a date and "-..." as a negative number, and nats-server does not start (a CI flake).
    for _ in range(2000):
        password = new_password()
        assert password[0] in string.ascii_letters, password
        assert len(password) >= 43  # 256 random bits, URL-safe base64


def test_every_identity_gets_its_own_password() -> None:
    passwords = new_passwords()
    assert set(passwords) == set(IDENTITIES)
    assert len(set(passwords.values())) == len(passwords)
