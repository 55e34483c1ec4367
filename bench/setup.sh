#!/usr/bin/env bash
# Installs what the benchmark needs besides Rust: the Python peer's and the harness's packages
# (in bench/.venv) and Node-RED with pg and pg-copy-streams (in bench/peers/node-red).
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/pip install -q -r requirements.txt
(cd peers/node-red && npm ci --no-audit --no-fund)
