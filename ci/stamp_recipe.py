"""Stamp the scenario's recipe hash into result files written before results recorded it.

A result records the sha256 of the scenario file that ran it and, since 2026-11-27, the scenario's recipe hash
(scenario.recipe_hash: its settings without the lists that choose its cells), so that `bdbench grid` keeps a
finished cell when only a scenario's attacks, defenses or seeds change. Older files lack the recipe. This adds it
to a file whose sha256 is that of a scenario this checkout runs (so the recipe is certainly the one that
computed it) and leaves every other file as it is (it keeps matching by sha256 alone). A file is rewritten only
when it reads back byte for byte as the harness wrote it, with the one field added. Idempotent.

    python ci/stamp_recipe.py leaderboard/results
"""
import json
import sys
from pathlib import Path

from benchmark.gridfile import known_scenarios


def dump(r: dict) -> str:
    return json.dumps(r, indent=1, sort_keys=True, allow_nan=False)  # as pipeline.Runner._write writes it


def main(root: str) -> int:
    recipe = {s.sha256: s.recipe for _, s in known_scenarios()}
    counts = {"stamped": 0, "had it": 0, "unknown scenario": 0, "not as written": 0}
    for f in sorted(Path(root).rglob("seed-*.json")):
        text = f.read_text()
        r = json.loads(text)
        s = r.get("scenario") or {}
        if s.get("recipe"):
            counts["had it"] += 1
        elif s.get("sha256") not in recipe:
            counts["unknown scenario"] += 1
        elif dump(r) != text:
            counts["not as written"] += 1
            print(f"{f}: not as the harness writes it; left unstamped")
        else:
            s["recipe"] = recipe[s["sha256"]]
            f.write_text(dump(r))
            counts["stamped"] += 1
    print(", ".join(f"{v} {k}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "leaderboard/results"))
