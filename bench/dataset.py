"""Seeded test data: a home-directory-like tree and a many-small-files tree.

The home tree (`generate_home`) holds, as fractions of the requested size: source code and text
in many small files (8 %), documents (7 %, partly compressed formats), incompressible photos,
music and videos (37 %), compressible logs and CSV (18 %), two VM-image-like files that share
most of their blocks (25 %), exact duplicates of photos and documents (5 %), plus symlinks (a few
dangling) and empty files. `generate_small` writes N files of 1-4 KiB.

Same seed and size -> byte-identical trees (random.Random only, no os.urandom). Generation
writes large blocks and reuses text pools, so 2 GiB takes well under a minute. A manifest
(`<root>.manifest.json`, written last) records what was generated; a tree whose manifest matches
is reused as it is.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 2
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
BLOCK = 8 * MiB
_UNITS = {"": 1, "b": 1, "k": KiB, "kb": 1000, "kib": KiB, "m": MiB, "mb": 1000**2,
          "mib": MiB, "g": GiB, "gb": 1000**3, "gib": GiB}
# Shares of the home tree's size, by category.
SHARES = {"source": 0.08, "documents": 0.07, "photos": 0.17, "music": 0.05, "videos": 0.15,
          "logs": 0.12, "csv": 0.06, "vm": 0.25, "duplicates": 0.05}


def parse_size(text: str) -> int:
    """'2GiB', '200MiB', '1.5G', '4096' -> bytes (K/M/G are binary); ValueError otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (try 2GiB, 200MiB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_size(n: float) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}" if unit == "GiB" else f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


@dataclass(frozen=True)
class Dataset:
    """A generated tree: where, how big, and (home tree) the relative paths by category."""

    root: Path
    kind: str
    size: int
    seed: int
    files: int
    bytes: int
    symlinks: int = 0
    empty: int = 0
    categories: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {"version": GENERATOR_VERSION, "kind": self.kind, "size": self.size,
                "seed": self.seed, "files": self.files, "bytes": self.bytes,
                "symlinks": self.symlinks, "empty": self.empty,
                "categories": {k: list(v) for k, v in self.categories.items()}}


def manifest_path(root: Path) -> Path:
    return root.with_name(root.name + ".manifest.json")


def load(root: Path, kind: str, size: int, seed: int) -> Dataset | None:
    """The dataset at `root` if its manifest says it was generated with these parameters."""
    try:
        data = json.loads(manifest_path(root).read_text())
    except (OSError, ValueError):
        return None
    if (data.get("version"), data.get("kind"), data.get("size"), data.get("seed")) != (
            GENERATOR_VERSION, kind, size, seed) or not root.is_dir():
        return None
    return Dataset(root=root, kind=kind, size=size, seed=seed, files=data["files"],
                   bytes=data["bytes"], symlinks=data["symlinks"], empty=data["empty"],
                   categories={k: tuple(v) for k, v in data["categories"].items()})


# --- text pools ------------------------------------------------------------------------------

_SYLLABLES = ("ka", "lo", "mi", "ter", "an", "sen", "do", "ri", "vel", "tra", "ex", "ion", "pre",
              "con", "ma", "ne", "st", "or", "al", "is", "ul", "um", "ba", "che", "de", "fi",
              "ga", "ho", "in", "ju", "ke", "la", "mo", "nu", "op", "qu", "re", "si", "to", "ur",
              "vi", "wa", "ye", "zo", "th", "ng", "ch")
_CODE = (
    "def {a}_{b}({c}, {d}):", "    return {a}.{b}({c})", "    {a} = {b}({c}, {d})",
    "    if {a} is None:", "        raise {A}Error(\"{a} {b} {c}\")", "class {A}{B}:",
    "    \"\"\"{a} {b} {c} {d} {a}.\"\"\"", "import {a}", "from {a}.{b} import {C}",
    "    for {a} in {b}:", "        {a}.append({b}[{n}])", "    # {a} {b} {c} {d}",
    "const {a}{B} = require('{c}');", "  {a}: {n},", "}}", "    self.{a} = {b}", "",
    "    return {n}", "#include <{a}.h>", "static int {a}_{b}(struct {c} *{d})",
)


class TextPools:
    """Seeded prose and code, a few MiB each; files are slices of them."""

    def __init__(self, seed: int, prose_bytes: int = 4 * MiB, code_bytes: int = 2 * MiB):
        rng = random.Random(f"{seed}:text")
        words: list[str] = []
        seen: set[str] = set()
        while len(words) < 3000:
            word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4)))
            if word not in seen:
                seen.add(word)
                words.append(word)
        self.words = words
        weights = [1.0 / (i + 1) for i in range(len(words))]  # Zipf-like, like real text
        cum = [0.0] * len(weights)
        total = 0.0
        for i, w in enumerate(weights):
            total += w
            cum[i] = total
        self.prose = self._prose(rng, words, cum, prose_bytes)
        self.code = self._code(rng, words, code_bytes)
        self.lines = self.prose.split(b"\n")

    @staticmethod
    def _prose(rng: random.Random, words: list[str], cum: list[float], size: int) -> bytes:
        picks = rng.choices(words, cum_weights=cum, k=size // 6)
        lines = []
        for i in range(0, len(picks), 11):
            line = " ".join(picks[i:i + 11])
            lines.append(line[:1].upper() + line[1:] + ".")
        return "\n".join(lines).encode()[:size]

    @staticmethod
    def _code(rng: random.Random, words: list[str], size: int) -> bytes:
        out: list[str] = []
        total = 0
        while total < size:
            a, b, c, d = (rng.choice(words) for _ in range(4))
            line = rng.choice(_CODE).format(a=a, b=b, c=c, d=d, A=a.title(), B=b.title(),
                                            C=c.title(), n=rng.randrange(1000))
            out.append(line)
            total += len(line) + 1
        return "\n".join(out).encode()

    def slice(self, rng: random.Random, pool: bytes, n: int) -> bytes:
        """n bytes from a random place of `pool` (repeated when n exceeds the pool)."""
        if n >= len(pool):
            return (pool * (n // len(pool) + 1))[:n]
        start = rng.randrange(len(pool) - n)
        return pool[start:start + n]


# --- writing ---------------------------------------------------------------------------------


class _Writer:
    def __init__(self, root: Path):
        self.root = root
        self.files = self.bytes = self.symlinks = self.empty = 0
        self.categories: dict[str, list[str]] = {}

    def write(self, rel: str, data: bytes | Iterator[bytes], category: str | None = None) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            if isinstance(data, bytes):
                f.write(data)
                n = len(data)
            else:
                n = 0
                for block in data:
                    f.write(block)
                    n += len(block)
        self.files += 1
        self.bytes += n
        self.empty += n == 0
        if category:
            self.categories.setdefault(category, []).append(rel)

    def copy(self, src: str, dst: str, category: str) -> None:
        path = self.root / dst
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.root / src, path)
        self.files += 1
        self.bytes += path.stat().st_size
        self.categories.setdefault(category, []).append(dst)

    def symlink(self, rel: str, target: str) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)
        self.symlinks += 1


def random_blocks(rng: random.Random, n: int, header: bytes = b"") -> Iterator[bytes]:
    """n incompressible bytes (starting with `header`) in blocks of at most BLOCK."""
    first = True
    while n > 0:
        take = min(n, BLOCK)
        block = rng.randbytes(take)
        if first and header:
            block = header + block[len(header):]
        first = False
        yield block
        n -= take


def _lognormal_size(rng: random.Random, median: int, sigma: float, lo: int, hi: int) -> int:
    return max(lo, min(hi, int(median * math.exp(rng.gauss(0.0, sigma)))))


def _name(rng: random.Random, pools: TextPools, parts: int = 2) -> str:
    return "_".join(rng.choice(pools.words[:800]) for _ in range(parts))


def _source(w: _Writer, rng: random.Random, pools: TextPools, budget: int) -> None:
    exts = (".py",) * 5 + (".js", ".ts", ".c", ".h", ".md", ".json", ".txt", ".html", ".rs")
    used = project = 0
    while used < budget:
        proj = f"projects/{_name(rng, pools)}-{project}"
        project += 1
        w.write(f"{proj}/README.md", pools.slice(rng, pools.prose, rng.randrange(500, 6000)))
        w.write(f"{proj}/.gitignore", b"__pycache__/\n*.pyc\nbuild/\n")
        w.symlink(f"{proj}/current", "src")
        per_project = rng.randrange(4, 12) * MiB // 8
        spent = 0
        while spent < per_project and used < budget:
            depth = rng.randint(1, 3)
            folder = "/".join([proj, "src"] + [_name(rng, pools, 1) for _ in range(depth)])
            w.write(f"{folder}/__init__.py", b"")
            for _ in range(rng.randrange(8, 40)):
                size = _lognormal_size(rng, 3000, 1.2, 60, 256 * KiB)
                ext = rng.choice(exts)
                pool = pools.prose if ext in (".md", ".txt") else pools.code
                body = f"# {folder} {w.files}\n".encode() + pools.slice(rng, pool, size)
                w.write(f"{folder}/{_name(rng, pools)}{ext}", body, "source")
                spent += len(body)
                used += len(body)


def _documents(w: _Writer, rng: random.Random, pools: TextPools, budget: int) -> None:
    folders = ("Documents/Work", "Documents/Personal", "Documents/Taxes/2023",
               "Documents/Taxes/2024", "Documents/Notes", "Desktop")
    used = 0
    while used < budget:
        folder = rng.choice(folders)
        size = min(_lognormal_size(rng, 120 * KiB, 1.3, 2 * KiB, 8 * MiB),
                   max(2 * KiB, budget - used))
        kind = rng.random()
        if kind < 0.4:
            name, data = f"{_name(rng, pools)}.pdf", b"".join(random_blocks(rng, size, b"%PDF-1.7"))
            category = "documents_binary"
        elif kind < 0.6:
            name, data = f"{_name(rng, pools)}.odt", b"".join(random_blocks(rng, size, b"PK\3\4"))
            category = "documents_binary"
        else:
            name = f"{_name(rng, pools)}.{rng.choice(('md', 'txt', 'tex', 'rtf'))}"
            data, category = pools.slice(rng, pools.prose, size), "documents_text"
        w.write(f"{folder}/{w.files}-{name}", data, category)
        used += size


def _media(w: _Writer, rng: random.Random, budgets: Mapping[str, int]) -> None:
    used = 0
    while used < budgets["photos"]:
        size = min(_lognormal_size(rng, 3 * MiB, 0.4, 300 * KiB, 12 * MiB),
                   max(64 * KiB, budgets["photos"] - used))
        year = rng.choice((2019, 2020, 2021, 2022, 2023, 2024))
        rel = f"Pictures/{year}/{year}-{rng.randint(1, 12):02d}/IMG_{w.files:05d}.jpg"
        w.write(rel, random_blocks(rng, size, b"\xff\xd8\xff\xe0\0\x10JFIF"), "photos")
        used += size
    used = 0
    while used < budgets["music"]:
        size = min(_lognormal_size(rng, 8 * MiB, 0.3, 1 * MiB, 30 * MiB),
                   max(64 * KiB, budgets["music"] - used))
        rel = f"Music/{rng.choice(('Artist A', 'Artist B', 'Band C'))}/track-{w.files:05d}.flac"
        w.write(rel, random_blocks(rng, size, b"fLaC"), "music")
        used += size
    remaining = budgets["videos"]
    while remaining > 0:
        size = min(remaining, max(MiB, int(budgets["videos"] * rng.uniform(0.15, 0.4))))
        w.write(f"Videos/clip-{w.files:05d}.mp4", random_blocks(rng, size, b"\0\0\0\x18ftypmp42"),
                "videos")
        remaining -= size


def _log_blocks(rng: random.Random, pools: TextPools, n: int) -> Iterator[bytes]:
    levels = (b"INFO", b"INFO", b"INFO", b"DEBUG", b"DEBUG", b"WARN", b"ERROR")
    components = [w.encode() for w in pools.words[:40]]
    messages = [line[:rng.randrange(20, 90)] for line in pools.lines[:20000]]
    t = 1_714_000_000_000 + rng.randrange(10**9)
    while n > 0:
        out = []
        for msg, level, comp in zip(rng.choices(messages, k=6000), rng.choices(levels, k=6000),
                                    rng.choices(components, k=6000), strict=True):
            t += rng.randrange(1, 4000)
            out.append(b"%d.%03d %s [%s] %s id=%x\n" % (t // 1000, t % 1000, level, comp, msg,
                                                      t * 2654435761 % 1048573))
        block = b"".join(out)[:n]
        n -= len(block)
        yield block


def _csv_blocks(rng: random.Random, pools: TextPools, n: int) -> Iterator[bytes]:
    yield b"id,date,customer,city,sku,quantity,amount\n"
    names = [w.title().encode() for w in pools.words[:500]]
    cities = [w.title().encode() for w in pools.words[500:560]]
    row = rng.randrange(10**6)
    while n > 0:
        out = []
        for name, city in zip(rng.choices(names, k=6000), rng.choices(cities, k=6000),
                              strict=True):
            row += 1
            amount = rng.randrange(100, 10**6)
            out.append(b"%d,2024-%02d-%02d,%s,%s,SKU-%05d,%d,%d.%02d\n" % (
                row, row % 12 + 1, row % 28 + 1, name, city, row * 7919 % 99991,
                amount % 17 + 1, amount // 100, amount % 100))
        block = b"".join(out)[:n]
        n -= len(block)
        yield block


def _logs_and_csv(w: _Writer, rng: random.Random, pools: TextPools,
                  budgets: Mapping[str, int]) -> None:
    count = max(2, min(6, budgets["logs"] // (40 * MiB)))
    for i in range(count):
        w.write(f"work/logs/service-{i}.log", _log_blocks(rng, pools, budgets["logs"] // count),
                "logs")
    count = max(1, min(4, budgets["csv"] // (40 * MiB)))
    for i in range(count):
        w.write(f"work/data/export-{i}.csv", _csv_blocks(rng, pools, budgets["csv"] // count),
                "csv")


def _vm_images(w: _Writer, rng: random.Random, pools: TextPools, budget: int) -> None:
    """Two disk images: B is A with ~15 % of its MiB blocks partly (64 KiB regions) rewritten."""
    size = max(MiB, budget // 2 // MiB * MiB)
    zero = bytes(MiB)
    patches: list[tuple[int, bytes]] = []

    def image_a() -> Iterator[bytes]:
        for index in range(size // MiB):
            kind = rng.random()
            if kind < 0.3:
                yield zero
            elif kind < 0.7:
                yield rng.randbytes(MiB)
            else:
                yield pools.slice(rng, pools.code if kind < 0.85 else pools.prose, MiB)
            if rng.random() < 0.15:
                for _ in range(rng.randint(1, 3)):
                    at = index * MiB + rng.randrange(16) * 64 * KiB
                    patches.append((at, rng.randbytes(64 * KiB)))

    w.write("VMs/debian-a.qcow2", image_a(), "vm_a")
    if not patches:  # tiny images: still make B differ from A
        patches.append((size // 2 // (64 * KiB) * 64 * KiB, rng.randbytes(64 * KiB)))
    w.copy("VMs/debian-a.qcow2", "VMs/debian-b.qcow2", "vm_b")
    with open(w.root / "VMs/debian-b.qcow2", "r+b") as f:
        for at, data in patches:
            f.seek(at)
            f.write(data)


def _duplicates_links_empty(w: _Writer, rng: random.Random, budget: int) -> None:
    sources = w.categories.get("photos", []) + w.categories.get("documents_binary", [])
    sizes = {rel: (w.root / rel).stat().st_size for rel in sources}
    used = 0
    while used < budget:
        fitting = [rel for rel in sources if sizes[rel] <= budget - used]
        if not fitting:
            break
        src = rng.choice(fitting)
        dst = f"{rng.choice(('Downloads', 'Backups/old-laptop'))}/{w.files}-{Path(src).name}"
        w.copy(src, dst, "duplicates")
        used += (w.root / dst).stat().st_size
    files = sorted(w.categories.get("source", []))
    for i in range(max(10, w.files // 100)):
        target = rng.choice(files) if files else "missing"
        rel = f"links/link-{i}"
        dangling = i % 20 == 0
        w.symlink(rel, f"../no-such-file-{i}" if dangling else f"../{target}")
    for i in range(max(10, w.files // 80)):
        w.write(f"{rng.choice(('Templates', 'projects', 'Documents'))}/.keep-{i}", b"")
    for name, body in ((".bashrc", b"export PATH=$HOME/bin:$PATH\nalias ll='ls -l'\n"),
                       (".profile", b"[ -f ~/.bashrc ] && . ~/.bashrc\n"),
                       (".gitconfig", b"[user]\n\tname = Bench User\n")):
        w.write(name, body)


def _prepare(root: Path) -> None:
    manifest_path(root).unlink(missing_ok=True)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)


def generate_home(root: Path, size: int, seed: int = 42) -> Dataset:
    """Writes the home-like tree of about `size` bytes to `root` (replacing it) and returns it."""
    existing = load(root, "home", size, seed)
    if existing is not None:
        return existing
    logger.info("generating a %s home-like tree in %s", format_size(size), root)
    _prepare(root)
    w = _Writer(root)
    pools = TextPools(seed, prose_bytes=min(4 * MiB, max(256 * KiB, size // 32)),
                      code_bytes=min(2 * MiB, max(128 * KiB, size // 64)))
    budgets = {k: int(size * v) for k, v in SHARES.items()}
    _source(w, random.Random(f"{seed}:source"), pools, budgets["source"])
    _documents(w, random.Random(f"{seed}:documents"), pools, budgets["documents"])
    _media(w, random.Random(f"{seed}:media"), budgets)
    _logs_and_csv(w, random.Random(f"{seed}:logs"), pools, budgets)
    _vm_images(w, random.Random(f"{seed}:vm"), pools, budgets["vm"])
    _duplicates_links_empty(w, random.Random(f"{seed}:dups"), budgets["duplicates"])
    dataset = Dataset(root=root, kind="home", size=size, seed=seed, files=w.files,
                      bytes=w.bytes, symlinks=w.symlinks, empty=w.empty,
                      categories={k: tuple(v) for k, v in w.categories.items()})
    manifest_path(root).write_text(json.dumps(dataset.to_json()))
    return dataset


def generate_small(root: Path, count: int, seed: int = 42) -> Dataset:
    """Writes `count` files of 1-4 KiB (100 a folder) to `root` (replacing it)."""
    existing = load(root, "small", count, seed)
    if existing is not None:
        return existing
    logger.info("generating %d small files in %s", count, root)
    _prepare(root)
    pools = TextPools(seed, prose_bytes=min(2 * MiB, max(64 * KiB, count * 256)),
                      code_bytes=16 * KiB)
    rng = random.Random(f"{seed}:small")
    total = 0
    for d in range(0, count, 100):
        folder = root / f"d{d // 100:04d}"
        folder.mkdir()
        for i in range(d, min(count, d + 100)):
            n = rng.randrange(KiB, 4 * KiB + 1)
            header = b"file %d\n" % i
            data = header + pools.slice(rng, pools.prose, n - len(header))
            with open(folder / f"f{i:06d}.txt", "wb") as f:
                f.write(data)
            total += n
    dataset = Dataset(root=root, kind="small", size=count, seed=seed, files=count, bytes=total)
    manifest_path(root).write_text(json.dumps(dataset.to_json()))
    return dataset


def read_all(root: Path) -> int:
    """Reads every regular file under `root` once (warms the page cache); returns bytes read."""
    total = 0
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as f:
                while chunk := f.read(BLOCK):
                    total += len(chunk)
    return total
