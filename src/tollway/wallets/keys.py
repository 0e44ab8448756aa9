"""Wallet signing keys, encrypted at rest with AES-256-GCM.

The encryption key comes from the environment (``[wallets] key_env``, by
default ``TOLLWAY_WALLET_KEY``: 32 bytes, base64 or hex), never from the
database or tollway.toml. Each ciphertext is ``v1:<base64(nonce + sealed)>``
with the wallet id as associated data, so a key copied onto another wallet's
row does not decrypt.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tollway.core.errors import ErrorType, TollwayError


def _not_configured(env: str, why: str) -> TollwayError:
    return TollwayError(
        ErrorType.API,
        "wallet_keys_not_configured",
        f"wallet signing keys need a 32-byte encryption key in ${env} (base64 or hex): {why}",
        status=409,
    )


def master_key(env: str) -> bytes:
    raw = os.environ.get(env, "").strip()
    if not raw:
        raise _not_configured(env, "it is not set")
    for decode in (bytes.fromhex, base64.b64decode):
        try:
            key = decode(raw)
        except (ValueError, binascii.Error):
            continue
        if len(key) == 32:
            return key
    raise _not_configured(env, "it is not 32 bytes")


def seal(master: bytes, wallet_id: str, private_key: bytes) -> str:
    nonce = secrets.token_bytes(12)
    sealed = AESGCM(master).encrypt(nonce, private_key, wallet_id.encode())
    return "v1:" + base64.b64encode(nonce + sealed).decode()


def open_sealed(master: bytes, wallet_id: str, text: str) -> bytes:
    if not text.startswith("v1:"):
        raise ValueError("unknown key format")
    blob = base64.b64decode(text[3:])
    return AESGCM(master).decrypt(blob[:12], blob[12:], wallet_id.encode())
