"""Sizes for people: one formatter for the client's and the server's command lines."""


def human_size(n: int | float) -> str:
    """`n` bytes in binary units: "512 B", "1.5 KiB", ..., "2.0 TiB"."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"
