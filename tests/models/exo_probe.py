"""exo_probe.py: what the safetensors tests in this folder share: the exo binary and its build folder, running
a command (its output, or the test stops saying what failed), asking exo about a model through
probe_safetensors.lua, and collecting failures so that one run reports them all."""
import json
import os
import subprocess
import sys

EXO = os.environ.get("EXO_BIN") or os.environ["EXO_BINARY"]
BUILD = os.path.dirname(os.path.abspath(EXO))
SRC = os.environ.get("EXO_SOURCE_DIR") or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROBE = os.path.join(SRC, "tests", "models", "probe_safetensors.lua")
failures = []


def check(ok, msg):
    if not ok:
        failures.append(msg)
        print("FAIL:", msg, file=sys.stderr)


def run(*args):
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({r.returncode}): {r.stderr}{r.stdout}")
    return r.stdout


def probe(*args):
    return json.loads(run(EXO, "lua", PROBE, *args).strip().splitlines()[-1])


def finish():
    if failures:
        print(f"{len(failures)} failure(s)", file=sys.stderr)
        sys.exit(1)
    print("ok")
