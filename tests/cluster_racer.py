"""One racing member for the claim race test: ``python -m tests.cluster_racer DIR URL LOGIN KEY``.

Reads the tokens (one per line) from DIR/tokens, waits for a line on stdin (so that every
racer starts together), claims each token once, and prints JSON: the tokens it won, with
their fences.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.clusterkit import Login


def main() -> None:
    workdir, url, login_id, key_hex, name = sys.argv[1:6]
    tokens = Path(workdir, "tokens").read_text().split()
    login = Login(Path(workdir) / "members", url, login_id, bytes.fromhex(key_hex))
    client = login.member(name)
    client.sync()
    sys.stdin.readline()
    won: dict[str, int] = {}
    kinds: dict[str, int] = {}
    for token in tokens:
        result = client.claim(token, 0)
        kinds[result.kind.value] = kinds.get(result.kind.value, 0) + 1
        if result.ok:
            won[token] = result.fence
    login.close()
    print(json.dumps({"won": won, "kinds": kinds}))


if __name__ == "__main__":
    main()
