"""An open vault: config, master keys, the blob index, and typed load/save of its objects.

Everything else in the engine (backup, restore, check, prune) works through a Vault. It knows
the format; it does not walk file systems or talk to the user.
"""

import asyncio
import getpass
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from client_gui.engine.cache import CachingStore
from shared.chunking import DEFAULT_AVG, DEFAULT_MAX, DEFAULT_MIN
from shared.compression import DEFAULT_BLOB_LEVEL
from shared.crypto.kdf import KdfParams
from shared.crypto.keys import (
    KeySlot,
    MasterKeys,
    decode_key_slot,
    encode_key_slot,
    make_passphrase_slot,
    make_recovery_slot,
    parse_recovery_key,
    unlock_slot,
)
from shared.errors import (
    CairnError,
    IntegrityError,
    NoSuchSnapshot,
    NotAVault,
    ObjectNotFound,
    UsageError,
    VaultExists,
    WrongPassphrase,
)
from shared.format.blob import decode_blob, decode_blob_buffer
from shared.format.config import VaultConfig, decode_config, encode_config, verify_config
from shared.format.deletion import DeletionMarker, decode_deletion
from shared.format.index import IndexSegment, decode_index, encode_index
from shared.format.pack import (
    DEFAULT_PACK_SIZE,
    TRAILER_SIZE,
    PackEntry,
    decode_header,
    header_length,
)
from shared.format.snapshot import Snapshot, decode_snapshot, encode_snapshot
from shared.format.tree import Node, StoredTree, decode_tree
from shared.hashing import keyed_id, object_id
from shared.ids import BlobType, ObjectId, ObjectKey, ObjectKind
from shared.storage.base import ObjectStore

logger = logging.getLogger(__name__)

# Concurrent small reads (index segments, snapshots, pack headers): enough to hide the
# latency of a remote store, few enough not to flood a laptop's uplink or a server.
READ_CONCURRENCY = 8
# Whole tree packs of a local vault kept in memory (see Vault._tree_pack).
TREE_PACKS_KEPT = 32 << 20


class BlobLocation(NamedTuple):  # a tuple: one per blob in the index, made at every load
    pack: ObjectId
    type: BlobType
    offset: int
    length: int
    raw_length: int


@dataclass(frozen=True, slots=True)
class SnapshotRef:
    id: ObjectId
    snapshot: Snapshot


def hostname() -> str:
    return socket.gethostname()


def username() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


async def get_verified(store: ObjectStore, key: ObjectKey) -> bytes:
    """A whole object, checked against its name (every object is named by its BLAKE3)."""
    data = await store.get(key)
    if object_id(data).hex() != key.name:
        raise IntegrityError(f"{key.kind.value}/{key.name[:12]} is damaged: content does not "
                             "match its name")
    return data


class BlobIndex:
    """blob ID -> location, the union of every index segment (plus re-read pack headers)."""

    def __init__(self) -> None:
        # raw blob ID -> (pack, entry): a plain tuple, made for every blob at every load; the
        # BlobLocation is made when asked for.
        self._blobs: dict[bytes, tuple[ObjectId, PackEntry]] = {}
        self.packs: dict[ObjectId, tuple[PackEntry, ...]] = {}
        self.segments: set[ObjectId] = set()

    def add_pack(self, pack_id: ObjectId, entries: Iterable[PackEntry]) -> None:
        entries = tuple(entries)
        self.packs[pack_id] = entries
        blobs = self._blobs
        for e in entries:
            blobs.setdefault(e.id.raw, (pack_id, e))

    def remove_packs(self, pack_ids: Iterable[ObjectId]) -> None:
        gone = set(pack_ids)
        for pid in gone:
            self.packs.pop(pid, None)
        self._blobs = {k: v for k, v in self._blobs.items() if v[0] not in gone}
        for pid, entries in self.packs.items():
            for e in entries:
                self._blobs.setdefault(e.id.raw, (pid, e))

    def get(self, blob_id: ObjectId) -> BlobLocation | None:
        found = self._blobs.get(blob_id.raw)
        if found is None:
            return None
        pack_id, e = found
        return BlobLocation(pack_id, e.type, e.offset, e.length, e.raw_length)

    def pack_of(self, raw_id: bytes) -> ObjectId | None:
        """The pack holding the blob with raw ID `raw_id` (`get` without the location)."""
        found = self._blobs.get(raw_id)
        return None if found is None else found[0]

    def __contains__(self, blob_id: ObjectId) -> bool:
        return blob_id.raw in self._blobs

    def __len__(self) -> int:
        return len(self._blobs)

    def raw_ids(self) -> set[bytes]:
        return set(self._blobs)


class Vault:
    """An unlocked vault. Create with `Vault.create` or `Vault.open`."""

    def __init__(self, store: ObjectStore, config: VaultConfig, keys: MasterKeys,
                 slot_name: str) -> None:
        self.store = store
        self.config = config
        self.keys = keys
        self.slot_name = slot_name
        self.index = BlobIndex()
        self.unindexed_packs: set[ObjectId] = set()
        self._tree_cache: dict[bytes, tuple[Node, ...]] = {}
        self._tree_packs: dict[str, bytes] = {}  # least recently used first
        self._tree_pack_loads: dict[str, asyncio.Future[bytes]] = {}

    @property
    def on_this_machine(self) -> bool:
        """A vault in a folder here (opened through the local cache, which keeps the tree
        packs of server vaults only): every read is cheap, nothing crosses a network."""
        return isinstance(self.store, CachingStore) and not self.store.cache_tree_packs

    # ---- creating and opening -------------------------------------------------------------

    @classmethod
    async def create(
        cls, store: ObjectStore, passphrase: str, *, kdf: KdfParams | None = None,
        pack_size: int = DEFAULT_PACK_SIZE, zstd_level: int = DEFAULT_BLOB_LEVEL,
        recovery_key: bool = True,
    ) -> tuple["Vault", str | None]:
        """Write config and key slots; returns the vault and the recovery key text (if made)."""
        async for _ in store.list(ObjectKind.CONFIG):
            raise VaultExists("a vault already exists there")
        now = time.time_ns()
        keys = MasterKeys.generate()
        config = VaultConfig(vault_id=os.urandom(32), created_ns=now, chunk_avg=DEFAULT_AVG,
                             chunk_min=DEFAULT_MIN, chunk_max=DEFAULT_MAX, pack_size=pack_size,
                             zstd_level=zstd_level)
        slot = make_passphrase_slot(keys, config.vault_id, passphrase, created_ns=now,
                                    hostname=hostname(), label="initial", kdf=kdf)
        slot_name = await cls._put_raw(store, ObjectKind.KEY, encode_key_slot(slot))
        recovery_text = None
        if recovery_key:
            rslot, recovery_text = make_recovery_slot(keys, config.vault_id, created_ns=now,
                                                      hostname=hostname(), label="recovery")
            await cls._put_raw(store, ObjectKind.KEY, encode_key_slot(rslot))
        # The config goes last: a vault without config does not exist yet.
        await cls._put_raw(store, ObjectKind.CONFIG, encode_config(config, keys.config_mac))
        return cls(store, config, keys, slot_name), recovery_text

    @staticmethod
    async def _put_raw(store: ObjectStore, kind: ObjectKind, data: bytes) -> str:
        name = object_id(data).hex()
        await store.put(ObjectKey(kind, name), data)
        return name

    @staticmethod
    async def read_config(store: ObjectStore) -> tuple[VaultConfig, bytes]:
        names = [info.key async for info in store.list(ObjectKind.CONFIG)]
        if not names:
            raise NotAVault("not a Cairn vault (no config found)")
        if len(names) > 1:
            raise IntegrityError("vault has more than one config object")
        data = await get_verified(store, names[0])
        return decode_config(data), data

    @classmethod
    async def open(
        cls, store: ObjectStore, passphrase: str | Callable[[VaultConfig], str],
    ) -> "Vault":
        """Unlock with a passphrase or recovery key (or a callable asked once config is read)."""
        config, raw_config = await cls.read_config(store)
        secret = passphrase(config) if callable(passphrase) else passphrase
        slots = await cls.load_key_slots(store)
        if not slots:
            raise NotAVault("vault has no key slots")
        is_recovery = parse_recovery_key(secret) is not None
        # Recovery slots first when the text looks like a recovery key: no Argon2 cost.
        ordered = sorted(slots, key=lambda s: (s[1].slot_type != "recovery") == is_recovery)
        for name, slot in ordered:
            if slot.slot_type == "recovery" and not is_recovery:
                continue
            try:
                keys = unlock_slot(slot, config.vault_id, secret)
            except WrongPassphrase:
                continue
            verify_config(raw_config, keys.config_mac)
            return cls(store, config, keys, name)
        raise WrongPassphrase("wrong passphrase (no key slot of this vault opens with it)")

    @staticmethod
    async def load_key_slots(store: ObjectStore) -> list[tuple[str, KeySlot]]:
        out = []
        async for info in store.list(ObjectKind.KEY):
            try:
                data = await get_verified(store, info.key)
                out.append((info.key.name, decode_key_slot(data)))
            except CairnError as exc:
                logger.warning("skipping unreadable key slot %s: %s", info.key.name[:8], exc)
        return sorted(out, key=lambda s: (s[1].created_ns, s[0]))

    # ---- key slots ------------------------------------------------------------------------

    async def add_passphrase(self, passphrase: str, label: str = "",
                             kdf: KdfParams | None = None) -> str:
        slot = make_passphrase_slot(self.keys, self.config.vault_id, passphrase,
                                    created_ns=time.time_ns(), hostname=hostname(), label=label,
                                    kdf=kdf)
        return await self._put_raw(self.store, ObjectKind.KEY, encode_key_slot(slot))

    async def add_recovery_key(self, label: str = "recovery") -> tuple[str, str]:
        slot, text = make_recovery_slot(self.keys, self.config.vault_id,
                                        created_ns=time.time_ns(), hostname=hostname(),
                                        label=label)
        name = await self._put_raw(self.store, ObjectKind.KEY, encode_key_slot(slot))
        return name, text

    async def remove_key_slot(self, prefix: str) -> str:
        slots = await self.load_key_slots(self.store)
        matches = [name for name, _ in slots if name.startswith(prefix.lower())]
        if not matches:
            raise UsageError(f"no key slot starts with {prefix!r}")
        if len(matches) > 1:
            raise UsageError(f"key slot prefix {prefix!r} is ambiguous")
        name = matches[0]
        if name == self.slot_name:
            raise UsageError("refusing to remove the key slot in use; unlock with another one")
        if len(slots) <= 1:
            raise UsageError("refusing to remove the last key slot")
        await self.store.delete(ObjectKey(ObjectKind.KEY, name))
        return name

    # ---- raw sealed objects ---------------------------------------------------------------

    async def get_verified(self, key: ObjectKey) -> bytes:
        return await get_verified(self.store, key)

    async def put_object(self, kind: ObjectKind, data: bytes) -> ObjectId:
        oid = object_id(data)
        await self.store.put(ObjectKey.of(kind, oid), data)
        return oid

    # ---- index ----------------------------------------------------------------------------

    async def load_index(self, *, recover: bool = True) -> list[tuple[ObjectId, CairnError]]:
        """Load every index segment; with `recover`, also read the headers of unindexed packs.

        Returns the segments that could not be read (check reports them; others log them).
        """
        names = [info.key async for info in self.store.list(ObjectKind.INDEX)]
        sem = asyncio.Semaphore(READ_CONCURRENCY)
        errors: list[tuple[ObjectId, CairnError]] = []

        async def one(key: ObjectKey) -> tuple[ObjectId, IndexSegment | None]:
            async with sem:
                try:
                    data = await self.get_verified(key)
                    return key.id, decode_index(self.keys.encryption, data,
                                                f"index {key.name[:12]}")
                except (IntegrityError, ObjectNotFound) as exc:
                    errors.append((key.id, exc))
                    return key.id, None

        loaded = await asyncio.gather(*(one(k) for k in names))
        superseded = {s for _, seg in loaded if seg for s in seg.supersedes}
        index = BlobIndex()
        for sid, seg in loaded:
            if seg is None or sid in superseded:
                continue
            index.segments.add(sid)
            for pid, entries in seg.packs.items():
                index.add_pack(pid, entries)
        self.index = index
        self.unindexed_packs = set()
        for sid, err in errors:
            # Not found: a concurrent prune folded it into a new segment (pack headers cover
            # the gap); anything else is damage for `check` to explain.
            level = logging.INFO if isinstance(err, ObjectNotFound) else logging.WARNING
            logger.log(level, "index %s unreadable: %s", sid.short(), err)
        if recover:
            await self.recover_unindexed()
        return errors

    async def list_packs(self) -> dict[ObjectId, int]:
        return {info.key.id: info.size async for info in self.store.list(ObjectKind.PACK)}

    async def recover_unindexed(self, packs: dict[ObjectId, int] | None = None) -> None:
        """Add to the in-memory index the packs no segment names (an interrupted backup), and
        forget index entries of packs that are gone (so a blob resolves to a copy that exists).
        """
        if packs is None:
            packs = await self.list_packs()
        vanished = [pid for pid in self.index.packs if pid not in packs]
        if vanished:
            logger.info("%d indexed pack(s) no longer exist", len(vanished))
            self.index.remove_packs(vanished)
        missing = [(pid, size) for pid, size in packs.items() if pid not in self.index.packs]
        sem = asyncio.Semaphore(READ_CONCURRENCY)

        async def one(pid: ObjectId, size: int) -> None:
            async with sem:
                try:
                    entries = await self.read_pack_header(pid, size)
                except (IntegrityError, ObjectNotFound) as exc:
                    logger.warning("unindexed pack %s unreadable: %s", pid.short(), exc)
                    return
            self.index.add_pack(pid, entries)
            self.unindexed_packs.add(pid)

        await asyncio.gather(*(one(pid, size) for pid, size in missing))
        if missing:
            logger.info("found %d pack(s) not in the index (interrupted backup)", len(missing))

    async def read_pack_header(self, pack_id: ObjectId, size: int) -> list[PackEntry]:
        key = ObjectKey.of(ObjectKind.PACK, pack_id)
        what = f"pack {pack_id.short()}"
        if size < TRAILER_SIZE:
            raise IntegrityError(f"{what} is damaged: truncated")
        n = header_length(await self.store.get(key, offset=size - TRAILER_SIZE,
                                               length=TRAILER_SIZE))
        if n + TRAILER_SIZE > size:
            raise IntegrityError(f"{what} is damaged: truncated")
        sealed = await self.store.get(key, offset=size - TRAILER_SIZE - n, length=n)
        return decode_header(self.keys.encryption, sealed, size, what)

    async def save_index(self, packs: dict[ObjectId, tuple[PackEntry, ...]],
                         supersedes: Iterable[ObjectId] = ()) -> ObjectId:
        data = encode_index(self.keys.encryption, IndexSegment(packs, tuple(supersedes)))
        sid = await self.put_object(ObjectKind.INDEX, data)
        self.index.segments.add(sid)
        return sid

    # ---- blobs and trees ------------------------------------------------------------------

    async def load_blob(self, blob_id: ObjectId, blob_type: BlobType | None = None) -> bytes:
        loc = self.index.get(blob_id)
        if loc is None:
            raise ObjectNotFound(f"blob {blob_id.short()} is not in the index")
        key = ObjectKey.of(ObjectKind.PACK, loc.pack)
        blob_type = loc.type if blob_type is None else blob_type
        if loc.type == BlobType.TREE and isinstance(self.store, CachingStore):
            if self.on_this_machine:
                whole = await self._tree_pack(key)
                if loc.offset + loc.length <= len(whole):
                    return self.open_blob(blob_id, blob_type,
                                          whole[loc.offset:loc.offset + loc.length])
            sealed = await self.store.tree_pack_range(key, loc.offset, loc.length)
            if sealed is not None:
                try:
                    return self.open_blob(blob_id, blob_type, sealed)
                except IntegrityError:  # a damaged cache copy: read it from the vault
                    logger.info("cached pack %s is damaged; reading from the vault", key)
                    await self.store.forget_tree_pack(key)
        sealed = await self.store.get(key, offset=loc.offset, length=loc.length)
        return self.open_blob(blob_id, blob_type, sealed)

    async def _tree_pack(self, key: ObjectKey) -> bytes:
        """A whole tree pack of a vault on this machine, read once and kept in memory (up to
        TREE_PACKS_KEPT bytes): a backup that compares a thousand folders read a thousand
        ranges, each a trip through a worker thread. Read errors propagate; a short copy
        sends the caller to the ranged read (which reports it)."""
        kept = self._tree_packs.pop(key.name, None)
        if kept is None:
            loading = self._tree_pack_loads.get(key.name)
            if loading is None:
                loading = self._tree_pack_loads[key.name] = asyncio.ensure_future(
                    self.store.get(key))
                loading.add_done_callback(lambda _: self._tree_pack_loads.pop(key.name, None))
            kept = await asyncio.shield(loading)
            while self._tree_packs and sum(map(len, self._tree_packs.values())) + len(
                    kept) > TREE_PACKS_KEPT:
                self._tree_packs.pop(next(iter(self._tree_packs)))  # the least recently used
        self._tree_packs[key.name] = kept
        return kept

    def open_blob(self, blob_id: ObjectId, blob_type: BlobType, sealed: bytes) -> bytes:
        plain = decode_blob(self.keys.encryption, blob_type, blob_id, sealed)
        if keyed_id(self.keys.chunk_id, plain) != blob_id:
            raise IntegrityError(f"blob {blob_id.short()} is damaged: content does not match ID")
        return plain

    def open_blob_buffer(self, blob_id: ObjectId, blob_type: BlobType,
                         sealed: bytes | memoryview) -> bytes | bytearray:
        """`open_blob` for restore: `sealed` may be a view of a range read from a pack, and
        the plaintext is not copied on its way out (see decode_blob_buffer)."""
        plain = decode_blob_buffer(self.keys.encryption, blob_type, blob_id, sealed)
        if keyed_id(self.keys.chunk_id, plain) != blob_id:
            raise IntegrityError(f"blob {blob_id.short()} is damaged: content does not match ID")
        return plain

    async def load_tree(self, tree_id: ObjectId) -> tuple[Node, ...]:
        cached = self._tree_cache.get(tree_id.raw)
        if cached is not None:
            return cached
        nodes = decode_tree(await self.load_blob(tree_id, BlobType.TREE),
                            f"tree {tree_id.short()}")
        if len(self._tree_cache) > 4096:
            self._tree_cache.clear()
        self._tree_cache[tree_id.raw] = nodes
        return nodes

    async def load_stored_tree(self, tree_id: ObjectId) -> StoredTree:
        """A tree as stored (see StoredTree): what a backup compares a folder with."""
        return StoredTree(await self.load_blob(tree_id, BlobType.TREE), f"tree {tree_id.short()}")

    def stored_tree_now(self, tree_id: ObjectId) -> StoredTree | None:
        """`load_stored_tree` if it needs no I/O, its tree pack being held in memory (see
        _tree_pack); else None. Callable from any thread: a backup's walker, which would
        otherwise wait on the loop for each of a thousand folders. Damage raises as there."""
        loc = self.index.get(tree_id)
        if loc is None or loc.type != BlobType.TREE:
            return None
        whole = self._tree_packs.get(loc.pack.hex())  # a plain read: the loop may evict it
        if whole is None or loc.offset + loc.length > len(whole):
            return None
        plain = self.open_blob(tree_id, BlobType.TREE, whole[loc.offset:loc.offset + loc.length])
        return StoredTree(plain, f"tree {tree_id.short()}")

    # ---- snapshots ------------------------------------------------------------------------

    async def save_snapshot(self, snap: Snapshot) -> ObjectId:
        return await self.put_object(ObjectKind.SNAPSHOT, encode_snapshot(self.keys.encryption,
                                                                          snap))

    async def load_snapshot(self, sid: ObjectId) -> Snapshot:
        data = await self.get_verified(ObjectKey.of(ObjectKind.SNAPSHOT, sid))
        return decode_snapshot(self.keys.encryption, data, f"snapshot {sid.short()}")

    async def list_snapshots(
        self, errors: list[tuple[ObjectId, CairnError]] | None = None,
    ) -> list[SnapshotRef]:
        """Every readable snapshot, oldest first. Unreadable ones go to `errors` (or the log)."""
        keys = [info.key async for info in self.store.list(ObjectKind.SNAPSHOT)]
        sem = asyncio.Semaphore(READ_CONCURRENCY)

        async def one(key: ObjectKey) -> SnapshotRef | None:
            async with sem:
                try:
                    return SnapshotRef(key.id, await self.load_snapshot(key.id))
                except (IntegrityError, ObjectNotFound) as exc:
                    if errors is not None:
                        errors.append((key.id, exc))
                    else:
                        logger.warning("snapshot %s unreadable: %s", key.name[:8], exc)
                    return None

        refs = [r for r in await asyncio.gather(*(one(k) for k in keys)) if r is not None]
        return sorted(refs, key=lambda r: (r.snapshot.time_ns, r.id.raw))

    async def find_snapshot(self, spec: str, refs: list[SnapshotRef] | None = None
                            ) -> SnapshotRef:
        """`latest`, `latest~N`, or an ID prefix (at least 4 hex characters)."""
        if refs is None:
            refs = await self.list_snapshots()
        complete = [r for r in refs if not r.snapshot.checkpoint] or refs
        if spec == "latest" or spec.startswith("latest~"):
            back = spec.partition("~")[2]
            n = int(back) if back.isdigit() else 0
            if back and not back.isdigit():
                raise UsageError(f"bad snapshot name {spec!r}")
            if len(complete) <= n:
                raise NoSuchSnapshot("the vault has no snapshot" if not refs else
                                     f"no snapshot {spec}")
            return complete[-1 - n]
        prefix = spec.lower()
        if len(prefix) < 4 or any(c not in "0123456789abcdef" for c in prefix):
            raise UsageError(f"bad snapshot ID {spec!r}: give 4 or more hex digits or 'latest'")
        matches = [r for r in refs if r.id.hex().startswith(prefix)]
        if not matches:
            raise NoSuchSnapshot(f"no snapshot with ID {spec}")
        if len(matches) > 1:
            raise UsageError(f"snapshot ID prefix {spec} is ambiguous")
        return matches[0]

    async def load_deletions(self) -> dict[ObjectId, DeletionMarker]:
        out = {}
        async for info in self.store.list(ObjectKind.DELETION):
            try:
                out[info.key.id] = decode_deletion(await self.get_verified(info.key))
            except (IntegrityError, ObjectNotFound) as exc:
                logger.warning("deletion marker %s unreadable: %s", info.key.name[:8], exc)
        return out

    async def close(self) -> None:
        await self.store.close()
