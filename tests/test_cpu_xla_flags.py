"""satseg_jax.cpu.xla_flags: the CPU XLA_FLAGS defaults are added, never forced, and work.

The in-process tests pass their own ``environ`` dict, so the test session's XLA_FLAGS
(read once by the JAX already running here) is never touched; whatever needs a fresh
JAX runs in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from satseg_jax import cpu
from satseg_jax.cpu import xla_flags

REPO = Path(__file__).resolve().parents[1]
FLAG = "xla_cpu_experimental_ynn_fusion_type"


def test_adds_recommended_flags_to_empty_env():
    env: dict[str, str] = {}
    added = xla_flags.apply_defaults(environ=env, jaxlib_version="0.10.2")
    assert added == [f"--{FLAG}=-individual_convolution"]
    assert env["XLA_FLAGS"] == f"--{FLAG}=-individual_convolution"


def test_keeps_user_flags_and_appends():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    xla_flags.apply_defaults(environ=env, jaxlib_version="0.10.2")
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=4",
                                        f"--{FLAG}=-individual_convolution"]


def test_user_value_of_the_same_flag_wins():
    env = {"XLA_FLAGS": f"--{FLAG}=+individual_convolution"}
    assert xla_flags.apply_defaults(environ=env, jaxlib_version="0.10.2") == []
    assert env["XLA_FLAGS"] == f"--{FLAG}=+individual_convolution"


@pytest.mark.parametrize("value", ["0", "false", "OFF", "no"])
def test_env_switch_disables(value):
    env = {xla_flags.ENV_SWITCH: value}
    assert xla_flags.apply_defaults(environ=env, jaxlib_version="0.10.2") == []
    assert "XLA_FLAGS" not in env


def test_explicit_enable_overrides_env_switch():
    env = {xla_flags.ENV_SWITCH: "0"}
    assert xla_flags.apply_defaults(enable=True, environ=env, jaxlib_version="0.10.2")
    env = {}
    assert xla_flags.apply_defaults(enable=False, environ=env, jaxlib_version="0.10.2") == []


def test_old_jaxlib_gets_nothing():
    """An unknown flag in XLA_FLAGS aborts the process, so older jaxlibs get none."""
    env: dict[str, str] = {}
    assert xla_flags.apply_defaults(environ=env, jaxlib_version="0.4.30") == []
    assert "XLA_FLAGS" not in env


def test_env_switch_spellings_and_public_name():
    """One switch parser for both settings; cpu.apply_xla_defaults is this module's."""
    assert cpu.apply_xla_defaults is xla_flags.apply_defaults
    assert cpu.enabled_by_env(xla_flags.ENV_SWITCH, {xla_flags.ENV_SWITCH: " Off "}) is False
    assert cpu.enabled_by_env(xla_flags.ENV_SWITCH, {xla_flags.ENV_SWITCH: "1"}) is True
    assert cpu.enabled_by_env(xla_flags.ENV_SWITCH, {}) is True


def test_flag_names_and_merge():
    assert xla_flags.flag_names("--a=1 --b  --c=x=y junk") == {"a", "b", "c"}
    assert xla_flags.merged_flags("--a=1", {"a": "2", "b": "3"}) == "--a=1 --b=3"
    assert xla_flags.merged_flags("", {}) == ""


PROBE = r"""
import json, os, sys
from satseg_jax.cpu import xla_flags
added = xla_flags.apply_defaults()
import jax, jax.numpy as jnp
from jax import lax
x = jnp.ones((2, 16, 16, 32)); w = jnp.ones((3, 3, 32, 32))
conv = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
hlo = jax.jit(conv).lower(x, w).compile().as_text()
late, warned = None, False
if "--late" in sys.argv:
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        late = xla_flags.apply_defaults(environ=os.environ, enable=True)
    warned = any("after JAX started" in str(c.message) for c in caught)
print("PROBE " + json.dumps({"added": added, "flags": os.environ.get("XLA_FLAGS", ""),
                             "ynn": hlo.count("__ynn_fusion"), "late": late,
                             "warned": warned}))
"""


def _probe(env_extra: dict[str, str], *args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_flags.ENV_SWITCH)}
    env.update(env_extra, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE "))
    return json.loads(line[len("PROBE "):])


@pytest.mark.skipif(not xla_flags.recommended_flags(), reason="jaxlib too old for the flag")
def test_flags_take_convolutions_away_from_ynnpack():
    """Applied before JAX starts (the CLI and the benchmarks call it; importing
    satseg_jax does not), the flag is accepted and no conv goes to YNNPACK;
    SATSEG_XLA_DEFAULTS=0 leaves XLA_FLAGS alone."""
    on = _probe({})
    assert FLAG in on["flags"]
    assert on["ynn"] == 0
    off = _probe({xla_flags.ENV_SWITCH: "0"})
    assert off["added"] == [] and FLAG not in off["flags"]


def test_late_call_warns_and_changes_nothing():
    """After JAX started its backends XLA_FLAGS is not read again: warn, add nothing."""
    res = _probe({xla_flags.ENV_SWITCH: "0"}, "--late")
    assert res["late"] == [] and res["warned"]
    assert FLAG not in res["flags"]
