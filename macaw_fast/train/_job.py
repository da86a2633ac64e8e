"""One training run of a reproduction, in its own process (``macaw-fast reproduce --jobs N``).

``python -m macaw_fast.train._job OUT DATA SEED ALGO [THREADS]``: reads the settings the parent
saved in ``OUT/reproduce.json`` and runs that stage (:meth:`Reproduction.train_seed`: trains,
resumes, or confirms the run finished), without a progress bar: one line per evaluation instead. Not a user command: the parent
holds the reproduction's lock and records the stage's wall-clock time.
"""

from __future__ import annotations

import json
import os
import sys

#: Environment variable holding the parent's command line (a JSON list).
COMMAND_ENV = "MACAW_FAST_COMMAND"


def main(argv: list[str]) -> int:
    from .._procs import die_with_parent_if_asked

    die_with_parent_if_asked()
    if len(argv) not in (4, 5):
        print("usage: python -m macaw_fast.train._job OUT DATA SEED ALGO [THREADS]", file=sys.stderr)
        return 2
    out, data, seed, algo = argv[0], argv[1], int(argv[2]), argv[3]
    from .._malloc import tune_malloc
    from .._provenance import set_command
    from .reproduce import Reproduction, ReproduceConfig, _read_json

    tune_malloc()
    saved = _read_json(os.path.join(out, "reproduce.json"))
    if saved is None:
        print(f"{out}/reproduce.json: missing or unreadable", file=sys.stderr)
        return 1
    cfg = ReproduceConfig.from_dict({**saved["config"], "progress": False,
                                     **({"threads": int(argv[4])} if len(argv) == 5 else {})})
    # the parent's command line (the run's provenance names the command a user typed)
    set_command(json.loads(os.environ.get(COMMAND_ENV) or "null") or ["macaw-fast", "reproduce", cfg.family, "--out", out])
    def report(rec: dict) -> None:      # the parent prefixes each line with the run's name
        print(f"step {rec['step']}/{cfg.steps}: adapted {rec['mean_adapted']:.1f}, unadapted "
              f"{rec.get('mean_unadapted', float('nan')):.1f}", flush=True)

    Reproduction(out, cfg).train_seed(data, seed, algo, record=False, on_eval=report)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
