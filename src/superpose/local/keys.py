"""The deployer keys a lattice started on this machine trusts from its first start."""

from __future__ import annotations

import contextlib
import getpass
import socket
import time

from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from superpose import config, protocol
from superpose.lattice import signing


async def trust_home_key(trust: KeyValue, *, home: bool = True) -> None:
    """The lattice this machine starts trusts the user's deployer key and (``home``) its
    home folder's (each made on first start, 0600), so deploys and scripts of whoever
    started it sign with no step. A private embedded lattice makes no home key."""
    who = f"{getpass.getuser()}@{socket.gethostname()}"
    keys = {signing.load_or_create(signing.user_key_file()).public_key: who}
    home_key = signing.key_file(config.settings().home)
    if home or home_key.exists():  # a script run where `up` ran before signs with it
        keys[signing.load_or_create(home_key).public_key] = f"{who} (home {home_key.parents[1]})"
    for public_key, name in keys.items():
        record = protocol.TrustedKey(name=name, added=time.time())
        with contextlib.suppress(KeyWrongLastSequenceError):  # trusted already
            await trust.create(public_key, record.as_json())
