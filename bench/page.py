"""docs/PERFORMANCE.md: the whole page, from a results document."""

from __future__ import annotations

from typing import Any

from bench import report
from bench.dataset import SHARES, format_size
from bench.report import Results, fmt_mib, fmt_seconds
from shared.compression import DEFAULT_BLOB_LEVEL


def _machine(results: Results) -> str:
    m = results.get("machine", {})
    v = results.get("versions", {})
    rows = [
        ("date", results.get("started", "?")),
        ("CPU", f"{m.get('cpu', '?')}, {m.get('nproc', '?')} cores usable"),
        ("RAM", m.get("ram", "?")),
        ("OS", f"{m.get('os', '?')}, kernel {m.get('kernel', '?')}"),
        ("work folder file system", m.get("filesystem", "?")),
        ("load average before / after", f"{m.get('loadavg', '?')} / "
                                         f"{results.get('machine_after', {}).get('loadavg', '?')}"),
        ("Cairn", v.get("cairn", "not available")),
        ("Python (Cairn)", v.get("python", "?")),
        ("restic", v.get("restic", "not available")),
        ("restic REST server", v.get("rest-server", "not available")),
        ("Borg", v.get("borg", "not available")),
    ]
    missing = results.get("missing", {})
    rows += [(f"missing: {tool}", reason) for tool, reason in missing.items()]
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def _amount(prof: dict[str, Any]) -> str:
    if "unit" in prof:
        return f"{prof.get('samples', 0):.2f} {prof['unit']}"
    return f"{prof.get('samples', 0):,.0f} samples"


def _profile(title: str, prof: dict[str, Any]) -> str:
    if "error" in prof:
        return f"**{title}**: not profiled ({prof['error']})."
    own, cum, files = prof.get("own", []), prof.get("cumulative", []), prof.get("files", [])
    lead = ", ".join(f"`{f}` in {p} ({s:.0f} %)" for f, p, s in own[:3])
    text = [f"**{title}** ({prof.get('method')}, {prof.get('wall', 0):.1f} s under the profiler, "
            f"{_amount(prof)}). The largest own-time costs: {lead}. "
            "Own time by source file: " + ", ".join(f"{p} {s:.0f} %" for p, s in files) + "."
            + (f" Start-up imports take {prof['imports']:.0f} % of the samples."
               if "imports" in prof else "")
            + (f" {prof['waiting']:.0f} % is waiting in thread pools, locks or the event loop "
               "(left out of the own-time column)." if "waiting" in prof else ""), "",
            "| # | own time: function | file | share | cumulative: function | file | share |",
            "|---:|---|---|---:|---|---|---:|"]
    for i in range(max(len(own), len(cum))):
        a = own[i] if i < len(own) else ["", "", None]
        b = cum[i] if i < len(cum) else ["", "", None]
        text.append(f"| {i + 1} | `{a[0]}` | {a[1]} | {'' if a[2] is None else f'{a[2]:.1f} %'}"
                    f" | `{b[0]}` | {b[1]} | {'' if b[2] is None else f'{b[2]:.1f} %'} |")
    return "\n".join(text)


_STAGE_LABELS = {
    "read": "read: open + read each file into a reused buffer",
    "chunk": "chunk: FastCDC (`split_buffer`)",
    "hash": "hash: keyed BLAKE3 of each chunk",
    "compress": f"compress: zstd level {DEFAULT_BLOB_LEVEL}, distinct chunks",
    "encrypt": "encrypt: XChaCha20-Poly1305, compressed payloads",
}


def _mib_s(size: float, seconds: float | None) -> str:
    return f"{size / 2**20 / seconds:,.0f} MiB/s" if seconds else "–"


def _pipeline_table(p: dict[str, Any]) -> str:
    size = p.get("bytes", 0)
    total = sum(s["seconds"] for s in p.get("stages", []))
    lines = ["| | input | seconds | throughput |", "|---|---:|---:|---:|"]
    for s in p.get("stages", []):
        lines.append(f"| {_STAGE_LABELS.get(s['stage'], s['stage'])} | "
                     f"{format_size(s['bytes'])} | {fmt_seconds(s['seconds'])} | "
                     f"{_mib_s(s['bytes'], s['seconds'])} |")
    lines.append(f"| all five stages, one thread (sum) | {format_size(size)} | "
                 f"{fmt_seconds(total)} | {_mib_s(size, total)} |")
    lines.append(f"| **{p.get('cores', 2)}-core limit** (sum ÷ {p.get('cores', 2)}) | "
                 f"{format_size(size)} | **{fmt_seconds(p.get('limit_seconds'))}** | "
                 f"{_mib_s(size, p.get('limit_seconds'))} |")
    for c in p.get("chains", []):
        threads = "1 thread" if c["threads"] == 1 else f"{c['threads']} threads"
        lines.append(f"| whole chain, {threads} (wall) | {format_size(c['bytes'])} | "
                     f"{fmt_seconds(c['seconds'])} | {_mib_s(c['bytes'], c['seconds'])} |")
    return "\n".join(lines)


def _initial_walls(results: Results, case: str) -> tuple[float | None, float | None]:
    """Median local initial-backup wall times of restic and Cairn for `case`."""
    med = report.medians(results.get("samples", []))
    restic = med.get((case, "local", "initial", "restic"), {}).get("wall")
    cairn = med.get((case, "local", "initial", "cairn"), {}).get("wall")
    return restic, cairn


def _pipeline_versus_restic(results: Results, p: dict[str, Any]) -> list[str]:
    restic, cairn = _initial_walls(results, "home")
    limit = p.get("limit_seconds")
    rounds_tree = results.get("dataset", {}).get("home", {}).get("bytes")
    if rounds_tree is not None and rounds_tree != p.get("bytes"):
        return [f"The limit was measured on another tree ({format_size(p.get('bytes', 0))}) "
                f"than the rounds ({format_size(rounds_tree)}), so it is not compared with "
                "them.", ""]
    if not restic or not limit:
        return ["restic's initial backup of the home tree (local) was not measured in this run, "
                "so the limit is not compared with it.", ""]
    two = next((c["seconds"] for c in p.get("chains", []) if c["threads"] == p.get("cores")),
               None)
    target = next(t[5] for t in report.TARGETS if t[1:5] == ("home", "local", "initial", "wall"))
    rows = [("restic, initial backup (local, median)", restic),
            ("the limit: every stage, both cores busy, nothing else", limit),
            (f"whole chain, {p.get('cores')} threads", two),
            ("Cairn, initial backup (local, median)", cairn)]
    lines = ["| initial backup of the home tree | seconds | ÷ restic |", "|---|---:|---:|"]
    lines += [f"| {label} | {fmt_seconds(v)} | {report.fmt_ratio(report.ratio(v, restic))} |"
              for label, v in rows]
    limit_ratio = limit / restic
    if limit_ratio > target:
        text = (f"Even with no overhead at all, Cairn could not go below {limit_ratio:.2f}× "
                f"restic's time for the initial backup on this machine, so the ≤ {target:.2f}× "
                "target cannot be met with these building blocks here.")
    else:
        text = (f"The building blocks alone would allow {limit_ratio:.2f}× restic's time, "
                f"within the ≤ {target:.2f}× target: what separates Cairn from it is the rest "
                "of its work (scanning, packing, index, writes) and how well it keeps both "
                "cores busy.")
    if cairn:
        side = "above" if cairn >= limit else "below"
        text += (f" Cairn measured {cairn / restic:.2f}× restic: {cairn / limit:.2f}× the "
                 f"limit, {fmt_seconds(abs(cairn - limit))} {side} it.")
    return [*lines, "", text, ""]


def _pipeline_small(results: Results, p: dict[str, Any]) -> list[str]:
    small = p.get("small")
    if not small:
        return []
    home = next((c for c in p.get("chains", []) if c["threads"] == small["threads"]), None)
    per_file = small["seconds"] / small["files"] * 1e6 if small["files"] else 0.0
    text = (f"**Many small files**: the whole chain on {small['threads']} threads over the "
            f"{small['files']:,} files ({format_size(small['bytes'])}) took "
            f"{fmt_seconds(small['seconds'])}, {per_file:.0f} µs a file "
            f"({_mib_s(small['bytes'], small['seconds'])}"
            + (f", against {_mib_s(home['bytes'], home['seconds'])} on the home tree"
               if home else "") + ").")
    restic, cairn = _initial_walls(results, "small")
    if restic and results.get("dataset", {}).get("small", {}).get("files") == small["files"]:
        text += (f" restic's initial backup of this tree took {fmt_seconds(restic)} (the chain: "
                 f"{report.fmt_ratio(report.ratio(small['seconds'], restic))} of it)"
                 + (f"; Cairn's {fmt_seconds(cairn)} "
                    f"({report.fmt_ratio(report.ratio(cairn, restic))})" if cairn else "") + ".")
    return [text, ""]


def pipeline_section(results: Results) -> str:
    """"The 2-core pipeline limit": the stages alone, the chain, and the limit against restic."""
    p = results.get("pipeline")
    head = ["## The 2-core pipeline limit", ""]
    if not p:
        return "\n".join([*head, "Not measured in this run.", ""])
    if "error" in p:
        return "\n".join([*head, f"Not measured: {p['error']}.", ""])
    distinct = next(iter(p.get("chains", [])), {})
    parts = [
        *head,
        "Cairn's own building blocks from `shared/`, measured in-process by `bench/pipeline.py` "
        f"on the home tree ({p.get('files', 0):,} regular files, "
        f"{format_size(p.get('bytes', 0))}, page cache warm), without the rest of a backup's "
        "work: no scanning, packing, index, metadata or writes. Each file is read whole into "
        "a buffer reused from file to file, one file in memory per thread. *Stages alone*: "
        "one pass on one thread, `time.perf_counter` around each stage's own calls; compress "
        "and encrypt see only the "
        f"{distinct.get('distinct_chunks', 0):,} distinct chunks "
        f"({format_size(distinct.get('distinct_bytes', 0))}; a chunk whose keyed ID was seen "
        "before is skipped), as in a backup. Throughput is of each stage's own input. *Whole "
        "chain*: read, chunk, hash, skip known, compress, encrypt, file by file, on a "
        "ThreadPoolExecutor whose workers take the next file from a shared list; wall time. "
        f"*The {p.get('cores', 2)}-core limit* is the sum of the stage times divided by "
        f"{p.get('cores', 2)}: both cores busy all the time with these stages and nothing else.",
        "",
        _pipeline_table(p), "",
        *_pipeline_versus_restic(results, p),
        *_pipeline_small(results, p),
    ]
    return "\n".join(parts)


def _method(results: Results) -> str:
    config = results.get("config", {})
    data = results.get("dataset", {})
    home, small = data.get("home", {}), data.get("small")
    mut = results.get("mutation", {})
    warm = results.get("warmup", {})
    shares = ", ".join(f"{k} {v * 100:.0f} %" for k, v in SHARES.items())
    lines = [
        f"- **Data** (seed {config.get('seed')}): a home-like tree of "
        f"{format_size(home.get('bytes', 0))} in {home.get('files', 0):,} files, "
        f"{home.get('symlinks', 0)} symlinks and {home.get('empty', 0)} empty files: {shares} "
        "(source and text in many small files; PDFs/ODTs, photos, music and videos "
        "incompressible; logs and CSV compressible; two VM images sharing most blocks; exact "
        "duplicates of photos and documents).",
        f"- **A day of work** between the second and third backup: {mut.get('modified', 0)} "
        f"files changed (writes inside a VM image, appends to logs, rows inserted in the middle "
        f"of a CSV, edited sources and documents), {mut.get('created', 0)} new, "
        f"{mut.get('deleted', 0)} deleted, {mut.get('renamed', 0)} renamed (one of them a whole "
        f"project folder); {format_size(mut.get('written', 0))} of new bytes. It is undone "
        "after each round's restore.",
    ]
    if small:
        lines.append(f"- **Many small files**: {small.get('files', 0):,} files of 1-4 KiB "
                     f"({format_size(small.get('bytes', 0))}) in folders of 100, backed up "
                     "into its own repository (local only): initial and no-change backups.")
    lines += [
        f"- **Rounds**: {config.get('rounds')}. In each, every phase runs the tools one after "
        "the other (local first, then over HTTP; the tools' order turns by one each round, so "
        "none always goes first), so each tool sees the same machine state; numbers are medians "
        "over the rounds. Every round starts with new, "
        "empty repositories, new servers and empty caches; each tool's cache is then kept "
        "between its backups in the round, as on a user's machine.",
        "- **Settings**: Cairn's defaults; restic's defaults (compression `auto`, i.e. zstd); "
        "Borg `--compression zstd,3`, `repokey-blake2`. Passphrases through environment "
        "variables. All three encrypt and deduplicate.",
        "- **HTTP**: `cairn-server` and restic's `rest-server` on 127.0.0.1, both with "
        "password authentication (rest-server: bcrypt .htpasswd) and both verifying uploads; "
        "plain HTTP on loopback. Borg has no HTTP mode (`borg serve` works over SSH), so it "
        "only has local numbers.",
        "- **Caches**: dropping the kernel's page cache is not possible here, and this "
        "machine's kernel takes back page-cache pages unused for some seconds (DAMON), so "
        "whichever tool ran first after a pause read cold files. So before every measured "
        "command, what it reads is read once, untimed, for every tool alike: the tree for a "
        "backup, the repository (the server's folder over HTTP) for a restore, and the tool's "
        "cache. The restored trees are deleted only after every tool's restore, then synced: "
        "this machine's ext4 has no journal and skips inodes freed in the last minute when it "
        "creates files, which made a restore right after another's deletion ~20 s slower. "
        "The data was also read once before the first round (warm-up: "
        f"{format_size(warm.get('bytes', 0))} in {warm.get('seconds', 0):.1f} s). An untimed "
        "`sync` follows every measured command.",
        "- **Measures**: wall time of the command; peak RSS of the client: "
        f"{results.get('rss_method', 'rusage of the child')}; the server's peak RSS during "
        "the command from /proc (VmHWM, reset before each command); repository size = the "
        "apparent size of the files in the "
        "repository folder (the vault's folder on the server for HTTP). A restore counts only "
        "if the restored tree has the same number of files, bytes and symlinks as the source.",
        "- **Noise**: the 2 cores are shared with other work; expect ±15 % on backups and more "
        "on restores. Compare ratios from the same run, not numbers across runs.",
    ]
    if results.get("quick"):
        lines.append("- **Quick run** (`make bench-quick`): one round on a small tree, for "
                     "checking a change, not for quoting.")
    note = config.get("note")
    if note:
        lines.append(f"- **This run**: {note}")
    return "\n".join(lines)


def render(results: Results, chart: str | None) -> str:
    """The Markdown page; `chart` is the PNG's path relative to the page, or None."""
    config = results.get("config", {})
    parts = [
        "# Performance: Cairn, restic and Borg",
        "",
        "Generated by `make bench` (the harness in `bench/`, `python -m bench run`); do not edit "
        "by hand. `make bench-quick` runs a small version in under two minutes. Raw numbers of "
        "each run are in `bench/results/*.json` (not committed); `python -m bench report FILE` "
        "rebuilds this page from one.",
        "",
        f"Tree: {format_size(results.get('dataset', {}).get('home', {}).get('bytes', 0))}, "
        f"{report.rounds_text(config.get('rounds'))}, "
        f"run took {results.get('duration_s', 0) / 60:.0f} min.",
        "",
        "## Machine and versions",
        "",
        _machine(results),
        "",
        f"## Wall time (median of {report.rounds_text(config.get('rounds'))})",
        "",
        report.metric_table(results, "wall", fmt_seconds, "operation"),
        "",
    ]
    if chart:
        parts += [f"![wall time per operation and tool]({chart})", ""]
    elif results.get("chart_error"):
        parts += [f"(No chart: {results['chart_error']}.)", ""]
    parts += [
        "## Targets of issue 4", "",
        "Ratios of medians from this run; lower is better for Cairn.", "",
        report.targets_table(results), "",
        "## Throughput", "",
        "Size of the tree divided by the median wall time.", "",
        report.throughput_table(results), "",
        "## CPU time (client)", "",
        "User plus system seconds of the command (and the processes it waited for), median; "
        "the second table is the system part alone. Where both tools spend most of a command "
        "in the kernel (restore: writing the tree), wall-time ratios cannot go much below the "
        "ratio of system times.", "",
        report.metric_table(results, "cpu", fmt_seconds, "operation"), "",
        report.metric_table(results, "sys", fmt_seconds, "operation (system time)"), "",
        "## Peak memory (client)", "",
        report.metric_table(results, "rss", fmt_mib, "operation"), "",
    ]
    if "http" in config.get("modes", []):
        parts += ["Servers, peak RSS during each operation (median):", "",
                  report.server_rss_table(results), ""]
    parts += [
        "## Repository size", "",
        "After the initial backup and after all three backups (initial, no-change, after a "
        "day of work).", "",
        report.metric_table(results, "repo_bytes", format_size, "repository",
                            phases=("initial", "edited"),
                            labels={"initial": "After the initial backup",
                                    "edited": "After three backups"}), "",
        "## Where Cairn's time goes", "",
        "Profiled outside the measured rounds, one run each. *Own time*: samples in which the "
        "function itself was running (with py-spy this includes the compiled code it called: "
        "hashing, compression, encryption, system calls); *cumulative*: samples in which it was "
        "anywhere on the stack (thread and event-loop plumbing left out). Shares are of all "
        "samples of all threads that were not idle.", "",
    ]
    profiles = results.get("profiles", {})
    if not profiles:
        parts += ["Not profiled in this run.", ""]
    for title, prof in profiles.items():
        parts += [_profile(title.capitalize(), prof), ""]
    parts += [pipeline_section(results)]
    parts += [
        "## How it was measured", "",
        _method(results), "",
        "## Every sample", "",
        "<details><summary>All measured commands</summary>", "",
        report.samples_table(results), "",
        "</details>", "",
    ]
    return "\n".join(parts)
