"""Cairn's benchmark harness: Cairn against restic and Borg on the same data, in the same run.

Not part of the project's package or its test run. `python -m bench --help` (or `make bench`,
`make bench-quick`, `bench/quick`) drives it:

- `tools`: installs restic, restic's REST server and Borg into bench/.tools/ (never touching the
  system's apt sources), plus a venv with matplotlib and py-spy for the chart and the profiles;
- `dataset`, `mutation`: a seeded home-directory-like tree, a seeded "day of work" on it (undoable),
  and a many-small-files tree;
- `measure`, `runners`, `suite`: wall time, peak RSS and repository size of every backup and
  restore, alternating the tools phase by phase over several rounds;
- `report`, `profiling`, `chart`: medians, ratios, the profile of Cairn, docs/PERFORMANCE.md.
"""
