"""The registry of apps, versions and aliases, kept in the ``sp_registry`` KV bucket.

Keys: ``app.<app>`` (the app exists), ``ver.<app>.<id>`` (one deployed version and
its functions; its id is its code digest plus its environment digest),
``alias.<app>.<alias>`` (alias → version id), ``env.<digest>`` (one resolved
environment, written before the first version that runs with it). Readers
keep a full in-memory mirror fed by a KV watch, so resolving a name costs no
round trip and an alias move reaches every reader in milliseconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from superpose import protocol
from superpose.errors import (
    BadRequestError,
    LatticeError,
    NotFoundError,
    UntrustedError,
    UserError,
)
from superpose.lattice import signing
from superpose.lattice.mirror import follow_bucket
from superpose.protocol import AliasRecord, Canary, Environment, Signature, Version
from superpose.registry.trust import TrustedKeys, Verdict

log = logging.getLogger("superpose.registry")
LATEST = "latest"
MIN_VERSION_PREFIX = 6
HISTORY_TIMEOUT_S = 5.0
_DIGEST_LIKE = re.compile(rf"^[0-9a-f]{{{MIN_VERSION_PREFIX},}}$")


@dataclass(frozen=True)
class Target:
    """What a name resolves to: enough for any node to run it."""

    app: str
    fn: str
    digest: str
    module: str
    qualname: str
    options: dict[str, Any] = field(default_factory=dict, hash=False)
    signature: Signature | None = field(default=None, hash=False, compare=False)
    """What arguments the function takes, when known: a call is checked against it."""
    env: str = ""
    """The environment digest its executor runs with ("" = the node's own packages)."""

    @property
    def version(self) -> str:
        """The version id: the code digest with the environment (``protocol.version_id``)."""
        return protocol.version_id(self.digest, self.env)


def session_from(
    canary: Canary | None,
    headers: Mapping[str, str] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    args: Sequence[Any] = (),
    params: Sequence[str] = (),
) -> str | None:
    """A request's session as the app's canary key names it (``header:NAME``, or
    ``arg:NAME``: the argument of that name, given by keyword or by position, which
    ``params``, the function's parameter names, tell)."""
    if canary is None or not canary.key:
        return None
    source, _, name = canary.key.partition(":")
    if source == "header" and headers is not None:
        return headers.get(name.lower()) or headers.get(name)
    if source != "arg":
        return None
    if kwargs is not None and name in kwargs:
        return str(kwargs[name])
    position = params.index(name) if name in params else len(args)
    return str(args[position]) if position < len(args) else None


def check_canary_key(key: str | None) -> None:
    if key is None:
        return
    source, colon, name = key.partition(":")
    if source not in ("header", "arg") or not colon or not name:
        raise BadRequestError(
            f"canary key {key!r} is not understood: use header:NAME (e.g. header:X-Session) "
            "or arg:NAME (e.g. arg:user_id)"
        )


def in_canary(app: str, session: str, percent: float) -> bool:
    """Consistent hashing of the session: the same session always lands on the same side,
    and each app splits independently of the others."""
    digest = hashlib.sha256(f"{app}\0{session}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10_000 < percent * 100


def _put(table: dict[str, Any], key: str, value: Any) -> None:
    """Mirror one entry: a falsy value is a deletion."""
    if value:
        table[key] = value
    else:
        table.pop(key, None)


@dataclass(frozen=True)
class AliasEntry:
    """One value an alias held: its KV revision (for compare-and-set) and its digest."""

    revision: int
    digest: str | None
    """None when the alias was deleted at this revision."""
    trusted: bool = True
    """Whether a trusted deployer signed this value (rollback goes back to those only)."""


def check_alias_name(name: str) -> None:
    """Refuse names that cannot be subject tokens or that would shadow digest prefixes.

    ``APP.FN@REF`` looks up aliases before digests, so an alias spelled like a
    digest prefix would silently hide the version it resembles.
    """
    if not protocol.is_valid_name(name):
        raise BadRequestError(
            f"alias name {name!r} is not allowed: use letters, digits, _ and -, "
            "starting with a letter or _"
        )
    if _DIGEST_LIKE.match(name):
        raise BadRequestError(
            f"alias name {name!r} looks like a version digest prefix; "
            f"pick a name that is not {MIN_VERSION_PREFIX} or more hex digits"
        )


def split_name(name: str) -> tuple[str, str, str | None]:
    """``app.fn[@version]`` → (app, fn, version)."""
    base, _, version = name.partition("@")
    app, dot, fn = base.partition(".")
    if not dot or not protocol.is_valid_name(app) or not protocol.is_valid_name(fn):
        raise BadRequestError(
            f"{name!r} is not a function name: expected APP.FN or APP.FN@VERSION "
            "(letters, digits, _ and -)"
        )
    return app, fn, version or None


class Registry:
    """Mirror of the registry bucket plus the writes deploy and aliasing need."""

    def __init__(
        self,
        kv: KeyValue,
        on_change: Callable[[str], None] | None = None,
        *,
        trust: TrustedKeys | None = None,
    ) -> None:
        self.kv = kv
        self._on_change = on_change
        self.trust = trust
        """The trusted deployer keys: without them nothing verifies, so nothing routes."""
        self.signer: Callable[[], signing.Signer] | None = None
        """The key this reader's writes (deploy, alias moves, canaries) are signed with,
        read when the first write needs it."""
        self.lattice = ""
        """The lattice's URL, for messages."""
        self.alias_records: dict[str, dict[str, AliasRecord]] = {}
        """app → {alias → the record the bucket holds}; ``aliases`` holds what is followed:
        the newest value a trusted key signed."""
        self.canary_records: dict[str, Canary] = {}
        self._verdicts: dict[str, tuple[int, str, Verdict]] = {}
        """key → (trust generation, signature, verdict): records verify once."""
        if trust is not None:
            trust.on_change(self._retrust)
        self.apps: dict[str, float] = {}
        self.versions: dict[str, dict[str, Version]] = {}
        """app → {version id → version}."""
        self.environments: dict[str, Environment] = {}
        """env digest → the resolved environment."""
        self.aliases: dict[str, dict[str, str]] = {}
        self.canaries: dict[str, Canary] = {}
        self.locks: dict[str, dict[str, str]] = {}
        """app → {dependency app → version digest} (``superpose lock``)."""
        self.pins: dict[str, dict[str, str]] = {}
        """app → {function → node id} (``superpose pin``)."""
        self.placements: dict[str, dict[str, str]] = {}
        """needs class → needs: the classes durable work has been placed by."""
        self._watch_task: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()
        self._signatures: dict[tuple[str, str], Signature | None] = {}
        """(digest, function) → its recorded signature (versions never change)."""

    async def start(self) -> None:
        """Load the whole bucket, then follow changes in the background."""
        if self.trust is not None:
            await self.trust.start()  # first: the registry's records are judged by it
        if self._watch_task is None:
            self._watch_task = asyncio.create_task(self._follow())
        await self._synced.wait()
        await self._recover_aliases()

    async def _recover_aliases(self) -> None:
        """A reader that starts after an untrusted move has no earlier value to keep: it
        looks in the alias's history (the bucket keeps 16) for the newest trusted one."""
        for app, records in list(self.alias_records.items()):
            for alias in list(records):
                if alias in self.aliases.get(app, {}):
                    continue
                try:
                    history = await self.alias_history(app, alias)
                except LatticeError as exc:  # then a call of it is refused, naming why
                    log.warning("could not read the history of alias %s of %s: %s", alias, app, exc)
                    continue
                trusted = [e.digest for e in history if e.trusted and e.digest]
                if trusted and alias not in self.aliases.get(app, {}):
                    self.aliases.setdefault(app, {})[alias] = trusted[-1]

    async def stop(self) -> None:
        task, self._watch_task = self._watch_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self.trust is not None:
            await self.trust.stop()

    async def _follow(self) -> None:
        await follow_bucket(self.kv, self._apply, self._synced, "registry")

    def _apply(self, key: str, value: bytes | None, deleted: bool) -> None:
        try:
            self._mirror(key, None if deleted else value)
        except protocol.ProtocolError as exc:  # one bad entry must not stop the mirror
            log.warning("skipping registry entry %s: %s", key, exc)
            return
        if self._on_change is not None:
            self._on_change(key)

    def _mirror(self, key: str, value: bytes | None) -> None:
        """One entry into its table; a missing or empty value is a deletion."""
        kind, _, rest = key.partition(".")
        app, _, name = rest.partition(".")
        if kind == "app":
            if value:  # an app created at 0.0 is still an app: not through _put
                self.apps[rest] = protocol.AppRecord.from_json(value).created
            else:
                self.apps.pop(rest, None)
        elif kind == "ver":
            _put(self.versions.setdefault(app, {}), name, value and Version.from_json(value))
        elif kind == "alias":
            self._mirror_alias(app, name, AliasRecord.decode(value) if value else None)
        elif kind == "canary":
            self._mirror_canary(rest, Canary.from_json(value) if value else None)
        elif kind == "lock":
            _put(self.locks, rest, value and protocol.decode_string_map(value, "lock"))
        elif kind == "pin":
            _put(self.pins.setdefault(app, {}), name, value and value.decode())
        elif kind == "place":
            _put(self.placements, rest, value and protocol.decode_string_map(value, "needs"))
        elif kind == "env":
            _put(self.environments, rest, value and Environment.from_json(value))

    # --- trust ---------------------------------------------------------------

    def _mirror_alias(self, app: str, alias: str, record: AliasRecord | None) -> None:
        records = self.alias_records.setdefault(app, {})
        if record is None:
            records.pop(alias, None)
            self.aliases.get(app, {}).pop(alias, None)
            return
        records[alias] = record
        self._follow_alias(app, alias, record)

    def _follow_alias(self, app: str, alias: str, record: AliasRecord) -> None:
        """Follow a trusted move; keep the last trusted target past an untrusted one."""
        verdict = self.alias_verdict(app, alias, record)
        followed = self.aliases.setdefault(app, {})
        if verdict.ok:
            followed[alias] = record.version
        elif followed.get(alias) != record.version and self._synced.is_set():
            log.warning(
                "alias %s of %s was moved to %s, %s: not followed (still %s)",
                alias,
                app,
                record.version[:12],
                verdict.reason,
                (followed.get(alias) or "nothing")[:12],
            )

    def _mirror_canary(self, app: str, canary: Canary | None) -> None:
        if canary is None:
            self.canary_records.pop(app, None)
            self.canaries.pop(app, None)
            return
        self.canary_records[app] = canary
        if self.canary_verdict(app, canary).ok:
            self.canaries[app] = canary

    def _retrust(self) -> None:
        """The trusted keys changed: records signed by a newly trusted key are followed."""
        for app, records in self.alias_records.items():
            for alias, record in records.items():
                self._follow_alias(app, alias, record)
        for app, canary in self.canary_records.items():
            self._mirror_canary(app, canary)

    def _verdict(self, key: str, signer: str, statement: Callable[[], bytes], sig: str) -> Verdict:
        """A record's verdict, verified once per signature and generation of the key set."""
        if self.trust is None:
            return Verdict(False, signer, "not checked: this reader knows no trusted keys")
        cached = self._verdicts.get(key)
        if cached is not None and cached[0] == self.trust.generation and cached[1] == sig:
            return cached[2]
        verdict = self.trust.verdict(signer, statement(), sig)
        self._verdicts[key] = (self.trust.generation, sig, verdict)
        return verdict

    def version_verdict(self, version: Version) -> Verdict:
        key = protocol.version_key(version.app, version.id)
        return self._verdict(key, version.signer, version.statement, version.sig)

    def alias_verdict(self, app: str, alias: str, record: AliasRecord) -> Verdict:
        key = protocol.alias_key(app, alias)
        return self._verdict(key, record.signer, lambda: record.statement(app, alias), record.sig)

    def canary_verdict(self, app: str, canary: Canary) -> Verdict:
        key = protocol.canary_key(app)
        return self._verdict(key, canary.signer, lambda: canary.statement(app), canary.sig)

    def untrusted(self, app: str) -> list[dict[str, Any]]:
        """The app's records no trusted key signed, for ``status`` and ``versions``: what
        each names, who signed it (or ``unsigned``), and what is followed instead."""
        found = []
        for alias, record in sorted(self.alias_records.get(app, {}).items()):
            verdict = self.alias_verdict(app, alias, record)
            if not verdict.ok:
                followed = self.aliases.get(app, {}).get(alias)
                found.append(_report(f"alias {alias}", record.version, verdict, followed))
        canary = self.canary_records.get(app)
        if canary is not None and not (verdict := self.canary_verdict(app, canary)).ok:
            kept = self.canaries.get(app)
            found.append(_report("canary", canary.version, verdict, kept.version if kept else None))
        for version in sorted(self.versions.get(app, {}).values(), key=lambda v: -v.created):
            if not (verdict := self.version_verdict(version)).ok:
                found.append(_report("version", version.id, verdict, None))
        return found

    def _trusted(self, version: Version) -> Version:
        """The version, if a trusted key signed it; else UntrustedError naming who did."""
        verdict = self.version_verdict(version)
        if not verdict.ok:
            raise UntrustedError(
                f"version {version.id[:12]} of {version.app} is {verdict.reason}, not by a "
                "trusted deployer key: superpose does not route to it (see `superpose "
                f"versions {version.app}`; `superpose key ls` lists the trusted keys)"
            )
        return version

    async def _signing_key(self) -> signing.Signer:
        """The key to sign a write with, once the lattice is known to trust it."""
        if self.signer is None:
            raise UserError(
                "no deployer key to sign with: this client was opened without one "
                "(superpose signs with <home>/keys/deployer.seed, or --key FILE)"
            )
        signer = self.signer()
        if self.trust is not None:
            await self.trust.ensure_trusted(signer, self.lattice)
        return signer

    async def _alias_record(self, app: str, alias: str, version: str) -> bytes:
        signer = await self._signing_key()
        record = AliasRecord(version=version, time=time.time(), signer=signer.public_key)
        record.sig = signer.sign(record.statement(app, alias))
        return record.encode()

    # --- writes --------------------------------------------------------------

    async def register(self, version: Version) -> None:
        """Record a version, signed; redeploying known code keeps its first creation time.

        ``versions`` orders and diffs versions by creation, so code deployed again
        must not jump ahead of the versions that came after it.
        """
        known = self.versions.get(version.app, {}).get(version.id)
        if known is not None:
            version.created = known.created
        signer = await self._signing_key()
        version.signer = signer.public_key
        version.sig = signer.sign(version.statement())
        await self.kv.put(
            protocol.app_key(version.app), protocol.AppRecord(created=time.time()).as_json()
        )
        key = protocol.version_key(version.app, version.id)
        await self.kv.put(key, version.as_json())
        self._apply(key, version.as_json(), False)

    async def register_environment(self, env: Environment) -> None:
        """Record a resolved environment, once: its digest names its content, so a record
        already there is the same environment and stays as it was (create-only), unless
        it does not hash to its digest: then someone else wrote it (nodes refuse it, so
        every app of that environment stopped), and this deploy writes it again."""
        key = protocol.env_key(env.digest)
        try:
            await self.kv.create(key, env.as_json())
        except KeyWrongLastSequenceError:
            entry = await self.kv.get(key)
            if _hashes_to(entry.value or b"", env.digest):
                return  # resolved before, by this deploy's code or another's
            log.warning("environment record %s was not its own: written again", env.digest[:12])
            await self.kv.update(key, env.as_json(), last=entry.revision or 0)
        self._apply(key, env.as_json(), False)

    async def set_alias(self, app: str, alias: str, digest: str) -> None:
        value = await self._alias_record(app, alias, digest)
        await self.kv.put(protocol.alias_key(app, alias), value)
        self._apply(protocol.alias_key(app, alias), value, False)

    async def move_alias(
        self, app: str, alias: str, digest: str, expected: AliasEntry | None
    ) -> None:
        """Point ``alias`` at ``digest`` only if it still holds ``expected``.

        Two people moving one alias at once must not both be told they won:
        the loser gets an error and the printed old → new stays true.
        """
        key = protocol.alias_key(app, alias)
        value = await self._alias_record(app, alias, digest)
        try:
            if expected is None or expected.digest is None:
                await self.kv.create(key, value)
            else:
                await self.kv.update(key, value, last=expected.revision)
        except KeyWrongLastSequenceError:
            raise UserError(
                f"alias {alias!r} of {app} was moved by someone else meanwhile; "
                "check `superpose versions` and run the command again"
            ) from None
        self._apply(key, value, False)

    async def _put_entry(self, key: str, value: bytes | None) -> None:
        """Write (or with None delete) one entry, and mirror it at once for this reader."""
        if value is None:
            await self.kv.delete(key)
        else:
            await self.kv.put(key, value)
        self._apply(key, value, value is None)

    async def set_canary(self, app: str, canary: Canary | None) -> None:
        """Set (signed) or clear an app's canary."""
        if canary is not None:
            signer = await self._signing_key()
            canary.time, canary.signer = time.time(), signer.public_key
            canary.sig = signer.sign(canary.statement(app))
        await self._put_entry(protocol.canary_key(app), canary.as_json() if canary else None)

    async def set_lock(self, app: str, links: dict[str, str]) -> None:
        """``app``'s runtime lockfile: dependency app → version its calls resolve to."""
        value = protocol.encode_string_map(links) if links else None
        await self._put_entry(protocol.lock_key(app), value)

    async def set_pin(self, app: str, fn: str, node: str | None) -> None:
        await self._put_entry(protocol.pin_key(app, fn), node.encode() if node else None)

    async def record_placement(self, cls: str, needs: dict[str, str]) -> None:
        """Tell the nodes a needs class is in use, so those satisfying it pull its work."""
        if self.placements.get(cls) != needs:
            await self._put_entry(protocol.placement_key(cls), protocol.encode_string_map(needs))

    # --- alias history --------------------------------------------------------

    async def alias_entry(self, app: str, alias: str) -> AliasEntry | None:
        """The alias as the bucket holds it now (not the mirror), or None."""
        try:
            entry = await self.kv.get(protocol.alias_key(app, alias))
        except KeyNotFoundError:
            return None
        return self._alias_entry(app, alias, entry.revision or 0, entry.value)

    def _alias_entry(self, app: str, alias: str, revision: int, value: bytes | None) -> AliasEntry:
        """One stored value of an alias; a malformed one counts as untrusted."""
        if not value:
            return AliasEntry(revision, None)
        try:
            record = AliasRecord.decode(value)
        except protocol.ProtocolError:
            return AliasEntry(revision, value.decode(errors="replace"), trusted=False)
        trusted = self.trust is not None and (
            self.trust.verdict(record.signer, record.statement(app, alias), record.sig).ok
        )
        return AliasEntry(revision, record.version, trusted)

    async def alias_history(self, app: str, alias: str) -> list[AliasEntry]:
        """Every value the bucket kept for the alias (up to its history), oldest first.

        Not ``kv.history()``: nats-py may send its end-of-history marker before
        entries the server already sent, which would cut the list short. The
        entry with nothing pending after it is the true end.
        """
        key = protocol.alias_key(app, alias)
        watcher = await self.kv.watch(key, include_history=True)
        entries: list[AliasEntry] = []
        try:
            async with asyncio.timeout(HISTORY_TIMEOUT_S):
                async for entry in watcher:
                    if entry is None:
                        if not entries and await self.alias_entry(app, alias) is None:
                            break
                        continue
                    deleted = entry.operation in ("DEL", "PURGE") or not entry.value
                    value = None if deleted else entry.value
                    entries.append(self._alias_entry(app, alias, entry.revision or 0, value))
                    if entry.delta == 0:
                        break
        except TimeoutError:
            raise LatticeError(
                f"the lattice did not send the history of {key} within {HISTORY_TIMEOUT_S:g} s"
            ) from None
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
        return entries

    # --- reads ---------------------------------------------------------------

    def versions_of(self, app: str) -> dict[str, Version]:
        """The app's versions by digest; an unknown app is the caller's error."""
        versions = self.versions.get(app)
        if not versions:
            raise NotFoundError(f"no app named {app!r} is deployed (see `superpose ls`)")
        return versions

    def version(self, app: str, ref: str | None) -> Version:
        """A version by alias (default ``latest``) or by digest prefix."""
        versions = self.versions_of(app)
        ref = ref or LATEST
        digest = self.aliases.get(app, {}).get(ref)
        if digest is not None and digest in versions:
            return self._trusted(versions[digest])
        record = self.alias_records.get(app, {}).get(ref)
        if digest is None and record is not None:
            raise UntrustedError(
                f"alias {ref!r} of {app} names {record.version[:12]}, "
                f"{self.alias_verdict(app, ref, record).reason}, not by a trusted deployer "
                "key: it is not followed, and this reader knows no earlier trusted value. "
                f"A trusted deployer can move it back (`superpose promote {app} VERSION`)"
            )
        if len(ref) >= MIN_VERSION_PREFIX:
            matches = sorted(d for d in versions if d.startswith(ref))
            if len(matches) == 1:
                return self._trusted(versions[matches[0]])
            if len(matches) > 1:
                starts = ", ".join(d[:12] for d in matches)
                raise BadRequestError(
                    f"version {ref!r} of {app} is ambiguous: it starts {len(matches)} versions "
                    f"({starts}); give more digits"
                )
        hint = ""
        if len(ref) < MIN_VERSION_PREFIX and re.fullmatch(r"[0-9a-f]+", ref):
            hint = f" (digest prefixes need at least {MIN_VERSION_PREFIX} characters)"
        raise NotFoundError(f"{app} has no version or alias {ref!r}{hint}")

    def pick(
        self,
        app: str,
        ref: str | None = None,
        ctx: protocol.CallContext | None = None,
        caller: str | None = None,
    ) -> Version:
        """The version a call answers with, by the first rule that applies: a version
        named in the call, a pin of the request (``X-Superpose-Pin``), the calling app's
        lock, the app's canary for the call's session, else ``latest``.

        A call that meets a canary without a session gets a random one in ``ctx``,
        so the calls nested under it still see one consistent set of versions.
        """
        if ref:
            return self.version(app, ref)
        if ctx is not None and ctx.pins and app in ctx.pins:
            return self.version(app, ctx.pins[app])
        locked = self.locks.get(caller or "", {}).get(app)
        if locked:
            return self.version(app, locked)
        canary = self.canaries.get(app)
        if canary is not None and canary.version in self.versions.get(app, {}):
            if ctx is None:
                ctx = protocol.CallContext()
            if ctx.session is None:
                ctx.session = uuid.uuid4().hex
            if in_canary(app, ctx.session, canary.percent):
                return self._trusted(self.versions[app][canary.version])
        return self.version(app, None)

    def params_of(self, app: str, fn: str | None) -> list[str]:
        """The parameter names of ``app.fn`` as ``latest`` has it (a canary key's
        argument is found by them before the version is chosen); [] if unknown."""
        try:
            spec = self.version(app, None).functions.get(fn or "")
        except NotFoundError:
            return []
        return list(spec.get("params", [])) if spec is not None else []

    def resolve(
        self,
        app: str,
        fn: str,
        version: str | None = None,
        ctx: protocol.CallContext | None = None,
        caller: str | None = None,
    ) -> Target:
        found = self.pick(app, version, ctx, caller)
        spec = found.functions.get(fn)
        if spec is None:
            names = ", ".join(sorted(found.functions)) or "none"
            raise NotFoundError(
                f"app {app} (version {found.id[:12]}) has no function {fn!r}; it has: {names}"
            )
        return Target(
            app,
            fn,
            found.digest,
            spec["module"],
            spec["qualname"],
            spec["options"],
            self._signature(found, fn, spec),
            found.env,
        )

    def _signature(self, version: Version, fn: str, spec: dict[str, Any]) -> Signature | None:
        """The recorded signature, decoded once per version and function."""
        key = (version.id, fn)
        if key not in self._signatures:
            recorded = spec.get("signature")
            try:
                found = None if recorded is None else msgspec.convert(recorded, Signature)
            except msgspec.ValidationError:  # a record we cannot read: nothing to check by
                found = None
            self._signatures[key] = found
        return self._signatures[key]

    def describe(self) -> list[dict[str, Any]]:
        """Apps with their versions (newest first) and aliases, for ``ls`` and status."""
        out = []
        for app in sorted(set(self.apps) | set(self.versions)):
            versions = sorted(self.versions.get(app, {}).values(), key=lambda v: -v.created)
            out.append(
                {
                    "app": app,
                    "aliases": dict(sorted(self.aliases.get(app, {}).items())),
                    "canary": (canary := self.canaries.get(app)) and canary.rule(),
                    "lock": self.locks.get(app, {}),
                    "pins": dict(sorted(self.pins.get(app, {}).items())),
                    "untrusted": self.untrusted(app),
                    "versions": [
                        {
                            "version": v.id,
                            "code": v.digest,
                            "env": v.env,
                            "created": v.created,
                            "size": v.size,
                            "functions": sorted(v.functions),
                            "kind": v.kind,
                            "signer": self.version_verdict(v).signed_by,
                            "trusted": self.version_verdict(v).ok,
                        }
                        for v in versions
                    ],
                }
            )
        return out


def _report(record: str, names: str, verdict: Verdict, followed: str | None) -> dict[str, Any]:
    return {
        "record": record,
        "names": names,
        "signer": verdict.signed_by,
        "reason": verdict.reason,
        "following": followed,
    }


def _hashes_to(record: bytes, digest: str) -> bool:
    """Whether an ``env.<digest>`` record is the environment its digest names."""
    try:
        env = Environment.from_json(record)
    except protocol.ProtocolError:  # not even a record
        return False
    return protocol.env_digest(env.requirements, env.python, env.platform) == digest
