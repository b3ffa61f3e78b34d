"""Run the DashScope simulator: `python -m ops.simulator --port 8089 --profile demo`.

API keys come from the environment (`SIM_API_KEYS`: `k1,k2` for account `default`, or `acct=k1|k2;other=k3`
for several accounts), never from the command line, so they do not show in a process list.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import uvicorn

from ops.simulator.app import create_app
from ops.simulator.engine import SimConfig
from ops.simulator.profiles import PROFILES, ProfileError, load_profile


def parse_keys(spec: str) -> dict[str, str]:
    """`k1,k2` (account `default`) or `acct=k1|k2;other=k3` -> {key: account}."""
    keys: dict[str, str] = {}
    for group in filter(None, (g.strip() for g in spec.split(";"))):
        account, _, listed = group.partition("=") if "=" in group else ("default", "", group)
        for key in filter(None, (k.strip() for k in listed.replace("|", ",").split(","))):
            keys[key] = account.strip()
    return keys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ops.simulator", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="demo")
    parser.add_argument("--profile-file", type=Path, help="a TOML profile (see ops/simulator/profiles.py)")
    parser.add_argument("--time-scale", type=float, help="multiplies every duration (overrides the profile's)")
    parser.add_argument("--seed", type=int, help="seed of every random draw, for repeatable runs")
    args = parser.parse_args(argv)
    keys = parse_keys(os.environ.get("SIM_API_KEYS", ""))
    if not keys:
        print("set SIM_API_KEYS to the API keys the simulator accepts", file=sys.stderr)
        return 2
    try:
        profile = load_profile(args.profile, args.profile_file)
    except (ProfileError, OSError) as exc:
        print(f"profile: {exc}", file=sys.stderr)
        return 2
    config = SimConfig(profile=profile, keys=keys, time_scale=args.time_scale, seed=args.seed)
    uvicorn.run(create_app(config), host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
