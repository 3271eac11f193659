"""``llumnix-zmq keys``: make the CURVE keys of a cluster.

Layout of the keys directory::

    server.key / server.key_secret     the mesh's server keypair: every *bound* socket
                                       (scheduler ROUTER, worker ROUTER, frontend PULL) uses it
    <name>.key / <name>.key_secret     one client keypair per service (scheduler, frontend,
                                       worker-0, …): what it presents when it connects
    authorized/<name>.key              public keys allowed to connect (remove one to revoke)

Distribute ``server.key_secret`` and a service's own ``<name>.key_secret`` to that service only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

import zmq.auth


def make_keys(directory: str, names: list[str]) -> list[str]:
    os.makedirs(os.path.join(directory, "authorized"), exist_ok=True)
    made = []
    if not os.path.exists(os.path.join(directory, "server.key_secret")):
        zmq.auth.create_certificates(directory, "server")
        made.append("server")
    for name in names:
        if os.path.exists(os.path.join(directory, f"{name}.key_secret")):
            continue
        public, _secret = zmq.auth.create_certificates(directory, name)
        shutil.copy(public, os.path.join(directory, "authorized", f"{name}.key"))
        made.append(name)
    for path in os.listdir(directory):
        if path.endswith(".key_secret"):
            os.chmod(os.path.join(directory, path), 0o600)
    return made


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="llumnix-zmq keys", description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", required=True, help="keys directory (created)")
    p.add_argument("--names", default="scheduler,frontend,worker",
                   help="comma-separated service names to make client keys for")
    a = p.parse_args(argv)
    made = make_keys(a.dir, [n for n in a.names.split(",") if n])
    print(f"keys in {a.dir}: made {', '.join(made) or 'nothing (all present)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
